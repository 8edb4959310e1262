"""Search outputs: candidates table, Pareto plot, per-layer plan plot, best plan file, W&B logging.

Example::

    >>> paths = write_report(result, "runs/search", latency_budget_ms=10.0)   # doctest: +SKIP
    >>> rich.print(candidates_table(result.history, 10.0, top=20))           # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

__all__ = ["candidates_table", "pareto_front", "pareto_plot", "plan_plot", "write_report"]

_COLUMNS = ["#", "step", "V", "h_ms", "reward", "feasible", "ok", "epsilon", "pred_mean", "ei", "reason"]


def _rows(history: Sequence[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for r in history:
        rows.append([r["index"], r.get("step"), r["V"], r["h"], r["reward"], r["feasible"], r["ok"],
                     r.get("epsilon"), r.get("pred_mean"), r.get("ei"), r.get("reason", "")])
    return rows


def candidates_table(history: Sequence[dict[str, Any]], latency_budget_ms: float, *, top: int | None = None,
                     best_index: int | None = None) -> Table:
    """Rich table of evaluated candidates, sorted by reward (``top`` rows)."""
    table = Table(title=f"NPAS search candidates (H = {latency_budget_ms:g} ms, latency measured)")
    for c in _COLUMNS:
        table.add_column(c, justify="left" if c == "reason" else "right")
    ordered = sorted(history, key=lambda r: -r["reward"])
    for r in ordered[:top] if top else ordered:
        def f(v, fmt="{:.4f}"):
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)

        style = "bold green" if r["index"] == best_index else ("red" if not r["ok"] else None)
        table.add_row(str(r["index"]), str(r.get("step", "")), f(r["V"]), f(r["h"], "{:.3f}"), f(r["reward"]),
                      "yes" if r["feasible"] else "no", "yes" if r["ok"] else "no", f(r.get("epsilon"), "{:.2f}"),
                      f(r.get("pred_mean")), f(r.get("ei"), "{:.2e}"), (r.get("reason") or "")[:60], style=style)
    return table


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated in (lower latency, higher accuracy), by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_v = [], -math.inf
    for i in order:
        if points[i][1] > best_v:
            front.append(i)
            best_v = points[i][1]
    return front


def pareto_plot(history: Sequence[dict[str, Any]], latency_budget_ms: float, best: dict[str, Any] | None,
                path: str | Path, *, title: str = "NPAS search: top-1 vs measured latency") -> Path:
    """PNG scatter of V vs measured h, the Pareto front, the constraint line and the chosen point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in history if r["ok"]]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    if ok:
        h = [r["h"] for r in ok]
        v = [r["V"] for r in ok]
        ax.scatter(h, v, s=14, c=[r["index"] for r in ok], cmap="viridis", label="evaluated (colour = order)")
        front = pareto_front(list(zip(h, v, strict=True)))
        ax.plot([h[i] for i in front], [v[i] for i in front], "k--", lw=1, label="Pareto front")
    ax.axvline(latency_budget_ms, color="red", lw=1.2, label=f"H = {latency_budget_ms:g} ms")
    if best is not None and best["ok"]:
        ax.scatter([best["h"]], [best["V"]], marker="*", s=220, c="red", edgecolors="k", zorder=5,
                   label="chosen" + ("" if best["feasible"] else " (violates H)"))
    ax.set_xlabel("measured latency h [ms]")
    ax.set_ylabel("validation top-1 V")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plan_plot(plan: dict[str, dict[str, Any]], path: str | Path, *, title: str = "Chosen NPAS scheme") -> Path:
    """Per-layer plot of a plan dict: filter type, scheme (colour) and pruning rate (bar height)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(plan)
    fts = sorted({p["filter_type"] for p in plan.values()})
    schemes = sorted({p["scheme"] if p["rate"] > 1 else "unpruned" for p in plan.values()})
    cmap = plt.get_cmap("tab10")
    colour = {s: cmap(i % 10) for i, s in enumerate(schemes)}
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6.4, 0.22 * len(names)), 5.2), dpi=120, sharex=True,
                                   gridspec_kw={"height_ratios": [1, 2]})
    x = list(range(len(names)))
    ax1.scatter(x, [fts.index(plan[n]["filter_type"]) for n in names], marker="s", c="k", s=16)
    ax1.set_yticks(range(len(fts)), fts, fontsize=7)
    ax1.set_ylabel("filter type")
    ax1.set_title(title)
    for s in schemes:
        idx = [i for i, n in enumerate(names) if (plan[n]["scheme"] if plan[n]["rate"] > 1 else "unpruned") == s]
        ax2.bar(idx, [plan[names[i]]["rate"] for i in idx], color=colour[s], label=s)
    ax2.set_ylabel("pruning rate (x)")
    ax2.set_xticks(x, names, rotation=90, fontsize=6)
    ax2.legend(fontsize=7, ncol=min(len(schemes), 5))
    ax2.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _log_wandb(logger, history: Sequence[dict[str, Any]], images: dict[str, Path]) -> None:
    log_table = getattr(logger, "log_table", None)
    log_image = getattr(logger, "log_image", None)
    if log_table is not None:
        rows = [[None if isinstance(v, float) and math.isnan(v) else v for v in row] for row in _rows(history)]
        log_table(key="search/candidates", columns=_COLUMNS, data=rows)
    if log_image is not None:
        for key, p in images.items():
            log_image(key=f"search/{key}", images=[str(p)])


def write_report(result, out_dir: str | Path, latency_budget_ms: float, *, logger=None, space=None) -> dict[str, Path]:
    """Write best plan (JSON), all candidates (JSON), Pareto and plan PNGs; log them to W&B if given."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    hist_path = out / "search_candidates.json"
    hist_path.write_text(json.dumps(result.history, indent=1, allow_nan=True))
    paths["candidates"] = hist_path
    images: dict[str, Path] = {"pareto": pareto_plot(result.history, latency_budget_ms, result.best,
                                                      out / "search_pareto.png")}
    if result.best is not None:
        best = {k: result.best[k] for k in ("index", "trajectory", "V", "h", "reward", "feasible", "ok")}
        best["flag"] = "" if result.feasible else f"no evaluated plan meets H={latency_budget_ms} ms: best reward"
        best["latency_budget_ms"] = latency_budget_ms
        best["plan"] = result.best["plan"]
        p = out / "best_plan.json"
        p.write_text(json.dumps(best, indent=1))
        paths["best_plan"] = p
        images["plan"] = plan_plot(result.best["plan"], out / "search_plan.png",
                                   title=f"Chosen NPAS scheme (V={result.best['V']:.4f}, h={result.best['h']:.2f} ms)")
    paths.update(images)
    if logger is not None:
        _log_wandb(logger, result.history, images)
    return paths
