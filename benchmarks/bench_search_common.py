"""Shared by the search benchmarks: the recorded table of REAL evaluations and its replay evaluator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from npas_lightning.search.result import EvalResult
from npas_lightning.search.space import SearchSpace

RECORD = Path(__file__).parent / "results" / "bench_search_record.json"


def load_record(path: Path = RECORD) -> tuple[SearchSpace, dict[tuple[int, ...], dict], dict]:
    data = json.loads(path.read_text())
    space = SearchSpace.from_description(data["meta"]["space"])
    if space.fingerprint() != data["space_fingerprint"]:
        raise SystemExit("recorded table does not match its space description")
    table = {tuple(int(v) for v in k.split(",")): rec for k, rec in data["table"].items()}
    return space, table, data["meta"]


def latency(rec: dict, stat: str) -> float:
    """The recorded latency statistic (``median`` = the evaluator's h, or ``min``/``mean``) in ms."""
    return float(rec["h"]) if stat == "median" else float(rec["info"]["latency"][f"{stat}_ms"])


class RecordedEvaluator:
    """Replays REAL recorded evaluations (V, measured latency) of bench_search_record.py by plan."""

    def __init__(self, space: SearchSpace, table: dict[tuple[int, ...], dict], stat: str = "median") -> None:
        self.space, self.table, self.stat = space, table, stat

    def evaluate(self, plan) -> EvalResult:
        rec = self.table[self.space.trajectory_of(plan)]
        return EvalResult(V=float(rec["V"]), h=latency(rec, self.stat), ok=bool(rec["ok"]),
                          reason=rec.get("reason", ""))


def default_budget(table: dict, stat: str = "median", percentile: float = 40.0) -> float:
    """H = the given percentile of the recorded latencies (so that part of the space is feasible)."""
    return float(np.percentile([latency(r, stat) for r in table.values() if r["ok"]], percentile))
