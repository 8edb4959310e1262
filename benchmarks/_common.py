"""Shared helpers of the benchmark scripts: machine description and JSON results."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def fresh_tile_cache() -> Path:
    """A path for an empty tile cache. Untuned compiles use every tile a cache holds (tuned once,
    reused), so a benchmark that builds with the default cache would measure whatever an earlier
    ``tune=True`` left in ``~/.cache/npas_lightning``; with this one it measures the heuristic tiles a
    clean machine gets."""
    return Path(tempfile.mkdtemp(prefix="npas-bench-tiles-")) / "tiles.json"


def machine() -> dict[str, Any]:
    """CPU model, core count, memory and library versions, for the results' header."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": round(load, 2),
        "commit": commit or None,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def write_results(name: str, command: str, results: Any) -> Path:
    """Write ``benchmarks/results/<name>.json`` with the command and machine; return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"command": command, "machine": machine(), "results": results}, indent=2))
    return path
