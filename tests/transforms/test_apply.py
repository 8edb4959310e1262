"""apply_filter_types on real timm models: forward/backward, residuals, torch.export, errors."""

import pytest
import timm
import torch

from npas_lightning.plan import LayerPlan, NPASScheme
from npas_lightning.transforms import (
    FilterCandidate,
    FilterTypeError,
    apply_filter_types,
    build_candidate,
    swap_activations,
)

EFFNET_PLAN = {
    "blocks.2.0.conv_dw": LayerPlan(filter_type="3x3dw_1x1"),   # 5x5 dw, stride 2
    "blocks.2.1.conv_dw": LayerPlan(filter_type="3x3"),         # 5x5 dw -> 3x3 dw, in a residual block
    "blocks.1.1.conv_dw": LayerPlan(filter_type="skip"),        # 3x3 dw, stride 1, residual block
    "conv_stem": LayerPlan(filter_type="1x1_3x3dw_1x1"),        # dense 3x3, stride 2
    "blocks.3.0.conv_pw": LayerPlan(filter_type="keep"),
}
RESNET_PLAN = {
    "layer1.0.conv1": LayerPlan(filter_type="3x3dw_1x1"),
    "layer1.1.conv2": LayerPlan(filter_type="skip"),
    "layer2.0.conv1": LayerPlan(filter_type="1x1"),             # stride 2, residual with downsample
    "layer3.1.conv1": LayerPlan(filter_type="1x1_3x3dw_1x1"),
}


def _model(name):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10)


@pytest.mark.parametrize("name, plan", [("efficientnet_b0", EFFNET_PLAN), ("resnet18", RESNET_PLAN)])
def test_apply_trains_evaluates_exports(name, plan):
    model = _model(name)
    if name == "efficientnet_b0":
        swap_activations(model)
    new = apply_filter_types(model, plan)
    assert new is not model
    assert not any(isinstance(m, FilterCandidate) for m in model.modules())  # original untouched
    replaced = {n: m.filter_type for n, m in new.named_modules() if isinstance(m, FilterCandidate)}
    assert replaced == {n: p.filter_type for n, p in plan.items() if p.filter_type != "keep"}
    # the rest of the network is untouched: every key outside replaced layers is kept
    old_keys = {k for k in model.state_dict() if not any(k.startswith(n + ".") for n in replaced)}
    new_keys = set(new.state_dict())
    assert old_keys <= new_keys
    assert all(any(k.startswith(n + ".") for n in replaced) for k in new_keys - old_keys)
    # train step
    new.train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    loss = torch.nn.functional.cross_entropy(new(x), y)
    loss.backward()
    for n in replaced:
        grads = [p.grad for p in new.get_submodule(n).parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # eval + export
    new.eval()
    with torch.no_grad():
        expected = new(x[:2])
    exported = torch.export.export(new, (x[:2],))
    torch.testing.assert_close(exported.module()(x[:2]), expected, rtol=1e-4, atol=1e-5)


def test_apply_uses_fitted_candidates_and_inplace():
    model = _model("resnet18")
    fitted_cand = build_candidate("1x1", model.layer2[0].conv1)
    with torch.no_grad():
        fitted_cand.conv.weight.fill_(0.5)
    new = apply_filter_types(model, {"layer2.0.conv1": LayerPlan(filter_type="1x1")},
                             fitted={"layer2.0.conv1": {"1x1": fitted_cand}})
    assert torch.equal(new.layer2[0].conv1.conv.weight, fitted_cand.conv.weight)
    assert new.layer2[0].conv1 is not fitted_cand  # copied, the cache entry stays clean
    # plain strings / dicts as entries, inplace
    same = apply_filter_types(model, {"layer1.0.conv1": "skip", "layer1.0.conv2": {"filter_type": "keep"}},
                              inplace=True)
    assert same is model and isinstance(model.layer1[0].conv1, FilterCandidate)
    with pytest.raises(FilterTypeError, match="'layer1.0.conv1' is already a 'skip' candidate"):
        apply_filter_types(model, {"layer1.0.conv1": "skip"})


def test_apply_errors_before_any_change():
    model = _model("resnet18")
    with pytest.raises(FilterTypeError, match=r"filter_type='3x3' for layer 'layer2.0.downsample.0'.*"
                       r"larger than the layer's 1x1 kernel.*unidirectional rule"):
        apply_filter_types(model, {"layer1.0.conv1": "skip", "layer2.0.downsample.0": "3x3"}, inplace=True)
    assert not isinstance(model.layer1[0].conv1, FilterCandidate)  # validated before replacing
    with pytest.raises(KeyError, match="layer 'layer9.conv1' is not a submodule of ResNet"):
        apply_filter_types(model, {"layer9.conv1": "1x1"})
    with pytest.raises(FilterTypeError, match="filter_type='7x7' for layer 'conv1' is unknown"):
        apply_filter_types(model, {"conv1": "7x7"})
    with pytest.raises(FilterTypeError, match="identity would change the output shape"):
        apply_filter_types(model, {"layer2.0.conv1": "skip"})
    with pytest.raises(TypeError, match=r"plan must have .items\(\)"):
        apply_filter_types(model, ["conv1"])
    with pytest.raises(FilterTypeError, match="fitted candidate for layer 'conv1' has filter_type='1x1'"):
        apply_filter_types(model, {"conv1": "3x3"}, fitted={"conv1": build_candidate("1x1", model.conv1)})


def test_apply_resolved_npas_scheme():
    model = _model("efficientnet_b0")
    plan = NPASScheme.resolve({"blocks.2.*.conv_dw": {"filter_type": "3x3"},
                               "blocks.1.1.conv_dw": {"filter_type": "skip"}}, model)
    new = apply_filter_types(model, plan)
    assert new.blocks[2][0].conv_dw.filter_type == new.blocks[2][1].conv_dw.filter_type == "3x3"
    assert new.blocks[2][1].conv_dw.conv.kernel_size == (3, 3) and new.blocks[2][1].conv_dw.conv.groups == 240
    assert new.blocks[1][1].conv_dw.filter_type == "skip"
    assert new(torch.randn(2, 3, 32, 32)).shape == (2, 10)
