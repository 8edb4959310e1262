"""Knowledge distillation (Hinton et al. 2015): a timm student trained against a frozen teacher.

``DistillationModule`` is a :class:`~npas_lightning.models.classifier.ClassifierModule` (the student
is ``.net``, so every pruning callback finds it, checkpoints reload with ``load_pruned`` and the
validation metrics are the classifier's) plus a frozen teacher kept in eval mode. Its training loss:

    loss = (1 - alpha) * CE(z_s, y) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

with the teacher's distribution first (the KL of the student from the teacher), averaged over the
batch. ``T^2`` keeps the soft term's gradient scale independent of ``T``.

Example:
    >>> teacher = timm.create_model("resnet18", num_classes=10)                       # doctest: +SKIP
    >>> module = DistillationModule("resnet18", num_classes=10, teacher=teacher)       # doctest: +SKIP
    >>> module = DistillationModule("efficientnet_b0", num_classes=10,
    ...                             teacher_checkpoint="baseline.ckpt", alpha=0.7)      # doctest: +SKIP
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from npas_lightning.models.classifier import ClassifierModule, _plain, create_timm_model
from npas_lightning.models.optim import build_optimizer, build_scheduler

__all__ = ["DistillationModule", "distillation_loss", "load_teacher", "model_num_classes"]


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.5,
    temperature: float = 4.0,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, ce, kd)`` with ``loss = (1 - alpha) * ce + alpha * T^2 * kd``.

    ``kd = KL(softmax(z_t/T) || softmax(z_s/T))`` averaged over the batch (``batchmean``);
    ``ce`` is the cross-entropy of the student with the labels.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ; "
            "the teacher and the student must classify the same classes"
        )
    ce = F.cross_entropy(student_logits, target, label_smoothing=label_smoothing)
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    kd = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    loss = (1.0 - alpha) * ce + alpha * temperature**2 * kd
    return loss, ce, kd


def model_num_classes(model: nn.Module) -> int | None:
    """Output classes of a classifier: timm's ``num_classes`` or the last Linear's ``out_features``."""
    n = getattr(model, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def load_teacher(
    checkpoint: str | Path,
    *,
    backbone: str | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """A teacher from a checkpoint: a ClassifierModule/DistillationModule ``.ckpt`` (backbone, classes
    and channels read from its hyper-parameters; a pruned one is rebuilt with
    :func:`npas_lightning.checkpoint.load_pruned`), or timm weights (``.pth``/``.safetensors``, with
    ``backbone`` given). Loaded strictly: a classifier head for another class count is an error.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"teacher_checkpoint={str(checkpoint)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        ckpt: Any = {"state_dict": load_file(str(path))}
        lightning = False
    else:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        lightning = isinstance(ckpt, Mapping) and "state_dict" in ckpt
        if not lightning:
            ckpt = {"state_dict": ckpt}
    hp = dict(ckpt.get("hyper_parameters") or {}) if lightning else {}
    backbone = backbone or hp.get("backbone")
    if not backbone:
        raise ValueError(
            f"teacher_checkpoint={str(path)!r} names no backbone (no Lightning hyper_parameters); "
            "pass teacher_backbone=<timm model name>"
        )
    classes = int(hp.get("num_classes") or num_classes or 0)
    if num_classes is not None and classes and classes != int(num_classes):
        raise ValueError(
            f"teacher_checkpoint={str(path)!r} has num_classes={classes}, the student {num_classes}; "
            "the teacher and the student must classify the same classes"
        )
    if lightning and "npas_plan" in ckpt:
        from npas_lightning.checkpoint import load_pruned

        return load_pruned(path)
    net = create_timm_model(
        backbone,
        num_classes=classes or int(num_classes or 0),
        in_chans=int(hp.get("in_chans") or in_chans or 3),
        model_kwargs=dict(model_kwargs if model_kwargs is not None else (hp.get("model_kwargs") or {})),
    )
    state = ckpt["state_dict"]
    if lightning:
        state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    own = net.state_dict()
    wrong = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and own[k].shape != v.shape}
    if wrong:
        raise ValueError(
            f"teacher_checkpoint={str(path)!r} does not fit a {backbone} with {num_classes} classes: tensors "
            f"of another shape {dict(list(wrong.items())[:3])} (a head for another class count?)"
        )
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"teacher_checkpoint={str(path)!r} does not fit teacher_backbone={backbone!r}: missing keys "
            f"{list(missing)[:5]}, unexpected keys {list(unexpected)[:5]}"
        )
    return net


class DistillationModule(ClassifierModule):
    """A ClassifierModule student distilled from a frozen, eval-mode teacher.

    Args:
        backbone, num_classes, in_chans, pretrained, model_kwargs, checkpoint, optimizer, scheduler,
            label_smoothing: the student, as in :class:`ClassifierModule`.
        teacher_checkpoint: teacher weights (see :func:`load_teacher`); a ClassifierModule ``.ckpt``
            names its own backbone.
        teacher_backbone: timm name of the teacher (needed for ``.pth``/``.safetensors`` weights;
            with neither checkpoint nor ``teacher``, a randomly initialised model of this name).
        teacher_model_kwargs: extra ``timm.create_model`` arguments of the teacher.
        teacher: an ``nn.Module`` teacher instead (plain Lightning use; not saved in hparams).
        alpha: weight of the distillation term, in [0, 1] (0 = plain CE).
        temperature: softmax temperature ``T`` (> 0).

    The teacher's parameters are frozen and it stays in eval mode whatever ``train()`` is called
    (BatchNorm statistics never move); it is a submodule (moved with the student, saved in the
    checkpoint under ``teacher.``); the optimizer only sees the student's parameters. Pruning
    callbacks prune ``.net`` (the student). Logs ``train/ce`` and ``train/kd`` besides the
    classifier's metrics.
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
        teacher_checkpoint: str | None = None,
        teacher_backbone: str | None = None,
        teacher_model_kwargs: Mapping[str, Any] | None = None,
        teacher: nn.Module | None = None,
        alpha: float = 0.5,
        temperature: float = 4.0,
        hard_activations: bool = False,
        plan: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha!r} must be a number in [0, 1] (weight of the distillation term)")
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
            raise ValueError(f"temperature={temperature!r} must be a number > 0")
        if teacher is not None and not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher={type(teacher).__name__} must be an nn.Module (or pass teacher_checkpoint)")
        if teacher is None and teacher_checkpoint is None and teacher_backbone is None:
            raise ValueError(
                "DistillationModule needs a teacher: teacher_checkpoint=<.ckpt/.pth of a trained model>, "
                "teacher=<nn.Module>, or teacher_backbone=<timm name> (random init)"
            )
        super().__init__(
            backbone, num_classes, in_chans, pretrained, model_kwargs, checkpoint, optimizer, scheduler, label_smoothing,
            hard_activations=hard_activations, plan=plan,
        )
        hp = dict(self.hparams)
        hp.update(
            teacher_checkpoint=None if teacher_checkpoint is None else str(teacher_checkpoint),
            teacher_backbone=teacher_backbone,
            teacher_model_kwargs=_plain(teacher_model_kwargs),
            alpha=float(alpha),
            temperature=float(temperature),
        )
        self.save_hyperparameters(hp)
        if teacher is None:
            if teacher_checkpoint is not None:
                teacher = load_teacher(
                    teacher_checkpoint, backbone=teacher_backbone, num_classes=int(num_classes),
                    in_chans=int(in_chans), model_kwargs=_plain(teacher_model_kwargs),
                )
            else:
                teacher = create_timm_model(
                    str(teacher_backbone), num_classes=int(num_classes), in_chans=int(in_chans),
                    model_kwargs=_plain(teacher_model_kwargs) or {},
                )
        classes = model_num_classes(teacher)
        if classes is not None and classes != int(num_classes):
            raise ValueError(
                f"the teacher ({type(teacher).__name__}) has {classes} classes and the student num_classes="
                f"{num_classes}; the teacher and the student must classify the same classes"
            )
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher.eval()

    def train(self, mode: bool = True) -> DistillationModule:
        """Switch the student's mode; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        loss, ce, kd = distillation_loss(
            logits, teacher_logits, y, alpha=self.hparams.alpha, temperature=self.hparams.temperature,
            label_smoothing=self.hparams.label_smoothing,
        )
        self.train_loss(loss)
        self.train_acc1(logits, y)
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/ce", ce, on_step=False, on_epoch=True)
        self.log("train/kd", kd, on_step=False, on_epoch=True)
        self.log("train/acc1", self.train_acc1, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        """The classifier's optimizer and schedule over the student's parameters only."""
        optimizer = build_optimizer(self.net.parameters(), self.hparams.optimizer)
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        epochs = max(1, int(self.trainer.max_epochs or 1)) if self._trainer is not None else 1
        scheduler = build_scheduler(
            optimizer, self.hparams.scheduler, total_steps=total, steps_per_epoch=max(1, total // epochs)
        )
        if scheduler is None:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
