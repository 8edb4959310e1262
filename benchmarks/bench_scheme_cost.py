"""Scheme cost: time to compute each scheme's mask for every applicable layer of resnet50 and efficientnet_b0.

For each model and scheme, every ``nn.Conv2d``/``nn.Linear`` the scheme fits (default parameters) gets its
mask computed at rate 5 from the model's (randomly initialised) weights, through the public
``get_scheme(name)(weight, rate, ...)`` call (validation included). Repeats are interleaved over
schemes; the reported time per scheme is the median over repeats of the summed per-layer times, and the
ratio column divides it by ``unstructured``'s median on the same model, measured in the same run.

Usage::

    .venv/bin/python benchmarks/bench_scheme_cost.py [--repeats 5] [--rate 5] [--threads 1]

Writes ``benchmarks/results/bench_scheme_cost.json`` and prints a rich table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
from pathlib import Path

import timm
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from npas_lightning.layers import layer_kind
from npas_lightning.schemes import get_scheme, list_schemes

MODELS = ("resnet50", "efficientnet_b0")
VARIANTS: dict[str, tuple[str, dict]] = {name: (name, {}) for name in list_schemes()}
VARIANTS["block_based balanced"] = ("block_based", {"balanced": True})
RESULTS = Path(__file__).parent / "results" / "bench_scheme_cost.json"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def measure(model_name: str, rate: float, repeats: int) -> list[dict]:
    model = timm.create_model(model_name, pretrained=False)
    layers = [(n, m.weight.detach(), layer_kind(m)) for n, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear))]
    fits: dict[str, list] = {}
    for variant, (scheme, params) in VARIANTS.items():
        fn = get_scheme(scheme)
        fits[variant] = [(n, w, k) for n, w, k in layers if fn.fits(w.shape, k, **params) is None]
    totals: dict[str, list[float]] = {v: [] for v in VARIANTS}
    per_layer: dict[str, dict[str, list[float]]] = {v: {n: [] for n, _, _ in fits[v]} for v in VARIANTS}
    kept: dict[str, int] = {}
    for _ in range(repeats):
        for variant, (scheme, params) in VARIANTS.items():  # interleaved: one pass of every scheme per repeat
            fn = get_scheme(scheme)
            total, n_kept = 0.0, 0
            for name, w, kind in fits[variant]:
                t0 = time.perf_counter()
                mask = fn(w, rate, layer_name=name, kind=kind, **params)
                dt_ = time.perf_counter() - t0
                total += dt_
                per_layer[variant][name].append(dt_)
                n_kept += int(mask.sum())
            totals[variant].append(total)
            kept[variant] = n_kept
    base = statistics.median(totals["unstructured"])
    rows = []
    for variant in VARIANTS:
        med = statistics.median(totals[variant])
        layer_meds = {n: statistics.median(ts) for n, ts in per_layer[variant].items()}
        slowest = max(layer_meds, key=layer_meds.get)
        numel = sum(w.numel() for _, w, _ in fits[variant])
        rows.append({
            "model": model_name, "scheme": variant, "layers": len(fits[variant]), "of_layers": len(layers),
            "weights": numel, "kept": kept[variant], "achieved_rate": numel / max(kept[variant], 1),
            "total_ms_median": med * 1e3, "total_ms_all": [t * 1e3 for t in totals[variant]],
            "per_layer_ms_mean": med * 1e3 / len(fits[variant]), "slowest_layer": slowest,
            "slowest_layer_ms": layer_meds[slowest] * 1e3, "mweights_per_s": numel / med / 1e6,
            "ratio_vs_unstructured": med / base,
        })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [r for m in MODELS for r in measure(m, args.rate, args.repeats)]
    table = Table(title=f"Scheme cost: mask computation at rate {args.rate:g}, every applicable layer "
                        f"(median of {args.repeats} interleaved repeats, {args.threads} thread(s))")
    for col in ("model", "scheme", "layers", "weights", "achieved rate", "total ms", "ms / layer",
                "Mweights/s", "vs unstructured", "slowest layer (ms)"):
        table.add_column(col, justify="left" if col in ("model", "scheme", "slowest layer (ms)") else "right")
    for r in rows:
        table.add_row(r["model"], r["scheme"], f"{r['layers']}/{r['of_layers']}", f"{r['weights'] / 1e6:.2f}M",
                      f"{r['achieved_rate']:.2f}", f"{r['total_ms_median']:.1f}", f"{r['per_layer_ms_mean']:.2f}",
                      f"{r['mweights_per_s']:.0f}", f"{r['ratio_vs_unstructured']:.2f}x",
                      f"{r['slowest_layer']} ({r['slowest_layer_ms']:.1f})")
    Console(width=200).print(table)
    meta = {
        "benchmark": "bench_scheme_cost", "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_scheme_cost.py " + " ".join(
            f"--{k} {v}" for k, v in (("repeats", args.repeats), ("rate", args.rate), ("threads", args.threads))),
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "python": platform.python_version()},
        "rate": args.rate, "repeats": args.repeats, "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
