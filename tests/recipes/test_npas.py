"""The end-to-end NPAS pipeline: smoke run killed between phases, then continued; argument checks."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import hydra
import pytest

from npas_lightning.recipes.npas import _fit_epochs

ROOT = Path(__file__).resolve().parents[2]


def _start(run_dir: Path, out_dir: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1", NPAS_ROOT=str(out_dir))
    cmd = [sys.executable, str(ROOT / "train.py"), "recipe=npas_effnet", "debug=smoke",
           f"recipe.run_dir={run_dir}", f"hydra.run.dir={out_dir}"]
    return subprocess.Popen(cmd, cwd=out_dir.parent, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def test_pipeline_killed_between_phases_continues_on_rerun(tmp_path):
    run_dir = tmp_path / "npas"
    first = _start(run_dir, tmp_path / "out1", tmp_path / "first.log")
    deadline = time.monotonic() + 900
    while not (run_dir / "phase1" / "phase.json").is_file():
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "phase1 did not finish in time"
        time.sleep(1)
    first.send_signal(signal.SIGKILL)  # between phases: start and phase1 are done, search has just begun
    first.wait()
    assert not (run_dir / "report" / "report.md").exists()

    second = _start(run_dir, tmp_path / "out2", tmp_path / "second.log")
    assert second.wait(timeout=1500) == 0, (tmp_path / "second.log").read_text()[-5000:]
    log = " ".join((tmp_path / "second.log").read_text().split())
    assert "phase start: done in an earlier run, skipped" in log
    assert "phase phase1: done in an earlier run, skipped" in log
    assert "NPAS phase: search" in log and "NPAS phase: algorithms" in log
    report = (run_dir / "report" / "report.md").read_text()
    for heading in ("## Results", "## Per-layer plan", "## Pruning algorithm search (Phase 3)", "Measurement:"):
        assert heading in report
    assert (run_dir / "report" / "report.json").is_file()
    assert (run_dir / "final" / "final.ckpt").is_file()


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("recipe.latency_fraction=null", r"recipe.latency_ms and recipe.latency_fraction are both null"),
        ("recipe.latency_fraction=1.5", r"recipe.latency_fraction=1.5 is not valid: expected a number in \(0, 1\]"),
        ("recipe.latency_ms=-2", r"recipe.latency_ms=-2 is not valid"),
        ("recipe.algorithms=[magnitude,obd]", r"recipe.algorithms=.*obd.* is not valid: expected a non-empty subset"),
        ("recipe.algorithm_epochs=1", r"recipe.algorithm_epochs=1 is not valid: expected an integer >= 2"),
    ],
)
def test_bad_arguments_fail_before_any_work(make_cfg, override, match, tmp_path):
    cfg = make_cfg("recipe=npas_effnet", "debug=smoke", override)
    with pytest.raises(ValueError, match=match):
        hydra.utils.instantiate(cfg.recipe)(cfg)
    assert not (Path(cfg.paths.output_dir) / "start").exists()


def test_missing_init_checkpoint_is_named(make_cfg):
    cfg = make_cfg("recipe=npas_effnet", "recipe.init_checkpoint=/nope/start.ckpt")
    with pytest.raises(FileNotFoundError, match=r"recipe.init_checkpoint='/nope/start.ckpt' does not exist"):
        hydra.utils.instantiate(cfg.recipe)(cfg)


def test_algorithm_phases_fit_in_the_trial():
    assert _fit_epochs("admm", {"admm_epochs": 5}, 2) == {"admm_epochs": 1}
    assert _fit_epochs("group_lasso", {"penalty_epochs": 1}, 6) == {"penalty_epochs": 1}
    assert _fit_epochs("magnitude", {"start_epoch": 0, "end_epoch": 4}, 4) == {"start_epoch": 0, "end_epoch": 2}
