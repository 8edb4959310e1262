"""Filter pruning via geometric median (FPGM, He et al. CVPR 2019).

The filters of a layer nearest the geometric median of all its filters are the most replaceable:
their information is shared by the others. The geometric median's neighbourhood is found without
computing the median itself: a filter's score is the sum of its distances to every other filter
of the layer, ``s_i = sum_j ||F_i - F_j||``; the filters with the smallest scores lie nearest the
median and are removed. The kept count is the ``filter`` scheme's (``round(numel / rate)`` weights
in whole filters), so FPGM and magnitude filter pruning reach exactly the same rate.

Example:
    >>> w = torch.randn(16, 8, 3, 3)
    >>> m = fpgm_mask(w, 2.0)
    >>> int(m.flatten(1).all(1).sum()), bool((m.flatten(1).all(1) == m.flatten(1).any(1)).all())
    (8, True)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from npas_lightning.algorithms.masking import planned_modules
from npas_lightning.algorithms.schedules import rate_at_fraction
from npas_lightning.plan import LayerPlan
from npas_lightning.schemes import get_scheme
from npas_lightning.schemes._core import select_groups, target_kept

__all__ = ["DISTANCES", "FPGMError", "check_filter_plan", "fpgm_masks", "fpgm_mask", "median_distances"]

#: Distance between flattened filters: ``"l2"`` (the paper's) or ``"l1"``.
DISTANCES = {"l2": 2.0, "l1": 1.0}


class FPGMError(ValueError):
    """A plan asks FPGM for a scheme other than ``filter``; the message names the layer."""


def check_filter_plan(plan: Mapping[str, LayerPlan]) -> None:
    """Refuse any pruned layer whose scheme is not ``filter`` (FPGM removes whole filters only)."""
    for name, lp in plan.items():
        if lp.pruned and lp.scheme != "filter":
            raise FPGMError(
                f"GeometricMedianPruning prunes whole filters only: layer {name!r} uses scheme {lp.scheme!r} "
                f"(rate {lp.rate:g}); give it scheme 'filter', or prune it with MagnitudePruning, "
                "ADMMPruning or GroupLassoPruning"
            )


def median_distances(weight: Tensor, distance: str = "l2") -> Tensor:
    """``s_i = sum_j ||F_i - F_j||`` for every output filter ``i`` (1-D, ``weight.shape[0]``)."""
    if distance not in DISTANCES:
        raise ValueError(f"distance={distance!r}: accepted values are {sorted(DISTANCES)}")
    flat = weight.detach().float().reshape(weight.shape[0], -1)
    return torch.cdist(flat[None], flat[None], p=DISTANCES[distance])[0].sum(dim=1)


@torch.no_grad()
def fpgm_mask(weight: Tensor, rate: float, *, distance: str = "l2", layer_name: str = "weight") -> Tensor:
    """Filter mask keeping the filters farthest from the geometric median (bool, ``weight``'s shape)."""
    get_scheme("filter").validate(weight.shape, rate, layer_name=layer_name)
    if rate <= 1.0:
        return torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
    scores = median_distances(weight, distance)
    row = weight[0].numel()
    keep = select_groups(scores, row, target_kept(weight.numel(), rate))
    return keep.reshape(-1, *([1] * (weight.dim() - 1))).expand(weight.shape).contiguous()


@torch.no_grad()
def fpgm_masks(
    model: nn.Module, plan: Mapping[str, LayerPlan], rate_scale: float = 1.0, *, distance: str = "l2"
) -> dict[str, Tensor]:
    """FPGM masks for every pruned layer of a filter-only ``plan`` (see :func:`check_filter_plan`).

    Args:
        rate_scale: fraction of the planned sparsity to reach (gradual pruning), in [0, 1].
    """
    check_filter_plan(plan)
    if not 0.0 <= rate_scale <= 1.0:
        raise ValueError(f"rate_scale={rate_scale!r} must lie in [0, 1] (fraction of the planned sparsity)")
    masks: dict[str, Tensor] = {}
    for name, (module, lp) in planned_modules(model, plan).items():
        if not lp.pruned:
            continue
        rate = rate_at_fraction(float(lp.rate), rate_scale)
        if rate <= 1.0:
            continue
        masks[name] = fpgm_mask(module.weight, rate, distance=distance, layer_name=name)
    return masks
