"""Epsilon schedules for the epsilon-greedy agent, chosen by name.

``epsilon(episode)`` where ``episode`` is the number of evaluations completed so far.

Example::

    >>> sched = get_epsilon_schedule("linear", start=1.0, end=0.1, episodes=100)
    >>> sched(0), sched(50), sched(100), sched(500)
    (1.0, 0.55, 0.1, 0.1)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from npas_lightning.utils.registry import Registry

__all__ = ["EpsilonSchedule", "get_epsilon_schedule", "list_epsilon_schedules", "register_epsilon_schedule"]

_REGISTRY: Registry[type] = Registry("epsilon schedule", key="search.agent.epsilon.name")


def register_epsilon_schedule(name: str) -> Callable[[type], type]:
    """Class decorator registering an epsilon schedule under ``name``."""

    def deco(cls: type) -> type:
        cls.name = name
        return _REGISTRY.register(name)(cls)

    return deco


class EpsilonSchedule:
    name: str = ""

    def __call__(self, episode: int) -> float:  # pragma: no cover - interface
        raise NotImplementedError


@register_epsilon_schedule("constant")
@dataclass
class Constant(EpsilonSchedule):
    value: float = 0.1

    def __call__(self, episode: int) -> float:
        return float(self.value)


@register_epsilon_schedule("linear")
@dataclass
class Linear(EpsilonSchedule):
    """Linear from ``start`` to ``end`` over ``episodes`` evaluations, then ``end``."""

    start: float = 1.0
    end: float = 0.1
    episodes: int = 100

    def __call__(self, episode: int) -> float:
        if self.episodes <= 0:
            return float(self.end)
        f = min(max(episode, 0) / self.episodes, 1.0)
        return round(float(self.start + (self.end - self.start) * f), 12)


@register_epsilon_schedule("piecewise")
@dataclass
class Piecewise(EpsilonSchedule):
    """MetaQNN-style: ``values[k]`` for ``counts[k]`` episodes each, then the last value."""

    values: Sequence[float] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
    counts: Sequence[int] = (10,) * 10

    def __call__(self, episode: int) -> float:
        acc = 0
        for v, c in zip(self.values, self.counts, strict=False):
            acc += c
            if episode < acc:
                return float(v)
        return float(self.values[-1])


#: Names of the registered epsilon schedules, sorted.
list_epsilon_schedules = _REGISTRY.names


def get_epsilon_schedule(name: str, **params) -> EpsilonSchedule:
    """Instantiate the schedule registered as ``name`` with ``params``."""
    cls = _REGISTRY.get(name)
    try:
        sched = cls(**params)
    except TypeError as e:
        raise ValueError(f"search.agent.epsilon: bad parameters {params} for schedule {name!r}: {e}") from e
    for ep in (0, 1, 10**6):
        v = sched(ep)
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"search.agent.epsilon: schedule {name!r} {params} gives epsilon={v} outside [0, 1]")
    return sched
