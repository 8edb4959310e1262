"""The entry point: every recipe config runs under debug=smoke; train.py prints where things went; DDP on CPU."""

import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest

from npas_lightning.utils.builders import build_datamodule, build_model

ROOT = Path(__file__).resolve().parents[1]
# The NPAS pipelines take minutes even under debug=smoke (every phase compiles with TVM):
# tests/recipes/test_npas.py runs npas_effnet end to end (killed between phases and continued);
# the other pipeline configs run here with `pytest -m slow`.
RECIPES = [
    pytest.param(p.stem, marks=pytest.mark.slow) if p.stem.startswith("npas") else p.stem
    for p in sorted((ROOT / "configs" / "recipe").glob("*.yaml"))
]


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_runs_with_debug_smoke(make_cfg, recipe):
    cfg = make_cfg(f"recipe={recipe}", "debug=smoke")
    assert cfg.debug_smoke is True and cfg.trainer.limit_train_batches == 2
    result = hydra.utils.instantiate(cfg.recipe)(cfg)
    assert result["metrics"], f"recipe {recipe} returned no metrics"


def test_num_classes_and_channels_flow_from_data(make_cfg):
    cfg = make_cfg("data=fashion_mnist", "model=resnet18", "debug=smoke")
    assert cfg.model.num_classes == cfg.data.num_classes == 10
    assert cfg.model.in_chans == cfg.data.channels == 1


def test_class_count_mismatch_is_refused_before_training(make_cfg):
    cfg = make_cfg("model.num_classes=5", "debug=smoke")
    with pytest.raises(ValueError, match=r"model.num_classes=5 does not match the data \(DigitsDataModule has num_classes=10\)"):
        build_model(cfg, build_datamodule(cfg))


def _train(tmp_path: Path, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, NPAS_ROOT=str(tmp_path), WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def test_train_py_reports_metric_and_paths(tmp_path):
    proc = _train(tmp_path, "debug=smoke", "model=resnet18", "hydra.run.dir=" + str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = " ".join(proc.stdout.split())
    assert "best checkpoint:" in out and "resolved config:" in out and "run directory:" in out
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()
    assert list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))


def test_ddp_on_two_cpu_processes(tmp_path):
    proc = _train(
        tmp_path,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "debug=smoke",
        "model=resnet18",
        "hydra.run.dir=" + str(tmp_path / "run"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in log
    assert list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
