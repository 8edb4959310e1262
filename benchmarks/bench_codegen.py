"""Compile time with the code generated on one thread vs on every core (``codegen_workers``).

Each model / plan is compiled by ``compile_model`` (import, rewrite, fuse, code generation; the
numerics check is off, it is not part of the compile time) with ``codegen_workers=1`` (what
``tvm.compile`` does: one LLVM module on one thread) and with every CPU, alternating, ``--rounds``
times each; the table shows the medians of ``codegen_s`` (the build step) and ``total_s`` (the whole
compile, the issue's "<= 10 s for efficientnet_b0 with every layer sparse"). Both builds of a pair
are run on one random input and must give bitwise the same output.

    .venv/bin/python benchmarks/bench_codegen.py                  # efficientnet_b0, mobilenetv3 @224
    .venv/bin/python benchmarks/bench_codegen.py --models efficientnet_b0 --rounds 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import fresh_tile_cache, write_results  # noqa: E402


def _model(name: str, rate: float | None):
    import timm
    import torch

    from npas_lightning.algorithms.masking import apply_masks, compute_masks

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    if rate is None:
        return model, None
    from bench_sparse_models import uniform_plan

    plan = uniform_plan(model, rate, balanced=True)
    apply_masks(model, compute_masks(model, plan), plan)
    return model, plan


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["efficientnet_b0", "mobilenetv3_large_100"])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rate", type=float, default=5.0, help="uniform balanced plan compiled besides the dense model")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be >= 1, got {args.rounds}")
    import torch

    from npas_lightning.compiler import compile_model
    from npas_lightning.compiler.codegen import codegen_workers

    many = codegen_workers(None)
    x = torch.randn(1, 3, args.size, args.size)
    xn = np.random.default_rng(0).standard_normal(tuple(x.shape)).astype("float32")
    rows = []
    for name in args.models:
        for rate in (None, args.rate):
            model, plan = _model(name, rate)
            times: dict[int, list[dict]] = {1: [], many: []}
            outputs = {}
            for _ in range(args.rounds):
                for workers in (1, many):
                    c = compile_model(model, x, plan=plan, check=False, codegen_workers=workers,
                                      tile_cache=fresh_tile_cache())
                    times[workers].append(c.timings)
                    outputs.setdefault(workers, c.run(xn))
            row = {"model": name, "plan": "dense" if rate is None else f"{rate:g}x", "workers": many,
                   "same_output": bool(np.array_equal(outputs[1], outputs[many]))}
            for workers, key in ((1, "one"), (many, "many")):
                for part in ("codegen_s", "total_s", "import_s"):
                    row[f"{part}_{key}"] = float(np.median([t[part] for t in times[workers]]))
                row[f"codegen_s_{key}_all"] = [round(t["codegen_s"], 3) for t in times[workers]]
            row["codegen_speedup"] = row["codegen_s_one"] / row["codegen_s_many"]
            rows.append(row)
            print(f"{name:24s} {row['plan']:5s} codegen {row['codegen_s_one']:.2f} -> {row['codegen_s_many']:.2f} s "
                  f"({row['codegen_speedup']:.2f}x)  total {row['total_s_one']:.2f} -> {row['total_s_many']:.2f} s  "
                  f"same output: {row['same_output']}", flush=True)
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"compile time, code generated on 1 vs {many} threads (median of {args.rounds})")
    for col in ("model", "plan", "codegen 1 (s)", f"codegen {many} (s)", "speedup", "total 1 (s)",
                f"total {many} (s)", "same output"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["model"], r["plan"], f"{r['codegen_s_one']:.2f}", f"{r['codegen_s_many']:.2f}",
                  f"{r['codegen_speedup']:.2f}x", f"{r['total_s_one']:.2f}", f"{r['total_s_many']:.2f}",
                  str(r["same_output"]))
    Console().print(t)
    path = write_results("bench_codegen", "python benchmarks/bench_codegen.py " + " ".join(argv or sys.argv[1:]),
                         {"rows": rows, "rounds": args.rounds, "size": args.size,
                          "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
