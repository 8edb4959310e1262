"""FastEvaluator on a real (tiny) network and real digits: one-shot pruning, masked fine-tune,
real TVM compilation and timing, structural latency cache, divergence reported as a failure."""

import pytest
import torch
from torch import nn

from npas_lightning.data import DigitsDataModule
from npas_lightning.search.evaluator import FastEvaluator
from npas_lightning.search.space import SearchSpace, SpaceConfig


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    dm = DigitsDataModule(image_size=8, channels=3, batch_size=32, augment=False, seed=0)
    dm.setup("fit")
    net = _net()
    x = torch.randn(1, 3, 8, 8)
    space = SearchSpace.from_model(net, x, SpaceConfig(rates=[1, 2, 5], filter_types=["keep"],
                                                       schemes=["filter", "block_punched"]))
    ev = FastEvaluator(net, dm.train_dataloader, dm.val_dataloader, x, finetune_steps=3, val_batches=2,
                       compile_kwargs={"threads": 1, "check": False},
                       measure_kwargs={"number": 3, "repeat": 2, "warmup": 1},
                       latency_cache=str(tmp_path_factory.mktemp("cache") / "latency.sqlite"))
    return space, ev


@pytest.mark.slow  # one real TVM compile: ~8 s on an idle 2-core machine, ~20 s on a busy one
def test_evaluate_real_plan_then_cache_then_divergence(setup):
    space, ev = setup
    plan = space.to_plan((space.layers[0].choices.index(next(c for c in space.layers[0].choices
                                                              if c.scheme == "filter" and c.rate == 2.0)),
                          next(i for i, c in enumerate(space.layers[1].choices) if c.scheme == "block_punched")))
    first = ev.evaluate(plan)
    assert first.ok, first.reason
    assert 0.0 <= first.V <= 1.0 and first.h > 0
    lat = first.info["latency"]
    assert lat["target"] == "host" and lat["input_shape"] == [1, 3, 8, 8] and lat["threads"] == 1
    assert first.info["latency_cached"] is False and first.info["shrunk_layers"] >= 1
    again = ev.evaluate(plan)  # same structure: latency from the cache, same seeded fine-tune
    assert again.info["latency_cached"] is True and again.h == first.h and again.V == first.V
    ev.lr = float("inf")  # same structure, infinite learning rate: the fine-tune diverges
    try:
        bad = ev.evaluate(plan)
    finally:
        ev.lr = 0.01
    assert not bad.ok and "NaN loss" in bad.reason


def test_masks_are_held_during_finetune(setup):
    space, ev = setup
    plan = space.to_plan((next(i for i, c in enumerate(space.layers[0].choices) if c.scheme == "block_punched"
                               and c.rate == 5.0), 0))
    model, masks = ev.build(plan)
    assert masks
    ev.finetune(model, masks, plan)
    for name, m in masks.items():
        w = model.get_submodule(name).weight
        assert torch.count_nonzero(w[~m]) == 0


def test_latency_key_ignores_settings_that_keep_the_code(setup):
    space, _ = setup
    plan = space.to_plan((next(i for i, c in enumerate(space.layers[0].choices) if c.scheme == "block_punched"
                               and c.rate == 5.0), 0))

    def key(**compile_kwargs):
        ev = FastEvaluator(_net(), list, list, torch.randn(1, 3, 8, 8), compile_kwargs=compile_kwargs)
        model, _ = ev.build(plan)
        return ev.latency_key(ev.frozen_for_compile(model, plan)[0], plan)[0]

    base = key(threads=1)
    assert key(threads=1, codegen_workers=1, check=False) == base  # same generated code
    assert key(threads=1, tune=True) != base


@pytest.mark.parametrize(("kw", "match"), [({"finetune_steps": -1}, "finetune_steps=-1"), ({"lr": 0.0}, "lr=0.0"),
                                           ({"val_batches": 0}, "val_batches=0"),
                                           ({"device": "tpu"}, "device=.tpu."),
                                           ({"latency_stat": "p90"}, "latency_stat=.p90.")])
def test_bad_evaluator_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        FastEvaluator(_net(), list, list, torch.randn(1, 3, 8, 8), **kw)
