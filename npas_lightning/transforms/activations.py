"""Phase 1: replace mobile-unfriendly activations (swish, sigmoid) by hard-swish / hard-sigmoid.

Two routes, same result:

* :func:`create_phase1_model` builds a timm model with the hard activations through the family's own
  constructor arguments (efficientnet / mobilenetv3: ``act_layer`` and the SE layer's ``gate_layer``),
  then sweeps the result with the fallback for anything the constructor did not reach.
* :func:`swap_activations` replaces, in an existing model, every module of a swish/sigmoid type
  (torch's ``nn.SiLU``/``nn.Sigmoid``, timm's ``Swish``/``SwishMe``/``Sigmoid``) and every module
  attribute holding a swish/sigmoid *function* (older SE gates: ``self.gate = torch.sigmoid``).

Neither route adds or removes parameters or buffers, so state-dict keys are unchanged and trained
weights load. Example::

    >>> model = timm.create_model("efficientnet_b0", pretrained=False)
    >>> report = swap_activations(model)
    >>> report.replaced
    {'SiLU -> Hardswish': 49, 'Sigmoid -> Hardsigmoid': 16}
"""

from __future__ import annotations

import inspect
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import timm
import torch
import torch.nn.functional as F
from rich.table import Table
from timm.layers import activations as timm_act
from timm.layers import activations_me as timm_act_me
from timm.models import model_entrypoint
from torch import nn

__all__ = [
    "HARD_MODULE_TYPES",
    "SIGMOID_FUNCTIONS",
    "SIGMOID_MODULE_TYPES",
    "SWISH_FUNCTIONS",
    "SWISH_MODULE_TYPES",
    "SwapReport",
    "activation_counts",
    "create_phase1_model",
    "swap_activations",
]

SWISH_MODULE_TYPES: tuple[type[nn.Module], ...] = (nn.SiLU, timm_act.Swish, timm_act_me.SwishMe)
SIGMOID_MODULE_TYPES: tuple[type[nn.Module], ...] = (nn.Sigmoid, timm_act.Sigmoid)
HARD_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Hardswish, nn.Hardsigmoid, timm_act.HardSwish, timm_act.HardSigmoid,
    timm_act_me.HardSwishMe, timm_act_me.HardSigmoidMe,
)
SWISH_FUNCTIONS = (F.silu, timm_act.swish, timm_act_me.swish_me)
SIGMOID_FUNCTIONS = (torch.sigmoid, F.sigmoid, timm_act.sigmoid, torch.Tensor.sigmoid)

# families whose timm constructor takes act_layer / se_layer(gate_layer) and whose default is swish
_CONSTRUCTOR_FAMILIES = ("timm.models.efficientnet", "timm.models.mobilenetv3")


def _is_activation(module: nn.Module) -> bool:
    mod = type(module).__module__
    return mod == "torch.nn.modules.activation" or mod.startswith("timm.layers.activations")


def _function_name(fn: Any) -> str | None:
    if any(fn is f for f in SWISH_FUNCTIONS):
        return "fn:swish"
    if any(fn is f for f in SIGMOID_FUNCTIONS):
        return "fn:sigmoid"
    return None


def _function_attrs(module: nn.Module) -> list[tuple[str, str]]:
    """(attribute, "fn:swish"|"fn:sigmoid") for plain function attributes of ``module``."""
    out = []
    for attr, value in vars(module).items():
        if attr.startswith("_") or not callable(value) or isinstance(value, nn.Module):
            continue
        kind = _function_name(value)
        if kind is not None:
            out.append((attr, kind))
    return out


def activation_counts(model: nn.Module) -> dict[str, int]:
    """Count activation modules by class name (plus ``fn:swish``/``fn:sigmoid`` function attributes)."""
    counts: Counter[str] = Counter()
    for module in model.modules():
        if _is_activation(module):
            counts[type(module).__name__] += 1
        for _, kind in _function_attrs(module):
            counts[kind] += 1
    return dict(sorted(counts.items()))


@dataclass
class SwapReport:
    """What :func:`swap_activations` / :func:`create_phase1_model` changed.

    Attributes:
        before / after: activation counts by class name (see :func:`activation_counts`).
        replaced: ``"Old -> New"`` -> count.
        names: qualified names of the replaced modules / function attributes.
        method: "replace-by-type", "constructor" or "constructor+replace-by-type".
    """

    before: dict[str, int]
    after: dict[str, int]
    replaced: dict[str, int] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    method: str = "replace-by-type"

    @property
    def nothing_to_swap(self) -> bool:
        return not self.replaced

    @property
    def num_replaced(self) -> int:
        return sum(self.replaced.values())

    def __str__(self) -> str:
        if self.nothing_to_swap:
            return f"nothing to swap: no swish/sigmoid activation found (activations: {self.before})"
        parts = ", ".join(f"{k}: {v}" for k, v in self.replaced.items())
        return f"swapped {self.num_replaced} activations via {self.method} ({parts})"

    def to_dict(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "replaced": self.replaced,
                "method": self.method, "nothing_to_swap": self.nothing_to_swap}

    def table(self) -> Table:
        table = Table(title="Phase 1 activation swap" + (" (nothing to swap)" if self.nothing_to_swap else ""))
        table.add_column("activation")
        table.add_column("before", justify="right")
        table.add_column("after", justify="right")
        for key in sorted(set(self.before) | set(self.after)):
            table.add_row(key, str(self.before.get(key, 0)), str(self.after.get(key, 0)))
        return table


def _hard_module(old: nn.Module) -> nn.Module:
    inplace = bool(getattr(old, "inplace", False))
    if isinstance(old, SWISH_MODULE_TYPES):
        return nn.Hardswish(inplace=inplace)
    return nn.Hardsigmoid(inplace=inplace)


def swap_activations(model: nn.Module) -> SwapReport:
    """Replace swish/SiLU by ``nn.Hardswish`` and sigmoid by ``nn.Hardsigmoid`` in place.

    Matches module types (torch's and timm's, incl. SE ``gate`` modules) and module attributes that
    hold a swish/sigmoid function (replaced by ``F.hardswish``/``F.hardsigmoid``). Parameters and
    buffers are untouched, so ``model.state_dict()`` keys stay the same.

    Returns:
        SwapReport; ``report.nothing_to_swap`` is True (and ``str(report)`` says so) when the model
        has no such activation (e.g. resnet18, mobilenetv3_large_100).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"swap_activations: model must be a torch.nn.Module, got {type(model).__name__}")
    before = activation_counts(model)
    replaced: Counter[str] = Counter()
    names: list[str] = []
    for parent_name, parent in list(model.named_modules()):
        prefix = f"{parent_name}." if parent_name else ""
        for child_name, child in list(parent.named_children()):
            if isinstance(child, SWISH_MODULE_TYPES + SIGMOID_MODULE_TYPES):
                new = _hard_module(child)
                setattr(parent, child_name, new)
                replaced[f"{type(child).__name__} -> {type(new).__name__}"] += 1
                names.append(prefix + child_name)
        for attr, kind in _function_attrs(parent):
            new_fn = F.hardswish if kind == "fn:swish" else F.hardsigmoid
            setattr(parent, attr, new_fn)
            replaced[f"{kind} -> fn:{new_fn.__name__}"] += 1
            names.append(prefix + attr)
    return SwapReport(before=before, after=activation_counts(model), replaced=dict(replaced), names=names)


def _has_kwarg(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _se_gate_is_soft(model: nn.Module) -> bool:
    from timm.models._efficientnet_blocks import SqueezeExcite

    ses = [m for m in model.modules() if isinstance(m, SqueezeExcite)]
    return bool(ses) and all(isinstance(m.gate, SIGMOID_MODULE_TYPES) for m in ses)


def _stem_act_is_swish(model: nn.Module) -> bool:
    bn1 = getattr(model, "bn1", None)
    return isinstance(getattr(bn1, "act", None), SWISH_MODULE_TYPES)


def create_phase1_model(name: str, **kwargs: Any) -> tuple[nn.Module, SwapReport]:
    """Create timm model ``name`` with hard-swish / hard-sigmoid activations.

    For efficientnet/mobilenetv3 families whose default activation is swish the constructor gets
    ``act_layer=nn.Hardswish`` and, where SE gates are sigmoid, ``se_layer=SqueezeExcite`` with
    ``gate_layer=nn.Hardsigmoid``; anything left (or any other family) goes through
    :func:`swap_activations`. The returned model has the same state-dict keys and the same weights as
    ``timm.create_model(name, **kwargs)`` would (weights are copied from that reference build).

    Example::

        >>> model, report = create_phase1_model("efficientnet_b0", num_classes=10)
        >>> report.method, report.after["Hardswish"]
        ('constructor', 49)
    """
    kwargs.setdefault("pretrained", False)
    if not isinstance(name, str) or not timm.is_model(name):
        raise ValueError(
            f"create_phase1_model: unknown timm model name={name!r}; see timm.list_models() for accepted names"
        )
    entry = model_entrypoint(name)
    reference = timm.create_model(name, **kwargs)
    before = activation_counts(reference)
    ctor_kwargs: dict[str, Any] = {}
    if entry.__module__ in _CONSTRUCTOR_FAMILIES and _has_kwarg(entry, "act_layer"):
        from timm.models._efficientnet_blocks import SqueezeExcite

        if "act_layer" not in kwargs and _stem_act_is_swish(reference):
            ctor_kwargs["act_layer"] = nn.Hardswish
        if "se_layer" not in kwargs and _se_gate_is_soft(reference):
            ctor_kwargs["se_layer"] = partial(SqueezeExcite, gate_layer=nn.Hardsigmoid)
    model = reference
    method = "replace-by-type"
    if ctor_kwargs:
        try:
            candidate = timm.create_model(name, **kwargs, **ctor_kwargs)
        except TypeError:  # the family sets se_layer/act_layer itself: fall back to replace-by-type
            candidate = None
        if candidate is not None and candidate.state_dict().keys() == reference.state_dict().keys():
            candidate.load_state_dict(reference.state_dict())
            model, method = candidate, "constructor"
    via_ctor = activation_counts(model)
    fallback = swap_activations(model)
    replaced: Counter[str] = Counter(fallback.replaced)
    if method == "constructor":
        for types, new in ((SWISH_MODULE_TYPES, "Hardswish"), (SIGMOID_MODULE_TYPES, "Hardsigmoid")):
            for old in sorted({t.__name__ for t in types}):
                n = before.get(old, 0) - via_ctor.get(old, 0)
                if n > 0:
                    replaced[f"{old} -> {new}"] += n
        if fallback.replaced:
            method = "constructor+replace-by-type"
    report = SwapReport(before=before, after=fallback.after, replaced=dict(replaced),
                        names=fallback.names, method=method)
    return model, report
