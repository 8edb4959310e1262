"""Bridge from the ``compiler`` Hydra node (configs/compiler/*.yaml) to the compiler API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .cache import LatencyCache
from .compile import Compiled, compile_model
from .latency import measure_latency
from .measure import LatencyStats
from .targets import TargetSpec, resolve_target

__all__ = ["target_from_config", "compile_from_config", "measure_compiled", "measure_from_config"]


def _get(cfg: Mapping | None, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    val = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if val is None else val


def target_from_config(cfg: Mapping | None) -> TargetSpec:
    return resolve_target(_get(cfg, "target", "host"), threads=_get(cfg, "threads"), ndk_cc=_get(cfg, "ndk_cc"))


def compile_from_config(model: nn.Module, example_input: torch.Tensor, cfg: Mapping | None, *,
                        plan: Any = None) -> Compiled:
    """``compile_model`` with target, threads, tune, check, tile cache and codegen workers taken from ``cfg``."""
    return compile_model(model, example_input, plan=plan, target=target_from_config(cfg), tune=bool(_get(cfg, "tune", False)),
                         threads=_get(cfg, "threads"), check=bool(_get(cfg, "check", True)),
                         tile_cache=_get(cfg, "tile_cache"), codegen_workers=_get(cfg, "codegen_workers"))


def _session_args(cfg: Mapping | None) -> dict[str, Any]:
    rpc = _get(cfg, "rpc", {}) or {}
    return {"device": _get(cfg, "device", "local"), "rpc": dict(rpc) if rpc else None}


def measure_compiled(compiled: Compiled, cfg: Mapping | None) -> LatencyStats:
    m = _get(cfg, "measure", {}) or {}
    return compiled.measure(number=int(_get(m, "number", 10)), repeat=int(_get(m, "repeat", 5)),
                            warmup=int(_get(m, "warmup", 2)), **_session_args(cfg))


def measure_from_config(model: nn.Module, example_input: torch.Tensor, cfg: Mapping | None, *, plan: Any = None,
                        use_cache: bool = True) -> tuple[LatencyStats, bool]:
    """Cached latency of ``model`` per ``cfg`` (the search's latency call). Returns (stats, cache_hit)."""
    m = _get(cfg, "measure", {}) or {}
    cache = LatencyCache(_get(cfg, "latency_cache")) if use_cache else None
    return measure_latency(model, example_input, plan=plan, target=target_from_config(cfg),
                           threads=_get(cfg, "threads"), tune=bool(_get(cfg, "tune", False)), cache=cache,
                           number=int(_get(m, "number", 10)), repeat=int(_get(m, "repeat", 5)),
                           warmup=int(_get(m, "warmup", 2)), check=bool(_get(cfg, "check", True)),
                           codegen_workers=_get(cfg, "codegen_workers"), **_session_args(cfg))
