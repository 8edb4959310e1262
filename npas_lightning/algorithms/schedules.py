"""Pruning schedules, chosen by name.

A schedule maps training progress ``p`` in ``[0, 1]`` to the fraction of the final sparsity reached
at that point (0 = dense, 1 = the plan's full rate). Gradual pruning callbacks look schedules up by
name (``get_schedule("cubic")``); never pass lambdas.

Example:
    >>> get_schedule("cubic")(0.5)
    0.875
    >>> rate_at_fraction(4.0, 0.5)  # half of the way from dense (rate 1) to 75 % sparsity
    1.6
"""

from __future__ import annotations

from collections.abc import Callable

from npas_lightning.utils.registry import Registry

Schedule = Callable[[float], float]

_SCHEDULES: Registry[Schedule] = Registry("schedule", key="schedule")
#: Register ``fn(progress) -> sparsity fraction`` under a name (decorator).
register_schedule = _SCHEDULES.register
#: Names of the registered schedules, sorted.
list_schedules = _SCHEDULES.names
#: The schedule registered under a name; a ValueError lists the accepted names otherwise.
get_schedule = _SCHEDULES.get


def _check(progress: float) -> float:
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress={progress!r} must lie in [0, 1]")
    return float(progress)


@register_schedule("cubic")
def cubic(progress: float) -> float:
    """Zhu & Gupta (2017): ``s_t = s_f * (1 - (1 - p)^3)``, fast early, gentle near the end."""
    p = _check(progress)
    return 1.0 - (1.0 - p) ** 3


@register_schedule("linear")
def linear(progress: float) -> float:
    """Sparsity grows linearly with progress."""
    return _check(progress)


@register_schedule("constant")
def constant(progress: float) -> float:
    """The full rate at every pruning event (repeated one-shot pruning)."""
    _check(progress)
    return 1.0


def rate_at_fraction(rate: float, fraction: float) -> float:
    """The pruning rate (numel / kept) at ``fraction`` of the way from dense to ``rate`` in sparsity.

    Sparsity ``1 - 1/rate`` is scaled by ``fraction``: ``fraction=1`` gives ``rate``, 0 gives 1.0.
    """
    if rate < 1.0:
        raise ValueError(f"rate={rate!r} must be >= 1.0 (numel / kept weights)")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction={fraction!r} must lie in [0, 1]")
    sparsity = fraction * (1.0 - 1.0 / rate)
    return 1.0 / (1.0 - sparsity)


def pruning_events(start_epoch: int, end_epoch: int, frequency: int) -> dict[int, float]:
    """Epochs at which gradual pruning updates masks, mapped to their progress in (0, 1].

    Events fall at ``start_epoch, start_epoch + frequency, ...`` before ``end_epoch`` plus
    ``end_epoch`` itself, where the final rate is reached. Progress of an event at epoch ``e`` is
    ``(e - start + frequency) / (end - start + frequency)``, so the first event already prunes (as in
    Zhu & Gupta with an initial sparsity of 0 one step before ``start_epoch``). One-shot pruning
    (``end_epoch == start_epoch``) is the single event ``{start_epoch: 1.0}``.

    >>> pruning_events(0, 4, 2)
    {0: 0.3333333333333333, 2: 0.6666666666666666, 4: 1.0}
    """
    if start_epoch < 0:
        raise ValueError(f"start_epoch={start_epoch!r} must be >= 0")
    if end_epoch < start_epoch:
        raise ValueError(f"end_epoch={end_epoch!r} must be >= start_epoch={start_epoch!r}")
    if frequency < 1:
        raise ValueError(f"frequency={frequency!r} must be an integer >= 1 (epochs between mask updates)")
    span = end_epoch - start_epoch + frequency
    epochs = list(range(start_epoch, end_epoch, frequency)) + [end_epoch]
    return {e: (e - start_epoch + frequency) / span for e in epochs}
