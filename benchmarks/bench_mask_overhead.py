"""Training-step overhead of MagnitudePruning's masks (gradients before, weights after each step).

MagnitudePruning is first set up for real (a one-step Lightning fit computes its masks). Then two
copies of the same ClassifierModule train step by step in one process with the same threads:
``dense`` (forward, backward, SGD step) and ``masked`` (the same step plus the callback's own hooks,
``on_before_optimizer_step`` masking the gradients and ``on_train_batch_end`` masking the weights).
Steps alternate A-B-B-A so drift in machine load cancels; the ratio is of median step times, in wall
time and in process CPU time (the latter is less sensitive to other processes on a shared machine). The two
mask operations alone are timed too. ``--lightning-repeats N`` adds N pairs of full Lightning fits
(dense vs MagnitudePruning, order alternating per pair) timed by a callback, a noisier end-to-end view.

    python benchmarks/bench_mask_overhead.py                     # efficientnet_b0, batch 64, 32x32
    python benchmarks/bench_mask_overhead.py --steps 10 --lightning-repeats 2
    # On a shared, oversubscribed machine OMP_WAIT_POLICY=PASSIVE stops OpenMP spin-waiting from
    # dominating step times (it changes both variants alike).

Writes benchmarks/results/bench_mask_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, TensorDataset

from npas_lightning.callbacks import MagnitudePruning
from npas_lightning.models import ClassifierModule

RESULTS = Path(__file__).resolve().parent / "results" / "bench_mask_overhead.json"


class StepTimer(L.Callback):
    """Wall time of each training step (batch start -> after every callback's batch end)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._t0)


def _fit(module: L.LightningModule, loader: DataLoader, callbacks: list, steps: int) -> None:
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=steps, limit_val_batches=0, accelerator="cpu", devices=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=callbacks, num_sanity_val_steps=0,
    )
    trainer.fit(module, loader)


def main() -> dict:
    parser = argparse.ArgumentParser(description="MagnitudePruning mask overhead per training step")
    parser.add_argument("--model", default="efficientnet_b0")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed A-B-B-A step quadruples of the loop")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    parser.add_argument("--lightning-repeats", type=int, default=0, help="interleaved dense/masked Lightning fits")
    parser.add_argument("--lightning-steps", type=int, default=6, help="steps per Lightning fit")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--plan", default='{"*": {"scheme": "block_punched", "rate": 3}}', help="plan (JSON dict form)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    L.seed_everything(0, verbose=False)
    plan = json.loads(args.plan)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g)
    y = torch.randint(0, 10, (args.batch_size,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=False)

    dense = ClassifierModule(args.model, num_classes=10)
    masked = ClassifierModule(args.model, num_classes=10)
    masked.load_state_dict(dense.state_dict())
    pruning = MagnitudePruning(plan)
    _fit(masked, loader, [pruning], 1)  # real setup: plan resolved, masks computed and applied

    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in (("dense", dense), ("masked", masked))}
    models = {"dense": dense.train(), "masked": masked.train()}

    def step(name: str) -> float:
        model, opt = models[name], opts[name]
        c0 = time.process_time()
        t0 = time.perf_counter()
        opt.zero_grad()
        model.loss(model(x), y).backward()
        if name == "masked":
            pruning.on_before_optimizer_step(None, model, opt)
        opt.step()
        if name == "masked":
            pruning.on_train_batch_end(None, model, None, None, 0)
        wall = time.perf_counter() - t0
        cpu[name].append(time.process_time() - c0)
        return wall

    cpu: dict[str, list[float]] = {"dense": [], "masked": []}
    for _ in range(args.warmup):
        step("dense"), step("masked")
    cpu = {"dense": [], "masked": []}
    times: dict[str, list[float]] = {"dense": [], "masked": []}
    for _ in range(args.steps):
        for name in ("dense", "masked", "masked", "dense"):
            times[name].append(step(name))
    masked_zeros_ok = all(
        not pruning.pruned_model(masked).get_submodule(n).weight[~m].any() for n, m in pruning.masks.items()
    )

    lightning: dict[str, list[float]] = {"dense": [], "masked": []}
    variants = [("dense", dense, []), ("masked", masked, [pruning])]
    for r in range(args.lightning_repeats):
        for name, module, extra in variants if r % 2 == 0 else variants[::-1]:  # A-B, B-A, ...
            timer = StepTimer()
            _fit(module, DataLoader(TensorDataset(x.repeat(args.lightning_steps, 1, 1, 1), y.repeat(args.lightning_steps)),
                                    batch_size=args.batch_size), [*extra, timer], args.lightning_steps)
            lightning[name] += timer.times[1:]

    # The two mask operations alone, with gradients present.
    op_times = []
    for _ in range(50):
        t0 = time.perf_counter()
        pruning.on_before_optimizer_step(None, masked, None)
        pruning.on_train_batch_end(None, masked, None, None, 0)
        op_times.append(time.perf_counter() - t0)

    med = {k: statistics.median(v) for k, v in times.items()}
    q = {k: statistics.quantiles(v, n=4) for k, v in times.items()}
    ratio = med["masked"] / med["dense"]
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    cpu_ratio = cpu_med["masked"] / cpu_med["dense"]
    mask_ms = statistics.median(op_times) * 1e3
    report = pruning.sparsity(masked)
    result = {
        "benchmark": "bench_mask_overhead",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")},
        "model": args.model,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "plan": plan,
        "pruned_layers": len(report["layers"]),
        "pruned_params": report["numel"],
        "sparsity": report["sparsity"],
        "steps_per_variant": len(times["dense"]),
        "pruned_weights_stayed_zero": masked_zeros_ok,
        "load_average": os.getloadavg(),
        "lightning_median_step_ms": {k: statistics.median(v) * 1e3 for k, v in lightning.items() if v},
        "lightning_ratio": (statistics.median(lightning["masked"]) / statistics.median(lightning["dense"]))
        if lightning["dense"] else None,
        "median_step_ms": {k: v * 1e3 for k, v in med.items()},
        "iqr_step_ms": {k: [v[0] * 1e3, v[2] * 1e3] for k, v in q.items()},
        "ratio_masked_over_dense": ratio,
        "median_step_cpu_ms": {k: v * 1e3 for k, v in cpu_med.items()},
        "cpu_time_ratio_masked_over_dense": cpu_ratio,
        "mask_ops_ms": mask_ms,
        "mask_ops_fraction_of_dense_step": mask_ms / (med["dense"] * 1e3),
        "goal_ratio": 1.05,
    }
    table = Table(title=f"Mask overhead: {args.model}, batch {args.batch_size}, {args.image_size}x{args.image_size}, "
                        f"CPU {torch.get_num_threads()} threads")
    for col in ("variant", "median step (ms)", "IQR (ms)", "wall ratio", "median CPU time (ms)", "CPU-time ratio"):
        table.add_column(col, justify="right" if col != "variant" else "left")
    for k in ("dense", "masked"):
        table.add_row(k, f"{med[k] * 1e3:.1f}", f"{q[k][0] * 1e3:.1f} - {q[k][2] * 1e3:.1f}", f"{med[k] / med['dense']:.3f}x",
                      f"{cpu_med[k] * 1e3:.1f}", f"{cpu_med[k] / cpu_med['dense']:.3f}x")
    table.add_row("mask ops alone", f"{mask_ms:.2f}", "", f"+{mask_ms / (med['dense'] * 1e3):.2%}", "", "")
    if lightning["dense"]:
        lm = {k: statistics.median(v) for k, v in lightning.items()}
        table.add_row("Lightning fit: dense", f"{lm['dense'] * 1e3:.1f}", "", "1.000x", "", "")
        table.add_row("Lightning fit: MagnitudePruning", f"{lm['masked'] * 1e3:.1f}", "", f"{lm['masked'] / lm['dense']:.3f}x", "", "")
    console = Console()
    console.print(table)
    console.print(f"{len(report['layers'])} pruned layers, {report['numel']:,} weights, sparsity {report['sparsity']:.3f}; "
                  f"{len(times['dense'])} steps per variant, A-B-B-A interleaved; load average {os.getloadavg()[0]:.1f}; "
                  f"pruned weights stayed zero: {masked_zeros_ok}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {RESULTS}")
    return result


if __name__ == "__main__":
    main()
