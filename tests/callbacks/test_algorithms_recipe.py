"""configs/pruning/{admm,group_lasso,fpgm}.yaml and model=distillation through `recipe=prune debug=smoke`."""

from __future__ import annotations

import hydra
import pytest
import torch

from npas_lightning.checkpoint import load_plan


@pytest.mark.parametrize(
    ("pruning", "extra"),
    [
        pytest.param("group_lasso", [], marks=pytest.mark.slow),
        pytest.param("fpgm", [], marks=pytest.mark.slow),
        ("admm", ["model=distillation", "model.teacher_backbone=test_efficientnet"]),
    ],
    ids=["group_lasso", "fpgm", "admm+kd"],
)
def test_prune_recipe_runs_each_algorithm_config(make_cfg, pruning, extra):
    cfg = make_cfg("recipe=prune", f"pruning={pruning}", "debug=smoke", *extra, "model.backbone=test_efficientnet")
    out = hydra.utils.instantiate(cfg.recipe)(cfg)
    ckpt = out["artifacts"]["pruned checkpoint"]
    plan = load_plan(ckpt)
    assert plan and out["metrics"]["prune/sparsity"] > 0.4
    state = torch.load(ckpt, weights_only=True)
    callback_state = next(v for k, v in state["callbacks"].items() if pruning_class(pruning) in k)
    assert callback_state["masks"]
    if extra:
        assert any(k.startswith("teacher.") for k in state["state_dict"])


def pruning_class(name: str) -> str:
    return {"admm": "ADMMPruning", "group_lasso": "GroupLassoPruning", "fpgm": "GeometricMedianPruning"}[name]
