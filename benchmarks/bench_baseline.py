"""Baseline training: wall time and best val top-1 of recipe=baseline on the embedded data sets.

    python benchmarks/bench_baseline.py            # both runs
    python benchmarks/bench_baseline.py --only digits

Targets (issue 2): efficientnet_b0 on digits >= 95% val top-1; resnet18 on fashion_mnist >= 90%
in a few epochs. Each run goes through the same code path as `python train.py recipe=baseline`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import hydra
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, write_results  # noqa: E402
from conftest import compose_config  # noqa: E402

RUNS = {
    "digits": ["data=digits", "model=efficientnet_b0", "trainer.max_epochs=15"],
    "fashion_mnist": ["data=fashion_mnist", "model=resnet18", "trainer.max_epochs=8", "data.num_workers=1"],
}
TARGETS = {"digits": 0.95, "fashion_mnist": 0.90}


def _previous_results() -> dict:
    """The other runs' results from the last JSON, so ``--only`` replaces one row and keeps the rest."""
    path = RESULTS_DIR / "bench_baseline.json"
    return json.loads(path.read_text())["results"] if path.exists() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=sorted(RUNS), default=None)
    parser.add_argument("--epochs", type=int, default=None, help="override every run's trainer.max_epochs")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run, e.g. trainer=gpu")
    args = parser.parse_args()
    results = _previous_results() if args.only else {}
    for name, overrides in RUNS.items():
        if args.only and name != args.only:
            continue
        overrides = [*overrides, *([f"trainer.max_epochs={args.epochs}"] if args.epochs else []), *args.overrides]
        with tempfile.TemporaryDirectory() as tmp:
            cfg = compose_config(
                ["recipe=baseline", "logger=csv", "callbacks.progress_bar=null", *overrides], Path(tmp)
            )
            start = time.perf_counter()
            out = hydra.utils.instantiate(cfg.recipe)(cfg)
            wall = time.perf_counter() - start
        results[name] = {
            "overrides": overrides,
            "backbone": cfg.model.backbone,
            "epochs": cfg.trainer.max_epochs,
            "accelerator": str(cfg.trainer.get("accelerator", "cpu")),
            "best_val_acc1": out["metrics"].get("best/val/acc1"),
            "target": TARGETS[name],
            "wall_s": round(wall, 1),
        }
        # written after every run, so an interrupted benchmark keeps what it measured
        path = write_results("bench_baseline", "python benchmarks/bench_baseline.py " + " ".join(sys.argv[1:]), results)
    table = Table(title="recipe=baseline")
    for col in ("data", "backbone", "epochs", "best val top-1", "target", "wall time"):
        table.add_column(col)
    for name, r in results.items():
        table.add_row(name, r["backbone"], str(r["epochs"]), f"{r['best_val_acc1']:.4f}", f">= {r['target']}", f"{r['wall_s']:.0f} s")
    Console().print(table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
