"""Top-1 at equal pruning rate: magnitude vs ADMM vs group-Lasso (vs FPGM for filter) vs Lightning's ModelPruning.

A resnet18 (timm, 1 input channel) is trained on a Fashion-MNIST subset read from the IDX files
(Debian's ``/usr/share/datasets/fashion-mnist``), then, from the same trained weights, every
(scheme, rate, algorithm) cell gets the same budget of ``--epochs`` epochs of ``--steps`` steps:

- ``magnitude``: MagnitudePruning one-shot at the start, then masked fine-tuning;
- ``admm``: ADMMPruning, ADMM for the first half of the epochs (Z/U every ``--admm-interval``
  steps), hard prune, masked retraining for the rest;
- ``group_lasso``: GroupLassoPruning, penalty for the first half, hard prune, masked retraining;
- ``fpgm`` (filter scheme only): GeometricMedianPruning one-shot at the start;
- ``lightning_l1`` (peer): ``lightning.pytorch.callbacks.ModelPruning("l1_unstructured")`` on the
  same layers at the same amount, applied once at the start of training (per layer), then fine-tuned.

Plans: every conv except the stem (``conv1``, excluded by default) at the rate, with
``unstructured``, ``filter``, ``pattern`` (3x3 convs; the 1x1 downsample convs stay dense),
``block_punched`` (default block (8, 4)), and ``block_based`` on the FC (the classifier, block
(16, 4); the only FC of resnet18). Top-1 is measured on a fixed subset of the test split.

    python benchmarks/bench_algorithms_accuracy.py                     # the default budget
    python benchmarks/bench_algorithms_accuracy.py --rates 5 --train-images 4000 --epochs 2 --steps 8

Writes benchmarks/results/bench_algorithms_accuracy.json after every cell (partial runs keep
what was measured).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelPruning
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_results  # noqa: E402

from npas_lightning.algorithms.masking import sparsity_report  # noqa: E402
from npas_lightning.callbacks import (  # noqa: E402
    ADMMPruning,
    GeometricMedianPruning,
    GroupLassoPruning,
    MagnitudePruning,
)
from npas_lightning.data.fashion_mnist import DEBIAN_ROOT, FILES, read_idx  # noqa: E402
from npas_lightning.models import ClassifierModule  # noqa: E402
from npas_lightning.plan import NPASScheme  # noqa: E402

NAME = "bench_algorithms_accuracy"
SCHEMES = ("unstructured", "filter", "pattern", "block_punched", "block_based")
MEAN, STD = 0.2860, 0.3530


def load_split(split: str, n: int, size: int, seed: int) -> TensorDataset:
    images = read_idx(DEBIAN_ROOT / FILES[f"{split}_images"][0], *FILES[f"{split}_images"][1:])
    labels = read_idx(DEBIAN_ROOT / FILES[f"{split}_labels"][0], *FILES[f"{split}_labels"][1:])
    idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n]
    x = images[idx].float().div(255).unsqueeze(1)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return TensorDataset((x - MEAN) / STD, labels[idx].long())


def plan_for(scheme: str, rate: float) -> tuple[dict, list[str] | None]:
    """(dict plan, exclude) of a uniform plan of ``scheme`` at ``rate``."""
    if scheme == "block_based":
        return {"fc": {"scheme": "block_based", "rate": rate, "block": [16, 4]}}, ["conv1"]
    if scheme == "pattern":
        return {"*.downsample.0": None, "*": {"scheme": "pattern", "rate": rate}}, None
    return {"*": {"scheme": scheme, "rate": rate}}, None


class OneShotModelPruning(ModelPruning):
    """Lightning's ModelPruning applied once at the start of training (not at the end of epoch 0)."""

    def __init__(self, amount: float, parameters_to_prune: list) -> None:
        super().__init__("l1_unstructured", parameters_to_prune=parameters_to_prune, amount=_no_more_pruning,
                         use_global_unstructured=False, verbose=0)
        self.start_amount = amount

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0:
            self.apply_pruning(self.start_amount)


def _no_more_pruning(epoch: int) -> float:
    return 0.0


@torch.no_grad()
def top1(module: ClassifierModule, data: TensorDataset, batch: int = 500) -> float:
    module.eval()
    correct = 0
    for i in range(0, len(data), batch):
        x, y = data.tensors[0][i:i + batch], data.tensors[1][i:i + batch]
        correct += int((module(x).argmax(1) == y).sum())
    return correct / len(data)


def fit(module: ClassifierModule, loader: DataLoader, callbacks: list, epochs: int, steps: int) -> None:
    trainer = L.Trainer(
        max_epochs=epochs, limit_train_batches=steps, limit_val_batches=0, num_sanity_val_steps=0, accelerator="cpu",
        devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(module, loader)


def main() -> dict:
    parser = argparse.ArgumentParser(description="accuracy at equal rate of the pruning algorithms")
    parser.add_argument("--rates", type=float, nargs="+", default=[5.0, 10.0])
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES))
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--train-images", type=int, default=8000)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--pretrain-steps", type=int, default=60, help="steps per pretraining epoch")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per pruning run (ADMM/GL: half penalty)")
    parser.add_argument("--steps", type=int, default=8, help="steps per pruning-run epoch")
    parser.add_argument("--lr", type=float, default=0.01, help="fine-tune learning rate (SGD, cosine)")
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--admm-interval", type=int, default=2)
    parser.add_argument("--lam", type=float, default=0.01)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    info = machine()
    t_start = time.perf_counter()
    console = Console()

    train = load_split("train", args.train_images, args.image_size, 0)
    test = load_split("val", args.test_images, args.image_size, 1)
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))

    def make(lr: float) -> ClassifierModule:
        return ClassifierModule("resnet18", num_classes=10, in_chans=1,
                                optimizer={"name": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 5e-4},
                                scheduler={"name": "cosine"})

    L.seed_everything(0, verbose=False)
    base = make(0.05)
    t0 = time.perf_counter()
    fit(base, loader, [], args.pretrain_epochs, args.pretrain_steps)
    dense_acc = top1(base, test)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    budget = {
        "model": "resnet18 (timm, in_chans=1, random init)",
        "image_size": args.image_size, "train_images": len(train), "test_images": len(test),
        "batch_size": args.batch_size,
        "pretrain": f"{args.pretrain_epochs} epochs x {args.pretrain_steps} steps, SGD lr 0.05 cosine",
        "per_run": f"{args.epochs} epochs x {args.steps} steps, SGD lr {args.lr} momentum 0.9 wd 5e-4 cosine",
        "admm": f"admm_epochs={args.epochs // 2 or 1}, rho={args.rho} geometric x1.3, admm_interval={args.admm_interval} steps",
        "group_lasso": f"penalty_epochs={args.epochs // 2 or 1}, lam={args.lam}",
        "lightning_l1": "ModelPruning('l1_unstructured', per layer) applied once at the start, amount = 1 - 1/rate",
    }
    results: dict = {"budget": budget, "dense_top1": dense_acc, "pretrain_s": time.perf_counter() - t0, "cells": []}
    console.print(f"dense resnet18 top-1 {dense_acc:.4f} after {results['pretrain_s']:.0f} s")

    half = max(1, args.epochs // 2)
    for rate in args.rates:
        for scheme in args.schemes:
            plan, exclude = plan_for(scheme, rate)
            algos = {
                "magnitude": lambda p=plan, e=exclude: MagnitudePruning(p, exclude=e),
                "admm": lambda p=plan, e=exclude: ADMMPruning(p, admm_epochs=half, rho=args.rho,
                                                              admm_interval=args.admm_interval, exclude=e),
                "group_lasso": lambda p=plan, e=exclude: GroupLassoPruning(p, penalty_epochs=half, lam=args.lam, exclude=e),
            }
            if scheme == "filter":
                algos["fpgm"] = lambda p=plan, e=exclude: GeometricMedianPruning(p, exclude=e)
            if scheme == "unstructured":
                algos["lightning_l1"] = None
            for algo, make_cb in algos.items():
                L.seed_everything(1, verbose=False)
                module = make(args.lr)
                module.load_state_dict(state)
                t0 = time.perf_counter()
                resolved = NPASScheme.resolve(plan, module.net, exclude=exclude)
                if make_cb is None:
                    params = [(module.net.get_submodule(n), "weight") for n, lp in resolved.items() if lp.pruned]
                    fit(module, loader, [OneShotModelPruning(1.0 - 1.0 / rate, params)], args.epochs, args.steps)
                else:
                    fit(module, loader, [make_cb()], args.epochs, args.steps)
                report = sparsity_report(module.net, resolved)
                cell = {
                    "scheme": scheme, "rate": rate, "algorithm": algo, "top1": top1(module, test),
                    "achieved_rate": report["rate"], "sparsity": report["sparsity"], "pruned_params": report["numel"],
                    "seconds": time.perf_counter() - t0,
                }
                results["cells"].append(cell)
                console.print(f"{scheme:14s} {rate:>4g}x {algo:13s} top-1 {cell['top1']:.4f}  rate {cell['achieved_rate']:.2f}  "
                              f"({cell['seconds']:.0f} s)")
                results["total_s"] = time.perf_counter() - t_start
                write_results(NAME, "python " + " ".join(sys.argv), {**results, "machine_at_start": info})

    algos = ["magnitude", "admm", "group_lasso", "fpgm", "lightning_l1"]
    table = Table(title=f"resnet18 / Fashion-MNIST top-1 at equal rate (dense {dense_acc:.4f})")
    table.add_column("scheme")
    table.add_column("rate")
    for a in algos:
        table.add_column(a, justify="right")
    for rate in args.rates:
        for scheme in args.schemes:
            row = {c["algorithm"]: c for c in results["cells"] if c["scheme"] == scheme and c["rate"] == rate}
            table.add_row(scheme, f"{rate:g}x", *[f"{row[a]['top1']:.4f}" if a in row else "-" for a in algos])
    console.print(table)
    console.print(f"budget: {budget}")
    path = write_results(NAME, "python " + " ".join(sys.argv), {**results, "machine_at_start": info})
    console.print(f"wrote {path} ({results.get('total_s', 0):.0f} s)")
    return results


if __name__ == "__main__":
    main()
