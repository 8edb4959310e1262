"""Relax graph rewrite: conv2d / depthwise conv2d / matmul calls -> the project's scheduled kernels.

Every matched call becomes ``layout ops -> call_tir(kernel) -> crop ops``; the kernel PrimFunc
carries its own ``global_symbol`` and ``op_pattern = 8`` (opaque, so fusion never swallows it) and
``npas.kernel = 1`` (so the generic schedule rule leaves it alone). The layout and crop ops are
ordinary injective Relax ops that fusion merges into the neighbouring elementwise functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .conv_kernel import (
    ConvGeometry,
    ConvTile,
    conv_primfunc,
    depthwise_primfunc,
    pack_conv_weight,
    pack_depthwise_weight,
)
from .dense_kernel import DenseTile, dense_primfunc, pack_dense_weight
from .relax_utils import rewrite_relax_functions
from .targets import TargetSpec
from .tuning import TileCache, measure_kernel, pick_best

__all__ = ["KernelRecord", "TilePlanner", "rewrite_kernels"]


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


class TilePlanner:
    """Chooses tile sizes per layer: cached best, measured grid (``tune=True``) or a heuristic."""

    def __init__(self, spec: TargetSpec, *, tune: bool = False, cache: TileCache | None = None):
        self.spec = spec
        self.tune = tune and spec.is_host
        self.cache = cache if cache is not None else TileCache()
        self.lanes = spec.vector_lanes

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
        default = ConvTile(fts[min(1, len(fts) - 1)] if kind != "depthwise" else 1,
                           2 if m >= 8 * v else 1, v)

        def run(tile: ConvTile) -> float:
            g = make_geom(tile)
            if kind == "depthwise":
                func = depthwise_primfunc(g, tile)
                shapes = [((g.n, g.c, g.phases * g.plane), "float32"), ((g.c, g.kh * g.kw), "float32"),
                          ((g.n, g.c, g.mp), "float32")]
            else:
                func = conv_primfunc(g, tile)
                fn = -(-g.f // tile.ft)
                shapes = [((g.n, g.c, g.phases * g.plane), "float32"),
                          ((fn, g.c * g.kh * g.kw, tile.ft), "float32"), ((g.n, fn * tile.ft, g.mp), "float32")]
            return measure_kernel(func, self.spec.tvm_target, shapes)

        return self._choose(kind, shape, cands, default, run, ConvTile)

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


def rewrite_kernels(mod, planner: TilePlanner, layer_names: dict[str, list[str]] | None = None):
    """Rewrite ``mod['main']``; returns ``(new_mod, records)``."""
    from tvm import relax
    from tvm.ir.expr import Constant as _Constant
    from tvm.relax.expr_functor import PyExprMutator, mutator

    names = layer_names or {}
    op_conv = _op("relax.nn.conv2d")
    op_matmul = _op("relax.matmul")
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

        def transform(self):
            return rewrite_relax_functions(self)

        def _add_kernel(self, func, symbol):
            func = func.with_attr("global_symbol", symbol).with_attr("op_pattern", 8).with_attr("npas.kernel", 1)
            return self.builder_.add_func(func, symbol)

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
            call = self.visit_expr_post_order(call)
            if call.op == op_conv:
                module = module_for("conv2d")
                new = self._conv(call, module)
                return call if new is None else new
            if call.op == op_matmul:
                w = self._const(call.args[1])
                xs = _shape(call.args[0])
                if isinstance(w, _Constant) and xs is not None and len(xs) == 2 and len(_shape(w) or []) == 2:
                    module = module_for("linear")
                    return self._dense(call.args[0], w.value.numpy().T, module)
            return call

        # -- conv ---------------------------------------------------------------------------
        def _conv(self, call, module):
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
            if groups == 1 and kh == kw == 1 and stride == 1 and pad == (0, 0, 0, 0) and h * wd == 1:
                y = self._dense(self.builder_.emit(relax.op.reshape(x, (n, c))), weight.reshape(f, c), module)
                return relax.op.reshape(y, (n, f, 1, 1))
            if groups == 1:
                kind = "conv"
            elif groups == c == f and cg == 1:
                kind = "depthwise"
            else:
                return None
            shape = {"n": n, "c": c, "h": h, "w": wd, "f": f, "kh": kh, "kw": kw, "s": stride, "p": list(pad)}

            def geom(t: ConvTile) -> ConvGeometry:
                return ConvGeometry.make(n, c, h, wd, f, (kh, kw), stride, pad, pixels=t.pixels)

            tile, tuned = planner.conv_tile(kind, shape, geom)
            g = geom(tile)
            idx = len(records)
            symbol = f"npas_{kind}_{idx}"
            if kind == "conv":
                func, packed, fp = conv_primfunc(g, tile), pack_conv_weight(weight, tile.ft), -(-f // tile.ft) * tile.ft
            else:
                func, packed, fp = depthwise_primfunc(g, tile), pack_depthwise_weight(weight), c
            gv = self._add_kernel(func, symbol)
            xf = self._to_planes(x, g)
            y = self.builder_.emit(relax.call_tir(gv, [xf, relax.const(packed)],
                                                  relax.TensorType((n, fp, g.mp), "float32")))
            records.append(KernelRecord(idx, kind, module, symbol, shape, tile.to_dict(), tuned, weight, g.flops,
                                        packed))
            return self._crop(y, g, fp)

        def _to_planes(self, x, g: ConvGeometry):
            """pad -> (stride phases) -> flat rows. The last flattening is a zero-copy VM reshape
            outside fusion, so the fused pad/phase function writes a structured [N,C,s,s,Hq,Wq] or
            [N,C,Hq,Wq] tensor (affine indices, vectorisable) instead of a flat row with div/mod."""
            s = g.stride
            pt, pl, _, _ = g.pad
            pb, pr = s * g.hq - g.h - pt, s * g.wq - g.w - pl
            if pt or pl or pb or pr:
                x = self.builder_.emit(relax.op.nn.pad(x, [0, 0, 0, 0, pt, pb, pl, pr]))
            if s > 1:
                x = self.builder_.emit(relax.op.reshape(x, (g.n, g.c, g.hq, s, g.wq, s)))
                x = self.builder_.emit(relax.op.permute_dims(x, [0, 1, 3, 5, 2, 4]))
            flat = (g.n, g.c, g.phases * g.plane)
            return self.builder_.emit(relax.call_pure_packed(
                "vm.builtin.reshape", x, relax.ShapeExpr(list(flat)), ty_args=relax.TensorType(flat, "float32")))

        def _crop(self, y, g: ConvGeometry, fp: int):
            if fp != g.f or g.mp != g.m:
                y = self.builder_.emit(relax.op.strided_slice(y, [1, 2], [0, 0], [g.f, g.m]))
            y = self.builder_.emit(relax.op.reshape(y, (g.n, g.f, g.oh, g.wq)))
            if g.wq != g.ow:
                return relax.op.strided_slice(y, [3], [0], [g.ow])
            return y

        # -- dense --------------------------------------------------------------------------
        def _dense(self, x, weight_fc: np.ndarray, module):
            n, c = _shape(x)
            f = int(weight_fc.shape[0])
            tile, tuned = planner.dense_tile(n, c, f)
            idx = len(records)
            symbol = f"npas_dense_{idx}"
            gv = self._add_kernel(dense_primfunc(n, c, f, tile), symbol)
            fp = -(-f // tile.ft) * tile.ft
            packed = pack_dense_weight(np.ascontiguousarray(weight_fc, dtype="float32"), tile.ft)
            y = self.builder_.emit(relax.call_tir(gv, [x, relax.const(packed)], relax.TensorType((n, fp), "float32")))
            records.append(KernelRecord(idx, "dense", module, symbol, {"n": n, "c": c, "f": f}, tile.to_dict(),
                                        tuned, np.ascontiguousarray(weight_fc), 2 * n * c * f, packed))
            if fp != f:
                return relax.op.strided_slice(y, [1], [0], [f])
            return y

    new_mod = _Rewriter(mod).transform()
    return new_mod, records


def _op(name: str):
    import tvm

    return tvm.ir.Op.get(name)
