"""Fast constant folding in NumPy for the arithmetic left by BN folding and weight transposes.

TVM's ``FoldConstant`` builds and runs a TIR function for every folded op (about 25 s on
efficientnet_b0 on a loaded 2-core machine); the expressions here are tiny NumPy operations.
Ops outside the table are left for TVM's own lowering (they stay correct, just not folded).
"""

from __future__ import annotations

import numpy as np

from .relax_utils import rewrite_relax_functions

__all__ = ["fold_constants"]


def _as_array(expr):
    from tvm.ir.expr import Constant

    if isinstance(expr, Constant):
        val = expr.value
        if isinstance(val, (int, float)):
            return np.asarray(val, dtype="float32" if isinstance(val, float) else "int64")
        return val.numpy() if hasattr(val, "numpy") else None
    value = getattr(expr, "value", None)  # relax.PrimValue(FloatImm / IntImm)
    if value is not None and type(expr).__name__ == "PrimValue":
        inner = getattr(value, "value", None)
        if isinstance(inner, (int, float)):
            return np.asarray(inner, dtype="float32" if isinstance(inner, float) else "int64")
    return None


def _out_shape(call):
    ty = getattr(call, "ty", None)
    shape = getattr(ty, "shape", None)
    try:
        return tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        return None


class _Resolved:
    """A call whose arguments have their constant bindings substituted."""

    def __init__(self, call, args):
        self.op, self.attrs, self.ty, self.args = call.op, call.attrs, call.ty, args


_BINARY = {"relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply,
           "relax.divide": np.divide}
_UNARY = {"relax.sqrt": np.sqrt, "relax.rsqrt": lambda a: 1.0 / np.sqrt(a), "relax.negative": np.negative}


def _evaluate(call, resolve):
    name = call.op.name
    call = _Resolved(call, [resolve(a) for a in call.args])
    if name in _BINARY:
        a, b = (_as_array(x) for x in call.args)
        if a is None or b is None:
            return None
        return _BINARY[name](a, b)
    if name in _UNARY:
        a = _as_array(call.args[0])
        return None if a is None else _UNARY[name](a)
    if name in ("relax.reshape", "relax.expand_dims", "relax.squeeze"):
        a = _as_array(call.args[0])
        shape = _out_shape(call)
        return None if a is None or shape is None else a.reshape(shape)
    if name == "relax.permute_dims":
        a = _as_array(call.args[0])
        if a is None:
            return None
        axes = call.attrs.axes
        return np.transpose(a, None if axes is None else [int(x) for x in axes])
    return None


def fold_constants(mod):
    """Fold calls whose arguments are all constants, for the ops in the table, in NumPy."""
    from tvm import ir, relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Folder(PyExprMutator):
        def __init__(self, m):
            super().__init__(m)
            self.mod_ = m

        def transform(self):
            return rewrite_relax_functions(self)

        def _resolve(self, expr):
            if isinstance(expr, relax.Var):
                bound = self.lookup_binding(expr)
                if bound is not None and _as_array(bound) is not None:
                    return bound
            return expr

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if isinstance(call.op, ir.Op):
                out = _evaluate(call, self._resolve)
                if out is not None:
                    dtype = str(getattr(call.ty, "dtype", "float32"))
                    return relax.const(np.ascontiguousarray(out).astype(dtype))
            return call

    return _Folder(mod).transform()
