"""Block-structured dense matmul ``Y[N, F] = X[N, C] @ W^T``, reading and writing natural layouts.

Weights are packed per filter block ``W[Fn, C, ft]``: the filter tile ``ft`` (a multiple of the
vector width) is the vectorised axis, ``nt`` batch rows form the register tile. Batch 1 is a
streaming GEMV over the packed weights; batched inputs reuse each weight vector ``nt`` times.
``kept`` (``[Fn, K]`` int32 channel indices per filter block) turns it into the block-sparse
matmul of block-based pruning with the same schedule.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np

from .conv_kernel import STACK_SCOPE

__all__ = ["DenseTile", "dense_primfunc", "pack_dense_weight"]


@dataclass(frozen=True)
class DenseTile:
    """``ft`` filters per tile (vectorised), ``nt`` batch rows per tile, ``cu`` reduction unroll."""

    ft: int = 16
    nt: int = 1
    cu: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


#: a matmul with at most this many multiply-adds runs on one thread: the squeeze-excite FCs of
#: mobilenetv3 and efficientnet_b0 (72x24 ... 480x120, 5x fewer pruned) take 0.1-2 µs of work, less
#: than a parallel launch costs (``bench_function_breakdown.py --compare serial-small``)
SERIAL_MAX_MACS = 16384


def runs_serial(macs: int) -> bool:
    """Whether a matmul of ``macs`` multiply-adds skips the parallel launch (:data:`SERIAL_MAX_MACS`)."""
    return macs <= SERIAL_MAX_MACS


def pack_dense_weight(weight: np.ndarray, ft: int) -> np.ndarray:
    """[F, C] (nn.Linear layout) -> ``[ceil(F/ft), C, ft]``, zero filters pad the last block."""
    f, c = weight.shape
    fn = -(-f // ft)
    out = np.zeros((fn * ft, c), dtype="float32")
    out[:f] = weight
    return np.ascontiguousarray(out.reshape(fn, ft, c).transpose(0, 2, 1))


def dense_primfunc(n: int, c: int, f: int, tile: DenseTile, kept: np.ndarray | None = None,
                   counts: np.ndarray | None = None):
    """Scheduled PrimFunc ``(X[N,C], W[Fn,C|K,ft], [Kc[Fn,K]], Y[N,Fp])`` with ``Fp = Fn*ft``.

    ``counts`` (optional with ``kept``, ``[Fn]`` real entries per row of ``kept``,
    ``SparsePacking.counts``): each filter tile stops at its own count (baked in as constants)
    instead of the padded ``K``; same arguments.
    """
    from tvm import te

    ft = tile.ft
    fn = -(-f // ft)
    if n % tile.nt:
        raise ValueError(f"tile.nt={tile.nt} must divide the batch size n={n}")
    if counts is not None:
        from .conv_kernel import _check_rows_kept, check_counts

        if kept is None:
            raise ValueError("counts=... needs kept=...: counts are the real entries of each row of kept")
        k = int(_check_rows_kept(kept, fn, c, "C").shape[1])
        return _dense_counts_primfunc(n, c, tile, k, check_counts(counts, (fn, k)))
    x = te.placeholder((n, c), name="X")
    if kept is None:
        w = te.placeholder((fn, c, ft), name="W")
        rc = te.reduce_axis((0, c), "rc")

        def body(i, j):
            return te.sum(x[i, rc] * w[j // ft, rc, j % ft], axis=[rc])
        args = [x, w]
    else:
        from .conv_kernel import _check_rows_kept

        k = int(_check_rows_kept(kept, fn, c, "C").shape[1])
        w = te.placeholder((fn, k, ft), name="W")
        kc = te.placeholder((fn, k), name="Kc", dtype="int32")
        rc = te.reduce_axis((0, k), "rk")

        def body(i, j):
            return te.sum(x[i, kc[j // ft, rc]] * w[j // ft, rc, j % ft], axis=[rc])
        args = [x, w, kc]
    y = te.compute((n, fn * ft), body, name="dense")
    func = te.create_prim_func([*args, y])
    reduce_len = c if kept is None else k
    return _schedule_dense(func, tile, reduce_len=reduce_len, serial=runs_serial(n * fn * ft * reduce_len))


def _schedule_dense(func, tile: DenseTile, *, reduce_len: int, serial: bool = False):
    from tvm.s_tir import Schedule

    sch = Schedule(func)
    b = sch.get_sblock("dense")
    i, j, r = sch.get_loops(b)
    jo, ji = sch.split(j, [None, tile.ft])
    io, ii = sch.split(i, [None, tile.nt])
    cu = tile.cu if reduce_len % tile.cu == 0 else 1
    ro, ri = sch.split(r, [None, cu])
    sch.reorder(jo, io, ro, ri, ii, ji)
    outer = sch.fuse(jo, io)
    if not serial:
        sch.parallel(outer)
    cw = sch.cache_write(b, 0, STACK_SCOPE)
    sch.reverse_compute_at(cw, outer)
    sch.unroll(ri)
    sch.unroll(ii)
    sch.vectorize(ji)
    sch.decompose_reduction(b, ro)
    wl = sch.get_loops(cw)
    sch.vectorize(wl[-1])
    return sch.mod["main"]


def _dense_counts_primfunc(n: int, c: int, tile: DenseTile, k: int, counts: np.ndarray):
    """:func:`_dense_counts_built`, memoised: equal layers share one function."""
    return _dense_counts_built(n, c, tile, k, tuple(int(v) for v in counts),
                               runs_serial(n * tile.ft * int(np.asarray(counts).sum())))


@functools.lru_cache(maxsize=512)
def _dense_counts_built(n: int, c: int, tile: DenseTile, k: int, counts_key: tuple[int, ...], serial: bool = False):
    """The block-sparse matmul with per-tile reduction lengths (TIR, built with TVM's IR builder):
    parallel over (filter tile, batch tile) unless ``serial`` (tiny work, :func:`runs_serial`), ``nt``
    rows x ``ft`` filters of accumulators, the filter axis vectorised."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.tirx.script import builder as T

    from .conv_kernel import accumulators, const_table

    counts = np.asarray(counts_key, dtype="int64")
    ft, nt = tile.ft, tile.nt
    fn = counts.shape[0]
    nb = n // nt
    with IRBuilder() as ib, T.prim_func():
        T.func_name("main")
        x = T.arg("X", T.buffer((n, c), "float32"))
        w = T.arg("W", T.buffer((fn, k, ft), "float32"))
        kc = T.arg("Kc", T.buffer((fn, k), "int32"))
        y = T.arg("Y", T.buffer((n, fn * ft), "float32"))
        T.func_attr({"tirx.noalias": True})
        with (T.serial if serial else T.parallel)(0, fn * nb) as t:
            acc = accumulators(nt, ft)  # one row per batch row
            fb, i0 = t // nb, t % nb * nt
            for ii in range(nt):
                with T.vectorized(0, ft) as j:
                    T.buffer_store(acc[ii], tirx.const(0, "float32"), [j])
            cnt = T.alloc_buffer((1,), "int32", scope=STACK_SCOPE)
            T.buffer_store(cnt, const_table(fb, counts), [0])  # an extent TVM does not re-analyse
            with T.serial(0, cnt[0]) as rk:
                for ii in range(nt):
                    with T.vectorized(0, ft) as j:
                        T.buffer_store(acc[ii], acc[ii][j] + x[i0 + ii, kc[fb, rk]] * w[fb, rk, j], [j])
            for ii in range(nt):
                with T.vectorized(0, ft) as j:
                    T.buffer_store(y, acc[ii][j], [i0 + ii, fb * ft + j])
    return ib.get()
