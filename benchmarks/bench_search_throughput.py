"""Evaluation throughput of the real FastEvaluator on this CPU.

1. ``--part default``: the default budget of configs/search/default.yaml (efficientnet_b0 on digits
   32x32, 30 fine-tune steps, TVM compile + timing), a few random plans, evaluations per hour.
2. ``--part ray``: the tiny-CNN problem of bench_search_problem.py, the same distinct plans through
   the local executor and through the Ray executor with 2 local workers (ray.init time reported
   separately), as a ratio measured in one run.

    .venv/bin/python benchmarks/bench_search_throughput.py --part ray --plans 4
    .venv/bin/python benchmarks/bench_search_throughput.py --part default --plans 2
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
import torch

sys.path.insert(0, str(Path(__file__).parent))

import bench_search_problem as problem  # noqa: E402

from npas_lightning.search.executors import LocalExecutor, RayExecutor  # noqa: E402
from npas_lightning.search.space import SearchSpace, SpaceConfig  # noqa: E402

OUT = Path(__file__).parent / "results" / "bench_search_throughput.json"


def _plans(space, n, seed=0):
    rng = np.random.default_rng(seed)
    seen, out = set(), []
    while len(out) < n:
        t = space.random_trajectory(rng)
        if t not in seen:
            seen.add(t)
            out.append(space.to_plan(t))
    return out


def part_default(n: int) -> dict:
    import timm

    from npas_lightning.data import DigitsDataModule
    from npas_lightning.search.evaluator import FastEvaluator

    dm = DigitsDataModule(image_size=32, channels=3, batch_size=64, seed=0)
    dm.setup("fit")
    torch.manual_seed(0)
    net = timm.create_model("efficientnet_b0", pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    space = SearchSpace.from_model(net, x, SpaceConfig(filter_types=["keep"]))
    ev = FastEvaluator(net, dm.train_dataloader, dm.val_dataloader, x, finetune_steps=30,
                       compile_kwargs={"target": "host", "tune": False})
    rows = []
    for plan in _plans(space, n):
        res = LocalExecutor().map(ev, [plan])
        r = next(res)
        rows.append({"ok": r.ok, "reason": r.reason, "V": r.V, "h_ms": r.h, **{k: r.info.get(k) for k in (
            "eval_seconds", "finetune_seconds", "compile_seconds", "measure_seconds")}})
    secs = [r["eval_seconds"] for r in rows]
    return {"model": "efficientnet_b0 (untrained, keep filter types: apply_filter_types not needed)",
            "input": [1, 3, 32, 32], "finetune_steps": 30, "evaluations": rows,
            "seconds_per_evaluation_mean": float(np.mean(secs)), "evaluations_per_hour": 3600.0 / float(np.mean(secs))}


def part_ray(n: int) -> dict:
    """Same process, interleaved: local, ray (cold workers), local, ray (warm workers); distinct plans."""
    net, space, ev, _ = problem.build(seed=0)
    plans = _plans(space, 4 * n, seed=1)  # distinct structures: no latency-cache hits anywhere
    t0 = time.perf_counter()
    ex = RayExecutor(num_cpus=1, init={"num_cpus": 2})
    t_init = time.perf_counter() - t0
    times: dict[str, float] = {}
    ok = True
    try:
        for name, chunk, executor in (("local_1", plans[:n], LocalExecutor()), ("ray_cold", plans[n:2 * n], ex),
                                      ("local_2", plans[2 * n:3 * n], LocalExecutor()),
                                      ("ray_warm", plans[3 * n:], ex)):
            t0 = time.perf_counter()
            ok &= all(r.ok for r in executor.map(ev, chunk))
            times[name] = time.perf_counter() - t0
    finally:
        ex.close()
    return {"problem": "tiny CNN on digits 16x16, 30 fine-tune steps, TVM compile+timing", "plans_per_round": n,
            "seconds": times, "ray_init_seconds": t_init,
            "evals_per_hour": {k: 3600 * n / v for k, v in times.items()},
            "ray_speedup_cold": times["local_1"] / times["ray_cold"],
            "ray_speedup_warm": times["local_2"] / times["ray_warm"], "all_ok": ok}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["default", "ray"], required=True)
    ap.add_argument("--plans", type=int, default=4)
    args = ap.parse_args()
    data = json.loads(OUT.read_text()) if OUT.exists() else {}
    res = part_default(args.plans) if args.part == "default" else part_ray(args.plans)
    res.update({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)"})
    data[args.part] = res
    OUT.write_text(json.dumps(data, indent=1, default=str))
    print(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
