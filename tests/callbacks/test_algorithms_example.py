"""ADMM, group-Lasso and FPGM in the plain-Lightning setting of examples/lightning_project.py.

The example's own LightningModule (LitClassifier: SmallCNN at ``.net``) and data (scikit-learn's
real digits images) are imported from the script; only the pruning callback differs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning as L
import pytest
import torch

from npas_lightning.callbacks import ADMMPruning, GeometricMedianPruning, GroupLassoPruning
from npas_lightning.checkpoint import load_pruned

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lightning_project.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("npas_example_lightning_project", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BLOCK_PUNCHED = {"*": {"scheme": "block_punched", "rate": 3, "block": [8, 4]}}


@pytest.mark.parametrize(
    "make",
    [
        lambda: ADMMPruning(BLOCK_PUNCHED, admm_epochs=1, rho=0.01, admm_interval=2),
        lambda: GroupLassoPruning(BLOCK_PUNCHED, penalty_epochs=1, lam=1e-3),
        lambda: GeometricMedianPruning({"*": {"scheme": "filter", "rate": 2}}),
    ],
    ids=["admm", "group_lasso", "fpgm"],
)
def test_callback_in_the_example_project(example, tmp_path, make):
    L.seed_everything(0)
    train, val = example.digits_loaders()
    module = example.LitClassifier()
    cb = make()
    trainer = L.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=0, callbacks=[cb], default_root_dir=tmp_path,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train, val)
    assert list(cb.plan) == ["conv2", "conv3"]  # stem and head excluded by default
    report = cb.sparsity(module)
    for name, layer in report["layers"].items():
        assert layer["rate"] == pytest.approx(layer["target_rate"], rel=0.05), name
        assert torch.equal(module.net.get_submodule(name).weight != 0, cb.masks[name])
    trainer.save_checkpoint(tmp_path / "pruned.ckpt")
    reloaded = load_pruned(tmp_path / "pruned.ckpt", model=example.SmallCNN())
    x, _ = next(iter(val))
    assert torch.allclose(reloaded(x), module.net.eval()(x), atol=1e-6)
