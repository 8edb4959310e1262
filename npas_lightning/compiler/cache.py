"""SQLite latency cache keyed by structure: backbone, plan, input shape, target, compiler version.

Weight values never enter the key (re-training a model keeps its cached latency); any structural
change does. WAL journal + ``BEGIN IMMEDIATE`` writes + a busy timeout make it safe for several
processes (search workers) reading and writing at once.

Example:
    >>> cache = LatencyCache("/tmp/latency.sqlite")
    >>> key = latency_key(model_hash(model), "dense", (1, 3, 224, 224), "host|...", compiler_version())
    >>> cache.get(key) is None
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .measure import LatencyStats
from .tuning import default_cache_dir

__all__ = ["LatencyCache", "latency_key", "model_hash", "default_latency_cache_path"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS latency (
    key TEXT PRIMARY KEY,
    backbone TEXT NOT NULL,
    plan TEXT NOT NULL,
    input_shape TEXT NOT NULL,
    target TEXT NOT NULL,
    compiler TEXT NOT NULL,
    median_ms REAL NOT NULL,
    stats TEXT NOT NULL,
    created REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
)
"""


def default_latency_cache_path() -> Path:
    return default_cache_dir() / "latency.sqlite"


def model_hash(model: nn.Module) -> str:
    """sha256 of the module tree (classes, layer hyper-parameters, parameter shapes), never values.

    Sparse layers (:mod:`npas_lightning.sparse`) count by their dense shape and scheme: the size of
    their compact weights depends on which weights survived, while their structure is the plan's,
    which the latency key carries, so the same plan on other weights is a cache hit.
    """
    from npas_lightning.sparse import SparseConv2d, SparseLinear

    sparse = {n for n, m in model.named_modules() if isinstance(m, (SparseConv2d, SparseLinear))}
    h = hashlib.sha256(re.sub(r", density=[0-9.]+", "", repr(model)).encode())
    for name, p in model.named_parameters():
        if name.rpartition(".")[0] not in sparse:
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
    for name, b in model.named_buffers():
        if name.rpartition(".")[0] not in sparse:
            h.update(f"{name}:{tuple(b.shape)}:{b.dtype}".encode())
    return h.hexdigest()


def latency_key(backbone: str, plan: str, input_shape: Sequence[int], target: str, compiler: str) -> str:
    """Canonical key: sha256 over the five structural components."""
    payload = json.dumps([backbone, plan, [int(s) for s in input_shape], target, compiler], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


class LatencyCache:
    """Process-safe latency store (one SQLite file, WAL mode)."""

    def __init__(self, path: str | os.PathLike | None = None, *, timeout: float = 60.0):
        self.path = Path(path) if path is not None else default_latency_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None,
                                     check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._write(lambda c: c.execute(_SCHEMA))

    def _write(self, fn):
        cur = self._conn.cursor()
        for attempt in range(50):
            try:
                cur.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as err:  # locked beyond busy_timeout: retry
                if "locked" not in str(err) or attempt == 49:
                    raise
                time.sleep(0.05)
        try:
            out = fn(cur)
            cur.execute("COMMIT")
            return out
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def get(self, key: str) -> LatencyStats | None:
        """The cached stats for ``key`` (and count the hit), or None."""
        row = self._conn.execute("SELECT stats FROM latency WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        self._write(lambda c: c.execute("UPDATE latency SET hits = hits + 1 WHERE key = ?", (key,)))
        d = json.loads(row[0])
        d["input_shape"] = tuple(d["input_shape"])
        return LatencyStats(**d)

    def put(self, key: str, stats: LatencyStats, *, backbone: str, plan: str, input_shape: Sequence[int],
            target: str, compiler: str) -> None:
        """Insert or replace the entry for ``key``."""
        row = (key, backbone, plan, json.dumps(list(input_shape)), target, compiler, stats.median_ms,
               json.dumps(stats.to_dict()), time.time())
        self._write(lambda c: c.execute(
            "INSERT OR REPLACE INTO latency (key, backbone, plan, input_shape, target, compiler, median_ms, "
            "stats, created, hits) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)", row))

    def stats(self) -> dict[str, Any]:
        """Entries, total hits, file size, entries per target and compiler version."""
        c = self._conn
        entries, hits = c.execute("SELECT COUNT(*), COALESCE(SUM(hits), 0) FROM latency").fetchone()
        by_target = dict(c.execute("SELECT target, COUNT(*) FROM latency GROUP BY target").fetchall())
        by_compiler = dict(c.execute("SELECT compiler, COUNT(*) FROM latency GROUP BY compiler").fetchall())
        size = sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file())
        return {"path": str(self.path), "entries": int(entries), "hits": int(hits), "bytes": int(size),
                "by_target": by_target, "by_compiler": by_compiler}

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM latency").fetchone()[0])

    def close(self) -> None:
        self._conn.close()
