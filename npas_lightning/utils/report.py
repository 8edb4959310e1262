"""The NPAS run report: report.md and report.json (and W&B), built from the phases' recorded outputs.

Every latency in it comes from the compile phase's measurements, printed with its target, input
shape, thread count and run count; a model that is not faster is reported as not faster.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

MODEL_LABELS = {
    "start": "starting model",
    "phase1": "Phase 1 (hard activations)",
    "searched": "searched architecture (one-shot pruned, as the search timed it)",
    "final": "final (pruned + KD)",
}


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else ("-" if value is None else str(value))


def _accuracies(phases: dict[str, Any]) -> dict[str, float | None]:
    p1 = phases["phase1"]["metrics"]
    return {
        "start": p1.get("phase1/acc1_before_swap"),
        "phase1": p1.get("phase1/acc1_after_finetune"),
        "searched": phases["search"]["best"].get("V"),
        "final": phases["final"].get("val/acc1"),
    }


def _plan_rows(plan: dict[str, Any]) -> list[list[str]]:
    rows = []
    for layer, lp in plan.items():
        block = lp.get("block")
        rows.append([layer, lp.get("filter_type", "keep"), lp.get("scheme", "-"), _fmt(float(lp.get("rate", 1)), 2),
                     "x".join(map(str, block)) if block else "-"])
    return rows


def _codegen_note(phases: dict[str, Any]) -> str:
    """How the final model's pruned layers were lowered, from the compile phase's kernel counts."""
    final = (phases.get("compile") or {}).get("latency", {}).get("final", {})
    k = final.get("kernels") or {}
    counts = (f" In the final model {k.get('block_sparse', 0)} of {k.get('total', 0)} kernels ran sparse and "
              f"{k.get('pruned_but_dense', 0)} pruned layers ran dense.") if k else ""
    return ("Code generation: filter-pruned layers are cut physically; block-punched, block-based and pattern "
            "layers run sparse kernels (block-sparse, or per-pattern loops when those measure faster) that read only "
            "the kept weights (compact weights + index buffers); "
            "unstructured layers run dense kernels that compute their zeros, so they lower latency only through "
            "the other layers." + counts)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_npas_report(cfg: DictConfig, root: Path, phases: dict[str, Any]) -> dict[str, Any]:
    """Write ``<root>/report/report.md`` and ``report.json``; return paths, metrics and a summary."""
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    acc = _accuracies(phases)
    latency = phases["compile"]["latency"]
    ms = {k: (v.get("median_ms") if v.get("status") == "measured" else None) for k, v in latency.items()}
    base = ms.get("phase1")
    rows, metrics = [], {}
    for key, label in MODEL_LABELS.items():
        speed = base / ms[key] if base and ms.get(key) else None
        note = "" if speed is None or key == "phase1" else (" (faster)" if speed > 1.0 else " (NOT faster)")
        status = latency.get(key, {}).get("status", "not compiled")
        lat_txt = _fmt(ms.get(key), 3) if ms.get(key) is not None else status
        acc_label = " (fast eval)" if key == "searched" else ""
        rows.append([label, _fmt(acc[key]) + acc_label, lat_txt, (_fmt(speed, 2) + "x" + note) if speed else "-"])
        if acc[key] is not None:
            metrics[f"npas/{key}_acc1"] = float(acc[key])
        if ms.get(key) is not None:
            metrics[f"latency/{key}_ms"] = float(ms[key])
    if base and ms.get("final"):
        metrics["latency/final_speedup_vs_phase1"] = base / ms["final"]
    if ms.get("start") and ms.get("final"):
        metrics["latency/final_speedup_vs_start"] = ms["start"] / ms["final"]
    budget = float(phases["search"]["latency_budget_ms"])
    met = ms.get("final") is not None and ms["final"] <= budget
    measured = next((v for v in latency.values() if v.get("status") == "measured"), {})
    settings = {
        "target": measured.get("target"), "threads": measured.get("threads") or f"all ({os.cpu_count()} cores)",
        "input_shape": phases["compile"].get("input_shape"), "number": measured.get("runs"),
        "repeat": measured.get("repeats"), "warmup": measured.get("warmup"),
        "statistic": "median of `repeat` samples, each the mean of `number` runs, all models interleaved",
    }
    algo_rows = [[name, t["status"], _fmt(t.get("val/acc1")), _fmt(t.get("prune/sparsity")), str(t.get("epochs", "-"))]
                 for name, t in phases["algorithms"]["trials"].items()]
    plan = phases["search"]["plan"]
    best = phases["search"]["best"]
    summary = _md_table(["model", "val top-1", "latency (ms)", "speedup vs Phase 1"], rows)
    md = [
        f"# NPAS report: {cfg.model.backbone} on {Path(str(cfg.data._target_)).suffix.lstrip('.')}",
        "",
        f"Starting point: {phases['start']['source']}.",
        "",
        "## Results",
        "",
        summary,
        "",
        f"Latency constraint H = {budget:.3f} ms: the final model {'meets' if met else 'does NOT meet'} it."
        + ("" if best.get("feasible", True) else f" The search flagged: {best.get('flag')}."),
        "",
        "Measurement: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + ". Every latency above was measured "
        "on TVM-compiled code in one process with the same settings; the searched model's top-1 is the search's "
        "fast evaluation (one-shot prune + short fine-tune).",
        "",
        _codegen_note(phases),
        "",
        "## Per-layer plan",
        "",
        _md_table(["layer", "filter type", "scheme", "rate", "block"], _plan_rows(plan)),
        "",
        "## Pruning algorithm search (Phase 3)",
        "",
        _md_table(["algorithm", "status", "val top-1", "sparsity", "epochs"], algo_rows),
        "",
        f"Winner: {phases['algorithms']['best']}; continued masked, then fine-tuned with KD from the Phase-1 model "
        f"(final sparsity over planned layers {_fmt(phases['final'].get('sparsity'))}).",
        "",
        "## Search",
        "",
        f"Best plan: V={_fmt(best.get('V'))}, h={_fmt(best.get('h'), 3)} ms, reward={_fmt(best.get('reward'))}.",
        "",
        "![Pareto plot](pareto.png)",
        "",
    ]
    pareto = Path(phases["search"]["artifacts"].get("search pareto", ""))
    if pareto.is_file():
        shutil.copy(pareto, out / "pareto.png")
    plan_png = Path(phases["search"]["artifacts"].get("search plan", ""))
    if plan_png.is_file():
        shutil.copy(plan_png, out / "plan.png")
        md += ["![Per-layer plan](plan.png)", ""]
    report_md = out / "report.md"
    report_md.write_text("\n".join(md))
    data = {"model": cfg.model.backbone, "data": str(cfg.data._target_), "start": phases["start"]["source"],
            "accuracy": acc, "latency": latency, "measurement": settings, "latency_budget_ms": budget,
            "meets_budget": met, "metrics": metrics, "plan": plan, "algorithms": phases["algorithms"],
            "search_best": best}
    report_json = out / "report.json"
    report_json.write_text(json.dumps(data, indent=1, default=str))
    _log_wandb(cfg, out, rows, metrics)
    return {"report_md": str(report_md), "report_json": str(report_json), "metrics": metrics,
            "summary_markdown": summary}


def _log_wandb(cfg: DictConfig, out: Path, rows: list[list[str]], metrics: dict[str, float]) -> None:
    if OmegaConf.select(cfg, "logger.wandb") is None:
        return
    import hydra
    import wandb

    node = OmegaConf.to_container(cfg.logger.wandb, resolve=True)
    node.update(name=f"{cfg.task_name}/report", group=str(cfg.task_name), save_dir=str(out))
    logger = hydra.utils.instantiate(node)
    logger.log_metrics(metrics)
    logger.log_table("npas/report", columns=["model", "val top-1", "latency (ms)", "speedup vs Phase 1"], data=rows)
    images = [p for p in (out / "pareto.png", out / "plan.png") if p.is_file()]
    if images:
        logger.log_image("npas/plots", [str(p) for p in images])
    wandb.finish()
