"""recipe=prune: smoke run end to end (init weights, prune, fine-tune, save, reload) and its refusals."""

from __future__ import annotations

import hydra
import pytest
import timm
import torch
from omegaconf import open_dict

from npas_lightning.checkpoint import load_plan, load_pruned


def test_prune_recipe_smoke_from_init_checkpoint(make_cfg, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich tables print full layer names
    torch.manual_seed(3)
    init = timm.create_model("resnet18", num_classes=10, pretrained=False)
    init_path = tmp_path / "init.pth"
    torch.save(init.state_dict(), init_path)
    # lr 0: the fine-tune leaves kept weights at their initial values, so the start is checkable
    cfg = make_cfg("recipe=prune", "pruning=magnitude", "debug=smoke", "model=resnet18", "pruning.end_epoch=3",
                   f"recipe.init_checkpoint={init_path}", "model.optimizer.lr=0.0")
    result = hydra.utils.instantiate(cfg.recipe)(cfg)
    out = capsys.readouterr().out
    assert result["recipe"] == "prune"
    ckpt = result["artifacts"]["pruned checkpoint"]
    # debug=smoke prunes at epoch 0 (one epoch): the default plan's rate 3 is reached
    assert result["metrics"]["prune/rate"] == pytest.approx(3.0, rel=0.05)
    assert "sparsity 0.6" in out and "layer1.0.conv1" in out
    plan = load_plan(ckpt)
    assert "conv1" not in plan and "fc" not in plan and "layer1.0.conv1" in plan  # default exclusions
    model = load_pruned(ckpt)
    w, w0 = model.layer1[0].conv1.weight, init.layer1[0].conv1.weight
    assert float((w == 0).float().mean()) == pytest.approx(2 / 3, abs=0.02)
    assert torch.equal(w[w != 0], w0[w != 0])
    assert torch.equal(model.conv1.weight, init.conv1.weight)


def test_prune_recipe_refusals(make_cfg, tmp_path):
    cfg = make_cfg("recipe=prune", "debug=smoke")
    assert cfg.pruning._target_.endswith("MagnitudePruning")  # the recipe's default callback
    with open_dict(cfg):
        cfg.pruning = None
    with pytest.raises(ValueError, match=r"recipe=prune needs a pruning callback, but pruning=null"):
        hydra.utils.instantiate(cfg.recipe)(cfg)
    cfg = make_cfg("recipe=prune", "pruning=magnitude", "recipe.init_checkpoint=/nope.ckpt")
    with pytest.raises(FileNotFoundError, match=r"recipe.init_checkpoint='/nope.ckpt' does not exist"):
        hydra.utils.instantiate(cfg.recipe)(cfg)
    cfg = make_cfg("recipe=prune", "pruning=magnitude", "recipe.save_name=a/b.ckpt")
    with pytest.raises(ValueError, match=r"recipe.save_name='a/b.ckpt' must be a plain file name"):
        hydra.utils.instantiate(cfg.recipe)(cfg)
    cfg = make_cfg("recipe=prune", "pruning=magnitude", "pruning._target_=torch.nn.Identity", "~pruning.plan",
                   "~pruning.start_epoch", "~pruning.end_epoch", "~pruning.frequency", "~pruning.schedule")
    with pytest.raises(TypeError, match=r"pruning._target_='torch.nn.Identity' built a Identity, not a PruningCallback"):
        hydra.utils.instantiate(cfg.recipe)(cfg)


def test_prune_recipe_distils_from_a_teacher_checkpoint(make_cfg, tmp_path):
    from npas_lightning.models import ClassifierModule

    teacher = ClassifierModule("resnet18", num_classes=10)
    torch.save({"state_dict": teacher.state_dict(), "hyper_parameters": dict(teacher.hparams)}, tmp_path / "t.ckpt")
    cfg = make_cfg("recipe=prune", "debug=smoke", "model=resnet18", f"recipe.teacher_checkpoint={tmp_path / 't.ckpt'}")
    result = hydra.utils.instantiate(cfg.recipe)(cfg)
    ckpt = torch.load(result["artifacts"]["pruned checkpoint"], weights_only=True)
    assert any(k.startswith("teacher.") for k in ckpt["state_dict"]) and ckpt["hyper_parameters"]["alpha"] == 0.5
    assert result["metrics"]["prune/sparsity"] > 0
    cfg = make_cfg("recipe=prune", "recipe.teacher_checkpoint=/nope/t.ckpt")
    with pytest.raises(FileNotFoundError, match=r"recipe.teacher_checkpoint='/nope/t.ckpt' does not exist"):
        hydra.utils.instantiate(cfg.recipe)(cfg)
