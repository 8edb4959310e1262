"""recipe=npas_effnet / npas_mbv3 / npas_resnet: the whole NPAS pipeline, resumable phase by phase.

    python train.py recipe=npas_effnet                                  # digits, CPU budget
    python train.py recipe=npas_effnet recipe.run_dir=<earlier run dir> # continue an interrupted run
    python train.py recipe=npas_effnet recipe.latency_fraction=0.4      # H = 0.4 x Phase-1 latency
    python train.py recipe=npas_effnet recipe.latency_ms=3.0            # H in ms

Phases (each writes its outputs under ``<run_dir>/<phase>/`` and a ``phase.json`` when done; with
``recipe.resume=true`` a finished phase is skipped on a rerun):

0. ``start``: timm pretrained weights when reachable, else ``recipe.init_checkpoint``, else the
   backbone is trained first (recipe=baseline with ``recipe.start``) and the report says so.
1. ``phase1``: hard-swish / hard-sigmoid swap + fine-tune (recipe=phase1).
2. ``search``: filter-type candidates fitted by reconstruction, then the Q-learning + GP search under
   H (recipe=search); its state file makes the search itself resumable.
2b. ``architecture``: the Phase-1 model with the chosen filter types (reconstruction-initialised).
3. ``algorithms``: each pruning algorithm (magnitude, ADMM, group-Lasso, and FPGM when the plan
   prunes filters only) a few epochs with the found plan (recipe=prune); the best by val top-1 is
   continued, masked, for the full budget, then fine-tuned masked with KD from the Phase-1 model.
4. ``compile``: every model of the pipeline compiled with its plan, checked against PyTorch, timed
   in one process with the same settings.
5. ``report``: report.md / report.json (and W&B when it is the logger).

This module only wires phases together: the pruning, search and compiler logic live in the engine.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console

from npas_lightning.utils.report import write_npas_report

console = Console()

PHASES = ("start", "phase1", "search", "architecture", "algorithms", "final", "compile", "report")


# ----------------------------------------------------------------------------- plumbing
def _sub_cfg(cfg: DictConfig, out_dir: Path, updates: dict[str, Any]) -> DictConfig:
    """A copy of ``cfg`` writing under ``out_dir`` with dotted-key ``updates`` applied."""
    sub = copy.deepcopy(cfg)
    with open_dict(sub):
        sub.paths.output_dir = str(out_dir)
        for key, value in updates.items():
            OmegaConf.update(sub, key, value, merge=False, force_add=True)
        if OmegaConf.select(sub, "logger.wandb") is not None:
            sub.logger.wandb.name = f"{cfg.task_name}/{out_dir.name}"
            sub.logger.wandb.group = str(cfg.task_name)
    return sub


def _phase(run_dir: Path, name: str, resume: bool, work: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Run one phase unless ``resume`` and its ``phase.json`` exists; return its recorded outputs."""
    out_dir = run_dir / name
    marker = out_dir / "phase.json"
    if resume and marker.is_file():
        done = json.loads(marker.read_text())
        console.print(f"[green]phase {name}: done in an earlier run, skipped[/green] ({marker})")
        return done
    out_dir.mkdir(parents=True, exist_ok=True)
    console.rule(f"NPAS phase: {name}")
    done = work(out_dir)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(done, indent=1, default=str))
    os.replace(tmp, marker)
    return done


def _flatten(values: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"<prefix>.a.b": 1}``: overrides that merge into a config node."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}.{key}"))
        else:
            flat[f"{prefix}.{key}"] = value
    return flat


def _check_args(latency_ms: Any, latency_fraction: Any, algorithms: Any, init_checkpoint: Any,
                algorithm_epochs: Any) -> None:
    if latency_ms is None and latency_fraction is None:
        raise ValueError("recipe.latency_ms and recipe.latency_fraction are both null: set one to give H")
    if latency_ms is not None and (isinstance(latency_ms, bool) or not float(latency_ms) > 0):
        raise ValueError(f"recipe.latency_ms={latency_ms!r} is not valid: expected a latency in ms > 0")
    if latency_fraction is not None and not 0 < float(latency_fraction) <= 1:
        raise ValueError(f"recipe.latency_fraction={latency_fraction!r} is not valid: expected a number in (0, 1]")
    known = {"magnitude", "admm", "group_lasso", "fpgm"}
    if not algorithms or set(algorithms) - known:
        raise ValueError(f"recipe.algorithms={algorithms!r} is not valid: expected a non-empty subset of "
                         f"{sorted(known)} (each configured under recipe.algorithm_configs)")
    if init_checkpoint is not None and not Path(init_checkpoint).is_file():
        raise FileNotFoundError(f"recipe.init_checkpoint={init_checkpoint!r} does not exist")
    if isinstance(algorithm_epochs, bool) or not isinstance(algorithm_epochs, int) or algorithm_epochs < 2:
        raise ValueError(f"recipe.algorithm_epochs={algorithm_epochs!r} is not valid: expected an integer >= 2 "
                         "(ADMM and group-Lasso need a penalty epoch followed by a masked epoch)")


# ----------------------------------------------------------------------------- phases
def _start(cfg: DictConfig, out: Path, init_checkpoint: str | None, start: DictConfig) -> dict[str, Any]:
    from npas_lightning.recipes import baseline
    from npas_lightning.utils.builders import build_model

    if init_checkpoint:
        return {"checkpoint": str(init_checkpoint), "source": f"recipe.init_checkpoint ({init_checkpoint})"}
    if cfg.model.get("pretrained"):
        try:
            module = build_model(cfg)
            path = out / "pretrained.ckpt"
            torch.save({"state_dict": {f"net.{k}": v for k, v in module.net.state_dict().items()}}, path)
            return {"checkpoint": str(path), "source": f"timm pretrained weights of {cfg.model.backbone}"}
        except RuntimeError as err:
            console.print(f"[yellow]{err}[/yellow]")
    console.print("[yellow]No pretrained weights and no recipe.init_checkpoint: training the backbone first "
                  f"(recipe=baseline, {start.epochs} epochs)[/yellow]")
    sub = _sub_cfg(cfg, out, {"model.pretrained": False, "model.optimizer": start.optimizer,
                              "model.scheduler": start.scheduler, "trainer.max_epochs": int(start.epochs)})
    result = baseline.run(sub)
    ckpt = result["artifacts"].get("best checkpoint")
    if not ckpt:
        raise RuntimeError("the baseline phase kept no checkpoint (callbacks.model_checkpoint is needed)")
    return {"checkpoint": ckpt, "source": f"trained here: recipe=baseline, {start.epochs} epochs",
            "metrics": result["metrics"]}


def _phase1(cfg: DictConfig, out: Path, start_ckpt: str, epochs: int, optimizer: DictConfig) -> dict[str, Any]:
    from npas_lightning.recipes import phase1

    sub = _sub_cfg(cfg, out, {"model.pretrained": False, "model.optimizer": optimizer})
    result = phase1.run(sub, epochs=epochs, init_checkpoint=start_ckpt, measure_latency=True)
    ckpt = result["artifacts"].get("phase1 checkpoint")
    if ckpt is None:  # epochs == 0: keep the swapped weights as they are
        from npas_lightning.utils.builders import build_model

        module = build_model(sub, checkpoint=start_ckpt, hard_activations=True)
        ckpt = str(out / "phase1.ckpt")
        torch.save({"state_dict": {f"net.{k}": v for k, v in module.net.state_dict().items()}}, ckpt)
    return {"checkpoint": ckpt, "metrics": result["metrics"], "latency": result["latency"]}


def _search(cfg: DictConfig, out: Path, phase1_ckpt: str, budget_ms: float, resume: bool,
            overrides: DictConfig) -> dict[str, Any]:
    from npas_lightning.recipes import search

    updates = {"search.run_dir": str(out), "search.latency_budget_ms": float(budget_ms), "search.resume":
               bool(resume and (out / "search_state.json").is_file()), "model.pretrained": False}
    updates.update(_flatten(OmegaConf.to_container(overrides, resolve=True), "search"))
    sub = _sub_cfg(cfg, out, updates)
    result = search.run(sub, checkpoint=phase1_ckpt, swap_activations=True)
    best_path = out / "best_plan.json"
    if not best_path.is_file():
        raise RuntimeError(f"the search evaluated no plan successfully (see {out / 'search_candidates.json'})")
    best = json.loads(best_path.read_text())
    return {"plan": best["plan"], "best": {k: best[k] for k in ("V", "h", "reward", "feasible", "flag")},
            "latency_budget_ms": float(budget_ms), "metrics": result["metrics"],
            "artifacts": {k: v for k, v in result["artifacts"].items() if not k.endswith("files")}}


def _architecture(cfg: DictConfig, out: Path, phase1_ckpt: str, plan: dict) -> dict[str, Any]:
    """The Phase-1 model with the plan's filter types, candidates fitted by reconstruction."""
    from npas_lightning.plan import NPASScheme
    from npas_lightning.transforms import apply_filter_types, fit_candidates, planned_filter_types
    from npas_lightning.utils.builders import build_datamodule, build_model

    sub = _sub_cfg(cfg, out, {"model.pretrained": False})
    datamodule = build_datamodule(sub)
    datamodule.setup("fit")
    module = build_model(sub, datamodule, checkpoint=phase1_ckpt, hard_activations=True)
    net = module.net.eval()
    resolved = NPASScheme.resolve(plan, net)
    replaced = {n: ft for n, ft in planned_filter_types(resolved).items() if ft not in ("keep", "skip")}
    fitted = None
    if replaced:
        batches = [b for _, b in zip(range(1 if cfg.debug_smoke else 4), datamodule.train_dataloader(), strict=False)]
        fitted = fit_candidates(net, batches, layers=list(replaced), filter_types=sorted(set(replaced.values())),
                                steps=2 if cfg.debug_smoke else 200, seed=int(cfg.seed))
    apply_filter_types(net, resolved, fitted=fitted, inplace=True)
    path = out / "searched.pth"
    torch.save(net.state_dict(), path)
    return {"weights": str(path), "replaced": replaced}


def _algorithms(cfg: DictConfig, out: Path, weights: str, plan: dict, names: list[str], configs: DictConfig,
                epochs: int, optimizer: DictConfig) -> dict[str, Any]:
    from npas_lightning.recipes import prune

    pruned_schemes = {lp.get("scheme") for lp in plan.values() if float(lp.get("rate", 1)) > 1}
    trials: dict[str, dict[str, Any]] = {}
    for name in names:
        if name == "fpgm" and pruned_schemes != {"filter"}:
            trials[name] = {"status": f"skipped: FPGM prunes filters only, the plan uses {sorted(pruned_schemes)}"}
            continue
        node = OmegaConf.to_container(configs[name], resolve=True)
        node["plan"] = plan
        node = {**node, **_fit_epochs(name, node, epochs)}
        sub = _sub_cfg(cfg, out / name, {"pruning": node, "model.plan": plan, "model.hard_activations": True,
                                          "model.pretrained": False, "model.optimizer": optimizer,
                                          "trainer.max_epochs": epochs})
        result = prune.run(sub, init_checkpoint=weights)
        trials[name] = {"status": "done", "val/acc1": result["metrics"].get("val/acc1"),
                        "prune/sparsity": result["metrics"].get("prune/sparsity"),
                        "checkpoint": result["artifacts"]["pruned checkpoint"], "epochs": epochs}
    done = {k: v for k, v in trials.items() if v["status"] == "done" and v["val/acc1"] is not None}
    if not done:
        raise RuntimeError(f"no pruning algorithm finished: {trials}")
    best = max(done, key=lambda k: done[k]["val/acc1"])
    return {"trials": trials, "best": best}


def _fit_epochs(name: str, node: dict[str, Any], epochs: int) -> dict[str, Any]:
    """Fit each algorithm's own phases in the trial: ADMM / group-Lasso penalty phases take the first
    half (at least one epoch, so a masked epoch follows), gradual magnitude/FPGM pruning ends by then."""
    half = max(1, epochs // 2)
    fitted = {key: max(1, min(int(node[key]), half)) for key in ("admm_epochs", "penalty_epochs") if node.get(key)}
    fitted.update({key: min(int(node[key]), half) for key in ("start_epoch", "end_epoch") if node.get(key) is not None})
    return fitted


def _final(cfg: DictConfig, out: Path, trial_ckpt: str, phase1_ckpt: str, plan: dict, algorithm: str,
           continue_epochs: int, kd: DictConfig, optimizer: DictConfig) -> dict[str, Any]:
    """Continue the winning algorithm's model masked, then fine-tune it masked with KD from Phase 1."""
    from npas_lightning.callbacks import MagnitudePruning
    from npas_lightning.models.distillation import DistillationModule
    from npas_lightning.recipes import prune
    from npas_lightning.utils.builders import (
        best_checkpoint,
        build_callbacks,
        build_datamodule,
        build_loggers,
        build_model,
        build_trainer,
        finish_loggers,
    )

    # The trial's weights already hold the plan's zeros, so magnitude masks recover them exactly.
    hold = {"_target_": "npas_lightning.callbacks.MagnitudePruning", "plan": plan, "start_epoch": 0, "end_epoch": 0}
    model_updates = {"model.plan": plan, "model.hard_activations": True, "model.pretrained": False,
                     "model.optimizer": optimizer}
    cont_ckpt = trial_ckpt
    if continue_epochs > 0:
        sub = _sub_cfg(cfg, out / "continue", {"pruning": hold, **model_updates, "trainer.max_epochs": continue_epochs})
        cont_ckpt = prune.run(sub, init_checkpoint=trial_ckpt)["artifacts"]["pruned checkpoint"]
    sub = _sub_cfg(cfg, out / "kd", {**model_updates, "trainer.max_epochs": int(kd.epochs)})
    datamodule = build_datamodule(sub)
    teacher = build_model(sub, datamodule, checkpoint=phase1_ckpt, plan=None).net
    hp = OmegaConf.to_container(sub.model, resolve=True)
    student = DistillationModule(
        backbone=hp["backbone"], num_classes=hp["num_classes"], in_chans=hp["in_chans"],
        model_kwargs=hp["model_kwargs"], checkpoint=cont_ckpt, optimizer=hp["optimizer"],
        scheduler=hp["scheduler"], hard_activations=True, plan=plan, teacher=teacher,
        alpha=float(kd.alpha), temperature=float(kd.temperature))
    loggers = build_loggers(sub)
    pruning = MagnitudePruning(plan, start_epoch=0, end_epoch=0)
    trainer = build_trainer(sub, callbacks=[*build_callbacks(sub), pruning], logger=loggers)
    trainer.fit(student, datamodule=datamodule)
    final = out / "final.ckpt"
    trainer.save_checkpoint(final)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    best_path, _ = best_checkpoint(trainer)
    finish_loggers(loggers)
    return {"checkpoint": str(final), "continued": cont_ckpt, "algorithm": algorithm,
            "val/acc1": metrics.get("val/acc1"), "sparsity": pruning.sparsity(student)["sparsity"],
            "best checkpoint (during KD)": best_path}


def _compile(cfg: DictConfig, out: Path, models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Compile every model with its plan and time them in one process, interleaved, same settings."""
    from npas_lightning.algorithms.masking import apply_masks, compute_masks
    from npas_lightning.compiler import LocalSession, compile_model
    from npas_lightning.compiler.engines import measure_interleaved, tvm_engine
    from npas_lightning.plan import NPASScheme
    from npas_lightning.utils.builders import build_datamodule, build_model

    comp = OmegaConf.to_container(cfg.compiler, resolve=True) if cfg.get("compiler") else {}
    measure = dict(comp.get("measure") or {})
    if cfg.debug_smoke:
        measure = {"number": 1, "repeat": 2, "warmup": 1}
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    x, _ = next(iter(datamodule.val_dataloader()))
    example = torch.randn(1, *x.shape[1:])
    compiled, results = {}, {}
    for name, spec in models.items():
        sub = _sub_cfg(cfg, out, {"model.pretrained": False})
        net = build_model(sub, checkpoint=spec["checkpoint"], hard_activations=spec["hard"], plan=spec["plan"]).net.eval()
        if spec.get("one_shot"):  # the searched architecture as the search timed it: one-shot magnitude masks
            resolved = NPASScheme.resolve(spec["plan"], net)
            apply_masks(net, compute_masks(net, resolved), resolved)
        try:  # with a plan, as the search measured it: filter layers cut, sparse-scheme layers block-sparse
            compiled[name] = compile_model(net, example, plan=spec["plan"], target=comp.get("target", "host"),
                                           tune=bool(comp.get("tune", False)), threads=comp.get("threads"),
                                           check=True)
            results[name] = {"status": "compiled", "numerics": _numerics(compiled[name]),
                             **compiled[name].prepare_info, "kernels": _kernel_lowering(compiled[name])}
        except Exception as err:  # reported, never guessed
            results[name] = {"status": f"not measured: {type(err).__name__}: {err}"}
    # every model timed in the same interleaved samples (the compiler's engines, as npas-latency does)
    session = LocalSession()
    x_np = example.numpy()
    engines = [dataclasses.replace(tvm_engine(c, x_np, session), name=name) for name, c in compiled.items()]
    stats = measure_interleaved(engines, number=int(measure.get("number", 10)), repeat=int(measure.get("repeat", 5)),
                                warmup=int(measure.get("warmup", 2)), threads=comp.get("threads"),
                                target=comp.get("target", "host"), input_shape=list(example.shape))
    for name, st in stats.items():
        results[name].update({"status": "measured", **st.to_dict()})
        if comp.get("export", True) and name == "final":
            results[name]["export_dir"] = str(compiled[name].export(out / "final_tvm"))
    return {"latency": results, "input_shape": list(example.shape)}


def _kernel_lowering(compiled: Any) -> dict[str, int]:
    """How many kernels read only kept weights (block-sparse or per-pattern), and how many pruned layers
    stayed dense (unstructured, unshrunk)."""
    from npas_lightning.compiler.rewrite import SPARSE_LOWERINGS

    lowering = [k.sparse.get("lowering", "") for k in compiled.kernels if k.sparse]
    return {"block_sparse": sum(1 for w in lowering if w in SPARSE_LOWERINGS),
            "pruned_but_dense": sum(1 for w in lowering if w not in SPARSE_LOWERINGS),
            "total": len(compiled.kernels)}


def _numerics(compiled: Any) -> dict[str, Any] | None:
    report = getattr(compiled, "numerics", None)
    if report is None:
        return None
    return report.to_dict() if hasattr(report, "to_dict") else dict(report)


# ----------------------------------------------------------------------------- entry
def run(
    cfg: DictConfig,
    *,
    run_dir: str | None = None,
    resume: bool = True,
    init_checkpoint: str | None = None,
    start: DictConfig | None = None,
    phase1_epochs: int = 2,
    latency_ms: float | None = None,
    latency_fraction: float | None = 0.5,
    search: DictConfig | None = None,
    algorithms: list[str] | None = None,
    algorithm_configs: DictConfig | None = None,
    algorithm_epochs: int = 2,
    full_epochs: int = 2,
    kd: DictConfig | None = None,
    finetune_optimizer: DictConfig | None = None,
) -> dict[str, Any]:
    """Run the NPAS pipeline; every argument is documented in configs/recipe/npas.yaml."""
    algorithms = list(algorithms or ["magnitude", "admm", "group_lasso", "fpgm"])
    _check_args(latency_ms, latency_fraction, algorithms, init_checkpoint, algorithm_epochs)
    smoke = bool(cfg.get("debug_smoke", False))
    root = Path(run_dir or cfg.paths.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    start = start or OmegaConf.create({"epochs": 15, "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.05},
                                       "scheduler": {"name": "cosine", "warmup_epochs": 1}})
    kd = kd or OmegaConf.create({"epochs": 1, "alpha": 0.5, "temperature": 4.0})
    finetune_optimizer = finetune_optimizer or OmegaConf.create({"name": "sgd", "lr": 0.01, "momentum": 0.9,
                                                                  "weight_decay": 5e-4})
    search = search or OmegaConf.create({})
    if smoke:  # seconds: one epoch everywhere, the trainer's batch limits do the rest
        phase1_epochs, algorithm_epochs, full_epochs = 1, 2, 0
        start = OmegaConf.merge(start, {"epochs": 1})
        kd = OmegaConf.merge(kd, {"epochs": 1})
    console.print(f"NPAS run directory: {root} (rerun with recipe.run_dir={root} to continue it)")

    s0 = _phase(root, "start", resume, lambda out: _start(cfg, out, init_checkpoint, start))
    p1 = _phase(root, "phase1", resume, lambda out: _phase1(cfg, out, s0["checkpoint"], phase1_epochs,
                                                              finetune_optimizer))
    if latency_ms is None:
        lat = p1["latency"]["after"]
        if lat.get("status") != "measured":
            raise RuntimeError(f"H is a fraction of the Phase-1 latency, which was {lat.get('status')}; "
                               "set recipe.latency_ms instead")
        budget = float(latency_fraction) * float(lat["median_ms"])
    else:
        budget = float(latency_ms)
    s2 = _phase(root, "search", resume, lambda out: _search(cfg, out, p1["checkpoint"], budget, resume, search))
    plan = s2["plan"]
    arch = _phase(root, "architecture", resume, lambda out: _architecture(cfg, out, p1["checkpoint"], plan))
    algo = _phase(root, "algorithms", resume, lambda out: _algorithms(
        cfg, out, arch["weights"], plan, algorithms, algorithm_configs, algorithm_epochs, finetune_optimizer))
    winner = algo["best"]
    final = _phase(root, "final", resume, lambda out: _final(
        cfg, out, algo["trials"][winner]["checkpoint"], p1["checkpoint"], plan, winner,
        max(0, full_epochs - algorithm_epochs), kd, finetune_optimizer))
    models = {
        "start": {"checkpoint": s0["checkpoint"], "hard": False, "plan": None},
        "phase1": {"checkpoint": p1["checkpoint"], "hard": True, "plan": None},
        "searched": {"checkpoint": arch["weights"], "hard": True, "plan": plan, "one_shot": True},
        "final": {"checkpoint": final["checkpoint"], "hard": True, "plan": plan},
    }
    compiled = _phase(root, "compile", resume, lambda out: _compile(cfg, out, models))
    phases = {"start": s0, "phase1": p1, "search": s2, "architecture": arch, "algorithms": algo, "final": final,
              "compile": compiled}
    report = _phase(root, "report", False, lambda out: write_npas_report(cfg, root, phases))
    console.print(report["summary_markdown"])
    return {"recipe": str(cfg.recipe_name), "metrics": report["metrics"],
            "artifacts": {"report": report["report_md"], "report json": report["report_json"],
                          "final checkpoint": final["checkpoint"], "run directory (resume)": str(root)}}
