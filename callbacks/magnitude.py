"""MagnitudePruning: one-shot or gradual (Zhu & Gupta) magnitude pruning along a per-layer plan."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from npas_lightning.algorithms.masking import compute_masks
from npas_lightning.algorithms.schedules import get_schedule, pruning_events
from npas_lightning.callbacks.pruning_base import PruningCallback
from npas_lightning.plan import NPASScheme


class MagnitudePruning(PruningCallback):
    """Prune each planned layer by weight magnitude with its scheme, one-shot or gradually.

    One-shot at the start of ``start_epoch`` when ``end_epoch == start_epoch``; otherwise masks are
    recomputed at the start of every ``frequency``-th epoch from ``start_epoch`` and at
    ``end_epoch``, with the sparsity fraction given by the named schedule (``"cubic"`` is Zhu &
    Gupta's ``s_f (1 - (1 - p)^3)``), reaching the plan's rates at ``end_epoch``. Masks stay applied
    for the rest of training (masked fine-tuning).

    Example:
        >>> trainer = L.Trainer(callbacks=[MagnitudePruning({"*": {"scheme": "block_punched", "rate": 3}})])

    Args:
        plan: an ``NPASScheme`` or its dict form.
        start_epoch: first epoch that prunes.
        end_epoch: epoch at which the final rates are reached (``>= start_epoch``).
        frequency: epochs between mask updates of gradual pruning (``>= 1``).
        schedule: schedule name (``npas_lightning.algorithms.schedules.list_schedules()``).
        **kwargs: ``exclude``, ``root``, ``log_per_layer`` of :class:`PruningCallback`.
    """

    def __init__(
        self,
        plan: NPASScheme | Mapping,
        start_epoch: int = 0,
        end_epoch: int = 0,
        frequency: int = 1,
        schedule: str = "cubic",
        *,
        exclude: Sequence[str] | None = None,
        root: str | None = None,
        log_per_layer: bool = True,
    ) -> None:
        super().__init__(plan, exclude=exclude, root=root, log_per_layer=log_per_layer)
        self.events = pruning_events(start_epoch, end_epoch, frequency)
        self.schedule_fn = get_schedule(schedule)
        self.start_epoch, self.end_epoch, self.frequency, self.schedule = start_epoch, end_epoch, frequency, schedule

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last = trainer.max_epochs - 1 if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
        if last is not None and self.end_epoch > last:
            rank_zero_warn(
                f"{type(self).__name__}: end_epoch={self.end_epoch} is past the last epoch ({last}, max_epochs="
                f"{trainer.max_epochs}); the plan's rates will not be reached"
            )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch not in self.events or epoch == self.last_update_epoch:
            return
        fraction = self.schedule_fn(self.events[epoch])
        masks = None
        if trainer.is_global_zero:
            masks = self.compute_masks(self.pruned_model(pl_module), fraction)
        self.set_masks(trainer, pl_module, masks, fraction)

    def compute_masks(self, model, fraction: float):
        """Masks at ``fraction`` of the plan's sparsity (subclasses choose another criterion)."""
        return compute_masks(model, self.plan, rate_scale=fraction)
