"""Searchable-layer enumeration: the skeleton of the NPAS search space.

Every ``nn.Conv2d`` and ``nn.Linear`` that runs in a real forward pass is listed in execution order
with its kind, shapes, stride, MACs and parameter count.

Example::

    >>> import timm, torch
    >>> model = timm.create_model("resnet18", pretrained=False)
    >>> layers = enumerate_layers(model, torch.randn(1, 3, 32, 32))
    >>> layers[0].name, layers[0].kind
    ('conv1', 'conv')
    >>> rich.print(layers_table(layers))  # doctest: +SKIP

Kinds:
    ``depthwise``  Conv2d with ``groups == in_channels == out_channels`` (any kernel size),
    ``pointwise``  a 1x1 Conv2d that is not depthwise (grouped 1x1 convs included; ``groups`` says so),
    ``conv``       every other Conv2d (k x k, ``groups`` recorded for grouped convs),
    ``fc``         ``nn.Linear``.

MACs and params are per sample (batch size 1), whatever batch the example input has; shapes keep the
example input's batch dimension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from rich.table import Table
from torch import nn

__all__ = ["LayerInfo", "enumerate_layers", "layer_kind", "layers_table"]


@dataclass(frozen=True)
class LayerInfo:
    """One searchable layer (Conv2d or Linear) as seen in a real forward pass."""

    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    macs: int
    params: int
    skip_preserves_shape: bool


def _pair(v: int | tuple[int, ...] | str) -> tuple[int, int]:
    if isinstance(v, str):  # padding="same"/"valid": reported as the effective symmetric padding later
        return (-1, -1)
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def layer_kind(module: nn.Module) -> str:
    """Kind of a Conv2d/Linear module: "conv", "depthwise", "pointwise" or "fc".

    Raises:
        TypeError: for any other module type.
    """
    if isinstance(module, nn.Linear):
        return "fc"
    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels == module.out_channels:
            return "depthwise"
        if tuple(module.kernel_size) == (1, 1):
            return "pointwise"
        return "conv"
    raise TypeError(
        f"layer_kind: module of type {type(module).__name__} is not searchable; "
        "accepted types are torch.nn.Conv2d and torch.nn.Linear"
    )


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def _info(name: str, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> LayerInfo:
    in_shape, out_shape = tuple(x.shape), tuple(y.shape)
    if isinstance(module, nn.Linear):
        # every position other than batch and features is an independent matmul row
        rows = math.prod(out_shape[1:-1]) if len(out_shape) > 2 else 1
        macs = rows * module.in_features * module.out_features
        return LayerInfo(
            name=name, kind="fc", in_channels=module.in_features, out_channels=module.out_features,
            kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), groups=1,
            input_shape=in_shape, output_shape=out_shape, macs=int(macs), params=_params(module),
            skip_preserves_shape=in_shape == out_shape,
        )
    kh, kw = _pair(module.kernel_size)
    out_hw = math.prod(out_shape[2:])
    macs = out_hw * module.out_channels * (module.in_channels // module.groups) * kh * kw
    padding = _pair(module.padding)
    if padding == (-1, -1):  # string padding: derive the symmetric equivalent from the real shapes
        padding = tuple(
            max(0, ((o - 1) * s + d * (k - 1) + 1 - i) // 2)
            for i, o, s, d, k in zip(in_shape[2:], out_shape[2:], module.stride, module.dilation,
                                     (kh, kw), strict=True)
        )
    return LayerInfo(
        name=name, kind=layer_kind(module), in_channels=module.in_channels,
        out_channels=module.out_channels, kernel_size=(kh, kw), stride=_pair(module.stride),
        padding=padding, groups=module.groups, input_shape=in_shape, output_shape=out_shape,
        macs=int(macs), params=_params(module), skip_preserves_shape=in_shape == out_shape,
    )


@torch.no_grad()
def enumerate_layers(model: nn.Module, example_input: torch.Tensor) -> list[LayerInfo]:
    """List every Conv2d/Linear of ``model`` that runs on ``example_input``, in execution order.

    The model runs once in eval mode (its training flag is restored afterwards). A module called
    several times is listed once, with the shapes of its first call.

    Raises:
        TypeError: if ``model`` is not an nn.Module or ``example_input`` not a tensor.
        ValueError: if the model has no Conv2d/Linear layer that runs on the input.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"enumerate_layers: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(
            f"enumerate_layers: example_input must be a torch.Tensor, got {type(example_input).__name__}"
        )
    found: dict[str, LayerInfo] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            def hook(mod, args, out, _name=name):
                if _name not in found and args and isinstance(args[0], torch.Tensor):
                    found[_name] = _info(_name, mod, args[0], out)
            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(example_input)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not found:
        raise ValueError(
            f"enumerate_layers: model {type(model).__name__} ran no torch.nn.Conv2d or torch.nn.Linear "
            f"layer on an input of shape {tuple(example_input.shape)}; nothing to search"
        )
    return list(found.values())


def _fmt_count(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def layers_table(layers: list[LayerInfo], title: str | None = "Searchable layers") -> Table:
    """A rich table of ``layers`` (one row each plus a total row)."""
    table = Table(title=title)
    for col, justify in (("#", "right"), ("name", "left"), ("kind", "left"), ("k", "center"),
                         ("stride", "center"), ("groups", "right"), ("in -> out", "right"),
                         ("input shape", "left"), ("output shape", "left"), ("MACs", "right"),
                         ("params", "right"), ("skip ok", "center")):
        table.add_column(col, justify=justify)
    for i, li in enumerate(layers):
        table.add_row(
            str(i), li.name, li.kind, f"{li.kernel_size[0]}x{li.kernel_size[1]}",
            f"{li.stride[0]}x{li.stride[1]}", str(li.groups), f"{li.in_channels} -> {li.out_channels}",
            str(li.input_shape), str(li.output_shape), _fmt_count(li.macs), _fmt_count(li.params),
            "yes" if li.skip_preserves_shape else "no",
        )
    table.add_section()
    table.add_row("", f"total ({len(layers)} layers)", "", "", "", "", "", "", "",
                  _fmt_count(sum(li.macs for li in layers)), _fmt_count(sum(li.params for li in layers)), "")
    return table
