"""Relax graph rewrite: conv2d / depthwise conv2d / matmul calls -> the project's scheduled kernels.

Every matched call becomes ``layout ops -> call_tir(kernel) -> crop ops``. A conv followed by its
(BN-folded) bias add and activation takes them into the kernel (:mod:`.epilogue`): the kernel stores
``act(conv + bias)`` and the bias/activation calls drop out of the graph. The kernel PrimFunc
carries its own ``global_symbol`` and ``op_pattern = 8`` (opaque, so fusion never swallows it) and
``npas.kernel = 1`` (so the generic schedule rule leaves it alone). The layout and crop ops are
ordinary injective Relax ops that fusion merges into the neighbouring elementwise functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .conv_kernel import (
    ConvGeometry,
    ConvTile,
    conv_primfunc,
    depthwise_primfunc,
    live_chunks,
    pack_conv_weight,
    pack_depthwise_weight,
    phase_bits,
    phase_chunks,
    pixel_outer,
    plane_mask,
)
from .dense_kernel import DenseTile, dense_primfunc, pack_dense_weight
from .epilogue import EpilogueChain, find_epilogues, kernel_bias
from .pattern_kernel import pack_pattern, pattern_primfunc
from .pool_kernel import rows_mean_primfunc
from .relax_utils import rewrite_relax_functions
from .sparse_pack import SparsePacking, depthwise_block_counts, pack_sparse_depthwise, pack_sparse_rows
from .split_conv import split_parts
from .targets import TargetSpec
from .tuning import TileCache, measure_kernel, pick_best

__all__ = ["BLOCK_CONV_CBLOCKS", "DEPTHWISE_COUNTS", "KXK_PLANES_OUTPUT", "PLANES_OUTPUT_MAX_WORK", "PLANES_OUTPUT_MAX_WORK_SILU",
           "PLANES_OUTPUT_SKIPS_PADDING", "PLANES_OUTPUT_SKIPS_PHASES", "RESIDUAL_READS_PLANES", "SPARSE_LOWERINGS",
           "SPLIT_PARTIALS", "SPLIT_REDUCTION",
           "KernelChoice", "KernelRecord", "TilePlanner", "block_conv_choices", "clear_kernel_caches", "drop_unused_kernels",
           "pattern_kernel_choices", "reduction_split", "rewrite_kernels", "time_conv_tile"]


@dataclass
class KernelRecord:
    """One layer lowered to a project kernel (used for reports and per-layer numerics checks)."""

    index: int
    kind: str  # conv | depthwise | dense
    module: str
    symbol: str
    shape: dict[str, Any]
    tile: dict[str, int]
    tuned: bool
    weight: np.ndarray = field(repr=False)  # the layer's (BN-folded) weight in PyTorch layout
    flops: int = 0
    packed: np.ndarray | None = field(default=None, repr=False)  # exactly what the kernel reads
    #: sparse layers: scheme, density (work done / dense work), kept fraction, padded count, reorder
    sparse: dict[str, Any] | None = None
    #: sparse layers: the index buffers the kernel reads after ``packed`` (channel/shift, or channel)
    buffers: list[np.ndarray] = field(default_factory=list, repr=False)
    #: filter slot -> original filter (``None`` = identity), for kernels that reorder filters
    order: np.ndarray | None = field(default=None, repr=False)
    #: the scheduled PrimFunc (built alone by the per-layer numerics check); dense kernels without
    #: an epilogue leave it None (the check rebuilds them from the tile)
    func: Any = field(default=None, repr=False)
    #: activation the kernel applies after adding ``bias`` (``None``: the kernel stores the raw conv)
    epilogue: str | None = None
    #: the layer's bias in model filter order (with ``epilogue``)
    bias: np.ndarray | None = field(default=None, repr=False)
    #: per-pixel factor the kernel multiplies its activations by (a 1x1 conv writing the next depthwise
    #: conv's padded planes: 0 on the padding), passed after ``bias``
    mask: np.ndarray | None = field(default=None, repr=False)
    #: threads the conv's reduction over input channels is split between (:mod:`.split_conv`; 1: none)
    split: int = 1
    #: the split kernel writes every part's sums, ``Y[parts, N, Fp, Mp]``, which the graph adds up
    #: (no second pass in the kernel)
    partials: bool = False


@dataclass(frozen=True)
class _Rows:
    """A kernel's raw output ``y`` = ``[N, channels, mp]``: ``oh`` rows of ``wq`` columns, the first
    ``ow`` of them valid. A following 1x1 conv can read it as is instead of its cropped copy."""

    y: Any
    oh: int
    ow: int
    wq: int
    mp: int
    channels: int


#: (ft, mt, cblock) of the per-pattern kernel that pattern layers time against the block-sparse tiles:
#: one filter per tile (its 4-position kernels, no union), 4 or 8 pixel vectors, input channels in
#: blocks of 32 or 64 (0: one block). Two filters per tile lost to one from 5x on, and at 2.25x both
#: lost to the block-sparse kernel (``benchmarks/bench_kernel_ablation.py``)
PATTERN_KERNEL_TILES = ((1, 4, 32), (1, 8, 32), (1, 4, 64), (1, 8, 64), (1, 8, 0))


@dataclass(frozen=True)
class KernelChoice:
    """Which kernel a pattern-pruned conv runs (``"block"``: block-sparse over filter tiles,
    ``"pattern"``: per-pattern loops) and its tile; the tile cache stores it as a dict."""

    kernel: str
    ft: int
    mt: int
    vw: int
    cblock: int = 0  # input channels per block, of either kernel (0: one block)

    @classmethod
    def of(cls, kernel: str, tile: ConvTile, cblock: int = 0) -> KernelChoice:
        return cls(kernel, tile.ft, tile.mt, tile.vw, cblock)

    @property
    def tile(self) -> ConvTile:
        return ConvTile(self.ft, self.mt, self.vw)

    def to_dict(self) -> dict:
        return {"kernel": self.kernel, "ft": self.ft, "mt": self.mt, "vw": self.vw, "cblock": self.cblock}


#: untuned pattern layers keeping at most this fraction of their weights (connectivity pruning to rate
#: 4 and beyond) run the per-pattern kernel with channel blocks of 32: in ``bench_sparse_layers.py``
#: it beat the block-sparse kernel on every 3x3 layer from 5x on (3x3 128->128 @28: 1.94x vs 1.48x
#: at 5x, 3.60x vs 2.78x at 10x) and lost 5 of 6 cells at 2.25x and 3x, where filter tiles share more
#: positions
PATTERN_KERNEL_MAX_KEPT = 0.25


def _pattern_default(per_pattern: list[KernelChoice], block: KernelChoice, kept: float, stride: int,
                     lanes: int) -> KernelChoice:
    """Untuned choice for a pattern layer: the per-pattern kernel (8 pixel vectors, 4 at stride 2,
    channel blocks of 32) when it keeps at most :data:`PATTERN_KERNEL_MAX_KEPT` and that tile is a
    candidate, else the block-sparse ``block``."""
    pref = KernelChoice("pattern", 1, 8 if stride == 1 else 4, lanes, 32)
    return pref if kept <= PATTERN_KERNEL_MAX_KEPT and pref in per_pattern else block


def pattern_kernel_choices(geom: Callable[[ConvTile], ConvGeometry], channels: int, lanes: int) -> list[KernelChoice]:
    """The per-pattern kernel's candidates for a layer: :data:`PATTERN_KERNEL_TILES` whose pixel tile
    fits the map, channel blocks only when they split the channels and leave at least 4 parallel
    (image, pixel chunk) iterations (the blocked kernel parallelises over those alone)."""
    out = []
    for ft, mt, cblock in PATTERN_KERNEL_TILES:
        tile = ConvTile(ft, mt, lanes)
        g = geom(tile)
        if mt * lanes > g.m or (cblock and (cblock >= channels or g.n * (g.mp // tile.pixels) < 4)):
            continue
        out.append(KernelChoice.of("pattern", tile, cblock))
    return out


#: input channels per block that the block-sparse conv kernel is timed with (``conv_primfunc(cblock=)``)
BLOCK_CONV_CBLOCKS = (32, 64)


def block_conv_choices(tiles: Sequence[ConvTile], geom: Callable[[ConvTile], ConvGeometry],
                       channels: int) -> list[KernelChoice]:
    """The block-sparse conv's channel-blocked candidates: each tile with :data:`BLOCK_CONV_CBLOCKS`
    that split the channels and leave at least 4 parallel (image, pixel chunk) iterations."""
    out = []
    for tile in tiles:
        g = geom(tile)
        if g.n * (g.mp // tile.pixels) < 4:
            continue
        out += [KernelChoice.of("block", tile, cb) for cb in BLOCK_CONV_CBLOCKS if cb < channels]
    return out


def _block_conv_default(tile: ConvTile, blocked: list[KernelChoice], geom) -> KernelChoice:
    """Untuned block-sparse conv: channel blocks of 32 when one image's input does not fit in L2
    (:func:`~npas_lightning.compiler.conv_kernel.pixel_outer`; the 3x3 256->256 @56 layer of
    ``bench_sparse_layers.py``) and that candidate exists, else one block."""
    pref = KernelChoice.of("block", tile, 32)
    return pref if pixel_outer(geom(tile)) and pref in blocked else KernelChoice.of("block", tile)


def time_conv_tile(target, kind: str, g: ConvGeometry, tile: ConvTile, *, number: int = 5, repeat: int = 3) -> float:
    """Median seconds of one dense conv (``kind="conv"``) or depthwise kernel tile on random data."""
    if kind == "depthwise":
        func = depthwise_primfunc(g, tile)
        shapes = [((g.n, g.c, g.x_len), "float32"), ((g.c, g.kh * g.kw), "float32"),
                  ((g.n, g.c, g.mp), "float32")]
    else:
        func = conv_primfunc(g, tile)
        fn = -(-g.f // tile.ft)
        shapes = [((g.n, g.c, g.x_len), "float32"), ((fn, g.c * g.kh * g.kw, tile.ft), "float32"),
                  ((g.n, fn * tile.ft, g.mp), "float32")]
    return measure_kernel(func, target, shapes, number=number, repeat=repeat)


class TilePlanner:
    """Chooses tile sizes per layer: cached best, measured grid (``tune=True``) or a heuristic."""

    def __init__(self, spec: TargetSpec, *, tune: bool = False, cache: TileCache | None = None):
        self.spec = spec
        self.tune = tune and spec.is_host
        self.cache = cache if cache is not None else TileCache()
        self.lanes = spec.vector_lanes
        #: cores the kernels' parallel loops run on (the target's ``num-cores``)
        self.threads = int(spec.target.get("num-cores") or 1)

    def _key(self, kind: str, shape: dict) -> str:
        return f"{kind}|{sorted(shape.items())}|{self.spec.key()}"

    def _choose(self, kind: str, shape: dict, candidates: Sequence, default, run: Callable[[Any], float],
                cls) -> tuple[Any, bool]:
        key = self._key(kind, shape)
        hit = self.cache.get(key)
        if hit is not None:
            return cls(**hit), True
        if not self.tune:
            return default, False
        best, secs = pick_best(candidates, run)
        self.cache.put(key, best.to_dict(), secs)
        return best, True

    # -- conv / depthwise ---------------------------------------------------------------
    def conv_tile(self, kind: str, shape: dict, make_geom: Callable[[ConvTile], ConvGeometry]) -> tuple[ConvTile, bool]:
        v = self.lanes
        g0 = make_geom(ConvTile(8, 1, v))
        m = g0.m
        fts = [1] if kind == "depthwise" else [ft for ft in (4, 8, 16) if ft <= max(4, shape["f"])]
        mts = [mt for mt in (1, 2, 4) if mt == 1 or mt * v <= m]
        cands = [ConvTile(ft, mt, v) for ft in fts for mt in mts]
        if kind == "depthwise":
            default = ConvTile(1, self.depthwise_pixel_tile(shape["kh"], m), v)
        else:
            default = ConvTile(fts[min(1, len(fts) - 1)], 2 if m >= 8 * v else 1, v)

        def run(tile: ConvTile) -> float:
            return time_conv_tile(self.spec.tvm_target, kind, make_geom(tile), tile)

        return self._choose(kind, shape, cands, default, run, ConvTile)

    # -- sparse (block-sparse conv / depthwise / dense) ------------------------------------
    def sparse_tile(self, kind: str, shape: dict, structure: str, candidates: Sequence, default,
                    run: Callable[[Any], float]):
        """Tile of a sparse kernel: cached by layer shape + structure hash + target, else measured
        (``tune=True``) or ``default``. Returns ``(tile, tuned)``."""
        return self._choose(f"{kind}-sparse", {**shape, "structure": structure}, candidates, default, run,
                            type(default))

    def depthwise_pixel_tile(self, kh: int, m: int) -> int:
        """Untuned pixel tile of a depthwise kernel: 4 vectors for 5x5 and larger kernels (25 taps
        amortise the longer chunk), 1 for 3x3 (the faster of the two on efficientnet_b0's layers
        when both were timed)."""
        return 4 if kh >= 5 and 4 * self.lanes <= m else 1

    def conv_pixel_tiles(self, m: int) -> list[int]:
        """Pixel register tiles (multiples of the vector width) worth trying for ``m`` flat outputs."""
        v = self.lanes
        return [mt for mt in (1, 2, 4) if mt == 1 or mt * v <= m]

    # -- dense ----------------------------------------------------------------------------
    def dense_tile(self, n: int, c: int, f: int) -> tuple[DenseTile, bool]:
        v = self.lanes
        fts = [k * v for k in (1, 2, 4) if k == 1 or k * v <= max(v, f)]
        nts = [nt for nt in (1, 2, 4, 8) if n % nt == 0]
        cus = [4] if c % 4 == 0 else [1]
        cands = [DenseTile(ft, nt, cu) for ft in fts for nt in nts for cu in cus]
        default = DenseTile(v if f <= 4 * v else 2 * v, max(nts[-1] if n > 1 else 1, 1) if n <= 8 else 4, cus[0])
        if n % default.nt:
            default = DenseTile(default.ft, 1, default.cu)

        def run(tile: DenseTile) -> float:
            fn = -(-f // tile.ft)
            shapes = [((n, c), "float32"), ((fn, c, tile.ft), "float32"), ((n, fn * tile.ft), "float32")]
            return measure_kernel(dense_primfunc(n, c, f, tile), self.spec.tvm_target, shapes)

        return self._choose("dense", {"n": n, "c": c, "f": f}, cands, default, run, DenseTile)


def _ints(values) -> list[int]:
    return [int(v) for v in values]


def _shape(expr) -> list[int] | None:
    ty = getattr(expr, "ty", None)
    shape = getattr(ty, "shape", None)
    if shape is None:
        return None
    try:
        return _ints(shape)
    except (TypeError, ValueError):
        return None


#: a 1x1 conv reads its producer's rows (padding columns included) only when that computes at most
#: this many times the pixel vectors of the cropped map (efficientnet_b0 @224: at most 1.25, for 7x7
#: maps under a 5x5 depthwise; @32 the 4x4, 2x2 and 1x1 maps would compute 2-5x and copy instead)
ROWS_INPUT_MAX_WORK = 1.25

#: a 1x1 conv whose activations feed only a depthwise conv computes them over that conv's padded input
#: planes (a masked epilogue zeroes the padding) when that is at most this many times its own pixels,
#: instead of a separate copy of its output into the planes (see ``_planes_writer``). ReLU, hard-swish
#: or no activation: ``bench_function_breakdown.py --planes-limits`` on mobilenetv3_large_100
PLANES_OUTPUT_MAX_WORK = 1.5

#: a block-sparse 1x1 conv writing a sparse stride-2 depthwise conv's phase planes computes, in each
#: filter tile, only the pixel chunks of the phases that conv reads in those channels (its kept kernel
#: positions; counted in development, a 3x3 conv keeping 2 of 9 reads 0.44-0.47 of them in
#: efficientnet_b0 and mobilenetv3_large_100 at 5x): ``bench_function_breakdown.py --compare phases``
PLANES_OUTPUT_SKIPS_PHASES = True

#: the same limit for a SiLU epilogue, whose exp and division make every extra plane position cost
#: more (efficientnet_b0, ``--planes-limits 1.25 1.3 1.5``: 1.3 the fastest at 5x, 1.5 slower dense)
PLANES_OUTPUT_MAX_WORK_SILU = 1.3

#: a kernel computes its bias and activation only when more than this fraction of the pixels it
#: computes are valid: on 1x1 and 2x2 maps (efficientnet_b0 @32) a vector tile is mostly padding, and
#: the activation costs less as a separate pass over the valid pixels
EPILOGUE_MIN_VALID = 0.25

#: schemes lowered to block-sparse kernels (the others run dense: filter is cut physically beforehand,
#: unstructured computes its zeros)
SPARSE_KERNEL_SCHEMES = ("block_punched", "block_based", "pattern")

#: ``KernelRecord.sparse["lowering"]`` of the kernels that read only kept weights
SPARSE_LOWERINGS = ("block-sparse kernel", "pattern kernel")


def structure_digest(mask: np.ndarray, scheme: str) -> str:
    """Hash of a layer's kept structure (which weights are nonzero) and scheme: the sparse tile cache key."""
    import hashlib

    bits = np.packbits(np.asarray(mask, dtype=bool).reshape(-1))
    return hashlib.sha1(bits.tobytes() + str(mask.shape).encode() + scheme.encode()).hexdigest()[:16]


def _tight(packs: dict[int, SparsePacking], slack: float = 1.05) -> list[int]:
    """Filter tiles whose packing does at most ``slack`` x the least work (the tiles the structure fits)."""
    best = min(p.work_fraction for p in packs.values())
    return [ft for ft, p in packs.items() if p.work_fraction <= best * slack + 1e-12]


def _flops(g: ConvGeometry, kind: str) -> int:
    """FLOPs of a conv layer (``ConvGeometry.flops`` counts every filter against every channel)."""
    return g.flops // g.f if kind == "depthwise" else g.flops


def _sparse_info(scheme: str, k: int, *, density: float, kept: float,
                 reorder: bool = False) -> dict[str, Any]:
    return {"scheme": scheme, "lowering": "block-sparse kernel", "density": round(float(density), 4),
            "kept_fraction": round(float(kept), 4), "k": int(k), "reorder": bool(reorder),
            "speedup_bound": round(1.0 / max(float(density), 1e-9), 2)}


#: a 1x1 conv reading more channels than it writes splits its reduction between the cores the way
#: its channel-parallel producer wrote them (:mod:`.split_conv`): each core reads its own cache
#: (``bench_function_breakdown.py --compare split``; ``bench_cross_core.py``)
SPLIT_REDUCTION = True

#: a split conv without activation leaves its parts' sums for the graph to add (in the function that
#: reads the conv next) instead of adding them in a second pass of its own
SPLIT_PARTIALS = True


#: a block-sparse 1x1 conv writing a depthwise conv's planes computes only the pixel chunks that hold
#: image positions, storing 0 in the others (the padding rows of each stride phase); the planes
#: limits then compare what it computes (``bench_function_breakdown.py --compare padding-rows``)
PLANES_OUTPUT_SKIPS_PADDING = True

#: a kxk conv (a stem) may write the next depthwise conv's padded planes, as 1x1 expand convs do
#: (``bench_function_breakdown.py --compare kxk-planes``)
KXK_PLANES_OUTPUT = True

#: a sparse depthwise conv's channel blocks stop at their own count of kept kernel positions
#: (``depthwise_primfunc(counts=...)``) instead of all reading as many as the block keeping most
#: (``bench_function_breakdown.py --unbalanced --compare depthwise-counts``)
DEPTHWISE_COUNTS = True

#: an add reading a tensor that is also padded into a conv's planes reads it inside those planes, so
#: the tensor is stored once, padded (``bench_function_breakdown.py --compare residual-planes``)
RESIDUAL_READS_PLANES = True


def reduction_split(g: ConvGeometry, threads: int, chain: EpilogueChain | None = None, cblock: int = 0) -> int:
    """How many threads a conv's reduction is split between (``conv_primfunc(split=)``): all of
    them for a 1x1 stride-1 conv with more input channels than filters (a projection) that does not
    write a depthwise conv's planes and has no channel blocks, else 1.

    Example:
        >>> g = ConvGeometry.make(1, 96, 14, 14, 24, (1, 1), 1, (0, 0, 0, 0), pixels=32)
        >>> reduction_split(g, 2), reduction_split(g, 1), reduction_split(replace(g, f=96), 2)
        (2, 1, 1)
    """
    if (not SPLIT_REDUCTION or threads < 2 or cblock or (g.kh, g.kw, g.stride) != (1, 1, 1) or g.f >= g.c
            or (chain is not None and chain.feeds_depthwise)):
        return 1
    return int(threads)


def _leaves_partials(split: int, act: str | None) -> bool:
    """Whether a conv split ``split`` ways with activation ``act`` leaves its parts' sums for the
    graph to add (``conv_primfunc(partials=True)``): only without an activation."""
    return SPLIT_PARTIALS and split > 1 and act in (None, "none")


def _computed_chunks(chunks: int, pixels: int, live: np.ndarray | None,
                     phases: tuple[int, np.ndarray] | None) -> float:
    """Pixel chunks a planes writer computes per filter tile, on average: all ``chunks``, those
    ``live`` flags (holding image positions), and of those the ones overlapping a phase the filter
    tile's mask in ``phases = (plane, masks)`` flags (``conv_primfunc(phases=...)``).

    Example:
        >>> _computed_chunks(4, 8, np.array([True, True, True, False]), (16, np.array([1, 2])))
        1.5
    """
    on = np.ones(chunks, dtype=bool) if live is None else np.asarray(live, dtype=bool)
    if phases is None:
        return float(on.sum())
    return float((phase_chunks(phases, chunks, pixels) & on).sum(axis=1).mean())


def _planes_writer_geometry(g: ConvGeometry, gd: ConvGeometry, pixels: int) -> ConvGeometry | None:
    """The geometry in which conv ``g`` computes the stride-1 padded planes of the conv ``gd`` that
    reads its output: ``g`` over its input padded further (``gd``'s padding times the stride on top
    and left), so that its output rows are ``gd.wq`` wide and output ``(R, C)`` is plane position
    ``(R, C)``, covering every element ``gd`` reads. None when no padding gives that: the last
    ``(g.kw - 1) // g.stride`` columns of each output row are not the conv's (the flat rows run on
    into the next row), and only ``gd``'s right padding may hold them (a 3x3 stride-2 stem before a
    3x3 depthwise conv: yes; stride 1, or 5x5 stride 2: no).

    Example:
        >>> g = ConvGeometry.make(1, 3, 224, 224, 32, (3, 3), 2, (1, 1, 1, 1), pixels=32)
        >>> gd = ConvGeometry.make(1, 32, 112, 112, 32, (3, 3), 1, (1, 1, 1, 1), pixels=32)
        >>> ge = _planes_writer_geometry(g, gd, 32)
        >>> (ge.pad, ge.wq == gd.wq, ge.mp >= int(gd.offsets().max()) + gd.mp)
        ((3, 3, 4, 1), True, True)
    """
    if gd.stride != 1 or (gd.h, gd.w) != (g.oh, g.ow):
        return None
    s, wq = g.stride, gd.wq
    pt, pl = g.pad[0] + s * gd.pad[0], g.pad[1] + s * gd.pad[1]
    rows = -(-(int(gd.offsets().max()) + gd.mp) // wq)  # output rows covering what gd reads
    pr, pb = s * wq - g.w - pl, (rows - 1) * s + g.kh - g.h - pt
    if pr < 0 or pb < 0:
        return None
    ge = ConvGeometry.make(g.n, g.c, g.h, g.w, g.f, (g.kh, g.kw), s, (pt, pl, pb, pr), pixels=pixels)
    if ge.wq != wq or ge.oh < gd.pad[0] + gd.h or ge.ow < gd.pad[1] + gd.w:
        return None
    return ge


def _fit_rows(tile: ConvTile, geom: Callable[[ConvTile], ConvGeometry], rows: _Rows | None) -> ConvTile:
    """``tile``, or one vector of pixels when its pixel tile would read past the producer's rows."""
    if rows is not None and geom(tile).mp > rows.mp:
        return ConvTile(tile.ft, 1, tile.vw)
    return tile


def _bias_args(chain: EpilogueChain | None, slots: int, order: np.ndarray | None = None) -> list:
    """The kernel's bias argument (in its filter slots) when it computes ``chain``, else none."""
    from tvm import relax

    return [] if chain is None else [relax.const(kernel_bias(chain.bias, slots, order))]


def rewrite_kernels(mod, planner: TilePlanner, layer_names: dict[str, list[str]] | None = None,
                    sparse_layers: dict[str, str] | None = None):
    """Rewrite ``mod['main']``; returns ``(new_mod, records)``.

    ``sparse_layers`` maps module names to their pruning scheme: layers with a scheme in
    :data:`SPARSE_KERNEL_SCHEMES` are lowered to block-sparse kernels whose index buffers come from
    the (BN-folded) constant weight's zeros.
    """
    from tvm import relax
    from tvm.ir.expr import Constant as _Constant
    from tvm.relax.expr_functor import PyExprMutator, mutator

    names = layer_names or {}
    sparse = {k: v for k, v in (sparse_layers or {}).items() if v in SPARSE_KERNEL_SCHEMES}
    op_conv = _op("relax.nn.conv2d")
    op_matmul = _op("relax.matmul")
    op_multiply = _op("relax.multiply")
    op_mean = _op("relax.mean")
    op_add = _op("relax.add")
    records: list[KernelRecord] = []
    counters = {"conv2d": 0, "linear": 0}

    def module_for(kind: str) -> str:
        i = counters[kind]
        counters[kind] += 1
        lst = names.get(kind, [])
        return lst[i] if i < len(lst) else f"{kind}#{i}"

    @mutator
    class _Rewriter(PyExprMutator):
        def __init__(self, m):
            super().__init__(m)
            self.mod_ = m
            self.kernels_: dict[int, list] = {}  # structural hash -> [(func, gv)]
            # conv call -> its bias/activation chain; chain calls taken into a kernel -> the kernel's output
            self.chains_: dict[Any, EpilogueChain] = {}
            self.fused_: dict[Any, Any] = {}
            self.rows_: dict[Any, _Rows] = {}  # cropped kernel output var -> the raw rows it came from
            # cropped 1x1 conv output var -> re-emits that conv over the padded planes of the depthwise
            # conv reading it (see _planes_writer)
            self.planes_: dict[Any, Callable[[ConvGeometry], tuple[Any, ConvGeometry] | None]] = {}
            # var -> emits the same values cropped from a padded copy that exists anyway (the planes of
            # a conv reading it): adds (residuals) read that instead, so the var itself is never stored
            self.crops_: dict[Any, Callable[[], Any]] = {}

        def transform(self):
            for _, func in self.mod_.functions_items():
                if isinstance(func, relax.Function):
                    self.chains_.update(find_epilogues(func))
            return rewrite_relax_functions(self)

        def _add_kernel(self, func, symbol):
            """Add a kernel, or reuse a structurally equal one (layers of the same shape, tile and
            sparse structure share one function: less LLVM code generation)."""
            import tvm_ffi

            key = tvm_ffi.structural_hash(func)
            for other, gv in self.kernels_.get(key, []):
                if tvm_ffi.structural_equal(other, func):
                    return gv
            tagged = func.with_attr("global_symbol", symbol).with_attr("op_pattern", 8).with_attr("npas.kernel", 1)
            gv = self.builder_.add_func(tagged, symbol)
            self.kernels_.setdefault(key, []).append((func, gv))
            return gv

        def _const(self, expr):
            """``expr`` itself or, for a variable bound to a constant, that constant."""
            if isinstance(expr, _Constant):
                return expr
            if isinstance(expr, relax.Var):
                bound = self.lookup_binding(expr)
                if isinstance(bound, _Constant):
                    return bound
            return expr

        def visit_call_(self, call):
            fused = self.fused_.get(call)
            if fused is not None:  # a bias add / activation the kernel now computes
                return fused
            chain = self.chains_.get(call)
            call = self.visit_expr_post_order(call)
            if call.op == op_conv:
                module = module_for("conv2d")
                new = self._conv(call, module, chain)
                if new is None:
                    return call
                expr, took_chain = new
                if not took_chain:
                    return expr
                out = self.builder_.emit(expr)
                self.fused_.update({member: out for member in chain.members})
                return out
            if call.op == op_add:
                return self._add_reading_crops(call)
            if call.op == op_mean:
                rows = self.rows_.get(self._resolve(call.args[0]))
                axes = sorted(int(a) % 4 for a in (call.attrs.axis or []))
                if rows is not None and axes == [2, 3]:  # pool the kernel's rows, not their cropped copy
                    valid = np.zeros(rows.mp, "float32")
                    valid[: rows.oh * rows.wq] = (np.arange(rows.oh * rows.wq) % rows.wq < rows.ow) / (rows.oh * rows.ow)
                    keepdims = bool(call.attrs.keepdims)
                    n, c = _shape(rows.y)[:2]
                    lanes = math.gcd(rows.mp, planner.lanes)  # rows end on whole pixel tiles of vectors
                    gv = self._add_kernel(rows_mean_primfunc(n, c, rows.mp, lanes, keepdims),
                                          f"rows_mean_{n}x{c}x{rows.mp}{'' if keepdims else '_flat'}")
                    return relax.call_tir(gv, [rows.y, relax.const(valid)],
                                          relax.TensorType((n, c, 1, 1) if keepdims else (n, c), "float32"))
                return call
            if call.op == op_matmul:
                w = self._const(call.args[1])
                xs = _shape(call.args[0])
                if isinstance(w, _Constant) and xs is not None and len(xs) == 2 and len(_shape(w) or []) == 2:
                    module = module_for("linear")
                    return self._dense(call.args[0], w.value.numpy().T, module, sparse.get(module))
            return call

        # -- conv ---------------------------------------------------------------------------
        def _conv(self, call, module, chain: EpilogueChain | None = None):
            """``(expr, took_chain)``, or None when the conv is left to TVM. ``took_chain``: the kernel
            computes ``chain``'s bias and activation (1x1 convs on a 1x1 input run as a dense kernel
            and leave them to the graph)."""
            x, w = call.args[0], self._const(call.args[1])
            a = call.attrs
            xs, ws = _shape(x), _shape(w)
            if (not isinstance(w, _Constant) or xs is None or ws is None or a.data_layout != "NCHW"
                    or a.kernel_layout != "OIHW" or any(int(d) != 1 for d in a.dilation)
                    or len(set(_ints(a.strides))) != 1 or str(w.value.dtype) != "float32"):
                return None
            n, c, h, wd = xs
            f, cg, kh, kw = ws
            groups = int(a.groups)
            stride = int(a.strides[0])
            pad = tuple(_ints(a.padding))
            if len(pad) == 2:
                pad = (pad[0], pad[1], pad[0], pad[1])
            weight = w.value.numpy()
            scheme = sparse.get(module)
            if groups == 1 and kh == kw == 1 and stride == 1 and pad == (0, 0, 0, 0) and h * wd == 1:
                y = self._dense(self.builder_.emit(relax.op.reshape(x, (n, c))), weight.reshape(f, c), module, scheme)
                return relax.op.reshape(y, (n, f, 1, 1)), False
            if groups == 1:
                kind = "conv"
            elif groups == c == f and cg == 1:
                kind = "depthwise"
            else:
                return None
            shape = {"n": n, "c": c, "h": h, "w": wd, "f": f, "kh": kh, "kw": kw, "s": stride, "p": list(pad)}

            def geom(t: ConvTile) -> ConvGeometry:
                return ConvGeometry.make(n, c, h, wd, f, (kh, kw), stride, pad, pixels=t.pixels)

            rows, gate = None, None
            if kind == "conv" and kh == kw == 1 and stride == 1 and pad == (0, 0, 0, 0):
                rows, gate = self._rows_input(x, n, c, h, wd)
            if rows is not None:  # read the producer's rows (garbage columns included), crop afterwards
                shape.update(h=rows.oh, w=rows.wq, row=rows.mp, gate=gate is not None)

                def geom(t: ConvTile) -> ConvGeometry:  # noqa: F811 - the 1x1 conv over the producer's rows
                    g = ConvGeometry.make(n, c, rows.oh, rows.wq, f, (1, 1), 1, (0, 0, 0, 0), pixels=t.pixels)
                    return g.reading_rows(max(rows.mp, g.mp))  # tuning may try tiles past the rows
            gate_args = [] if gate is None else [self.builder_.emit(relax.op.reshape(gate, (n, c)))]
            g0 = geom(ConvTile(8, 1, planner.lanes))
            valid = rows.oh * rows.ow if rows is not None else g0.oh * g0.ow
            if valid <= EPILOGUE_MIN_VALID * g0.mp:  # a tiny map: the activation runs on the valid pixels only
                chain = None
            act = chain.act if chain is not None else None
            if scheme is not None:
                if kind == "depthwise":
                    return self._sparse_depthwise(x, weight, shape, geom, module, scheme, chain), act is not None
                return self._sparse_conv(x, weight, shape, geom, module, scheme, chain, rows, gate_args), \
                    act is not None
            tile, tuned = planner.conv_tile(kind, shape, geom)
            tile = _fit_rows(tile, geom, rows)
            g = geom(tile)
            idx = len(records)
            symbol = f"npas_{kind}_{idx}"
            split = reduction_split(g, planner.threads, chain) if kind == "conv" else 1
            partials = _leaves_partials(split, act)
            if kind == "conv":
                func = conv_primfunc(g, tile, epilogue=act, gate=bool(gate_args), split=split, partials=partials)
                packed, fp = pack_conv_weight(weight, tile.ft), -(-f // tile.ft) * tile.ft
                xf = rows.y if rows is not None else self._to_planes(x, g)
            else:
                xf, g = self._planes_input(x, g, shape)
                func, packed, fp = depthwise_primfunc(g, tile, epilogue=act), pack_depthwise_weight(weight), c
            gv = self._add_kernel(func, symbol)
            y = self._call_kernel(gv, [xf, relax.const(packed), *gate_args, *_bias_args(chain, fp)], g, fp,
                                  split if partials else 1)
            keep_func = act is not None or rows is not None or g.row > 0 or split > 1
            records.append(KernelRecord(idx, kind, module, gv.name_hint, shape, tile.to_dict(), tuned, weight, _flops(g, kind),
                                        packed, func=func if keep_func else None, epilogue=act,
                                        bias=chain.bias if act else None, split=split, partials=partials))
            out = self._crop(y, g, fp, width=rows.ow if rows is not None else None)
            if kind == "conv" and not gate_args:
                self._planes_writer(out, x, g, tile, chain, idx, [relax.const(packed)],
                                    lambda ge, _: conv_primfunc(ge, tile, epilogue=act, masked=True), kxk=True)
            return out, act is not None

        def _rows_input(self, x, n: int, c: int, h: int, w: int) -> tuple[_Rows | None, Any]:
            """``(rows, gate)`` when the 1x1 conv input ``x`` is a kernel's cropped output, or that
            output times a per-channel ``[N, C, 1, 1]`` gate (squeeze-excite); else ``(None, None)``."""
            rows = self.rows_.get(self._resolve(x))
            gate = None
            if rows is None:
                bound = self.lookup_binding(self._resolve(x))
                if isinstance(bound, relax.Call) and bound.op == op_multiply and len(bound.args) == 2:
                    for a, b in (bound.args, bound.args[::-1]):
                        if self._resolve(a) in self.rows_ and _shape(b) == [n, c, 1, 1]:
                            rows, gate = self.rows_[self._resolve(a)], b
                            break
            if rows is None or (rows.oh, rows.ow, rows.channels) != (h, w, c):
                return None, None
            v = planner.lanes
            if -(-rows.oh * rows.wq // v) > ROWS_INPUT_MAX_WORK * -(-h * w // v):
                return None, None  # small maps under wide kernels: more padding columns than a copy costs
            return rows, gate

        def _resolve(self, v):
            """``v`` with variable-to-variable bindings followed."""
            while isinstance(v, relax.Var):
                bound = self.lookup_binding(v)
                if not isinstance(bound, relax.Var):
                    break
                v = bound
            return v

        def _add_reading_crops(self, call):
            """``call`` (an add) with each operand that has a padded copy (:attr:`crops_`) read from
            inside that copy: the operand is then stored only inside its padding (fused with it)."""
            args = [self.crops_[self._resolve(a)]() if isinstance(a, relax.Var) and self._resolve(a) in self.crops_
                    else a for a in call.args]
            if all(a.same_as(b) for a, b in zip(args, call.args, strict=True)):
                return call
            return relax.op.add(*args)

        def _planes_writer(self, out, x, g: ConvGeometry, tile: ConvTile, chain: EpilogueChain | None, idx: int,
                           consts: list, build: Callable[..., Any], kxk: bool = False,
                           live: bool = False) -> None:
            """Offer the conv just lowered (record ``idx``, output ``out``, input ``x``) to the
            depthwise conv that reads its activations: that conv's :meth:`_planes_input` can re-emit
            it over the padded input planes instead of copying ``out`` into them.

            A 1x1 conv then reads the planes of its own (smaller) input and computes every plane
            position; a kxk conv (``kxk=True``: ``consts`` do not depend on the geometry, so dense
            kernels only) computes over its input padded further, so that its output rows are the
            planes' rows. Their masked epilogue (``build(geometry, live)``, ``Mk`` from :func:`plane_mask`)
            stores ``act(conv + bias)`` on the image and 0 on the padding; a kernel that can
            (``live=True``: ``conv_primfunc(live=...)``) computes only the pixel chunks that hold
            image positions and stores 0 in the others (the padding rows of each stride phase). Adds reading ``out`` too
            (``chain.residual``) read the image inside the planes. The original call is left for
            dead-code elimination and the record is replaced."""
            if chain is None or not chain.feeds_depthwise:
                return
            one = g.kh == g.kw == g.stride == 1 and not any(g.pad)
            if not (one or (kxk and KXK_PLANES_OUTPUT)):
                return
            n, c, f = g.n, g.c, g.f
            # reordered filters, or filter slots padded to the tile, would need a copy of the output
            if records[idx].order is not None or -(-f // tile.ft) * tile.ft != f:
                return
            own = -(-(g.oh * g.ow) // tile.pixels) * tile.pixels
            limit = PLANES_OUTPUT_MAX_WORK_SILU if chain.act == "silu" else PLANES_OUTPUT_MAX_WORK

            def emit(gd: ConvGeometry, phases: np.ndarray | None = None) -> tuple[Any, ConvGeometry] | None:
                if chain.residual and (gd.stride != 1 or not RESIDUAL_READS_PLANES):
                    return None  # the adds could not read the image inside stride-phase planes
                if one:
                    extra = -(-(tile.pixels - 1) // gd.wq)  # rows under each phase plane: the last tile may read on
                    g_in = replace(gd, c=c, hq=gd.hq + extra, row=0)
                    need = g_in.x_len - extra * gd.wq  # the depthwise conv reads no further
                    ge = ConvGeometry.make(n, c, 1, need, f, (1, 1), 1, (0, 0, 0, 0),
                                           pixels=tile.pixels).reading_rows(g_in.x_len)
                    hq, mask = g_in.hq, plane_mask(g_in, ge.mp)
                else:
                    ge = _planes_writer_geometry(g, gd, tile.pixels)
                    if ge is None:
                        return None
                    g_in, hq, mask = ge, gd.hq, plane_mask(gd, ge.mp)
                chunks = live_chunks(mask, tile.pixels) if live and PLANES_OUTPUT_SKIPS_PADDING else None
                tile_phases = None
                if one and live and phases is not None and gd.stride > 1 and PLANES_OUTPUT_SKIPS_PHASES:
                    per_tile = np.zeros(-(-f // tile.ft), dtype="int64")
                    np.bitwise_or.at(per_tile, np.arange(f) // tile.ft, np.asarray(phases[:f], dtype="int64"))
                    tile_phases = (g_in.plane, per_tile)
                computed = _computed_chunks(ge.mp // tile.pixels, tile.pixels, chunks, tile_phases)
                work = computed * tile.pixels
                if work > limit * own:
                    return None
                rec = records[idx]
                func = build(ge, chunks, tile_phases) if tile_phases is not None else build(ge, chunks)
                gv = self._add_kernel(func, f"{rec.symbol.rsplit('_', 1)[0]}_{idx}_planes")  # the symbol may be shared
                y = self.builder_.emit(relax.call_tir(
                    gv, [self._to_planes(x, g_in), *consts, *_bias_args(chain, f), relax.const(mask)],
                    relax.TensorType((n, f, ge.mp), "float32")))
                shape = {**rec.shape, "gate": False, "planes": [gd.h, gd.w]}
                shape.update({"h": 1, "w": need, "row": g_in.x_len} if one else {"p": list(ge.pad)})
                if chunks is not None or tile_phases is not None:
                    shape["live"] = round(computed, 3)  # pixel chunks computed (mean over filter tiles)
                if tile_phases is not None:  # what check_kernel compares
                    shape["phases"] = [int(tile_phases[0]), [int(b) for b in tile_phases[1]]]
                records[idx] = replace(rec, symbol=gv.name_hint, shape=shape, func=func, mask=mask)
                if chain.residual:
                    self.crops_[self._resolve(out)] = lambda: self._image_in_planes(y, gd)
                return y, gd.reading_planes(hq, ge.mp)

            self.planes_[out] = emit

        def _image_in_planes(self, y, gd: ConvGeometry):
            """``[N, F, H, W]`` read from flat stride-1 planes ``y`` ``[N, F, L]`` of geometry ``gd``."""
            off = gd.pad[0] * gd.wq + gd.pad[1]
            y = self.builder_.emit(relax.op.strided_slice(y, [2], [off], [off + gd.h * gd.wq]))
            y = self.builder_.emit(relax.op.reshape(y, (gd.n, _shape(y)[1], gd.h, gd.wq)))
            return self.builder_.emit(relax.op.strided_slice(y, [3], [0], [gd.w]))

        def _planes_input(self, x, g: ConvGeometry, shape: dict,
                          phases: np.ndarray | None = None) -> tuple[Any, ConvGeometry]:
            """``(planes, geometry)`` a kxk conv reads: its producer's output written in this layout
            (:meth:`_planes_writer`; ``shape`` records it), else ``x`` copied into padded planes.
            ``phases`` (per channel, :func:`~npas_lightning.compiler.conv_kernel.phase_bits`): the
            stride phases a sparse depthwise conv reads, so the writer may skip the others."""
            writer = self.planes_.pop(self._resolve(x), None)
            written = writer(g, phases) if writer is not None else None
            if written is None:
                return self._to_planes(x, g), g
            shape.update(planes_hq=written[1].hq, row=written[1].row)
            return written


        def _to_planes(self, x, g: ConvGeometry):
            """pad -> (stride phases) -> flat rows. The last flattening is a zero-copy VM reshape
            outside fusion, so the fused pad/phase function writes a structured [N,C,s,s,Hq,Wq] or
            [N,C,Hq,Wq] tensor (affine indices, vectorisable) instead of a flat row with div/mod."""
            s = g.stride
            pt, pl, _, _ = g.pad
            pb, pr = s * g.hq - g.h - pt, s * g.wq - g.w - pl
            if pt or pl or pb or pr:
                padded = self.builder_.emit(relax.op.nn.pad(x, [0, 0, 0, 0, pt, pb, pl, pr]))
                # a residual add may read x inside its padding: the planes of a kxk conv or of a 1x1 conv
                # writing them (padded on top / left; the latest: a 1x1 conv's own rows, padded at the
                # bottom only, are left to dead-code elimination when it writes planes)
                if RESIDUAL_READS_PLANES and s == 1 and (pt or pl) and isinstance(x, relax.Var):
                    h, w = g.h, g.w
                    self.crops_[self._resolve(x)] = lambda: self.builder_.emit(
                        relax.op.strided_slice(padded, [2, 3], [pt, pl], [pt + h, pl + w]))
                x = padded
            if s > 1:
                x = self.builder_.emit(relax.op.reshape(x, (g.n, g.c, g.hq, s, g.wq, s)))
                x = self.builder_.emit(relax.op.permute_dims(x, [0, 1, 3, 5, 2, 4]))
            flat = (g.n, g.c, g.x_len)
            return self.builder_.emit(relax.call_pure_packed(
                "vm.builtin.reshape", x, relax.ShapeExpr(list(flat)), ty_args=relax.TensorType(flat, "float32")))

        def _call_kernel(self, gv, args: list, g: ConvGeometry, fp: int, split: int = 1):
            """Emit ``call_tir(gv, args)`` writing ``[N, fp, Mp]``. ``split`` > 1: a split kernel
            writing every part's sums (``conv_primfunc(partials=True)``), added up here as Relax ops,
            so the sum fuses into the function that reads the conv next instead of costing the
            kernel a second pass."""
            if split <= 1:
                return self.builder_.emit(relax.call_tir(gv, args, relax.TensorType((g.n, fp, g.mp), "float32")))
            parts = split_parts(g.c, split)
            sums = self.builder_.emit(relax.call_tir(gv, args, relax.TensorType((parts, g.n, fp, g.mp), "float32")))
            y = None
            for q in range(parts):
                part = self.builder_.emit(relax.op.strided_slice(sums, [0], [q], [q + 1]))
                part = self.builder_.emit(relax.op.reshape(part, (g.n, fp, g.mp)))
                y = part if y is None else self.builder_.emit(relax.op.add(y, part))
            return y

        def _crop(self, y, g: ConvGeometry, fp: int, order: np.ndarray | None = None, width: int | None = None):
            """``[N, F, OH, OW]`` from a kernel's output rows ``y`` (``width``: valid columns when they
            are fewer than ``g.ow``). Remembers ``y`` so that a following 1x1 conv can read it instead."""
            raw, ow, slots = y, width or g.ow, fp
            if order is not None:  # filter slots back to the model's filter order (fused into the crop)
                inverse = np.argsort(order).astype("int32")
                y = self.builder_.emit(relax.op.take(y, relax.const(inverse), axis=1))
                slots = g.f
            if slots != g.f or g.mp != g.m:
                y = self.builder_.emit(relax.op.strided_slice(y, [1, 2], [0, 0], [g.f, g.m]))
            y = self.builder_.emit(relax.op.reshape(y, (g.n, g.f, g.oh, g.wq)))
            if g.wq != ow:
                y = self.builder_.emit(relax.op.strided_slice(y, [3], [0], [ow]))
            if order is None and fp == g.f:
                self.rows_[y] = _Rows(raw, g.oh, ow, g.wq, g.mp, g.f)
            return y

        # -- sparse conv / depthwise ------------------------------------------------------------
        def _sparse_conv(self, x, weight, shape, geom, module, scheme, chain: EpilogueChain | None = None,
                         rows: _Rows | None = None, gate_args: Sequence = ()):
            """Block-sparse conv: per filter tile, only the kept reduction entries (compact weights +
            channel/shift index buffers); pattern layers reorder filters so similar kernels share tiles,
            and also time the per-pattern kernel (:mod:`.pattern_kernel`), keeping the faster.
            ``rows``/``gate_args``: a 1x1 conv reading a producer's rows, gated (see ``_conv``)."""
            f = weight.shape[0]
            w2d = weight.reshape(f, -1)
            reorder = scheme == "pattern"
            fts = [ft for ft in ((1, 2, 4, 8) if reorder else (4, 8, 16)) if ft == 1 or ft <= max(4, f)]
            packs = {ft: pack_sparse_rows(w2d, ft, reorder=reorder) for ft in fts}
            if not reorder:
                fts = _tight(packs)
            v = planner.lanes
            m = geom(ConvTile(8, 1, v)).m
            cands = [ConvTile(ft, mt, v) for ft in fts for mt in planner.conv_pixel_tiles(m)]
            default_ft = 4 if reorder else max([ft for ft in fts if ft <= 8] or [min(fts)])
            default = ConvTile(default_ft, 2 if m >= 8 * v else 1, v)

            def build(tile: ConvTile, cblock: int = 0, epilogue: str | None = None, gate: bool = False,
                      g: ConvGeometry | None = None, masked: bool = False, split: int = 1,
                      partials: bool = False, live: tuple[int, int] | None = None,
                      phases: tuple[int, np.ndarray] | None = None):  # timed plain
                g, pk = g or geom(tile), packs[tile.ft]
                func, buffers = conv_primfunc(g, tile, pk.kept, counts=pk.counts, epilogue=epilogue, gate=gate,
                                              masked=masked, cblock=cblock or None, split=split, partials=partials,
                                              live=live, phases=phases)
                return g, pk, func, list(buffers)

            def run(choice: KernelChoice) -> float:
                g, pk, func, buffers = build(choice.tile, choice.cblock)
                shapes = [((g.n, g.c, g.x_len), "float32"), (pk.packed.shape, "float32"),
                          *[(b.shape, "int32") for b in buffers],
                          ((g.n, pk.packed.shape[0] * choice.ft, g.mp), "float32")]
                return measure_kernel(func, planner.spec.tvm_target, shapes,
                                      fixed_args={1: pk.packed, **{2 + i: b for i, b in enumerate(buffers)}})

            digest = structure_digest(w2d != 0, scheme)
            if reorder:  # the block-sparse tiles compete with the per-pattern kernel's
                per_pattern = pattern_kernel_choices(geom, weight.shape[1], v)
                choice, tuned = planner.sparse_tile(
                    "pattern-conv", shape, digest, [KernelChoice.of("block", t) for t in cands] + per_pattern,
                    _pattern_default(per_pattern, KernelChoice.of("block", default), float((w2d != 0).mean()),
                                     shape["s"], v),
                    lambda c: run(c) if c.kernel == "block" else self._time_pattern(weight, geom, c))
                if choice.kernel == "pattern":
                    return self._pattern_conv(x, weight, shape, geom, module, choice, tuned, chain)
            else:  # with channel blocks where they leave enough parallel pixel chunks (not under a gate)
                blocked = [] if gate_args else block_conv_choices(cands, geom, weight.shape[1])
                choice, tuned = planner.sparse_tile(
                    "block-conv", shape, digest, [KernelChoice.of("block", t) for t in cands] + blocked,
                    _block_conv_default(default, blocked, geom), run)
            tile, cblock = _fit_rows(choice.tile, geom, rows), choice.cblock
            act = chain.act if chain is not None else None
            split = reduction_split(geom(tile), planner.threads, chain, cblock)
            partials = _leaves_partials(split, act)
            g, pk, func, buffers = build(tile, cblock, epilogue=act, gate=bool(gate_args), split=split,
                                         partials=partials)
            idx = len(records)
            symbol = f"npas_sparse_conv_{idx}"
            gv = self._add_kernel(func, symbol)
            fp = pk.packed.shape[0] * tile.ft
            xf = rows.y if rows is not None else self._to_planes(x, g)
            y = self._call_kernel(gv, [xf, relax.const(pk.packed), *[relax.const(b) for b in buffers], *gate_args,
                                       *_bias_args(chain, fp, pk.order)], g, fp, split if partials else 1)
            info = _sparse_info(scheme, pk.kept.shape[1], density=pk.work_fraction, kept=pk.kept_fraction,
                                reorder=pk.order is not None)
            info["cblock"] = cblock
            records.append(KernelRecord(idx, "conv", module, gv.name_hint, shape, tile.to_dict(), tuned, weight,
                                        int(round(g.flops * pk.work_fraction)), pk.packed, info, buffers,
                                        pk.order, func, act, chain.bias if act else None, split=split,
                                        partials=partials))
            out = self._crop(y, g, fp, pk.order, width=rows.ow if rows is not None else None)
            if not gate_args:  # (a 1x1 kernel's shifts are all 0, in any geometry)
                consts = [relax.const(pk.packed), *[relax.const(b) for b in buffers]]
                self._planes_writer(out, x, g, tile, chain, idx, consts,
                                    lambda ge, live, phases=None: build(tile, cblock, epilogue=act, g=ge, masked=True,
                                                                        live=live, phases=phases)[2],
                                    live=not cblock)
            return out

        def _time_pattern(self, weight, geom, choice: KernelChoice) -> float:
            """Seconds of the per-pattern kernel as ``choice`` says (random input, the layer's packing)."""
            tile, cblock = choice.tile, choice.cblock or None
            g, pk = geom(tile), pack_pattern(weight, tile.ft, cblock=cblock)
            func = pattern_primfunc(g, tile, pk.patterns, pk.k, cblock=cblock)
            shapes = [((g.n, g.c, g.x_len), "float32"), (pk.weights.shape, "float32"),
                      (pk.channels.shape, "int32"), (pk.starts.shape, "int32"),
                      ((g.n, pk.weights.shape[0] * tile.ft, g.mp), "float32")]
            return measure_kernel(func, planner.spec.tvm_target, shapes,
                                  fixed_args={1: pk.weights, 2: pk.channels, 3: pk.starts})

        def _pattern_conv(self, x, weight, shape, geom, module, choice: KernelChoice, tuned: bool,
                          chain: EpilogueChain | None):
            """A pattern-pruned conv on the per-pattern kernel: one loop per pattern of each filter
            tile, the pattern's shifts compile-time constants (:mod:`.pattern_kernel`)."""
            tile, cblock = choice.tile, choice.cblock or None
            g, pk = geom(tile), pack_pattern(weight, tile.ft, cblock=cblock)
            act = chain.act if chain is not None else None
            func = pattern_primfunc(g, tile, pk.patterns, pk.k, epilogue=act, cblock=cblock)
            idx = len(records)
            gv = self._add_kernel(func, f"npas_pattern_conv_{idx}")
            fp = pk.weights.shape[0] * tile.ft
            y = self.builder_.emit(relax.call_tir(
                gv, [self._to_planes(x, g), relax.const(pk.weights), relax.const(pk.channels),
                     relax.const(pk.starts), *_bias_args(chain, fp, pk.order)],
                relax.TensorType((g.n, fp, g.mp), "float32")))
            info = _sparse_info("pattern", pk.k, density=pk.work_fraction, kept=pk.kept_fraction,
                                reorder=pk.order is not None)
            info.update(lowering="pattern kernel", patterns=[list(p) for p in pk.patterns], cblock=pk.cblock)
            records.append(KernelRecord(idx, "conv", module, gv.name_hint, shape, tile.to_dict(), tuned, weight,
                                        int(round(g.flops * pk.work_fraction)), pk.weights, info,
                                        [pk.channels, pk.starts], pk.order, func, act, chain.bias if act else None))
            return self._crop(y, g, fp, pk.order)

        def _sparse_depthwise(self, x, weight, shape, geom, module, scheme, chain: EpilogueChain | None = None):
            """Depthwise conv that reads only the kept kernel positions of each channel block."""
            c = weight.shape[0]
            w2 = pack_depthwise_weight(weight)
            # the widest channel block whose union of kept positions adds (almost) no work (by the largest
            # count, which every block is padded to; choosing by the blocks' mean count instead, with
            # DEPTHWISE_COUNTS, was no faster: dev measurement, BENCHMARKS.md); each block then stops at
            # its own count
            dens = {}
            for b in (1, 2, 4, 8, 16, 32):
                if b <= c:
                    packed, kept = pack_sparse_depthwise(w2, b)
                    dens[b] = (kept.shape[1] / w2.shape[1], packed, kept)
            best = min(d[0] for d in dens.values())
            block = max(b for b, d in dens.items() if d[0] <= best * 1.05 + 1e-12)
            density, packed, kept = dens[block]
            counts = depthwise_block_counts(w2, block) if DEPTHWISE_COUNTS else None
            v = planner.lanes
            m = geom(ConvTile(1, 1, v)).m
            cands = [ConvTile(1, mt, v) for mt in planner.conv_pixel_tiles(m)]
            default = ConvTile(1, planner.depthwise_pixel_tile(shape["kh"], m), v)

            def build(g: ConvGeometry, tile: ConvTile, epilogue: str | None = None):  # timed without the epilogue
                return depthwise_primfunc(g, tile, kept, block, epilogue=epilogue, counts=counts)

            def run(tile: ConvTile) -> float:
                g = geom(tile)
                func, shift = build(g, tile)
                shapes = [((g.n, g.c, g.x_len), "float32"), (packed.shape, "float32"),
                          (shift.shape, "int32"), ((g.n, g.c, g.mp), "float32")]
                return measure_kernel(func, planner.spec.tvm_target, shapes, fixed_args={1: packed, 2: shift})

            tile, tuned = planner.sparse_tile("depthwise", shape, structure_digest(w2 != 0, scheme), cands,
                                              default, run)
            act = chain.act if chain is not None else None
            phases = phase_bits(kept, block, c, (shape["kh"], shape["kw"]), shape["s"]) if shape["s"] > 1 else None
            xf, g = self._planes_input(x, geom(tile), shape, phases)
            func, shift = build(g, tile, epilogue=act)
            idx = len(records)
            symbol = f"npas_sparse_depthwise_{idx}"
            gv = self._add_kernel(func, symbol)
            y = self.builder_.emit(relax.call_tir(gv, [xf, relax.const(packed), relax.const(shift),
                                                       *_bias_args(chain, c)],
                                                  relax.TensorType((g.n, c, g.mp), "float32")))
            info = _sparse_info(scheme, kept.shape[1], density=density,
                                kept=float((w2 != 0).mean()))
            info["block"] = block
            if counts is not None and counts.min() < kept.shape[1]:
                info["counts"] = counts.tolist()
            records.append(KernelRecord(idx, "depthwise", module, gv.name_hint, shape, tile.to_dict(), tuned, weight,
                                        int(round(_flops(g, "depthwise") * density)), packed, info, [shift], None, func,
                                        act, chain.bias if act else None))
            return self._crop(y, g, c)

        # -- dense --------------------------------------------------------------------------
        def _dense(self, x, weight_fc: np.ndarray, module, scheme: str | None = None):
            if scheme is not None:
                return self._sparse_dense(x, weight_fc, module, scheme)
            n, c = _shape(x)
            f = int(weight_fc.shape[0])
            tile, tuned = planner.dense_tile(n, c, f)
            idx = len(records)
            symbol = f"npas_dense_{idx}"
            gv = self._add_kernel(dense_primfunc(n, c, f, tile), symbol)
            fp = -(-f // tile.ft) * tile.ft
            packed = pack_dense_weight(np.ascontiguousarray(weight_fc, dtype="float32"), tile.ft)
            y = self.builder_.emit(relax.call_tir(gv, [x, relax.const(packed)], relax.TensorType((n, fp), "float32")))
            records.append(KernelRecord(idx, "dense", module, gv.name_hint, {"n": n, "c": c, "f": f}, tile.to_dict(),
                                        tuned, np.ascontiguousarray(weight_fc), 2 * n * c * f, packed))
            if fp != f:
                return relax.op.strided_slice(y, [1], [0], [f])
            return y

        def _sparse_dense(self, x, weight_fc: np.ndarray, module, scheme: str):
            """Block-sparse matmul: per tile of ``ft`` outputs, only the kept input columns."""
            n, c = _shape(x)
            w = np.ascontiguousarray(weight_fc, dtype="float32")
            f = int(w.shape[0])
            v = planner.lanes
            packs = {ft: pack_sparse_rows(w, ft) for ft in (v // 2, v, 2 * v, 4 * v) if ft >= 1}
            fts = _tight(packs)
            nts = [nt for nt in (1, 2, 4, 8) if n % nt == 0]
            cands = [DenseTile(ft, nt, 4 if packs[ft].kept.shape[1] % 4 == 0 else 1) for ft in fts for nt in nts]
            dft = v if v in fts else max(fts)
            dnt = max(nt for nt in nts if nt <= 4) if n > 1 else 1
            default = DenseTile(dft, dnt, 4 if packs[dft].kept.shape[1] % 4 == 0 else 1)

            def run(tile: DenseTile) -> float:
                pk = packs[tile.ft]
                func = dense_primfunc(n, c, f, tile, pk.kept, counts=pk.counts)
                shapes = [((n, c), "float32"), (pk.packed.shape, "float32"), (pk.kept.shape, "int32"),
                          ((n, pk.packed.shape[0] * tile.ft), "float32")]
                return measure_kernel(func, planner.spec.tvm_target, shapes, fixed_args={1: pk.packed, 2: pk.kept})

            shape = {"n": n, "c": c, "f": f}
            tile, tuned = planner.sparse_tile("dense", shape, structure_digest(w != 0, scheme), cands, default, run)
            pk = packs[tile.ft]
            func = dense_primfunc(n, c, f, tile, pk.kept, counts=pk.counts)
            idx = len(records)
            symbol = f"npas_sparse_dense_{idx}"
            gv = self._add_kernel(func, symbol)
            fp = pk.packed.shape[0] * tile.ft
            y = self.builder_.emit(relax.call_tir(gv, [x, relax.const(pk.packed), relax.const(pk.kept)],
                                                  relax.TensorType((n, fp), "float32")))
            info = _sparse_info(scheme, pk.kept.shape[1], density=pk.work_fraction, kept=pk.kept_fraction)
            records.append(KernelRecord(idx, "dense", module, gv.name_hint, shape, tile.to_dict(), tuned, w,
                                        int(round(2 * n * c * f * pk.work_fraction)), pk.packed, info, [pk.kept], None,
                                        func))
            if fp != f:
                return relax.op.strided_slice(y, [1], [0], [f])
            return y

    new_mod = _Rewriter(mod).transform()
    return new_mod, records


def drop_unused_kernels(mod):
    """``mod`` without the project kernels no Relax function calls any more (a 1x1 conv re-emitted
    over the next conv's planes leaves its first kernel behind: Relax's dead-code elimination keeps
    functions that carry a ``global_symbol``, and LLVM would build them for nothing)."""
    from tvm import relax, tirx

    called = set()
    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(
                func, lambda e: called.add(e.name_hint) if isinstance(e, relax.GlobalVar) else None)
    mod = mod.clone()
    for gv, func in list(mod.functions_items()):
        if isinstance(func, tirx.PrimFunc) and func.attrs is not None and "npas.kernel" in func.attrs \
                and gv.name_hint not in called:
            del mod[gv]
    return mod


def clear_kernel_caches() -> None:
    """Forget the memoised IR-builder kernels (counts, channel-blocked, split, dense, per-pattern,
    pooling), so that kernels built next read the module settings again (``STACK_SCOPE``,
    ``epilogue.activation_expr`` in the benchmarks' ablations)."""
    from . import conv_kernel, dense_kernel, pattern_kernel, pool_kernel, split_conv

    for built in (conv_kernel._conv_counts_built, conv_kernel._conv_blocked_built, conv_kernel._depthwise_counts_built,
                  split_conv._split_built,
                  dense_kernel._dense_counts_built, pattern_kernel._pattern_built, pool_kernel.rows_mean_primfunc):
        built.cache_clear()


def _op(name: str):
    import tvm

    return tvm.ir.Op.get(name)
