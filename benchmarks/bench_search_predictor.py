"""Predictor quality: Spearman correlation of the GP+WL predicted reward with the REAL reward of
held-out plans, vs the number of training points (table recorded by bench_search_record.py).

    .venv/bin/python benchmarks/bench_search_predictor.py [--splits 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).parent))

from bench_search_common import default_budget, latency, load_record  # noqa: E402

from npas_lightning.search.agent import reward_eq1  # noqa: E402
from npas_lightning.search.predictor import GPPredictor  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20, 40, 80])
    ap.add_argument("--alpha", type=float, default=2.0)
    ap.add_argument("--latency-stat", choices=["median", "min"], default="median")
    ap.add_argument("--target", choices=["reward", "V"], default="reward",
                    help="predict the eq. (1) reward (default) or the measured top-1 V alone")
    args = ap.parse_args()
    space, table, _ = load_record()
    stat = args.latency_stat
    H = default_budget(table, stat)
    trajs = [t for t, r in table.items() if r["ok"]]
    if args.target == "V":
        y = {t: float(table[t]["V"]) for t in trajs}
    else:
        y = {t: reward_eq1(table[t]["V"], latency(table[t], stat), H, args.alpha) for t in trajs}
    rows = {}
    for n in args.sizes:
        if n >= len(trajs):
            continue
        rhos, fit_s = [], []
        for split in range(args.splits):
            rng = np.random.default_rng(split)
            perm = [trajs[i] for i in rng.permutation(len(trajs))]
            train, test = perm[:n], perm[n:]
            gp = GPPredictor(space, train_iters=50)
            t0 = time.perf_counter()
            gp.fit(train, [y[t] for t in train])
            mean, _ = gp.predict(test)
            fit_s.append(time.perf_counter() - t0)
            rhos.append(float(spearmanr(mean, [y[t] for t in test]).statistic))
        rows[n] = {"spearman_mean": float(np.mean(rhos)), "spearman_std": float(np.std(rhos)),
                   "held_out": len(trajs) - n, "fit_predict_seconds_mean": float(np.mean(fit_s))}
    out = {"benchmark": "bench_search_predictor", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)", "H_ms": H, "alpha": args.alpha,
           "splits": args.splits, "plans": len(trajs), "by_train_size": rows}
    out["latency_stat"], out["target"] = stat, args.target
    name = f"bench_search_predictor_{stat}" if args.target == "reward" else "bench_search_predictor_V"
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=1))
    what = "real top-1 V" if args.target == "V" else f"real reward, h = {stat} latency"
    t = Table(title=f"GP+WL predictor: Spearman(predicted, {what}) on held-out plans ({args.splits} splits)")
    for c in ("train points", "held out", "Spearman mean", "std", "fit+predict s"):
        t.add_column(c, justify="right")
    for n, r in rows.items():
        t.add_row(str(n), str(r["held_out"]), f"{r['spearman_mean']:.3f}", f"{r['spearman_std']:.3f}",
                  f"{r['fit_predict_seconds_mean']:.3f}")
    Console().print(t)


if __name__ == "__main__":
    main()
