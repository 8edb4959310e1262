"""Swap a pruned model's layers for :mod:`~npas_lightning.sparse.modules` (and back).

:func:`sparsify` replaces every pruned layer whose scheme has a sparse kernel (:data:`SPARSE_SCHEMES`)
by a ``SparseConv2d``/``SparseLinear`` holding only the weights of its structural mask; ``filter``
layers (physically shrunk by :mod:`npas_lightning.shrink`) and ``unstructured`` layers (dense with
zeros) stay plain modules. Every layer is checked first, so a model whose zeros do not match the
plan is refused before anything changes.

Example:
    >>> masks = compute_masks(model, plan); apply_masks(model, masks, plan)   # doctest: +SKIP
    >>> sparse = sparsify(model, plan)            # a copy; model untouched     # doctest: +SKIP
    >>> list(sparse_layers(sparse))[:2]                                        # doctest: +SKIP
    ['blocks.1.0.conv_pw', 'blocks.1.0.conv_dw']
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from npas_lightning.algorithms.masking import planned_modules
from npas_lightning.plan import NPASScheme
from npas_lightning.sparse.modules import SparseConv2d, SparseLinear
from npas_lightning.sparse.structure import check_structure

__all__ = ["SPARSE_SCHEMES", "densify", "sparse_layers", "sparsify"]

#: Schemes lowered to sparse kernels; ``filter`` and ``unstructured`` layers stay dense modules.
SPARSE_SCHEMES: tuple[str, ...] = ("block_punched", "block_based", "pattern")


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def sparsify(model: nn.Module, plan: NPASScheme | Mapping[str, Any], *, inplace: bool = False) -> nn.Module:
    """Replace the pruned block_punched / block_based / pattern layers of ``model`` by sparse modules.

    Args:
        model: a pruned model (weights already multiplied by their masks).
        plan: an ``NPASScheme`` or its glob dict, resolved with ``NPASScheme.resolve(plan, model)``.
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        The model with ``SparseConv2d``/``SparseLinear`` layers (built from each layer's structural
        mask, so zeros inside a kept group stay as stored zeros).

    Raises:
        StructureError: a layer's zeros do not give its planned rate in its scheme's structure;
            raised before any layer is replaced.
        PlanError: the plan does not resolve against ``model``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    resolved = NPASScheme.resolve(plan, model)
    targets = {
        name: (module, lp) for name, (module, lp) in planned_modules(model, resolved).items()
        if lp.pruned and lp.scheme in SPARSE_SCHEMES
    }
    masks = {name: check_structure(name, module.weight, lp) for name, (module, lp) in targets.items()}
    if not inplace:
        model = copy.deepcopy(model)
    for name, (_, lp) in targets.items():
        make_sparse(model, name, masks[name], lp.scheme)
    return model


def make_sparse(model: nn.Module, name: str, mask: Tensor, scheme: str) -> nn.Module:
    """Replace the Conv2d/Linear ``name`` of ``model`` in place by its sparse module keeping ``mask``."""
    module = model.get_submodule(name)
    cls = SparseLinear if isinstance(module, nn.Linear) else SparseConv2d
    new = cls.from_dense(module, mask, scheme=scheme)
    _replace(model, name, new)
    return new


def densify(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Replace every ``SparseConv2d``/``SparseLinear`` by the equivalent ``nn.Conv2d``/``nn.Linear``."""
    if not inplace:
        model = copy.deepcopy(model)
    for name, module in sparse_layers(model).items():
        if name:
            _replace(model, name, module.to_dense())
        else:
            return module.to_dense()
    return model


def sparse_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{qualified name: module}`` of every ``SparseConv2d``/``SparseLinear`` in ``model``, in order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (SparseConv2d, SparseLinear))}
