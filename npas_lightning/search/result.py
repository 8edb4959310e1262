"""The evaluation result type and the evaluator interface shared by the search loop and executors."""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["EvalResult", "Evaluator", "safe_evaluate"]


@dataclass
class EvalResult:
    """Outcome of evaluating one plan.

    Attributes:
        V: validation top-1 accuracy in [0, 1].
        h: measured latency in milliseconds.
        ok: False when the candidate failed (compile error, NaN, exception); it then gets the search's
            failure reward and ``reason`` says why.
        reason: failure reason (empty when ok).
        info: extra measurements (latency stats, fine-tune seconds, cache hit ...), JSON-able.
    """

    V: float
    h: float
    ok: bool = True
    reason: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Evaluator(Protocol):
    """Anything with ``evaluate(plan) -> EvalResult``; must be picklable for the Ray executor."""

    def evaluate(self, plan) -> EvalResult: ...


def safe_evaluate(evaluator: Evaluator, plan) -> EvalResult:
    """Run ``evaluator.evaluate(plan)``; an ``Exception`` or a non-finite V/h becomes ``ok=False``.

    ``BaseException`` that is not an ``Exception`` (KeyboardInterrupt, SystemExit) propagates: that
    is a stop of the search, not a failed candidate.
    """
    t0 = time.perf_counter()
    try:
        res = evaluator.evaluate(plan)
    except Exception as e:  # noqa: BLE001 - a failing candidate must not stop the search
        tb = traceback.format_exception_only(type(e), e)[-1].strip()
        return EvalResult(V=float("nan"), h=float("nan"), ok=False, reason=tb[:500],
                          info={"eval_seconds": time.perf_counter() - t0})
    if not isinstance(res, EvalResult):
        return EvalResult(V=float("nan"), h=float("nan"), ok=False,
                          reason=f"evaluator returned {type(res).__name__}, expected EvalResult")
    res.info.setdefault("eval_seconds", time.perf_counter() - t0)
    if res.ok and not (math.isfinite(res.V) and math.isfinite(res.h)):
        res.ok = False
        res.reason = f"non-finite result V={res.V} h={res.h}"
    return res
