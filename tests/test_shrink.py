"""Physical shrink of filter-pruned timm models: identical outputs, fewer parameters, honest report."""

from __future__ import annotations

import pytest
import timm
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from npas_lightning.algorithms.masking import apply_masks, compute_masks
from npas_lightning.plan import NPASScheme
from npas_lightning.shrink import shrink_filter_pruned


def _trained_like(name: str):
    """``name`` with non-trivial BatchNorm statistics and affine, as after training: a removed channel
    whose BN bias were kept would output a non-zero constant."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, pretrained=False).eval()
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model


def _masked(name: str):
    model = _trained_like(name)
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


def _block_sparse(name: str, rate: float = 5.0):
    """``name`` with non-trivial BatchNorms, masked by the uniform block-structured plan of
    ``benchmarks/bench_sparse_models.py`` (block_based 1x1 convs, block_punched kxk convs)."""
    model = _trained_like(name)
    first = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))
    spec = {}
    for n, m in model.named_modules():
        if n != first and isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            one = isinstance(m, torch.nn.Linear) or (m.kernel_size == (1, 1) and m.groups == 1)
            spec[n] = {"scheme": "block_based" if one else "block_punched", "rate": rate,
                       "block": [16, 4] if one else [8, 4]}
    plan = NPASScheme.resolve(spec, model, exclude=[])
    apply_masks(model, compute_masks(model, plan), plan)
    return model, plan


def test_unread_channels_are_cut_with_identical_outputs():
    """At 5x the projections and squeeze-excite convs leave most expansion channels unread: the
    expansion filter, its depthwise channel and gate go with them; counts stay multiples of 8."""
    from npas_lightning.shrink import shrink_unread_channels

    model, _ = _block_sparse("efficientnet_b0")
    x = torch.randn(1, 3, 64, 64)
    small, report = shrink_unread_channels(model, x)
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-5)
    before, after = report.shrunk["blocks.1.0.conv_pw"]
    assert after < before == 96 and after % 8 == 0
    blk = small.blocks[1][0]
    assert blk.conv_dw.out_channels == blk.conv_dw.groups == after == blk.conv_pwl.in_channels
    assert blk.se.conv_reduce.in_channels == after == blk.se.conv_expand.out_channels
    # every channel left is read by the projection or the squeeze-excite conv, or kept to fill a multiple of 8
    read = (blk.conv_pwl.weight.detach().ne(0).any(0).flatten() | blk.se.conv_reduce.weight.detach().ne(0).any(0).flatten())
    assert int((~read).sum()) < 8
    assert report.params_after < report.params_before and model.blocks[1][0].conv_pw.out_channels == 96


def test_unread_channels_nothing_to_cut_and_bad_input():
    from npas_lightning.shrink import shrink_unread_channels

    model = timm.create_model("resnet18", num_classes=10, pretrained=False).eval()
    small, report = shrink_unread_channels(model, torch.randn(1, 3, 32, 32))
    assert report.shrunk == {} and report.params_after == report.params_before
    with pytest.raises(TypeError, match=r"example_input=list must be a torch.Tensor batch"):
        shrink_unread_channels(model, [torch.randn(1, 3, 32, 32)])
    with pytest.raises(ValueError, match=r"granule=0: expected an int >= 1 \(channels cut together\)"):
        shrink_unread_channels(model, torch.randn(1, 3, 32, 32), granule=0)
    with pytest.raises(ValueError, match=r"multiple=True: expected an int >= 1 \(channel counts stay multiples"):
        shrink_unread_channels(model, torch.randn(1, 3, 32, 32), multiple=True)


def test_frozen_for_compile_cuts_unread_channels_unless_switched_off(monkeypatch):
    import npas_lightning.shrink as shrink

    model, plan = _block_sparse("mobilenetv3_large_100")
    x = torch.randn(1, 3, 64, 64)
    frozen, info = shrink.frozen_for_compile(model, plan, x)
    cut = info["unread_channels_cut"]
    assert cut and all(after < before and after % 8 == 0 for before, after in cut.values())
    with torch.no_grad():
        assert torch.allclose(frozen(x), model(x), atol=1e-5)
    monkeypatch.setattr(shrink, "SHRINK_UNREAD_CHANNELS", False)
    assert "unread_channels_cut" not in shrink.frozen_for_compile(model, plan, x)[1]
