"""recipe=search and the search config group compose and instantiate (the full run is marked slow)."""

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from npas_lightning.search.build import SEARCH_KEYS
from npas_lightning.search.space import SpaceConfig

ROOT = Path(__file__).resolve().parents[2]


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=["recipe=search", *overrides])


def test_search_config_composes():
    cfg = _cfg("search.executor=ray", "search.ray.address=auto", "search.num_evaluations=7")
    assert cfg.recipe._target_ == "npas_lightning.recipes.search.run"
    assert set(cfg.search) <= set(SEARCH_KEYS)
    assert cfg.search.agent.epsilon.episodes == 7
    assert cfg.search.ray.address == "auto"
    space = instantiate(cfg.search.space, _convert_="all")
    assert isinstance(space, SpaceConfig) and space.rates == (1.0, 2.0, 2.5, 3.0, 5.0, 7.0, 10.0)
    plain = OmegaConf.to_container(cfg.search.evaluator, resolve=True)
    assert plain["_target_"] == "npas_lightning.search.evaluator.FastEvaluator"
    import inspect

    from npas_lightning.recipes.search import run
    from npas_lightning.search.evaluator import FastEvaluator

    params = set(inspect.signature(FastEvaluator).parameters)
    assert {k for k in plain if not k.startswith("_")} <= params
    assert set(cfg.recipe) - {"_target_", "_partial_"} == set(inspect.signature(run).parameters) - {"cfg"}


def test_missing_checkpoint_is_refused_before_work(tmp_path):
    from npas_lightning.recipes.search import run

    with pytest.raises(FileNotFoundError, match=r"recipe.checkpoint='/nope.ckpt' does not exist"):
        run(_cfg(), checkpoint="/nope.ckpt")


@pytest.mark.slow
def test_recipe_search_smoke_end_to_end(tmp_path):
    """Real Phase-2 run: resnet18 on digits, real fine-tune, real TVM compile + timing (minutes on 2 cores)."""
    out = subprocess.run(
        [sys.executable, "train.py", "recipe=search", "debug=smoke", "model=resnet18", "logger=csv",
         f"paths.log_dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    states = list(tmp_path.rglob("search_state.json"))
    pngs = list(tmp_path.rglob("search_pareto.png"))
    assert states and pngs
