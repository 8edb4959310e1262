"""Per-layer filter-type candidates (paper Table 1) and the unidirectional rule (paper 5.2.3).

A candidate replaces one ``nn.Conv2d`` (only the conv: the BN/activation that follow it in the timm
block stay where they are) and keeps its output shape and stride. Inside a cascade, a norm +
activation sits between consecutive convs, like timm's ``DepthwiseSeparableConv`` /
``InvertedResidual``; the last conv has a bias (so a reconstruction fit can match the mean) and no
norm/activation of its own, since the block's norm/activation follow it.

===================  ==========================================================================
filter type          structure for a k x k conv, Cin -> Cout, stride s
===================  ==========================================================================
``keep``             the original layer
``1x1``              1x1 conv, stride s
``3x3``              3x3 conv, stride s (dense layers: only offered for k > 3; depthwise layers:
                     a 3x3 depthwise conv, offered for k > 3)
``3x3dw_1x1``        3x3 depthwise (stride s) -> norm -> act -> 1x1 (Cin -> Cout)
``1x1_3x3dw_1x1``    1x1 (Cin -> M) -> norm -> act -> 3x3 depthwise (stride s) -> norm -> act ->
                     1x1 (M -> Cout), M = round(expansion * Cin)
``skip``             identity (only where Cin == Cout, stride 1 and padding keeps the spatial size)
===================  ==========================================================================

Which candidates a layer gets (:func:`candidate_filter_types`):

* dense k x k conv (k >= 3): keep, 1x1, 3x3 (k > 3), 3x3dw_1x1, 1x1_3x3dw_1x1, skip.
* pointwise 1x1 conv and ``nn.Linear``: keep, skip (nothing has a smaller kernel).
* depthwise k x k conv: keep, 3x3 (depthwise, k > 3), 3x3dw_1x1 (3x3 depthwise + 1x1 channel mix),
  skip. Not offered: 1x1 (a 1x1 depthwise conv is a per-channel scale, no spatial context) and
  1x1_3x3dw_1x1 (two dense 1x1 convs around a depthwise conv: an inverted-residual block inside a
  block).
* grouped (not depthwise), dilated, non-square or even-sized kernels, and convs padded less than
  (k-1)/2 (a smaller kernel could not keep the output size): keep, skip.

A candidate never has a larger kernel than the original: asking for one raises
:class:`FilterTypeError` (the unidirectional rule), as does a skip where shapes do not allow it.
Each candidate knows its cost: ``FilterCandidate.macs(input_hw)`` and ``.num_params()``; MACs count
convolutions only (norms fold into the convs at inference, activations are element-wise).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from torch import nn

from npas_lightning.layers import LayerInfo

__all__ = [
    "FILTER_TYPES",
    "FilterCandidate",
    "FilterTypeError",
    "allowed_filter_types",
    "build_candidate",
    "candidate_cost",
    "candidate_filter_types",
]

FILTER_TYPES: tuple[str, ...] = ("keep", "1x1", "3x3", "3x3dw_1x1", "1x1_3x3dw_1x1", "skip")

# the largest kernel side each filter type uses
_KERNEL = {"1x1": 1, "3x3": 3, "3x3dw_1x1": 3, "1x1_3x3dw_1x1": 3}


class FilterTypeError(ValueError):
    """A filter type that does not exist or does not fit the layer (names layer, type, alternatives)."""


class FilterCandidate(nn.Sequential):
    """A filter-type candidate: an ``nn.Sequential`` tagged with its ``filter_type``.

    ``skip`` is an empty Sequential (identity). ``keep`` wraps the original layer.
    """

    def __init__(self, filter_type: str, modules: OrderedDict[str, nn.Module] | None = None,
                 expansion: float = 1.0):
        super().__init__(modules or OrderedDict())
        self.filter_type = filter_type
        self.expansion = expansion

    def extra_repr(self) -> str:
        return f"filter_type={self.filter_type!r}"

    def __getitem__(self, idx: int | slice) -> nn.Module:
        if isinstance(idx, slice):  # a slice is a plain Sequential (not a candidate of this type)
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)

    def macs(self, input_hw: tuple[int, int]) -> int:
        """Multiply-accumulates per sample for an input of spatial size ``input_hw``."""
        h, w = input_hw
        total = 0
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                (kh, kw), (sh, sw), (ph, pw) = m.kernel_size, m.stride, m.padding
                h = (h + 2 * ph - kh) // sh + 1
                w = (w + 2 * pw - kw) // sw + 1
                total += h * w * m.out_channels * (m.in_channels // m.groups) * kh * kw
            elif isinstance(m, nn.Linear):
                total += m.in_features * m.out_features
        return int(total)

    def num_params(self) -> int:
        """Trainable parameters (norm affine parameters included)."""
        return sum(p.numel() for p in self.parameters())


def _square(v: tuple[int, ...] | int) -> int | None:
    t = (v, v) if isinstance(v, int) else tuple(v)
    return int(t[0]) if t[0] == t[1] else None


def _geometry(conv: nn.Module) -> dict[str, Any]:
    """Kind, kernel, stride, padding and whether the layer supports smaller-kernel candidates."""
    if isinstance(conv, nn.Linear):
        return dict(kind="fc", k=1, s=1, p=0, cin=conv.in_features, cout=conv.out_features,
                    reducible=False, skip_ok=conv.in_features == conv.out_features)
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(
            f"filter-type candidates need a torch.nn.Conv2d or torch.nn.Linear layer, got {type(conv).__name__}"
        )
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    k, s = _square(conv.kernel_size), _square(conv.stride)
    p = _square(conv.padding) if not isinstance(conv.padding, str) else None
    d = _square(conv.dilation)
    regular = None not in (k, s, p) and d == 1 and conv.padding_mode == "zeros"
    if depthwise:
        kind = "depthwise"
    elif k == 1:
        kind = "pointwise"
    else:
        kind = "conv"
    grouped = conv.groups > 1 and not depthwise
    reducible = regular and not grouped and k is not None and k >= 3 and (k - 1) // 2 <= p and k % 2 == 1
    skip_ok = (conv.in_channels == conv.out_channels and s == 1 and regular and p is not None
               and 2 * p == k - 1)
    return dict(kind=kind, k=k, s=s, p=p, cin=conv.in_channels, cout=conv.out_channels,
                reducible=reducible, skip_ok=skip_ok)


def _allowed(g: dict[str, Any]) -> list[str]:
    out = ["keep"]
    if g["reducible"]:
        if g["kind"] == "conv":
            out += ["1x1"] + (["3x3"] if g["k"] > 3 else []) + ["3x3dw_1x1", "1x1_3x3dw_1x1"]
        elif g["kind"] == "depthwise":
            out += (["3x3"] if g["k"] > 3 else []) + ["3x3dw_1x1"]
    if g["skip_ok"]:
        out.append("skip")
    return out


def allowed_filter_types(conv: nn.Module) -> list[str]:
    """Filter types offered for a Conv2d/Linear module (same rules as :func:`candidate_filter_types`)."""
    return _allowed(_geometry(conv))


def candidate_filter_types(layer: LayerInfo) -> list[str]:
    """Filter types offered for ``layer``, in ``FILTER_TYPES`` order.

    Never a larger kernel than the layer's (1x1 layers and FC get ``keep``/``skip`` only); ``skip``
    only where ``layer.skip_preserves_shape``.
    """
    if not isinstance(layer, LayerInfo):
        raise TypeError(f"candidate_filter_types: layer must be a LayerInfo, got {type(layer).__name__}")
    if layer.kind == "fc":
        return ["keep", "skip"] if layer.skip_preserves_shape else ["keep"]
    k = layer.kernel_size[0] if layer.kernel_size[0] == layer.kernel_size[1] else None
    s = layer.stride[0] if layer.stride[0] == layer.stride[1] else None
    p = layer.padding[0] if layer.padding[0] == layer.padding[1] else None
    grouped = layer.groups > 1 and layer.kind != "depthwise"
    reducible = (None not in (k, s, p) and not grouped and k >= 3 and k % 2 == 1 and (k - 1) // 2 <= p)
    g = dict(kind=layer.kind, k=k, reducible=reducible, skip_ok=layer.skip_preserves_shape)
    return _allowed(g)


def _mid_channels(cin: int, expansion: float) -> int:
    return max(1, int(round(cin * expansion)))


def _act(act_layer: Callable[..., nn.Module] | type[nn.Module]) -> nn.Module:
    return act_layer()


def _error(filter_type: str, layer_name: str, g: dict[str, Any], reason: str) -> FilterTypeError:
    return FilterTypeError(
        f"filter_type={filter_type!r} for layer {layer_name!r} ({g['kind']}, {g['k']}x{g['k']} kernel, "
        f"{g['cin']} -> {g['cout']} channels, stride {g['s']}): {reason}; "
        f"filter types this layer accepts: {_allowed(g)}"
    )


def build_candidate(
    filter_type: str,
    conv: nn.Module,
    *,
    expansion: float = 1.0,
    act_layer: Callable[..., nn.Module] | type[nn.Module] = nn.ReLU,
    norm_layer: Callable[[int], nn.Module] | type[nn.Module] = nn.BatchNorm2d,
    layer_name: str = "<layer>",
) -> FilterCandidate:
    """Build the ``filter_type`` candidate replacing ``conv`` (freshly initialised weights).

    Args:
        filter_type: one of ``FILTER_TYPES``.
        conv: the original ``nn.Conv2d`` (or ``nn.Linear`` for keep/skip).
        expansion: ``1x1_3x3dw_1x1`` hidden width as a multiple of the input channels (> 0).
        act_layer / norm_layer: inner activation and norm of cascades; pass the surrounding block's
            (``apply_filter_types`` does).
        layer_name: used in error messages.

    Raises:
        FilterTypeError: unknown type, a larger kernel than the layer's (unidirectional rule), a
            skip that would change the shape, or a type not offered for this layer kind.

    Example::

        >>> cand = build_candidate("3x3dw_1x1", nn.Conv2d(32, 64, 5, stride=2, padding=2))
        >>> [type(m).__name__ for m in cand]
        ['Conv2d', 'BatchNorm2d', 'ReLU', 'Conv2d']
    """
    g = _geometry(conv)
    if filter_type not in FILTER_TYPES:
        raise FilterTypeError(
            f"filter_type={filter_type!r} for layer {layer_name!r} is unknown; accepted: {list(FILTER_TYPES)}"
        )
    if not expansion > 0:
        raise ValueError(f"build_candidate: expansion must be > 0, got {expansion!r}")
    if filter_type == "keep":
        return FilterCandidate("keep", OrderedDict(layer=conv))
    if filter_type == "skip":
        if not g["skip_ok"]:
            raise _error(filter_type, layer_name, g, "an identity would change the output shape "
                         "(skip needs equal in/out channels, stride 1 and size-preserving padding)")
        return FilterCandidate("skip")
    k_new = _KERNEL[filter_type]
    if g["k"] is not None and k_new > g["k"]:
        raise _error(filter_type, layer_name, g,
                     f"a {k_new}x{k_new} kernel is larger than the layer's {g['k']}x{g['k']} kernel, and the "
                     "unidirectional rule (paper 5.2.3) never increases a kernel")
    allowed = _allowed(g)
    if filter_type not in allowed:
        raise _error(filter_type, layer_name, g, "not offered for this layer kind")
    cin, cout, s = g["cin"], g["cout"], g["s"]
    p_new = g["p"] - (g["k"] - k_new) // 2  # keeps the output size: (H + 2p - k) = (H + 2p' - k')
    mods: OrderedDict[str, nn.Module] = OrderedDict()
    if filter_type in ("1x1", "3x3"):
        groups = cin if g["kind"] == "depthwise" else 1
        mods["conv"] = nn.Conv2d(cin, cout, k_new, stride=s, padding=p_new, groups=groups, bias=True)
    elif filter_type == "3x3dw_1x1":
        mods["dw"] = nn.Conv2d(cin, cin, 3, stride=s, padding=p_new, groups=cin, bias=False)
        mods["bn"] = norm_layer(cin)
        mods["act"] = _act(act_layer)
        mods["pw"] = nn.Conv2d(cin, cout, 1, bias=True)
    else:  # 1x1_3x3dw_1x1
        mid = _mid_channels(cin, expansion)
        mods["pw1"] = nn.Conv2d(cin, mid, 1, bias=False)
        mods["bn1"] = norm_layer(mid)
        mods["act1"] = _act(act_layer)
        mods["dw"] = nn.Conv2d(mid, mid, 3, stride=s, padding=p_new, groups=mid, bias=False)
        mods["bn2"] = norm_layer(mid)
        mods["act2"] = _act(act_layer)
        mods["pw2"] = nn.Conv2d(mid, cout, 1, bias=True)
    return FilterCandidate(filter_type, mods, expansion=expansion)


def candidate_cost(filter_type: str, layer: LayerInfo, *, expansion: float = 1.0) -> tuple[int, int]:
    """(MACs per sample, params) of ``filter_type`` on ``layer``, computed from shapes alone.

    Conv MACs only; params count weights, biases and the cascade's norm affine parameters, as
    ``FilterCandidate.num_params`` does. ``keep`` returns the layer's own numbers.
    """
    if filter_type not in candidate_filter_types(layer):
        raise FilterTypeError(
            f"filter_type={filter_type!r} for layer {layer.name!r} is not offered; "
            f"filter types this layer accepts: {candidate_filter_types(layer)}"
        )
    if filter_type == "keep":
        return layer.macs, layer.params
    if filter_type == "skip":
        return 0, 0
    cin, cout = layer.in_channels, layer.out_channels
    hw = layer.output_shape[2] * layer.output_shape[3]
    depthwise = layer.kind == "depthwise"
    if filter_type in ("1x1", "3x3"):
        k2 = 1 if filter_type == "1x1" else 9
        per = 1 if depthwise else cin
        return hw * cout * per * k2, cout * per * k2 + cout
    if filter_type == "3x3dw_1x1":
        return hw * (cin * 9 + cin * cout), cin * 9 + 2 * cin + cin * cout + cout
    mid = _mid_channels(cin, expansion)
    in_hw = layer.input_shape[2] * layer.input_shape[3]
    macs = in_hw * cin * mid + hw * (mid * 9 + mid * cout)
    params = cin * mid + 2 * mid + mid * 9 + 2 * mid + mid * cout + cout
    return macs, params
