"""The machine's measured float32 peak, the denominator of the benchmarks' rooflines.

Two measurements, both on ``threads`` threads:

- ``fma``: a TVM kernel of independent multiply-add chains held in vector registers (16 chains of
  one vector each per thread, no memory traffic in the loop), built for the compiler's own target:
  the most multiply-adds per second the cores can issue, whatever the vendor;
- ``torch_sgemm``: torch's 2048^3 matrix product, the peak the benchmarks used before. On a 2-core
  AMD EPYC (Zen 5) VM it reached 205-230 GFLOP/s where the FMA kernel reached 515-550 (and the
  project's own dense conv kernels about 470), so a roofline over it flattered every kernel.

The rooflines use ``fma`` (the best of a measurement before and after the benchmark, see
:func:`best_peak`); ``torch_sgemm`` is reported next to it.

:func:`machine_state` adds the bandwidth of a 64 MB copy (whole models at batch 1 move their feature
maps through L3 and memory) and :func:`parallel_round_trip_us`, what one parallel loop costs with no
work in it: the workers started and waited for, a few cache lines passed between the cores.

On the shared 2-vCPU AMD VM the round trip is 0.63-0.74 µs in most minutes and 1.8-1.9 µs in others,
when the host runs the two vCPUs on cores far apart: a cache line then takes 360-410 ns to go from
one core to the other and back instead of 72-120 ns, and reading 256 KiB the other core has just
written 6.3-6.7 µs instead of 2.1-3.0 µs (a C ping-pong between two threads pinned to the two vCPUs,
measured in turns with the models; 2026-11-27). Single-core speed does not change, so a model on one
thread runs as fast as ever, but every model on two threads, ONNX Runtime's included, loses a
roughly fixed 0.5-0.9 ms per run (mobilenetv3 @224: its 5x build 0.60-0.74 -> 1.23-1.58 ms). The
whole-model benchmark therefore measures the round trip before every round and reports the rounds
of each placement apart.

Example:
    >>> peak = machine_peak(2)            # doctest: +SKIP
    >>> sorted(peak)                      # doctest: +SKIP
    ['fma', 'torch_sgemm']
"""

from __future__ import annotations

import functools
import time

import numpy as np

#: independent accumulator vectors per thread: enough to cover the FMA latency (4 cycles) on two
#: pipes with room to spare, few enough to stay in the 32 vector registers of AVX-512
FMA_CHAINS = 16
#: multiply-adds per chain per call: about 1 ms per call at 300 GFLOP/s per core
FMA_ITERS = 20000


def sgemm_gflops(threads: int, size: int = 2048) -> float:
    """torch's float32 matrix product ``size^3`` on ``threads`` threads: best of 5, GFLOP/s."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


@functools.lru_cache(maxsize=8)
def _fma_kernel(threads: int, lanes: int, chains: int, iters: int):
    """PrimFunc ``(A[2], Y[threads, chains, lanes])``: each thread runs ``chains`` vector chains
    ``acc = acc * A[0] + A[1]`` for ``iters`` steps, then stores them (so nothing is dead code)."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.tirx.script import builder as T

    with IRBuilder() as ib, T.prim_func():
        T.func_name("main")
        a = T.arg("A", T.buffer((2,), "float32"))
        y = T.arg("Y", T.buffer((threads, chains, lanes), "float32"))
        T.func_attr({"tirx.noalias": True})
        with T.parallel(0, threads) as t:
            acc = [T.alloc_buffer((lanes,), "float32", scope="global") for _ in range(chains)]  # stack, then registers
            for j in range(chains):
                with T.vectorized(0, lanes) as v:
                    T.buffer_store(acc[j], tirx.Cast("float32", v + j), [v])
            with T.serial(0, iters):
                for j in range(chains):
                    with T.vectorized(0, lanes) as v:
                        T.buffer_store(acc[j], acc[j][v] * a[0] + a[1], [v])
            for j in range(chains):
                with T.vectorized(0, lanes) as v:
                    T.buffer_store(y, acc[j][v], [t, j, v])
    return ib.get()


def fma_peak_gflops(threads: int, target: str = "host", repeat: int = 9) -> float:
    """Multiply-add throughput of ``threads`` cores (GFLOP/s, best of ``repeat`` rounds of 20 calls)
    on the compiler's ``target``: :func:`_fma_kernel` built with TVM's LLVM backend."""
    import tvm

    from npas_lightning.compiler.targets import resolve_target
    from npas_lightning.compiler.threads import configure_threads

    spec = resolve_target(target, threads=threads)
    configure_threads(threads)
    lanes = spec.vector_lanes
    lib = tvm.tirx.build(_fma_kernel(threads, lanes, FMA_CHAINS, FMA_ITERS), target=spec.tvm_target)
    dev = tvm.cpu()
    a = tvm.runtime.tensor(np.array([0.999999, 1e-6], "float32"), dev)
    y = tvm.runtime.empty((threads, FMA_CHAINS, lanes), "float32", dev)
    seconds = min(lib.time_evaluator(lib.entry_name, dev, number=20, repeat=repeat)(a, y).results)
    return 2 * threads * FMA_CHAINS * lanes * FMA_ITERS / seconds / 1e9


def machine_peak(threads: int, target: str = "host") -> dict[str, float]:
    """``{"fma": ..., "torch_sgemm": ...}`` GFLOP/s on ``threads`` threads (see the module docstring)."""
    return {"fma": fma_peak_gflops(threads, target), "torch_sgemm": sgemm_gflops(threads)}


def copy_bandwidth_gbs(threads: int, megabytes: int = 64) -> float:
    """torch's copy of a ``megabytes`` float32 tensor on ``threads`` threads: best of 9, GB/s read +
    written (a buffer larger than the L2 and L3 of a small VM)."""
    import torch

    torch.set_num_threads(threads)
    n = megabytes * 2**20 // 4
    src, dst = torch.randn(n), torch.empty(n)
    for _ in range(3):
        dst.copy_(src)
    best = float("inf")
    for _ in range(9):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * n * 4 / best / 1e9


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


def parallel_round_trip_us(threads: int, target: str = "host", calls: int = 2000, repeat: int = 3) -> float:
    """µs per call of :func:`_empty_parallel` on ``threads`` threads, called ``calls`` times back to
    back (median of ``repeat``): what every parallel function of a model pays before its work, and a
    probe of how far apart the cores are at the moment (see the module docstring). About 5 ms."""
    import tvm

    from npas_lightning.compiler.targets import resolve_target
    from npas_lightning.compiler.threads import configure_threads

    spec = resolve_target(target, threads=threads)
    configure_threads(threads)
    lib = _built_round_trip(threads, spec.tvm_target)
    y = tvm.runtime.tensor(np.zeros((threads, 16), "float32"), tvm.cpu())
    timer = lib.time_evaluator(lib.entry_name, tvm.cpu(), number=calls, repeat=repeat)
    return float(np.median(timer(y).results)) * 1e6


_ROUND_TRIP_LIBS: dict = {}


def _built_round_trip(threads: int, target):
    """:func:`_empty_parallel` built once per thread count and target (it is probed before every round)."""
    import tvm

    key = (threads, str(target))
    if key not in _ROUND_TRIP_LIBS:
        _ROUND_TRIP_LIBS[key] = tvm.tirx.build(_empty_parallel(threads), target=target)
    return _ROUND_TRIP_LIBS[key]


def machine_state(threads: int, target: str = "host") -> dict[str, float]:
    """``{"fma": GFLOP/s, "copy_gbs": GB/s, "round_trip_us": µs}``: compute, memory and the cores'
    distance of the moment (see the module docstring)."""
    return {"fma": fma_peak_gflops(threads, target), "copy_gbs": copy_bandwidth_gbs(threads),
            "round_trip_us": parallel_round_trip_us(threads, target)}


#: rounds whose parallel round trip is more than this times the lowest of the benchmark count as
#: "far" (the cores placed apart by the host): 0.63-0.74 µs near, 1.8-1.9 µs far on the AMD VM
FAR_ROUND_TRIP_FACTOR = 1.5


def placements(round_trips: list[float]) -> list[str]:
    """``"near"`` or ``"far"`` per round: a round trip above :data:`FAR_ROUND_TRIP_FACTOR` times the
    lowest one is far.

    Example:
        >>> placements([0.66, 0.70, 1.86, 0.68])
        ['near', 'near', 'far', 'near']
    """
    low = min(round_trips)
    return ["far" if rt > FAR_ROUND_TRIP_FACTOR * low else "near" for rt in round_trips]


def best_peak(*peaks: dict[str, float]) -> dict[str, float]:
    """Per key, the highest of several :func:`machine_peak` measurements (on a shared VM a busy moment
    lowers one of them; the roofline wants what the cores can do)."""
    return {k: max(p[k] for p in peaks) for k in peaks[0]}
