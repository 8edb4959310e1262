"""Record REAL evaluations of every plan of the benchmark problem (see bench_search_problem.py).

Each plan of the 3-layer space (5 choices per layer: unpruned, filter 2x/5x, block-punched 2x/5x,
125 plans) goes through the real FastEvaluator: one-shot magnitude pruning, 30 masked SGD steps on
digits, validation top-1, TVM compile (filter layers shrunk physically) and measured latency.
Resumable: already recorded plans are skipped. Writes benchmarks/results/bench_search_record.json.

    .venv/bin/python benchmarks/bench_search_record.py [--limit N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_search_problem as problem  # noqa: E402

from npas_lightning.search.result import safe_evaluate  # noqa: E402

OUT = Path(__file__).parent / "results" / "bench_search_record.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--retry-failed", action="store_true", help="evaluate failed entries again")
    args = ap.parse_args()
    t0 = time.perf_counter()
    net, space, ev, dm = problem.build(seed=0)
    build_s = time.perf_counter() - t0
    data = json.loads(OUT.read_text()) if OUT.exists() else {}
    if data and data.get("space_fingerprint") != space.fingerprint():
        raise SystemExit(f"{OUT} was recorded for another space; move it away first")
    data.setdefault("meta", {
        "what": "real FastEvaluator evaluations of every plan of the tiny-CNN/digits benchmark space",
        "space": space.describe(), "evaluator": {k: v for k, v in problem.EVAL.items()},
        "phase1_val_top1": ev.accuracy(net), "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores (shared)", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "phase1_build_seconds": build_s,
    })
    data["space_fingerprint"] = space.fingerprint()
    table = data.setdefault("table", {})
    todo = [t for t in itertools.product(*[range(n) for n in space.sizes])
            if ",".join(map(str, t)) not in table or (args.retry_failed and not table[",".join(map(str, t))]["ok"])]
    for k, traj in enumerate(todo[: args.limit]):
        res = safe_evaluate(ev, space.to_plan(traj))
        table[",".join(map(str, traj))] = {"V": res.V, "h": res.h, "ok": res.ok, "reason": res.reason,
                                          "info": res.info}
        tmp = OUT.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, default=str))
        os.replace(tmp, OUT)
        print(f"[{k + 1}/{len(todo)}] {traj} V={res.V:.4f} h={res.h:.4f} ms ok={res.ok} "
              f"{res.info.get('eval_seconds', 0):.1f}s", flush=True)


if __name__ == "__main__":
    main()
