"""FPGM: distances to the geometric median, the filters it removes, and its refusals."""

from __future__ import annotations

import pytest
import timm
import torch

from npas_lightning.algorithms.fpgm import (
    FPGMError,
    check_filter_plan,
    fpgm_mask,
    fpgm_masks,
    median_distances,
)
from npas_lightning.plan import LayerPlan, NPASScheme
from npas_lightning.schemes import get_scheme


def test_median_distances_match_explicit_sums():
    w = torch.randn(6, 3, 3, 3)
    flat = w.reshape(6, -1)
    expected = torch.stack([sum((flat[i] - flat[j]).norm() for j in range(6)) for i in range(6)])
    assert torch.allclose(median_distances(w), expected, atol=1e-4)
    expected_l1 = torch.stack([sum((flat[i] - flat[j]).abs().sum() for j in range(6)) for i in range(6)])
    assert torch.allclose(median_distances(w, "l1"), expected_l1, atol=1e-3)


def test_removes_filters_nearest_the_median_not_the_smallest():
    """Filters on a line at 0, 1, 2, 10: the median lies between 1 and 2, so FPGM removes those two,
    while magnitude pruning would remove 0 and 1."""
    w = torch.tensor([0.0, 1.0, 2.0, 10.0]).reshape(4, 1, 1, 1).repeat(1, 2, 3, 3) + 0.5
    mask = fpgm_mask(w, 2.0)
    assert mask.flatten(1).all(1).tolist() == [True, False, False, True]
    magnitude = get_scheme("filter")(w, 2.0)
    assert magnitude.flatten(1).all(1).tolist() == [False, False, True, True]


@pytest.mark.parametrize(("shape", "rate"), [((16, 8, 3, 3), 2.0), ((10, 4, 1, 1), 3.0), ((7, 5), 1.7), ((12, 1, 3, 3), 4.0)])
def test_keeps_the_filter_schemes_count_of_whole_filters(shape, rate):
    w = torch.randn(shape)
    mask = fpgm_mask(w, rate)
    rows = mask.reshape(shape[0], -1)
    assert torch.equal(rows.all(1), rows.any(1))
    assert int(mask.sum()) == int(get_scheme("filter")(w, rate).sum())


def test_masks_for_a_model_and_gradual_fraction():
    net = timm.create_model("test_resnet", num_classes=4)
    plan = NPASScheme.resolve({"layer*.conv*": {"scheme": "filter", "rate": 4}, "*": None}, net)
    full = fpgm_masks(net, plan)
    half = fpgm_masks(net, plan, rate_scale=0.5)
    assert set(full) == {n for n, lp in plan.items() if lp.pruned}
    for name, mask in full.items():
        f = mask.shape[0]
        assert int(mask.flatten(1).all(1).sum()) == max(1, round(f / 4))
        assert int(half[name].flatten(1).all(1).sum()) > int(mask.flatten(1).all(1).sum())


def test_non_filter_plans_are_refused_naming_the_layer():
    plan = {"a": LayerPlan(scheme="filter", rate=2), "b": LayerPlan(scheme="block_punched", rate=3)}
    with pytest.raises(FPGMError, match=r"prunes whole filters only: layer 'b' uses scheme 'block_punched' \(rate 3\)"):
        check_filter_plan(plan)
    check_filter_plan({"a": LayerPlan(scheme="filter", rate=2), "c": LayerPlan(scheme="pattern", rate=1)})  # unpruned: fine


def test_bad_distance_is_refused():
    with pytest.raises(ValueError, match=r"distance='cos': accepted values are \['l1', 'l2'\]"):
        median_distances(torch.randn(3, 3), "cos")
