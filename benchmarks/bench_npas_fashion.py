"""NPAS vs uniform shrinking vs uniform pruning on Fashion-MNIST (32x32): one accuracy-latency chart.

Issue 9's benchmark (the paper's Figure 5 on a small scale). Four stages, each resumable, all arms with
the same data budget (fashion_mnist at 32x32, 60 train / 20 val batches of 128 per epoch):

- ``npas``: ``recipe=npas_effnet`` with H = 0.5 x the Phase-1 model's latency (run dir ``<out>/npas``).
  The final model sees E = start + Phase 1 + algorithm trial + continuation + KD epochs.
- ``shrunk``: efficientnet_b0 with timm's channel multiplier 0.5 and 0.75 (``model=efficientnet_b0_cm050``
  / ``_cm075``) trained from scratch with ``recipe=baseline`` for E epochs, NPAS's start optimizer.
  Imports no TVM: it can run on a GPU machine without it (``--trainer gpu``).
- ``uniform``: the Phase-1 model, block_punched on every kxk conv and block_based on 1x1 convs and the
  classifier (first conv dense) at the smallest rate whose compiled latency meets H, then magnitude
  pruning (``recipe=prune``) for as many epochs as NPAS fine-tuned after Phase 1.
- ``measure``: every arm validated on the same batches, compiled with its plan and timed interleaved
  in one process (2 threads); writes ``benchmarks/results/bench_npas_fashion.json`` and the chart
  ``benchmarks/results/npas_fashion_pareto.png`` (``--quick``: ``*_quick`` names).

    .venv/bin/python benchmarks/bench_npas_fashion.py --stage all                  # the full budget
    .venv/bin/python benchmarks/bench_npas_fashion.py --stage shrunk --trainer gpu  # on a GPU box
    .venv/bin/python benchmarks/bench_npas_fashion.py --stage all --quick --out /tmp/npas_fashion_quick
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
from _common import RESULTS_DIR, write_results  # noqa: E402
from conftest import compose_config  # noqa: E402

console = Console(width=120)
STAGES = ("npas", "shrunk", "uniform", "measure")
SHRUNK = ("cm050", "cm075")
UNIFORM_RATES = (2, 3, 4, 5, 6, 8, 10)
THREADS = 2


@dataclasses.dataclass(frozen=True)
class Budget:
    """Per-arm data budget and NPAS epochs; ``quick`` shrinks everything to a smoke check."""

    train_batches: int = 60
    val_batches: int = 20
    batch_size: int = 128
    start: int = 10
    phase1: int = 2
    algorithm: int = 2  # the pipeline's minimum: ADMM / group-Lasso need a penalty and a masked epoch
    full: int = 3  # the winner's total pruning epochs (algorithm trial + continuation)
    kd: int = 2
    measure: tuple[int, int, int] = (20, 10, 3)  # number, repeat, warmup
    search: dict[str, Any] = dataclasses.field(default_factory=dict)  # extra recipe.search updates

    @property
    def after_phase1(self) -> int:
        """Epochs the NPAS final model trains after Phase 1: trial + continuation + KD."""
        return self.algorithm + max(0, self.full - self.algorithm) + self.kd

    @property
    def total(self) -> int:
        """E: every epoch the NPAS final model saw, from scratch."""
        return self.start + self.phase1 + self.after_phase1


FULL = Budget()
QUICK = Budget(train_batches=2, val_batches=2, batch_size=16, start=1, phase1=1, algorithm=2, full=2, kd=1,
               measure=(2, 3, 1),
               search={"num_evaluations": 2, "batch_size": 2, "pool_size": 4, "min_gp_points": 2,
                       "evaluator.finetune_steps": 2, "evaluator.val_batches": 2,
                       "reconstruction.steps": 2, "reconstruction.max_samples": 16})


# ----------------------------------------------------------------------------- helpers
def common_overrides(budget: Budget, trainer: str) -> list[str]:
    """The data/trainer budget every arm shares."""
    return ["data=fashion_mnist", f"trainer={trainer}", f"++trainer.limit_train_batches={budget.train_batches}",
            f"++trainer.limit_val_batches={budget.val_batches}", f"data.batch_size={budget.batch_size}",
            "data.num_workers=1", "logger=csv", "callbacks.progress_bar=null"]


def compose(overrides: list[str], out_dir: Path, updates: dict[str, Any] | None = None) -> DictConfig:
    """``python train.py <overrides>`` as a config rooted in ``out_dir``; ``updates`` replace whole nodes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = compose_config(overrides, out_dir)
    for key, value in (updates or {}).items():
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    return cfg


def read_json(path: Path, stage: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `--stage {stage}` with the same --out first")
    return json.loads(path.read_text())


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))
    return path


def npas_recipe_node(key: str) -> dict[str, Any]:
    """A node of configs/recipe/npas.yaml's ``recipe`` (e.g. ``start``, ``finetune_optimizer``)."""
    cfg = compose_config(["recipe=npas_effnet"], Path("/tmp/npas_fashion_compose"))
    return OmegaConf.to_container(OmegaConf.select(cfg, f"recipe.{key}"), resolve=True)


def npas_outputs(out: Path) -> dict[str, Any]:
    """Phase-1 checkpoint, plan, H and final checkpoint of the NPAS run under ``<out>/npas``."""
    run = out / "npas"
    p1 = read_json(run / "phase1" / "phase.json", "npas")
    search = read_json(run / "search" / "phase.json", "npas")
    final = read_json(run / "final" / "phase.json", "npas")
    return {"phase1": p1, "plan": search["plan"], "H_ms": float(search["latency_budget_ms"]), "final": final,
            "phase1_ms_in_run": p1["latency"]["after"].get("median_ms")}


# ----------------------------------------------------------------------------- stages
def stage_npas(out: Path, budget: Budget, trainer: str) -> dict[str, Any]:
    run_dir = out / "npas"
    overrides = ["recipe=npas_effnet", *common_overrides(budget, trainer), "recipe.latency_fraction=0.5",
                 f"recipe.start.epochs={budget.start}", f"recipe.phase1_epochs={budget.phase1}",
                 f"recipe.algorithm_epochs={budget.algorithm}", f"recipe.full_epochs={budget.full}",
                 f"recipe.kd.epochs={budget.kd}", f"recipe.run_dir={run_dir}", "recipe.resume=true"]
    updates = {f"recipe.search.{k}": v for k, v in budget.search.items()}
    cfg = compose(overrides, run_dir, updates)
    t0 = time.perf_counter()
    result = hydra.utils.instantiate(cfg.recipe)(cfg)
    epochs = {"start": budget.start, "phase1": budget.phase1, "algorithm_trial": budget.algorithm,
              "continuation": max(0, budget.full - budget.algorithm), "kd": budget.kd, "total_E": budget.total}
    record = {"arm": "npas", "overrides": overrides, "updates": updates, "epochs": epochs,
              "metrics": result["metrics"], "artifacts": result["artifacts"],
              "wall_s (this invocation)": round(time.perf_counter() - t0, 1)}
    write_json(run_dir / "bench_arm.json", record)
    console.print(f"NPAS: E = {budget.total} epochs ({epochs})")
    return record


def stage_shrunk(out: Path, budget: Budget, trainer: str, resume: bool) -> dict[str, Any]:
    start = npas_recipe_node("start")  # the NPAS start phase's optimizer and schedule, from scratch
    records = {}
    for cm in SHRUNK:
        arm_dir = out / f"shrunk_{cm}"
        marker = arm_dir / "bench_arm.json"
        if resume and marker.is_file():
            console.print(f"[green]shrunk_{cm}: done in an earlier run, skipped[/green] ({marker})")
            records[cm] = json.loads(marker.read_text())
            continue
        overrides = ["recipe=baseline", f"model=efficientnet_b0_{cm}", *common_overrides(budget, trainer),
                     f"trainer.max_epochs={budget.total}"]
        updates = {"model.optimizer": start["optimizer"], "model.scheduler": start["scheduler"]}
        cfg = compose(overrides, arm_dir, updates)
        console.rule(f"shrunk_{cm}: recipe=baseline, {budget.total} epochs")
        t0 = time.perf_counter()
        result = hydra.utils.instantiate(cfg.recipe)(cfg)
        records[cm] = {
            "arm": f"shrunk_{cm}", "model_config": f"efficientnet_b0_{cm}", "overrides": overrides,
            "updates": updates, "epochs": budget.total, "checkpoint": result["artifacts"].get("best checkpoint"),
            "val/acc1": result["metrics"].get("best/val/acc1", result["metrics"].get("val/acc1")),
            "metrics": result["metrics"], "wall_s": round(time.perf_counter() - t0, 1)}
        records[cm]["checkpoint_in_arm_dir"] = _relative(records[cm]["checkpoint"], arm_dir)
        write_json(marker, records[cm])
    return records


def stage_uniform(out: Path, budget: Budget, trainer: str, resume: bool) -> dict[str, Any]:
    from bench_sparse_models import uniform_plan

    from npas_lightning.algorithms.masking import apply_masks, compute_masks
    from npas_lightning.compiler import LocalSession, compile_model
    from npas_lightning.compiler.engines import measure_interleaved, tvm_engine
    from npas_lightning.utils.builders import build_model

    arm_dir = out / "uniform"
    marker = arm_dir / "bench_arm.json"
    if resume and marker.is_file():
        console.print(f"[green]uniform: done in an earlier run, skipped[/green] ({marker})")
        return json.loads(marker.read_text())
    npas = npas_outputs(out)
    h_ms, p1_ckpt = npas["H_ms"], npas["phase1"]["checkpoint"]
    base = ["recipe=prune", "model=efficientnet_b0", *common_overrides(budget, trainer)]
    cfg = compose(base, arm_dir / "rate_search", {"model.hard_activations": True})
    net = build_model(cfg, checkpoint=p1_ckpt).net.eval()
    example = torch.randn(1, int(cfg.data.channels), int(cfg.data.image_size), int(cfg.data.image_size))
    number, repeat, warmup = budget.measure
    session = LocalSession()
    dense = compile_model(net, example, threads=THREADS)
    dense_engine = dataclasses.replace(tvm_engine(dense, example.numpy(), session), name="phase1")
    rows, chosen = [], None
    for rate in UNIFORM_RATES:  # smallest rate that meets H, timed against the Phase-1 model each time
        model = copy.deepcopy(net)
        plan = uniform_plan(model, float(rate), balanced=False)
        apply_masks(model, compute_masks(model, plan), plan)
        compiled = compile_model(model, example, plan=plan, threads=THREADS)
        engine = dataclasses.replace(tvm_engine(compiled, example.numpy(), session), name="candidate")
        stats = measure_interleaved([dense_engine, engine], number=number, repeat=repeat, warmup=warmup,
                                    threads=THREADS, target="host", input_shape=list(example.shape))
        ms = stats["candidate"].median_ms
        rows.append({"rate": rate, "ms": ms, "phase1_ms": stats["phase1"].median_ms, "meets_H": ms <= h_ms})
        console.print(f"uniform rate {rate}x: {ms:.3f} ms (Phase-1 {stats['phase1'].median_ms:.3f} ms, "
                      f"H {h_ms:.3f} ms)")
        chosen = (rate, plan)
        if ms <= h_ms:
            break
    rate, plan = chosen
    if not rows[-1]["meets_H"]:
        console.print(f"[yellow]no uniform rate in {UNIFORM_RATES} meets H={h_ms:.3f} ms: training the largest, "
                      f"{rate}x (the report says so)[/yellow]")
    plan_dict = plan.to_dict()
    updates = {"model.hard_activations": True, "model.optimizer": npas_recipe_node("finetune_optimizer"),
               "pruning.plan": plan_dict, "pruning.exclude": [], "pruning.start_epoch": 0, "pruning.end_epoch": 0}
    overrides = [*base, f"trainer.max_epochs={budget.after_phase1}"]
    cfg = compose(overrides, arm_dir, updates)
    console.rule(f"uniform {rate}x: recipe=prune (magnitude), {budget.after_phase1} epochs from Phase 1")
    t0 = time.perf_counter()
    result = hydra.utils.instantiate(cfg.recipe)(cfg, init_checkpoint=p1_ckpt)
    record = {"arm": "uniform", "model_config": "efficientnet_b0", "rate": rate, "H_ms": h_ms, "rate_search": rows,
              "meets_H_at_selection": rows[-1]["meets_H"], "overrides": overrides,
              "updates": {k: v for k, v in updates.items() if k != "pruning.plan"},
              "epochs": budget.after_phase1, "init_checkpoint": p1_ckpt,
              "checkpoint": result["artifacts"]["pruned checkpoint"], "plan": result["plan"],
              "val/acc1": result["metrics"].get("val/acc1"), "prune/sparsity": result["metrics"].get("prune/sparsity"),
              "wall_s": round(time.perf_counter() - t0, 1)}
    record["checkpoint_in_arm_dir"] = _relative(record["checkpoint"], arm_dir)
    write_json(marker, record)
    return record


def _relative(path: str | None, arm_dir: Path) -> str | None:
    """``path`` relative to the arm's directory, so a runs directory copied elsewhere (e.g. the shrunk
    arms trained on a GPU machine) still finds its checkpoints."""
    try:
        return str(Path(path).resolve().relative_to(arm_dir.resolve())) if path else None
    except ValueError:
        return None


def _arm_checkpoint(rec: dict[str, Any], arm_dir: Path) -> str:
    """The arm's checkpoint: inside its directory when it was moved there, else the recorded path."""
    rel = rec.get("checkpoint_in_arm_dir")
    if rel and (arm_dir / rel).is_file():
        return str(arm_dir / rel)
    if rec.get("checkpoint") and Path(rec["checkpoint"]).is_file():
        return rec["checkpoint"]
    raise FileNotFoundError(f"{arm_dir / 'bench_arm.json'}: checkpoint {rec.get('checkpoint')!r} not found "
                            f"(nor {rel!r} under {arm_dir})")


# ----------------------------------------------------------------------------- measure
def arm_specs(out: Path) -> dict[str, dict[str, Any]]:
    """Every arm that exists under ``out``: model config, checkpoint, hard activations, plan, exclusions."""
    npas = npas_outputs(out)
    arms = {
        "phase1": {"model": "efficientnet_b0", "checkpoint": npas["phase1"]["checkpoint"], "hard": True,
                   "plan": None, "arch_plan": None, "exclude": None, "epochs": None},
        "npas": {"model": "efficientnet_b0", "checkpoint": npas["final"]["checkpoint"], "hard": True,
                 "plan": npas["plan"], "arch_plan": npas["plan"], "exclude": None, "epochs": None},
    }
    npas_arm = out / "npas" / "bench_arm.json"
    if npas_arm.is_file():
        epochs = json.loads(npas_arm.read_text())["epochs"]
        arms["phase1"]["epochs"] = epochs["start"] + epochs["phase1"]
        arms["npas"]["epochs"] = epochs["total_E"]
    for name in [f"shrunk_{cm}" for cm in SHRUNK] + ["uniform"]:
        path = out / name / "bench_arm.json"
        if not path.is_file():
            console.print(f"[yellow]{name}: no {path}, left out (run its stage first)[/yellow]")
            continue
        rec = json.loads(path.read_text())
        uniform = name == "uniform"
        epochs = rec["epochs"] + (arms["phase1"]["epochs"] or 0) if uniform else rec["epochs"]
        arms[name] = {"model": rec["model_config"], "checkpoint": _arm_checkpoint(rec, path.parent), "hard": uniform,
                      "plan": rec.get("plan"), "arch_plan": None, "exclude": [] if uniform else None,
                      "epochs": epochs, "rate": rec.get("rate")}
    return arms


def validate(module: Any, datamodule: Any, val_batches: int) -> float:
    """Top-1 on the same ``val_batches`` validation batches for every arm."""
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=val_batches)
    return float(trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val/acc1"])


def stage_measure(out: Path, budget: Budget, quick: bool, command: str) -> dict[str, Any]:
    from npas_lightning.compiler import LocalSession, compile_model
    from npas_lightning.compiler.engines import measure_interleaved, tvm_engine
    from npas_lightning.compiler.rewrite import SPARSE_LOWERINGS
    from npas_lightning.plan import NPASScheme
    from npas_lightning.utils.builders import build_datamodule, build_model

    npas = npas_outputs(out)
    h_ms = npas["H_ms"]
    arms = arm_specs(out)
    base = ["recipe=baseline", *common_overrides(budget, "cpu")]
    cfg = compose([*base, "model=efficientnet_b0"], out / "measure")
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    example = torch.randn(1, int(cfg.data.channels), int(cfg.data.image_size), int(cfg.data.image_size))
    compiled, rows = {}, {}
    for name, spec in arms.items():
        console.rule(f"measure: {name}")
        cfg = compose([*base, f"model={spec['model']}"], out / "measure")
        module = build_model(cfg, datamodule, checkpoint=spec["checkpoint"], hard_activations=spec["hard"],
                             plan=spec["arch_plan"])
        net = module.net.eval()
        plan = spec["plan"]
        if plan is not None:
            plan = NPASScheme.resolve(plan, net, exclude=spec["exclude"])
        rows[name] = {"model": spec["model"], "checkpoint": spec["checkpoint"], "epochs": spec["epochs"],
                      "rate": spec.get("rate"), "top1": validate(module, datamodule, budget.val_batches)}
        compiled[name] = compile_model(net.eval(), example, plan=plan, threads=THREADS, check=True)
        kernels = [k.sparse.get("lowering") for k in compiled[name].kernels if k.sparse]
        rows[name]["block_sparse_kernels"] = sum(1 for w in kernels if w in SPARSE_LOWERINGS)
        rows[name]["numerics_max_rel"] = (compiled[name].numerics or {}).get("max_rel")
    session = LocalSession()
    engines = [dataclasses.replace(tvm_engine(c, example.numpy(), session), name=n) for n, c in compiled.items()]
    number, repeat, warmup = budget.measure
    stats = measure_interleaved(engines, number=number, repeat=repeat, warmup=warmup, threads=THREADS,
                                target="host", input_shape=list(example.shape))
    p1_ms = stats["phase1"].median_ms
    for name, row in rows.items():
        ms = stats[name].median_ms
        row.update({"latency_ms": ms, "speedup_vs_phase1": p1_ms / ms, "meets_H": ms <= h_ms,
                    "meets_half_phase1_here": ms <= 0.5 * p1_ms, "stats": stats[name].to_dict()})
    suffix = "_quick" if quick else ""
    results = {"budget": dataclasses.asdict(budget), "quick": quick, "H_ms": h_ms,
               "H_definition": "0.5 x the Phase-1 model's median latency measured in the NPAS run",
               "phase1_ms_in_npas_run": npas["phase1_ms_in_run"], "phase1_ms_here": p1_ms, "threads": THREADS,
               "arms": rows, "markdown": markdown_table(rows, h_ms)}
    path = write_results(f"bench_npas_fashion{suffix}", command, results)
    console.print(results_table(rows, h_ms))
    print(results["markdown"])
    png = plot(rows, h_ms, p1_ms, RESULTS_DIR / f"npas_fashion_pareto{suffix}.png", quick)
    console.print(f"wrote {path} and {png}")
    return results


COLUMNS = ("arm", "epochs", "top-1", "latency ms", "speedup vs Phase-1", "meets H", "<= 0.5x Phase-1 here")


def _cells(name: str, r: dict[str, Any]) -> list[str]:
    label = f"{name} ({r['rate']:g}x)" if r.get("rate") else name
    return [label, str(r["epochs"] if r["epochs"] is not None else "-"), f"{r['top1']:.4f}", f"{r['latency_ms']:.3f}",
            f"{r['speedup_vs_phase1']:.2f}x", "yes" if r["meets_H"] else "no",
            "yes" if r["meets_half_phase1_here"] else "no"]


def results_table(rows: dict[str, dict[str, Any]], h_ms: float) -> Table:
    table = Table(title=f"Fashion-MNIST 32x32, batch 1, TVM {THREADS} threads; H = {h_ms:.3f} ms (NPAS run)")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col == "arm" else "right")
    for name, r in rows.items():
        table.add_row(*_cells(name, r))
    return table


def markdown_table(rows: dict[str, dict[str, Any]], h_ms: float) -> str:
    """The results as a markdown table (for BENCHMARKS.md)."""
    lines = [f"H = {h_ms:.3f} ms (0.5 x Phase-1 latency in the NPAS run)", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(name, r)) + " |" for name, r in rows.items()]
    return "\n".join(lines)


def plot(rows: dict[str, dict[str, Any]], h_ms: float, phase1_ms: float, path: Path, quick: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {"phase1": ("s", "black"), "npas": ("*", "tab:red"), "uniform": ("^", "tab:green")}
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    shrunk = [(r["latency_ms"], r["top1"]) for n, r in rows.items() if n.startswith("shrunk_")]
    if shrunk:
        xs, ys = zip(*sorted(shrunk), strict=True)
        ax.plot(xs, ys, "o--", color="tab:blue", label="shrunk (channel multiplier)")
    for name, r in rows.items():
        if not name.startswith("shrunk_"):
            marker, color = markers.get(name, ("o", "gray"))
            ax.scatter(r["latency_ms"], r["top1"], marker=marker, color=color, s=120 if name == "npas" else 60,
                       label=name, zorder=3)
        label = f"{name} {r['rate']:g}x" if r.get("rate") else name
        ax.annotate(label, (r["latency_ms"], r["top1"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.axvline(h_ms, color="gray", linestyle=":", label=f"H = {h_ms:.2f} ms (NPAS run)")
    ax.axvline(0.5 * phase1_ms, color="silver", linestyle="--", linewidth=0.8,
               label=f"0.5 x Phase-1 here = {0.5 * phase1_ms:.2f} ms")
    ax.set_xlabel("measured latency (ms, batch 1, TVM, 2 threads)")
    ax.set_ylabel("top-1 (validation)")
    ax.set_title("NPAS vs shrinking vs uniform pruning\nFashion-MNIST 32x32" + (" (quick smoke budget)" if quick else ""),
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- entry
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=[*STAGES, "all"], default="all")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "npas_fashion_runs",
                        help="runs directory (checkpoints of every arm)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke check of every stage")
    parser.add_argument("--trainer", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--no-resume", action="store_true", help="rerun shrunk/uniform arms that finished before")
    args = parser.parse_args()
    budget = QUICK if args.quick else FULL
    out = args.out.resolve()
    command = "python benchmarks/bench_npas_fashion.py " + " ".join(sys.argv[1:])
    stages = STAGES if args.stage == "all" else (args.stage,)
    console.print(f"stages {stages}, out {out}, budget {'quick' if args.quick else 'full'}: E = {budget.total} epochs")
    for stage in stages:
        t0 = time.perf_counter()
        if stage == "npas":
            stage_npas(out, budget, args.trainer)
        elif stage == "shrunk":
            stage_shrunk(out, budget, args.trainer, not args.no_resume)
        elif stage == "uniform":
            stage_uniform(out, budget, args.trainer, not args.no_resume)
        else:
            stage_measure(out, budget, args.quick, command)
        console.print(f"[bold]stage {stage}: {time.perf_counter() - t0:.0f} s[/bold]")


if __name__ == "__main__":
    main()
