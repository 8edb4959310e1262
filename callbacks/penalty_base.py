"""Shared timing of the penalty-based pruning callbacks (ADMM, group-Lasso).

Both run in two phases:

1. ``penalty`` (epochs ``0 .. penalty_epochs - 1``): no mask; before every optimizer step the
   gradient of a regulariser is added straight to ``param.grad`` of the planned weights (so the
   user's ``training_step`` is untouched; the hook runs after AMP unscaling and before gradient
   clipping, once per optimizer step, on gradients DDP has already averaged);
2. at the end of epoch ``penalty_epochs - 1`` the layers are hard-pruned to the plan (masks from
   rank 0, broadcast) and training continues masked (``retrain``), as every PruningCallback does.

Subclasses implement the math hooks (:meth:`start_penalty`, :meth:`add_penalty_grad`,
:meth:`after_optimizer_step`, :meth:`penalty_epoch_end`, :meth:`final_masks`, :meth:`end_penalty`)
with functions of ``npas_lightning.algorithms``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor

from npas_lightning.algorithms.masking import planned_modules
from npas_lightning.callbacks.pruning_base import PruningCallback
from npas_lightning.plan import LayerPlan, NPASScheme

PHASES = ("penalty", "retrain")


def check_epochs(value: Any, name: str) -> int:
    """An int >= 1, else a ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{name}={value!r} must be an integer >= 1 (epochs of the penalty phase before the hard prune); "
            "use MagnitudePruning for one-shot pruning without a penalty phase"
        )
    return value


class PenaltyPruning(PruningCallback):
    """Penalty phase for ``penalty_epochs`` epochs, then hard prune and masked retraining.

    Args:
        plan: an ``NPASScheme`` or its dict form.
        penalty_epochs: epochs with the regulariser (>= 1); the hard prune happens at the end of
            epoch ``penalty_epochs - 1``.
        **kwargs: ``exclude``, ``root``, ``log_per_layer`` of :class:`PruningCallback`.
    """

    #: Name of the epochs argument in error messages (``admm_epochs`` for ADMM).
    epochs_arg = "penalty_epochs"
    #: Prefix of the logged penalty value (``prune/<penalty_name>``).
    penalty_name = "penalty"

    def __init__(
        self,
        plan: NPASScheme | Mapping,
        penalty_epochs: int,
        *,
        exclude: Sequence[str] | None = None,
        root: str | None = None,
        log_per_layer: bool = True,
    ) -> None:
        super().__init__(plan, exclude=exclude, root=root, log_per_layer=log_per_layer)
        self.penalty_epochs = check_epochs(penalty_epochs, self.epochs_arg)
        self.phase = "penalty"
        self.penalty_steps = 0
        self.weight_plan: dict[str, LayerPlan] = {}
        self._params: list[Tensor] = []
        self._active: dict[int, list[int]] = {}

    # ----------------------------------------------------------------- subclass hooks
    def start_penalty(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Build or restore the penalty's state on the weights' device (phase ``penalty`` only)."""

    def add_penalty_grad(self, indices: list[int]) -> Tensor:
        """Add the regulariser's gradient to ``self._params[i].grad`` for ``i in indices``; return its value."""
        raise NotImplementedError

    def after_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Called after every training batch of the penalty phase."""

    def penalty_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Called at the end of every penalty epoch, before a hard prune (log here)."""

    def final_masks(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Tensor]:
        """The hard-prune masks (computed on rank 0 only)."""
        raise NotImplementedError

    def end_penalty(self) -> None:
        """Free the penalty's state after the hard prune."""

    # ----------------------------------------------------------------- helpers
    def weights(self, pl_module: L.LightningModule) -> dict[str, Tensor]:
        """``{weight name: weight parameter}`` of the pruned layers of the plan."""
        modules = planned_modules(self.pruned_model(pl_module), self.weight_plan)
        return {name: modules[name][0].weight for name in self.weight_plan}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        model = self.pruned_model(pl_module)
        self.weight_plan = {n: lp for n, (_, lp) in planned_modules(model, self.plan).items() if lp.pruned}
        max_epochs = trainer.max_epochs
        if stage == "fit" and max_epochs is not None and max_epochs >= 0 and self.phase == "penalty":
            if max_epochs < self.penalty_epochs:
                warnings.warn(
                    f"{type(self).__name__}({self.epochs_arg}={self.penalty_epochs}) with trainer.max_epochs="
                    f"{max_epochs}: training ends inside the penalty phase, so the layers are not hard-pruned "
                    "and the plan's rates are not reached; resume with more epochs to finish",
                    stacklevel=2,
                )
            elif max_epochs == self.penalty_epochs:
                warnings.warn(
                    f"{type(self).__name__}({self.epochs_arg}={self.penalty_epochs}) with trainer.max_epochs="
                    f"{max_epochs}: the hard prune happens at the end of the last epoch, with no masked retraining",
                    stacklevel=2,
                )

    # ----------------------------------------------------------------- Lightning hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._params = list(self.weights(pl_module).values())
        self._active = {}
        if self.phase == "penalty":
            self.start_penalty(trainer, pl_module)
            if trainer.current_epoch >= self.penalty_epochs:  # resumed past the phase's end
                self.hard_prune(trainer, pl_module)

    def _indices(self, optimizer: Any) -> list[int]:
        key = id(optimizer)
        if key not in self._active:
            owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
            self._active[key] = [i for i, p in enumerate(self._params) if id(p) in owned]
        return self._active[key]

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if self.phase == "penalty" and self._params:
            value = self.add_penalty_grad(self._indices(optimizer))
            self.penalty_steps += 1
            pl_module.log(f"prune/{self.penalty_name}", value, on_step=True, on_epoch=True, sync_dist=False)
        super().on_before_optimizer_step(trainer, pl_module, optimizer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.phase == "penalty" and self._params:
            self.after_optimizer_step(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.phase == "penalty":
            self.penalty_epoch_end(trainer, pl_module)
            if trainer.current_epoch >= self.penalty_epochs - 1:
                self.hard_prune(trainer, pl_module)
        pl_module.log("prune/phase", float(PHASES.index(self.phase)), on_step=False, on_epoch=True)
        super().on_train_epoch_end(trainer, pl_module)

    def hard_prune(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Install the final masks (rank 0's) and switch to masked retraining."""
        masks = self.final_masks(trainer, pl_module) if trainer.is_global_zero else None
        self.set_masks(trainer, pl_module, masks, 1.0)
        self.phase = "retrain"
        self.end_penalty()

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "phase": self.phase, "penalty_steps": self.penalty_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        phase = state_dict.get("phase", "penalty")
        if phase not in PHASES:
            raise ValueError(f"checkpoint {type(self).__name__} state has phase={phase!r}; expected one of {list(PHASES)}")
        self.phase = phase
        self.penalty_steps = int(state_dict.get("penalty_steps", 0))

    @staticmethod
    def _to(tensors: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
        return {k: v.to(device) for k, v in tensors.items()}
