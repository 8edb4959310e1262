"""Where evaluations run: ``local`` (in process, sequential) or ``ray`` (one Ray task each).

Both yield results in the order of the submitted plans, so a seeded search records the same history
whichever executor ran it.

Example::

    >>> ex = build_executor("ray", num_cpus=1, init={"num_cpus": 2})
    >>> for res in ex.map(evaluator, plans): ...
    >>> ex.close()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from npas_lightning.search.result import EvalResult, Evaluator, safe_evaluate

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "RayExecutor", "build_executor"]


class Executor:
    name = ""

    def map(self, evaluator: Evaluator, plans: Sequence[Any]) -> Iterator[EvalResult]:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name}


class LocalExecutor(Executor):
    """Sequential, in-process evaluation."""

    name = "local"

    def map(self, evaluator: Evaluator, plans: Sequence[Any]) -> Iterator[EvalResult]:
        for plan in plans:
            yield safe_evaluate(evaluator, plan)


def _ray_evaluate(evaluator: Evaluator, plan) -> EvalResult:
    return safe_evaluate(evaluator, plan)


class RayExecutor(Executor):
    """Each evaluation is a Ray task with ``num_cpus``/``num_gpus`` resources.

    Args:
        num_cpus: CPUs reserved per evaluation task.
        num_gpus: GPUs reserved per evaluation task.
        address: ``None`` starts a local Ray instance (no dashboard); ``"auto"`` or ``"ray://..."``
            joins an existing cluster.
        init: extra ``ray.init`` kwargs for a local instance (e.g. ``{"num_cpus": 2}``).
    """

    name = "ray"

    def __init__(self, num_cpus: float = 1, num_gpus: float = 0, address: str | None = None,
                 init: dict[str, Any] | None = None) -> None:
        if num_cpus < 0 or num_gpus < 0:
            raise ValueError(f"search.ray: num_cpus={num_cpus} num_gpus={num_gpus} must be >= 0")
        import ray

        self._ray = ray
        self.num_cpus, self.num_gpus, self.address = num_cpus, num_gpus, address
        self._started = False
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": True}
            if address:
                kwargs["address"] = address
            else:
                kwargs.update(init or {})
            ray.init(**kwargs)
            self._started = True
        self._task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(_ray_evaluate)
        self._evaluator_ref = None
        self._evaluator_id: int | None = None

    def map(self, evaluator: Evaluator, plans: Sequence[Any]) -> Iterator[EvalResult]:
        if self._evaluator_id != id(evaluator):
            self._evaluator_ref = self._ray.put(evaluator)
            self._evaluator_id = id(evaluator)
        refs = [self._task.remote(self._evaluator_ref, plan) for plan in plans]
        try:
            for ref in refs:
                yield self._ray.get(ref)
        finally:
            for ref in refs:
                with contextlib.suppress(Exception):  # finished tasks cannot be cancelled
                    self._ray.cancel(ref)

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False

    def describe(self) -> dict[str, Any]:
        res = self._ray.cluster_resources() if self._ray.is_initialized() else {}
        return {"executor": "ray", "num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
                "address": self.address, "cluster_cpus": res.get("CPU"), "cluster_gpus": res.get("GPU")}


EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor}


def build_executor(name: str, **kwargs) -> Executor:
    """``search.executor`` -> an executor (``kwargs`` go to the Ray executor)."""
    if name not in EXECUTORS:
        raise ValueError(f"search.executor={name!r} is not an executor; accepted: {sorted(EXECUTORS)}")
    return LocalExecutor() if name == "local" else RayExecutor(**kwargs)
