"""Group-Lasso regularisation with groups taken from each pruning scheme's structure (paper section 5.1).

The penalty of a layer is ``lam * sum_g ||W_g||_2``; its (sub)gradient is ``lam * W_g / ||W_g||``
(0 for an all-zero group). Driving whole groups towards zero before the hard prune lets the scheme
then remove groups that carry little, generalising group-Lasso pruning to every scheme:

================  ============================================================================
scheme            groups (one :class:`GroupSet` or more per layer)
================  ============================================================================
block_punched     one kernel position ``(i, j)`` inside one block of ``bf x bc`` filters x
                  channels (the unit the scheme keeps or removes); depthwise: ``bc = 1``, as the
                  scheme does; edge blocks are smaller groups
block_based       one column segment (``br`` rows of one column inside one block-row); with
                  ``prune="rows"`` one row segment (``bc`` columns of one row)
filter            one output filter (a row of an FC weight)
pattern           a kernel position of one kernel: each non-centre weight is its own group
                  (L1, since every pattern keeps the centre); when the rate is above 9/4 whole
                  kernels are a second group set (connectivity pruning removes whole kernels)
unstructured      no structure: falls back to L1 (every weight its own group,
                  ``lam * sum |w|``), or refuses with ``unstructured="refuse"``
================  ============================================================================

Groups are a reshape of the (zero-padded) weight (:class:`GroupSet`), computed once per layer
(:func:`scheme_groups`): the per-step work is a norm over the group dims and one broadcast
``addcmul_`` into ``.grad`` per layer, no gather or scatter. New schemes register
their grouping with :func:`register_grouping`.

Example:
    >>> sets = scheme_groups((16, 8, 3, 3), LayerPlan(scheme="block_punched", rate=3, block=(8, 4)))
    >>> sets[0].n_groups   # 2 x 2 blocks x 9 kernel positions
    36
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from npas_lightning.plan import LayerPlan
from npas_lightning.schemes import PATTERN_RATE, get_scheme
from npas_lightning.utils.registry import Registry

__all__ = [
    "UNSTRUCTURED_MODES",
    "GroupSet",
    "GroupingError",
    "add_group_lasso_grad_",
    "add_layer_grad_",
    "check_grouping",
    "group_lasso_value",
    "group_norms",
    "list_groupings",
    "register_grouping",
    "scheme_groups",
]

UNSTRUCTURED_MODES = ("l1", "refuse")


class GroupingError(ValueError):
    """A layer's scheme has no group-Lasso grouping (or unstructured was refused); names the layer."""


@dataclass(frozen=True)
class GroupSet:
    """A partition of (some of) a weight's elements into groups, as a reshape of the weight.

    Block groups: the weight is zero-padded at the end of its dims to ``padded``, viewed as
    ``view``, and each group is one index of the non-``reduce`` dims of the view (its elements are
    the ``reduce`` dims). Edge blocks are groups with fewer real weights (padding adds zeros).
    Reductions and broadcasts over such a view are plain ``sum``/``div`` kernels: no gather.

    L1 sets (``view is None``): every weight its own group, restricted to ``elements`` when given.

    Attributes:
        shape: the weight's shape.
        view: shape of the padded weight's view, or ``None`` for an L1 set.
        reduce: dims of ``view`` that run over one group's elements.
        padded: the padded weight's shape (``None`` = ``shape``).
        elements: bool mask of the weights of an L1 set (``None`` = all).
    """

    shape: tuple[int, ...]
    view: tuple[int, ...] | None = None
    reduce: tuple[int, ...] = ()
    padded: tuple[int, ...] | None = None
    elements: Tensor | None = None

    @property
    def n_groups(self) -> int:
        """Number of groups (for an L1 set: the number of penalised weights)."""
        if self.view is None:
            return int(torch.Size(self.shape).numel()) if self.elements is None else int(self.elements.sum())
        return int(torch.Size(self.reduced_shape).numel())

    @property
    def reduced_shape(self) -> tuple[int, ...]:
        """``view`` with the ``reduce`` dims set to 1 (the shape of the per-group norms)."""
        assert self.view is not None
        return tuple(1 if d in self.reduce else s for d, s in enumerate(self.view))

    @property
    def ids(self) -> Tensor | None:
        """Group index of every weight (int64, the weight's shape), ``n_groups`` for none; ``None`` for L1."""
        if self.view is None:
            return None
        labels = torch.arange(self.n_groups, dtype=torch.int64).reshape(self.reduced_shape).expand(self.view)
        return _crop(labels.reshape(self.padded or self.shape), self.shape).contiguous()

    def to(self, device: torch.device | str) -> GroupSet:
        return replace(self, elements=None if self.elements is None else self.elements.to(device))


def _pad(w: Tensor, padded: tuple[int, ...] | None) -> Tensor:
    if padded is None or tuple(padded) == tuple(w.shape):
        return w
    spec = [p for d in reversed(range(w.dim())) for p in (0, padded[d] - w.shape[d])]
    return F.pad(w, spec)


def _crop(w: Tensor, shape: tuple[int, ...]) -> Tensor:
    if tuple(w.shape) == tuple(shape):
        return w
    return w[tuple(slice(0, s) for s in shape)]


Grouping = Callable[[tuple[int, ...], float, dict[str, Any]], list[GroupSet]]
_GROUPINGS: Registry[Grouping] = Registry("group-Lasso grouping", key="scheme")
#: Register ``fn(shape, rate, params) -> list[GroupSet]`` as the group structure of a scheme (decorator).
register_grouping = _GROUPINGS.register
#: Schemes that have a group-Lasso grouping, sorted.
list_groupings = _GROUPINGS.names


def _up(n: int, b: int) -> int:
    return -(-n // b) * b


@register_grouping("block_punched")
def _block_punched(shape: tuple[int, ...], rate: float, params: dict[str, Any]) -> list[GroupSet]:
    n_f, n_c, kh, kw = shape
    bf, bc = params["block"]
    padded = (_up(n_f, bf), _up(n_c, bc), kh, kw)
    view = (padded[0] // bf, bf, padded[1] // bc, bc, kh, kw)
    return [GroupSet(shape, view, (1, 3), padded)]


@register_grouping("block_based")
def _block_based(shape: tuple[int, ...], rate: float, params: dict[str, Any]) -> list[GroupSet]:
    n_r, n_c, rest = shape[0], shape[1], tuple(shape[2:])
    br, bc = params["block"]
    if params.get("prune", "columns") == "rows":  # a row segment: bc columns of one row
        padded = (n_r, _up(n_c, bc), *rest)
        return [GroupSet(shape, (n_r, padded[1] // bc, bc), (2,), padded)]
    padded = (_up(n_r, br), n_c, *rest)  # a column segment: br rows of one column
    return [GroupSet(shape, (padded[0] // br, br, n_c), (1,), padded)]


@register_grouping("filter")
def _filter(shape: tuple[int, ...], rate: float, params: dict[str, Any]) -> list[GroupSet]:
    return [GroupSet(shape, (shape[0], int(torch.Size(shape[1:]).numel())), (1,))]


@register_grouping("pattern")
def _pattern(shape: tuple[int, ...], rate: float, params: dict[str, Any]) -> list[GroupSet]:
    off_centre = torch.ones(3, 3, dtype=torch.bool)
    off_centre[1, 1] = False
    sets = [GroupSet(shape, elements=off_centre.expand(shape).contiguous())]
    if rate > PATTERN_RATE:  # connectivity pruning removes whole kernels
        sets.append(GroupSet(shape, (shape[0] * shape[1], 9), (1,)))
    return sets


@register_grouping("unstructured")
def _unstructured(shape: tuple[int, ...], rate: float, params: dict[str, Any]) -> list[GroupSet]:
    return [GroupSet(shape)]


def check_grouping(lp: LayerPlan, *, layer_name: str = "weight", unstructured: str = "l1") -> None:
    """Raise :class:`GroupingError` when ``lp``'s scheme has no grouping or unstructured is refused."""
    if unstructured not in UNSTRUCTURED_MODES:
        raise ValueError(f"unstructured={unstructured!r}: accepted values are {list(UNSTRUCTURED_MODES)}")
    if lp.scheme == "unstructured" and unstructured == "refuse":
        raise GroupingError(
            f"layer {layer_name!r} uses scheme 'unstructured', which has no group structure, and "
            "unstructured='refuse' was asked; use unstructured='l1' (per-weight L1 fallback) or a structured scheme"
        )
    if lp.scheme not in _GROUPINGS:
        raise GroupingError(
            f"layer {layer_name!r}: scheme {lp.scheme!r} has no group-Lasso grouping; schemes with one: {list_groupings()}"
        )


def scheme_groups(
    shape: Sequence[int], lp: LayerPlan, *, layer_name: str = "weight", unstructured: str = "l1"
) -> list[GroupSet]:
    """The group sets of a weight of ``shape`` pruned with ``lp`` (see the module table).

    The scheme's own validation runs first, so parameters are normalised exactly as the scheme
    uses them (default block, ``bc = 1`` on depthwise convs).

    Raises:
        GroupingError: the scheme has no grouping, or ``unstructured="refuse"`` and the layer's
            scheme is ``unstructured``.
    """
    check_grouping(lp, layer_name=layer_name, unstructured=unstructured)
    shape = tuple(int(s) for s in shape)
    _, rate, params = get_scheme(lp.scheme).validate(shape, lp.rate, layer_name=layer_name, **lp.scheme_kwargs())
    return _GROUPINGS.get(lp.scheme)(shape, rate, params)


def group_norms(weight: Tensor, gs: GroupSet) -> Tensor:
    """``||W_g||_2`` for every group of ``gs`` (1-D, ``n_groups``, in ``gs.ids`` order; L1 sets: ``|w|``)."""
    w = weight.detach()
    if gs.view is None:
        return w.abs().flatten() if gs.elements is None else w.abs()[gs.elements]
    v = _pad(w, gs.padded).reshape(gs.view)
    return v.square().sum(dim=gs.reduce).sqrt().flatten()


@torch.no_grad()
def add_layer_grad_(grad: Tensor, w: Tensor, gs: GroupSet, lam: float) -> Tensor:
    """``grad += lam * dR/dW`` for one group set of one layer, in place; returns ``R = sum_g ||W_g||``.

    Two passes over the weight: the group norms (``vector_norm`` over the group dims of the view)
    and a broadcast ``addcmul_`` of ``W / ||W_g||`` straight into ``grad``.
    """
    if gs.view is None:  # L1: d|w| = sign(w)
        sign = torch.sign(w)
        if gs.elements is None:
            grad.add_(sign, alpha=lam)
            return w.abs().sum()
        elements = gs.elements.to(w.dtype)
        grad.addcmul_(sign, elements, value=lam)
        return (w.abs() * elements).sum()
    v = _pad(w, gs.padded).reshape(gs.view)
    norms = torch.linalg.vector_norm(v, dim=gs.reduce, keepdim=True)
    scale = torch.where(norms > 0, lam / norms.clamp_min(torch.finfo(w.dtype).tiny), torch.zeros_like(norms))
    if gs.padded is None or tuple(gs.padded) == tuple(gs.shape):
        grad.view(gs.view).addcmul_(v, scale)
    else:  # edge blocks: the padded gradient, cropped to the weight
        grad.add_(_crop((v * scale).reshape(gs.padded), gs.shape))
    return norms.sum()


@torch.no_grad()
def add_group_lasso_grad_(
    params: Sequence[Tensor], groups: Sequence[Sequence[GroupSet]], lam: float
) -> Tensor:
    """``W.grad += lam * W_g / ||W_g||`` for every group of every layer; returns ``lam * sum_g ||W_g||``.

    Args:
        params: the layers' weight parameters (a missing ``.grad`` is created).
        groups: for each parameter, its group sets (:func:`scheme_groups`, on the parameter's device).
        lam: the regularisation strength.
    """
    if not params:
        return torch.zeros(())
    sums = []
    for p, sets in zip(params, groups, strict=True):
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grad = p.grad if p.grad.is_contiguous() else p.grad.contiguous()
        for gs in sets:
            sums.append(add_layer_grad_(grad, p.detach(), gs, lam))
        if grad is not p.grad:
            p.grad.copy_(grad)
    return lam * torch.stack(sums).sum()


@torch.no_grad()
def group_lasso_value(weights: Mapping[str, Tensor], groups: Mapping[str, Sequence[GroupSet]], lam: float) -> float:
    """``lam * sum_layers sum_g ||W_g||_2`` over the given layers."""
    return float(lam * sum(float(group_norms(weights[n], gs).sum()) for n, sets in groups.items() for gs in sets))
