"""Sparse conv / linear as registered custom ops (``torch.ops.npas.*``) over compact weights.

A pruned layer keeps, per output filter (row of the weight seen as ``[F, R]`` with
``R = (in_channels // groups) * kh * kw``, or ``R = in_features``), only its kept weights:

* ``values``: ``[F, K]`` float, the kept weights of each row, in increasing reduction index;
* ``index``: ``[F, K]`` int64, their reduction indices ``r = (c * kh + i) * kw + j`` (linear: ``r`` is
  the input feature). ``K`` is the largest kept count of any row; shorter rows are padded with
  ``r = R`` and their values are ignored (they never reach the dense weight and get zero gradient).

The ops' PyTorch implementation rebuilds the dense pruned weight and calls ``F.conv2d`` /
``F.linear``, so a sparse model trains and evaluates in plain PyTorch; ``torch.export`` keeps them as
``npas.sparse_conv2d.default`` / ``npas.sparse_linear.default`` call nodes, which the compiler lowers
to its block-sparse kernels (``from_exported_program(..., custom_convert_map=...)``).

Example:
    >>> w = torch.randn(4, 6) * (torch.rand(4, 6) > 0.5)
    >>> values, index = compact_from_dense(w, w != 0)
    >>> torch.equal(dense_from_compact(values, index, 6), w)
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["compact_from_dense", "dense_from_compact", "sparse_conv2d", "sparse_linear"]


def dense_from_compact(values: Tensor, index: Tensor, reduction: int) -> Tensor:
    """Dense ``[F, reduction]`` weight from compact ``values``/``index`` (padding index ``reduction`` dropped).

    Differentiable in ``values`` (a scatter into ``reduction + 1`` columns, the last one dropped).
    """
    out = values.new_zeros(values.shape[0], reduction + 1)
    return out.scatter(1, index, values)[:, :reduction]


def compact_from_dense(weight2d: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(values, index)`` of the entries of ``weight2d`` ``[F, R]`` where ``mask`` is True (vectorised).

    Rows keep their entries in increasing index order; rows with fewer than ``K`` (the largest kept
    count, at least 1) entries are padded with index ``R`` and value 0.

    Raises:
        ValueError: ``weight2d`` not 2-D, or ``mask`` not of its shape.
    """
    if weight2d.dim() != 2:
        raise ValueError(f"weight2d of shape {list(weight2d.shape)}: expected a 2-D [F, R] matrix")
    if tuple(mask.shape) != tuple(weight2d.shape):
        raise ValueError(f"mask of shape {list(mask.shape)} does not match weight2d of shape {list(weight2d.shape)}")
    n_rows, reduction = weight2d.shape
    mask = mask.to(device=weight2d.device, dtype=torch.bool)
    k = max(1, int(mask.sum(dim=1).max())) if n_rows else 1
    cols = torch.arange(reduction, device=weight2d.device).expand(n_rows, reduction)
    keyed = torch.where(mask, cols, torch.full_like(cols, reduction))  # kept: own index, removed: R
    index = torch.sort(keyed, dim=1).values[:, :k]
    if index.shape[1] < k:  # reduction < 1 cannot happen for a real layer; keep shapes consistent anyway
        index = F.pad(index, (0, k - index.shape[1]), value=reduction)
    padded = F.pad(weight2d.detach(), (0, 1))  # column R is the zero the padding reads
    values = padded.gather(1, index)
    return values.contiguous(), index.to(torch.int64).contiguous()


def _compact_grad(grad_dense: Tensor, index: Tensor) -> Tensor:
    """Gradient of the compact values from the dense weight's gradient (padding entries get 0)."""
    return F.pad(grad_dense, (0, 1)).gather(1, index)


# --------------------------------------------------------------------------------------------- conv
def _conv_weight(values: Tensor, index: Tensor, in_channels: int, kernel_size: list[int], groups: int) -> Tensor:
    kh, kw = kernel_size
    per_group = in_channels // groups
    dense = dense_from_compact(values, index, per_group * kh * kw)
    return dense.reshape(values.shape[0], per_group, kh, kw)


@torch.library.custom_op("npas::sparse_conv2d", mutates_args=())
def sparse_conv2d(
    x: Tensor, values: Tensor, index: Tensor, bias: Tensor | None, in_channels: int,
    kernel_size: list[int], stride: list[int], padding: list[int], groups: int,
) -> Tensor:
    """``F.conv2d(x, W, bias, stride, padding, groups=groups)`` with ``W`` rebuilt from ``values``/``index``."""
    weight = _conv_weight(values, index, in_channels, kernel_size, groups)
    return F.conv2d(x, weight, bias, stride, padding, 1, groups).contiguous()


@sparse_conv2d.register_fake
def _(x, values, index, bias, in_channels, kernel_size, stride, padding, groups):
    h, w = x.shape[-2], x.shape[-1]
    ho = (h + 2 * padding[0] - kernel_size[0]) // stride[0] + 1
    wo = (w + 2 * padding[1] - kernel_size[1]) // stride[1] + 1
    return x.new_empty((*x.shape[:-3], values.shape[0], ho, wo))


def _conv_setup(ctx, inputs, output):
    x, values, index, bias, in_channels, kernel_size, stride, padding, groups = inputs
    ctx.save_for_backward(x, values, index)
    ctx.conf = (in_channels, list(kernel_size), list(stride), list(padding), groups, bias is not None)


def _conv_backward(ctx, grad):
    x, values, index = ctx.saved_tensors
    in_channels, kernel_size, stride, padding, groups, has_bias = ctx.conf
    weight = _conv_weight(values, index, in_channels, kernel_size, groups)
    unbatched = x.dim() == 3
    xb, gb = (x.unsqueeze(0), grad.unsqueeze(0)) if unbatched else (x, grad)
    need_x, need_v, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[3]
    gx, gw, gbias = torch.ops.aten.convolution_backward(
        gb.contiguous(), xb, weight, [weight.shape[0]] if has_bias else None, stride, padding, [1, 1],
        False, [0, 0], groups, [need_x, need_v, need_b and has_bias],
    )
    if unbatched and gx is not None:
        gx = gx.squeeze(0)
    gv = _compact_grad(gw.reshape(weight.shape[0], -1), index) if need_v else None
    return gx if need_x else None, gv, None, gbias if (need_b and has_bias) else None, None, None, None, None, None


sparse_conv2d.register_autograd(_conv_backward, setup_context=_conv_setup)


# ------------------------------------------------------------------------------------------- linear
@torch.library.custom_op("npas::sparse_linear", mutates_args=())
def sparse_linear(x: Tensor, values: Tensor, index: Tensor, bias: Tensor | None, in_features: int) -> Tensor:
    """``F.linear(x, W, bias)`` with ``W`` ``[F, in_features]`` rebuilt from ``values``/``index``."""
    return F.linear(x, dense_from_compact(values, index, in_features), bias).contiguous()


@sparse_linear.register_fake
def _(x, values, index, bias, in_features):
    return x.new_empty((*x.shape[:-1], values.shape[0]))


def _linear_setup(ctx, inputs, output):
    x, values, index, bias, in_features = inputs
    ctx.save_for_backward(x, values, index)
    ctx.conf = (in_features, bias is not None)


def _linear_backward(ctx, grad):
    x, values, index = ctx.saved_tensors
    in_features, has_bias = ctx.conf
    need_x, need_v, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[3]
    gx = gv = gbias = None
    if need_x:
        gx = grad @ dense_from_compact(values, index, in_features)
    if need_v:
        g2 = grad.reshape(-1, grad.shape[-1])
        gv = _compact_grad(g2.t() @ x.reshape(-1, in_features), index)
    if need_b and has_bias:
        gbias = grad.reshape(-1, grad.shape[-1]).sum(0)
    return gx, gv, None, gbias, None


sparse_linear.register_autograd(_linear_backward, setup_context=_linear_setup)
