"""Fast auto-tuning: a small per-layer grid of tile sizes, measured, best kept, cached on disk.

The cache is one JSON file mapping ``"<kind>|<layer shape>|<target key>"`` to the best tile and its
measured time. Writes are atomic (temp file + rename) and merge with what other processes wrote in
the meantime, so concurrent compiles lose at most a duplicate measurement, never the file.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TileCache", "default_cache_dir", "measure_kernel", "pick_best"]


def default_cache_dir() -> Path:
    """``$NPAS_CACHE_DIR`` or ``~/.cache/npas_lightning``."""
    return Path(os.environ.get("NPAS_CACHE_DIR", Path.home() / ".cache" / "npas_lightning"))


class TileCache:
    """Best tile per layer key, persisted as JSON.

    Example:
        >>> c = TileCache(Path(tempfile.mkdtemp()) / "tiles.json")
        >>> c.put("conv|x", {"ft": 8}, 0.1); c.get("conv|x")
        {'ft': 8}
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else default_cache_dir() / "tiles.json"
        self._data: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        try:
            with open(self.path) as fh:
                return json.load(fh)
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def get(self, key: str) -> dict | None:
        if self._data is None:
            self._data = self._load()
        entry = self._data.get(key)
        return None if entry is None else dict(entry["tile"])

    def put(self, key: str, tile: dict, seconds: float) -> None:
        data = self._load()
        data[key] = {"tile": dict(tile), "seconds": float(seconds), "time": time.time()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tiles-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, self.path)
        self._data = data

    def __len__(self) -> int:
        return len(self._load())


def measure_kernel(func, target, arg_shapes: Sequence[tuple[tuple[int, ...], str]], *,
                   fixed_args: dict[int, np.ndarray] | None = None, number: int = 5, repeat: int = 3) -> float:
    """Build one PrimFunc for ``target`` (host) and return its median run time in seconds.

    ``arg_shapes`` lists ``(shape, dtype)`` of every argument (random data), ``fixed_args`` gives
    real values for some positions (index buffers must stay in bounds).
    """
    import tvm

    lib = tvm.tirx.build(func, target=target)
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    args = []
    for i, (shape, dtype) in enumerate(arg_shapes):
        if fixed_args and i in fixed_args:
            arr = fixed_args[i]
        elif dtype.startswith("float"):
            arr = rng.standard_normal(shape).astype(dtype)
        else:
            arr = np.zeros(shape, dtype=dtype)
        args.append(tvm.runtime.tensor(arr, dev))
    timer = lib.time_evaluator(lib.entry_name, dev, number=number, repeat=repeat, min_repeat_ms=2)
    return float(np.median(timer(*args).results))


def pick_best(candidates: Sequence[Any], run: Callable[[Any], float]) -> tuple[Any, float]:
    """Measure every candidate with ``run`` (seconds) and return the fastest and its time."""
    best, best_t = None, float("inf")
    for cand in candidates:
        t = run(cand)
        if t < best_t:
            best, best_t = cand, t
    if best is None:
        raise ValueError("pick_best needs at least one candidate")
    return best, best_t
