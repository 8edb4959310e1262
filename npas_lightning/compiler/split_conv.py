"""The conv kernel with its reduction split between the cores: ``conv_primfunc(..., split=T)``.

A 1x1 projection conv (more input channels than filters) reads every input channel of its pixels.
Its producer, a depthwise conv or any function parallel over channel planes, wrote the first
``ceil(C/T)`` channels on the first core, the next ones on the second, and so on (TVM gives each
thread one contiguous range of a parallel loop). With its filters split between the cores, as the
other conv kernels do, every core reads the other cores' channels from their caches, which takes
about twice as long as reading its own (``benchmarks/bench_cross_core.py``).

This kernel splits the input channels the same way instead. In a first parallel loop, core ``p``
sums its own channels' entries for every filter into part ``p`` of a ``[parts, N, F, Mp]`` buffer.
In a second one, parallel over filter tiles, the parts are added up, with the bias and the
activation. The cores then exchange ``F`` partial rows instead of ``C`` input rows, a sixth as many
in the inverted-residual blocks of efficientnet_b0 and mobilenetv3. A projection has no
activation, so the compiler leaves the second loop out (``partials=True``): the kernel's output is
the parts buffer, the first part starting from the bias, and the graph adds the parts up in the
function that reads the conv's output next (a crop, a residual add, a zero-pad), which reads it
anyway.

Example (a 1x1 conv, 64 -> 16 channels, reduction split in two):
    >>> from npas_lightning.compiler.conv_kernel import ConvGeometry, ConvTile, conv_primfunc
    >>> g = ConvGeometry.make(1, 64, 14, 14, 16, (1, 1), 1, (0, 0, 0, 0), pixels=32)
    >>> split_bounds(64, 2).tolist(), [p.name for p in conv_primfunc(g, ConvTile(8, 2, 16), split=2).params]
    ([0, 32, 64], ['X', 'W', 'Y'])
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["split_bounds", "split_conv_primfunc", "split_parts"]


def split_bounds(channels: int, parts: int) -> np.ndarray:
    """Channel ranges ``[bounds[p], bounds[p+1])`` of a parallel loop over ``channels`` run on
    ``parts`` threads, as TVM splits it (``ceil(channels/parts)`` iterations each, in order);
    threads left without channels are dropped.

    Example:
        >>> split_bounds(10, 4).tolist(), split_bounds(3, 4).tolist()
        ([0, 3, 6, 9, 10], [0, 1, 2, 3])
    """
    if isinstance(parts, bool) or not isinstance(parts, (int, np.integer)) or parts < 1:
        raise ValueError(f"split={parts!r}: expected an integer >= 1 (threads the reduction is split between)")
    step = -(-int(channels) // int(parts))
    return np.array([min(p * step, channels) for p in range(-(-int(channels) // step) + 1)], dtype="int64")


def split_parts(channels: int, split: int) -> int:
    """How many parts a reduction over ``channels`` split between ``split`` threads has (threads
    without channels drop out): the first dimension of a ``partials=True`` kernel's output."""
    return len(split_bounds(channels, split)) - 1


def split_conv_primfunc(g, tile, split: int, *, kept: np.ndarray | None = None, counts: np.ndarray | None = None,
                        epilogue: str | None = None, gate: bool = False, masked: bool = False,
                        cblock: int | None = None, partials: bool = False):
    """``conv_primfunc(g, tile, ..., split=split)``: see :func:`conv_primfunc` for the arguments.

    Dense (``kept`` None): 1x1 convs only, PrimFunc ``(X, W, [G], [B], Y)`` as without ``split``.
    Block-sparse: needs ``counts``; the PrimFunc gets ``S[Fn, parts+1]`` after ``Ks`` (where each
    part's entries start in each filter tile's kept list, :func:`channel_starts`) and the call
    returns ``(func, (chan, shift, starts))``.

    ``partials=True`` leaves out the second pass: the output is ``Y[parts, N, Fn*ft, Mp]``, every
    part's sums (the first part's with the bias), for the caller to add up in the fused function
    that reads the conv next. No activation then (``epilogue`` None or ``"none"``).
    """
    from .conv_kernel import _ceil_div, _check_rows_kept, channel_starts, check_counts

    bounds = split_bounds(g.c, split)
    if partials and epilogue not in (None, "none"):
        raise ValueError(f"partials=True with epilogue={epilogue!r}: an activation needs the whole sum, "
                         f"expected epilogue None or 'none'")
    if masked or cblock is not None:
        raise ValueError(f"split={split} cannot be combined with masked=True or cblock=...: the parts of a split "
                         f"reduction are added up after the kernel's reduction, where neither a planes mask nor "
                         f"channel blocks apply")
    fn = _ceil_div(g.f, tile.ft)
    if kept is None:
        if (g.kh, g.kw) != (1, 1):
            raise ValueError(f"split={split} on a dense {g.kh}x{g.kw} conv: the dense kernel splits 1x1 convs only "
                             f"(give kept=... and counts=... for a block-sparse kxk conv)")
        return _split_built(g, tile, g.c, fn, tuple(int(b) for b in bounds), epilogue, bool(gate), sparse=False,
                            partials=bool(partials))
    if counts is None:
        raise ValueError(f"split={split} needs counts=... with kept=...: each part reads its channels' entries, "
                         f"which must be sorted by channel (pack_sparse_rows)")
    kept = _check_rows_kept(kept, fn, g.c * g.kh * g.kw, "C*KH*KW")
    counts = check_counts(counts, kept.shape)
    chan, shift = g.gather_indices(kept)
    step = int(bounds[1] - bounds[0])
    starts = channel_starts(chan, counts, step, g.c) if step < g.c else \
        np.stack([np.zeros_like(counts), counts], axis=1).astype("int32")
    func = _split_built(g, tile, kept.shape[1], fn, tuple(int(b) for b in bounds), epilogue, bool(gate), sparse=True,
                        partials=bool(partials))
    return func, (chan, shift, starts)


@functools.lru_cache(maxsize=256)
def _split_built(g, tile, k: int, fn: int, bounds: tuple[int, ...], epilogue: str | None, gate: bool, sparse: bool,
                 partials: bool = False):
    """IR builder: the two parallel loops of the module docstring (the first alone with
    ``partials``). ``k`` = reduction entries per filter tile (``C`` dense); ``bounds`` =
    :func:`split_bounds`."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.tirx.script import builder as T

    from .conv_kernel import (
        STACK_SCOPE,
        _check_pixels,
        _gathered_conv_args,
        accumulators,
        const_table,
        register_tile,
    )
    from .epilogue import activation_expr

    ft, px = tile.ft, _check_pixels(g, tile)
    chunks, parts = g.mp // px, len(bounds) - 1
    lows, highs = np.array(bounds[:-1]), np.array(bounds[1:])
    zero = tirx.const(0, "float32")
    with IRBuilder() as ib, T.prim_func():
        if sparse:
            x, w, kc, ks = _gathered_conv_args(g, fn, k, ft)
            starts = T.arg("S", T.buffer((fn, parts + 1), "int32"))
        else:
            T.func_name("main")
            x = T.arg("X", T.buffer((g.n, g.c, g.x_len), "float32"))
            w = T.arg("W", T.buffer((fn, g.c, ft), "float32"))
        gates = T.arg("G", T.buffer((g.n, g.c), "float32")) if gate else None
        bias = T.arg("B", T.buffer((fn * ft,), "float32")) if epilogue else None
        shape = (parts, g.n, fn * ft, g.mp)  # every part's sums: the output itself with ``partials``
        if partials:
            sums = T.arg("Y", T.buffer(shape, "float32"))
        else:
            y = T.arg("Y", T.buffer((g.n, fn * ft, g.mp), "float32"))
            sums = T.alloc_buffer(shape, "float32")
        T.func_attr({"tirx.noalias": True})
        with T.parallel(0, parts) as p:  # core p: its own channels, every filter tile
            wg = T.alloc_buffer((k, ft), "float32", scope=STACK_SCOPE) if gate else None
            with T.serial(0, g.n) as n, T.serial(0, fn) as fb:
                lo = T.alloc_buffer((1,), "int32", scope=STACK_SCOPE)
                hi = T.alloc_buffer((1,), "int32", scope=STACK_SCOPE)
                T.buffer_store(lo, starts[fb, p] if sparse else const_table(p, lows), [0])
                T.buffer_store(hi, starts[fb, p + 1] if sparse else const_table(p, highs), [0])
                if gate:  # the tile's weights for this part's channels, scaled once
                    with T.serial(lo[0], hi[0]) as rk, T.serial(0, ft) as fi:
                        T.buffer_store(wg, w[fb, rk, fi] * gates[n, kc[fb, rk] if sparse else rk], [rk, fi])
                with T.serial(0, chunks) as ch:
                    m0 = ch * px
                    acc = accumulators(ft, px)
                    for fi, i in register_tile(tile):  # with partials, the first part starts from the bias
                        start = zero if not partials or bias is None else \
                            tirx.Select(p == 0, bias[fb * ft + fi], zero)
                        T.buffer_store(acc[fi], start, [i])
                    with T.serial(lo[0], hi[0]) as rk:
                        for fi, i in register_tile(tile):
                            weight = wg[rk, fi] if gate else w[fb, rk, fi]
                            value = x[n, kc[fb, rk], ks[fb, rk] + m0 + i] if sparse else x[n, rk, m0 + i]
                            T.buffer_store(acc[fi], acc[fi][i] + weight * value, [i])
                    for fi, i in register_tile(tile):
                        T.buffer_store(sums, acc[fi][i], [p, n, fb * ft + fi, m0 + i])
        if not partials:  # add the parts up, filter tiles split between the cores
            with T.parallel(0, fn) as fb, T.serial(0, g.n) as n, T.serial(0, chunks) as ch:
                m0 = ch * px
                for fi, i in register_tile(tile, T.serial):
                    z = sums[0, n, fb * ft + fi, m0 + i]
                    for q in range(1, parts):
                        z = z + sums[q, n, fb * ft + fi, m0 + i]
                    if epilogue:
                        z = activation_expr(epilogue, z + bias[fb * ft + fi])
                    T.buffer_store(y, z, [n, fb * ft + fi, m0 + i])
    return ib.get()
