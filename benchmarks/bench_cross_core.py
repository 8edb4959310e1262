"""What it costs one core to read, or overwrite, data the other core has just written.

A whole model is a chain of compiled functions, each split between the cores. Most of our kernels
split by channels (filter tiles, depthwise channel planes, one channel plane per iteration of the
generic functions), so a 1x1 conv, which reads every input channel of its pixels, reads half of its
input from the other core's cache; and the memory planner reuses each buffer for later tensors,
which a function may write with another split than the one before it. This measures both costs
alone, with no model around them:

- a producer writes a buffer of ``size`` bytes, each core half of it (a TIR ``parallel`` loop of
  two iterations, vectorised);
- then, timed: a function reads that buffer into a second one, each core either the half it wrote
  itself ("read: same core") or the half the other core wrote ("read: other core"); or it
  overwrites the buffer from a read-only one, each core the half it wrote ("write: own lines") or
  the other core's half ("write: other core's lines");
- "warm": the same-core reader called again and again on data already in its caches.

All variants are built the same way and timed in alternation. Sizes run from L2-resident buffers to
ones larger than both L2 caches together.

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


def _halves_func(half: int, read_other: bool, write_other: bool, scale: float, offset: float):
    """``out[h_w, i] = in[h_r, i] * scale + offset`` over two halves, one per parallel iteration
    ``t``: ``h_r`` / ``h_w`` are ``t``, or the other core's half ``1 - t`` when ``read_other`` /
    ``write_other``."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.tirx.script import builder as T

    with IRBuilder() as ib, T.prim_func():
        T.func_name("main")
        x = T.arg("X", T.buffer((2, half), "float32"))
        y = T.arg("Y", T.buffer((2, half), "float32"))
        with T.parallel(0, 2) as t, T.serial(0, half // LANES) as i, T.vectorized(0, LANES) as v:
            src, dst = (1 - t if read_other else t), (1 - t if write_other else t)
            T.buffer_store(y, x[src, i * LANES + v] * scale + offset, [dst, i * LANES + v])
    return ib.get()


def _built(func, target):
    import tvm

    lib = tvm.tirx.build(func, target=target)
    return lib[lib.entry_name]


#: timed variants: (read the other core's half, write the other core's half, overwrite the producer's buffer)
VARIANTS = {"read: same core": (False, False, False), "read: other core": (True, False, False),
            "write: own lines": (False, False, True), "write: other core's lines": (False, True, True)}


def measure(size_bytes: int, target, calls: int, rounds: int) -> dict[str, float]:
    """Median µs per call of each of :data:`VARIANTS` right after the producer, and ``"warm"``."""
    import tvm

    half = size_bytes // 4 // 2 // LANES * LANES
    producer = _built(_halves_func(half, False, False, 1.0001, 0.0), target)
    funcs = {name: _built(_halves_func(half, r, w, 1.0, 1.0), target) for name, (r, w, _) in VARIANTS.items()}
    rng = np.random.default_rng(0)
    a, b, c, ro = (tvm.runtime.tensor(rng.random((2, half), dtype="float32")) for _ in range(4))
    samples: dict[str, list[float]] = {name: [] for name in [*VARIANTS, "warm"]}
    clock = time.perf_counter
    for _ in range(rounds):
        for name, func in funcs.items():  # alternating: a busy moment of the VM spoils all of them
            src, dst = (ro, b) if VARIANTS[name][2] else (b, c)
            spent = 0.0
            for _ in range(calls):
                producer(a, b)
                t0 = clock()
                func(src, dst)
                spent += clock() - t0
            samples[name].append(spent / calls * 1e6)
        warm = funcs["read: same core"]
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
        rows.append({"size_kib": kib, "warm_us": t["warm"], **{k.replace(": ", "_").replace(" ", "_").replace("'", ""):
                                                                v for k, v in t.items() if k != "warm"},
                     "read_other_vs_same": t["read: other core"] / t["read: same core"],
                     "write_other_vs_own": t["write: other core's lines"] / t["write: own lines"]})
    table = Table(title="right after a producer wrote a buffer, half on each core, 2 threads (µs per call, median)")
    for col in ("buffer", "warm (alone)", *VARIANTS, "read other/same", "write other/own"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{r['size_kib']} KiB", f"{r['warm_us']:.2f}", f"{r['read_same_core']:.2f}",
                      f"{r['read_other_core']:.2f}", f"{r['write_own_lines']:.2f}",
                      f"{r['write_other_cores_lines']:.2f}", f"{r['read_other_vs_same']:.2f}x",
                      f"{r['write_other_vs_own']:.2f}x")
    Console(width=150).print(table)
    path = write_results(NAME, "python benchmarks/bench_cross_core.py " + " ".join(sys.argv[1:]), {"rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
