"""GroupLassoPruning: group-Lasso on each scheme's structural groups, then hard prune and masked retraining."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor

from npas_lightning.algorithms.group_lasso import (
    UNSTRUCTURED_MODES,
    GroupSet,
    add_group_lasso_grad_,
    check_grouping,
    scheme_groups,
)
from npas_lightning.algorithms.masking import compute_masks, planned_modules
from npas_lightning.callbacks.penalty_base import PenaltyPruning
from npas_lightning.plan import NPASScheme


class GroupLassoPruning(PenaltyPruning):
    """Group-Lasso ``lam * sum_g ||W_g||_2`` over the plan's structural groups, then prune the weakest groups.

    Groups follow each layer's scheme (:mod:`npas_lightning.algorithms.group_lasso`): a kernel
    position inside a block (block_punched), a column segment inside a block (block_based), a
    filter (filter), a kernel position of a kernel plus whole kernels above rate 9/4 (pattern);
    unstructured layers fall back to L1 (``unstructured="l1"``) or are refused
    (``unstructured="refuse"``). During the first ``penalty_epochs`` epochs the penalty's gradient
    ``lam * W_g / ||W_g||`` is added to ``param.grad`` before each optimizer step (no change to your
    ``training_step``); at the end of epoch ``penalty_epochs - 1`` each layer's scheme removes the
    groups of smallest norm to the plan's rate, and training continues masked.

    Logs ``prune/group_lasso_penalty`` (per step and epoch) and, at each penalty epoch's end,
    ``prune/group_lasso_residual`` and ``prune/group_lasso_residual/<layer>``: the share of the
    weights' norm the scheme would remove now, ``||W * ~mask|| / ||W||`` (it falls as the penalty
    works).

    Example:
        >>> cb = GroupLassoPruning({"*": {"scheme": "block_punched", "rate": 5}}, penalty_epochs=10, lam=1e-3)

    Args:
        plan: an ``NPASScheme`` or its dict form.
        penalty_epochs: epochs with the penalty before the hard prune (>= 1).
        lam: regularisation strength (> 0).
        unstructured: ``"l1"`` (per-weight L1 for unstructured layers) or ``"refuse"``.
        **kwargs: ``exclude``, ``root``, ``log_per_layer`` of :class:`PruningCallback`.
    """

    epochs_arg = "penalty_epochs"
    penalty_name = "group_lasso_penalty"

    def __init__(
        self,
        plan: NPASScheme | Mapping,
        penalty_epochs: int,
        lam: float = 1e-4,
        unstructured: str = "l1",
        *,
        exclude: Sequence[str] | None = None,
        root: str | None = None,
        log_per_layer: bool = True,
    ) -> None:
        super().__init__(plan, penalty_epochs, exclude=exclude, root=root, log_per_layer=log_per_layer)
        if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not lam > 0:
            raise ValueError(f"lam={lam!r} must be a number > 0 (group-Lasso strength, e.g. 1e-4)")
        if unstructured not in UNSTRUCTURED_MODES:
            raise ValueError(f"unstructured={unstructured!r}: accepted values are {list(UNSTRUCTURED_MODES)}")
        self.lam = float(lam)
        self.unstructured = unstructured
        self.groups: dict[str, list[GroupSet]] = {}
        self._group_list: list[list[GroupSet]] = []

    def validate_plan(self, plan: NPASScheme) -> None:
        """Refuse layers without a grouping (or unstructured with ``unstructured="refuse"``) before training."""
        for name, lp in plan.items():
            if lp.pruned:
                check_grouping(lp, layer_name=name, unstructured=self.unstructured)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        modules = planned_modules(self.pruned_model(pl_module), self.weight_plan)
        self.groups = {
            n: scheme_groups(modules[n][0].weight.shape, lp, layer_name=n, unstructured=self.unstructured)
            for n, lp in self.weight_plan.items()
        }

    def start_penalty(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = self._params[0].device if self._params else torch.device("cpu")
        self.groups = {n: [gs.to(device) for gs in sets] for n, sets in self.groups.items()}
        self._group_list = [self.groups[n] for n in self.weight_plan]

    def add_penalty_grad(self, indices: list[int]) -> Tensor:
        return add_group_lasso_grad_(
            [self._params[i] for i in indices], [self._group_list[i] for i in indices], self.lam
        )

    def final_masks(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Tensor]:
        return compute_masks(self.pruned_model(pl_module), self.plan)

    def penalty_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.log_residuals(pl_module)

    def residuals(self, pl_module: L.LightningModule) -> dict[str, float]:
        """``||W * ~mask|| / ||W||`` per layer, ``mask`` = the scheme's mask of the current weights."""
        masks = compute_masks(self.pruned_model(pl_module), self.plan)
        out: dict[str, float] = {}
        with torch.no_grad():
            for name, w in self.weights(pl_module).items():
                norm = float(w.norm())
                out[name] = float((w * ~masks[name]).norm()) / norm if norm > 0 and name in masks else 0.0
        return out

    def log_residuals(self, pl_module: L.LightningModule) -> dict[str, float]:
        res = self.residuals(pl_module)
        if res:
            weights = self.weights(pl_module)
            sq = {n: float(weights[n].detach().square().sum()) for n in res}
            total = sum(sq.values())
            overall = (sum(res[n] ** 2 * sq[n] for n in res) / total) ** 0.5 if total > 0 else 0.0
            metrics = {"prune/group_lasso_residual": overall}
            if self.log_per_layer:
                metrics.update({f"prune/group_lasso_residual/{n}": v for n, v in res.items()})
            pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=False)
        return res

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "lam": self.lam}
