"""Vectorisable approximations of the transcendental activations (sigmoid / SiLU gate, exp, tanh).

The default legalisation of ``sigmoid`` lowers to a scalar libm ``exp`` per element, which cost more
than all the convolutions of efficientnet_b0 together. TOPI's ``fast_exp`` (a range-reduced
polynomial, relative error ~1e-7) vectorises; ``sigmoid(x) = 1 / (1 + fast_exp(-x))``.
"""

from __future__ import annotations

from .relax_utils import rewrite_relax_functions

__all__ = ["fast_math"]


def _fast_sigmoid(x):
    from tvm import te, topi

    e = topi.fast_exp(topi.negative(x))
    return te.compute(x.shape, lambda *i: 1.0 / (1.0 + e(*i)), name="fast_sigmoid")


def fast_math(mod):
    """Replace relax.sigmoid by the fast form, then TVM's FastMathTransform (exp, tanh, softmax)."""
    from tvm import ir, relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Fast(PyExprMutator):
        def __init__(self, m):
            super().__init__(m)
            self.mod_ = m

        def transform(self):
            return rewrite_relax_functions(self)

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if isinstance(call.op, ir.Op) and call.op.name == "relax.sigmoid" and \
                    str(getattr(call.ty, "dtype", "")) == "float32":
                return self.builder_.call_te(_fast_sigmoid, call.args[0], primfunc_name_hint="fast_sigmoid")
            return call

    mod = _Fast(mod).transform()
    return relax.transform.FastMathTransform()(mod)
