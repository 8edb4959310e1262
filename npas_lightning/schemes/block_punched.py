"""Block-punched pruning (paper section 3, Fig. 1f) for convs of any kernel size.

The weight ``(F, C, kh, kw)`` is cut into blocks of ``bf`` filters x ``bc`` input channels. Inside a
block, a kernel position ``(i, j)`` is kept or removed for all ``bf x bc`` weights together. The
groups (block, position) of the whole layer are ranked by the L2 norm of their weights divided by
``sqrt(group size)`` (the plain L2 norm for full blocks; the normalisation only keeps the smaller
edge blocks comparable), and the best are kept until ``round(numel / rate)`` weights are reached.

Edge blocks (``F`` or ``C`` not a multiple of the block) are handled by zero-padding the tensor to
whole blocks and counting only the real weights of each group.

Depthwise convs (weight ``(C, 1, kh, kw)``): there is one input channel per filter, so the block
runs over filters only: ``bc`` is taken as 1 and a kernel position is kept or removed for ``bf``
consecutive channels together.

``balanced=True``: every filter block (band of ``bf`` filters) keeps the same number of (channel
block, position) groups, ``round(groups_per_band / rate)`` each (half up, at least one), chosen by
energy inside the band (divided by the group size when ``C`` leaves an edge channel block). The
compiler's block-sparse conv pads bands to the largest count, so balanced bands waste nothing
(issue 6).

Identity: unstructured pruning is block-punched pruning with a 1x1 block (see
:mod:`npas_lightning.schemes.unstructured`, which calls :func:`block_punched_mask` with ``(1, 1)``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from npas_lightning.schemes._core import block_cover_check, parse_block, select_groups, target_kept
from npas_lightning.schemes.registry import SchemeError, register_scheme

__all__ = ["block_punched", "block_punched_mask"]


def block_punched_mask(weight: Tensor, rate: float, block: tuple[int, int], balanced: bool = False) -> Tensor:
    """Block-punched mask of a 4-D weight, no validation (the registered scheme validates).

    With ``balanced=True`` every band of ``bf`` filters keeps the same number of groups.

    Example:
        >>> m = block_punched_mask(torch.randn(16, 8, 3, 3), 3.0, (8, 4))
        >>> m.view(2, 8, 2, 4, 3, 3).all(dim=(1, 3)).eq(m.view(2, 8, 2, 4, 3, 3).any(dim=(1, 3))).all()
        tensor(True)
    """
    n_filters, n_channels, kh, kw = weight.shape
    bf, bc = block
    nf, nc = -(-n_filters // bf), -(-n_channels // bc)
    sq = weight.detach().float().square()
    sq = F.pad(sq, (0, 0, 0, 0, 0, nc * bc - n_channels, 0, nf * bf - n_filters))
    energy = sq.reshape(nf, bf, nc, bc, kh, kw).sum(dim=(1, 3))  # (nf, nc, kh, kw)
    target = target_kept(weight.numel(), rate)
    if balanced:
        if n_channels % bc:  # edge channel block: compare groups by L2 / sqrt(size)
            cols = (n_channels - torch.arange(nc, device=weight.device) * bc).clamp(max=bc)
            energy = energy / cols[None, :, None, None]
        per_band = nc * kh * kw
        n_keep = min(per_band, max(1, math.floor(per_band / rate + 0.5)))
        best = torch.topk(energy.reshape(nf, per_band), n_keep, dim=1, sorted=False).indices
        keep = torch.zeros(nf, per_band, dtype=torch.bool, device=weight.device).scatter_(1, best, True)
    elif n_filters % bf == 0 and n_channels % bc == 0:  # all groups of bf * bc weights
        keep = select_groups(energy.flatten(), bf * bc, target)
    else:  # edge blocks: fewer real weights, compare groups by L2 / sqrt(size)
        rows = (n_filters - torch.arange(nf, device=weight.device) * bf).clamp(max=bf)
        cols = (n_channels - torch.arange(nc, device=weight.device) * bc).clamp(max=bc)
        sizes = (rows[:, None] * cols[None, :])[:, :, None, None].expand(nf, nc, kh, kw)
        keep = select_groups((energy / sizes).flatten(), sizes.flatten(), target)
    keep = keep.reshape(nf, 1, nc, 1, kh, kw).expand(nf, bf, nc, bc, kh, kw)
    return keep.reshape(nf * bf, nc * bc, kh, kw)[:n_filters, :n_channels].contiguous()


def _check(shape: tuple[int, ...], kind: str, params: dict[str, Any]) -> dict[str, Any]:
    bf, bc = parse_block(params["block"])
    if kind == "depthwise":
        bc = 1  # one input channel per filter: blocks run over filters only
    balanced = params["balanced"]
    if not isinstance(balanced, bool):
        raise SchemeError(f"balanced={balanced!r}: expected True or False")
    block_cover_check((shape[0], shape[1]), (bf, bc), dims="filters x input channels")
    return {**params, "block": (bf, bc), "balanced": balanced}


@register_scheme("block_punched", applies_to={"conv", "depthwise", "pointwise"}, check=_check)
def block_punched(
    weight: Tensor, rate: float, *, block: tuple[int, int] = (8, 4), balanced: bool = False,
) -> Tensor:
    """Blocks of ``block=(bf, bc)`` filters x channels; a kernel position is kept for the whole block or removed.

    ``balanced=True``: every band of ``bf`` filters keeps the same number of (block, position) groups.
    """
    return block_punched_mask(weight, rate, block, balanced)
