"""Optimizers and learning-rate schedules chosen by name (plain data in configs and checkpoints).

Example:
    >>> opt = build_optimizer(model.parameters(), {"name": "sgd", "lr": 0.05})
    >>> sched = build_scheduler(opt, {"name": "cosine", "warmup_epochs": 1}, total_steps=1000, steps_per_epoch=100)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "rmsprop": torch.optim.RMSprop,
}
DEFAULT_OPTIMIZER: dict[str, Any] = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}


def _cosine(step: int, total: int, warmup: int, min_factor: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _step(step: int, total: int, warmup: int, min_factor: float, *, every: int, gamma: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(min_factor, gamma ** ((step - warmup) // max(1, every)))


def _constant(step: int, total: int, warmup: int, min_factor: float) -> float:
    return (step + 1) / warmup if step < warmup else 1.0


SCHEDULES = {"cosine": _cosine, "step": _step, "constant": _constant}


class _ScheduleFactor:
    """A picklable per-step LR factor: named schedule + its arguments (no lambdas in checkpoints)."""

    def __init__(self, name: str, total: int, warmup: int, min_factor: float, **extra: Any) -> None:
        self.name, self.total, self.warmup, self.min_factor, self.extra = name, total, warmup, min_factor, extra

    def __call__(self, step: int) -> float:
        return SCHEDULES[self.name](step, self.total, self.warmup, self.min_factor, **self.extra)


def build_optimizer(params: Iterable, config: Mapping[str, Any] | None) -> torch.optim.Optimizer:
    """Instantiate the optimizer named by ``config['name']`` with the remaining keys as arguments."""
    options = dict(DEFAULT_OPTIMIZER if config is None else config)
    name = options.pop("name", "sgd")
    if name not in OPTIMIZERS:
        raise ValueError(f"model.optimizer.name={name!r} is not known; choose one of {sorted(OPTIMIZERS)}")
    if name != "sgd":
        options.pop("momentum", None)
        options.pop("nesterov", None)
    return OPTIMIZERS[name](params, **options)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    config: Mapping[str, Any] | None,
    *,
    total_steps: int,
    steps_per_epoch: int,
) -> LRScheduler | None:
    """A per-step scheduler for the schedule named by ``config['name']`` (None for ``none``)."""
    options = dict(config or {"name": "cosine"})
    name = options.pop("name", "cosine")
    if name == "none":
        return None
    if name not in SCHEDULES:
        raise ValueError(f"model.scheduler.name={name!r} is not known; choose one of {sorted(SCHEDULES) + ['none']}")
    warmup = int(round(float(options.pop("warmup_epochs", 0)) * steps_per_epoch))
    min_factor = float(options.pop("min_lr_factor", 0.0))
    extra: dict[str, Any] = {}
    if name == "step":
        extra = {"every": int(options.pop("step_epochs", 30)) * steps_per_epoch, "gamma": float(options.pop("gamma", 0.1))}
    if options:
        raise ValueError(f"model.scheduler has unknown keys {sorted(options)} for schedule {name!r}")
    return LambdaLR(optimizer, _ScheduleFactor(name, max(1, total_steps), warmup, min_factor, **extra))
