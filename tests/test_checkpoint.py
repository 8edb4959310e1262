"""Pruned checkpoints reload with weights_only=True into a fresh timm model with the same outputs."""

from __future__ import annotations

import lightning as L
import pytest
import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from npas_lightning.callbacks import MagnitudePruning
from npas_lightning.checkpoint import load_plan, load_pruned, save_pruned
from npas_lightning.models import ClassifierModule
from npas_lightning.plan import NPASScheme


def _loader() -> DataLoader:
    # Random inputs: the test checks what is saved and reloaded, not accuracy.
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 4, (8,), generator=g)), batch_size=4)


@pytest.fixture(scope="module")
def pruned_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    L.seed_everything(0)
    module = ClassifierModule("resnet18", num_classes=4)
    cb = MagnitudePruning({"layer1.*": {"scheme": "filter", "rate": 2}, "layer*": {"scheme": "block_punched", "rate": 3}})
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp, callbacks=[cb])
    trainer.fit(module, _loader())
    path = tmp / "pruned.ckpt"
    trainer.save_checkpoint(path)
    return path, module.net.eval(), cb


def test_load_pruned_rebuilds_timm_model_with_same_outputs(pruned_ckpt):
    path, net, cb = pruned_ckpt
    model = load_pruned(path)
    assert type(model) is type(net) and not model.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-6)
    for name, mask in cb.masks.items():
        assert torch.equal(model.get_submodule(name).weight != 0, mask)
    assert load_plan(path) == cb.plan


def test_save_pruned_for_plain_models(tmp_path):
    net = timm.create_model("efficientnet_b0", num_classes=5, pretrained=False).eval()
    plan = NPASScheme.resolve({"blocks.*.conv_pw": {"scheme": "block_based", "rate": 4, "block": [16, 4]}}, net)
    from npas_lightning.algorithms.masking import apply_masks, compute_masks

    apply_masks(net, compute_masks(net, plan), plan)
    path = save_pruned(net, plan, tmp_path / "net.pt", backbone="efficientnet_b0", num_classes=5)
    model = load_pruned(path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))


def test_load_pruned_into_a_given_model(tmp_path):
    class Small(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 8, 3)
            self.b = torch.nn.Conv2d(8, 8, 3)
            self.fc = torch.nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(F.relu(self.b(F.relu(self.a(x)))).mean((2, 3)))

    net = Small()
    plan = NPASScheme.resolve({"*": {"scheme": "unstructured", "rate": 2}}, net)
    path = save_pruned(net, plan, tmp_path / "small.pt")
    with pytest.raises(ValueError, match=r"has no hyper_parameters 'backbone' and 'num_classes' .* pass model=<your nn.Module>"):
        load_pruned(path)
    model = load_pruned(path, model=Small())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), net.state_dict().values(), strict=True))


def test_refusals(tmp_path, pruned_ckpt):
    with pytest.raises(FileNotFoundError, match=r"checkpoint_path='.*missing.ckpt' does not exist"):
        load_pruned(tmp_path / "missing.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match=r"holds no pruning plan \('npas_plan'\); it was not saved with a pruning callback"):
        load_pruned(tmp_path / "plain.ckpt")
    torch.save({"state_dict": {}, "npas_plan": {}, "extra": torch.nn.ReLU()}, tmp_path / "pickled.ckpt")
    with pytest.raises(ValueError, match=r"cannot be loaded with weights_only=True"):
        load_pruned(tmp_path / "pickled.ckpt")
    torch.save([1, 2], tmp_path / "list.ckpt")
    with pytest.raises(ValueError, match=r"is not a checkpoint with a 'state_dict'"):
        load_pruned(tmp_path / "list.ckpt")
    path, _, cb = pruned_ckpt
    with pytest.raises(ValueError, match=r"does not fit the rebuilt ResNet: missing keys"):
        load_pruned(path, model=timm.create_model("resnet34", num_classes=4))
    with pytest.raises(TypeError, match=r"plan=dict must be a resolved NPASScheme"):
        save_pruned(torch.nn.Linear(2, 2), {"*": {}}, tmp_path / "x.pt")


def test_filter_type_plan_trains_saves_and_reloads(tmp_path):
    """A plan with a filter type: the transformed net is pruned through its sub-convs and reloads."""
    from npas_lightning.transforms import apply_filter_types

    L.seed_everything(0)
    # small lr: one step of the default lr on 4 random images makes efficientnet's eval outputs NaN
    module = ClassifierModule("efficientnet_b0", num_classes=4, optimizer={"name": "sgd", "lr": 1e-3})
    plan = NPASScheme.resolve(
        {"blocks.2.0.conv_dw": {"filter_type": "3x3dw_1x1", "scheme": "unstructured", "rate": 2},
         "blocks.*.conv_pw": {"scheme": "block_based", "rate": 2, "block": [8, 4]}},
        module.net,
    )
    module.net = apply_filter_types(module.net, plan)
    cb = MagnitudePruning(plan)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, callbacks=[cb])
    trainer.fit(module, _loader())
    assert "blocks.2.0.conv_dw.pw" in cb.masks and "blocks.2.0.conv_dw" not in cb.masks
    trainer.save_checkpoint(tmp_path / "ft.ckpt")
    model = load_pruned(tmp_path / "ft.ckpt")
    assert model.blocks[2][0].conv_dw.filter_type == "3x3dw_1x1"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = module.net.eval()(x)
        assert torch.isfinite(out).all() and torch.allclose(model(x), out, atol=1e-6)
    assert float((model.blocks[2][0].conv_dw.pw.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
