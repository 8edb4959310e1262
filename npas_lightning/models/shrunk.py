"""EfficientNet-B0 shrunk uniformly with timm's channel multiplier: the "just make it smaller" baseline.

Registered as timm models, so every config and recipe builds them by name:

    >>> import timm, npas_lightning.models  # registers them
    >>> timm.create_model("efficientnet_b0_cm050", num_classes=10, in_chans=1).conv_stem.out_channels
    16

``cm050`` keeps 0.5x and ``cm075`` 0.75x of every layer's channels (rounded to multiples of 8 by timm),
at full depth, as the NPAS paper's Figure 5 compares against.
"""

from __future__ import annotations

from typing import Any

from timm.models import register_model
from timm.models.efficientnet import EfficientNet, _gen_efficientnet

__all__ = ["efficientnet_b0_cm050", "efficientnet_b0_cm075"]


def _shrunk_b0(channel_multiplier: float, pretrained: bool, **kwargs: Any) -> EfficientNet:
    """efficientnet_b0's block layout with every width scaled by ``channel_multiplier`` (depth unchanged)."""
    return _gen_efficientnet("efficientnet_b0", channel_multiplier=channel_multiplier, depth_multiplier=1.0,
                             pretrained=pretrained, **kwargs)


@register_model
def efficientnet_b0_cm050(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B0 with 0.5x channels (timm channel_multiplier=0.5)."""
    return _shrunk_b0(0.5, pretrained, **kwargs)


@register_model
def efficientnet_b0_cm075(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B0 with 0.75x channels (timm channel_multiplier=0.75)."""
    return _shrunk_b0(0.75, pretrained, **kwargs)
