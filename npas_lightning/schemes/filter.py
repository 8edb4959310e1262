"""Filter pruning: remove whole output filters (rows of an FC weight) by L2 norm.

It is, literally, block-based row pruning with one block covering the whole weight seen as the
matrix ``(F, C*kh*kw)`` (paper section 3: coarse-grained pruning is the whole-matrix block): a row
segment of that block is a whole filter.
"""

from __future__ import annotations

from torch import Tensor

from npas_lightning.schemes.block_based import block_matrix_mask
from npas_lightning.schemes.registry import register_scheme

__all__ = ["filter_pruning"]


@register_scheme("filter", applies_to={"conv", "depthwise", "pointwise", "fc"})
def filter_pruning(weight: Tensor, rate: float) -> Tensor:
    """Keep the ``round(F / rate)`` filters of largest L2 norm (block-based rows, one whole-matrix block)."""
    matrix = weight.reshape(weight.shape[0], -1)
    whole = tuple(matrix.shape)
    return block_matrix_mask(matrix, rate, whole, prune="rows").reshape(weight.shape)
