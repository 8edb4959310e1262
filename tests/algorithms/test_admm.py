"""ADMM math: penalty gradient, Z/U updates and rho schedules match the formulas on tiny layers."""

from __future__ import annotations

import pytest
import torch

from npas_lightning.algorithms.admm import (
    ADMMState,
    add_penalty_grad_,
    get_rho_schedule,
    list_rho_schedules,
    penalty_value,
    primal_residuals,
    projection_masks,
    rho_at,
)
from npas_lightning.plan import LayerPlan
from npas_lightning.schemes import get_scheme

PLAN = {"a": LayerPlan(scheme="block_punched", rate=3, block=(2, 2)), "b": LayerPlan(scheme="filter", rate=2)}


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(4, 4, 3, 3, generator=g), "b": torch.randn(6, 5, generator=g)}


def test_penalty_gradient_is_rho_times_w_minus_z_plus_u_and_equals_autograd():
    w, z, u = _tensors(0), _tensors(1), _tensors(2)
    rho = 0.37
    params = [w[n].clone().requires_grad_(True) for n in w]
    base = [torch.randn_like(p) for p in params]
    for p, g in zip(params, base, strict=True):
        p.grad = g.clone()
    value = add_penalty_grad_(params, [z[n] for n in w], [u[n] for n in w], rho)
    for p, g, n in zip(params, base, w, strict=True):
        assert torch.allclose(p.grad, g + rho * (w[n] - z[n] + u[n]), atol=1e-6)
    # the same as backpropagating rho/2 ||W - Z + U||^2 through autograd
    ref = [w[n].clone().requires_grad_(True) for n in w]
    loss = sum(rho / 2 * (r - z[n] + u[n]).square().sum() for r, n in zip(ref, w, strict=True))
    loss.backward()
    for p, g, r in zip(params, base, ref, strict=True):
        assert torch.allclose(p.grad - g, r.grad, atol=1e-6)
    assert float(value) == pytest.approx(loss.item(), rel=1e-5)
    assert float(penalty_value(params, [z[n] for n in w], [u[n] for n in w], rho)) == pytest.approx(loss.item(), rel=1e-5)


def test_penalty_gradient_creates_missing_grad():
    w = torch.randn(3, 3, requires_grad=True)
    add_penalty_grad_([w], [torch.zeros(3, 3)], [torch.ones(3, 3)], 2.0)
    assert torch.allclose(w.grad, 2.0 * (w.detach() + 1))


def test_init_projects_w_and_zeroes_u():
    w = _tensors(3)
    state = ADMMState.init(w, PLAN)
    for n, lp in PLAN.items():
        mask = get_scheme(lp.scheme)(w[n], lp.rate, **lp.scheme_kwargs())
        assert torch.equal(state.masks[n], mask)
        assert torch.equal(state.z[n], w[n] * mask)
        assert not state.u[n].any()


def test_zu_update_matches_the_formulas():
    w0, w1 = _tensors(4), _tensors(5)
    state = ADMMState.init(w0, PLAN)
    state.u = {n: 0.5 * v for n, v in _tensors(6).items()}
    u_before = {n: v.clone() for n, v in state.u.items()}
    state.update(w1, PLAN)
    for n, lp in PLAN.items():
        mask = get_scheme(lp.scheme)(w1[n] + u_before[n], lp.rate, **lp.scheme_kwargs())
        z = (w1[n] + u_before[n]) * mask
        assert torch.equal(state.masks[n], mask)
        assert torch.allclose(state.z[n], z)
        assert torch.allclose(state.u[n], u_before[n] + w1[n] - z, atol=1e-6)
    # Z lies in the scheme's sparse set: block_punched (2, 2) blocks keep/remove a kernel position together
    za = (state.z["a"] != 0).reshape(2, 2, 2, 2, 9).permute(0, 2, 4, 1, 3).reshape(2, 2, 9, 4)
    assert torch.all(za.all(-1) | ~za.any(-1))


def test_projection_is_the_closest_point_of_the_sparse_set_for_equal_groups():
    """Among masks of the scheme, keeping the largest groups minimises ||V - Z||: check vs random masks."""
    v = torch.randn(8, 4, 3, 3)
    lp = LayerPlan(scheme="block_punched", rate=3, block=(4, 2))
    mask = projection_masks({"x": v}, {"x": lp})["x"]
    best = (v - v * mask).norm()
    for seed in range(20):  # other masks with the same group structure and count: never closer
        other = get_scheme("block_punched")(torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(seed)), 3, block=(4, 2))
        assert (v - v * other).norm() >= best - 1e-6


def test_updates_with_given_masks_use_them():
    w = _tensors(7)
    state = ADMMState.init(w, PLAN)
    masks = {n: torch.ones_like(v, dtype=torch.bool) for n, v in w.items()}
    state.update(w, PLAN, masks=masks)
    assert all(torch.equal(state.z[n], w[n]) for n in w)


def test_primal_residual():
    w = {"a": torch.tensor([3.0, 4.0]), "zero": torch.zeros(2)}
    z = {"a": torch.tensor([3.0, 0.0]), "zero": torch.zeros(2)}
    res = primal_residuals(w, z)
    assert res["a"] == pytest.approx(4.0 / 5.0) and res["zero"] == 0.0


def test_rho_schedules():
    assert set(list_rho_schedules()) >= {"geometric", "constant"}
    assert [rho_at("geometric", 1e-3, k) for k in range(3)] == pytest.approx([1e-3, 1.3e-3, 1.69e-3])
    assert rho_at("geometric", 0.5, 10, factor=2.0, rho_max=3.0) == 3.0
    assert rho_at("constant", 0.5, 10) == 0.5
    with pytest.raises(ValueError, match=r"rho_schedule='exp' is not a registered rho schedule; expected one of \["):
        get_rho_schedule("exp")


def test_state_dict_round_trip():
    state = ADMMState.init(_tensors(8), PLAN)
    back = ADMMState.from_state_dict(state.state_dict())
    for n in PLAN:
        assert torch.equal(back.z[n], state.z[n]) and torch.equal(back.u[n], state.u[n])
        assert back.masks[n].dtype == torch.bool and torch.equal(back.masks[n], state.masks[n])
