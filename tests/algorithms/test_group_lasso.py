"""Group-Lasso groups are the schemes' structural units; the penalty's gradient matches autograd."""

from __future__ import annotations

import itertools

import pytest
import torch

from npas_lightning.algorithms.group_lasso import (
    GroupingError,
    add_group_lasso_grad_,
    group_lasso_value,
    group_norms,
    list_groupings,
    scheme_groups,
)
from npas_lightning.plan import LayerPlan
from npas_lightning.schemes import get_scheme


def _explicit_block_punched(shape, block):
    """Group label of every weight by plain loops: (filter block, channel block, kernel position)."""
    n_f, n_c, kh, kw = shape
    labels, ids = {}, torch.empty(shape, dtype=torch.int64)
    for f, c, i, j in itertools.product(range(n_f), range(n_c), range(kh), range(kw)):
        key = (f // block[0], c // block[1], i, j)
        ids[f, c, i, j] = labels.setdefault(key, len(labels))
    return ids, len(labels)


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Two labellings define the same groups (labels may be numbered differently)."""
    pairs = torch.stack([a.flatten(), b.flatten()], 1).unique(dim=0)
    return len(pairs) == len(a.unique()) == len(b.unique())


@pytest.mark.parametrize(
    ("shape", "block"),
    [((16, 8, 3, 3), (8, 4)), ((10, 6, 5, 5), (4, 4)), ((12, 7, 1, 1), (8, 4)), ((9, 5, 3, 3), (2, 3))],
)
def test_block_punched_groups_are_a_kernel_position_inside_a_block(shape, block):
    lp = LayerPlan(scheme="block_punched", rate=3, block=block)
    (gs,) = scheme_groups(shape, lp)
    ids, n = _explicit_block_punched(shape, block)
    assert gs.n_groups == n and _same_partition(gs.ids, ids)


def test_block_punched_depthwise_blocks_run_over_filters_only():
    lp = LayerPlan(scheme="block_punched", rate=2, block=(4, 4))
    (gs,) = scheme_groups((16, 1, 3, 3), lp)
    ids, n = _explicit_block_punched((16, 1, 3, 3), (4, 1))
    assert gs.n_groups == n == 4 * 9 and _same_partition(gs.ids, ids)


@pytest.mark.parametrize(("shape", "block"), [((32, 16), (8, 4)), ((20, 12), (8, 4)), ((24, 16, 1, 1), (16, 4))])
def test_block_based_groups_are_column_segments_inside_a_block(shape, block):
    (gs,) = scheme_groups(shape, LayerPlan(scheme="block_based", rate=4, block=block))
    rows, cols = shape[0], shape[1]
    expected = torch.tensor([[(r // block[0]) * cols + c for c in range(cols)] for r in range(rows)]).reshape(shape)
    assert gs.n_groups == -(-rows // block[0]) * cols and _same_partition(gs.ids, expected)
    (rows_gs,) = scheme_groups(shape, LayerPlan(scheme="block_based", rate=4, block=block, params={"prune": "rows"}))
    expected_rows = torch.tensor([[r * 100 + c // block[1] for c in range(cols)] for r in range(rows)]).reshape(shape)
    assert _same_partition(rows_gs.ids, expected_rows)


@pytest.mark.parametrize("shape", [(8, 4, 3, 3), (10, 7)])
def test_filter_groups_are_filters(shape):
    (gs,) = scheme_groups(shape, LayerPlan(scheme="filter", rate=2))
    expected = torch.arange(shape[0]).reshape(-1, *([1] * (len(shape) - 1))).expand(shape)
    assert gs.n_groups == shape[0] and torch.equal(gs.ids, expected)


SCHEME_CASES = [
    ((16, 8, 3, 3), LayerPlan(scheme="block_punched", rate=3, block=(8, 4))),
    ((10, 6, 5, 5), LayerPlan(scheme="block_punched", rate=5, block=(4, 4))),
    ((16, 1, 3, 3), LayerPlan(scheme="block_punched", rate=2, block=(4, 4))),
    ((20, 12), LayerPlan(scheme="block_based", rate=4, block=(8, 4))),
    ((20, 12), LayerPlan(scheme="block_based", rate=4, block=(8, 4), params={"prune": "rows"})),
    ((12, 5, 3, 3), LayerPlan(scheme="filter", rate=3)),
]


@pytest.mark.parametrize(("shape", "lp"), SCHEME_CASES)
def test_the_scheme_keeps_or_removes_each_group_whole(shape, lp):
    """The group-Lasso groups are the units of the scheme's masks, whatever the weights."""
    (gs,) = scheme_groups(shape, lp)
    for seed in range(5):
        w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        mask = get_scheme(lp.scheme)(w, lp.rate, **lp.scheme_kwargs())
        kept = torch.zeros(gs.n_groups + 1).index_add_(0, gs.ids.flatten(), mask.flatten().float())
        size = torch.zeros(gs.n_groups + 1).index_add_(0, gs.ids.flatten(), torch.ones(mask.numel()))
        assert torch.all((kept == 0) | (kept == size)), "a group was split by the scheme's mask"


def test_pattern_groups_are_kernel_positions_plus_kernels_above_the_pattern_rate():
    lp = LayerPlan(scheme="pattern", rate=2.25)
    (positions,) = scheme_groups((4, 3, 3, 3), lp)
    assert positions.ids is None and positions.n_groups == 4 * 3 * 8
    assert not positions.elements[:, :, 1, 1].any() and positions.elements.sum() == 96
    positions, kernels = scheme_groups((4, 3, 3, 3), LayerPlan(scheme="pattern", rate=4))
    assert kernels.n_groups == 12
    assert torch.equal(kernels.ids, torch.arange(12).reshape(4, 3, 1, 1).expand(4, 3, 3, 3))
    # connectivity pruning removes kernels whole: a removed kernel is a whole group
    w = torch.randn(4, 3, 3, 3)
    mask = get_scheme("pattern")(w, 4)
    per_kernel = mask.flatten(2).sum(-1)
    assert set(per_kernel.unique().tolist()) <= {0, 4}


def _autograd_penalty(w: torch.Tensor, sets, lam: float) -> torch.Tensor:
    total = w.new_zeros(())
    for gs in sets:
        if gs.ids is None:
            sel = w if gs.elements is None else w[gs.elements]
            total = total + sel.abs().sum()
        else:
            for g in range(gs.n_groups):
                total = total + w[gs.ids == g].norm()
    return lam * total


@pytest.mark.parametrize(
    ("shape", "lp"),
    [*SCHEME_CASES, ((4, 3, 3, 3), LayerPlan(scheme="pattern", rate=4)), ((6, 5), LayerPlan(scheme="unstructured", rate=2))],
)
def test_gradient_is_lam_w_over_group_norm_and_matches_autograd(shape, lp):
    lam = 0.3
    sets = scheme_groups(shape, lp)
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    ref = w.clone().requires_grad_(True)
    penalty = _autograd_penalty(ref, sets, lam)
    penalty.backward()
    p = w.clone().requires_grad_(True)
    p.grad = torch.ones_like(p)
    value = add_group_lasso_grad_([p], [sets], lam)
    assert torch.allclose(p.grad - 1, ref.grad, atol=1e-5)
    assert float(value) == pytest.approx(penalty.item(), rel=1e-5)
    assert group_lasso_value({"w": w}, {"w": sets}, lam) == pytest.approx(penalty.item(), rel=1e-5)


def test_all_zero_group_gets_zero_gradient_not_nan():
    lp = LayerPlan(scheme="filter", rate=2)
    sets = scheme_groups((4, 3), lp)
    p = torch.randn(4, 3)
    p[1] = 0
    p.requires_grad_(True)
    add_group_lasso_grad_([p], [sets], 1.0)
    assert torch.isfinite(p.grad).all() and not p.grad[1].any()
    assert torch.allclose(p.grad[0], p.detach()[0] / p.detach()[0].norm())
    assert torch.allclose(group_norms(p, sets[0]), p.detach().norm(dim=1))


def test_unstructured_falls_back_to_l1_or_is_refused():
    lp = LayerPlan(scheme="unstructured", rate=2)
    (gs,) = scheme_groups((3, 4), lp)
    assert gs.ids is None and gs.elements is None and gs.n_groups == 12
    with pytest.raises(GroupingError, match=r"layer 'fc' uses scheme 'unstructured', which has no group structure"):
        scheme_groups((3, 4), lp, layer_name="fc", unstructured="refuse")
    with pytest.raises(ValueError, match=r"unstructured='l2': accepted values are \['l1', 'refuse'\]"):
        scheme_groups((3, 4), lp, unstructured="l2")


def test_every_registered_scheme_has_a_grouping():
    from npas_lightning.schemes import list_schemes

    assert list_groupings() == list_schemes()


def test_scheme_validation_runs_first():
    with pytest.raises(ValueError, match=r"scheme 'pattern' does not fit layer 'x'"):
        scheme_groups((4, 4, 1, 1), LayerPlan(scheme="pattern", rate=3), layer_name="x")
