"""Where the host runs the two vCPUs at the moment: probes the whole-model benchmarks take before
every round, and the rule that labels each round ``near`` or ``far``.

On the project's shared 2-vCPU AMD EPYC VM the host runs the two vCPUs on nearby cores in most
minutes and on cores far apart in others. There a cache line takes 360-430 ns to go from one core
to the other and back instead of 70-130 ns, and reading 256 KiB that the other core has just
written takes 6.3-8 µs instead of 2.1-3.2 µs; each core alone runs as fast as ever. A model on two
threads reads the other core's writes at almost every layer, so in most of those minutes every
engine on two threads, ONNX Runtime's included, loses a roughly fixed 0.4-0.9 ms per run, and a
small pruned model's speedup falls by a third (``bench_core_placement.py``,
``bench_edges.py``; BENCHMARKS.md).

Two probes:

- :func:`parallel_round_trip_us`: µs per call of a TVM parallel loop with no work (the workers
  started and waited for). Always available; 0.60-0.75 µs near, 1.2-1.9 µs far, but also 2.3-3 µs
  while another process keeps the cores busy, near or far;
- :class:`PingPong`: ``core_pingpong.c`` built with the system's C compiler (when there is one): a
  cache line's round trip between threads pinned to CPUs 0 and 1, which only the placement moves.

:func:`placements` labels the rounds by the ping-pong where every round has it, else by the
parallel round trip.

Example:
    >>> placements([{"round_trip_us": 0.66}, {"round_trip_us": 1.86}])
    ['near', 'far']
    >>> placements([{"round_trip_us": 2.5, "line_round_trip_ns": 90}, {"round_trip_us": 1.5, "line_round_trip_ns": 400}])
    ['near', 'far']
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

#: a round is far when its cache line round trip exceeds this times the lowest of the benchmark
#: (the AMD VM: 70-130 ns near, 360-430 ns far)
FAR_LINE_FACTOR = 2.5
#: without the ping-pong: when its parallel round trip exceeds this times the lowest
FAR_ROUND_TRIP_FACTOR = 1.5
PINGPONG_SOURCE = Path(__file__).resolve().parent / "core_pingpong.c"


def _empty_parallel(threads: int):
    """PrimFunc ``(Y[threads, 16])``: a parallel loop of ``threads`` iterations, each adding 1 to one
    element of its own cache line (64 bytes apart): nothing to compute, only the launch and the wait."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.tirx.script import builder as T

    with IRBuilder() as ib, T.prim_func():
        T.func_name("main")
        y = T.arg("Y", T.buffer((threads, 16), "float32"))
        with T.parallel(0, threads) as t:
            T.buffer_store(y, y[t, 0] + T.float32(1), [t, 0])
    return ib.get()


_ROUND_TRIP_LIBS: dict = {}


def _built_round_trip(threads: int, target):
    """:func:`_empty_parallel` built once per thread count and target (it is probed before every round)."""
    import tvm

    key = (threads, str(target))
    if key not in _ROUND_TRIP_LIBS:
        _ROUND_TRIP_LIBS[key] = tvm.tirx.build(_empty_parallel(threads), target=target)
    return _ROUND_TRIP_LIBS[key]


def parallel_round_trip_us(threads: int, target: str = "host", calls: int = 2000, repeat: int = 3) -> float:
    """µs per call of :func:`_empty_parallel` on ``threads`` threads, called ``calls`` times back to
    back (median of ``repeat``): what every parallel function of a model pays before its work. About
    5 ms."""
    import tvm

    from npas_lightning.compiler.targets import resolve_target
    from npas_lightning.compiler.threads import configure_threads

    spec = resolve_target(target, threads=threads)
    configure_threads(threads)
    lib = _built_round_trip(threads, spec.tvm_target)
    y = tvm.runtime.tensor(np.zeros((threads, 16), "float32"), tvm.cpu())
    timer = lib.time_evaluator(lib.entry_name, tvm.cpu(), number=calls, repeat=repeat)
    return float(np.median(timer(y).results)) * 1e6


class PingPong:
    """``core_pingpong.c`` built once; calling it runs it: ``{"line_round_trip_ns", "read256k_other_us",
    "read256k_own_us"}``. :meth:`build` returns None where no C compiler is found."""

    def __init__(self, exe: Path):
        self.exe = exe

    @classmethod
    def build(cls) -> PingPong | None:
        cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if cc is None:
            return None
        exe = Path(tempfile.mkdtemp(prefix="npas-pingpong-")) / "core_pingpong"
        subprocess.run([cc, "-O2", "-pthread", str(PINGPONG_SOURCE), "-o", str(exe)], check=True)
        return cls(exe)

    def __call__(self) -> dict[str, float]:
        words = subprocess.run([str(self.exe)], capture_output=True, text=True, check=True).stdout.split()
        out = {key: float(value) for key, value in zip(words[::2], words[1::2], strict=True)}
        out["line_round_trip_ns"] = out.pop("roundtrip_ns")
        return out


def probe(threads: int, pingpong: PingPong | None) -> dict[str, float]:
    """One round's probes: ``round_trip_us``, and the ping-pong's keys when ``pingpong`` is given."""
    return {"round_trip_us": parallel_round_trip_us(threads), **(pingpong() if pingpong else {})}


def placements(probes: list[dict[str, float]]) -> list[str]:
    """``"near"`` or ``"far"`` per round (see the module docstring and its example). The rule is relative
    to the run's lowest probe: a run spent wholly on distant cores labels every round near, so the
    tables print the probes' medians too (a 380 ns cache line round trip is far on the AMD VM)."""
    key, factor = (("line_round_trip_ns", FAR_LINE_FACTOR) if all("line_round_trip_ns" in p for p in probes)
                   else ("round_trip_us", FAR_ROUND_TRIP_FACTOR))
    low = min(p[key] for p in probes)
    return ["far" if p[key] > factor * low else "near" for p in probes]


def rule(probes: list[dict[str, float]]) -> str:
    """The rule :func:`placements` applied, in words (for table titles)."""
    if all("line_round_trip_ns" in p for p in probes):
        return f"far: a cache line's round trip between the cores above {FAR_LINE_FACTOR:g}x the lowest"
    return f"far: the parallel round trip above {FAR_ROUND_TRIP_FACTOR:g}x the lowest"
