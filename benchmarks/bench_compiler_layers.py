"""Layer level: the project's kernels in GFLOP/s against this machine's measured peak (the cores'
multiply-add throughput, ``_peak.py``, with torch's sgemm 2048^3 reported next to it; both in the
same process), default tile vs the tuned grid's best.

    .venv/bin/python benchmarks/bench_compiler_layers.py --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from npas_lightning.compiler.conv_kernel import ConvGeometry
from npas_lightning.compiler.rewrite import TilePlanner, time_conv_tile
from npas_lightning.compiler.targets import resolve_target
from npas_lightning.compiler.threads import configure_threads
from npas_lightning.compiler.tuning import TileCache

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peak import machine_peak  # noqa: E402

OUT = Path(__file__).parent / "results" / "bench_compiler_layers.json"
LAYERS = [  # name, kind, (n, c, h, w, f, k, stride, pad)
    ("1x1 256->256 @28", "conv", (1, 256, 28, 28, 256, 1, 1, 0)),
    ("3x3 128->128 @28", "conv", (1, 128, 28, 28, 128, 3, 1, 1)),
    ("3x3 s2 64->128 @56", "conv", (1, 64, 56, 56, 128, 3, 2, 1)),
    ("dw 3x3 144 @56", "depthwise", (1, 144, 56, 56, 144, 3, 1, 1)),
    ("dw 5x5 240 @28", "depthwise", (1, 240, 28, 28, 240, 5, 1, 2)),
    ("FC 1024->1000 b1", "dense", (1, 1024, 1000)),
    ("FC 1024->1000 b64", "dense", (64, 1024, 1000)),
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    spec = resolve_target("host", threads=args.threads)

    configure_threads(args.threads)
    peaks = machine_peak(args.threads)
    peak = peaks["fma"]
    rows = []
    for name, kind, shape in LAYERS:
        planner = TilePlanner(spec, tune=True, cache=TileCache(Path("/tmp") / f"npas-bench-tiles-{time.time_ns()}.json"))
        times = {}
        if kind == "dense":
            n, c, f = shape
            flops = 2 * n * c * f
            default, _ = TilePlanner(spec, tune=False, cache=TileCache(Path("/tmp/npas-none.json"))).dense_tile(n, c, f)
            from npas_lightning.compiler.dense_kernel import dense_primfunc
            from npas_lightning.compiler.tuning import measure_kernel

            def run(tile, n=n, c=c, f=f):
                fn = -(-f // tile.ft)
                shapes = [((n, c), "float32"), ((fn, c, tile.ft), "float32"), ((n, fn * tile.ft), "float32")]
                return measure_kernel(dense_primfunc(n, c, f, tile), spec.tvm_target, shapes, number=20, repeat=5)
            times["default"] = run(default)
            best, _ = planner.dense_tile(n, c, f)
            times["tuned"] = run(best)
        else:
            n, c, h, w, f, k, s, pd = shape

            def geom(t, n=n, c=c, h=h, w=w, f=f, k=k, s=s, pd=pd):
                return ConvGeometry.make(n, c, h, w, f, (k, k), s, (pd,) * 4, pixels=t.pixels)
            key = {"n": n, "c": c, "h": h, "w": w, "f": f, "kh": k, "kw": k, "s": s, "p": [pd] * 4}
            none = TilePlanner(spec, tune=False, cache=TileCache(Path("/tmp/npas-none.json")))
            default, _ = none.conv_tile(kind, key, geom)
            best, _ = planner.conv_tile(kind, key, geom)
            g = geom(default)
            flops = g.flops // (f if kind == "depthwise" else 1)
            for label, tile in (("default", default), ("tuned", best)):
                times[label] = time_conv_tile(spec.tvm_target, kind, geom(tile), tile, number=20, repeat=5)
        row = {"layer": name, "gflop": flops / 1e9, **{f"{k}_ms": v * 1e3 for k, v in times.items()},
               "tuned_gflops": flops / times["tuned"] / 1e9, "default_gflops": flops / times["default"] / 1e9}
        row["tuned_pct_peak"] = 100 * row["tuned_gflops"] / peak
        rows.append(row)
        Console().print(row)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.processor() or platform.machine()} ({spec.target['mcpu']})",
            "threads": args.threads, "peak_gflops_fma": peak, "peak_gflops_torch_sgemm": peaks["torch_sgemm"]}
    OUT.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    t = Table(title=f"project kernels, {args.threads} threads, FMA peak {peak:.0f} GFLOP/s (torch sgemm {peaks['torch_sgemm']:.0f})")
    for col in ("layer", "default ms", "tuned ms", "GFLOP/s", "% peak"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["layer"], f"{r['default_ms']:.3f}", f"{r['tuned_ms']:.3f}", f"{r['tuned_gflops']:.1f}",
                  f"{r['tuned_pct_peak']:.0f}")
    Console().print(t)


if __name__ == "__main__":
    main()
