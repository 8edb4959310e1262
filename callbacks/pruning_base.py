"""Base class of every pruning callback: masks as tensors, applied around each optimizer step.

Subclasses (MagnitudePruning, ADMM, FPGM, group-Lasso) only decide *when* to compute new masks and
*how* (through ``npas_lightning.algorithms``), then call :meth:`PruningCallback.set_masks`. This base
does the rest:

- resolves the plan against the pruned model inside the LightningModule at ``setup`` (a plan that
  matches no layer raises ``PlanError`` before training starts);
- masks the gradients in ``on_before_optimizer_step`` and the weights after every training batch,
  and zeroes the optimizer state (momentum, Adam moments) of removed weights when masks change, so
  nothing revives a pruned weight;
- computes masks on rank 0 and broadcasts them, so every DDP rank holds the same masks;
- saves masks, counters and the plan in ``state_dict`` (and the plan in the checkpoint, for
  :func:`npas_lightning.checkpoint.load_pruned`);
- logs ``prune/sparsity``, ``prune/rate`` and ``prune/sparsity/<layer>`` from the real zeros.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from npas_lightning.algorithms.masking import MaskApplier, sparsity_report
from npas_lightning.plan import NPASScheme, PlanError

AUTO_ROOTS = ("net", "model", "student")


def resolve_plan_root(
    pl_module: nn.Module,
    plan: NPASScheme | Mapping,
    root: str | None = None,
    exclude: Sequence[str] | None = None,
) -> tuple[str, NPASScheme]:
    """Find the pruned model inside ``pl_module`` and resolve ``plan`` against it.

    ``root`` is the attribute path of the pruned model (``""`` = the LightningModule itself). With
    ``root=None`` the first of the attributes ``net``, ``model``, ``student`` that is a module is
    tried, then the LightningModule itself; the first one the plan resolves against wins.

    Returns:
        ``(root, resolved plan)`` with layer names relative to the root module.
    """
    if root is None:
        candidates = [a for a in AUTO_ROOTS if isinstance(getattr(pl_module, a, None), nn.Module)] + [""]
    else:
        candidates = [root]
    errors: list[str] = []
    first: PlanError | None = None
    for name in candidates:
        try:
            module = pl_module.get_submodule(name) if name else pl_module
        except AttributeError:
            raise ValueError(
                f"root={name!r} is not a submodule of {type(pl_module).__name__}; pass the attribute path "
                "of the pruned model (e.g. 'net') or '' for the LightningModule itself"
            ) from None
        try:
            return name, _resolve(plan, module, exclude)
        except PlanError as err:
            first = first or err
            errors.append(f"root {name or '<LightningModule>'!r}: {err}")
    if len(errors) == 1:
        raise first
    raise PlanError("the plan matches no layer of " + type(pl_module).__name__ + "; " + "; ".join(errors)) from first


def _resolve(plan: NPASScheme | Mapping, model: nn.Module, exclude: Sequence[str] | None) -> NPASScheme:
    """``NPASScheme.resolve`` (layers whose filter types are already applied resolve as themselves)."""
    return NPASScheme.resolve(plan, model, exclude=exclude)


class PruningCallback(L.Callback):
    """Holds masks for a plan and keeps the model masked during training.

    Args:
        plan: an ``NPASScheme`` or its dict form (glob patterns -> LayerPlan fields), resolved
            against the model in ``setup``.
        exclude: layer-name globs excluded from a dict plan (default: the plan module's default,
            the first conv and the classifier).
        root: attribute path of the pruned model inside the LightningModule (see
            :func:`resolve_plan_root`); ``None`` finds it.
        log_per_layer: also log ``prune/sparsity/<layer>``.
    """

    def __init__(
        self,
        plan: NPASScheme | Mapping,
        *,
        exclude: Sequence[str] | None = None,
        root: str | None = None,
        log_per_layer: bool = True,
    ) -> None:
        if not isinstance(plan, (NPASScheme, Mapping)):
            raise TypeError(
                f"plan={plan!r} must be an NPASScheme or its dict form "
                "(e.g. {'*': {'scheme': 'block_punched', 'rate': 3}})"
            )
        if root is not None and not isinstance(root, str):
            raise TypeError(f"root={root!r} must be a str (attribute path of the pruned model) or None")
        self.plan_spec = plan
        self.exclude = list(exclude) if exclude is not None else None
        self.root = root
        self.log_per_layer = log_per_layer
        self.plan: NPASScheme | None = None
        self.root_name: str | None = None
        self.masks: dict[str, Tensor] = {}
        self.rate_scale: float = 0.0
        self.mask_updates: int = 0
        self.last_update_epoch: int = -1
        self.last_update_step: int = -1
        self._applier: MaskApplier | None = None
        self._loaded_plan: dict | None = None

    # ----------------------------------------------------------------- model lookup
    def pruned_model(self, pl_module: nn.Module) -> nn.Module:
        """The module the plan's layer names are relative to."""
        return pl_module.get_submodule(self.root_name) if self.root_name else pl_module

    def validate_plan(self, plan: NPASScheme) -> None:
        """Hook for subclasses: refuse plans they cannot prune (e.g. FPGM: filter only)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.root_name, self.plan = resolve_plan_root(pl_module, self.plan_spec, self.root, self.exclude)
        self.validate_plan(self.plan)
        self._check_loaded_plan()

    def _check_loaded_plan(self) -> None:
        if self._loaded_plan is None or self.plan is None:
            return
        loaded = NPASScheme.from_dict(self._loaded_plan)
        if loaded.structural_hash() != self.plan.structural_hash() or list(loaded) != list(self.plan):
            raise ValueError(
                f"the checkpoint's {type(self).__name__} state was saved with a different plan "
                f"({len(loaded)} layers, hash {loaded.structural_hash()}) than this callback's "
                f"({len(self.plan)} layers, hash {self.plan.structural_hash()}); resume with the same plan"
            )

    # ----------------------------------------------------------------- masks
    def set_masks(
        self, trainer: L.Trainer, pl_module: L.LightningModule, masks: Mapping[str, Tensor] | None, rate_scale: float
    ) -> None:
        """Install new masks (rank 0's are broadcast to all ranks) and apply them at once.

        Args:
            masks: ``{layer: bool mask}`` computed on rank 0 (other ranks may pass ``None``).
            rate_scale: fraction of the planned sparsity these masks reach (stored and logged).
        """
        if masks is not None:
            masks = {k: v.detach().to("cpu", torch.bool) for k, v in masks.items()}
        masks = trainer.strategy.broadcast(masks, src=0)
        model = self.pruned_model(pl_module)
        device = next(model.parameters()).device
        self.masks = {k: v.to(device) for k, v in masks.items()}
        self.rate_scale = float(trainer.strategy.broadcast(rate_scale, src=0))
        self.mask_updates += 1
        self.last_update_epoch = trainer.current_epoch
        self.last_update_step = trainer.global_step
        self._applier = MaskApplier(model, self.masks, self.plan)
        self._applier.weights_()
        self._applier.optimizer_state_(trainer.optimizers)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After checkpoint restore and device placement: re-install restored masks.
        if self.masks:
            model = self.pruned_model(pl_module)
            device = next(model.parameters()).device
            self.masks = {k: v.to(device) for k, v in self.masks.items()}
            self._applier = MaskApplier(model, self.masks, self.plan)
            self._applier.weights_()
            self._applier.optimizer_state_(trainer.optimizers)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if self._applier is not None:
            self._applier.grads_()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._applier is not None:
            self._applier.weights_()

    # ----------------------------------------------------------------- logging
    def sparsity(self, pl_module: nn.Module) -> dict:
        """:func:`~npas_lightning.algorithms.masking.sparsity_report` of the pruned model."""
        if self.plan is None:
            raise RuntimeError(f"{type(self).__name__} has no resolved plan yet (setup has not run)")
        return sparsity_report(self.pruned_model(pl_module), self.plan)

    def log_sparsity(self, pl_module: L.LightningModule) -> dict:
        """Log ``prune/sparsity``, ``prune/rate``, ``prune/rate_scale`` and per-layer sparsity."""
        report = self.sparsity(pl_module)
        metrics = {
            "prune/sparsity": report["sparsity"],
            "prune/rate": min(report["rate"], 1e6),
            "prune/rate_scale": self.rate_scale,
        }
        if self.log_per_layer:
            metrics.update({f"prune/sparsity/{k}": v["sparsity"] for k, v in report["layers"].items()})
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=False)
        return report

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.log_sparsity(pl_module)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "masks": {k: v.detach().cpu() for k, v in self.masks.items()},
            "rate_scale": self.rate_scale,
            "mask_updates": self.mask_updates,
            "last_update_epoch": self.last_update_epoch,
            "last_update_step": self.last_update_step,
            "plan": self.plan.to_dict() if self.plan is not None else None,
            "root": self.root_name,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.masks = {k: v.to(torch.bool) for k, v in state_dict["masks"].items()}
        self.rate_scale = float(state_dict["rate_scale"])
        self.mask_updates = int(state_dict["mask_updates"])
        self.last_update_epoch = int(state_dict["last_update_epoch"])
        self.last_update_step = int(state_dict["last_update_step"])
        self._loaded_plan = state_dict.get("plan")
        self._applier = None
        self._check_loaded_plan()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.plan is not None:
            checkpoint["npas_plan"] = self.plan.to_dict()
            checkpoint["npas_root"] = self.root_name or ""
