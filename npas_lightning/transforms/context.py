"""Where a layer sits in its model: parent lookup and the surrounding block's activation."""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial

from torch import nn

__all__ = ["get_parent", "surrounding_activation"]


def get_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(parent module, attribute name) of the submodule called ``name``.

    Raises:
        KeyError: naming ``name`` when the model has no such submodule.
    """
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        close = [n for n in modules if n and n.split(".")[-1] == name.split(".")[-1]][:5]
        raise KeyError(f"layer {name!r} is not a submodule of {type(model).__name__}; similar names: {close}")
    parent_name, _, attr = name.rpartition(".")
    return modules[parent_name], attr


def _is_activation(m: nn.Module) -> bool:
    mod = type(m).__module__
    return mod == "torch.nn.modules.activation" or mod.startswith("timm.layers.activations")


_NOT_BLOCK_ACTS = ("se", "attn", "gate", "sigmoid", "softmax")


def surrounding_activation(model: nn.Module, name: str) -> Callable[[], nn.Module]:
    """A factory for the activation the block around layer ``name`` uses (``nn.ReLU`` if none).

    Looks at the layer's parent, then grandparents, for the first activation module in definition
    order that is not inside an attention/SE branch and is not a gate (sigmoid-like), e.g.
    ``blocks.1.0.bn1.act`` for ``blocks.1.0.conv_dw`` in efficientnet, ``layer1.0.act1`` in resnet.
    """
    parts = name.split(".")
    modules = dict(model.named_modules())
    for depth in range(len(parts) - 1, -1, -1):
        parent_name = ".".join(parts[:depth])
        parent = modules.get(parent_name)
        if parent is None:
            continue
        for sub_name, sub in parent.named_modules():
            if not sub_name or not _is_activation(sub):
                continue
            pieces = sub_name.lower().split(".")
            if any(p.startswith(_NOT_BLOCK_ACTS) for p in pieces):
                continue
            if isinstance(sub, (nn.Sigmoid, nn.Hardsigmoid, nn.Softmax, nn.Tanh)):
                continue
            return partial(copy.deepcopy, sub)
    return nn.ReLU
