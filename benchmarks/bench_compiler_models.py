"""Whole models, batch 1: compiled TVM vs torch eager vs ONNX Runtime (interleaved, one process),
compile time, and TVM's unscheduled default lowering for contrast.

    .venv/bin/python benchmarks/bench_compiler_models.py --threads 2 --sizes 224 64
    .venv/bin/python benchmarks/bench_compiler_models.py --models efficientnet_b0 --sizes 64 --no-untuned
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import timm
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from npas_lightning.compiler import compile_model
from npas_lightning.compiler.engines import measure_interleaved, onnxruntime_engine, torch_engine, tvm_engine
from npas_lightning.compiler.measure import LocalSession

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fresh_tile_cache  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MODELS = ["efficientnet_b0", "efficientnet_b0:hard", "mobilenetv3_large_100", "mobilenetv3_large_100:hard",
          "resnet50", "resnet50:hard"]


def build(spec: str) -> nn.Module:
    name, _, variant = spec.partition(":")
    kwargs = {"act_layer": nn.Hardswish} if variant == "hard" else {}
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def bench_one(spec: str, size: int, threads: int, number: int, repeat: int, untuned: bool) -> dict:
    torch.manual_seed(0)
    model = build(spec)
    x = torch.randn(1, 3, size, size)
    t0 = time.perf_counter()
    compiled = compile_model(model, x, threads=threads, tile_cache=fresh_tile_cache())
    compile_s = time.perf_counter() - t0
    xn = x.numpy()
    engines = [tvm_engine(compiled, xn, LocalSession()), torch_engine(model, xn, threads),
               onnxruntime_engine(model, xn, threads)]
    stats = measure_interleaved(engines, number=number, repeat=repeat, warmup=2, threads=threads,
                                target="host", input_shape=x.shape)
    for e in engines:
        if e.cleanup:
            e.cleanup()
    row = {"model": spec, "input": size, "compile_s": compile_s, "compile_breakdown": compiled.timings,
           "max_rel_err": compiled.numerics.get("max_rel"),
           **{f"{k}_ms": v.median_ms for k, v in stats.items()},
           "stats": {k: v.to_dict() for k, v in stats.items()}}
    row["tvm_vs_ort"] = row["tvm_ms"] / row["onnxruntime_ms"]
    row["tvm_vs_torch"] = row["tvm_ms"] / row["torch_ms"]
    if untuned:
        t1 = time.perf_counter()
        plain = compile_model(model, x, threads=threads, schedule=False, check=False)
        row["untuned_compile_s"] = time.perf_counter() - t1
        row["untuned_ms"] = plain.measure(number=1, repeat=3, warmup=1).median_ms
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--sizes", nargs="+", type=int, default=[224, 64])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--number", type=int, default=10)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--no-untuned", action="store_true")
    args = p.parse_args()
    rows = []
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
            "threads": args.threads, "command": "benchmarks/bench_compiler_models.py " + " ".join(
                f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in vars(args).items())}
    for size in args.sizes:
        for spec in args.models:
            row = bench_one(spec, size, args.threads, args.number, args.repeat, not args.no_untuned)
            rows.append(row)
            Console().print(f"{spec}@{size}: tvm {row['tvm_ms']:.2f} ms, torch {row['torch_ms']:.2f}, "
                            f"ort {row['onnxruntime_ms']:.2f}, tvm/ort {row['tvm_vs_ort']:.2f}, "
                            f"compile {row['compile_s']:.1f}s")
            out = RESULTS / f"bench_compiler_models_{'_'.join(map(str, args.sizes))}.json"  # e.g. ..._224.json
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    table = Table(title=f"whole models, batch 1, {args.threads} threads (ms, medians)")
    for col in ("model", "input", "TVM", "torch", "ORT", "TVM/ORT", "TVM/torch", "compile s", "untuned TVM"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["model"], str(r["input"]), f"{r['tvm_ms']:.2f}", f"{r['torch_ms']:.2f}",
                      f"{r['onnxruntime_ms']:.2f}", f"{r['tvm_vs_ort']:.2f}", f"{r['tvm_vs_torch']:.2f}",
                      f"{r['compile_s']:.1f}", f"{r['untuned_ms']:.1f}" if "untuned_ms" in r else "-")
    Console().print(table)


if __name__ == "__main__":
    main()
