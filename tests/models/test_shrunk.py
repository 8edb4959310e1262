"""The uniformly shrunk EfficientNet-B0 variants: registered in timm, narrower than B0, same depth."""

from __future__ import annotations

import timm
import torch

import npas_lightning.models  # noqa: F401  registers efficientnet_b0_cm050 / _cm075
from npas_lightning.models import ClassifierModule


def _convs(net: torch.nn.Module) -> list[torch.nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]


def test_shrunk_models_are_registered_and_shrink_every_width() -> None:
    full = timm.create_model("efficientnet_b0", num_classes=10, in_chans=1)
    params = {"efficientnet_b0": sum(p.numel() for p in full.parameters())}
    for name, factor in (("efficientnet_b0_cm075", 0.75), ("efficientnet_b0_cm050", 0.5)):
        assert timm.is_model(name)
        net = timm.create_model(name, num_classes=10, in_chans=1)
        full_convs, convs = _convs(full), _convs(net)
        assert len(convs) == len(full_convs)  # depth_multiplier=1.0: same layers, narrower
        for small, big in zip(convs, full_convs, strict=True):
            assert small.out_channels <= big.out_channels
        assert net.conv_stem.out_channels == round(32 * factor / 8) * 8
        assert net.num_features == int(full.num_features * factor)  # head width scales too: 640 / 960
        params[name] = sum(p.numel() for p in net.parameters())
        assert net(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert params["efficientnet_b0_cm050"] < params["efficientnet_b0_cm075"] < params["efficientnet_b0"]


def test_shrunk_model_config_builds_through_the_classifier(make_cfg) -> None:
    cfg = make_cfg("model=efficientnet_b0_cm050", "data=digits")
    assert cfg.model.backbone == "efficientnet_b0_cm050"
    module = ClassifierModule(backbone=cfg.model.backbone, num_classes=10, in_chans=3)
    assert module.net.conv_stem.out_channels == 16
