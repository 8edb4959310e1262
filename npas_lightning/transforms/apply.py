"""Apply a plan's per-layer ``filter_type`` choices to a model (structural replacement).

Example::

    >>> from npas_lightning.plan import LayerPlan
    >>> new = apply_filter_types(model, {"blocks.2.0.conv_dw": LayerPlan(filter_type="3x3dw_1x1")})
    >>> new.blocks[2][0].conv_dw.filter_type
    '3x3dw_1x1'

Only the planned convs are replaced (each by a :class:`FilterCandidate` at the same attribute path);
norms, activations, SE branches and residual connections around them are untouched, so a replaced
layer's state-dict keys become ``<layer>.<submodule>.weight`` (e.g. ``blocks.2.0.conv_dw.dw.weight``)
and every other key is unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import nn

from npas_lightning.transforms.candidates import (
    FILTER_TYPES,
    FilterCandidate,
    FilterTypeError,
    allowed_filter_types,
    build_candidate,
)
from npas_lightning.transforms.context import get_parent, surrounding_activation

__all__ = ["apply_filter_types", "filter_type_of", "planned_filter_types"]


def filter_type_of(entry: Any) -> str:
    """The filter type of a plan entry: an object with ``.filter_type``, a mapping, or a string."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, Mapping):
        return str(entry.get("filter_type", "keep"))
    ft = getattr(entry, "filter_type", None)
    if ft is None:
        raise TypeError(
            f"plan entry {entry!r} has no filter_type; expected a LayerPlan, a mapping or a filter-type string"
        )
    return str(ft)


def planned_filter_types(plan: Any) -> dict[str, str]:
    """``{layer name: filter type}`` for every entry of ``plan`` whose type is not ``keep``."""
    if not hasattr(plan, "items"):
        raise TypeError(
            f"apply_filter_types: plan must have .items() (NPASScheme or dict of layer -> LayerPlan), "
            f"got {type(plan).__name__}"
        )
    return {name: ft for name, entry in plan.items() if (ft := filter_type_of(entry)) != "keep"}


def _fitted_for(fitted: Any, name: str, ft: str) -> nn.Module | None:
    if fitted is None:
        return None
    table = getattr(fitted, "fitted", fitted)  # ReconstructionResult or a plain mapping
    entry = table.get(name) if isinstance(table, Mapping) else None
    if entry is None:
        return None
    if isinstance(entry, Mapping):
        return entry.get(ft)
    if isinstance(entry, FilterCandidate):
        if entry.filter_type != ft:
            raise FilterTypeError(
                f"fitted candidate for layer {name!r} has filter_type={entry.filter_type!r} "
                f"but the plan asks for {ft!r}"
            )
        return entry
    raise TypeError(f"fitted[{name!r}] must be a FilterCandidate or a mapping filter type -> FilterCandidate")


def apply_filter_types(
    model: nn.Module,
    plan: Any,
    fitted: Any = None,
    *,
    expansion: float = 1.0,
    inplace: bool = False,
) -> nn.Module:
    """Replace every layer whose plan entry has ``filter_type != "keep"`` by its candidate.

    Args:
        model: the network (copied unless ``inplace``).
        plan: anything with ``.items()`` of layer name -> entry with ``.filter_type`` (``LayerPlan``),
            a mapping with a ``"filter_type"`` key, or a filter-type string.
        fitted: reconstruction-initialised candidates: a ``ReconstructionResult`` or a mapping
            ``layer -> {filter type -> FilterCandidate}`` (or ``layer -> FilterCandidate``). A copy of
            the fitted candidate is used where present; other layers get freshly initialised weights.
        expansion: hidden width multiple of ``1x1_3x3dw_1x1`` candidates built here.
        inplace: modify ``model`` itself instead of a deep copy.

    Raises:
        KeyError: a planned layer does not exist in the model.
        FilterTypeError: an unknown filter type, or one the layer does not accept (incl. the
            unidirectional rule). All entries are checked before anything is replaced.
    """
    choices = planned_filter_types(plan)
    modules = dict(model.named_modules())
    for name, ft in choices.items():
        if name not in modules:
            get_parent(model, name)  # raises KeyError with similar names
        layer = modules[name]
        if isinstance(layer, FilterCandidate):
            raise FilterTypeError(
                f"layer {name!r} is already a {layer.filter_type!r} candidate; apply filter types to the original model"
            )
        if ft not in FILTER_TYPES:
            raise FilterTypeError(
                f"filter_type={ft!r} for layer {name!r} is unknown; accepted: {list(FILTER_TYPES)}"
            )
        if ft not in allowed_filter_types(layer):
            build_candidate(ft, layer, expansion=expansion, layer_name=name)  # raises the precise error
    target = model if inplace else copy.deepcopy(model)
    for name, ft in choices.items():
        parent, attr = get_parent(target, name)
        layer = getattr(parent, attr)
        pre = _fitted_for(fitted, name, ft)
        if pre is not None:
            cand = copy.deepcopy(pre)
        else:
            act = surrounding_activation(target, name)
            cand = build_candidate(ft, layer, expansion=expansion, act_layer=act, layer_name=name)
        device = next((p.device for p in layer.parameters()), None)
        if device is not None:
            cand = cand.to(device)
        cand.train(layer.training)
        setattr(parent, attr, cand)
    return target
