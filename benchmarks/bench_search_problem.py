"""The cheap REAL problem behind the search benchmarks (imported by bench_search_*.py).

A small 4-conv CNN (not a timm model: a timm model's TVM compile takes ~50 s per structure on this
2-core CPU, a 4-conv CNN ~6 s) trained on scikit-learn digits at 16x16 (the Phase-1 model), searched
over its 3 inner convs (first conv and classifier excluded as usual) with the real ``FastEvaluator``:
one-shot magnitude pruning, a short masked SGD fine-tune, validation top-1 on the digits validation
split, and latency measured on TVM-compiled code (host CPU, 1 thread).
"""

from __future__ import annotations

import torch
from torch import nn

from npas_lightning.data import DigitsDataModule
from npas_lightning.search.evaluator import FastEvaluator
from npas_lightning.search.space import SearchSpace, SpaceConfig

IMAGE_SIZE = 16
SPACE = SpaceConfig(rates=[1, 2, 5], filter_types=["keep"], schemes=["filter", "block_punched"],
                    blocks={"block_punched": [[8, 4]]})
EVAL = dict(finetune_steps=30, lr=0.01, momentum=0.9, compile_kwargs={"threads": 1, "check": False},
            measure_kwargs={"number": 20, "repeat": 5, "warmup": 2}, threads=1, latency_cache=False)


def tiny_cnn() -> nn.Sequential:
    def blk(i, o, s):
        return [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(*blk(3, 16, 1), *blk(16, 32, 2), *blk(32, 32, 1), *blk(32, 64, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def datamodule(seed: int = 0) -> DigitsDataModule:
    dm = DigitsDataModule(image_size=IMAGE_SIZE, channels=3, batch_size=64, augment=False, seed=seed)
    dm.setup("fit")
    return dm


def phase1_model(dm: DigitsDataModule, epochs: int = 8, seed: int = 0) -> nn.Module:
    """Train the tiny CNN (plain SGD loop, seeded); returns it in eval mode."""
    torch.manual_seed(seed)
    net = tiny_cnn()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        net.train()
        for x, y in dm.train_dataloader():
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    return net.eval()


def build(seed: int = 0) -> tuple[nn.Module, SearchSpace, FastEvaluator, DigitsDataModule]:
    dm = datamodule(seed)
    net = phase1_model(dm, seed=seed)
    example = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    space = SearchSpace.from_model(net, example, SPACE)
    ev = FastEvaluator(net, dm.train_dataloader, dm.val_dataloader, example, seed=seed, **EVAL)
    return net, space, ev, dm
