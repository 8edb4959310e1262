"""sparsify / densify / sparse_layers on a real timm efficientnet_b0 with a mixed five-scheme plan."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from npas_lightning.algorithms.masking import apply_masks, compute_masks
from npas_lightning.plan import NPASScheme
from npas_lightning.sparse import (
    SPARSE_SCHEMES,
    SparseConv2d,
    SparseLinear,
    StructureError,
    densify,
    sparse_layers,
    sparsify,
)

PLAN = {
    "blocks.0.0.conv_dw": {"scheme": "pattern", "rate": 3},                        # 3x3 depthwise
    "blocks.1.0.conv_dw": {"scheme": "pattern", "rate": 2.25, "params": {"k": 4}},
    "blocks.1.*.conv_pw": {"scheme": "filter", "rate": 2},
    "blocks.2.*.conv_dw": {"scheme": "unstructured", "rate": 3},                    # 5x5 depthwise
    "blocks.*.se.*": None,
    "blocks.3.*.conv_pwl": {"scheme": "block_based", "rate": 3, "block": [8, 16], "params": {"prune": "rows"}},
    "blocks.4.*.conv_pw": {"scheme": "block_based", "rate": 4, "params": {"balanced": True}},
    "blocks.*.conv_pw*": {"scheme": "block_based", "rate": 4, "block": [16, 4]},
    "blocks.4.*.conv_dw": {"scheme": "block_punched", "rate": 3, "params": {"balanced": True}},
    "blocks.*.conv_dw": {"scheme": "block_punched", "rate": 3, "block": [8, 4]},
    "conv_head": {"scheme": "block_punched", "rate": 5, "block": [16, 4]},
    "classifier": {"scheme": "block_based", "rate": 4, "block": [8, 16]},
}


@pytest.fixture(scope="module")
def pruned():
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=10).eval()
    plan = NPASScheme.resolve(PLAN, model, exclude=["conv_stem"])
    apply_masks(model, compute_masks(model, plan), plan)
    return model, plan


def test_sparsify_efficientnet_b0_matches_the_masked_model(pruned):
    model, plan = pruned
    assert {lp.scheme for lp in plan.values()} == {"pattern", "filter", "unstructured", "block_based", "block_punched"}
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    sparse = sparsify(model, plan)
    assert sparse is not model and not sparse_layers(model), "the input model is untouched"
    layers = sparse_layers(sparse)
    expected = {n for n, lp in plan.items() if lp.scheme in SPARSE_SCHEMES}
    assert set(layers) == expected
    assert isinstance(layers["classifier"], SparseLinear) and isinstance(layers["conv_head"], SparseConv2d)
    assert layers["blocks.0.0.conv_dw"].scheme == "pattern"
    for name, lp in plan.items():  # filter / unstructured layers stay plain modules
        if lp.scheme not in SPARSE_SCHEMES:
            assert type(sparse.get_submodule(name)) is nn.Conv2d
    for name, module in layers.items():
        assert module.density <= 1.0 / (plan[name].rate * 0.9) + 1e-6, name
    with torch.no_grad():
        out = sparse(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)

    dense = densify(sparse)
    assert not sparse_layers(dense) and sparse_layers(sparse)
    assert type(dense.get_submodule("classifier")) is nn.Linear
    with torch.no_grad():
        torch.testing.assert_close(dense(x), out, atol=1e-6, rtol=1e-6)
    for name in expected:
        assert torch.equal(dense.get_submodule(name).weight, model.get_submodule(name).weight)

    # state_dict round trip (compact values, index buffers, biases, BatchNorms)
    target = copy.deepcopy(sparse)
    with torch.no_grad():
        for module in sparse_layers(target).values():
            module.values.add_(1.0)
    target.load_state_dict(sparse.state_dict())
    for name, module in sparse_layers(target).items():
        assert torch.equal(module.values, layers[name].values) and torch.equal(module.index, layers[name].index)


def test_a_mismatched_layer_is_refused_before_anything_changes(pruned):
    model, plan = pruned
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.classifier.weight.normal_()  # the last planned layer: unpruned again
    with pytest.raises(StructureError, match=r"layer 'classifier': the plan says block_based \(8, 16\) at 4.0x but "
                                             r"its zeros give 1.0x in that structure"):
        sparsify(model, plan, inplace=True)
    assert not sparse_layers(model), "checked every layer before replacing any"


def test_an_unpruned_model_is_refused_with_a_glob_plan():
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=10)
    with pytest.raises(StructureError, match=r"layer 'blocks.1.0.conv_dw': the plan says block_punched \(8, 4\) at "
                                             r"3.0x but its zeros give 1.0x"):
        sparsify(model, {"blocks.1.0.conv_dw": {"scheme": "block_punched", "rate": 3}})
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module, got dict"):
        sparsify({}, {})


def test_glob_plan_default_exclusions_and_sparse_root():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 1), nn.Flatten(), nn.Linear(16 * 36, 4))
    plan = {"1": {"scheme": "block_punched", "rate": 2, "block": [4, 4]}}
    apply_masks(model, compute_masks(model, NPASScheme.resolve(plan, model)))
    sparse = sparsify(model, plan)
    assert list(sparse_layers(sparse)) == ["1"]  # first conv and classifier excluded by default
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(sparse(x), model(x), atol=1e-6, rtol=1e-6)
    root = SparseConv2d.from_dense(nn.Conv2d(2, 2, 1))
    assert type(densify(root)) is nn.Conv2d


def test_layers_replaced_by_a_filter_type_candidate_are_sparsified_inside_it(pruned):
    from npas_lightning.transforms import apply_filter_types

    model, _ = pruned
    plan = NPASScheme.resolve({"blocks.1.0.conv_dw": {"filter_type": "3x3dw_1x1", "scheme": "block_punched",
                                                      "rate": 3, "block": [8, 4]}}, model)
    torch.manual_seed(0)
    candidate_model = apply_filter_types(model, plan).eval()
    apply_masks(candidate_model, compute_masks(candidate_model, plan), plan)
    sparse = sparsify(candidate_model, plan)
    assert list(sparse_layers(sparse)) == ["blocks.1.0.conv_dw.dw", "blocks.1.0.conv_dw.pw"]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), candidate_model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sparsify_on_cuda(pruned):
    model, plan = pruned
    model = copy.deepcopy(model).cuda()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    sparse = sparsify(model, plan)
    assert all(m.values.is_cuda and m.index.is_cuda for m in sparse_layers(sparse).values())
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(densify(sparse)(x), model(x), atol=1e-4, rtol=1e-4)
