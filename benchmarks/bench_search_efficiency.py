"""Search efficiency: best feasible reward vs number of evaluations, random / qlearning / qlearning_bo.

Runs the real search code (NPASSearch, agent, GP+WL predictor) on the table of REAL evaluations
recorded by bench_search_record.py (every plan of the tiny-CNN/digits space: measured V after a short
fine-tune and measured TVM latency h), so many seeds are affordable. Reward = eq. (1).

    .venv/bin/python benchmarks/bench_search_efficiency.py [--seeds 10] [--budget 40]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))

from bench_search_common import RecordedEvaluator, default_budget, latency, load_record  # noqa: E402

from npas_lightning.search.agent import reward_eq1  # noqa: E402
from npas_lightning.search.search import NPASSearch  # noqa: E402

RESULTS = Path(__file__).parent / "results"
STRATEGIES = ("random", "qlearning", "qlearning_bo")


def curve(history, H) -> list[float]:
    best, out = -math.inf, []
    for r in history:
        if r["ok"] and r["h"] <= H:
            best = max(best, r["reward"])
        out.append(best)
    return out


def first_reach(c: list[float], target: float) -> int | None:
    for i, v in enumerate(c):
        if v >= target - 1e-12:
            return i + 1
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget", type=int, default=40)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--pool", type=int, default=32)
    ap.add_argument("--alpha", type=float, default=2.0)
    ap.add_argument("--H", type=float, default=None)
    ap.add_argument("--latency-stat", choices=["median", "min"], default="median")
    args = ap.parse_args()
    space, table, meta = load_record()
    stat = args.latency_stat
    H = args.H if args.H is not None else default_budget(table, stat)
    rewards = {t: reward_eq1(r["V"], latency(r, stat), H, args.alpha) for t, r in table.items() if r["ok"]}
    feas = {t: rw for t, rw in rewards.items() if latency(table[t], stat) <= H}
    optimum = max(feas.values())
    curves: dict[str, list[list[float]]] = {s: [] for s in STRATEGIES}
    seconds: dict[str, float] = {s: 0.0 for s in STRATEGIES}
    for seed in range(args.seeds):
        for strat in STRATEGIES:  # interleaved
            t0 = time.perf_counter()
            res = NPASSearch(space, RecordedEvaluator(space, table, stat), latency_budget_ms=H, alpha=args.alpha,
                             strategy=strat, num_evaluations=args.budget, batch_size=args.batch,
                             pool_size=args.pool, min_gp_points=4, seed=seed, progress=False,
                             agent={"epsilon": {"name": "linear", "start": 1.0, "end": 0.1, "episodes": args.budget},
                                    "replay_batch": 32},
                             predictor={"train_iters": 50}).run()
            seconds[strat] += time.perf_counter() - t0
            curves[strat].append(curve(res.history, H))
    finals = {s: [c[-1] for c in curves[s]] for s in STRATEGIES}
    random_final = float(np.median(finals["random"]))
    summary = {}
    for s in STRATEGIES:
        reach = [first_reach(c, random_final) for c in curves[s]]
        reach_opt = [first_reach(c, optimum) for c in curves[s]]
        arr = np.array(curves[s])
        summary[s] = {
            "final_best_mean": float(np.mean(finals[s])), "final_best_median": float(np.median(finals[s])),
            "evals_to_random_median_final": {"median": float(np.median([r if r else args.budget + 1 for r in reach])),
                                             "reached_fraction": float(np.mean([r is not None for r in reach]))},
            "found_optimum_fraction": float(np.mean([r is not None for r in reach_opt])),
            "evals_to_optimum_median": float(np.median([r if r else args.budget + 1 for r in reach_opt])),
            # mean over the seeds that have found a feasible plan by then, and that fraction of seeds
            "mean_curve": [float(np.mean(arr[np.isfinite(arr[:, i]), i])) if np.isfinite(arr[:, i]).any() else None
                           for i in range(arr.shape[1])],
            "feasible_found_fraction": [float(np.isfinite(arr[:, i]).mean()) for i in range(arr.shape[1])],
            "search_overhead_seconds_per_run": seconds[s] / args.seeds,
        }
    out = {"benchmark": "bench_search_efficiency", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
           "what": "real search code replaying REAL recorded evaluations (tiny CNN on digits, measured TVM latency)",
           "space_plans": len(table), "H_ms": H, "alpha": args.alpha, "budget": args.budget, "seeds": args.seeds,
           "batch": args.batch, "pool": args.pool, "feasible_plans": len(feas), "optimum_reward": optimum,
           "random_median_final": random_final, "strategies": summary, "record_meta": {
               k: meta[k] for k in ("phase1_val_top1", "machine", "date", "evaluator") if k in meta}}
    out["latency_stat"] = stat
    OUT = RESULTS / f"bench_search_efficiency_{stat}.json"
    OUT.write_text(json.dumps(out, indent=1))
    t = Table(title=f"Search efficiency ({args.seeds} seeds, budget {args.budget} of {len(table)} plans, "
                    f"h = {stat} latency, H={H:.3f} ms, alpha={args.alpha})")
    for c in ("strategy", "final best (median)", "final best (mean)", "evals to random's median final",
              "reached it", "found optimum", "evals to optimum (median)"):
        t.add_column(c, justify="right")
    for s in STRATEGIES:
        d = summary[s]
        t.add_row(s, f"{d['final_best_median']:.4f}", f"{d['final_best_mean']:.4f}",
                  f"{d['evals_to_random_median_final']['median']:.1f}",
                  f"{d['evals_to_random_median_final']['reached_fraction']:.0%}", f"{d['found_optimum_fraction']:.0%}",
                  f"{d['evals_to_optimum_median']:.1f}")
    Console().print(t)
    print(f"optimum feasible reward in the table: {optimum:.4f}; results: {OUT}")


if __name__ == "__main__":
    main()
