"""Terminal summaries of a finished run (rich tables)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table


def metrics_table(metrics: Mapping[str, Any], title: str = "Results") -> Table:
    """A two-column table of metric name and value (floats to 4 decimals)."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in sorted(metrics):
        value = metrics[key]
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    return table


def print_run_summary(result: Mapping[str, Any], *, console: Console | None = None) -> None:
    """Print a recipe's metrics and where its files went."""
    console = console or Console()
    console.print(metrics_table(result.get("metrics", {}), title=f"{result.get('recipe', 'run')}: results"))
    for name, path in result.get("artifacts", {}).items():
        console.print(f"{name}: {path}")
