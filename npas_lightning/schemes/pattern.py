"""Pattern pruning (PCONV/PatDNN; paper section 2.1, Fig. 1e) with connectivity pruning, 3x3 kernels only.

Every kept 3x3 kernel keeps exactly 4 weights: the centre plus 3 of its 8 neighbours (4-neighbours
and diagonals). Candidates are all C(8, 3) = 56 such patterns (:data:`CANDIDATES`, index order of
:func:`itertools.combinations`). For a layer:

1. each kernel's best-fit candidate is the one keeping the most squared magnitude;
2. the library is the ``k`` (default 8) most frequent best-fit candidates of the layer (ties by
   candidate index);
3. each kernel gets the library pattern keeping the most squared magnitude (ties: library order);
4. connectivity pruning: a rate above 9/4 also removes whole kernels, those whose pattern-kept
   weights have the smallest L2 norm, so that ``4 * kept kernels ~= round(numel / rate)``.

Achievable rates are 1 (dense) and >= 9/4: a rate in (1, 9/4] gives the pattern alone (rate 9/4,
every kernel kept with 4 weights) since a kernel never keeps more than 4 weights.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import Tensor

from npas_lightning.schemes._core import select_groups
from npas_lightning.schemes.registry import NotApplicable, SchemeError, register_scheme

__all__ = ["CANDIDATES", "PATTERN_RATE", "pattern", "pattern_mask"]

#: The rate of the pattern alone (9 weights -> 4).
PATTERN_RATE = 9 / 4

_NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)  # flat 3x3 indices around the centre (4)
_cand = torch.zeros(56, 9, dtype=torch.bool)
for _i, _combo in enumerate(itertools.combinations(_NEIGHBOURS, 3)):  # 56 constants, built once
    _cand[_i, [4, *_combo]] = True
#: All 56 centre + 3 neighbour patterns, ``(56, 9)`` bool over the flattened 3x3 kernel.
CANDIDATES: Tensor = _cand


def pattern_mask(weight: Tensor, rate: float, k: int = 8) -> tuple[Tensor, Tensor]:
    """Pattern + connectivity mask of a ``(F, C, 3, 3)`` weight, and the library (indices into CANDIDATES).

    No validation (the registered scheme validates).
    """
    n_kernels = weight.shape[0] * weight.shape[1]
    sq = weight.detach().float().reshape(n_kernels, 9).square()
    cands = CANDIDATES.to(weight.device)
    best = (sq @ cands.float().t()).max(dim=1).indices  # (N,) best-fit candidate (first on ties)
    counts = torch.bincount(best, minlength=cands.shape[0])
    library = torch.argsort(counts, descending=True, stable=True)[:k]
    kept_energy, choice = (sq @ cands[library].float().t()).max(dim=1)  # best library pattern per kernel
    kernel_masks = cands[library[choice]]  # (N, 9)
    if rate > PATTERN_RATE:
        target = max(1, math.floor(weight.numel() / rate + 0.5))
        alive = select_groups(kept_energy, 4, target)
        kernel_masks = kernel_masks & alive[:, None]
    return kernel_masks.reshape(weight.shape), library


def _check(shape: tuple[int, ...], kind: str, params: dict[str, Any]) -> dict[str, Any]:
    if tuple(shape[2:]) != (3, 3):
        raise NotApplicable(f"pattern pruning needs 3x3 kernels, this layer has {shape[2]}x{shape[3]}")
    k = params["k"]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= CANDIDATES.shape[0]:
        raise SchemeError(f"k={k!r}: the library size must be an integer in [1, {CANDIDATES.shape[0]}]")
    return params


@register_scheme("pattern", applies_to={"conv", "depthwise"}, check=_check)
def pattern(weight: Tensor, rate: float, *, k: int = 8) -> Tensor:
    """Each kept 3x3 kernel keeps 4 weights on one of ``k`` library patterns; kernels removed above rate 9/4."""
    return pattern_mask(weight, rate, k)[0]
