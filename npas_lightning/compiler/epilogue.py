"""Epilogues: the bias add and activation that follow a conv, computed in the kernel's output tile.

After BN folding every conv is ``conv -> add(bias) -> activation``. Left to Relax, the bias and the
activation run in a separate fused function that re-reads the whole output, and for planes whose
rows do not divide by the vector width (14x14, 7x7) that function runs scalar. In the kernel they
run on the output tile's vectors just before the store (see the function breakdown in
BENCHMARKS.md, issue 6).

:func:`find_epilogues` finds those chains in a Relax function; :func:`activation_expr` builds the
activation as a TIR expression for the kernels; :func:`apply_epilogue` is the NumPy reference.

Example:
    >>> import numpy as np
    >>> apply_epilogue(np.array([[[-1.0, 2.0]]]), np.array([0.5]), "relu").tolist()
    [[[0.0, 2.5]]]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ACTIVATIONS", "EpilogueChain", "activation_expr", "apply_epilogue", "fast_exp", "find_epilogues",
           "kernel_bias"]

#: activations a kernel can apply after its bias ("none": bias only)
ACTIVATIONS = ("none", "relu", "silu", "hardswish")

# exp(x) = 2^n * exp(r), n = round(x log2 e), r = x - n ln 2 (|r| <= ln2/2). exp(r) is a degree-5
# polynomial fitted for relative error on that interval, evaluated by Horner's rule.
# n comes from adding a shifter: x log2 e + 1.5 * 2^23 rounds to an integer, whose low mantissa bits
# (shifter + 127) shifted into the exponent field are 2^n. Clamped inputs keep n in [-127, 127].
_EXP_POLY = (1.0000000716553035, 0.9999996919888474, 0.4999889484477353, 0.1666757473332599,
             0.04191538272152443, 0.008297655068314704)  # c0..c5
_EXP_CLAMP = 88.3
_EXP_SHIFTER = 12583039.0  # 1.5 * 2^23 + 127 (the exponent bias)
_LOG2E = 1.44269504088896341
# r = x - n ln 2 in one fused multiply-add: its product is exact, so a single float ln 2 (error 1.9e-9)
# leaves |n| * 1.9e-9 <= 2.4e-7 in r, where splitting ln 2 in two parts (Cody-Waite) costs a second FMA
_LN2 = 0.6931471805599453


def fast_exp(x, negate: bool = False):
    """``exp(x)`` (``exp(-x)`` with ``negate``) for a float32 TIR expression: a vectorisable
    polynomial within 1e-6 relative on [-87, 88] (``tests/compiler/test_epilogue.py``). Inputs are
    clamped to +-88.3, so it saturates to ~2.2e38 and to 0 instead of overflowing.

    Fewer vector instructions than TOPI's Cephes form (Horner's rule, rounding by a
    shifter instead of ``floor`` and a conversion, no negation for ``negate``);
    ``bench_kernel_ablation.py`` times both."""
    from tvm import tirx

    f32 = lambda v: tirx.const(v, "float32")  # noqa: E731
    x = tirx.max(tirx.min(x, f32(_EXP_CLAMP)), f32(-_EXP_CLAMP))
    t = x * f32(-_LOG2E if negate else _LOG2E) + f32(_EXP_SHIFTER)  # one FMA; an integer-valued float
    # through a bit cast, which TVM's simplifier does not see through: it would fold (y + s) - s to y
    n = tirx.reinterpret("float32", tirx.reinterpret("int32", t)) - f32(_EXP_SHIFTER)
    if negate:  # u = x + n ln2 = -r: the polynomial in u takes the odd coefficients negated
        u, coefs = x + n * f32(_LN2), [c if k % 2 == 0 else -c for k, c in enumerate(_EXP_POLY)]
    else:
        u, coefs = x - n * f32(_LN2), list(_EXP_POLY)
    p = f32(coefs[-1])
    for c in reversed(coefs[:-1]):
        p = p * u + f32(c)
    two_n = tirx.reinterpret("float32", tirx.shift_left(tirx.reinterpret("int32", t), 23))
    return p * two_n


def activation_expr(act: str, z):
    """``act(z)`` as a TIR expression (``z`` already holds the bias)."""
    from tvm import tirx

    f32 = lambda v: tirx.const(v, "float32")  # noqa: E731
    if act == "none":
        return z
    if act == "relu":
        return tirx.max(z, f32(0.0))
    if act == "silu":
        return z / (f32(1.0) + fast_exp(z, negate=True))
    if act == "hardswish":
        # times 1/6 rather than / 6: a vector division costs as much as the rest (bench_kernel_ablation.py)
        return z * tirx.min(tirx.max(z + f32(3.0), f32(0.0)), f32(6.0)) * f32(1.0 / 6.0)
    raise ValueError(f"act={act!r}: expected one of {ACTIVATIONS}")


def apply_epilogue(y: np.ndarray, bias: np.ndarray, act: str) -> np.ndarray:
    """NumPy reference: ``act(y + bias)`` with ``bias`` per channel (axis 1)."""
    z = y + np.asarray(bias, dtype=y.dtype).reshape((1, -1) + (1,) * (y.ndim - 2))
    if act == "none":
        return z
    if act == "relu":
        return np.maximum(z, 0)
    if act == "silu":
        return z / (1 + np.exp(-np.clip(z, -_EXP_CLAMP, _EXP_CLAMP)))
    if act == "hardswish":
        return z * np.clip(z + 3, 0, 6) / 6
    raise ValueError(f"act={act!r}: expected one of {ACTIVATIONS}")


def kernel_bias(bias: np.ndarray, slots: int, order: np.ndarray | None = None) -> np.ndarray:
    """The bias in a kernel's filter slots: slot ``j`` holds filter ``order[j]`` (identity when
    ``order`` is None); slots past the real filters (tile padding) get 0."""
    b = np.asarray(bias, dtype="float32").reshape(-1)
    out = np.zeros(slots, dtype="float32")
    out[: b.size] = b if order is None else b[np.asarray(order)]
    return out


@dataclass
class EpilogueChain:
    """A conv's bias + activation: ``members`` are the Relax calls the kernel takes over."""

    act: str
    bias: np.ndarray = field(repr=False)  # [F] float32
    members: list[Any] = field(default_factory=list, repr=False)
    #: the chain's result is the input of one depthwise conv2d and is otherwise read only by adds (a
    #: residual): the kernel may write that conv's padded input planes directly, and the adds then
    #: read the image inside them
    feeds_depthwise: bool = False
    #: with ``feeds_depthwise``: adds read the result too
    residual: bool = False


def find_epilogues(func) -> dict[Any, EpilogueChain]:
    """Map each ``relax.nn.conv2d`` call of ``func`` that is followed by a per-channel constant bias
    add (and optionally ReLU, SiLU = ``x * sigmoid(x)`` or hard-swish = ``x * clip(x + 3, 0, 6) / 6``)
    to its :class:`EpilogueChain`. Only chains whose intermediate values have no other use qualify."""
    graph = _Bindings(func)
    var_of = {value: var for var, value in graph.bound.items()}
    chains: dict[Any, EpilogueChain] = {}
    for var in graph.order:
        if graph.op(var) != "relax.nn.conv2d":
            continue
        add = graph.only_user(var)
        if add is None or graph.op(add) != "relax.add":
            continue
        a0, a1 = graph.bound[add].args
        other = a1 if a0.same_as(var) else a0
        f = _shape_of(var)
        bias = graph.const_value(other)
        if f is None or bias is None or bias.size != f[1] or _shape_of(other) not in ([1, f[1], 1, 1], [f[1], 1, 1]):
            continue
        members = [graph.bound[add]]
        act = _match_activation(graph, add, members)
        out = var_of[members[-1]]
        feeds = _feeds_depthwise(graph, out)
        chains[graph.bound[var]] = EpilogueChain(act, bias.reshape(-1).astype("float32"), members, feeds,
                                                 feeds and len(graph.users(out)) > 1)
    return chains


def _feeds_depthwise(graph: _Bindings, var) -> bool:
    """``var`` (``[N, C, H, W]``) is the input of exactly one depthwise conv2d (``groups == C``), and
    every other reader is a ``relax.add`` (a residual connection)."""
    users = graph.users(var)
    if None in users:
        return False
    shape = _shape_of(var)
    depthwise = [u for u in users if graph.op(u) == "relax.nn.conv2d"
                 and graph.bound[u].args[0].same_as(var) and shape is not None
                 and int(graph.bound[u].attrs.groups) == shape[1] > 1]
    return len(depthwise) == 1 and all(u.same_as(depthwise[0]) or graph.op(u) == "relax.add" for u in users)


class _Bindings:
    """The variable bindings of a Relax function: what each variable is bound to, and its users
    (the variables whose bound values read it; ``None`` for the function's result)."""

    def __init__(self, func):
        from tvm import relax

        self.bound: dict[Any, Any] = {}
        self.uses: dict[Any, list[Any]] = {}
        self.order: list[Any] = []
        for block in func.body.blocks:
            for b in block.bindings:
                if isinstance(b, relax.VarBinding):
                    self.bound[b.var] = b.value
                    self.order.append(b.var)
                    self._count(b.value, b.var)
        self._count(func.body.body, None)

    def _count(self, expr, user) -> None:
        from tvm import relax

        def visit(e):
            if isinstance(e, relax.Var):
                self.uses.setdefault(e, []).append(user)
        relax.analysis.post_order_visit(expr, visit)

    def op(self, var) -> str:
        """Name of the op ``var`` is bound to ("" for anything else)."""
        from tvm import relax

        v = self.bound.get(var)
        return v.op.name if isinstance(v, relax.Call) and hasattr(v.op, "name") else ""

    def users(self, var) -> list[Any]:
        return self.uses.get(var, [])

    def only_user(self, var):
        """The one variable that reads ``var``, or None (several users, or the function's result)."""
        u = self.users(var)
        return u[0] if len(u) == 1 and u[0] is not None else None

    def const_value(self, expr) -> np.ndarray | None:
        from tvm import relax
        from tvm.ir.expr import Constant

        if isinstance(expr, relax.Var):
            expr = self.bound.get(expr, expr)
        return expr.value.numpy() if isinstance(expr, Constant) else None

    def is_scalar(self, expr, value: float) -> bool:
        v = self.const_value(expr)
        return v is not None and v.size == 1 and float(v.reshape(-1)[0]) == value


def _match_activation(graph: _Bindings, z, members: list) -> str:
    """The activation applied to ``z`` (appending its calls to ``members``), else ``"none"``."""
    users = graph.users(z)
    if None in users:
        return "none"
    if len(users) == 1 and graph.op(users[0]) == "relax.nn.relu":
        members.append(graph.bound[users[0]])
        return "relu"
    if len(users) != 2:
        return "none"
    by_op = {graph.op(u): u for u in users}
    if set(by_op) == {"relax.sigmoid", "relax.multiply"}:
        sig, mul = by_op["relax.sigmoid"], by_op["relax.multiply"]
        args = list(graph.bound[mul].args)
        if _same(graph.only_user(sig), mul) and any(a.same_as(z) for a in args) and any(a.same_as(sig) for a in args):
            members += [graph.bound[sig], graph.bound[mul]]
            return "silu"
        return "none"
    if set(by_op) == {"relax.add", "relax.multiply"}:
        plus, mul = by_op["relax.add"], by_op["relax.multiply"]
        if not any(graph.is_scalar(a, 3.0) for a in graph.bound[plus].args):
            return "none"
        clips, lo, hi, cur = [], -np.inf, np.inf, graph.only_user(plus)
        while cur is not None and graph.op(cur) == "relax.clip":
            clips.append(cur)
            _, a_min, a_max = graph.bound[cur].args
            lo, hi = max(lo, _number(a_min)), min(hi, _number(a_max))
            cur = graph.only_user(cur)
        div = graph.only_user(mul)
        args = list(graph.bound[mul].args)
        if not clips or (lo, hi) != (0.0, 6.0) or not _same(cur, mul) or div is None \
                or graph.op(div) != "relax.divide" or not graph.is_scalar(graph.bound[div].args[1], 6.0) \
                or not any(a.same_as(z) for a in args):
            return "none"
        members += [graph.bound[v] for v in (plus, *clips, mul, div)]
        return "hardswish"
    return "none"


def _same(a, b) -> bool:
    """``a`` and ``b`` are the same Relax variable (Python wrappers of one object may differ)."""
    return a is not None and b is not None and a.same_as(b)


def _number(arg) -> float:
    """A clip bound (a PrimValue or an immediate) as a float."""
    v = getattr(arg, "value", arg)
    return float(getattr(v, "value", v))


def _shape_of(expr) -> list[int] | None:
    shape = getattr(getattr(expr, "ty", None), "shape", None)
    if shape is None:
        return None
    try:
        return [int(s) for s in shape]
    except (TypeError, ValueError):
        return None
