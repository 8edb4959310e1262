"""Physical shrink of filter-pruned timm models: identical outputs, fewer parameters, honest report."""

from __future__ import annotations

import pytest
import timm
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from npas_lightning.algorithms.masking import apply_masks, compute_masks
from npas_lightning.plan import NPASScheme
from npas_lightning.shrink import shrink_filter_pruned


def _masked(name: str):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, pretrained=False).eval()
    # Non-trivial BatchNorm statistics and affine, as after training: a removed channel whose BN
    # bias were kept would output a non-zero constant.
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    plan = NPASScheme.resolve({"*": {"scheme": "filter", "rate": 2}}, model)
    apply_masks(model, compute_masks(model, plan), plan)
    return model, plan


def test_resnet18_shrinks_with_identical_outputs():
    model, plan = _masked("resnet18")
    x = torch.randn(2, 3, 32, 32)
    small, report = shrink_filter_pruned(model, plan, x)
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-5)
    assert report.params_after < report.params_before
    assert sum(p.numel() for p in small.parameters()) == report.params_after
    conv1s = [n for n in plan if n.endswith(".conv1")]
    assert set(conv1s) <= set(report.shrunk)
    assert all(report.shrunk[n][1] == report.shrunk[n][0] // 2 for n in conv1s)
    # conv2 feeds the residual add: its channels are coupled with the other blocks of the stage
    assert "layer1.0.conv2" in report.kept_masked and "coupled" in report.kept_masked["layer1.0.conv2"]
    assert small.layer1[0].conv1.out_channels == 32 and model.layer1[0].conv1.out_channels == 64  # copy by default


def test_efficientnet_b0_shrinks_where_exact_and_reports_the_rest():
    model, plan = _masked("efficientnet_b0")
    x = torch.randn(1, 3, 32, 32)
    small, report = shrink_filter_pruned(model, plan, x)
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-5)
    assert report.params_after < report.params_before
    assert "conv_head" in report.shrunk and "blocks.6.0.conv_pwl" in report.shrunk
    # expansion convs feed a depthwise conv whose BN keeps a constant on the removed channels
    assert "depthwise conv" in report.kept_masked["blocks.1.0.conv_pw"]
    assert "groups=" in report.kept_masked["blocks.1.0.conv_dw"]
    assert len(report.shrunk) + len(report.kept_masked) == len([n for n, lp in plan.items() if lp.rate > 1])
    assert report.table().row_count == len(report.shrunk) + len(report.kept_masked)


def test_unmasked_layers_and_bad_input_are_reported_or_refused():
    model = timm.create_model("resnet18", num_classes=10, pretrained=False).eval()
    plan = NPASScheme.resolve({"layer1.0.conv1": {"scheme": "filter", "rate": 2}}, model)
    _, report = shrink_filter_pruned(model, plan, torch.randn(1, 3, 32, 32))
    assert report.kept_masked == {"layer1.0.conv1": "no all-zero output filter (is the model masked?)"}
    with pytest.raises(TypeError, match=r"example_input=list must be a torch.Tensor batch"):
        shrink_filter_pruned(model, plan, [torch.randn(1, 3, 32, 32)])
