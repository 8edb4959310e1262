"""``measure_latency``: cached compile-and-measure, the call a search worker makes per candidate.

Example:
    >>> stats, hit = measure_latency(model, torch.randn(1, 3, 64, 64), cache=LatencyCache(path))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .cache import LatencyCache, latency_key, model_hash
from .compile import compile_model, compiler_version, plan_hash
from .measure import LatencyStats
from .targets import TargetSpec, resolve_target

__all__ = ["measure_latency", "cache_key_for"]


def cache_key_for(model: nn.Module, input_shape, *, plan: Any = None, target: TargetSpec) -> tuple[str, dict]:
    """(key, components) of the latency cache entry for this model/plan/shape/target."""
    parts = {"backbone": model_hash(model), "plan": plan_hash(plan, model),
             "input_shape": [int(s) for s in input_shape], "target": target.key(), "compiler": compiler_version()}
    key = latency_key(parts["backbone"], parts["plan"], parts["input_shape"], parts["target"], parts["compiler"])
    return key, parts


def measure_latency(model: nn.Module, example_input: torch.Tensor, *, plan: Any = None,
                    target: str | Mapping | TargetSpec = "host", threads: int | None = None, tune: bool = False,
                    cache: LatencyCache | None = None, number: int = 10, repeat: int = 5, warmup: int = 2,
                    device: str = "local", rpc: Mapping | None = None, check: bool = True,
                    codegen_workers: int | None = None) -> tuple[LatencyStats, bool]:
    """Latency of ``model`` (+ ``plan``) on ``target``: a cache lookup, else compile + measure + store.

    Returns ``(stats, cache_hit)``. With ``cache=None`` nothing is cached. ``codegen_workers``: see
    ``compile_model`` (it changes how fast the code is generated, not the code, so not the key).
    """
    spec = resolve_target(target, threads=threads)
    key, parts = cache_key_for(model, tuple(example_input.shape), plan=plan, target=spec)
    if cache is not None:
        hit = cache.get(key)
        if hit is not None:
            return hit, True
    compiled = compile_model(model, example_input, plan=plan, target=spec, tune=tune, threads=threads, check=check,
                             codegen_workers=codegen_workers)
    stats = compiled.measure(number=number, repeat=repeat, warmup=warmup, device=device, rpc=rpc)
    if cache is not None:
        cache.put(key, stats, **parts)
    return stats, False
