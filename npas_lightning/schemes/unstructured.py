"""Unstructured magnitude pruning: keep the ``round(numel / rate)`` largest-magnitude weights.

It is, literally, block-punched pruning with a 1x1 block (paper section 3): each group is one
weight, ranked by its magnitude. A Linear weight ``(F, C)`` is viewed as a ``(F, C, 1, 1)`` conv.
"""

from __future__ import annotations

from torch import Tensor

from npas_lightning.schemes.block_punched import block_punched_mask
from npas_lightning.schemes.registry import register_scheme

__all__ = ["unstructured"]


@register_scheme("unstructured", applies_to={"conv", "depthwise", "pointwise", "fc"})
def unstructured(weight: Tensor, rate: float) -> Tensor:
    """Keep the largest-magnitude weights anywhere (block-punched with block (1, 1))."""
    as_conv = weight if weight.dim() == 4 else weight.reshape(*weight.shape, 1, 1)
    return block_punched_mask(as_conv, rate, (1, 1)).reshape(weight.shape)
