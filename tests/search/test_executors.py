"""Executors: the Ray executor on a real local Ray instance gives the local executor's history."""

import sys
from pathlib import Path

import pytest

from npas_lightning.search.executors import LocalExecutor, build_executor
from npas_lightning.search.result import EvalResult, safe_evaluate

sys.path.insert(0, str(Path(__file__).parent))
import test_search as ts  # noqa: E402  (the ToyEvaluator test double and toy space)


def test_ray_executor_same_history_as_local(tmp_path):
    ray = pytest.importorskip("ray")


    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(ts)  # the test double lives in a test module, ship it by value
    local = ts._search(ts.toy_space(), tmp_path / "local", num_evaluations=8).run()
    ex = build_executor("ray", num_cpus=1, init={"num_cpus": 2})
    try:
        assert ex.describe()["cluster_cpus"] == 2
        remote = ts._search(ts.toy_space(), tmp_path / "ray", num_evaluations=8, executor=ex).run()
        worker_pids = {pid for pid in ray.get([ray.remote(lambda: __import__("os").getpid()).remote()])}
    finally:
        ex.close()
    ts._same(local.history, remote.history)
    assert worker_pids and __import__("os").getpid() not in worker_pids  # evaluations ran out of process


class _Bad:
    def evaluate(self, plan):
        if plan == "nan":
            return EvalResult(V=float("nan"), h=1.0)
        if plan == "wrong":
            return (0.5, 1.0)
        raise ValueError("boom")


def test_safe_evaluate_turns_failures_into_results():
    nan = safe_evaluate(_Bad(), "nan")
    assert not nan.ok and "non-finite" in nan.reason
    wrong = safe_evaluate(_Bad(), "wrong")
    assert not wrong.ok and "expected EvalResult" in wrong.reason
    boom = list(LocalExecutor().map(_Bad(), ["x"]))[0]
    assert not boom.ok and "ValueError: boom" in boom.reason


def test_unknown_executor():
    with pytest.raises(ValueError, match=r"search.executor='dask' is not an executor; accepted: \['local', 'ray'\]"):
        build_executor("dask")
