"""Phase 1 activation swap on real timm models."""

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import activations as timm_act
from torch import nn

from npas_lightning.transforms import activation_counts, create_phase1_model, swap_activations


def _model(name, **kw):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10, **kw)


def test_efficientnet_b0_counts_and_keys():
    model = _model("efficientnet_b0")
    keys = list(model.state_dict().keys())
    report = swap_activations(model)
    assert report.before == {"SiLU": 49, "Sigmoid": 16}
    assert report.after == {"Hardsigmoid": 16, "Hardswish": 49}
    assert activation_counts(model) == report.after
    assert report.replaced == {"SiLU -> Hardswish": 49, "Sigmoid -> Hardsigmoid": 16}
    assert not report.nothing_to_swap and "swapped 65" in str(report)
    assert list(model.state_dict().keys()) == keys
    # every SE gate is now hard
    gates = [m.gate for n, m in model.named_modules() if n.endswith(".se")]
    assert len(gates) == 16 and all(isinstance(g, nn.Hardsigmoid) for g in gates)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name, acts", [
    ("resnet18", {"ReLU": 17}),
    ("mobilenetv3_large_100", {"Hardsigmoid": 8, "Hardswish": 21, "ReLU": 19}),
])
def test_nothing_to_swap(name, acts):
    model = _model(name)
    keys = list(model.state_dict().keys())
    report = swap_activations(model)
    assert report.nothing_to_swap and report.replaced == {}
    assert report.before == report.after == acts
    assert str(report).startswith("nothing to swap")
    assert list(model.state_dict().keys()) == keys


def test_mobilenetv3_with_swish_is_swapped():
    model = _model("mobilenetv3_large_100", act_layer="swish")
    report = swap_activations(model)
    assert report.replaced == {"SiLU -> Hardswish": 21}
    assert report.after == {"Hardsigmoid": 8, "Hardswish": 21, "ReLU": 19}


def test_timm_own_activation_classes_are_matched():
    # timm's Swish and Sigmoid classes (not torch's) through the constructor's act_layer / gate
    from functools import partial

    from timm.models._efficientnet_blocks import SqueezeExcite

    model = _model("efficientnet_b0", act_layer=timm_act.Swish,
                   se_layer=partial(SqueezeExcite, gate_layer=timm_act.Sigmoid))
    before = activation_counts(model)
    assert before == {"Sigmoid": 16, "Swish": 49}
    report = swap_activations(model)
    assert report.replaced == {"Swish -> Hardswish": 49, "Sigmoid -> Hardsigmoid": 16}


def test_function_gate_attribute_is_swapped():
    # Older timm SE modules held the gate as a plain function (self.gate_fn = torch.sigmoid); no
    # current timm model does, so a minimal module reproduces that layout.
    class FnGateSE(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Conv2d(4, 4, 1)
            self.gate_fn = torch.sigmoid
            self.act_fn = F.silu

        def forward(self, x):
            return x * self.gate_fn(self.fc(self.act_fn(x)))

    m = FnGateSE()
    report = swap_activations(m)
    assert m.gate_fn is F.hardsigmoid and m.act_fn is F.hardswish
    assert report.replaced == {"fn:sigmoid -> fn:hardsigmoid": 1, "fn:swish -> fn:hardswish": 1}
    assert list(m.state_dict()) == ["fc.weight", "fc.bias"]
    assert m(torch.randn(1, 4, 2, 2)).shape == (1, 4, 2, 2)


def test_create_phase1_model_constructor_route_matches_fallback():
    model, report = create_phase1_model("efficientnet_b0", num_classes=10)
    assert report.method == "constructor"
    assert report.after == {"Hardsigmoid": 16, "Hardswish": 49}
    assert report.replaced == {"SiLU -> Hardswish": 49, "Sigmoid -> Hardsigmoid": 16}
    ref = _model("efficientnet_b0")
    ref.load_state_dict(model.state_dict())  # same keys, loads strictly
    swap_activations(ref)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    ref.eval()
    torch.testing.assert_close(model(x), ref(x))


def test_create_phase1_model_nothing_and_errors():
    _, report = create_phase1_model("resnet18")
    assert report.nothing_to_swap and report.method == "replace-by-type"
    with pytest.raises(ValueError, match="unknown timm model name='no_such_net'"):
        create_phase1_model("no_such_net")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        swap_activations("resnet18")
