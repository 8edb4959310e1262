"""Tests for npas_lightning.layers: enumeration of searchable layers on real timm models."""

import io

import pytest
import timm
import torch
from rich.console import Console
from torch import nn

from npas_lightning.layers import LayerInfo, enumerate_layers, layer_kind, layers_table

MODELS = ["efficientnet_b0", "mobilenetv3_large_100", "resnet18"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny inputs: intra-op threads only add sync overhead on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=MODELS)
def model_and_layers(request):
    torch.manual_seed(0)
    model = timm.create_model(request.param, pretrained=False, num_classes=10)
    return request.param, model, enumerate_layers(model, torch.randn(2, 3, 32, 32))


def test_every_conv_and_linear_listed_in_order(model_and_layers):
    _, model, layers = model_and_layers
    names = [li.name for li in layers]
    expected = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert sorted(names) == sorted(expected)
    # execution order: the stem conv first, the classifier last
    assert names[0] == model.pretrained_cfg["first_conv"]
    assert names[-1] == model.pretrained_cfg["classifier"]


def test_fields_match_modules(model_and_layers):
    _, model, layers = model_and_layers
    modules = dict(model.named_modules())
    for li in layers:
        assert isinstance(li, LayerInfo)
        m = modules[li.name]
        assert li.params == sum(p.numel() for p in m.parameters(recurse=False))
        assert li.input_shape[0] == 2 and li.output_shape[0] == 2
        if isinstance(m, nn.Conv2d):
            assert li.in_channels == m.in_channels and li.out_channels == m.out_channels
            assert li.kernel_size == tuple(m.kernel_size) and li.stride == tuple(m.stride)
            assert li.output_shape[1] == m.out_channels
            h, w = li.output_shape[2:]
            assert li.macs == h * w * m.out_channels * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            assert li.kind == "fc" and li.macs == m.in_features * m.out_features
        assert li.skip_preserves_shape == (li.input_shape == li.output_shape)


def test_kinds(model_and_layers):
    name, _, layers = model_and_layers
    kinds = {li.kind for li in layers}
    if name == "resnet18":
        assert kinds == {"conv", "pointwise", "fc"}
    else:
        assert kinds == {"conv", "depthwise", "pointwise", "fc"}
    for li in layers:
        if li.kind == "depthwise":
            assert li.groups == li.in_channels == li.out_channels
        if li.kind == "pointwise":
            assert li.kernel_size == (1, 1) and li.groups == 1


def test_known_layers_resnet18():
    model = timm.create_model("resnet18", pretrained=False)
    layers = {li.name: li for li in enumerate_layers(model, torch.randn(1, 3, 32, 32))}
    c = layers["layer1.0.conv1"]
    assert (c.kind, c.in_channels, c.out_channels, c.kernel_size, c.stride) == ("conv", 64, 64, (3, 3), (1, 1))
    assert c.input_shape == (1, 64, 8, 8) and c.skip_preserves_shape
    assert c.macs == 8 * 8 * 64 * 64 * 9
    d = layers["layer2.0.downsample.0"]
    assert d.kind == "pointwise" and d.stride == (2, 2) and not d.skip_preserves_shape
    assert layers["fc"].macs == 512 * 1000 and layers["fc"].params == 512 * 1000 + 1000


def test_table_renders(model_and_layers):
    _, _, layers = model_and_layers
    console = Console(file=io.StringIO(), width=250)
    console.print(layers_table(layers))
    out = console.file.getvalue()
    assert layers[1].name in out and "total" in out


def test_training_flag_restored():
    model = timm.create_model("resnet18", pretrained=False).train()
    enumerate_layers(model, torch.randn(1, 3, 32, 32))
    assert model.training


def test_bad_inputs():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        enumerate_layers("resnet18", torch.randn(1, 3, 32, 32))
    with pytest.raises(TypeError, match="example_input must be a torch.Tensor"):
        enumerate_layers(nn.Conv2d(3, 3, 3), [1, 2])
    with pytest.raises(ValueError, match="ran no torch.nn.Conv2d or torch.nn.Linear"):
        enumerate_layers(nn.ReLU(), torch.randn(1, 3))
    with pytest.raises(TypeError, match="is not searchable"):
        layer_kind(nn.ReLU())
