"""Block-based pruning (paper section 3, Fig. 1g) for FC weights and 1x1 convs seen as a matrix.

The matrix ``(R, C)`` (an FC weight, or a 1x1 conv ``(F, C, 1, 1)`` as ``(F, C)``) is cut into blocks
of ``br`` rows x ``bc`` columns. With ``prune="columns"`` (default) a column *segment* (one column
of one block: ``br`` weights) is kept or removed as a whole; with ``prune="rows"`` a row segment
(``bc`` weights). Segments are ranked by their L2 norm divided by ``sqrt(segment size)`` (the plain
L2 norm except for smaller edge segments) and the best are kept until ``round(numel / rate)``.

Because a column segment spans only its block-row, the columns that survive in one block-row are
independent of the other block-rows; the block width ``bc`` is the tile the compiler groups kept
columns into (and ``br`` sets the unit). Rows/columns not divisible by the block form edge blocks.

``balanced=True``: every block-row keeps the same number of column segments (``prune="rows"``:
every block-column keeps the same number of row segments), ``round(C / rate)`` (resp.
``round(R / rate)``) each, chosen by norm inside the band. The compiler's block-sparse matmul pads
rows to the largest count, so balanced rows waste nothing (issue 6).

Identity: filter pruning is block-based row pruning with ONE block covering the whole matrix
``(F, C*kh*kw)`` (see :mod:`npas_lightning.schemes.filter`, which calls :func:`block_matrix_mask`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from npas_lightning.schemes._core import block_cover_check, parse_block, select_groups, target_kept
from npas_lightning.schemes.registry import SchemeError, register_scheme

__all__ = ["PRUNE_MODES", "block_based", "block_matrix_mask"]

PRUNE_MODES = ("columns", "rows")


def block_matrix_mask(
    matrix: Tensor, rate: float, block: tuple[int, int], prune: str = "columns", balanced: bool = False,
) -> Tensor:
    """Block-based mask of a 2-D matrix, no validation (the registered scheme validates).

    Example:
        >>> m = block_matrix_mask(torch.randn(32, 16), 4.0, (8, 4))
        >>> bool((m.view(4, 8, 16).all(1) == m.view(4, 8, 16).any(1)).all())   # whole column segments
        True
    """
    if prune == "rows":  # rows of the matrix are the columns of its transpose
        return block_matrix_mask(matrix.t(), rate, (block[1], block[0]), "columns", balanced).t().contiguous()
    n_rows, n_cols = matrix.shape
    br = block[0]
    nr = -(-n_rows // br)
    sq = F.pad(matrix.detach().float().square(), (0, 0, 0, nr * br - n_rows))
    energy = sq.reshape(nr, br, n_cols).sum(dim=1)  # (nr, n_cols): one value per column segment
    if balanced:
        per_band = min(n_cols, max(1, math.floor(n_cols / rate + 0.5)))
        best = torch.topk(energy, per_band, dim=1, sorted=False).indices
        keep = torch.zeros(nr, n_cols, dtype=torch.bool, device=matrix.device)
        keep.scatter_(1, best, True)
    elif n_rows % br == 0:  # all column segments of br weights
        keep = select_groups(energy.flatten(), br, target_kept(matrix.numel(), rate)).reshape(nr, n_cols)
    else:  # edge band: fewer rows, compare segments by L2 / sqrt(size)
        heights = (n_rows - torch.arange(nr, device=matrix.device) * br).clamp(max=br)  # real rows per band
        sizes = heights[:, None].expand(nr, n_cols)
        keep = select_groups((energy / sizes).flatten(), sizes.flatten(), target_kept(matrix.numel(), rate))
        keep = keep.reshape(nr, n_cols)
    return keep[:, None, :].expand(nr, br, n_cols).reshape(nr * br, n_cols)[:n_rows].contiguous()


def _check(shape: tuple[int, ...], kind: str, params: dict[str, Any]) -> dict[str, Any]:
    block = parse_block(params["block"])
    prune = params["prune"]
    if prune not in PRUNE_MODES:
        raise SchemeError(f"prune={prune!r}: accepted values are {list(PRUNE_MODES)}")
    balanced = params["balanced"]
    if not isinstance(balanced, bool):
        raise SchemeError(f"balanced={balanced!r}: expected True or False")
    block_cover_check((shape[0], shape[1]), block, dims="rows x columns")
    return {"block": block, "prune": prune, "balanced": balanced}


@register_scheme("block_based", applies_to={"fc", "pointwise"}, check=_check)
def block_based(
    weight: Tensor, rate: float, *, block: tuple[int, int] = (16, 4), prune: str = "columns",
    balanced: bool = False,
) -> Tensor:
    """Blocks of ``block=(br, bc)``; whole column (or row) segments removed inside each block by L2 norm."""
    matrix = weight.reshape(weight.shape[0], weight.shape[1])
    return block_matrix_mask(matrix, rate, block, prune, balanced).reshape(weight.shape)
