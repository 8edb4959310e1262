"""Benchmark of npas_lightning.transforms on efficientnet_b0 trained on Fashion-MNIST (real IDX files).

Measures, in one run:
1. Phase 1: top-1 of the trained model before the activation swap, right after it, and after a
   short fine-tune.
2. Reconstruction init: mean relative error ``||cand(x) - layer(x)|| / ||layer(x)||`` per candidate
   type across every searchable layer of the Phase-1 model, on real activations.
3. 30% of the 3x3/5x5 layers (efficientnet_b0's depthwise convs; the stem is excluded, as plans exclude
   it by default) replaced by ``3x3dw_1x1``: top-1 right after the replacement and after the same short
   fine-tune, with reconstruction-fitted candidates vs freshly initialised ones (same data order).

    .venv/bin/python benchmarks/bench_transforms.py                 # defaults: ~10-15 min on 2 busy cores
    .venv/bin/python benchmarks/bench_transforms.py --train-size 1000 --base-epochs 1   # quicker

Training is plain PyTorch (AdamW + cosine) on a seeded subset of the Fashion-MNIST training split;
top-1 is on a seeded subset of the test split. Writes benchmarks/results/bench_transforms.json.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from npas_lightning.data import DigitsDataModule, FashionMNISTDataModule  # noqa: E402
from npas_lightning.layers import enumerate_layers  # noqa: E402
from npas_lightning.transforms import (  # noqa: E402
    FILTER_TYPES,
    apply_filter_types,
    fit_candidates,
    swap_activations,
)

console = Console(width=160)


def _data(args):
    try:
        dm = FashionMNISTDataModule(image_size=args.image_size, channels=1, augment=False)
        name = "fashion_mnist"
    except FileNotFoundError as err:
        console.print(f"[yellow]Fashion-MNIST files not found ({err}); using sklearn digits instead")
        dm = DigitsDataModule(image_size=args.image_size, channels=1, augment=False)
        name = "digits"
    dm.setup("fit")
    g = torch.Generator().manual_seed(args.seed)
    tr = torch.randperm(len(dm.train_set), generator=g)[: args.train_size].tolist()
    va = torch.randperm(len(dm.val_set), generator=g)[: args.val_size].tolist()
    return name, Subset(dm.train_set, tr), Subset(dm.val_set, va)


def _loader(ds, batch_size, shuffle, seed=0):
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, num_workers=0)


@torch.no_grad()
def top1(model, val_ds, batch_size=256) -> float:
    model.eval()
    correct = total = 0
    for x, y in _loader(val_ds, batch_size, False):
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / total


def train(model, train_ds, *, epochs, lr, batch_size, seed) -> float:
    """AdamW + cosine over ``epochs`` epochs, fixed data order per ``seed``; returns seconds."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    loader = _loader(train_ds, batch_size, True, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * len(loader)))
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--train-size", type=int, default=3000)
    p.add_argument("--val-size", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--base-epochs", type=int, default=3, help="training from scratch before Phase 1")
    p.add_argument("--ft-epochs", type=int, default=1, help="every short fine-tune")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ft-lr", type=float, default=5e-4)
    p.add_argument("--recon-steps", type=int, default=150)
    p.add_argument("--recon-samples", type=int, default=128)
    p.add_argument("--fraction", type=float, default=0.3)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a busy box)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    data_name, train_ds, val_ds = _data(args)
    console.print(f"data: {data_name}, train {len(train_ds)}, val {len(val_ds)}, {args.image_size}x{args.image_size}")

    # 1. baseline + Phase 1 -------------------------------------------------------------------
    torch.manual_seed(args.seed)
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=10, in_chans=1)
    timings["train_base_s"] = train(model, train_ds, epochs=args.base_epochs, lr=args.lr,
                                    batch_size=args.batch_size, seed=args.seed)
    acc_before = top1(model, val_ds)
    phase1 = copy.deepcopy(model)
    report = swap_activations(phase1)
    acc_swapped = top1(phase1, val_ds)
    timings["finetune_phase1_s"] = train(phase1, train_ds, epochs=args.ft_epochs, lr=args.ft_lr,
                                         batch_size=args.batch_size, seed=args.seed + 1)
    acc_ft = top1(phase1, val_ds)
    control = copy.deepcopy(model)  # same fine-tune without the swap: separates swap from extra training
    timings["finetune_control_s"] = train(control, train_ds, epochs=args.ft_epochs, lr=args.ft_lr,
                                          batch_size=args.batch_size, seed=args.seed + 1)
    acc_control = top1(control, val_ds)
    del control
    t = Table(title=f"Phase 1 on efficientnet_b0 / {data_name} ({report})")
    for c in ("stage", "val top-1"):
        t.add_column(c)
    phase1_rows = {"before swap": acc_before, "right after swap": acc_swapped,
                   f"after {args.ft_epochs}-epoch fine-tune": acc_ft,
                   f"control: no swap, same {args.ft_epochs}-epoch fine-tune": acc_control}
    for k, v in phase1_rows.items():
        t.add_row(k, f"{v:.4f}")
    console.print(t)

    # 2. reconstruction errors per candidate type --------------------------------------------
    calib = _loader(train_ds, args.batch_size, True, args.seed + 2)
    first_conv = phase1.pretrained_cfg["first_conv"]
    t0 = time.perf_counter()
    recon = fit_candidates(phase1, calib, steps=args.recon_steps, max_samples=args.recon_samples, seed=args.seed)
    timings["reconstruction_s"] = time.perf_counter() - t0
    per_type = recon.mean_error_by_type()
    counts = {ft: sum(ft in e for e in recon.errors.values()) for ft in per_type}
    t = Table(title="Mean relative reconstruction error per candidate type (real activations)")
    for c in ("filter type", "layers", "mean rel. error", "min", "max", "fit"):
        t.add_column(c)
    per_type_rows = {}
    for ft in FILTER_TYPES:
        if ft not in per_type:
            continue
        errs = [e[ft] for e in recon.errors.values() if ft in e]
        method = next(m[ft] for m in recon.methods.values() if ft in m)
        per_type_rows[ft] = {"layers": counts[ft], "mean": per_type[ft], "min": min(errs), "max": max(errs),
                             "method": method}
        t.add_row(ft, str(counts[ft]), f"{per_type[ft]:.4f}", f"{min(errs):.4f}", f"{max(errs):.4f}", method)
    console.print(t)

    # 3. 30% of the 3x3/5x5 layers -> 3x3dw_1x1: reconstruction vs random init ----------------
    layers = enumerate_layers(phase1, torch.randn(1, 1, args.image_size, args.image_size))
    kxk = [li.name for li in layers if li.kernel_size[0] in (3, 5) and li.name != first_conv]
    k = max(1, round(args.fraction * len(kxk)))
    chosen = sorted(random.Random(args.seed).sample(kxk, k), key=kxk.index)
    plan = dict.fromkeys(chosen, "3x3dw_1x1")
    results_30 = {}
    for init in ("reconstruction", "random"):
        torch.manual_seed(args.seed + 3)
        net = apply_filter_types(phase1, plan, fitted=recon if init == "reconstruction" else None)
        a0 = top1(net, val_ds)
        timings[f"finetune_{init}_s"] = train(net, train_ds, epochs=args.ft_epochs, lr=args.ft_lr,
                                              batch_size=args.batch_size, seed=args.seed + 4)
        results_30[init] = {"top1_no_finetune": a0, "top1_after_finetune": top1(net, val_ds)}
    results_30["recon_rel_error"] = {n: recon.errors[n]["3x3dw_1x1"] for n in chosen}
    t = Table(title=f"{k}/{len(kxk)} 3x3/5x5 layers -> 3x3dw_1x1 ({', '.join(chosen)})")
    for c in ("init", "top-1 right after replacement", f"top-1 after {args.ft_epochs}-epoch fine-tune"):
        t.add_column(c)
    for init in ("reconstruction", "random"):
        r = results_30[init]
        t.add_row(init, f"{r['top1_no_finetune']:.4f}", f"{r['top1_after_finetune']:.4f}")
    t.add_row("phase-1 model (no replacement)", f"{acc_ft:.4f}", "-")
    console.print(t)
    timings["total_s"] = time.perf_counter() - t_start

    results = {
        "config": vars(args) | {"data": data_name, "model": "efficientnet_b0"},
        "phase1": {"swap": report.to_dict(), "top1": phase1_rows},
        "reconstruction": {"per_type": per_type_rows,
                           "per_layer": recon.errors},
        "replace_30pct": {"layers": chosen, "candidates_pool": kxk, "results": results_30,
                          "phase1_top1": acc_ft},
        "timings_s": timings,
    }
    cmd = "python benchmarks/bench_transforms.py " + " ".join(sys.argv[1:])
    path = write_results("bench_transforms", cmd.strip(), results)
    console.print(f"total {timings['total_s']:.0f} s; results in {path}")


if __name__ == "__main__":
    main()
