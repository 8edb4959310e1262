"""The Phase-2 search loop (paper Algorithm 1) and its baselines, behind one interface.

Strategies (``search.strategy``):

* ``qlearning_bo``: each step the agent generates a pool of ``pool_size`` schemes, the GP+WL
  predictor (fit on all evaluated data) picks the top ``batch_size`` by Expected Improvement, those
  are evaluated, Q values are updated with their rewards (+ replay) and the GP is refit next step.
  Until ``min_gp_points`` evaluations exist, the first ``batch_size`` pool members are taken.
* ``qlearning``: the agent's own epsilon-greedy samples are evaluated (no predictor).
* ``random``: uniformly random schemes.

Already-evaluated schemes are never evaluated twice. Every evaluation is recorded and the whole state
is written atomically to ``<run_dir>/search_state.json`` (see :mod:`npas_lightning.search.state`);
``resume=True`` continues from it exactly. A failed candidate gets ``failure_reward`` and its reason
is logged; the search goes on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from npas_lightning.search.agent import QLearningAgent, reward_eq1
from npas_lightning.search.executors import Executor, LocalExecutor
from npas_lightning.search.predictor import GPPredictor, expected_improvement
from npas_lightning.search.result import EvalResult, Evaluator
from npas_lightning.search.space import SearchSpace
from npas_lightning.search.state import STATE_FILE, StateError, check_state, load_state, save_state

__all__ = ["STRATEGIES", "NPASSearch", "SearchResult"]

log = logging.getLogger(__name__)
STRATEGIES = ("qlearning_bo", "qlearning", "random")


@dataclass
class SearchResult:
    """What a search returns.

    Attributes:
        history: one record per evaluation (trajectory, plan, V, h, reward, ok, reason, epsilon ...).
        best: the record of the best plan with ``h <= H`` (highest V, then reward), or the
            best-reward record when none meets H (then ``feasible`` is False).
        feasible: whether ``best`` meets the latency budget.
        complete: whether the evaluation budget was used up (False after ``max_new_evaluations``).
        run_dir: where the state file (and reports) live, if any.
    """

    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    feasible: bool
    complete: bool
    run_dir: Path | None = None
    space_summary: dict[str, Any] = field(default_factory=dict)

    @property
    def best_plan_dict(self) -> dict[str, Any] | None:
        return None if self.best is None else self.best["plan"]


def _select_best(history: list[dict[str, Any]], H: float) -> tuple[dict[str, Any] | None, bool]:
    ok = [r for r in history if r["ok"]]
    feas = [r for r in ok if r["h"] <= H]
    if feas:
        return max(feas, key=lambda r: (r["V"], r["reward"], -r["index"])), True
    pool = ok or history
    if not pool:
        return None, False
    return max(pool, key=lambda r: (r["reward"], -r["index"])), False


class NPASSearch:
    """Q-learning (+ Bayesian predictor) search for a per-layer NPAS scheme.

    Args:
        space: the search space.
        evaluator: ``evaluate(plan) -> EvalResult``.
        latency_budget_ms: H of equation (1).
        alpha: latency penalty per ms above H in equation (1).
        strategy: ``qlearning_bo`` | ``qlearning`` | ``random``.
        executor: where evaluations run (default: local).
        num_evaluations: total evaluation budget (failures count).
        batch_size: B, evaluations per step.
        pool_size: schemes the agent generates per step for the predictor to rank.
        min_gp_points: evaluations needed before the predictor is used.
        failure_reward: reward of a failed candidate (compile error, NaN ...).
        agent: kwargs of :class:`QLearningAgent` (``learning_rate``, ``discount``, ``epsilon`` ...).
        predictor: kwargs of :class:`GPPredictor` (``wl_iterations``, ``train_iters`` ...).
        seed: seeds the agent and the search's own generator.
        run_dir: where ``search_state.json`` is written (``None`` = no state file).
        resume: continue from ``run_dir``'s state file.
        model_fingerprint: identity of the Phase-1 model (see ``state.model_fingerprint``).
        to_plan: trajectory -> the object handed to the evaluator (default ``space.to_plan``).
        progress: show a rich progress bar with best-so-far.
        logger: optional Lightning logger; ``search/...`` metrics go to ``log_metrics``.
    """

    def __init__(self, space: SearchSpace, evaluator: Evaluator, *, latency_budget_ms: float, alpha: float = 0.01,
                 strategy: str = "qlearning_bo", executor: Executor | None = None, num_evaluations: int = 50,
                 batch_size: int = 4, pool_size: int = 64, min_gp_points: int = 4, failure_reward: float = -1.0,
                 agent: dict[str, Any] | None = None, predictor: dict[str, Any] | None = None, seed: int = 0,
                 run_dir: str | Path | None = None, resume: bool = False, model_fingerprint: str = "",
                 to_plan=None, progress: bool = True, logger=None) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"search.strategy={strategy!r} is not a strategy; accepted: {list(STRATEGIES)}")
        if num_evaluations < 1:
            raise ValueError(f"search.num_evaluations={num_evaluations}: must be >= 1")
        if batch_size < 1:
            raise ValueError(f"search.batch_size={batch_size}: must be >= 1")
        if strategy == "qlearning_bo" and pool_size < batch_size:
            raise ValueError(f"search.pool_size={pool_size}: must be >= search.batch_size={batch_size}")
        if not math.isfinite(latency_budget_ms) or latency_budget_ms <= 0:
            raise ValueError(f"search.latency_budget_ms={latency_budget_ms}: must be a positive number of ms")
        if alpha < 0:
            raise ValueError(f"search.alpha={alpha}: must be >= 0")
        if resume and run_dir is None:
            raise ValueError("search.resume=true needs a run_dir holding search_state.json")
        self.space = space
        self.evaluator = evaluator
        self.H = float(latency_budget_ms)
        self.alpha = float(alpha)
        self.strategy = strategy
        self.executor = executor or LocalExecutor()
        self.num_evaluations = int(num_evaluations)
        self.batch_size = int(batch_size)
        self.pool_size = int(pool_size)
        self.min_gp_points = max(2, int(min_gp_points))
        self.failure_reward = float(failure_reward)
        self.seed = int(seed)
        self.agent = QLearningAgent(space, seed=seed, **(agent or {}))
        self.predictor = GPPredictor(space, **(predictor or {})) if strategy == "qlearning_bo" else None
        self.rng = np.random.default_rng([seed, 1])
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.model_fingerprint = model_fingerprint
        self.to_plan = to_plan or space.to_plan
        self.progress = progress
        self.logger = logger
        self.history: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []
        self.step = 0
        self._seen: set[tuple[int, ...]] = set()
        self.state_path = None if self.run_dir is None else self.run_dir / STATE_FILE
        if self.state_path is not None:
            if resume:
                self._restore(load_state(self.state_path))
            elif self.state_path.exists():
                raise StateError(
                    f"{self.state_path} already exists: set search.resume=true to continue that search, or use "
                    "another run dir. The file was left untouched."
                )

    # ------------------------------------------------------------------ identity / state
    def config_signature(self) -> dict[str, Any]:
        """Settings a resumed search must share with the one that wrote the state."""
        return {"strategy": self.strategy, "seed": self.seed, "batch_size": self.batch_size,
                "pool_size": self.pool_size, "latency_budget_ms": self.H, "alpha": self.alpha,
                "failure_reward": self.failure_reward, "min_gp_points": self.min_gp_points,
                "agent": {k: v for k, v in self.agent.state_dict().items() if k in ("learning_rate", "discount",
                                                                                    "q_init")}}

    def state_dict(self) -> dict[str, Any]:
        return {
            "space_fingerprint": self.space.fingerprint(),
            "model_fingerprint": self.model_fingerprint,
            "config": self.config_signature(),
            "num_evaluations": self.num_evaluations,
            "step": self.step,
            "history": self.history,
            "pending": self.pending,
            "agent": self.agent.state_dict(),
            "rng": self.rng.bit_generator.state,
            "predictor": self.predictor.state_dict() if self.predictor is not None else None,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        check_state(state, path=self.state_path, space_fingerprint=self.space.fingerprint(),
                    model_fingerprint=self.model_fingerprint, config=self.config_signature())
        try:
            self.agent.load_state_dict(state["agent"])
            self.rng.bit_generator.state = state["rng"]
            self.history = list(state["history"])
            self.pending = list(state["pending"])
            self.step = int(state["step"])
            self._seen = {tuple(r["trajectory"]) for r in self.history} | {tuple(p["trajectory"])
                                                                          for p in self.pending}
        except (KeyError, TypeError, ValueError) as e:
            raise StateError(f"search state {self.state_path} is corrupt ({e!r}); the file was left untouched") from e

    def _save(self) -> None:
        if self.state_path is not None:
            save_state(self.state_path, self.state_dict())

    # ------------------------------------------------------------------ proposals
    def _unseen(self, gen, n: int, max_tries: int) -> list[tuple[int, ...]]:
        out: list[tuple[int, ...]] = []
        local: set[tuple[int, ...]] = set()
        for _ in range(max_tries):
            if len(out) >= n:
                break
            t = gen()
            if t in self._seen or t in local:
                continue
            out.append(t)
            local.add(t)
        if len(out) < n:  # the agent keeps repeating itself: fill with unseen random schemes
            small = self.space.size_log10() < 6
            total = int(round(10 ** self.space.size_log10())) if small else None
            while len(out) < n:
                if total is not None and len(self._seen) + len(local) >= total:
                    break  # a small space is exhausted
                t = self.space.random_trajectory(self.rng)
                if t not in self._seen and t not in local:
                    out.append(t)
                    local.add(t)
        return out

    def _propose(self) -> list[dict[str, Any]]:
        episode = len(self.history)
        n = min(self.batch_size, self.num_evaluations - episode)
        eps = self.agent.epsilon(episode)
        extra: list[dict[str, Any]] = [{} for _ in range(n)]
        if self.strategy == "random":
            batch = self._unseen(lambda: self.space.random_trajectory(self.rng), n, 100 * n)
        elif self.strategy == "qlearning":
            batch = self._unseen(lambda: self.agent.generate(episode, eps), n, 100 * n)
        else:
            pool = self._unseen(lambda: self.agent.generate(episode, eps), self.pool_size, 4 * self.pool_size)
            hist = self.history
            batch = []
            if len(hist) >= self.min_gp_points and pool:
                rewards = [r["reward"] for r in hist]
                self.predictor.fit([tuple(r["trajectory"]) for r in hist], rewards)
                mean, std = self.predictor.predict(pool)
                ei = expected_improvement(mean, std, max(rewards), self.predictor.xi * float(np.std(rewards)))
                order = np.argsort(-ei, kind="stable")[:n]
                batch = [pool[i] for i in order]
                extra = [{"pred_mean": float(mean[i]), "pred_std": float(std[i]), "ei": float(ei[i])} for i in order]
            elif pool:
                batch = pool[:n]
        return [{"trajectory": list(t), "epsilon": eps, "step": self.step, **x}
                for t, x in zip(batch, extra[: len(batch)], strict=True)]

    # ------------------------------------------------------------------ recording
    def reward(self, res: EvalResult) -> float:
        return reward_eq1(res.V, res.h, self.H, self.alpha) if res.ok else self.failure_reward

    def _record(self, prop: dict[str, Any], res: EvalResult) -> dict[str, Any]:
        traj = tuple(prop["trajectory"])
        rec = {
            "index": len(self.history), **prop,
            "plan": self.space.to_plan_dict(traj),
            "V": float(res.V), "h": float(res.h), "ok": bool(res.ok), "reason": res.reason,
            "reward": self.reward(res), "feasible": bool(res.ok and res.h <= self.H),
            "info": res.info,
        }
        for k in ("plan",):
            rec[k] = {n: {**f, "block": None if f["block"] is None else list(f["block"])} for n, f in rec[k].items()}
        if not res.ok:
            log.warning("search: candidate %d failed (%s); reward %.4f", rec["index"], res.reason, rec["reward"])
        return rec

    def _learn_from_step(self, step: int) -> None:
        for r in self.history:
            if r["step"] == step:
                self.agent.observe(r["trajectory"], r["reward"])
        self.agent.replay_step()

    def _log(self, rec: dict[str, Any], best: dict[str, Any] | None) -> None:
        if self.logger is None:
            return
        metrics = {"search/reward": rec["reward"], "search/epsilon": rec["epsilon"], "search/ok": float(rec["ok"])}
        if rec["ok"]:
            metrics.update({"search/V": rec["V"], "search/h_ms": rec["h"]})
        if best is not None:
            metrics.update({"search/best_reward": best["reward"], "search/best_V": best["V"]})
        self.logger.log_metrics(metrics, step=rec["index"])

    # ------------------------------------------------------------------ run
    def run(self, max_new_evaluations: int | None = None) -> SearchResult:
        """Search until ``num_evaluations`` are recorded (or ``max_new_evaluations`` more in this call)."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        new = 0
        progress = Progress(TextColumn("[bold]NPAS search"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("{task.description}"), disable=not self.progress,
                            transient=False)
        with progress:
            task = progress.add_task(self._best_text(), total=self.num_evaluations, completed=len(self.history))
            while len(self.history) < self.num_evaluations:
                if max_new_evaluations is not None and new >= max_new_evaluations:
                    break
                if not self.pending:
                    self.pending = self._propose()
                    if not self.pending:
                        log.warning("search: every scheme of the space has been evaluated; stopping")
                        break
                    self._seen.update(tuple(p["trajectory"]) for p in self.pending)
                    self._save()
                todo = list(self.pending)
                if max_new_evaluations is not None:
                    todo = todo[: max_new_evaluations - new]
                plans = [self.to_plan(p["trajectory"]) for p in todo]
                for prop, res in zip(todo, self.executor.map(self.evaluator, plans), strict=False):
                    rec = self._record(prop, res)
                    self.history.append(rec)
                    self.pending.pop(0)
                    new += 1
                    if not self.pending:  # the step's batch is complete: Q update + replay
                        self._learn_from_step(prop["step"])
                        self.step += 1
                    self._save()
                    best, _ = _select_best(self.history, self.H)
                    self._log(rec, best)
                    progress.update(task, completed=len(self.history), description=self._best_text())
        best, feasible = _select_best(self.history, self.H)
        exhausted = not self.pending and self.space.size_log10() < 6 and len(self._seen) >= round(
            10 ** self.space.size_log10())
        return SearchResult(history=list(self.history), best=best, feasible=feasible,
                            complete=len(self.history) >= self.num_evaluations or exhausted, run_dir=self.run_dir,
                            space_summary=self.space.summary())

    def _best_text(self) -> str:
        if not self.history:
            return "best: -"
        best, feas = _select_best(self.history, self.H)
        flag = "" if feas else " (no plan meets H)"
        return f"best V={best['V']:.4f} h={best['h']:.2f} ms reward={best['reward']:.4f}{flag}"


def trajectories_of(history: Sequence[dict[str, Any]]) -> list[tuple[int, ...]]:
    return [tuple(r["trajectory"]) for r in history]
