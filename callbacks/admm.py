"""ADMMPruning: ADMM-regularised training towards a per-layer plan, then hard prune and masked retraining."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor

from npas_lightning.algorithms.admm import (
    ADMMState,
    add_penalty_grad_,
    get_rho_schedule,
    primal_residuals,
    projection_masks,
    rho_at,
)
from npas_lightning.callbacks.penalty_base import PenaltyPruning
from npas_lightning.plan import NPASScheme


def _positive(value: Any, name: str, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name}={value!r} must be a number > 0 ({hint})")
    return float(value)


class ADMMPruning(PenaltyPruning):
    """ADMM pruning (Zhang et al. 2018) along a per-layer plan, with the plan's schemes as projections.

    During the first ``admm_epochs`` epochs every planned layer's gradient gains
    ``rho * (W - Z + U)``, the gradient of ``rho/2 * ||W - Z + U||^2`` (added to ``param.grad``
    before each optimizer step: your ``training_step`` stays as it is). Every ``admm_interval``
    optimizer steps (``None``: at the end of every epoch) ``Z = Proj(W + U)`` (the layer's scheme
    function applied to ``W + U``), ``U += W - Z``, and rho moves one step on ``rho_schedule``.
    At the end of epoch ``admm_epochs - 1`` a last projection gives the masks of ``Z``; the layers
    are hard-pruned to them and training continues masked.

    Logs ``prune/admm_penalty`` (per step and epoch), ``prune/admm_rho``, ``prune/admm_residual``
    and ``prune/admm_residual/<layer>`` (the primal residual ``||W - Z|| / ||W||``), plus the
    ``prune/sparsity...`` of every pruning callback.

    Example:
        >>> cb = ADMMPruning({"*": {"scheme": "block_punched", "rate": 5}}, admm_epochs=10, rho=1e-3)
        >>> trainer = L.Trainer(max_epochs=20, callbacks=[cb])          # doctest: +SKIP

    Args:
        plan: an ``NPASScheme`` or its dict form.
        admm_epochs: epochs of ADMM training before the hard prune (>= 1).
        rho: initial penalty weight (> 0).
        rho_schedule: name of the rho schedule (``npas_lightning.algorithms.admm.list_rho_schedules()``:
            ``"geometric"`` x ``rho_factor`` per Z/U update up to ``rho_max``, or ``"constant"``).
        admm_interval: optimizer steps between Z/U updates (>= 1), or ``None`` for once per epoch.
        rho_factor: growth factor of the geometric schedule (>= 1).
        rho_max: cap of rho (>= rho).
        **kwargs: ``exclude``, ``root``, ``log_per_layer`` of :class:`PruningCallback`.
    """

    epochs_arg = "admm_epochs"
    penalty_name = "admm_penalty"

    def __init__(
        self,
        plan: NPASScheme | Mapping,
        admm_epochs: int,
        rho: float = 1e-3,
        rho_schedule: str = "geometric",
        admm_interval: int | None = None,
        rho_factor: float = 1.3,
        rho_max: float = 1.0,
        *,
        exclude: Sequence[str] | None = None,
        root: str | None = None,
        log_per_layer: bool = True,
    ) -> None:
        super().__init__(plan, admm_epochs, exclude=exclude, root=root, log_per_layer=log_per_layer)
        self.rho = _positive(rho, "rho", "initial ADMM penalty weight, e.g. 1e-3")
        get_rho_schedule(rho_schedule)
        if admm_interval is not None and (
            isinstance(admm_interval, bool) or not isinstance(admm_interval, int) or admm_interval < 1
        ):
            raise ValueError(
                f"admm_interval={admm_interval!r} must be an integer >= 1 (optimizer steps between Z/U updates) "
                "or None (once per epoch)"
            )
        self.rho_factor = _positive(rho_factor, "rho_factor", "growth per Z/U update of the geometric schedule")
        if self.rho_factor < 1.0:
            raise ValueError(f"rho_factor={rho_factor!r} must be >= 1 (rho never shrinks)")
        self.rho_max = _positive(rho_max, "rho_max", "cap of rho")
        if self.rho_max < self.rho:
            raise ValueError(f"rho_max={rho_max!r} must be >= rho={rho!r}")
        self.admm_epochs = admm_epochs
        self.rho_schedule = rho_schedule
        self.admm_interval = admm_interval
        self.rho_current = self.rho
        self.zu_updates = 0
        self.last_zu_step = -1
        self.admm = ADMMState()

    # ----------------------------------------------------------------- math hooks
    def _current_rho(self) -> float:
        return rho_at(self.rho_schedule, self.rho, self.zu_updates, factor=self.rho_factor, rho_max=self.rho_max)

    def start_penalty(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        weights = self.weights(pl_module)
        device = self._params[0].device if self._params else torch.device("cpu")
        if self.admm.z:  # restored from a checkpoint
            self.admm.to(device)
            return
        masks = projection_masks({n: w.detach() for n, w in weights.items()}, self.weight_plan) if trainer.is_global_zero else None
        masks = self._broadcast(trainer, masks, device)
        self.admm = ADMMState(z={}, u={}, masks={})
        self.admm.masks = masks
        self.admm.z = {n: w.detach() * masks[n].to(w.dtype) for n, w in weights.items()}
        self.admm.u = {n: torch.zeros_like(w.detach()) for n, w in weights.items()}
        self.rho_current = self._current_rho()

    def add_penalty_grad(self, indices: list[int]) -> Tensor:
        names = list(self.weight_plan)
        params = [self._params[i] for i in indices]
        z = [self.admm.z[names[i]] for i in indices]
        u = [self.admm.u[names[i]] for i in indices]
        return add_penalty_grad_(params, z, u, self.rho_current)

    def after_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.admm_interval is not None and self.penalty_steps % self.admm_interval == 0:
            self.zu_update(trainer, pl_module)

    def penalty_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.admm_interval is None:
            self.zu_update(trainer, pl_module)
        self.log_residuals(pl_module)

    def final_masks(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Tensor]:
        return dict(self.admm.masks)

    def hard_prune(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.zu_update(trainer, pl_module)  # Z = Proj(W + U) now (no-op if this step already did it)
        super().hard_prune(trainer, pl_module)

    def end_penalty(self) -> None:
        self.admm = ADMMState()

    # ----------------------------------------------------------------- ADMM steps
    @staticmethod
    def _broadcast(trainer: L.Trainer, masks: dict[str, Tensor] | None, device: torch.device) -> dict[str, Tensor]:
        if masks is not None:
            masks = {k: v.detach().to("cpu", torch.bool) for k, v in masks.items()}
        masks = trainer.strategy.broadcast(masks, src=0)
        return {k: v.to(device) for k, v in masks.items()}

    def zu_update(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """``Z = Proj(W + U)`` (masks from rank 0), ``U += W - Z``, rho one step on its schedule."""
        if self.last_zu_step == self.penalty_steps or not self.admm.z:
            return
        weights = self.weights(pl_module)
        masks = None
        if trainer.is_global_zero:
            with torch.no_grad():
                w_plus_u = {n: w.detach() + self.admm.u[n] for n, w in weights.items()}
            masks = projection_masks(w_plus_u, self.weight_plan)
        device = self._params[0].device
        self.admm.update(weights, self.weight_plan, masks=self._broadcast(trainer, masks, device))
        self.zu_updates += 1
        self.last_zu_step = self.penalty_steps
        self.rho_current = self._current_rho()

    def residuals(self, pl_module: L.LightningModule) -> dict[str, float]:
        """The primal residual ``||W - Z|| / ||W||`` per layer (empty outside the ADMM phase)."""
        return primal_residuals(self.weights(pl_module), self.admm.z) if self.admm.z else {}

    def log_residuals(self, pl_module: L.LightningModule) -> dict[str, float]:
        res = self.residuals(pl_module)
        if not res:
            return res
        weights = self.weights(pl_module)
        with torch.no_grad():
            num = sum(float((weights[n].detach() - self.admm.z[n]).square().sum()) for n in res)
            den = sum(float(weights[n].detach().square().sum()) for n in res)
        metrics = {"prune/admm_residual": (num / den) ** 0.5 if den > 0 else 0.0, "prune/admm_rho": self.rho_current}
        if self.log_per_layer:
            metrics.update({f"prune/admm_residual/{n}": v for n, v in res.items()})
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=False)
        return res

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "rho": self.rho_current,
            "zu_updates": self.zu_updates,
            "last_zu_step": self.last_zu_step,
            "admm": self.admm.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.rho_current = float(state_dict["rho"])
        self.zu_updates = int(state_dict["zu_updates"])
        self.last_zu_step = int(state_dict["last_zu_step"])
        self.admm = ADMMState.from_state_dict(state_dict["admm"])
