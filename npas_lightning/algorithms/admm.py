"""ADMM pruning math (Zhang et al. 2018; Ren et al. 2019): projection, dual update, penalty, rho schedules.

Pruning a layer to a plan is the constrained problem ``min f(W) s.t. W in S`` where ``S`` is the set
of weights whose zeros follow the layer's scheme at the layer's rate. ADMM splits it with an
auxiliary copy ``Z in S`` and a scaled dual ``U``:

- ``W``-step: train on ``f(W) + rho/2 * ||W - Z + U||^2`` (the penalty's gradient is
  ``rho * (W - Z + U)``, see :func:`add_penalty_grad_`);
- ``Z``-step: ``Z = Proj_S(W + U)``, the scheme function itself applied to ``W + U``
  (:func:`project`): the scheme keeps its groups of largest L2 norm, which is the Euclidean
  projection onto ``S`` when all groups have the same size (edge groups of block schemes are
  ranked by norm / sqrt(size), a close approximation);
- ``U``-step: ``U = U + W - Z``.

``rho`` grows on a schedule chosen by name (:func:`get_rho_schedule`): ``"geometric"`` multiplies
it by ``factor`` (default 1.3) at every Z/U update up to ``rho_max``; ``"constant"`` keeps it.

All per-step work on the parameter lists uses fused ``torch._foreach_*`` kernels (no Python loop
over weights, one call per tensor list).

Example:
    >>> W = {"conv": torch.randn(8, 4, 3, 3)}
    >>> state = ADMMState.init(W, plan_of_conv)                       # doctest: +SKIP
    >>> state.update(W, plan_of_conv)                                 # Z = Proj(W + U); U += W - Z  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from npas_lightning.plan import LayerPlan
from npas_lightning.schemes import get_scheme
from npas_lightning.utils.registry import Registry

__all__ = [
    "ADMMState",
    "RhoSchedule",
    "add_penalty_grad_",
    "get_rho_schedule",
    "list_rho_schedules",
    "penalty_value",
    "primal_residuals",
    "project",
    "projection_masks",
    "register_rho_schedule",
    "rho_at",
]

#: ``fn(rho_init, updates, *, factor, rho_max) -> rho`` after ``updates`` Z/U updates.
RhoSchedule = Callable[..., float]

_RHO_SCHEDULES: Registry[RhoSchedule] = Registry("rho schedule", key="rho_schedule")
#: Register a rho schedule ``fn(rho_init, updates, *, factor, rho_max) -> rho`` under a name (decorator).
register_rho_schedule = _RHO_SCHEDULES.register
#: Names of the registered rho schedules, sorted.
list_rho_schedules = _RHO_SCHEDULES.names
#: The rho schedule registered under a name; a ValueError lists the accepted names otherwise.
get_rho_schedule = _RHO_SCHEDULES.get


@register_rho_schedule("geometric")
def geometric(rho_init: float, updates: int, *, factor: float = 1.3, rho_max: float = 1.0) -> float:
    """``min(rho_max, rho_init * factor ** updates)`` (rho never drops below ``rho_init``)."""
    return max(rho_init, min(rho_max, rho_init * factor**updates))


@register_rho_schedule("constant")
def constant(rho_init: float, updates: int, *, factor: float = 1.3, rho_max: float = 1.0) -> float:
    """``rho_init`` at every update."""
    return rho_init


def rho_at(schedule: str, rho_init: float, updates: int, *, factor: float = 1.3, rho_max: float = 1.0) -> float:
    """rho after ``updates`` Z/U updates on the named schedule.

    >>> round(rho_at("geometric", 1e-3, 2), 6)
    0.00169
    """
    return float(get_rho_schedule(schedule)(rho_init, updates, factor=factor, rho_max=rho_max))


@torch.no_grad()
def projection_masks(sources: Mapping[str, Tensor], plan: Mapping[str, LayerPlan]) -> dict[str, Tensor]:
    """Masks of the projection onto each layer's sparse set: the layer's scheme run on ``sources[name]``."""
    return {
        name: get_scheme(plan[name].scheme)(src, plan[name].rate, layer_name=name, **plan[name].scheme_kwargs())
        for name, src in sources.items()
    }


@torch.no_grad()
def project(sources: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``Z = source * mask`` for every layer (the projection, given the masks of :func:`projection_masks`)."""
    return {name: src.detach() * masks[name].to(src.dtype) for name, src in sources.items()}


@torch.no_grad()
def add_penalty_grad_(params: list[Tensor], z: list[Tensor], u: list[Tensor], rho: float) -> Tensor:
    """Add the gradient of ``rho/2 * ||W - Z + U||^2`` to each ``W.grad`` and return the penalty value.

    ``W.grad += rho * (W - Z + U)`` (a missing ``.grad`` is created). Two fused foreach kernels
    compute ``D = W - Z + U``; the penalty ``rho/2 * sum ||D||^2`` is a 0-d tensor (no host sync).
    """
    if not params:
        return torch.zeros(())
    diff = torch._foreach_sub([p.detach() for p in params], z)
    torch._foreach_add_(diff, u)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    torch._foreach_add_([p.grad for p in params], diff, alpha=rho)
    norms = torch._foreach_norm(diff)
    return 0.5 * rho * torch.stack(norms).square().sum()


@torch.no_grad()
def penalty_value(params: list[Tensor], z: list[Tensor], u: list[Tensor], rho: float) -> Tensor:
    """``rho/2 * sum_layers ||W - Z + U||^2`` as a 0-d tensor."""
    if not params:
        return torch.zeros(())
    diff = torch._foreach_sub([p.detach() for p in params], z)
    torch._foreach_add_(diff, u)
    return 0.5 * rho * torch.stack(torch._foreach_norm(diff)).square().sum()


@torch.no_grad()
def primal_residuals(weights: Mapping[str, Tensor], z: Mapping[str, Tensor]) -> dict[str, float]:
    """``||W - Z|| / ||W||`` per layer (0 for an all-zero ``W``)."""
    names = list(z)
    if not names:
        return {}
    w = [weights[n].detach() for n in names]
    diff = torch.stack(torch._foreach_norm(torch._foreach_sub(w, [z[n] for n in names])))
    norm = torch.stack(torch._foreach_norm(w))
    ratio = torch.where(norm > 0, diff / norm.clamp_min(torch.finfo(norm.dtype).tiny), torch.zeros_like(norm))
    return dict(zip(names, ratio.tolist(), strict=True))


@dataclass
class ADMMState:
    """``Z``, ``U`` and the masks of the last projection, per planned layer.

    Build with :meth:`init` (``Z = Proj(W)``, ``U = 0``) and advance with :meth:`update`.
    """

    z: dict[str, Tensor] = field(default_factory=dict)
    u: dict[str, Tensor] = field(default_factory=dict)
    masks: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    @torch.no_grad()
    def init(cls, weights: Mapping[str, Tensor], plan: Mapping[str, LayerPlan]) -> ADMMState:
        """``Z = Proj_S(W)``, ``U = 0`` for every layer in ``weights``."""
        masks = projection_masks({n: w.detach() for n, w in weights.items()}, plan)
        z = project(weights, masks)
        u = {n: torch.zeros_like(w.detach()) for n, w in weights.items()}
        return cls(z=z, u=u, masks=masks)

    @torch.no_grad()
    def update(
        self, weights: Mapping[str, Tensor], plan: Mapping[str, LayerPlan], masks: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """One Z/U step: ``Z = Proj_S(W + U)``, then ``U = U + W - Z``; returns the new masks.

        Args:
            masks: the projection's masks when already known (e.g. broadcast from DDP rank 0);
                computed from ``W + U`` otherwise.
        """
        names = list(self.z)
        w = [weights[n].detach() for n in names]
        w_plus_u = dict(zip(names, torch._foreach_add(w, [self.u[n] for n in names]), strict=True))
        if masks is None:
            masks = projection_masks(w_plus_u, plan)
        self.masks = {n: masks[n].to(device=w_plus_u[n].device, dtype=torch.bool) for n in names}
        self.z = project(w_plus_u, self.masks)
        torch._foreach_add_([self.u[n] for n in names], torch._foreach_sub(w, [self.z[n] for n in names]))
        return self.masks

    def to(self, device: torch.device | str) -> ADMMState:
        """Move every tensor to ``device`` (in place; returns self)."""
        self.z = {k: v.to(device) for k, v in self.z.items()}
        self.u = {k: v.to(device) for k, v in self.u.items()}
        self.masks = {k: v.to(device) for k, v in self.masks.items()}
        return self

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        """CPU copies of ``z``, ``u``, ``masks``."""
        return {
            "z": {k: v.detach().cpu() for k, v in self.z.items()},
            "u": {k: v.detach().cpu() for k, v in self.u.items()},
            "masks": {k: v.detach().cpu() for k, v in self.masks.items()},
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Mapping[str, Tensor]]) -> ADMMState:
        return cls(z=dict(state["z"]), u=dict(state["u"]), masks={k: v.bool() for k, v in state["masks"].items()})
