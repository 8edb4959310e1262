"""Pattern-pruned 3x3 convs: one kernel loop per pattern, the pattern's taps compile-time constants.

A pattern-pruned layer (:mod:`npas_lightning.schemes.pattern`) keeps, per filter and input channel,
either nothing (connectivity pruning) or the 4 positions of one of a few library patterns. The
block-sparse kernel cannot use this: filters keep different positions, so a tile of filters has to
compute the union of their positions. This kernel follows PatDNN's compiler instead (filter-kernel
reorder): each filter's kept kernels are grouped by pattern, and for each pattern the generated
code has its own loop whose taps (shifts along the flattened input row) are constants. Per kept
kernel it loads one channel index and its weights, then does ``taps x mt`` vector FMAs into the
filter's ``mt`` accumulator vectors; removed kernels are never visited. Every input vector it loads
serves one multiply-add, so with ``cblock`` the input channels run in blocks whose rows of a pixel
chunk stay in L1 while every filter adds that block's part.

``compile_model`` times this kernel against the block-sparse one on each pattern layer when tuning,
and uses it untuned once at most a quarter of the weights remain
(:data:`~npas_lightning.compiler.rewrite.PATTERN_KERNEL_MAX_KEPT`; measurements in BENCHMARKS.md).

Layout as in :mod:`npas_lightning.compiler.conv_kernel`: input ``X[N, C, P*L]`` (padded, stride
phases, flattened), output ``Y[N, F, Mp]``, filters in the model's order.

Example:
    >>> w = np.zeros((2, 3, 3, 3), "float32")
    >>> w[0, 0].flat[[1, 3, 4, 5]] = 1.0; w[0, 2].flat[[1, 3, 4, 5]] = 2.0; w[1, 1].flat[[0, 4, 5, 8]] = 3.0
    >>> pk = pack_pattern(w)
    >>> pk.patterns, pk.channels.tolist(), pk.starts.tolist()
    (((1, 3, 4, 5), (0, 4, 5, 8)), [[0, 2], [1, 0]], [[0, 2, 2], [0, 0, 1]])
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from . import conv_kernel
from .conv_kernel import (
    STACK_SCOPE,
    ConvGeometry,
    ConvTile,
    accumulators,
    pixel_outer,
    register_tile,
    store_tile,
)
from .sparse_pack import reorder_rows

__all__ = ["MAX_PATTERNS", "PatternPacking", "pack_pattern", "pattern_primfunc"]

#: at most this many distinct patterns per layer get their own loop (code size grows with each); the
#: rarer position sets of a layer with more run as full kernels (see ``pack_pattern``)
MAX_PATTERNS = 16


@dataclass(frozen=True)
class PatternPacking:
    """A pattern-pruned conv weight ``[F, C, KH, KW]`` grouped by pattern per tile of ``ft`` filters.

    Filter slot ``j`` holds filter ``order[j]`` (``order is None``: filter ``j``); slots ``>= F``
    (edge tile) are zero. A tile's pattern at a channel is the union of its filters' kept positions
    there. ``patterns[p]`` are the kernel positions (``kh*KW + kw``) of pattern ``p``. Channels come
    in blocks of ``cblock``; tile ``t``'s channels of block ``b`` and pattern ``p`` are the entries
    ``starts[t, b*P + p] <= e < starts[t, b*P + p + 1]``: input channel ``channels[t, e]``, weight of
    slot ``t*ft + i`` at position ``patterns[p][s]`` is ``weights[t, e, s, i]``. Rows are padded to
    the largest count ``K`` (padding never visited).
    """

    patterns: tuple[tuple[int, ...], ...]
    channels: np.ndarray  # [Fn, K] int32
    weights: np.ndarray  # [Fn, K, T, ft] float32, T = the most positions of any pattern
    starts: np.ndarray  # [Fn, CB*P + 1] int32, CB = ceil(C / cblock)
    order: np.ndarray | None  # [F] filter permutation or None
    kept_fraction: float  # nonzero weights / numel
    shape: tuple[int, int, int, int]  # the weight's [F, C, KH, KW]
    cblock: int  # channels per block (C: one block)

    @property
    def ft(self) -> int:
        return int(self.weights.shape[3])

    @property
    def k(self) -> int:
        return int(self.channels.shape[1])

    @property
    def work_fraction(self) -> float:
        """Multiply-adds the kernel does relative to the dense conv (padding and removed kernels skipped)."""
        f, c, kh, kw = self.shape
        per_bucket = np.diff(self.starts, axis=1).sum(0)  # (tile, channel) entries per (block, pattern)
        sizes = np.array([len(p) for p in self.patterns])
        work = int((per_bucket * np.tile(sizes, len(per_bucket) // len(sizes))).sum()) * self.ft
        return work / (f * c * kh * kw)

    def unpack(self) -> np.ndarray:
        """The dense ``[F, C*KH*KW]`` weight this packing represents, filters in the model's order."""
        f, c, kh, kw = self.shape
        fn, k, _, ft = self.weights.shape
        dense = np.zeros((fn, ft, c, kh * kw), dtype="float32")
        col = np.arange(k)[None, :]
        for b in range(self.starts.shape[1] - 1):  # one vectorised scatter per (channel block, pattern)
            taps = self.patterns[b % len(self.patterns)]
            t, e = np.nonzero((col >= self.starts[:, b:b + 1]) & (col < self.starts[:, b + 1:b + 2]))
            vals = self.weights[t, e, :len(taps)].transpose(0, 2, 1)  # [entries, ft, taps]
            dense[t[:, None, None], np.arange(ft)[None, :, None], self.channels[t, e][:, None, None],
                  np.asarray(taps)[None, None, :]] = vals
        slots = dense.reshape(fn * ft, -1)[:f]
        if self.order is None:
            return slots
        out = np.empty_like(slots)
        out[self.order] = slots
        return out


def _assign_patterns(codes: np.ndarray, kk: int, max_patterns: int) -> tuple[list[int], np.ndarray]:
    """Group kernels by kept positions: ``codes[i]`` is kernel ``i``'s position bitmask (0 = removed).

    The most frequent masks become patterns, at most ``max_patterns``; a mask contained in an earlier
    pattern joins it (its missing positions computed with weight 0), so a weight that is zero by
    chance does not add a pattern. When masks are left over, the last pattern is the full kernel and
    takes them all. Returns ``(pattern codes, pattern index per kernel (-1 = removed))``.
    """
    uniq, inverse, freq = np.unique(codes, return_inverse=True, return_counts=True)
    live = uniq != 0
    cands = uniq[live][np.argsort(-freq[live], kind="stable")]
    chosen: list[int] = []
    target: dict[int, int] = {}
    for code in cands.tolist():  # distinct masks only (at most 2**kk, usually a few dozen)
        home = next((i for i, c in enumerate(chosen) if code & c == code), None)
        if home is None and len(chosen) < max_patterns - 1:
            chosen.append(code)
            home = len(chosen) - 1
        target[code] = -2 if home is None else home  # -2: left over
    if -2 in target.values():  # the leftovers run as full kernels
        full = (1 << kk) - 1
        if full not in chosen:
            chosen.append(full)
        target = {code: chosen.index(full) if h == -2 else h for code, h in target.items()}
    lut = np.array([target.get(int(c), -1) for c in uniq], dtype=np.int64)
    return chosen, lut[inverse]


def pack_pattern(weight: np.ndarray, ft: int = 1, *, reorder: bool = True, max_patterns: int = MAX_PATTERNS,
                 cblock: int | None = None) -> PatternPacking:
    """Group a pruned conv weight ``[F, C, KH, KW]`` (removed weights exactly 0) by pattern per tile
    of ``ft`` filters, and by blocks of ``cblock`` input channels (``None``: one block) before that.
    ``reorder=True`` first permutes the filters so that filters keeping similar positions share a
    tile (PatDNN's filter-kernel reorder, :func:`~.sparse_pack.reorder_rows`).
    """
    w = np.asarray(weight, dtype="float32")
    if w.ndim != 4:
        raise ValueError(f"weight of shape {list(w.shape)}: expected a conv weight [F, C, KH, KW]")
    if isinstance(ft, bool) or not isinstance(ft, (int, np.integer)) or ft < 1:
        raise ValueError(f"ft={ft!r}: expected an integer >= 1 (filters per tile)")
    if isinstance(max_patterns, bool) or not isinstance(max_patterns, (int, np.integer)) or max_patterns < 2:
        raise ValueError(f"max_patterns={max_patterns!r}: expected an integer >= 2 (room for the full kernel)")
    f, c, kh, kw = w.shape
    cblock = c if cblock is None else cblock
    if isinstance(cblock, bool) or not isinstance(cblock, (int, np.integer)) or cblock < 1:
        raise ValueError(f"cblock={cblock!r}: expected an integer >= 1 (input channels per block) or None")
    cblock = min(int(cblock), c)
    kk = kh * kw
    if kk > 62:
        raise ValueError(f"a {kh}x{kw} kernel has {kk} positions: the pattern kernel takes at most 62")
    order = reorder_rows(w.reshape(f, -1) != 0, ft) if reorder and f > ft else None
    fn = -(-f // ft)
    flat = np.zeros((fn * ft, c, kk), dtype="float32")
    flat[:f] = w.reshape(f, c, kk) if order is None else w.reshape(f, c, kk)[order]
    flat = flat.reshape(fn, ft, c, kk)
    bits = (flat != 0).any(1)  # [Fn, C, KK] the tile's union per channel
    codes = (bits.astype(np.int64) << np.arange(kk, dtype=np.int64)).sum(-1)  # [Fn, C]
    chosen, pid = _assign_patterns(codes.reshape(-1), kk, max_patterns)
    pid = pid.reshape(fn, c)
    patterns = tuple(tuple(b for b in range(kk) if code >> b & 1) for code in chosen)
    p = len(patterns)
    t = max((len(q) for q in patterns), default=1)
    buckets = -(-c // cblock) * p
    key = np.where(pid < 0, buckets, (np.arange(c) // cblock)[None, :] * p + pid)  # (block, pattern)
    entry = np.argsort(key, axis=1, kind="stable")  # [Fn, C]: channels by block and pattern, removed last
    counts = (key[:, :, None] == np.arange(buckets)[None, None, :]).sum(1)  # [Fn, CB*P]
    starts = np.concatenate([np.zeros((fn, 1), np.int64), np.cumsum(counts, axis=1)], axis=1)
    k = max(int(starts[:, -1].max()), 1)
    channels = entry[:, :k]
    taps = np.zeros((p + 1, t), dtype=np.int64)
    ntaps = np.zeros(p + 1, dtype=np.int64)
    for q, pat in enumerate(patterns):
        taps[q, :len(pat)], ntaps[q] = pat, len(pat)
    ekey = np.take_along_axis(key, channels, axis=1)
    epid = np.where(ekey == buckets, p, ekey % p)  # [Fn, K] pattern of each entry (p: padding)
    tiles = np.arange(fn)[:, None, None, None]
    vals = flat[tiles, np.arange(ft)[None, None, None, :], channels[:, :, None, None],
                taps[epid][:, :, :, None]]  # [Fn, K, T, ft]
    live = np.arange(t)[None, None, :] < ntaps[epid][:, :, None]
    weights = np.where(live[..., None], vals, 0.0).astype("float32")
    return PatternPacking(patterns, np.ascontiguousarray(channels, dtype="int32"), np.ascontiguousarray(weights),
                          starts.astype("int32"), order, float((w != 0).mean()), (f, c, kh, kw), cblock)


def pattern_primfunc(g: ConvGeometry, tile: ConvTile, patterns: tuple[tuple[int, ...], ...], k: int,
                     epilogue: str | None = None, cblock: int | None = None):
    """Scheduled PrimFunc ``(X[N,C,P*L], W[Fn,K,T,ft], Kc[Fn,K] int32, S[Fn,CB*P+1] int32, Y[N,Fn*ft,Mp])``.

    ``patterns``/``k``/``cblock``: those of the :class:`PatternPacking` whose ``weights``/``channels``/
    ``starts`` are ``W``/``Kc``/``S``, packed with ``ft = tile.ft``. ``tile.ft x tile.mt`` vectors of
    accumulators per tile.

    With one channel block (``cblock`` None or >= C) the kernel runs parallel over (image, outer
    tile) as the block-sparse kernel (:func:`~npas_lightning.compiler.conv_kernel.pixel_outer` picks
    whether filter tiles or pixel chunks are outer). With several, it runs parallel over (image,
    pixel chunk), and for each block of input channels every filter tile adds that block's part to
    its output: the block's rows of the chunk stay in L1 across all filters (one input load per
    multiply-add, unlike the block-sparse kernel's one per ``ft``, so where loads come from matters).

    ``epilogue`` adds a bias ``B[Fn*ft]`` before ``Y`` as in
    :func:`~npas_lightning.compiler.conv_kernel.conv_primfunc`.

    Example:
        >>> g = ConvGeometry.make(1, 3, 8, 8, 2, (3, 3), 1, (1, 1, 1, 1), pixels=16)
        >>> func = pattern_primfunc(g, ConvTile(1, 1, 16), ((1, 3, 4, 5), (0, 4, 5, 8)), k=2)
        >>> [p.name for p in func.params]
        ['X', 'W', 'Kc', 'S', 'Y']
    """
    if g.mp % tile.pixels:
        raise ValueError(f"geometry mp={g.mp} is not a multiple of the tile's {tile.pixels} pixels: "
                         "build g with pixels=tile.pixels")
    pats = tuple(tuple(int(t) for t in p) for p in patterns)
    if not pats or any(not p or min(p) < 0 or max(p) >= g.kh * g.kw for p in pats):
        raise ValueError(f"patterns={pats}: expected non-empty tuples of kernel positions in [0, {g.kh * g.kw}) "
                         f"for a {g.kh}x{g.kw} kernel")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k={k!r}: expected an integer >= 1 (entries per row of the packing)")
    if cblock is not None and (isinstance(cblock, bool) or not isinstance(cblock, (int, np.integer)) or cblock < 1):
        raise ValueError(f"cblock={cblock!r}: expected an integer >= 1 (input channels per block) or None")
    blocks = 1 if cblock is None else -(-g.c // min(int(cblock), g.c))
    return _pattern_built(g, tile, pats, int(k), epilogue, blocks, conv_kernel.EPILOGUE_IN_REGISTERS)


@functools.lru_cache(maxsize=256)
def _pattern_built(g: ConvGeometry, tile: ConvTile, patterns: tuple[tuple[int, ...], ...], k: int,
                   epilogue: str | None, blocks: int, in_registers: bool = True):
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.tirx.script import builder as T

    ft, mt, vw = tile.ft, tile.mt, tile.vw
    px = mt * vw
    fn, p = -(-g.f // ft), len(patterns)
    t = max(len(q) for q in patterns)
    offs = [int(o) for o in g.offsets()]
    chunks = g.mp // px

    with IRBuilder() as ib, T.prim_func():
        T.func_name("main")
        x = T.arg("X", T.buffer((g.n, g.c, g.x_len), "float32"))
        w = T.arg("W", T.buffer((fn, k, t, ft), "float32"))
        kc = T.arg("Kc", T.buffer((fn, k), "int32"))
        st = T.arg("S", T.buffer((fn, blocks * p + 1), "int32"))
        bias = T.arg("B", T.buffer((fn * ft,), "float32")) if epilogue else None
        y = T.arg("Y", T.buffer((g.n, fn * ft, g.mp), "float32"))
        T.func_attr({"tirx.noalias": True})

        def tile_body(n, fb, m0, cb):
            """Filter tile ``fb`` at pixels ``m0...``: add channel block ``cb``'s part (``None``: all)."""
            acc = accumulators(ft, px)
            biased = bool(epilogue) and in_registers  # the tile starts from the bias
            for fi, i in register_tile(tile):
                first = bias[fb * ft + fi] if biased else tirx.const(0, "float32")
                if cb is not None:  # later blocks continue from the stored partial sums
                    first = tirx.Select(cb == 0, first, y[n, fb * ft + fi, m0 + i])
                T.buffer_store(acc[fi], first, [i])
            bounds = T.alloc_buffer((2,), "int32", scope=STACK_SCOPE)  # extents TVM does not re-analyse
            for q, taps in enumerate(patterns):  # one loop per pattern, its shifts constants
                bucket = q if cb is None else cb * p + q
                T.buffer_store(bounds, st[fb, bucket], [0])
                T.buffer_store(bounds, st[fb, bucket + 1] - st[fb, bucket], [1])
                with T.serial(0, bounds[1]) as j:
                    e = bounds[0] + j
                    for fi, i in register_tile(tile):
                        total = acc[fi][i]
                        for s, tap in enumerate(taps):
                            total = total + w[fb, e, s, fi] * x[n, kc[fb, e], m0 + offs[tap] + i]
                        T.buffer_store(acc[fi], total, [i])
            store_tile(y, acc, tile, n, fb * ft, m0, epilogue, bias, in_registers=in_registers, biased=biased,
                       last=None if cb is None else cb == blocks - 1)  # the epilogue after the last block

        if blocks > 1:
            with T.parallel(0, g.n * chunks) as it, T.serial(0, blocks) as cb, T.serial(0, fn) as fb:
                tile_body(it // chunks, fb, (it % chunks) * px, cb)
        else:
            swap = pixel_outer(g)
            outer_n, inner_n = (chunks, fn) if swap else (fn, chunks)
            with T.parallel(0, g.n * outer_n) as it, T.serial(0, inner_n) as u:
                fb = u if swap else it % outer_n
                tile_body(it // outer_n, fb, (it % outer_n if swap else u) * px, None)
    return ib.get()
