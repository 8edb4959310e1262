"""Build a search from the ``search`` config group (``configs/search/default.yaml``).

Example::

    >>> space = build_space(cfg.search, net, example_input)
    >>> search = search_from_config(cfg.search, space, evaluator, run_dir="runs/x/search",
    ...                             model_fingerprint=model_fingerprint(net))
    >>> result = search.run()
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from npas_lightning.search.executors import build_executor
from npas_lightning.search.search import NPASSearch
from npas_lightning.search.space import SearchSpace, SpaceConfig, space_config_from_dict

__all__ = ["SEARCH_KEYS", "build_space", "search_from_config"]

#: keys of the ``search`` group consumed by :func:`search_from_config` (the others are read by the recipe)
SEARCH_KEYS = ("strategy", "executor", "resume", "run_dir", "seed", "num_evaluations", "batch_size", "pool_size",
               "min_gp_points", "latency_budget_ms", "alpha", "failure_reward", "progress", "space", "agent",
               "predictor", "ray", "reconstruction", "evaluator")


def _plain(cfg: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, DictConfig | ListConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra
        pass
    return cfg


def build_space(search_cfg: Mapping[str, Any], net: nn.Module, example_input: torch.Tensor) -> SearchSpace:
    """The search space of ``net`` from ``search.space``."""
    cfg = _plain(search_cfg)
    space_cfg = cfg.get("space")
    space_cfg = space_cfg if isinstance(space_cfg, SpaceConfig) else space_config_from_dict(space_cfg)
    return SearchSpace.from_model(net, example_input, space_cfg)


def search_from_config(search_cfg: Mapping[str, Any], space: SearchSpace, evaluator, *, run_dir: str | Path | None,
                       model_fingerprint: str, logger=None, **overrides: Any) -> NPASSearch:
    """An :class:`NPASSearch` (with its executor) from the ``search`` config; ``overrides`` win."""
    cfg = {**dict(_plain(search_cfg)), **overrides}
    unknown = sorted(set(cfg) - set(SEARCH_KEYS))
    if unknown:
        raise ValueError(f"search config has unknown key(s) {unknown}; accepted: {sorted(SEARCH_KEYS)}")
    executor_name = cfg.get("executor", "local")
    ray_cfg = dict(cfg.get("ray") or {})
    ex_kwargs = {}
    if executor_name == "ray":
        ex_kwargs = {"num_cpus": ray_cfg.get("num_cpus", 1), "num_gpus": ray_cfg.get("num_gpus", 0),
                     "address": ray_cfg.get("address"), "init": ray_cfg.get("init") or {}}
    executor = build_executor(executor_name, **ex_kwargs)
    return NPASSearch(
        space, evaluator,
        latency_budget_ms=float(cfg["latency_budget_ms"]), alpha=float(cfg.get("alpha", 0.05)),
        strategy=cfg.get("strategy", "qlearning_bo"), executor=executor,
        num_evaluations=int(cfg.get("num_evaluations", 60)), batch_size=int(cfg.get("batch_size", 4)),
        pool_size=int(cfg.get("pool_size", 64)), min_gp_points=int(cfg.get("min_gp_points", 4)),
        failure_reward=float(cfg.get("failure_reward", -1.0)), agent=cfg.get("agent"),
        predictor=cfg.get("predictor"), seed=int(cfg.get("seed", 0)), run_dir=run_dir,
        resume=bool(cfg.get("resume", False)), model_fingerprint=model_fingerprint,
        progress=bool(cfg.get("progress", True)), logger=logger,
    )
