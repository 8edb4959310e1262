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
maps through L3 and memory) and the parallel round trip of :mod:`_placement` (what one parallel loop
with no work costs; it grows when the host runs the vCPUs on cores far apart).

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


def machine_state(threads: int, target: str = "host") -> dict[str, float]:
    """``{"fma": GFLOP/s, "copy_gbs": GB/s, "round_trip_us": µs}``: compute, memory and the cores'
    distance of the moment (see the module docstring)."""
    from _placement import parallel_round_trip_us

    return {"fma": fma_peak_gflops(threads, target), "copy_gbs": copy_bandwidth_gbs(threads),
            "round_trip_us": parallel_round_trip_us(threads, target)}


def best_peak(*peaks: dict[str, float]) -> dict[str, float]:
    """Per key, the highest of several :func:`machine_peak` measurements (on a shared VM a busy moment
    lowers one of them; the roofline wants what the cores can do)."""
    return {k: max(p[k] for p in peaks) for k in peaks[0]}
