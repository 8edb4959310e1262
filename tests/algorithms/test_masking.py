"""Mask math: compute_masks per scheme and rate scale, in-place application, sparsity from real zeros."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from npas_lightning.algorithms.masking import (
    MaskApplier,
    apply_masks,
    compute_masks,
    coupled_batchnorm,
    parameter_masks,
    planned_modules,
    sparsity_report,
)
from npas_lightning.plan import LayerPlan, NPASScheme
from npas_lightning.schemes import get_scheme


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.act = nn.ReLU()
        self.pw = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.act(self.bn(self.conv(self.stem(x))))
        return self.fc(self.pw(x).mean((2, 3)))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net()


def test_compute_masks_calls_each_layers_scheme(net):
    plan = NPASScheme.resolve(
        {"conv": {"scheme": "pattern", "rate": 3}, "pw": {"scheme": "block_based", "rate": 4, "block": [4, 4]}}, net
    )
    masks = compute_masks(net, plan)
    assert list(masks) == ["conv", "pw"]
    assert all(m.dtype == torch.bool for m in masks.values())
    assert torch.equal(masks["conv"], get_scheme("pattern")(net.conv.weight.detach(), 3.0, layer_name="conv"))
    assert torch.equal(masks["pw"], get_scheme("block_based")(net.pw.weight.detach(), 4.0, layer_name="pw", block=(4, 4)))


def test_rate_scale_interpolates_sparsity_and_skips_rate_one(net):
    plan = NPASScheme.resolve({"conv": {"scheme": "unstructured", "rate": 4}, "pw": {"scheme": "unstructured", "rate": 1}}, net)
    full, half, none = (compute_masks(net, plan, rate_scale=s) for s in (1.0, 0.5, 0.0))
    assert list(full) == ["conv"] and none == {}  # rate 1 layers and rate_scale 0 give no mask
    assert float(full["conv"].float().mean()) == pytest.approx(0.25, abs=0.01)
    assert float(half["conv"].float().mean()) == pytest.approx(1 - 0.5 * 0.75, abs=0.01)  # half of the sparsity


def test_compute_masks_from_other_tensors(net):
    """ADMM ranks W + U instead of W: masks come from the given tensors."""
    plan = NPASScheme.resolve({"conv": {"scheme": "unstructured", "rate": 2}}, net)
    other = torch.arange(net.conv.weight.numel(), dtype=torch.float32).reshape(net.conv.weight.shape)
    mask = compute_masks(net, plan, weights={"conv": other})["conv"]
    assert mask.flatten()[other.numel() // 2 :].all() and not mask.flatten()[: other.numel() // 2].any()


def test_apply_masks_in_place_keeps_keys_and_zeroes_filter_bn(net):
    keys = list(net.state_dict())
    plan = NPASScheme.resolve({"conv": {"scheme": "filter", "rate": 2}, "pw": {"scheme": "unstructured", "rate": 2}}, net)
    masks = compute_masks(net, plan)
    weight = net.conv.weight
    apply_masks(net, masks, plan)
    assert net.conv.weight is weight and list(net.state_dict()) == keys  # no reparametrisation
    kept = masks["conv"].flatten(1).any(1)
    assert torch.equal(net.conv.weight != 0, masks["conv"])
    assert not net.conv.bias[~kept].any() and net.conv.bias[kept].all()
    assert not net.bn.weight[~kept].any() and not net.bn.bias[~kept].any() and net.bn.weight[kept].all()
    assert net.pw.bias.all()  # non-filter schemes leave biases alone
    # removed channels output exactly zero after the BatchNorm (eval and train)
    out = net.act(net.bn(net.conv(net.stem(torch.randn(2, 3, 8, 8)))))
    assert not out[:, ~kept].any()


def test_coupled_batchnorm_lookup(net):
    assert coupled_batchnorm(net, "conv") == "bn"
    assert coupled_batchnorm(net, "pw") is None  # next module with parameters is the Linear
    assert coupled_batchnorm(net, "stem") is None  # followed by a conv, not a BatchNorm
    pm = parameter_masks(net, {"conv": torch.ones(16, 8, 3, 3, dtype=torch.bool)}, NPASScheme({"conv": LayerPlan(scheme="filter", rate=2)}))
    assert set(pm) == {"conv.weight", "conv.bias", "bn.weight", "bn.bias"}


def test_mask_applier_masks_grads_and_optimizer_state(net):
    plan = NPASScheme.resolve({"conv": {"scheme": "unstructured", "rate": 2}}, net)
    masks = compute_masks(net, plan)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()  # momentum filled densely before pruning
    applier = MaskApplier(net, masks, plan)
    applier.weights_()
    applier.optimizer_state_([opt])
    assert not opt.state[net.conv.weight]["momentum_buffer"][~masks["conv"]].any()
    opt.zero_grad()
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    applier.grads_()
    assert not net.conv.weight.grad[~masks["conv"]].any()
    opt.step()
    assert not net.conv.weight[~masks["conv"]].any()


def test_sparsity_report_counts_real_zeros(net):
    plan = NPASScheme.resolve({"conv": {"scheme": "unstructured", "rate": 4}, "pw": {"scheme": "filter", "rate": 2}}, net)
    with torch.no_grad():
        net.conv.weight[0] = 0  # a zero the mask did not make still counts
    report = sparsity_report(net, plan)
    assert report["layers"]["conv"]["zeros"] == 72 and report["layers"]["pw"]["zeros"] == 0
    assert report["layers"]["conv"]["target_rate"] == 4.0
    apply_masks(net, compute_masks(net, plan), plan)
    report = sparsity_report(net, plan)
    numel = net.conv.weight.numel() + net.pw.weight.numel()
    zeros = int((net.conv.weight == 0).sum() + (net.pw.weight == 0).sum())
    assert report["numel"] == numel and report["zeros"] == zeros
    assert report["sparsity"] == pytest.approx(zeros / numel) and report["rate"] == pytest.approx(numel / (numel - zeros))
    assert report["layers"]["pw"]["rate"] == pytest.approx(2.0)


def test_transformed_layers_are_planned_through_their_sub_convs(net):
    """A layer replaced by a filter type is a small module: its convs carry the layer's plan."""
    net.conv = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 16, 1))
    plan = NPASScheme({"conv": LayerPlan(filter_type="3x3dw_1x1", scheme="unstructured", rate=2)})
    assert list(planned_modules(net, plan)) == ["conv.0", "conv.1"]
    masks = compute_masks(net, plan)
    assert list(masks) == ["conv.0", "conv.1"]
    assert list(sparsity_report(net, plan)["layers"]) == ["conv.0", "conv.1"]


def test_refusals(net):
    plan = NPASScheme({"nope": LayerPlan(scheme="unstructured", rate=2)})
    with pytest.raises(ValueError, match=r"layer 'nope' of the plan is not a module of Net"):
        compute_masks(net, plan)
    with pytest.raises(ValueError, match=r"layer 'bn' \(BatchNorm2d, filter_type='keep'\) has no Conv2d/Linear weight"):
        compute_masks(net, NPASScheme({"bn": LayerPlan(scheme="unstructured", rate=2)}))
    ok = NPASScheme.resolve({"conv": {"scheme": "unstructured", "rate": 2}}, net)
    with pytest.raises(ValueError, match=r"rate_scale=1.5 must lie in \[0, 1\]"):
        compute_masks(net, ok, rate_scale=1.5)
    with pytest.raises(ValueError, match=r"masks name parameters that Net does not have: \['other.weight'\]"):
        MaskApplier(net, {"other": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"mask for 'conv.weight' has shape \(2,\), the parameter \(16, 8, 3, 3\)"):
        MaskApplier(net, {"conv": torch.ones(2, dtype=torch.bool)})
