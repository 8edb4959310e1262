"""Sparse layers: pruned convs/linears holding only their kept weights, as ``torch.ops.npas.*`` custom ops.

* :mod:`~npas_lightning.sparse.ops`: ``torch.ops.npas.sparse_conv2d`` / ``sparse_linear`` (plain
  PyTorch implementation, fake kernels for ``torch.export``, autograd to ``x``, ``values``, ``bias``)
  and the compact <-> dense helpers;
* :mod:`~npas_lightning.sparse.modules`: ``SparseConv2d`` / ``SparseLinear``;
* :mod:`~npas_lightning.sparse.structure`: ``structural_mask`` / ``check_structure`` (zeros vs plan);
* :mod:`~npas_lightning.sparse.convert`: ``sparsify`` / ``densify`` / ``make_sparse`` / ``sparse_layers``.
"""

from npas_lightning.sparse.convert import SPARSE_SCHEMES, densify, make_sparse, sparse_layers, sparsify
from npas_lightning.sparse.modules import SparseConv2d, SparseLinear
from npas_lightning.sparse.ops import compact_from_dense, dense_from_compact, sparse_conv2d, sparse_linear
from npas_lightning.sparse.structure import StructureError, check_structure, structural_mask

__all__ = [
    "SPARSE_SCHEMES",
    "SparseConv2d",
    "SparseLinear",
    "StructureError",
    "check_structure",
    "compact_from_dense",
    "dense_from_compact",
    "densify",
    "make_sparse",
    "sparse_conv2d",
    "sparse_layers",
    "sparse_linear",
    "sparsify",
    "structural_mask",
]
