"""DistillationModule: the KD loss by hand, a frozen eval-mode teacher, class checks, every pruning callback."""

from __future__ import annotations

import math

import lightning as L
import pytest
import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

from npas_lightning.callbacks import ADMMPruning, GeometricMedianPruning, GroupLassoPruning, MagnitudePruning
from npas_lightning.checkpoint import load_pruned
from npas_lightning.models import ClassifierModule
from npas_lightning.models.distillation import DistillationModule, distillation_loss, load_teacher


def test_kd_loss_matches_a_hand_computation():
    zs = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    zt = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    y = torch.tensor([1, 2])
    alpha, t = 0.3, 2.0

    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]

    ce = kl = 0.0
    for i in range(2):
        ce += -math.log(softmax(zs[i].tolist())[y[i]])
        ps, pt = softmax((zs[i] / t).tolist()), softmax((zt[i] / t).tolist())
        kl += sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt, strict=True))  # KL(p_t || p_s)
    ce, kl = ce / 2, kl / 2
    loss, ce_out, kd_out = distillation_loss(zs, zt, y, alpha=alpha, temperature=t)
    assert float(ce_out) == pytest.approx(ce, rel=1e-5) and float(kd_out) == pytest.approx(kl, rel=1e-5)
    assert float(loss) == pytest.approx((1 - alpha) * ce + alpha * t**2 * kl, rel=1e-5)
    loss0, _, _ = distillation_loss(zs, zt, y, alpha=0.0, temperature=t)
    assert float(loss0) == pytest.approx(ce, rel=1e-6)
    # teacher distribution first: swapping the arguments changes the value
    assert float(distillation_loss(zt, zs, y, alpha=1.0, temperature=t)[2]) != pytest.approx(kl, rel=1e-3)


def _data(n=8, classes=4):
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, classes, (n,), generator=g)), batch_size=8)


def _trainer(tmp_path, callbacks=(), epochs=2):
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                     default_root_dir=tmp_path, deterministic=True)


def test_teacher_is_frozen_in_eval_mode_and_outside_the_optimizer(tmp_path):
    L.seed_everything(0)
    teacher = timm.create_model("test_efficientnet", num_classes=4)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = DistillationModule("test_resnet", num_classes=4, teacher=teacher, alpha=0.7, temperature=3.0)
    trainer = _trainer(tmp_path)
    trainer.fit(module, _data())
    assert not module.teacher.training and all(not p.requires_grad for p in module.teacher.parameters())
    for k, v in module.teacher.state_dict().items():  # BatchNorm statistics included
        assert torch.equal(v, before[k]), k
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in module.net.parameters()}
    assert {"train/ce", "train/kd", "train/loss_epoch"} <= set(trainer.callback_metrics)
    module.train()
    assert module.net.training and not module.teacher.training


@pytest.mark.parametrize(
    "make",
    [
        lambda: MagnitudePruning({"*": {"scheme": "block_punched", "rate": 3, "block": [4, 4]}}),
        lambda: ADMMPruning({"*": {"scheme": "block_punched", "rate": 3, "block": [4, 4]}}, admm_epochs=1, rho=0.01),
        lambda: GroupLassoPruning({"*": {"scheme": "block_punched", "rate": 3, "block": [4, 4]}}, penalty_epochs=1, lam=1e-3),
        lambda: GeometricMedianPruning({"*": {"scheme": "filter", "rate": 2}}),
    ],
    ids=["magnitude", "admm", "group_lasso", "fpgm"],
)
def test_works_with_every_pruning_callback_and_prunes_the_student_only(tmp_path, make):
    L.seed_everything(0)
    teacher = timm.create_model("test_resnet", num_classes=4)
    module = DistillationModule("test_resnet", num_classes=4, teacher=teacher)
    cb = make()
    trainer = _trainer(tmp_path, [cb])
    trainer.fit(module, _data())
    assert cb.root_name == "net"
    report = cb.sparsity(module)
    for name, layer in report["layers"].items():
        assert layer["rate"] == pytest.approx(layer["target_rate"], rel=0.15), name
    assert all(torch.count_nonzero(p) == p.numel() for n, p in module.teacher.named_parameters() if n.endswith("weight") and p.dim() == 4)
    trainer.save_checkpoint(tmp_path / "kd.ckpt")
    reloaded = load_pruned(tmp_path / "kd.ckpt")  # the student, rebuilt from hparams + plan
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(reloaded(x), module.net.eval()(x), atol=1e-5)


def test_teacher_from_a_classifier_checkpoint(tmp_path):
    L.seed_everything(0)
    source = ClassifierModule("test_resnet", num_classes=4)
    with torch.no_grad():  # trained-looking BatchNorm statistics, so eval mode matters
        source.net(torch.randn(8, 3, 32, 32))
    # the layout of a ClassifierModule Lightning checkpoint: "net."-prefixed state dict + hyper_parameters
    torch.save({"state_dict": source.state_dict(), "hyper_parameters": dict(source.hparams)}, tmp_path / "teacher.ckpt")
    module = DistillationModule("test_efficientnet", num_classes=4, teacher_checkpoint=str(tmp_path / "teacher.ckpt"))
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(module.teacher(x), source.net.eval()(x), atol=1e-5)
    assert module.hparams.teacher_checkpoint == str(tmp_path / "teacher.ckpt") and module.hparams.backbone == "test_efficientnet"
    torch.save(source.net.state_dict(), tmp_path / "teacher.pth")  # timm weights need the backbone name
    again = load_teacher(tmp_path / "teacher.pth", backbone="test_resnet", num_classes=4)
    assert torch.allclose(again.eval()(x), source.net(x), atol=1e-5)


def test_mismatched_class_counts_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"the teacher \(ResNet\) has 5 classes and the student num_classes=4"):
        DistillationModule("test_resnet", num_classes=4, teacher=timm.create_model("test_resnet", num_classes=5))
    source = ClassifierModule("test_resnet", num_classes=5)
    torch.save({"state_dict": {f"net.{k}": v for k, v in source.net.state_dict().items()},
                "hyper_parameters": dict(source.hparams)}, tmp_path / "t5.ckpt")
    with pytest.raises(ValueError, match=r"teacher_checkpoint=.*t5.ckpt' has num_classes=5, the student 4"):
        DistillationModule("test_resnet", num_classes=4, teacher_checkpoint=str(tmp_path / "t5.ckpt"))
    torch.save(source.net.state_dict(), tmp_path / "t5.pth")
    with pytest.raises(ValueError, match=r"does not fit a test_resnet with 4 classes: tensors of another shape"):
        load_teacher(tmp_path / "t5.pth", backbone="test_resnet", num_classes=4)
    with pytest.raises(ValueError, match=r"student logits \(2, 4\) and teacher logits \(2, 5\) differ"):
        distillation_loss(torch.zeros(2, 4), torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"alpha": 1.5}, ValueError, r"alpha=1.5 must be a number in \[0, 1\]"),
        ({"temperature": 0}, ValueError, r"temperature=0 must be a number > 0"),
        ({"teacher": "resnet18"}, TypeError, r"teacher=str must be an nn.Module"),
        ({"teacher_backbone": None}, ValueError, r"DistillationModule needs a teacher"),
        ({"teacher_checkpoint": "/nonexistent.ckpt"}, FileNotFoundError, r"teacher_checkpoint='/nonexistent.ckpt' does not exist"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, match):
    kwargs = {"backbone": "test_resnet", "num_classes": 4, "teacher_backbone": "test_resnet", **kwargs}
    with pytest.raises(error, match=match):
        DistillationModule(**kwargs)
