"""Compile time with the code generated on one thread vs on every core (``codegen_workers``), and
with the functions of an earlier compile reused.

Each model / plan is compiled by ``compile_model`` (import, rewrite, fuse, code generation; the
numerics check is off, it is not part of the compile time) with ``codegen_workers=1`` (what
``tvm.compile`` does: one LLVM module on one thread) and with every CPU, the function cache emptied
first, alternating, ``--rounds`` times each; the table shows the medians of ``codegen_s`` (the build
step) and ``total_s`` (the whole compile, the issue's "<= 10 s for efficientnet_b0 with every layer
sparse"). Both builds of a pair are run on one random input and must give bitwise the same output.

The "candidate" rows time what a search does next: after the 5x plan, a plan with ``--changed``
layers (every 16th) at 3x instead, compiled with the functions of the first compile kept (reused)
and with the cache emptied, alternating.

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


def _model(name: str, rate: float | None, rates: dict[str, float] | None = None):
    import timm
    import torch

    from npas_lightning.algorithms.masking import apply_masks, compute_masks

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    if rate is None:
        return model, None
    from bench_sparse_models import uniform_plan

    plan = uniform_plan(model, rate, balanced=True, rates=rates)
    apply_masks(model, compute_masks(model, plan), plan)
    return model, plan


def _candidate_row(name, args, x, xn, many: int) -> dict:
    """A search's next candidate: the 5x plan with every ``--every``-th pruned layer at 3x, compiled
    after the 5x plan with its functions kept ("reused") and with the cache emptied ("cold")."""
    from npas_lightning.compiler import compile_model
    from npas_lightning.compiler.codegen import clear_function_cache

    base, base_plan = _model(name, args.rate)
    changed = {k: 3.0 for k in list(base_plan)[::args.every]}
    model, plan = _model(name, args.rate, changed)
    times: dict[str, list[dict]] = {"cold": [], "reused": []}
    outputs = {}
    for _ in range(args.rounds):
        for mode in ("cold", "reused"):
            clear_function_cache()
            if mode == "reused":
                compile_model(base, x, plan=base_plan, check=False, codegen_workers=many, tile_cache=fresh_tile_cache())
            c = compile_model(model, x, plan=plan, check=False, codegen_workers=many, tile_cache=fresh_tile_cache())
            times[mode].append(c.timings)
            outputs.setdefault(mode, c.run(xn))
    row = {"model": name, "plan": f"{args.rate:g}x, {len(changed)} of {len(base_plan)} layers at 3x",
           "workers": many, "same_output": bool(np.array_equal(outputs["cold"], outputs["reused"])),
           "functions": int(times["reused"][0]["codegen_functions"]),
           "reused": int(np.median([t["codegen_reused"] for t in times["reused"]]))}
    for mode in ("cold", "reused"):
        for part in ("codegen_s", "total_s"):
            row[f"{part}_{mode}"] = float(np.median([t[part] for t in times[mode]]))
    print(f"{name:24s} candidate: {row['reused']}/{row['functions']} functions reused, codegen "
          f"{row['codegen_s_cold']:.2f} -> {row['codegen_s_reused']:.2f} s, total {row['total_s_cold']:.2f} -> "
          f"{row['total_s_reused']:.2f} s, same output: {row['same_output']}", flush=True)
    return row


def _print_table(title: str, columns, cells) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in cells:
        table.add_row(*row)
    Console().print(table)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["efficientnet_b0", "mobilenetv3_large_100"])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rate", type=float, default=5.0, help="uniform balanced plan compiled besides the dense model")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--every", type=int, default=16, help="candidate rows: every n-th pruned layer at 3x")
    args = p.parse_args(argv)
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be >= 1, got {args.rounds}")
    import torch

    from npas_lightning.compiler import compile_model
    from npas_lightning.compiler.codegen import clear_function_cache, codegen_workers

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
                    clear_function_cache()
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
        rows.append(_candidate_row(name, args, x, xn, many))
    _print_table(f"compile time, code generated on 1 vs {many} threads (median of {args.rounds})",
                 ("model", "plan", "codegen 1 (s)", f"codegen {many} (s)", "speedup", "total 1 (s)",
                  f"total {many} (s)", "same output"),
                 [(r["model"], r["plan"], f"{r['codegen_s_one']:.2f}", f"{r['codegen_s_many']:.2f}",
                   f"{r['codegen_speedup']:.2f}x", f"{r['total_s_one']:.2f}", f"{r['total_s_many']:.2f}",
                   str(r["same_output"])) for r in rows if "codegen_s_one" in r])
    _print_table(f"the next candidate, {many} threads: functions of the 5x compile reused vs built again",
                 ("model", "plan", "reused", "codegen cold (s)", "codegen reused (s)", "total cold (s)",
                  "total reused (s)", "same output"),
                 [(r["model"], r["plan"], f"{r['reused']}/{r['functions']}", f"{r['codegen_s_cold']:.2f}",
                   f"{r['codegen_s_reused']:.2f}", f"{r['total_s_cold']:.2f}", f"{r['total_s_reused']:.2f}",
                   str(r["same_output"])) for r in rows if "codegen_s_cold" in r])
    path = write_results("bench_codegen", "python benchmarks/bench_codegen.py " + " ".join(argv or sys.argv[1:]),
                         {"rows": rows, "rounds": args.rounds, "size": args.size,
                          "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
