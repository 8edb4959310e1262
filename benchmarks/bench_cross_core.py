"""What it costs one core to read data the other core has just written.

A whole model is a chain of compiled functions, each split between the cores. Most of our kernels
split by channels (filter tiles, depthwise channel planes, one channel plane per iteration of the
generic functions), so a 1x1 conv, which reads every input channel of its pixels, reads half of its
input from the other core's cache. This measures that cost alone, with no model around it:

- a producer writes a buffer of ``size`` bytes, each core half of it (a TIR ``parallel`` loop of
  two iterations, vectorised);
- a consumer then reads it, each core either the half it wrote itself ("same core") or the half
  the other core wrote ("other core"), and writes a second buffer;
- the consumer alone, called again and again on data already in its caches ("warm").

Only the consumer is timed; both consumers are built the same way and timed in alternation. Sizes
run from L2-resident buffers to ones larger than both L2 caches together.

Usage::

    .venv/bin/python benchmarks/bench_cross_core.py             # about 30 seconds
    .venv/bin/python benchmarks/bench_cross_core.py --sizes-kib 256 1024
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from npas_lightning.compiler.targets import resolve_target  # noqa: E402
from npas_lightning.compiler.threads import configure_threads  # noqa: E402

NAME = "bench_cross_core"
LANES = 16


def _halves_func(half: int, cross: bool, scale: float, offset: float):
    """``out[t, i] = in[t or 1 - t, i] * scale + offset`` over two halves, one per parallel iteration."""
    from tvm import s_tir, te

    x = te.placeholder((2, half), "float32", name="X")
    y = te.compute((2, half), lambda t, i: x[1 - t if cross else t, i] * scale + offset, name="Y")
    sch = s_tir.Schedule(te.create_prim_func([x, y]))
    t, i = sch.get_loops(sch.get_sblock("Y"))
    _, vec = sch.split(i, [None, LANES])
    sch.parallel(t)
    sch.vectorize(vec)
    return sch.mod["main"]


def _built(func, target):
    import tvm

    lib = tvm.tirx.build(func, target=target)
    return lib[lib.entry_name]


def measure(size_bytes: int, target, calls: int, rounds: int) -> dict[str, float]:
    """Median µs per consumer call: after the producer, same core and other core; and warm alone."""
    import tvm

    half = size_bytes // 4 // 2 // LANES * LANES
    producer = _built(_halves_func(half, False, 1.0001, 0.0), target)
    consumers = {"same core": _built(_halves_func(half, False, 1.0, 1.0), target),
                 "other core": _built(_halves_func(half, True, 1.0, 1.0), target)}
    a, b, c = (tvm.runtime.tensor(np.random.default_rng(0).random((2, half), dtype="float32")) for _ in range(3))
    samples: dict[str, list[float]] = {"same core": [], "other core": [], "warm": []}
    clock = time.perf_counter
    for _ in range(rounds):
        for name, consumer in consumers.items():  # alternating: a busy moment of the VM spoils both
            spent = 0.0
            for _ in range(calls):
                producer(a, b)
                t0 = clock()
                consumer(b, c)
                spent += clock() - t0
            samples[name].append(spent / calls * 1e6)
        warm = consumers["same core"]
        t0 = clock()
        for _ in range(calls):
            warm(b, c)
        samples["warm"].append((clock() - t0) / calls * 1e6)
    return {name: float(np.median(v)) for name, v in samples.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes-kib", nargs="+", type=int, default=[64, 256, 512, 1024, 2048, 8192],
                   help="buffer sizes (KiB) the producer writes and the consumer reads")
    p.add_argument("--calls", type=int, default=200, help="consumer calls per round")
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args()
    bad = [s for s in args.sizes_kib if s < 1]
    if bad:
        p.error(f"--sizes-kib {bad}: sizes must be at least 1 KiB")
    spec = resolve_target("host", threads=2)
    configure_threads(2)
    rows = []
    for kib in args.sizes_kib:
        t = measure(kib * 1024, spec.tvm_target, args.calls, args.rounds)
        rows.append({"size_kib": kib, "same_core_us": t["same core"], "other_core_us": t["other core"],
                     "warm_us": t["warm"], "other_vs_same": t["other core"] / t["same core"]})
    table = Table(title="consumer reading a buffer the producer just wrote, 2 threads (µs per call, median)")
    for col in ("buffer", "warm (alone)", "same core", "other core", "other / same"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{r['size_kib']} KiB", f"{r['warm_us']:.2f}", f"{r['same_core_us']:.2f}",
                      f"{r['other_core_us']:.2f}", f"{r['other_vs_same']:.2f}x")
    Console(width=120).print(table)
    path = write_results(NAME, "python benchmarks/bench_cross_core.py " + " ".join(sys.argv[1:]), {"rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
