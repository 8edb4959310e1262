"""Read a layer's pruned structure from its actual zeros and check it against its ``LayerPlan``.

:func:`structural_mask` is the smallest mask with the plan's structure that covers a given mask (the
union over the scheme's groups); :func:`check_structure` applies it to ``weight != 0`` and refuses a
layer whose zeros do not give the planned rate in that structure (e.g. an unpruned layer, or one
pruned unstructured while the plan says block-punched): the compiler would otherwise build a sparse
kernel that is no faster than the dense one.

Example:
    >>> import torch
    >>> from npas_lightning.plan import LayerPlan
    >>> from npas_lightning.schemes import get_scheme
    >>> lp = LayerPlan(scheme="block_punched", rate=4, block=(8, 4))
    >>> w = torch.randn(16, 8, 3, 3)
    >>> w = w * get_scheme("block_punched")(w, 4, block=(8, 4))
    >>> bool(check_structure("conv", w, lp).eq(w != 0).all())
    True
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from npas_lightning.plan import LayerPlan

__all__ = ["StructureError", "check_structure", "structural_mask"]


class StructureError(ValueError):
    """A layer's zeros do not have the structure (or rate) its plan asks for; names the layer."""


def _block(lp: LayerPlan) -> tuple[int, int]:
    structure = lp.structure() or {}
    block = structure.get("block") or lp.block
    if block is None:
        raise StructureError(f"scheme {lp.scheme!r} has no block; structural_mask needs block_punched/block_based")
    return int(block[0]), int(block[1])


def _block_punched(mask: Tensor, block: tuple[int, int]) -> Tensor:
    if mask.dim() != 4:
        raise StructureError(f"block_punched needs a 4-D conv weight, got shape {list(mask.shape)}")
    n_filters, n_channels, kh, kw = mask.shape
    bf, bc = block
    if n_channels == 1:  # depthwise [C, 1, kh, kw]: blocks run over filters only
        bc = 1
    nf, nc = -(-n_filters // bf), -(-n_channels // bc)
    padded = F.pad(mask, (0, 0, 0, 0, 0, nc * bc - n_channels, 0, nf * bf - n_filters))
    groups = padded.reshape(nf, bf, nc, bc, kh, kw).any(dim=3).any(dim=1)  # (nf, nc, kh, kw)
    full = groups[:, None, :, None].expand(nf, bf, nc, bc, kh, kw).reshape(nf * bf, nc * bc, kh, kw)
    return full[:n_filters, :n_channels]


def _column_segments(matrix: Tensor, br: int) -> Tensor:
    n_rows, n_cols = matrix.shape
    nr = -(-n_rows // br)
    padded = F.pad(matrix, (0, 0, 0, nr * br - n_rows))
    segments = padded.reshape(nr, br, n_cols).any(dim=1)
    return segments[:, None, :].expand(nr, br, n_cols).reshape(nr * br, n_cols)[:n_rows]


def _block_based(mask: Tensor, block: tuple[int, int], prune: str) -> Tensor:
    if mask.dim() == 4 and tuple(mask.shape[2:]) != (1, 1):
        raise StructureError(f"block_based needs an FC or 1x1 conv weight, got shape {list(mask.shape)}")
    matrix = mask.reshape(mask.shape[0], mask.shape[1])
    if prune == "rows":
        out = _column_segments(matrix.t(), block[1]).t()
    else:
        out = _column_segments(matrix, block[0])
    return out.reshape(mask.shape)


def structural_mask(mask: Tensor, lp: LayerPlan) -> Tensor:
    """The smallest mask with ``lp``'s structure that covers ``mask`` (bool, ``mask``'s shape).

    * ``block_punched``: a (block, kernel position) group is kept when any of its weights is
      (depthwise ``[C, 1, kh, kw]``: ``bc = 1``; edge blocks padded);
    * ``block_based``: a column segment of ``br`` rows (``prune="rows"``: a row segment of ``bc``
      columns) is kept when any of its weights is; a 1x1 conv is seen as ``[F, C]``;
    * ``filter``: a whole filter (row) is kept when any of its weights is;
    * ``pattern``, ``unstructured``: the mask itself (per-weight structure).

    ``lp.block=None`` means the scheme's default block.
    """
    mask = mask.bool()
    if lp.scheme == "block_punched":
        out = _block_punched(mask, _block(lp))
    elif lp.scheme == "block_based":
        out = _block_based(mask, _block(lp), (lp.structure() or {}).get("params", {}).get("prune", "columns"))
    elif lp.scheme == "filter":
        rows = mask.reshape(mask.shape[0], -1).any(dim=1)
        out = rows.reshape(-1, *([1] * (mask.dim() - 1))).expand(mask.shape)
    elif lp.scheme in ("pattern", "unstructured"):
        out = mask
    else:
        raise StructureError(f"scheme {lp.scheme!r} has no structural reading; known: block_punched, block_based, "
                             "filter, pattern, unstructured")
    return out.contiguous()


def _describe(lp: LayerPlan) -> str:
    if lp.scheme not in ("block_punched", "block_based"):
        return lp.scheme
    params = (lp.structure() or {}).get("params", {})
    extra = " rows" if params.get("prune") == "rows" else ""
    return f"{lp.scheme} {_block(lp)}{extra}"


def _group_size(weight: Tensor, lp: LayerPlan) -> int:
    if lp.scheme == "block_punched":
        bf, bc = _block(lp)
        return bf * (1 if weight.shape[1] == 1 else bc)
    if lp.scheme == "block_based":
        br, bc = _block(lp)
        return bc if (lp.structure() or {}).get("params", {}).get("prune") == "rows" else br
    if lp.scheme == "filter":
        return weight[0].numel()
    return 4 if lp.scheme == "pattern" else 1


def _slack_groups(weight: Tensor, lp: LayerPlan) -> int:
    """Groups of rounding slack: one for the layer, or one per band when every band keeps a rounded
    count of its own (``balanced=True``: e.g. 2 of 16 columns per band is 8x, not the planned 10x)."""
    params = (lp.structure() or {}).get("params", {})
    if lp.scheme not in ("block_punched", "block_based") or not params.get("balanced"):
        return 1
    a, b = _block(lp)
    if lp.scheme == "block_based" and params.get("prune") == "rows":
        return -(-weight.shape[1] // b)
    return -(-weight.shape[0] // a)


def _fmt_rate(rate: float) -> str:
    return "inf" if rate == float("inf") else (f"{rate:.1f}" if round(rate, 1) == round(rate, 2) else f"{rate:.2f}")


def check_structure(name: str, weight: Tensor, lp: LayerPlan, *, tolerance: float = 0.1) -> Tensor:
    """Structural mask of ``weight``'s actual zeros; refuse a layer that does not match its plan.

    Passes when ``numel / structural kept >= lp.rate * (1 - tolerance)``, with one group of the
    structure as slack for rounding (one per band for ``balanced`` plans, which round per band). Pattern layers must also be 3x3 with at most 4 weights per
    kernel.

    Raises:
        StructureError: naming the layer, the scheme (and block), the planned rate and the rate
            the zeros give in that structure.
        ValueError: ``tolerance`` outside ``[0, 1)``.
    """
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance={tolerance!r}: expected a fraction in [0, 1)")
    if weight.dim() not in (2, 4):
        raise StructureError(f"layer {name!r}: weight of shape {list(weight.shape)} is neither Linear nor Conv2d")
    mask = weight.detach() != 0
    if lp.scheme == "pattern":
        if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
            raise StructureError(f"layer {name!r}: the plan says pattern, which needs 3x3 kernels; "
                                 f"its weight has shape {list(weight.shape)}")
        per_kernel = mask.reshape(-1, 9).sum(dim=1)
        bad = int((per_kernel > 4).sum())
        if bad:
            raise StructureError(
                f"layer {name!r}: the plan says pattern (at most 4 weights per 3x3 kernel) but {bad} of "
                f"{per_kernel.numel()} kernels keep more (up to {int(per_kernel.max())}); prune it with the plan "
                "(MagnitudePruning/ADMM/...) before compiling"
            )
    structural = structural_mask(mask, lp)
    kept = int(structural.sum())
    numel = weight.numel()
    allowed = numel / (lp.rate * (1.0 - tolerance)) + _slack_groups(weight, lp) * _group_size(weight, lp)
    if kept > allowed:
        shown = numel / kept
        raise StructureError(
            f"layer {name!r}: the plan says {_describe(lp)} at {_fmt_rate(lp.rate)}x but its zeros give "
            f"{_fmt_rate(shown)}x in that structure; prune it with the plan (MagnitudePruning/ADMM/...) before compiling"
        )
    return structural
