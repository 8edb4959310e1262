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
schedule with a gathered reduction (the sparse issue builds on this).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "ConvGeometry",
    "ConvTile",
    "conv_primfunc",
    "depthwise_primfunc",
    "pack_conv_weight",
    "pack_depthwise_weight",
    "planes_from_nchw",
    "nchw_from_planes",
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
    def plane(self) -> int:
        return self.hq * self.wq

    def offset(self, kh: int, kw: int) -> int:
        """Flat shift of kernel position (kh, kw) in the phase-major row."""
        s = self.stride
        return ((kh % s) * s + kw % s) * self.plane + (kh // s) * self.wq + kw // s

    def offsets(self) -> np.ndarray:
        """Shift of every kernel position, ``[KH*KW]`` int32 in (kh, kw) order."""
        return np.array([self.offset(i, j) for i in range(self.kh) for j in range(self.kw)], dtype="int32")

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


def conv_primfunc(g: ConvGeometry, tile: ConvTile, kept: np.ndarray | None = None):
    """Scheduled PrimFunc ``(X[N,C,P*L], W[Fn,R,ft], Y[N,Fn*ft,Mp])``.

    ``kept`` (optional, ``[Fn, K]`` int32 reduction indices ``(c*KH + kh)*KW + kw`` per filter
    block, padded with any valid index whose packed weight is zero) makes the reduction run over
    the kept entries only; then ``W`` is ``[Fn, K, ft]``.
    """
    from tvm import te

    ft = tile.ft
    fn = _ceil_div(g.f, ft)
    x = te.placeholder((g.n, g.c, g.phases * g.plane), name="X")
    s, L, wq = g.stride, g.plane, g.wq
    if kept is None:
        w = te.placeholder((fn, g.c * g.kh * g.kw, ft), name="W")
        rc = te.reduce_axis((0, g.c), "rc")
        rh = te.reduce_axis((0, g.kh), "rh")
        rw = te.reduce_axis((0, g.kw), "rw")

        def body(n, f, m):
            xi = ((rh % s) * s + rw % s) * L + (rh // s) * wq + rw // s + m
            return te.sum(w[f // ft, (rc * g.kh + rh) * g.kw + rw, f % ft] * x[n, rc, xi], axis=[rc, rh, rw])
    else:
        kept = np.asarray(kept, dtype="int64")
        k = kept.shape[1]
        offs = g.offsets().astype("int64")
        chan = (kept // (g.kh * g.kw)).astype("int32")
        shift = offs[kept % (g.kh * g.kw)].astype("int32")
        w = te.placeholder((fn, k, ft), name="W")
        cb = te.placeholder((fn, k), name="Kc", dtype="int32")
        sb = te.placeholder((fn, k), name="Ks", dtype="int32")
        rk = te.reduce_axis((0, k), "rk")

        def body(n, f, m):
            fb = f // ft
            return te.sum(w[fb, rk, f % ft] * x[n, cb[fb, rk], sb[fb, rk] + m], axis=[rk])

    y = te.compute((g.n, fn * ft, g.mp), body, name="conv")
    args = [x, w, y] if kept is None else [x, w, cb, sb, y]
    func = te.create_prim_func(args)
    func = _schedule_conv(func, tile, unroll_kernel=kept is None)
    if kept is not None:
        return func, (chan, shift)
    return func


def _schedule_conv(func, tile: ConvTile, *, unroll_kernel: bool):
    from tvm.s_tir import Schedule

    sch = Schedule(func)
    b = sch.get_sblock("conv")
    loops = sch.get_loops(b)
    n, f, m, red = loops[0], loops[1], loops[2], loops[3:]
    fo, fi = sch.split(f, [None, tile.ft])
    mo, mi, mv = sch.split(m, [None, tile.mt, tile.vw])
    sch.reorder(n, fo, mo, *red, fi, mi, mv)
    outer = sch.fuse(n, fo, mo)
    sch.parallel(outer)
    cw = sch.cache_write(b, 0, "local")
    sch.reverse_compute_at(cw, outer)
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


def depthwise_primfunc(g: ConvGeometry, tile: ConvTile):
    """Scheduled depthwise PrimFunc ``(X[N,C,P*L], W[C,KH*KW], Y[N,C,Mp])``."""
    from tvm import te
    from tvm.s_tir import Schedule

    x = te.placeholder((g.n, g.c, g.phases * g.plane), name="X")
    w = te.placeholder((g.c, g.kh * g.kw), name="W")
    rh = te.reduce_axis((0, g.kh), "rh")
    rw = te.reduce_axis((0, g.kw), "rw")
    s, L, wq = g.stride, g.plane, g.wq

    def body(n, c, m):
        xi = ((rh % s) * s + rw % s) * L + (rh // s) * wq + rw // s + m
        return te.sum(w[c, rh * g.kw + rw] * x[n, c, xi], axis=[rh, rw])

    y = te.compute((g.n, g.c, g.mp), body, name="dwconv")
    sch = Schedule(te.create_prim_func([x, w, y]))
    b = sch.get_sblock("dwconv")
    n, c, m, rh_, rw_ = sch.get_loops(b)
    mo, mi, mv = sch.split(m, [None, tile.mt, tile.vw])
    sch.reorder(n, c, mo, rh_, rw_, mi, mv)
    outer = sch.fuse(n, c, mo)
    sch.parallel(outer)
    cw = sch.cache_write(b, 0, "local")
    sch.reverse_compute_at(cw, outer)
    sch.unroll(rh_)
    sch.unroll(rw_)
    sch.unroll(mi)
    sch.vectorize(mv)
    sch.decompose_reduction(b, rh_)
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


def nchw_from_planes(y: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """NumPy reference of the crop: ``[N, Fp, Mp] -> [N, F, OH, OW]``."""
    return y[:, : g.f, : g.m].reshape(g.n, g.f, g.oh, g.wq)[:, :, :, : g.ow]
