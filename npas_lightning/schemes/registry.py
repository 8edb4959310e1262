"""The scheme registry: name -> :class:`Scheme`, plus layer-kind helpers and ``SchemeError``.

A scheme is a pure function ``fn(weight, rate, **params) -> bool mask`` registered with
:func:`register_scheme`. :func:`get_scheme` returns a :class:`Scheme`, the callable users call: it
validates the rate, the parameters and the layer kind *before* any tensor work, then calls the
function (rate 1 keeps everything without calling it).

Example::

    >>> import torch
    >>> from npas_lightning.schemes import get_scheme, achieved_rate
    >>> mask = get_scheme("block_punched")(torch.randn(64, 32, 3, 3), 4, block=(8, 4))
    >>> mask.dtype, tuple(mask.shape), achieved_rate(mask)   # 18432 / 4 = 4608 = 144 groups of 32
    (torch.bool, (64, 32, 3, 3), 4.0)
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "KINDS",
    "NotApplicable",
    "Scheme",
    "SchemeError",
    "achieved_rate",
    "get_scheme",
    "list_schemes",
    "register_scheme",
    "schemes_for_kind",
    "schemes_for_weight",
    "weight_kind",
]

#: Layer kinds, as in :func:`npas_lightning.layers.layer_kind`.
KINDS: tuple[str, ...] = ("conv", "depthwise", "pointwise", "fc")


class SchemeError(ValueError):
    """A scheme cannot run as asked: bad rate/parameter, or a layer the scheme does not fit.

    Messages name the layer, the scheme, the offending value and what would be accepted (for a
    layer that does not fit: the schemes that would).
    """


class NotApplicable(Exception):  # noqa: N818 - an internal signal, turned into SchemeError
    """Raised by a scheme's ``check`` when the layer does not fit; the text says why."""


#: ``check(shape, kind, params) -> params``: validates (and normalises) the parameters for a weight
#: of ``shape`` and ``kind``; raises ``SchemeError`` for a bad argument, ``NotApplicable`` for a
#: layer the scheme cannot handle. Shape-only: no tensor work.
Check = Callable[[tuple[int, ...], str, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Scheme:
    """A registered scheme. Call it: ``scheme(weight, rate, *, layer_name="weight", kind=None, **params)``."""

    name: str
    fn: Callable[..., Tensor]
    applies_to: frozenset[str]
    check: Check | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    doc: str = ""

    # ------------------------------------------------------------------ validation (no tensor work)
    def fits(self, shape: Sequence[int], kind: str | None = None, **params: Any) -> str | None:
        """``None`` when the scheme fits a weight of ``shape``/``kind`` (default params), else why not."""
        kind = kind or weight_kind(_ShapeOnly(shape))
        if kind not in self.applies_to:
            return f"it applies to {sorted(self.applies_to)} layers, not {kind!r}"
        if self.check is None:
            return None
        try:
            self.check(tuple(int(s) for s in shape), kind, {**self.defaults, **params})
        except (NotApplicable, SchemeError) as e:
            return str(e)
        return None

    def validate(
        self, shape: Sequence[int], rate: float, *, layer_name: str = "weight", kind: str | None = None,
        **params: Any,
    ) -> tuple[str, float, dict[str, Any]]:
        """Check everything that does not need the weight values; return ``(kind, rate, params)``.

        Raises:
            SchemeError: bad rate, unknown/bad parameter, or a layer the scheme does not fit.
        """
        shape = tuple(int(s) for s in shape)
        rate = check_rate(rate, layer_name=layer_name, scheme=self.name)
        if kind is None:
            kind = weight_kind(_ShapeOnly(shape))
        elif kind not in KINDS:
            raise SchemeError(f"kind={kind!r} for layer {layer_name!r}: accepted kinds are {list(KINDS)}")
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise SchemeError(
                f"scheme {self.name!r} on layer {layer_name!r}: unknown parameter(s) {unknown}; "
                f"accepted: {sorted(self.defaults) or 'none'}"
            )
        merged = {**self.defaults, **params}
        try:
            if kind not in self.applies_to:
                raise NotApplicable(
                    f"it applies to {sorted(self.applies_to)} layers and this one is {kind!r}"
                )
            if self.check is not None:
                merged = self.check(shape, kind, merged)
        except NotApplicable as e:
            fit = [s for s in schemes_for_weight(shape, kind) if s != self.name]
            raise SchemeError(
                f"scheme {self.name!r} does not fit layer {layer_name!r} ({kind}, weight shape "
                f"{list(shape)}): {e}; schemes that fit this layer: {fit}"
            ) from None
        except SchemeError as e:
            raise SchemeError(f"scheme {self.name!r} on layer {layer_name!r}: {e}") from None
        return kind, rate, merged

    # ------------------------------------------------------------------ the call
    def __call__(
        self, weight: Tensor, rate: float, *, layer_name: str = "weight", kind: str | None = None,
        **params: Any,
    ) -> Tensor:
        """Mask (bool, ``weight``'s shape and device) keeping ``~numel/rate`` weights in the scheme's structure."""
        if not isinstance(weight, Tensor):
            raise SchemeError(
                f"scheme {self.name!r} on layer {layer_name!r}: weight must be a torch.Tensor, "
                f"got {type(weight).__name__}"
            )
        if not weight.is_floating_point():
            raise SchemeError(
                f"scheme {self.name!r} on layer {layer_name!r}: weight dtype {weight.dtype} is not floating point"
            )
        if weight.dim() not in (2, 4):
            raise SchemeError(
                f"scheme {self.name!r} on layer {layer_name!r}: weight of shape {list(weight.shape)} is "
                "neither a Linear (2-D) nor a Conv2d (4-D) weight"
            )
        _, rate, merged = self.validate(weight.shape, rate, layer_name=layer_name, kind=kind, **params)
        if rate == 1.0:
            return torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
        with torch.no_grad():
            mask = self.fn(weight.detach(), rate, **merged)
        return mask


class _ShapeOnly:
    """Stand-in carrying only a shape, so :func:`weight_kind` works on shapes too."""

    def __init__(self, shape: Sequence[int]):
        self.shape = tuple(int(s) for s in shape)

    def dim(self) -> int:
        return len(self.shape)


_REGISTRY: dict[str, Scheme] = {}


def register_scheme(name: str, *, applies_to: Iterable[str], check: Check | None = None):
    """Decorator registering ``fn(weight, rate, *, <params with defaults>) -> bool mask`` as ``name``.

    Args:
        name: registry name (unique).
        applies_to: subset of :data:`KINDS` the scheme may be used on.
        check: optional shape-only validation of the parameters (see :data:`Check`).

    The keyword-only parameters of ``fn`` (with their defaults) are the scheme's accepted ``params``.
    """
    kinds = frozenset(applies_to)
    bad = sorted(kinds - set(KINDS))
    if not kinds or bad:
        raise ValueError(f"register_scheme({name!r}): applies_to={sorted(kinds)} must be a non-empty subset of {list(KINDS)}")

    def deco(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in _REGISTRY:
            raise ValueError(f"register_scheme: a scheme named {name!r} is already registered")
        sig = inspect.signature(fn)
        defaults = {
            p.name: p.default for p in sig.parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
        }
        _REGISTRY[name] = Scheme(name=name, fn=fn, applies_to=kinds, check=check, defaults=defaults,
                                 doc=inspect.getdoc(fn) or "")
        return fn

    return deco


def get_scheme(name: str) -> Scheme:
    """The registered scheme ``name`` (see :func:`list_schemes`).

    Raises:
        SchemeError: unknown name (the message lists the registered ones).
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise SchemeError(f"unknown scheme {name!r}; registered schemes: {list_schemes()}") from None


def list_schemes() -> list[str]:
    """Names of the registered schemes, sorted."""
    return sorted(_REGISTRY)


def schemes_for_kind(kind: str) -> list[str]:
    """Schemes that apply to layers of ``kind`` (one of :data:`KINDS`), sorted.

    Kind-level only: ``pattern`` is listed for every ``conv`` although it needs a 3x3 kernel; use
    :func:`schemes_for_weight` for the exact answer on a given weight shape.
    """
    if kind not in KINDS:
        raise SchemeError(f"kind={kind!r}: accepted kinds are {list(KINDS)}")
    return [n for n in list_schemes() if kind in _REGISTRY[n].applies_to]


def schemes_for_weight(shape: Sequence[int], kind: str | None = None) -> list[str]:
    """Schemes that fit a weight of ``shape`` (and ``kind``) with their default parameters, sorted."""
    return [n for n in list_schemes() if _REGISTRY[n].fits(shape, kind) is None]


def weight_kind(weight: Tensor, groups: int | None = None) -> str:
    """Layer kind of a weight: ``fc`` (2-D), ``pointwise`` (1x1), ``depthwise`` or ``conv``.

    With ``groups`` (the conv's ``groups``) the answer is exact: depthwise when
    ``groups == in_channels == out_channels``. Without it a 4-D weight of shape ``(C, 1, k, k)``
    with ``C > 1`` and ``k > 1`` is taken as depthwise; a dense conv with a single input channel has
    the same shape, and every scheme gives it the same mask either way.
    """
    shape = tuple(weight.shape)
    if len(shape) == 2:
        return "fc"
    if len(shape) != 4:
        raise SchemeError(
            f"weight of shape {list(shape)} is neither a Linear (2-D) nor a Conv2d (4-D) weight"
        )
    out_c, in_per_group, kh, kw = shape
    if groups is not None:
        depthwise = groups > 1 and in_per_group == 1 and groups == out_c
    else:
        depthwise = in_per_group == 1 and out_c > 1 and (kh, kw) != (1, 1)
    if depthwise:
        return "depthwise"
    return "pointwise" if (kh, kw) == (1, 1) else "conv"


def achieved_rate(mask: Tensor) -> float:
    """``numel / kept`` of a mask (``inf`` when nothing is kept); what gets logged as the rate."""
    kept = int(torch.count_nonzero(mask))
    return mask.numel() / kept if kept else math.inf


def check_rate(rate: Any, *, layer_name: str = "weight", scheme: str = "?") -> float:
    """Validate a pruning rate: a finite real number >= 1 (1 keeps everything)."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not math.isfinite(float(rate)) \
            or float(rate) < 1.0:
        raise SchemeError(
            f"rate={rate!r} for layer {layer_name!r} (scheme {scheme!r}): expected a finite number >= 1 "
            "(rate r keeps numel/r weights; 1 keeps everything)"
        )
    return float(rate)
