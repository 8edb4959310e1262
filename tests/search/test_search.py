"""Search loop (Algorithm 1 + baselines), failures, crash-safe state and exact resume.

The evaluator here is a TEST DOUBLE: a small deterministic function of the plan, so that dozens of
evaluations take milliseconds. It is not a product part (the product evaluator is
``npas_lightning.search.evaluator.FastEvaluator``, which fine-tunes and compiles for real).
"""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from npas_lightning.search.result import EvalResult
from npas_lightning.search.search import NPASSearch
from npas_lightning.search.space import Choice, LayerSpace, SearchSpace
from npas_lightning.search.state import STATE_FILE, StateError

_COMPARE = ("index", "step", "trajectory", "plan", "V", "h", "ok", "reason", "reward", "feasible", "epsilon",
            "pred_mean", "pred_std", "ei")


class ToyEvaluator:
    """Test double: accuracy falls with pruning rate, latency falls with it; some plans 'fail'."""

    def __init__(self, fail_every: int | None = None):
        self.fail_every = fail_every

    def evaluate(self, plan) -> EvalResult:
        V, h = 0.95, 0.0
        for i, lp in enumerate(plan.values()):
            cost = 1.0 + 0.1 * i
            V -= 0.004 * lp.rate * (1.6 if lp.scheme == "filter" else 1.0) * (1.3 if lp.filter_type != "keep" else 1.0)
            h += cost / lp.rate * (0.6 if lp.filter_type != "keep" else 1.0) * (0.8 if lp.scheme == "filter" else 1.0)
        if self.fail_every and int(plan.structural_hash(), 16) % self.fail_every == 0:
            raise RuntimeError("toy compile error")
        return EvalResult(V=round(V, 6), h=round(h, 6))


def toy_space(n_layers: int = 6) -> SearchSpace:
    choices = [Choice("keep", "unstructured", 1.0), Choice("1x1", "unstructured", 1.0)]
    for ft in ("keep", "1x1"):
        for s in ("filter", "block_punched"):
            for r in (2.0, 3.0, 5.0, 10.0):
                choices.append(Choice(ft, s, r, (8, 4) if s == "block_punched" else None))
    edges = [(i, i + 1) for i in range(n_layers - 1)] + [(0, 2), (2, 4)]
    return SearchSpace([LayerSpace(f"l{i}", "conv", tuple(choices)) for i in range(n_layers)], edges, "fx")


def _search(space, run_dir, **kw):
    defaults = dict(latency_budget_ms=4.0, alpha=0.05, strategy="qlearning_bo", num_evaluations=14, batch_size=3,
                    pool_size=16, min_gp_points=4, seed=0, run_dir=run_dir, model_fingerprint="toy-model",
                    progress=False, agent={"epsilon": {"name": "linear", "start": 1.0, "end": 0.1, "episodes": 10},
                                          "replay_batch": 8},
                    predictor={"train_iters": 15})
    defaults.update(kw)
    ev = defaults.pop("evaluator", ToyEvaluator())
    return NPASSearch(space, ev, **defaults)


def _strip(history):
    return [{k: r.get(k) for k in _COMPARE} for r in history]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(_strip(a), _strip(b), strict=True):
        for k in _COMPARE:
            vx, vy = x[k], y[k]
            if isinstance(vx, float) and math.isnan(vx):
                assert isinstance(vy, float) and math.isnan(vy), k
            else:
                assert vx == vy, (x["index"], k, vx, vy)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted qlearning_bo search (the history every resumed run must reproduce)."""
    return _search(toy_space(), tmp_path_factory.mktemp("ref")).run()


@pytest.mark.parametrize("strategy", ["qlearning_bo", "qlearning", "random"])
def test_strategies_run_and_never_repeat(tmp_path, strategy, reference):
    res = reference if strategy == "qlearning_bo" else _search(toy_space(), tmp_path, strategy=strategy).run()
    assert res.complete and len(res.history) == 14
    trajs = [tuple(r["trajectory"]) for r in res.history]
    assert len(set(trajs)) == len(trajs)
    for r in res.history:
        assert r["reward"] == pytest.approx(r["V"] - 0.05 * max(0.0, r["h"] - 4.0))  # equation (1)
    if strategy == "qlearning_bo":
        assert any("ei" in r for r in res.history[4:])  # the predictor ranked the pools after 4 points
        assert all("ei" not in r for r in res.history[:3])
    assert res.best is not None
    if res.feasible:
        feas = [r for r in res.history if r["feasible"]]
        assert res.best["V"] == max(r["V"] for r in feas)


def test_same_seed_same_history(tmp_path, reference):
    _same(reference.history, _search(toy_space(), tmp_path).run().history)


def test_resume_after_stop_gives_same_history(tmp_path, reference):
    first = _search(toy_space(), tmp_path).run(max_new_evaluations=5)  # stops inside step 2's batch
    assert not first.complete and len(first.history) == 5
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert len(state["history"]) == 5 and len(state["pending"]) == 1
    resumed = _search(toy_space(), tmp_path, resume=True).run()
    _same(reference.history, resumed.history)


class _Killer(ToyEvaluator):
    """Test double raising KeyboardInterrupt (a stop, not a candidate failure) at call ``k``."""

    def __init__(self, k):
        super().__init__()
        self.calls, self.k = 0, k

    def evaluate(self, plan):
        self.calls += 1
        if self.calls == self.k:
            raise KeyboardInterrupt
        return super().evaluate(plan)


def test_resume_after_interrupt_inside_evaluation(tmp_path, reference):
    with pytest.raises(KeyboardInterrupt):
        _search(toy_space(), tmp_path, evaluator=_Killer(8)).run()
    assert len(json.loads((tmp_path / STATE_FILE).read_text())["history"]) == 7  # the 8th was in flight
    _same(reference.history, _search(toy_space(), tmp_path, resume=True).run().history)


_SCRIPT = """
import sys, time
sys.path.insert(0, {testdir!r})
import test_search as t

class Slow(t.ToyEvaluator):
    def evaluate(self, plan):
        time.sleep(0.1)
        return super().evaluate(plan)

t._search(t.toy_space(), {run_dir!r}, evaluator=Slow()).run()
"""


def test_resume_after_real_process_kill(tmp_path, reference):
    script = tmp_path / "run.py"
    run_dir = tmp_path / "run"
    script.write_text(textwrap.dedent(_SCRIPT.format(testdir=str(Path(__file__).parent), run_dir=str(run_dir))))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    n = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            n = len(json.loads((run_dir / STATE_FILE).read_text())["history"])
        except (OSError, ValueError):
            n = 0
        if n >= 5:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n = len(json.loads((run_dir / STATE_FILE).read_text())["history"])
    assert 5 <= n < 14
    _same(reference.history, _search(toy_space(), run_dir, resume=True).run().history)


def test_failures_get_penalty_and_search_goes_on(tmp_path):
    res = _search(toy_space(), tmp_path, evaluator=ToyEvaluator(fail_every=3), failure_reward=-1.0,
                  strategy="qlearning").run()
    failed = [r for r in res.history if not r["ok"]]
    assert failed and len(res.history) == 14
    for r in failed:
        assert r["reward"] == -1.0 and "toy compile error" in r["reason"]
    assert res.best["ok"]


def test_no_feasible_plan_is_flagged(tmp_path):
    res = _search(toy_space(), tmp_path, latency_budget_ms=0.01, strategy="random", num_evaluations=5).run()
    assert not res.feasible
    assert res.best["reward"] == max(r["reward"] for r in res.history)


def test_mismatched_or_corrupt_state_is_refused_and_untouched(tmp_path):
    _search(toy_space(), tmp_path, num_evaluations=4).run()
    path = tmp_path / STATE_FILE
    before = path.read_bytes()
    with pytest.raises(StateError, match="search space"):
        _search(toy_space(n_layers=5), tmp_path, resume=True)
    with pytest.raises(StateError, match="model"):
        _search(toy_space(), tmp_path, resume=True, model_fingerprint="another-model")
    with pytest.raises(StateError, match=r"different search settings \(batch_size: state=3 now=2\)"):
        _search(toy_space(), tmp_path, resume=True, batch_size=2)
    with pytest.raises(StateError, match="already exists"):
        _search(toy_space(), tmp_path)
    assert path.read_bytes() == before
    path.write_text(before.decode()[: len(before) // 2])
    half = path.read_bytes()
    with pytest.raises(StateError, match="corrupt"):
        _search(toy_space(), tmp_path, resume=True)
    assert path.read_bytes() == half
    with pytest.raises(StateError, match="no state file"):
        _search(toy_space(), tmp_path / "empty", resume=True)


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"strategy": "bayes"}, "search.strategy='bayes'"), ({"num_evaluations": 0}, "num_evaluations=0"),
     ({"batch_size": 0}, "batch_size=0"), ({"pool_size": 2}, "pool_size=2"),
     ({"latency_budget_ms": -1.0}, "latency_budget_ms=-1.0"), ({"alpha": -0.1}, "alpha=-0.1"),
     ({"resume": True, "run_dir": None}, "needs a run_dir")],
)
def test_bad_search_arguments(tmp_path, kw, match):
    run_dir = kw.pop("run_dir", tmp_path)
    with pytest.raises(ValueError, match=match):
        _search(toy_space(), run_dir, **kw)


@pytest.mark.parametrize("strategy", ["qlearning_bo", "random"])
def test_small_space_is_exhausted_without_repeats(tmp_path, strategy):
    choices = (Choice("keep", "unstructured", 1.0), Choice("keep", "filter", 2.0))
    space = SearchSpace([LayerSpace("a", "conv", choices), LayerSpace("b", "conv", choices)])
    res = _search(space, tmp_path, strategy=strategy, num_evaluations=10, batch_size=3, pool_size=4,
                  min_gp_points=2).run()
    assert res.complete and len(res.history) == 4
    assert len({tuple(r["trajectory"]) for r in res.history}) == 4
