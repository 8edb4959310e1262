"""The mean over a kernel's output rows (squeeze-excite squeeze, the head's global pool) as a kernel.

A kernel writes ``[N, C, Mp]`` rows whose garbage columns and tail a weight vector ``W[Mp]`` zeroes
(``1 / valid pixels`` on the valid ones), so the mean is one contiguous dot product per channel.
TVM's generic reduction schedule gave each channel lane accumulators in a ``[lanes, C]`` buffer
(a strided scatter per step) and summed them in a serial, single-threaded pass: the 1152-channel
squeeze of efficientnet_b0 @7 took 52 µs for 590 KB. Here each parallel iteration takes one channel:
``chains`` independent vector accumulators (so the adds do not wait on each other's latency), added
into one, then halved lane by lane.

Example:
    >>> func = rows_mean_primfunc(1, 8, 64, lanes=16)
    >>> [p.name for p in func.params]
    ['Y', 'W', 'out']
"""

from __future__ import annotations

import functools

from . import conv_kernel

__all__ = ["rows_mean_primfunc"]


@functools.lru_cache(maxsize=128)
def rows_mean_primfunc(n: int, c: int, mp: int, lanes: int = 16, keepdims: bool = True, chains: int = 4):
    """PrimFunc ``(Y[N, C, Mp], W[Mp], out[N, C, 1, 1])`` (``[N, C]`` without ``keepdims``):
    ``out[n, c] = sum_m Y[n, c, m] * W[m]``. ``mp`` must be a multiple of ``lanes``."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.tirx.script import builder as T

    if lanes < 1 or lanes & (lanes - 1) or mp % lanes:
        raise ValueError(f"lanes={lanes}, mp={mp}: expected lanes a power of two dividing mp (rows padded to "
                         "whole vectors, as the kernels write them)")
    vecs = mp // lanes
    k = max(1, min(chains, vecs))
    zero = tirx.const(0, "float32")
    with IRBuilder() as ib, T.prim_func():
        T.func_name("main")
        y = T.arg("Y", T.buffer((n, c, mp), "float32"))
        w = T.arg("W", T.buffer((mp,), "float32"))
        out = T.arg("out", T.buffer((n, c, 1, 1) if keepdims else (n, c), "float32"))
        T.func_attr({"tirx.noalias": True})
        with T.parallel(0, n * c) as t:
            b, ch = t // c, t % c
            acc = T.alloc_buffer((k * lanes,), "float32", scope=conv_kernel.STACK_SCOPE)  # read at build time
            with T.vectorized(0, k * lanes) as i:
                T.buffer_store(acc, zero, [i])

            with T.serial(0, vecs // k) as o, T.serial(0, k) as j, T.vectorized(0, lanes) as i:
                m = (o * k + j) * lanes + i
                T.buffer_store(acc, acc[j * lanes + i] + y[b, ch, m] * w[m], [j * lanes + i])
            if vecs % k:  # the last vectors, one per chain
                with T.serial(0, vecs % k) as j, T.vectorized(0, lanes) as i:
                    m = ((vecs // k) * k + j) * lanes + i
                    T.buffer_store(acc, acc[j * lanes + i] + y[b, ch, m] * w[m], [j * lanes + i])
            for j in range(1, k):  # the chains into the first
                with T.vectorized(0, lanes) as i:
                    T.buffer_store(acc, acc[i] + acc[j * lanes + i], [i])
            half = lanes // 2
            while half >= 1:  # the lanes, halving
                with T.vectorized(0, half) as i:
                    T.buffer_store(acc, acc[i] + acc[half + i], [i])
                half //= 2
            T.buffer_store(out, acc[0], [b, ch, 0, 0] if keepdims else [b, ch])
    return ib.get()
