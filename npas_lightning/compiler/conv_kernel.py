"""Block-structured conv2d / depthwise conv2d kernels in the flattened-plane layout.

Layout: the input is zero-padded, split into ``s*s`` stride phases (``s`` = stride) and every
channel's phase planes are flattened into one row ``X[N, C, P*L]`` (``P = s*s`` phases of
``L = Hq*Wq`` elements). A kernel offset ``(kh, kw)`` then becomes a constant shift
``(kh % s * s + kw % s) * L + (kh // s) * Wq + kw // s`` along the row, so the output-pixel loop
reads contiguous memory and vectorises. The kernel writes ``Y[N, Fp, Mp]`` (``Mp >= OH*Wq`` rounded
to the pixel tile, ``Fp`` filters rounded to the filter tile); the extra columns and filters are
cropped afterwards by ordinary (fused) Relax ops.

Weights are packed per filter block ``W[Fn, R, ft]`` where ``R`` indexes the reduction
``(c, kh, kw)``. The dense kernel keeps every block; a block-sparse kernel (``kept=...``) reads the
kept reduction entries of each filter block from constant index buffers, which is the same
schedule with a gathered reduction. With ``counts=...`` (real entries per block, see
:mod:`npas_lightning.compiler.sparse_pack`) each filter block stops at its own count, so blocks
padded to the largest count cost nothing extra. The depthwise kernel takes ``kept`` kernel positions
per block of channels the same way.

Example (block-sparse conv from a pruned weight):
    >>> from npas_lightning.compiler.sparse_pack import pack_sparse_rows
    >>> w = np.zeros((16, 8, 3, 3), "float32"); w[:8, :4, 1, 1] = 1.0
    >>> g = ConvGeometry.make(1, 8, 14, 14, 16, (3, 3), 1, (1, 1, 1, 1), pixels=32)
    >>> pk = pack_sparse_rows(w.reshape(16, -1), 8)
    >>> func, (chan, shift) = conv_primfunc(g, ConvTile(8, 2, 16), kept=pk.kept, counts=pk.counts)
    >>> [p.name for p in func.params], pk.counts.tolist()
    (['X', 'W', 'Kc', 'Ks', 'Y'], [4, 0])
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

__all__ = [
    "STACK_SCOPE",
    "ConvGeometry",
    "ConvTile",
    "channel_starts",
    "check_counts",
    "const_table",
    "conv_primfunc",
    "depthwise_primfunc",
    "live_chunks",
    "pack_conv_weight",
    "pack_depthwise_weight",
    "phase_bits",
    "phase_chunks",
    "planes_from_nchw",
    "plane_mask",
    "nchw_from_planes",
    "tail_split",
]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class ConvTile:
    """Tile sizes: ``ft`` filters per register tile, ``mt`` vectors of ``vw`` pixels per tile."""

    ft: int = 8
    mt: int = 2
    vw: int = 16

    @property
    def pixels(self) -> int:
        return self.mt * self.vw

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ConvGeometry:
    """Shapes of one conv layer and of its flattened-plane layout for a given pixel tile.

    Example:
        >>> g = ConvGeometry.make(1, 16, 14, 14, 32, (3, 3), 2, (1, 1, 1, 1), pixels=32)
        >>> (g.oh, g.ow, g.phases)
        (7, 7, 4)
    """

    n: int
    c: int
    h: int
    w: int
    f: int
    kh: int
    kw: int
    stride: int
    pad: tuple[int, int, int, int]  # top, left, bottom, right
    oh: int
    ow: int
    hq: int
    wq: int
    m: int  # OH * Wq valid flat outputs
    mp: int  # padded to the pixel tile
    #: length of an input row when the input is another kernel's output row (:meth:`reading_rows`);
    #: 0: the padded planes ``phases * plane``
    row: int = 0

    @classmethod
    def make(cls, n: int, c: int, h: int, w: int, f: int, kernel: tuple[int, int], stride: int,
             pad: tuple[int, int, int, int], *, pixels: int) -> ConvGeometry:
        kh, kw = kernel
        s = int(stride)
        pt, pl, pb, pr = pad
        hp, wp = h + pt + pb, w + pl + pr
        oh, ow = (hp - kh) // s + 1, (wp - kw) // s + 1
        dh, dw = (kh - 1) // s, (kw - 1) // s
        wq = max(_ceil_div(wp, s), ow + dw)
        m = oh * wq
        mp = _ceil_div(m, pixels) * pixels
        hq = max(_ceil_div(hp, s), _ceil_div(mp + dh * wq + dw, wq))
        return cls(n, c, h, w, f, kh, kw, s, (pt, pl, pb, pr), oh, ow, hq, wq, m, mp)

    @property
    def phases(self) -> int:
        return self.stride * self.stride

    @property
    def x_len(self) -> int:
        """Elements of one channel's input row ``X[n, c, :]``."""
        return self.row or self.phases * self.plane

    def reading_rows(self, row: int) -> ConvGeometry:
        """This 1x1 conv reading rows of ``row`` elements (a producer kernel's output ``[N, C, row]``,
        garbage columns included) instead of padded planes; every read must fall inside ``row``."""
        if (self.kh, self.kw, self.stride) != (1, 1, 1) or any(self.pad) or self.mp > row:
            raise ValueError(f"a {self.kh}x{self.kw} stride-{self.stride} conv with pad {self.pad} and {self.mp} "
                             f"outputs per row cannot read rows of {row}: expected a 1x1 stride-1 unpadded conv "
                             f"with mp <= row")
        return replace(self, row=int(row))

    def reading_planes(self, hq: int, row: int) -> ConvGeometry:
        """This conv reading its padded planes with ``hq >= self.hq`` rows per phase plane (zero rows
        below the image) from rows of ``row`` elements, ``row`` covering every element it reads: the
        layout a producer wrote for it directly (see :func:`plane_mask`).

        Example:
            >>> g = ConvGeometry.make(1, 8, 12, 12, 8, (3, 3), 2, (1, 1, 1, 1), pixels=16)
            >>> (g.hq, g.wq, g.reading_planes(g.hq + 1, 240).x_len)
            (8, 7, 240)
        """
        if hq < self.hq:
            raise ValueError(f"hq={hq}: expected at least the conv's own {self.hq} rows per phase plane")
        g = replace(self, hq=int(hq))
        need = int(g.offsets().max()) + g.mp
        if row < need:
            raise ValueError(f"row={row}: a {self.kh}x{self.kw} stride-{self.stride} conv over planes of {hq} rows "
                             f"reads {need} elements per row; expected row >= {need}")
        return replace(g, row=int(row))

    @property
    def plane(self) -> int:
        return self.hq * self.wq

    def offset(self, kh: int, kw: int) -> int:
        """Flat shift of kernel position (kh, kw) in the phase-major row."""
        s = self.stride
        return ((kh % s) * s + kw % s) * self.plane + (kh // s) * self.wq + kw // s

    def offsets(self) -> np.ndarray:
        """Shift of every kernel position, ``[KH*KW]`` int32 in (kh, kw) order."""
        return np.array([self.offset(i, j) for i in range(self.kh) for j in range(self.kw)], dtype="int32")

    def gather_indices(self, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The block-sparse kernels' index buffers for reduction entries ``kept`` (``(c*KH + kh)*KW +
        kw``): each entry's input channel and flat shift, int32 arrays of ``kept``'s shape."""
        k2 = self.kh * self.kw
        return (kept // k2).astype("int32"), self.offsets()[kept % k2].astype("int32")

    @property
    def flops(self) -> int:
        return 2 * self.n * self.f * self.c * self.kh * self.kw * self.oh * self.ow


def pack_conv_weight(weight: np.ndarray, ft: int) -> np.ndarray:
    """OIHW weight -> ``[ceil(F/ft), C*KH*KW, ft]`` (zero filters pad the last block)."""
    f = weight.shape[0]
    fn = _ceil_div(f, ft)
    w2 = weight.reshape(f, -1).astype("float32")
    out = np.zeros((fn * ft, w2.shape[1]), dtype="float32")
    out[:f] = w2
    return np.ascontiguousarray(out.reshape(fn, ft, -1).transpose(0, 2, 1))


def pack_depthwise_weight(weight: np.ndarray) -> np.ndarray:
    """[C, 1, KH, KW] -> [C, KH*KW]."""
    return np.ascontiguousarray(weight.reshape(weight.shape[0], -1).astype("float32"))


def conv_primfunc(g: ConvGeometry, tile: ConvTile, kept: np.ndarray | None = None,
                  counts: np.ndarray | None = None, epilogue: str | None = None, gate: bool = False,
                  masked: bool = False, cblock: int | None = None, split: int = 1, partials: bool = False,
                  live: Sequence[bool] | None = None, phases: tuple[int, Sequence[int]] | None = None):
    """Scheduled PrimFunc ``(X[N,C,P*L], W[Fn,R,ft], Y[N,Fn*ft,Mp])``.

    ``kept`` (optional, ``[Fn, K]`` int32 reduction indices ``(c*KH + kh)*KW + kw`` per filter
    block, padded with any valid index whose packed weight is zero) makes the reduction run over
    the kept entries only; then the PrimFunc is ``(X, W[Fn,K,ft], Kc[Fn,K], Ks[Fn,K], Y)`` and the
    call returns ``(func, (chan, shift))``, the int32 buffers to pass as ``Kc`` and ``Ks``.

    ``counts`` (optional with ``kept``, ``[Fn]``: how many leading entries of each row of ``kept`` are
    real, the rest being padding; ``SparsePacking.counts``) bakes the per-tile counts into the kernel
    as constants so each filter tile stops at its own count instead of the padded ``K``: same
    arguments and buffers, less work when tiles keep different numbers of entries.

    ``epilogue`` (optional, one of :data:`~npas_lightning.compiler.epilogue.ACTIVATIONS`) adds a
    bias buffer ``B[Fn*ft]`` (per filter slot) just before ``Y``, and the kernel stores
    ``act(conv + B)`` from its accumulators (see :mod:`npas_lightning.compiler.epilogue`).

    ``gate=True`` adds a per-channel input scale ``G[N, C]`` (a squeeze-excite gate) before ``B``:
    the kernel computes ``conv(X * G)`` by scaling a filter tile's weights once before its reduction
    (``gated_w``), so the gated input is never written out.

    ``masked=True`` (with ``epilogue``) adds a per-pixel factor ``Mk[Mp]`` after ``B``: the kernel
    stores ``act(conv + B) * Mk``. A 1x1 conv computing over the next conv's padded planes zeroes the
    padding that way (:func:`plane_mask`), so nobody copies its output into that layout.

    ``cblock`` (with ``counts``, without ``gate``) runs the reduction in blocks of ``cblock`` input
    channels: parallel over (image, pixel chunk), then each channel block, then every filter tile,
    adding its part to ``Y``. A chunk's input rows of one block stay in L1 while all filter tiles
    read them (see :func:`channel_starts`). The PrimFunc gets a buffer ``S[Fn, CB+1]`` after ``Ks``,
    and the call returns ``(func, (chan, shift, starts))``.

    ``split`` (> 1) splits the reduction over input channels between that many threads, as a
    channel-parallel producer wrote them, and adds the partial sums up in a second pass
    (:mod:`npas_lightning.compiler.split_conv`): dense 1x1 convs, or block-sparse ones with
    ``counts`` (then with ``S[Fn, parts+1]`` after ``Ks``, as ``cblock``); not with ``masked`` or
    ``cblock``. With ``partials=True`` (no activation) the kernel skips that pass and writes every
    part's sums, ``Y[parts, N, Fn*ft, Mp]``, for the caller to add up.

    ``live`` (with ``masked`` and ``counts``, without ``cblock``, ``split`` or ``gate``: one flag per
    pixel chunk of ``tile.pixels`` outputs) computes the chunks flagged True only and stores 0 in
    the others: a conv writing the next conv's planes skips the chunks of padding rows above and
    below the image (of each stride phase), whose mask is 0 anyway (the caller makes sure of that;
    :func:`live_chunks`).

    ``phases`` (with ``live``'s conditions) ``(plane, bits)``: the output is the stride-phase planes of
    a stride-``s`` depthwise conv, phase ``p`` at positions ``[p * plane, (p + 1) * plane)``, and
    ``bits[fb]`` (one int per filter tile) flags the phases that conv reads in the channels of tile
    ``fb`` (its kept kernel positions, :func:`phase_bits`): a pixel chunk with no flagged phase is
    neither computed nor stored, as nothing reads it.
    """
    from tvm import te

    # live chunks and phase masks: a masked block-sparse kernel with counts, one reduction per tile
    skips_ok = masked and counts is not None and cblock is None and split == 1 and not gate
    if phases is not None:
        plane, bits = phases
        fn_tiles = -(-g.f // tile.ft)
        if (not skips_ok or isinstance(plane, bool) or not isinstance(plane, (int, np.integer)) or plane < 1
                or len(bits) != fn_tiles or any(int(b) < 0 for b in bits)):
            raise ValueError(f"phases=({plane!r}, {len(bits)} masks): expected (plane length >= 1, one "
                             f"non-negative phase mask per filter tile = {fn_tiles}) on a masked block-sparse "
                             "kernel with counts=..., no cblock, split or gate")
        phases = (int(plane), tuple(int(b) for b in bits))
    if live is not None:
        chunks = g.mp // tile.pixels
        flags = np.asarray(live)
        if not skips_ok or flags.shape != (chunks,) or flags.dtype != bool or not flags.any():
            shown = f"{len(flags)} flags" if flags.ndim == 1 else repr(live)
            raise ValueError(f"live={shown}: expected {chunks} booleans, one per pixel chunk of the output, not all "
                             "False, on a masked block-sparse kernel with counts=..., no cblock, split or gate")

    if split != 1:
        from .split_conv import split_conv_primfunc

        return split_conv_primfunc(g, tile, split, kept=kept, counts=counts, epilogue=epilogue, gate=gate,
                                   masked=masked, cblock=cblock, partials=partials)
    if partials:
        raise ValueError("partials=True needs split=... > 1: only a split reduction leaves partial sums")

    if masked and epilogue is None:
        raise ValueError("masked=True needs epilogue=...: without a bias, zero padding already gives zero outputs")
    if cblock is not None and (counts is None or gate):
        raise ValueError(f"cblock={cblock!r} needs counts=... and gate=False (channel blocks split each filter "
                         "tile's counted entries; a gate scales whole tiles)")
    ft = tile.ft
    fn = _ceil_div(g.f, ft)
    if counts is not None:
        if kept is None:
            raise ValueError("counts=... needs kept=...: counts are the real entries of each row of kept")
        kept = _check_rows_kept(kept, fn, g.c * g.kh * g.kw, "C*KH*KW")
        counts = check_counts(counts, kept.shape)
        chan, shift = g.gather_indices(kept)
        if cblock is not None:
            starts = channel_starts(chan, counts, cblock, g.c)
            return (_conv_blocked_built(g, tile, kept.shape[1], fn, starts.shape[1] - 1, epilogue, masked,
                                        EPILOGUE_IN_REGISTERS, TAIL_PIXELS),
                    (chan, shift, starts))
        return _conv_counts_primfunc(g, tile, kept.shape[1], counts, epilogue, gate, masked, live, phases), \
            (chan, shift)
    x = te.placeholder((g.n, g.c, g.x_len), name="X")
    gx = te.placeholder((g.n, g.c), name="G") if gate else None
    s, L, wq = g.stride, g.plane, g.wq
    if kept is None:
        w = te.placeholder((fn, g.c * g.kh * g.kw, ft), name="W")
        weights = _gated_weights(w, gx, lambda fb, r: r // (g.kh * g.kw))
        rc = te.reduce_axis((0, g.c), "rc")
        rh = te.reduce_axis((0, g.kh), "rh")
        rw = te.reduce_axis((0, g.kw), "rw")

        def body(n, f, m):
            xi = ((rh % s) * s + rw % s) * L + (rh // s) * wq + rw // s + m
            return te.sum(weights(n, f // ft, (rc * g.kh + rh) * g.kw + rw, f % ft) * x[n, rc, xi],
                          axis=[rc, rh, rw])
    else:
        kept = _check_rows_kept(kept, fn, g.c * g.kh * g.kw, "C*KH*KW")
        k = kept.shape[1]
        chan, shift = g.gather_indices(kept)
        w = te.placeholder((fn, k, ft), name="W")
        cb = te.placeholder((fn, k), name="Kc", dtype="int32")
        sb = te.placeholder((fn, k), name="Ks", dtype="int32")
        weights = _gated_weights(w, gx, lambda fb, r: cb[fb, r])
        rk = te.reduce_axis((0, k), "rk")

        def body(n, f, m):
            fb = f // ft
            return te.sum(weights(n, fb, rk, f % ft) * x[n, cb[fb, rk], sb[fb, rk] + m], axis=[rk])

    y = te.compute((g.n, fn * ft, g.mp), body, name="conv")
    args = ([x, w] if kept is None else [x, w, cb, sb]) + ([gx] if gate else [])
    func = te.create_prim_func(_with_epilogue(args, y, epilogue, masked))
    func = _schedule_conv(func, tile, unroll_kernel=kept is None, pixels_outer=pixel_outer(g),
                          epilogue=epilogue is not None, gate=gate)
    if kept is not None:
        return func, (chan, shift)
    return func


def check_counts(counts, kept_shape: tuple[int, int], rows: str = "Fn") -> np.ndarray:
    """Validate per-tile real-entry counts ``[Fn]`` against a kept buffer of ``kept_shape`` ``[Fn, K]``
    (``rows``: what a row of ``kept`` is called in the error, a filter tile or a channel block)."""
    arr = np.asarray(counts)
    fn, k = kept_shape
    if arr.shape != (fn,) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"counts of shape {list(arr.shape)} ({arr.dtype}): expected an integer array [{rows}] = [{fn}]")
    if fn and (arr.min() < 0 or arr.max() > k):
        raise ValueError(f"counts in [{arr.min()}, {arr.max()}]: expected [0, K={k}] (entries per row of kept)")
    return arr.astype("int64")


def const_table(index, values: np.ndarray):
    """``values[index]`` as a TIR expression of constants, for per-tile tables: a balanced tree of
    selects on ``index < split`` (runs of equal values collapse), depth ``log2(len)``. A chain of
    ``index == i`` selects over 144 filter tiles (an unbalanced 1x1 conv's counts) took LLVM 0.34 s to
    build the kernel, the tree 0.14 s (0.06 s with no table: balanced rows; development measurement)."""
    from tvm import tirx

    vals = [int(v) for v in values]

    def tree(lo: int, hi: int):  # values[lo:hi]
        if all(v == vals[lo] for v in vals[lo:hi]):
            return tirx.IntImm("int32", vals[lo])
        mid = (lo + hi) // 2
        return tirx.Select(index < mid, tree(lo, mid), tree(mid, hi))

    return tree(0, len(vals))


def _conv_counts_primfunc(g: ConvGeometry, tile: ConvTile, k: int, counts: np.ndarray, epilogue: str | None = None,
                          gate: bool = False, masked: bool = False, live: Sequence[bool] | None = None,
                          phases: tuple[int, tuple[int, ...]] | None = None):
    """:func:`_conv_counts_built`, memoised: layers of the same shape and balanced structure build the
    same function."""
    return _conv_counts_built(g, tile, k, tuple(int(v) for v in counts), epilogue, gate, masked,
                              None if live is None else tuple(bool(v) for v in live), EPILOGUE_IN_REGISTERS,
                              phases, TAIL_PIXELS)


def _gated_weights(w, gx, channel):
    """Weight reader ``(n, fb, r, fi) -> value`` of a conv's packed weights ``w[Fn, R, ft]``: ``w``
    itself, or with a gate ``gx[N, C]`` a ``gated_w`` stage ``w * gx[n, channel(fb, r)]`` that the
    schedule computes once per filter tile."""
    if gx is None:
        return lambda n, fb, r, fi: w[fb, r, fi]
    from tvm import te

    fn, r, ft = w.shape
    gw = te.compute((gx.shape[0], fn, r, ft), lambda n, fb, ri, fi: w[fb, ri, fi] * gx[n, channel(fb, ri)],
                    name="gated_w")
    return lambda n, fb, ri, fi: gw[n, fb, ri, fi]


def _with_epilogue(args: list, y, epilogue: str | None, masked: bool = False) -> list:
    """TE arguments of a kernel computing ``y``: ``[*args, y]``, or with an epilogue
    ``[*args, B, act(y + B)]`` (``B`` per filter slot, axis 1 of ``y``), masked:
    ``[*args, B, Mk, act(y + B) * Mk]`` (``Mk`` per pixel, axis 2)."""
    if epilogue is None:
        return [*args, y]
    from tvm import te

    from .epilogue import activation_expr

    b = te.placeholder((y.shape[1],), name="B")
    mk = te.placeholder((y.shape[2],), name="Mk") if masked else None

    def out(n, f, m):
        z = activation_expr(epilogue, y[n, f, m] + b[f])
        return z if mk is None else z * mk[m]
    return [*args, b, *([mk] if masked else []), te.compute(y.shape, out, name="epilogue")]


#: storage scope of the kernels' register tiles and loop scalars. On CPU, TVM lowers ``"local"``
#: allocations to ``TVMBackendAllocWorkspace`` calls, one per iteration of the loop they sit in, into
#: memory LLVM cannot keep in registers across loops; ``"global"`` ones of constant size under 1 KB
#: become a stack ``alloca`` that LLVM promotes to registers (the IR-builder kernels therefore keep
#: one accumulator buffer per filter row). ``benchmarks/bench_kernel_ablation.py``: depthwise 3x3
#: over 1152 channels @7x7 1.69x faster, over 96 @112 (stride 2) 1.13x; dense convs unchanged
STACK_SCOPE = "global"


def register_tile(tile: ConvTile, fi_kind=None):
    """IR-builder loops over a ``ft x (mt*vw)`` register tile, yielding ``(fi, pixel)``: ``mt``
    unrolled vectors of ``vw`` vectorised pixels per filter row ``fi``, a Python int (rows unrolled
    here, so they index :func:`accumulators`) unless ``fi_kind`` makes it a TIR loop."""
    from tvm.tirx.script import builder as T

    if fi_kind is not None:
        with fi_kind(0, tile.ft) as fi, T.unroll(0, tile.mt) as mi, T.vectorized(0, tile.vw) as v:
            yield fi, mi * tile.vw + v
        return
    for fi in range(tile.ft):
        with T.unroll(0, tile.mt) as mi, T.vectorized(0, tile.vw) as v:
            yield fi, mi * tile.vw + v


def accumulators(rows: int, length: int) -> list:
    """IR builder: one ``(length,)`` float32 buffer per row of a register tile, in
    :data:`STACK_SCOPE` (a row under 1 KB lives on the stack, then in registers)."""
    from tvm.tirx.script import builder as T

    return [T.alloc_buffer((length,), "float32", scope=STACK_SCOPE) for _ in range(rows)]


#: the IR-builder kernels (block-sparse, channel-blocked, per-pattern) apply their bias and activation
#: to the accumulators as they store them, the activation's code unrolled over the register tile;
#: False: they store the raw sums, then re-read the tile in a loop over its filters
#: (:func:`store_epilogue`: one copy of the code, one more store and load per vector). In registers,
#: the accumulators start from the bias (:func:`start_tile`), one add less per vector. Block-sparse
#: expand convs with an activation @112-@28 at 5x took 0.71-0.91x the time in registers
#: (``bench_function_breakdown.py --compare stored-epilogue`` for whole models)
EPILOGUE_IN_REGISTERS = True


def store_tile(y, acc: list, tile: ConvTile, n, f0, m0, epilogue: str | None = None, bias=None, mask=None,
               in_registers: bool = True, biased: bool = False, last=None) -> None:
    """IR builder: store a register tile ``acc`` (one buffer per filter row) at ``y[n, f0 + fi, m0 + i]``;
    with ``epilogue``, ``act(sum + bias[f0 + fi])`` (times ``mask[m0 + i]`` when given), computed on
    the accumulators (``in_registers``; ``biased``: they started from the bias, :func:`start_tile`)
    or by :func:`store_epilogue` after the raw store. ``last`` (a TIR condition, for kernels summing
    channel blocks into ``y``): the epilogue only where it holds, the raw partial sums elsewhere."""
    from tvm.tirx.script import builder as T

    from .epilogue import activation_expr

    if epilogue is not None and last is not None:
        with T.If(last):
            with T.Then():
                store_tile(y, acc, tile, n, f0, m0, epilogue, bias, mask, in_registers, biased)
            with T.Else():
                store_tile(y, acc, tile, n, f0, m0)
        return
    fused = epilogue is not None and in_registers
    for fi, i in register_tile(tile):
        v = acc[fi][i]
        if fused:
            v = activation_expr(epilogue, v if biased else v + bias[f0 + fi])
            v = v if mask is None else v * mask[m0 + i]
        T.buffer_store(y, v, [n, f0 + fi, m0 + i])
    if epilogue is not None and not fused:
        store_epilogue(y, bias, epilogue, tile, n, f0, m0, mask)


def start_tile(acc: list, tile: ConvTile, f0=None, bias=None) -> None:
    """IR builder: set a register tile's accumulators to 0, or to ``bias[f0 + fi]`` per filter row
    (the epilogue then adds no bias: :func:`store_tile` with ``biased=True``)."""
    from tvm import tirx
    from tvm.tirx.script import builder as T

    for fi, i in register_tile(tile):
        T.buffer_store(acc[fi], tirx.const(0, "float32") if bias is None else bias[f0 + fi], [i])


def start_pixels(acc: list, ft: int, f0=None, bias=None) -> None:
    """IR builder: set single pixels' filter vectors (``ft`` sums each) to 0, or to ``bias[f0 + fi]``."""
    from tvm import tirx
    from tvm.tirx.script import builder as T

    for p in acc:
        with T.vectorized(0, ft) as fi:
            T.buffer_store(p, tirx.const(0, "float32") if bias is None else bias[f0 + fi], [fi])


def add_pixels(acc: list, ft: int, weight, inputs: list) -> None:
    """IR builder, inside a reduction: each single pixel's filter vector ``acc[j]`` += ``weight(fi) *
    inputs[j]`` (one input broadcast over the tile's filters)."""
    from tvm.tirx.script import builder as T

    for p, xj in zip(acc, inputs, strict=True):
        with T.vectorized(0, ft) as fi:
            T.buffer_store(p, p[fi] + weight(fi) * xj, [fi])


def store_pixel(y, acc, tile: ConvTile, n, f0, m, epilogue: str | None = None, bias=None, mask=None,
                biased: bool = False, last=None) -> None:
    """IR builder: store one pixel's filter vector ``acc`` (``tile.ft`` sums) at ``y[n, f0 + fi, m]``,
    with the epilogue (``biased``: the sums started from the bias) where ``last`` holds, as
    :func:`store_tile` applies it."""
    from tvm.tirx.script import builder as T

    from .epilogue import activation_expr

    if epilogue is not None and last is not None:
        with T.If(last):
            with T.Then():
                store_pixel(y, acc, tile, n, f0, m, epilogue, bias, mask, biased)
            with T.Else():
                store_pixel(y, acc, tile, n, f0, m)
        return
    with T.vectorized(0, tile.ft) as fi:
        v = acc[fi]
        if epilogue is not None:
            v = activation_expr(epilogue, v if biased else v + bias[f0 + fi])
            v = v if mask is None else v * mask[m]
        T.buffer_store(y, v, [n, f0 + fi, m])


#: the block-sparse conv's last pixel chunk computes only the outputs below ``g.m`` (the rounding to
#: whole chunks adds the rest): whole vectors, then the pixels of a last partial vector one at a time
#: (a vector of the tile's filters each) when they are fewer than the filters; the rest of the chunk
#: is stored as 0. :func:`tail_split` says how much
TAIL_PIXELS = True


def tail_split(g: ConvGeometry, tile: ConvTile) -> tuple[int, int]:
    """``(vectors, pixels)`` the block-sparse conv's last pixel chunk computes: whole vectors of
    ``tile.vw`` pixels, then single pixels, covering the chunk's outputs below ``g.m``
    (``(tile.mt, 0)``: the whole chunk). A partial vector becomes single pixels when it holds fewer
    than ``tile.ft`` of them (a pixel costs one multiply-add per entry, a vector ``ft``).

    Example (a 3x3 stride-2 conv @28: 14 rows of 15, 210 outputs, in 7 chunks of 32):
        >>> g = ConvGeometry.make(1, 8, 28, 28, 8, (3, 3), 2, (1, 1, 1, 1), pixels=32)
        >>> (g.m, g.mp, tail_split(g, ConvTile(8, 2, 16)))
        (210, 224, (1, 2))
    """
    px = tile.pixels
    need = g.m - (g.mp // px - 1) * px  # outputs of the last chunk below g.m
    whole, rest = divmod(need, tile.vw)
    if rest >= tile.ft:
        whole, rest = whole + 1, 0
    return whole, rest


def store_epilogue(y, bias, epilogue: str, tile: ConvTile, n, f0, m0, mask=None) -> None:
    """IR builder: ``y[n, f0 + fi, m0 + i] = act(y[...] + bias[f0 + fi])`` (times ``mask[m0 + i]``
    when given) over a stored register tile, re-read in a loop over its filters, so the activation's
    code exists once."""
    from tvm.tirx.script import builder as T

    from .epilogue import activation_expr

    for fi, i in register_tile(tile, T.serial):
        out = activation_expr(epilogue, y[n, f0 + fi, m0 + i] + bias[f0 + fi])
        T.buffer_store(y, out if mask is None else out * mask[m0 + i], [n, f0 + fi, m0 + i])


@functools.lru_cache(maxsize=512)
def _conv_counts_built(g: ConvGeometry, tile: ConvTile, k: int, counts_key: tuple[int, ...],
                       epilogue: str | None = None, gate: bool = False, masked: bool = False,
                       live: tuple[bool, ...] | None = None, in_registers: bool = True,
                       phases: tuple[int, tuple[int, ...]] | None = None, tail: bool = True):
    """The block-sparse conv with per-tile reduction lengths (TIR, same loop structure as the TE kernel):
    parallel over (image, outer tile), the inner tile loop serial (:func:`pixel_outer` picks which of
    filter tiles and pixel chunks is outer); ``ft x mt`` vectors of accumulators in registers.
    ``live``: only the pixel chunks flagged True are computed, the others stored as 0. ``tail``
    (:data:`TAIL_PIXELS`): the last chunk computes only what :func:`tail_split` keeps of it.

    Built with TVM's IR builder rather than parsed TVMScript: the rewrite step of an efficientnet_b0
    compile went from 1.3-1.6 s to 0.75 s (``compile_breakdown`` in
    ``benchmarks/results/bench_sparse_models_balanced.json``, before and after)."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.tirx.script import builder as T

    counts = np.asarray(counts_key, dtype="int64")
    ft = tile.ft
    fn = counts.shape[0]
    px = _check_pixels(g, tile)
    swap = pixel_outer(g)
    chunks = g.mp // px
    outer_n, inner_n = (chunks, fn) if swap else (fn, chunks)
    vectors, pixels = tail_split(g, tile) if tail else (tile.mt, 0)
    short = ConvTile(ft, vectors, tile.vw)  # the last chunk's register tile

    with IRBuilder() as ib, T.prim_func():
        x, w, kc, ks = _gathered_conv_args(g, fn, k, ft)
        gates = T.arg("G", T.buffer((g.n, g.c), "float32")) if gate else None
        bias = T.arg("B", T.buffer((fn * ft,), "float32")) if epilogue else None
        mask = T.arg("Mk", T.buffer((g.mp,), "float32")) if masked else None
        y = T.arg("Y", T.buffer((g.n, fn * ft, g.mp), "float32"))
        T.func_attr({"tirx.noalias": True})
        with T.parallel(0, g.n * outer_n) as t:
            wg = T.alloc_buffer((k, ft), "float32", scope=STACK_SCOPE) if gate else None  # the tile's gated weights
            with T.serial(0, inner_n) as u:
                n, fb = t // outer_n, u if swap else t % outer_n
                m0 = (t % outer_n if swap else u) * px

                def tile_sums(vt: ConvTile, rem: int):
                    # ``vt``: the register tile of vectors; ``rem``: single pixels after them (the last chunk)
                    acc = accumulators(ft, vt.pixels) if vt.mt else []
                    one = [T.alloc_buffer((ft,), "float32", scope=STACK_SCOPE) for _ in range(rem)]
                    at = [m0 + vt.pixels + j for j in range(rem)]
                    biased = bool(epilogue) and in_registers  # the tile starts from the bias
                    if vt.mt:
                        start_tile(acc, vt, fb * ft, bias if biased else None)
                    start_pixels(one, ft, fb * ft, bias if biased else None)
                    if gate:  # scale the tile's weights once (at each new filter tile)
                        with (T.If(tirx.const(True, "bool") if swap else u == 0), T.Then(),
                              T.serial(0, cnt[0]) as rk, T.serial(0, ft) as fi):
                            T.buffer_store(wg, w[fb, rk, fi] * gates[n, kc[fb, rk]], [rk, fi])
                    with T.serial(0, cnt[0]) as rk:
                        for fi, i in register_tile(vt) if vt.mt else ():
                            weight = wg[rk, fi] if gate else w[fb, rk, fi]
                            T.buffer_store(acc[fi], acc[fi][i] + weight * x[n, kc[fb, rk], ks[fb, rk] + m0 + i], [i])
                        add_pixels(one, ft, lambda fi: wg[rk, fi] if gate else w[fb, rk, fi],
                                   [x[n, kc[fb, rk], ks[fb, rk] + m] for m in at])
                    if vt.mt:
                        store_tile(y, acc, vt, n, fb * ft, m0, epilogue, bias, mask, in_registers, biased)
                    if vt.mt == tile.mt:
                        return
                    with T.serial(0, ft) as fi, T.serial(vt.pixels, px) as i:  # nobody reads past g.m
                        T.buffer_store(y, tirx.const(0, "float32"), [n, fb * ft + fi, m0 + i])
                    for p, m in zip(one, at, strict=True):
                        store_pixel(y, p, tile, n, fb * ft, m, epilogue, bias, mask, biased)

                def sums():
                    if (vectors, pixels) == (tile.mt, 0):
                        tile_sums(tile, 0)
                        return
                    with T.If(((t % outer_n) if swap else u) == chunks - 1):
                        with T.Then():
                            tile_sums(short, pixels)
                        with T.Else():
                            tile_sums(tile, 0)

                cnt = T.alloc_buffer((1,), "int32", scope=STACK_SCOPE)
                T.buffer_store(cnt, const_table(fb, counts), [0])  # an extent TVM does not re-analyse

                def chunk():
                    if live is None:
                        sums()
                    else:  # chunks outside hold only padding: 0, no sums
                        with T.If(_chunk_is_live(live, m0 // px)):
                            with T.Then():
                                sums()
                            with T.Else():
                                for fi, i in register_tile(tile):
                                    T.buffer_store(y, tirx.const(0, "float32"), [n, fb * ft + fi, m0 + i])

                if phases is None:
                    chunk()
                else:  # chunks of phases the depthwise conv never reads in this tile's channels: skipped
                    with T.If(_chunk_in_phases(phases, fb, m0, px)), T.Then():
                        chunk()
    return ib.get()


def phase_bits(kept: np.ndarray, block: int, channels: int, kernel: tuple[int, int], stride: int) -> np.ndarray:
    """``[channels]`` int: bit ``(kh % s) * s + kw % s`` set where channel ``c``'s block of a sparse
    depthwise conv (``kept[c // block]``, kernel positions ``kh * KW + kw``, padding entries included:
    they are read too) reads stride phase ``(kh % s, kw % s)``.

    Example:
        >>> phase_bits(np.array([[0, 2], [4, 4]]), 2, 4, (3, 3), 2).tolist()  # (0,0),(0,2) | (1,1)
        [1, 1, 8, 8]
    """
    kept = np.asarray(kept, dtype="int64")
    kw, s = kernel[1], int(stride)
    phase = ((kept // kw) % s) * s + (kept % kw) % s
    per_block = np.bitwise_or.reduce(np.left_shift(1, phase), axis=1)
    return per_block[np.arange(channels) // int(block)]


def phase_chunks(phases: tuple[int, Sequence[int]], chunks: int, pixels: int) -> np.ndarray:
    """``[filter tiles, chunks]`` bool: the pixel chunks a kernel built with ``phases=(plane, masks)``
    computes in each filter tile, those overlapping a phase its mask flags (NumPy twin of the kernel's
    condition).

    Example:
        >>> phase_chunks((16, [0b01, 0b10]), 4, 8).astype(int).tolist()
        [[1, 1, 0, 0], [0, 0, 1, 1]]
    """
    plane, masks = phases
    starts = np.arange(chunks) * pixels
    lo, hi = starts // plane, (starts + pixels - 1) // plane
    masks = np.asarray(masks, dtype="int64")[:, None]
    return (((masks >> lo) | (masks >> hi)) & 1).astype(bool)


def _chunk_in_phases(phases: tuple[int, tuple[int, ...]], fb, m0, px: int):
    """TIR condition: the chunk ``[m0, m0 + px)`` overlaps a phase flagged in filter tile ``fb``'s mask."""
    from tvm import tirx

    plane, bits = phases
    bits = np.asarray(bits, dtype="int64")
    mask = tirx.const(0, "int32")
    for p in range(int(bits.max()).bit_length()):  # the tile's phase mask, one bit table per phase
        mask = tirx.bitwise_or(mask, tirx.shift_left(_flag_bit((bits >> p) & 1, fb), tirx.const(p, "int32")))
    hit = tirx.bitwise_or(tirx.shift_right(mask, m0 // plane), tirx.shift_right(mask, (m0 + px - 1) // plane))
    return tirx.bitwise_and(hit, tirx.const(1, "int32")) == 1


def live_chunks(mask: np.ndarray, pixels: int) -> np.ndarray:
    """One flag per chunk of ``pixels`` outputs: whether the chunk holds an image position (a nonzero
    of a planes mask, :func:`plane_mask`); ``conv_primfunc(live=...)`` computes only those.

    Example:
        >>> live_chunks(np.array([0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0], "float32"), 4).tolist()
        [False, True, False]
    """
    return np.asarray(mask).reshape(-1, pixels).any(axis=1)


def _chunk_is_live(live: tuple[bool, ...], chunk):
    """TIR condition: ``live[chunk]``. A run of True is a range test; otherwise bits of 32-bit words
    of constants (a select over the words, not over the chunks)."""
    from tvm import tirx

    idx = np.flatnonzero(live)
    if idx[-1] - idx[0] + 1 == idx.size:
        return tirx.all(chunk >= int(idx[0]), chunk <= int(idx[-1]))
    return _flag_bit(live, chunk) == 1


def _flag_bit(flags: Sequence[bool], index):
    """TIR int32 0/1: ``flags[index]``, as bits of 32-bit words of constants (a select over the
    words, not over the flags: LLVM took seconds on a select chain over 84 filter tiles)."""
    from tvm import tirx

    flags = np.asarray(flags, dtype=bool)
    if flags.all() or not flags.any():
        return tirx.const(int(flags.all()), "int32")
    bits = np.zeros(-(-flags.size // 32) * 32, dtype=bool)
    bits[: flags.size] = flags
    words = (bits.reshape(-1, 32) * (1 << np.arange(32, dtype=np.int64))).sum(axis=1)
    words = np.where(words >= 1 << 31, words - (1 << 32), words)  # as int32
    word = const_table(index // 32, words)
    return tirx.bitwise_and(tirx.shift_right(word, index % 32), tirx.const(1, "int32"))


def _check_pixels(g: ConvGeometry, tile: ConvTile) -> int:
    """The tile's pixels, which must divide ``g.mp`` (``g`` built with ``pixels=tile.pixels``)."""
    px = tile.pixels
    if g.mp % px:
        raise ValueError(f"geometry mp={g.mp} is not a multiple of the tile's {px} pixels: build g with pixels=tile.pixels")
    return px


def _gathered_conv_args(g: ConvGeometry, fn: int, k: int, ft: int) -> tuple:
    """IR builder, inside ``T.prim_func()``: name the function and declare the block-sparse conv's first
    arguments, ``X[N, C, row]``, ``W[Fn, K, ft]`` and the gather indices ``Kc``, ``Ks`` ``[Fn, K]``."""
    from tvm.tirx.script import builder as T

    T.func_name("main")
    return (T.arg("X", T.buffer((g.n, g.c, g.x_len), "float32")), T.arg("W", T.buffer((fn, k, ft), "float32")),
            T.arg("Kc", T.buffer((fn, k), "int32")), T.arg("Ks", T.buffer((fn, k), "int32")))


def channel_starts(chan: np.ndarray, counts: np.ndarray, cblock: int, channels: int) -> np.ndarray:
    """``S[Fn, CB+1]`` int32: where each channel block's entries start in each filter tile's kept list
    (``CB = ceil(channels / cblock)``; ``S[:, CB]`` = the tile's count). The first ``counts[fb]``
    entries of ``chan[fb]`` (their input channels) must be sorted, as ``pack_sparse_rows`` makes them.

    Example:
        >>> channel_starts(np.array([[0, 3, 4, 9], [5, 6, 0, 0]]), np.array([4, 2]), 4, 10).tolist()
        [[0, 2, 3, 4], [0, 0, 2, 2]]
    """
    if isinstance(cblock, bool) or not isinstance(cblock, (int, np.integer)) or not 1 <= cblock < channels:
        raise ValueError(f"cblock={cblock!r}: expected an integer in [1, {channels}) (input channels per block, "
                         "fewer than the layer's)")
    chan = np.asarray(chan, dtype="int64")
    counts = np.asarray(counts, dtype="int64")
    real = np.arange(chan.shape[1])[None, :] < counts[:, None]
    if (np.diff(chan, axis=1)[real[:, 1:]] < 0).any():
        raise ValueError("kept entries are not sorted by input channel within a filter tile: channel blocks need "
                         "each tile's counted entries in channel order (pack_sparse_rows keeps them so)")
    bounds = np.arange(0, channels + cblock, cblock)[: -(-channels // cblock) + 1]
    starts = ((chan[:, :, None] < bounds[None, None, :]) & real[:, :, None]).sum(1)
    starts[:, -1] = counts
    return starts.astype("int32")


@functools.lru_cache(maxsize=256)
def _conv_blocked_built(g: ConvGeometry, tile: ConvTile, k: int, fn: int, blocks: int, epilogue: str | None = None,
                        masked: bool = False, in_registers: bool = True, tail: bool = True):
    """The block-sparse conv over channel blocks (``conv_primfunc(..., cblock=...)``): parallel over
    (image, pixel chunk); per channel block, every filter tile adds the block's entries
    (``S[fb, cb]`` to ``S[fb, cb+1]``) to its ``Y`` tile, the last block applying the epilogue.
    ``tail``: the last chunk computes only what :func:`tail_split` keeps of it, as
    :func:`_conv_counts_built` does."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.tirx.script import builder as T

    ft, px = tile.ft, _check_pixels(g, tile)
    chunks = g.mp // px
    vectors, pixels = tail_split(g, tile) if tail else (tile.mt, 0)
    with IRBuilder() as ib, T.prim_func():
        x, w, kc, ks = _gathered_conv_args(g, fn, k, ft)
        sb = T.arg("S", T.buffer((fn, blocks + 1), "int32"))
        bias = T.arg("B", T.buffer((fn * ft,), "float32")) if epilogue else None
        mask = T.arg("Mk", T.buffer((g.mp,), "float32")) if masked else None
        y = T.arg("Y", T.buffer((g.n, fn * ft, g.mp), "float32"))
        T.func_attr({"tirx.noalias": True})
        with T.parallel(0, g.n * chunks) as t:
            n, m0 = t // chunks, (t % chunks) * px

            def chunk_sums(vt: ConvTile, rem: int):
                # ``vt``: the register tile of vectors; ``rem``: single pixels after them (the last chunk)
                with T.serial(0, blocks) as cb, T.serial(0, fn) as fb:
                    acc = accumulators(ft, vt.pixels) if vt.mt else []
                    one = [T.alloc_buffer((ft,), "float32", scope=STACK_SCOPE) for _ in range(rem)]
                    at = [m0 + vt.pixels + j for j in range(rem)]
                    biased = bool(epilogue) and in_registers  # the tile starts from the bias
                    with T.If(cb == 0):  # the first block starts from 0 (or the bias), the others from Y
                        with T.Then():   # (a branch: a select would load Y on the first block too)
                            if vt.mt:
                                start_tile(acc, vt, fb * ft, bias if biased else None)
                            start_pixels(one, ft, fb * ft, bias if biased else None)
                        with T.Else():
                            for fi, i in register_tile(vt) if vt.mt else ():
                                T.buffer_store(acc[fi], y[n, fb * ft + fi, m0 + i], [i])
                            for p, m in zip(one, at, strict=True):
                                with T.vectorized(0, ft) as fi:
                                    T.buffer_store(p, y[n, fb * ft + fi, m], [fi])
                    with T.serial(sb[fb, cb], sb[fb, cb + 1]) as rk:
                        for fi, i in register_tile(vt) if vt.mt else ():
                            T.buffer_store(acc[fi], acc[fi][i] + w[fb, rk, fi] * x[n, kc[fb, rk], ks[fb, rk] + m0 + i], [i])
                        add_pixels(one, ft, lambda fi: w[fb, rk, fi], [x[n, kc[fb, rk], ks[fb, rk] + m] for m in at])
                    last = cb == blocks - 1  # the epilogue applied by the last block
                    if vt.mt:
                        store_tile(y, acc, vt, n, fb * ft, m0, epilogue, bias, mask, in_registers, biased, last=last)
                    if vt.mt < tile.mt:
                        with T.serial(0, ft) as fi, T.serial(vt.pixels, px) as i:  # nobody reads past g.m
                            T.buffer_store(y, tirx.const(0, "float32"), [n, fb * ft + fi, m0 + i])
                    for p, m in zip(one, at, strict=True):
                        store_pixel(y, p, tile, n, fb * ft, m, epilogue, bias, mask, biased, last=last)

            if (vectors, pixels) == (tile.mt, 0):
                chunk_sums(tile, 0)
            else:
                with T.If(t % chunks == chunks - 1):
                    with T.Then():
                        chunk_sums(ConvTile(ft, vectors, tile.vw), pixels)
                    with T.Else():
                        chunk_sums(tile, 0)
    return ib.get()


def _check_rows_kept(kept, fn: int, r: int, what: str) -> np.ndarray:
    """Validate a ``[Fn, K]`` kept-index buffer (one row per filter tile, indices in ``[0, r)``)."""
    arr = np.asarray(kept)
    if arr.ndim != 2 or arr.shape[0] != fn or arr.shape[1] < 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"kept of shape {list(arr.shape)} ({arr.dtype}): expected an integer array "
                         f"[Fn, K] = [{fn}, K>=1] (one row per filter tile)")
    if arr.min() < 0 or arr.max() >= r:
        raise ValueError(f"kept holds reduction indices in [{arr.min()}, {arr.max()}]: expected [0, {what}={r})")
    return arr.astype("int64")


#: an image's input planes larger than this (bytes) do not stay in a core's L2 across filter tiles
L2_INPUT_BYTES = 1 << 20


def pixel_outer(g: ConvGeometry) -> bool:
    """Loop order of the conv kernels: pixel chunks outside filter tiles when one image's input is
    larger than :data:`L2_INPUT_BYTES` (every filter tile then reads a chunk that is in cache; see
    the 3x3 256->256 @56x56 rows of ``benchmarks/bench_sparse_layers.py``), else filter tiles
    outside (each parallel iteration sweeps its pixels with its weights in L1)."""
    return g.c * g.x_len * 4 > L2_INPUT_BYTES


def _schedule_conv(func, tile: ConvTile, *, unroll_kernel: bool, pixels_outer: bool = False, epilogue: bool = False,
                   gate: bool = False):
    from tvm.s_tir import Schedule

    sch = Schedule(func)
    b = sch.get_sblock("conv")
    loops = sch.get_loops(b)
    n, f, m, red = loops[0], loops[1], loops[2], loops[3:]
    fo, fi = sch.split(f, [None, tile.ft])
    mo, mi, mv = sch.split(m, [None, tile.mt, tile.vw])
    # parallel over (image, outer tile); the inner tile loop is serial inside each iteration
    first, second = (mo, fo) if pixels_outer else (fo, mo)
    sch.reorder(n, first, second, *red, fi, mi, mv)
    outer = sch.fuse(n, first)
    sch.parallel(outer)
    cw = sch.cache_write(b, 0, STACK_SCOPE)
    if epilogue:  # bias + activation folded into the accumulators' copy-out
        sch.reverse_compute_inline(sch.get_sblock("epilogue"))
    sch.reverse_compute_at(cw, second)
    if gate:  # the gated weights of one filter tile, computed once per tile in a local buffer
        gated = sch.get_sblock("gated_w")
        sch.compute_at(gated, outer if not pixels_outer else second)
        sch.set_scope(gated, 0, STACK_SCOPE)
    if unroll_kernel:
        for r in red[1:]:
            sch.unroll(r)
    sch.unroll(fi)
    sch.unroll(mi)
    sch.vectorize(mv)
    sch.decompose_reduction(b, red[0])
    wl = sch.get_loops(cw)
    if len(wl) == 4:  # outer, f, mi*vw: vectorise the copy-out
        inner = sch.split(wl[-1], [None, tile.vw])
        sch.vectorize(inner[-1])
    return sch.mod["main"]


def depthwise_primfunc(g: ConvGeometry, tile: ConvTile, kept: np.ndarray | None = None, block: int = 1,
                       epilogue: str | None = None, counts: np.ndarray | None = None):
    """Scheduled depthwise PrimFunc ``(X[N,C,P*L], W[C,KH*KW], Y[N,C,Mp])``.

    ``kept`` (optional, ``[ceil(C/block), K]`` int32 kernel positions ``kh*KW + kw`` per block of
    ``block`` channels, padded with a position whose packed weight is 0; see
    :func:`npas_lightning.compiler.sparse_pack.pack_sparse_depthwise`) makes the kernel read only the
    kept positions: the PrimFunc is then ``(X, W[C,K], Ks[Cb,K] int32 shifts, Y)`` and the call
    returns ``(func, shifts)`` with the shift buffer to pass as ``Ks``.

    ``counts`` (optional with ``kept``, ``[ceil(C/block)]``: how many leading entries of each row of
    ``kept`` are real, :func:`~npas_lightning.compiler.sparse_pack.depthwise_block_counts`) makes each
    channel block stop at its own count instead of the padded ``K`` (unbalanced blocks): the shift
    buffer returned then has one more column, ``Ks[Cb, K+1]``, the last holding the block's count
    (balanced counts change nothing).

    ``epilogue`` adds a bias buffer ``B[C]`` before ``Y``, as in :func:`conv_primfunc`.
    """
    from tvm import te

    x = te.placeholder((g.n, g.c, g.x_len), name="X")
    s, L, wq = g.stride, g.plane, g.wq
    if kept is None:
        if counts is not None:
            raise ValueError("counts=... needs kept=...: counts are the real entries of each row of kept")
        w = te.placeholder((g.c, g.kh * g.kw), name="W")
        rh = te.reduce_axis((0, g.kh), "rh")
        rw = te.reduce_axis((0, g.kw), "rw")

        def body(n, c, m):
            xi = ((rh % s) * s + rw % s) * L + (rh // s) * wq + rw // s + m
            return te.sum(w[c, rh * g.kw + rw] * x[n, c, xi], axis=[rh, rw])
        args = [x, w]
    else:
        kept, block = _check_depthwise_kept(g, kept, block)
        k = kept.shape[1]
        shift = g.offsets()[kept].astype("int32")
        w = te.placeholder((g.c, k), name="W")
        sb = te.placeholder((kept.shape[0], k), name="Ks", dtype="int32")
        rk = te.reduce_axis((0, k), "rk")
        if counts is not None:
            counts = check_counts(counts, kept.shape, "ceil(C/block)")
            if counts.min() < 1:
                raise ValueError(f"counts holds {int(counts.min())}: expected every channel block to keep at least "
                                 "one kernel position (a block keeping none is padded to one zero weight)")
            if not (counts == k).all():  # balanced blocks: the unrolled kernel below
                func = _depthwise_counts_built(g, tile, k, kept.shape[0], block,
                                               tuple(sorted({int(v) for v in counts})), epilogue, EPILOGUE_IN_REGISTERS)
                return func, np.concatenate([shift, counts[:, None].astype("int32")], axis=1)

        def body(n, c, m):
            return te.sum(w[c, rk] * x[n, c, sb[c // block, rk] + m], axis=[rk])
        args = [x, w, sb]
    y = te.compute((g.n, g.c, g.mp), body, name="dwconv")
    func = _schedule_depthwise(te.create_prim_func(_with_epilogue(args, y, epilogue)), tile, epilogue is not None)
    return func if kept is None else (func, shift)


@functools.lru_cache(maxsize=128)
def _depthwise_counts_built(g: ConvGeometry, tile: ConvTile, k: int, blocks: int, block: int,
                            distinct: tuple[int, ...], epilogue: str | None = None, in_registers: bool = True):
    """The sparse depthwise conv whose channel blocks keep different numbers of kernel positions: one
    channel plane per parallel iteration (as :func:`_schedule_depthwise`); the block's count, read
    from the last column of ``Ks[Cb, K+1]``, picks (a tree of branches over the ``distinct`` counts)
    a loop over the plane's pixel chunks with that many kept positions unrolled into ``mt`` vectors
    of accumulators, the epilogue applied to them as the block-sparse conv does."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.tirx.script import builder as T

    px = tile.pixels
    chunks = g.mp // _check_pixels(g, tile)
    with IRBuilder() as ib, T.prim_func():
        T.func_name("main")
        x = T.arg("X", T.buffer((g.n, g.c, g.x_len), "float32"))
        w = T.arg("W", T.buffer((g.c, k), "float32"))
        ks = T.arg("Ks", T.buffer((blocks, k + 1), "int32"))
        bias = T.arg("B", T.buffer((g.c,), "float32")) if epilogue else None
        y = T.arg("Y", T.buffer((g.n, g.c, g.mp), "float32"))
        T.func_attr({"tirx.noalias": True})
        with T.parallel(0, g.n * g.c) as t:
            n, c = t // g.c, t % g.c
            cb = c // block
            cnt = T.alloc_buffer((1,), "int32", scope=STACK_SCOPE)
            T.buffer_store(cnt, ks[cb, k], [0])

            biased = bool(epilogue) and in_registers  # the tiles start from the bias

            def plane(d: int) -> None:
                with T.serial(0, chunks) as u:
                    m0 = u * px
                    acc = accumulators(1, px)
                    start_tile(acc, tile, c, bias if biased else None)
                    for rk in range(d):
                        for _, i in register_tile(tile):
                            T.buffer_store(acc[0], acc[0][i] + w[c, rk] * x[n, c, ks[cb, rk] + m0 + i], [i])
                    store_tile(y, acc, tile, n, c, m0, epilogue, bias, None, in_registers, biased)

            def pick(values: tuple[int, ...]) -> None:  # a balanced tree of branches on the count
                if len(values) == 1:
                    plane(values[0])
                    return
                mid = len(values) // 2
                with T.If(cnt[0] < values[mid]):
                    with T.Then():
                        pick(values[:mid])
                    with T.Else():
                        pick(values[mid:])

            pick(distinct)
    return ib.get()


def _check_depthwise_kept(g: ConvGeometry, kept, block) -> tuple[np.ndarray, int]:
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"block={block!r}: expected an integer >= 1 (channels per kept-position block)")
    kept = np.asarray(kept)
    cb = _ceil_div(g.c, int(block))
    if kept.ndim != 2 or kept.shape[0] != cb or kept.shape[1] < 1 or not np.issubdtype(kept.dtype, np.integer):
        raise ValueError(f"kept of shape {list(kept.shape)} ({kept.dtype}): expected an integer array "
                         f"[ceil(C/block), K] = [{cb}, K>=1] "
                         f"for C={g.c}, block={block}")
    if kept.min() < 0 or kept.max() >= g.kh * g.kw:
        raise ValueError(f"kept holds kernel positions in [{kept.min()}, {kept.max()}]: expected [0, {g.kh * g.kw})")
    return kept.astype("int64"), int(block)


def _schedule_depthwise(func, tile: ConvTile, epilogue: bool = False):
    from tvm.s_tir import Schedule

    sch = Schedule(func)
    b = sch.get_sblock("dwconv")
    n, c, m, *red = sch.get_loops(b)
    mo, mi, mv = sch.split(m, [None, tile.mt, tile.vw])
    sch.reorder(n, c, mo, *red, mi, mv)
    # one channel plane per parallel iteration, its pixel chunks serial inside: faster than
    # parallelising over (channel, chunk) pairs (depthwise rows of benchmarks/bench_compiler_layers.py)
    outer = sch.fuse(n, c)
    sch.parallel(outer)
    cw = sch.cache_write(b, 0, STACK_SCOPE)
    if epilogue:
        sch.reverse_compute_inline(sch.get_sblock("epilogue"))
    sch.reverse_compute_at(cw, mo)
    for r in red:
        sch.unroll(r)
    sch.unroll(mi)
    sch.vectorize(mv)
    sch.decompose_reduction(b, red[0])
    wl = sch.get_loops(cw)
    inner = sch.split(wl[-1], [None, tile.vw])
    sch.vectorize(inner[-1])
    return sch.mod["main"]


def planes_from_nchw(x: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """NumPy reference of the layout transform (tests and per-layer checks)."""
    s = g.stride
    pt, pl, _, _ = g.pad
    full = np.zeros((g.n, g.c, s * g.hq, s * g.wq), dtype=x.dtype)
    hh, ww = min(g.h, s * g.hq - pt), min(g.w, s * g.wq - pl)
    full[:, :, pt:pt + hh, pl:pl + ww] = x[:, :, :hh, :ww]
    ph = full.reshape(g.n, g.c, g.hq, s, g.wq, s).transpose(0, 1, 3, 5, 2, 4)
    return np.ascontiguousarray(ph.reshape(g.n, g.c, -1))


def plane_mask(g: ConvGeometry, length: int) -> np.ndarray:
    """``[length]`` float32: 1 where ``g``'s padded planes hold an image pixel, 0 on the padding and
    past the planes (the factor ``Mk`` of a masked kernel writing those planes).

    Example:
        >>> g = ConvGeometry.make(1, 1, 2, 2, 1, (3, 3), 1, (1, 1, 1, 1), pixels=4)
        >>> plane_mask(g, 20).reshape(-1, g.wq)[:4].tolist()
        [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    """
    ones = planes_from_nchw(np.ones((1, 1, g.h, g.w), "float32"), replace(g, n=1, c=1, row=0))[0, 0]
    out = np.zeros(length, "float32")
    out[: min(length, ones.size)] = ones[:length]
    return out


def nchw_from_planes(y: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """NumPy reference of the crop: ``[N, Fp, Mp] -> [N, F, OH, OW]``."""
    return y[:, : g.f, : g.m].reshape(g.n, g.f, g.oh, g.wq)[:, :, :, : g.ow]
