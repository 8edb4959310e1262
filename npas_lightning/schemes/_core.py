"""Vectorised building blocks shared by the schemes (no Python loop over weights, blocks or kernels)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from npas_lightning.schemes.registry import NotApplicable, SchemeError

__all__ = ["block_cover_check", "parse_block", "select_groups", "target_kept"]


def target_kept(numel: int, rate: float) -> int:
    """Number of weights a rate asks to keep: ``round(numel / rate)`` (half up), at least 1."""
    return max(1, math.floor(numel / rate + 0.5))


def select_groups(scores: Tensor, sizes: Tensor | int, target: int) -> Tensor:
    """Keep the highest-scoring groups whose total size is closest to ``target`` (at least one group).

    Args:
        scores: 1-D, one score per group (higher = more important).
        sizes: number of weights per group: an int when all groups are equal (fast path: an
            unsorted ``topk``), else a 1-D int64 tensor (edge blocks are smaller; a stable sort and
            the prefix whose cumulative size is closest to ``target``).
        target: number of weights to keep.

    Returns:
        1-D bool, True for kept groups; deterministic for a given input (ties in the sort path are
        broken by group index).
    """
    n_groups = scores.numel()
    keep = torch.zeros(n_groups, dtype=torch.bool, device=scores.device)
    if isinstance(sizes, int):
        n_keep = min(n_groups, max(1, math.floor(target / sizes + 0.5)))
        if n_keep == n_groups:
            return keep.fill_(True)
        keep[torch.topk(scores, n_keep, sorted=False).indices] = True
        return keep
    order = torch.argsort(scores, descending=True, stable=True)
    cumulative = torch.cumsum(sizes[order], dim=0)
    n_keep = int(torch.argmin((cumulative - target).abs())) + 1
    keep[order[:n_keep]] = True
    return keep


def parse_block(block: Any, *, what: str = "block") -> tuple[int, int]:
    """Validate a block argument: two positive integers (a tuple or a list from YAML/JSON)."""
    ok = (
        isinstance(block, Sequence) and not isinstance(block, str) and len(block) == 2
        and all(isinstance(b, numbers.Integral) and not isinstance(b, bool) and int(b) >= 1 for b in block)
    )
    if not ok:
        raise SchemeError(f"{what}={block!r}: expected two positive integers, e.g. (8, 4)")
    return int(block[0]), int(block[1])


def block_cover_check(extent: tuple[int, int], block: tuple[int, int], *, dims: str) -> None:
    """Refuse a block that covers the whole layer and is larger than it.

    Such a block turns a block scheme into a whole-layer one, almost always a configuration mistake
    (ask for it on purpose with a block equal to the layer's extent). Blocks larger than the layer
    in only one dimension are fine: they become edge blocks.
    """
    if block[0] >= extent[0] and block[1] >= extent[1] and block != extent:
        raise NotApplicable(
            f"block {block} is larger than the whole layer ({extent[0]} x {extent[1]} {dims}); "
            f"pass a block no larger than {extent}"
        )
