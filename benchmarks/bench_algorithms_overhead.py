"""Training-step overhead of ADMMPruning and GroupLassoPruning (penalty phases) and of masked retraining.

Four Lightning fits of the same ClassifierModule are timed step by step, interleaved repeat by
repeat in one process with the same threads:

- ``dense``: no callback;
- ``admm``: ADMMPruning in its ADMM phase (``rho * (W - Z + U)`` added to every planned weight's
  gradient before each optimizer step; Z/U updates once per epoch, outside the timed steps, timed
  separately below);
- ``group_lasso``: GroupLassoPruning in its penalty phase (``lam * W_g / ||W_g||`` on every group);
- ``retrain``: ADMMPruning after its hard prune (masks on gradients and weights at every step).

A step is timed from ``on_train_batch_start`` to the end of ``on_train_batch_end`` (a timer callback
registered after the pruning callback). Both wall time and this process's CPU time
(``time.process_time``, all threads) are recorded: on a machine shared with other jobs the CPU time
is the steadier measure of the work a step adds. Ratios are of median step times. The penalty
operations alone (one ``add_penalty_grad_`` / ``add_group_lasso_grad_`` with gradients present) and
one ADMM Z/U update are also timed in isolation.

    python benchmarks/bench_algorithms_overhead.py                       # efficientnet_b0, batch 64, 32x32
    python benchmarks/bench_algorithms_overhead.py --repeats 2 --steps 4

Writes benchmarks/results/bench_algorithms_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_results  # noqa: E402

from npas_lightning.algorithms.admm import add_penalty_grad_  # noqa: E402
from npas_lightning.algorithms.group_lasso import add_group_lasso_grad_  # noqa: E402
from npas_lightning.callbacks import ADMMPruning, GroupLassoPruning  # noqa: E402
from npas_lightning.models import ClassifierModule  # noqa: E402

NAME = "bench_algorithms_overhead"


class StepTimer(L.Callback):
    """Wall and process-CPU time of each training step (batch start -> after every callback's batch end)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._w0, self._c0 = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.wall.append(time.perf_counter() - self._w0)
        self.cpu.append(time.process_time() - self._c0)


def _fit(module: L.LightningModule, loader: DataLoader, callbacks: list, steps: int) -> None:
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=steps, limit_val_batches=0, accelerator="cpu", devices=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=callbacks, num_sanity_val_steps=0,
    )
    trainer.fit(module, loader)


def _op_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> dict:
    parser = argparse.ArgumentParser(description="ADMM / group-Lasso / masked-retraining step overhead")
    parser.add_argument("--model", default="efficientnet_b0")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per fit (after warmup)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps of each fit")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved fits per variant")
    parser.add_argument("--plan", default='{"*": {"scheme": "block_punched", "rate": 3}}', help="plan (JSON dict form)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    L.seed_everything(0, verbose=False)
    plan = json.loads(args.plan)
    info = machine()

    g = torch.Generator().manual_seed(0)
    n = args.batch_size * (args.steps + args.warmup)
    x = torch.randn(n, 3, args.image_size, args.image_size, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=False)

    base = ClassifierModule(args.model, num_classes=10)
    modules = {k: ClassifierModule(args.model, num_classes=10) for k in ("dense", "admm", "group_lasso", "retrain")}
    for m in modules.values():
        m.load_state_dict(base.state_dict())
    callbacks = {
        "dense": [],
        "admm": [ADMMPruning(plan, admm_epochs=10_000, rho=1e-3)],
        "group_lasso": [GroupLassoPruning(plan, penalty_epochs=10_000, lam=1e-4)],
        "retrain": [ADMMPruning(plan, admm_epochs=1, rho=1e-3)],
    }
    _fit(modules["retrain"], loader, callbacks["retrain"], 1)  # one ADMM epoch of one step -> hard prune
    assert callbacks["retrain"][0].phase == "retrain"

    wall: dict[str, list[float]] = {k: [] for k in modules}
    cpu: dict[str, list[float]] = {k: [] for k in modules}
    for _ in range(args.repeats):
        for name, module in modules.items():
            timer = StepTimer()
            _fit(module, loader, [*callbacks[name], timer], args.steps + args.warmup)
            wall[name] += timer.wall[args.warmup:]
            cpu[name] += timer.cpu[args.warmup:]
    assert callbacks["admm"][0].phase == "penalty" and callbacks["group_lasso"][0].phase == "penalty"

    # The penalty operations alone, gradients present.
    admm_cb, gl_cb = callbacks["admm"][0], callbacks["group_lasso"][0]
    names = list(admm_cb.weight_plan)
    z = [admm_cb.admm.z[k] for k in names]
    u = [admm_cb.admm.u[k] for k in names]
    for m in (modules["admm"], modules["group_lasso"]):
        m.zero_grad()
        m.net(x[: args.batch_size]).logsumexp(1).mean().backward()
    admm_ms = _op_ms(lambda: add_penalty_grad_(admm_cb._params, z, u, 1e-3), 20)
    gl_ms = _op_ms(lambda: add_group_lasso_grad_(gl_cb._params, gl_cb._group_list, 1e-4), 20)

    class _T:  # the trainer attributes zu_update reads (single process)
        is_global_zero = True

        class strategy:  # noqa: N801
            @staticmethod
            def broadcast(obj, src=0):
                return obj

    zu_ms = _op_ms(lambda: (setattr(admm_cb, "last_zu_step", -1), admm_cb.zu_update(_T, modules["admm"])), 5)

    med_wall = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    q_wall = {k: statistics.quantiles(v, n=4) for k, v in wall.items()}
    goals = {"admm": 1.15, "group_lasso": 1.15, "retrain": 1.05}
    results = {
        "model": args.model,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "plan": plan,
        "pruned_layers": len(names),
        "pruned_params": int(sum(p.numel() for p in admm_cb._params)),
        "steps_per_variant": len(wall["dense"]),
        "repeats": args.repeats,
        "median_step_ms_wall": {k: v * 1e3 for k, v in med_wall.items()},
        "iqr_step_ms_wall": {k: [v[0] * 1e3, v[2] * 1e3] for k, v in q_wall.items()},
        "median_step_ms_cpu": {k: v * 1e3 for k, v in med_cpu.items()},
        "ratio_wall": {k: med_wall[k] / med_wall["dense"] for k in goals},
        "ratio_cpu": {k: med_cpu[k] / med_cpu["dense"] for k in goals},
        "goal_ratio": goals,
        "op_ms": {"admm_penalty_grad": admm_ms, "group_lasso_grad": gl_ms, "admm_zu_update": zu_ms},
        "op_fraction_of_dense_step_wall": {
            "admm_penalty_grad": admm_ms / (med_wall["dense"] * 1e3),
            "group_lasso_grad": gl_ms / (med_wall["dense"] * 1e3),
        },
    }
    table = Table(title=f"Algorithm overhead: {args.model}, batch {args.batch_size}, {args.image_size}x{args.image_size}, "
                        f"CPU {torch.get_num_threads()} threads")
    for col in ("variant", "median step wall (ms)", "IQR wall (ms)", "ratio wall", "median step CPU (ms)", "ratio CPU", "goal"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for k in modules:
        table.add_row(
            k, f"{med_wall[k] * 1e3:.0f}", f"{q_wall[k][0] * 1e3:.0f} - {q_wall[k][2] * 1e3:.0f}",
            f"{med_wall[k] / med_wall['dense']:.3f}x", f"{med_cpu[k] * 1e3:.0f}", f"{med_cpu[k] / med_cpu['dense']:.3f}x",
            f"<= {goals[k]}x" if k in goals else "",
        )
    ops = Table(title="Penalty operations alone")
    for col in ("operation", "median (ms)", "share of a dense step (wall)"):
        ops.add_column(col)
    ops.add_row("ADMM penalty gradient (all layers)", f"{admm_ms:.1f}", f"{admm_ms / (med_wall['dense'] * 1e3):.2%}")
    ops.add_row("group-Lasso gradient (all layers)", f"{gl_ms:.1f}", f"{gl_ms / (med_wall['dense'] * 1e3):.2%}")
    ops.add_row("ADMM Z/U update (once per epoch or admm_interval)", f"{zu_ms:.1f}", "")
    console = Console()
    console.print(table)
    console.print(ops)
    console.print(f"{len(names)} pruned layers, {results['pruned_params']:,} weights; {len(wall['dense'])} steps per "
                  f"variant over {args.repeats} interleaved repeats; load average at start {info['load_average_at_start']}")
    path = write_results(NAME, "python " + " ".join(sys.argv), results)
    console.print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
