"""Filter-type candidates: shapes, strides, costs and the unidirectional rule on real timm layers."""

import pytest
import timm
import torch
from torch import nn

from npas_lightning.layers import enumerate_layers
from npas_lightning.transforms import (
    FILTER_TYPES,
    FilterTypeError,
    allowed_filter_types,
    build_candidate,
    candidate_cost,
    candidate_filter_types,
)

MODELS = ["efficientnet_b0", "mobilenetv3_large_100", "resnet18"]


@pytest.fixture(scope="module", params=MODELS)
def model_layers(request):
    torch.manual_seed(0)
    model = timm.create_model(request.param, pretrained=False, num_classes=10).eval()
    return request.param, model, enumerate_layers(model, torch.randn(1, 3, 32, 32))


def test_filter_types_constant():
    assert FILTER_TYPES == ("keep", "1x1", "3x3", "3x3dw_1x1", "1x1_3x3dw_1x1", "skip")


@torch.no_grad()
def test_every_candidate_preserves_shape_and_stride(model_layers):
    _, model, layers = model_layers
    modules = dict(model.named_modules())
    seen_kinds = set()
    for li in layers:
        layer = modules[li.name]
        fts = candidate_filter_types(li)
        assert fts == allowed_filter_types(layer)
        assert fts[0] == "keep"
        for ft in fts:
            cand = build_candidate(ft, layer, layer_name=li.name).eval()
            seen_kinds.add(li.kind)
            x = torch.randn(li.input_shape)
            assert cand(x).shape == li.output_shape, (li.name, ft)
            if li.kind == "fc":
                continue
            # stride and padding hold for other input sizes too (odd size exercises rounding)
            x_odd = torch.randn(1, li.in_channels, 13, 11)
            assert cand(x_odd).shape == layer(x_odd).shape, (li.name, ft)
            strides = {tuple(m.stride) for m in cand.modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)}
            assert strides <= {li.stride}
            kernels = [m.kernel_size[0] for m in cand.modules() if isinstance(m, nn.Conv2d)]
            assert all(k <= li.kernel_size[0] for k in kernels), (li.name, ft)  # unidirectional
            if ft not in ("keep", "skip"):
                assert (cand.macs(li.input_shape[2:]), cand.num_params()) == candidate_cost(ft, li)
    assert {"conv", "pointwise", "fc"} <= seen_kinds


def test_offered_types_per_kind(model_layers):
    name, _, layers = model_layers
    by_name = {li.name: li for li in layers}
    for li in layers:
        fts = candidate_filter_types(li)
        if li.kind in ("pointwise", "fc"):
            assert set(fts) <= {"keep", "skip"}
        if "skip" in fts:
            assert li.skip_preserves_shape
        if li.kind == "depthwise":
            assert "1x1" not in fts and "1x1_3x3dw_1x1" not in fts
            assert ("3x3" in fts) == (li.kernel_size[0] > 3)
    if name == "resnet18":
        assert candidate_filter_types(by_name["layer1.0.conv1"]) == [
            "keep", "1x1", "3x3dw_1x1", "1x1_3x3dw_1x1", "skip"]
        assert candidate_filter_types(by_name["conv1"]) == ["keep", "1x1", "3x3", "3x3dw_1x1", "1x1_3x3dw_1x1"]
        assert candidate_filter_types(by_name["layer2.0.conv1"]) == ["keep", "1x1", "3x3dw_1x1", "1x1_3x3dw_1x1"]
    if name == "efficientnet_b0":
        assert candidate_filter_types(by_name["blocks.2.1.conv_dw"]) == ["keep", "3x3", "3x3dw_1x1", "skip"]
        assert candidate_filter_types(by_name["blocks.2.0.conv_dw"]) == ["keep", "3x3", "3x3dw_1x1"]


def test_candidate_structure_and_costs():
    conv = nn.Conv2d(32, 64, 5, stride=2, padding=2, bias=False)
    cand = build_candidate("3x3dw_1x1", conv, act_layer=nn.Hardswish)
    assert [type(m).__name__ for m in cand] == ["Conv2d", "BatchNorm2d", "Hardswish", "Conv2d"]
    assert cand.dw.groups == 32 and cand.dw.stride == (2, 2) and cand.pw.bias is not None
    assert cand.macs((16, 16)) == 8 * 8 * (32 * 9 + 32 * 64)
    cand = build_candidate("1x1_3x3dw_1x1", conv, expansion=2.0)
    assert cand.pw1.out_channels == 64 and cand.dw.groups == 64
    assert cand.macs((16, 16)) == 16 * 16 * 32 * 64 + 8 * 8 * (64 * 9 + 64 * 64)
    skip = build_candidate("skip", nn.Conv2d(8, 8, 3, padding=1))
    x = torch.randn(1, 8, 5, 5)
    assert torch.equal(skip(x), x) and skip.macs((5, 5)) == 0 and skip.num_params() == 0


def test_unidirectional_rule_error():
    pw = nn.Conv2d(16, 32, 1)
    with pytest.raises(FilterTypeError, match=r"filter_type='3x3' for layer 'blocks.1.0.conv_pw'.*3x3 kernel is "
                       r"larger than the layer's 1x1 kernel.*unidirectional rule.*accepts: \['keep'\]"):
        build_candidate("3x3", pw, layer_name="blocks.1.0.conv_pw")
    with pytest.raises(FilterTypeError, match="3x3dw_1x1.*larger than the layer's 1x1 kernel"):
        build_candidate("3x3dw_1x1", nn.Conv2d(16, 16, 1))
    with pytest.raises(FilterTypeError, match="larger than the layer's 1x1 kernel"):
        build_candidate("3x3", nn.Linear(8, 8))


def test_other_candidate_errors():
    with pytest.raises(FilterTypeError, match=r"filter_type='5x5' for layer '<layer>' is unknown; accepted: \['keep'"):
        build_candidate("5x5", nn.Conv2d(3, 3, 3, padding=1))
    with pytest.raises(FilterTypeError, match="an identity would change the output shape"):
        build_candidate("skip", nn.Conv2d(8, 8, 3, stride=2, padding=1))
    with pytest.raises(FilterTypeError, match="filter_type='1x1'.*not offered for this layer kind"):
        build_candidate("1x1", nn.Conv2d(8, 8, 3, padding=1, groups=8))
    with pytest.raises(FilterTypeError, match="filter_type='3x3'.*not offered"):
        build_candidate("3x3", nn.Conv2d(8, 8, 3, padding=1))  # same kernel: identical to keep
    with pytest.raises(ValueError, match="expansion must be > 0, got 0"):
        build_candidate("1x1_3x3dw_1x1", nn.Conv2d(8, 8, 3, padding=1), expansion=0)
    with pytest.raises(TypeError, match="need a torch.nn.Conv2d or torch.nn.Linear layer, got ReLU"):
        build_candidate("keep", nn.ReLU())
    with pytest.raises(TypeError, match="layer must be a LayerInfo"):
        candidate_filter_types(nn.Conv2d(3, 3, 3))
    # a conv padded less than (k-1)/2 cannot take a smaller kernel and keep its output size
    assert allowed_filter_types(nn.Conv2d(8, 8, 3, padding=0)) == ["keep"]
