"""ClassifierModule: a LightningModule around any timm classifier."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import timm
import torch
import torch.nn.functional as F
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from npas_lightning.models.optim import build_optimizer, build_scheduler


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python (so checkpoints load with ``weights_only=True``)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, DictConfig | ListConfig):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra-core
        pass
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def create_timm_model(
    backbone: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool = False,
    checkpoint: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> torch.nn.Module:
    """``timm.create_model`` with clear errors for unknown names, offline pretrained weights and bad checkpoints."""
    if not timm.is_model(backbone):
        close = timm.list_models(f"*{backbone.split('_')[0]}*")[:8]
        raise ValueError(f"model.backbone={backbone!r} is not a timm model; similar names: {close}")
    kwargs = dict(model_kwargs or {})
    try:
        net = timm.create_model(backbone, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except Exception as err:
        if not pretrained:
            raise
        raise RuntimeError(
            f"model.pretrained=true: timm could not fetch pretrained weights for {backbone!r} ({type(err).__name__}: "
            f"{err}). Without hub access, set model.pretrained=false and pass local weights with "
            "model.checkpoint=/path/to/weights (.pth, .safetensors or a Lightning .ckpt)"
        ) from err
    if checkpoint:
        load_weights(net, checkpoint)
    return net


def load_weights(net: torch.nn.Module, checkpoint: str) -> None:
    """Load a timm ``.pth``/``.safetensors`` state dict or a Lightning ``.ckpt`` of ClassifierModule.

    Tensors whose shape differs from the model's (e.g. a classifier head for another class
    count) are skipped and named in a warning; every other key must match.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"model.checkpoint={checkpoint!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = {k.removeprefix("net."): v for k, v in state["state_dict"].items() if k.startswith("net.")}
    own = net.state_dict()
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    state = {k: v for k, v in state.items() if k not in skipped}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in skipped]
    if missing or unexpected:
        raise ValueError(
            f"model.checkpoint={checkpoint!r} does not fit the model: missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]}"
        )
    if skipped:
        import warnings

        warnings.warn(f"model.checkpoint: skipped tensors of another shape: {skipped}", stacklevel=2)


class ClassifierModule(L.LightningModule):
    """Image classification with any timm model; the paper's SGD + cosine setup by default.

    ``hard_activations=True`` builds NPAS Phase 1's variant (SiLU/swish -> hard-swish, sigmoid ->
    hard-sigmoid, SE gates included) with the same state-dict keys, so Phase-1 checkpoints reload.
    ``plan`` (an NPAS plan's dict form) replaces each layer whose ``filter_type`` is not ``keep`` by
    its candidate, so a searched architecture rebuilds from plain data before ``checkpoint`` loads.

    Example:
        >>> module = ClassifierModule("resnet18", num_classes=10)
        >>> module(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        backbone: str = "efficientnet_b0",
        num_classes: int = 10,
        in_chans: int = 3,
        pretrained: bool = False,
        model_kwargs: Mapping[str, Any] | None = None,
        checkpoint: str | None = None,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        label_smoothing: float = 0.0,
        hard_activations: bool = False,
        plan: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"model.label_smoothing={label_smoothing!r} is not valid: expected a number in [0, 1)")
        self.save_hyperparameters(
            {
                "backbone": backbone,
                "num_classes": int(num_classes),
                "in_chans": int(in_chans),
                "pretrained": bool(pretrained),
                "model_kwargs": _plain(model_kwargs) or {},
                "checkpoint": checkpoint,
                "optimizer": _plain(optimizer),
                "scheduler": _plain(scheduler),
                "label_smoothing": float(label_smoothing),
                "hard_activations": bool(hard_activations),
                "plan": _plain(plan),
            }
        )
        self.net = create_timm_model(
            backbone,
            num_classes=int(num_classes),
            in_chans=int(in_chans),
            pretrained=pretrained,
            model_kwargs=self.hparams.model_kwargs,
        )
        if hard_activations:  # NPAS Phase 1's model: hard-swish / hard-sigmoid, same state-dict keys
            from npas_lightning.transforms.activations import swap_activations

            swap_activations(self.net)
        if self.hparams.plan:  # the searched architecture: each layer's filter type from the plan
            from npas_lightning.plan import NPASScheme
            from npas_lightning.transforms.apply import apply_filter_types

            self.net = apply_filter_types(self.net, NPASScheme.resolve(self.hparams.plan, self.net), inplace=True)
        if checkpoint:
            load_weights(self.net, checkpoint)
        top5 = min(5, int(num_classes))
        self.train_loss, self.val_loss = MeanMetric(), MeanMetric()
        self.train_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.val_acc1_best = MaxMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        self.train_loss(loss)
        self.train_acc1(logits, y)
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc1", self.train_acc1, on_step=False, on_epoch=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self.val_loss.reset()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_loss(F.cross_entropy(logits, y))
        self.val_acc1(logits, y)
        self.val_acc5(logits, y)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc1", self.val_acc1, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc5", self.val_acc5, on_step=False, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        self.val_acc1_best(self.val_acc1.compute())
        self.log("val/acc1_best", self.val_acc1_best.compute(), sync_dist=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("test/loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True)
        self.log("test/acc1", (logits.argmax(1) == y).float().mean(), on_epoch=True, sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.parameters(), self.hparams.optimizer)
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        epochs = max(1, int(self.trainer.max_epochs or 1)) if self._trainer is not None else 1
        scheduler = build_scheduler(
            optimizer, self.hparams.scheduler, total_steps=total, steps_per_epoch=max(1, total // epochs)
        )
        if scheduler is None:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
