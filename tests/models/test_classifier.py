import pytest
import torch

from npas_lightning.models import ClassifierModule
from npas_lightning.models.optim import build_optimizer, build_scheduler


@pytest.mark.parametrize("backbone", ["efficientnet_b0", "mobilenetv3_large_100", "resnet18"])
def test_forward_and_training_step(backbone):
    torch.manual_seed(0)
    module = ClassifierModule(backbone, num_classes=7, in_chans=1)
    x, y = torch.randn(4, 1, 32, 32), torch.randint(0, 7, (4,))
    assert module(x).shape == (4, 7)
    loss = module.loss(module(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)
    assert module.hparams.backbone == backbone and module.hparams.num_classes == 7


def test_pretrained_without_hub_says_how_to_pass_a_checkpoint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=r"model.pretrained=true: .*model.checkpoint=/path/to/weights"):
        ClassifierModule("resnet18", num_classes=10, pretrained=True)


def test_local_checkpoint_loads_and_skips_another_head(tmp_path):
    source = ClassifierModule("resnet18", num_classes=1000)
    torch.save(source.net.state_dict(), tmp_path / "resnet18.pth")
    module = ClassifierModule("resnet18", num_classes=10, checkpoint=str(tmp_path / "resnet18.pth"))
    assert torch.equal(module.net.conv1.weight, source.net.conv1.weight)
    same = ClassifierModule("resnet18", num_classes=1000, checkpoint=str(tmp_path / "resnet18.pth"))
    x = torch.randn(2, 3, 32, 32)
    source.eval()
    same.eval()
    assert torch.allclose(source(x), same(x))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"checkpoint": "/nope/weights.pth"}, FileNotFoundError, r"model.checkpoint='/nope/weights.pth' does not exist"),
        ({"backbone": "resnet_nonexistent"}, ValueError, r"model.backbone='resnet_nonexistent' is not a timm model"),
        ({"label_smoothing": 1.5}, ValueError, r"model.label_smoothing=1.5 is not valid"),
    ],
)
def test_bad_model_arguments(kwargs, error, match):
    args = {"backbone": "resnet18", "num_classes": 10} | kwargs
    with pytest.raises(error, match=match):
        ClassifierModule(**args)


def test_optimizer_and_schedule_by_name():
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = build_optimizer(params, {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4})
    sched = build_scheduler(opt, {"name": "cosine", "warmup_epochs": 1}, total_steps=20, steps_per_epoch=5)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.02) and lrs[4] == pytest.approx(0.1)  # linear warm-up over 5 steps
    assert lrs[-1] < 0.01  # cosine decays to ~0
    with pytest.raises(ValueError, match=r"model.optimizer.name='lamb' is not known; choose one of"):
        build_optimizer(params, {"name": "lamb"})
    with pytest.raises(ValueError, match=r"model.scheduler.name='poly' is not known"):
        build_scheduler(opt, {"name": "poly"}, total_steps=10, steps_per_epoch=1)


def test_hard_activations_build_the_phase1_variant_with_the_same_keys():
    plain = ClassifierModule("efficientnet_b0", num_classes=10)
    hard = ClassifierModule("efficientnet_b0", num_classes=10, hard_activations=True)
    kinds = {type(m).__name__ for m in hard.net.modules()}
    assert "Hardswish" in kinds and "SiLU" not in kinds
    assert list(plain.state_dict()) == list(hard.state_dict())
    assert hard.hparams.hard_activations is True


def test_plan_filter_types_rebuild_the_architecture_before_the_checkpoint_loads(tmp_path):
    plan = {"blocks.2.0.conv_dw": {"filter_type": "3x3dw_1x1", "scheme": "unstructured", "rate": 1}}
    searched = ClassifierModule("efficientnet_b0", num_classes=10, hard_activations=True, plan=plan)
    assert type(searched.net.blocks[2][0].conv_dw).__name__ != "Conv2dSame"
    assert "blocks.2.0.conv_dw.weight" not in searched.net.state_dict()
    torch.save(searched.net.state_dict(), tmp_path / "searched.pth")
    again = ClassifierModule("efficientnet_b0", num_classes=10, hard_activations=True, plan=plan,
                             checkpoint=str(tmp_path / "searched.pth"))
    x = torch.randn(2, 3, 32, 32)
    searched.eval()
    again.eval()
    assert torch.allclose(searched(x), again(x))
