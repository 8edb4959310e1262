"""``SparseConv2d`` / ``SparseLinear``: pruned layers holding only their kept weights.

Each module stores the compact weights as the Parameter ``values`` ``[F, K]``, their reduction
indices as the buffer ``index`` ``[F, K]`` (int64, padding ``R``, see :mod:`npas_lightning.sparse.ops`)
and the optional Parameter ``bias``; its forward is the registered custom op, so it trains in
PyTorch (gradients reach ``values``) and exports with ``torch.export`` as an ``npas.*`` call node.

Example:
    >>> conv = nn.Conv2d(8, 16, 3, padding=1)
    >>> with torch.no_grad():
    ...     _ = conv.weight.mul_(torch.rand_like(conv.weight) > 0.7)
    >>> sparse = SparseConv2d.from_dense(conv, scheme="unstructured")
    >>> x = torch.randn(1, 8, 6, 6)
    >>> torch.allclose(sparse(x), conv(x), atol=1e-6), sparse.density < 0.5
    (True, True)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from npas_lightning.schemes import list_schemes
from npas_lightning.sparse import ops  # noqa: F401  (registers torch.ops.npas.*)
from npas_lightning.sparse.ops import compact_from_dense, dense_from_compact

__all__ = ["SparseConv2d", "SparseLinear"]


def _pair(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{what}={value!r}: expected an int or two ints")


def _check_scheme(scheme: Any) -> str:
    if scheme not in list_schemes():
        raise ValueError(f"scheme={scheme!r}: expected one of the registered schemes {list_schemes()}")
    return scheme


def _mask_for(weight: Tensor, mask: Tensor | None, what: str) -> Tensor:
    if mask is None:
        return weight.detach() != 0
    if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(weight.shape):
        shape = list(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask of shape {shape} does not match the {what} weight of shape {list(weight.shape)}")
    return mask.to(device=weight.device).bool()


class _SparseBase(nn.Module):
    """Shared storage: ``values`` (Parameter), ``index`` (buffer), ``bias`` (Parameter or None)."""

    values: nn.Parameter
    index: Tensor

    def __init__(self, values: Tensor, index: Tensor, bias: Tensor | None, reduction: int, scheme: str) -> None:
        super().__init__()
        if values.dim() != 2 or tuple(index.shape) != tuple(values.shape):
            raise ValueError(
                f"values {list(values.shape)} and index {list(index.shape)}: expected two [F, K] tensors of one shape"
            )
        if index.dtype.is_floating_point or index.dtype == torch.bool:
            raise ValueError(f"index dtype {index.dtype}: expected an integer tensor (int64 reduction indices)")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) > reduction):
            raise ValueError(f"index values must lie in [0, {reduction}] (reduction length {reduction}, "
                             f"{reduction} = padding), got [{int(index.min())}, {int(index.max())}]")
        self.scheme = _check_scheme(scheme)
        self._reduction = reduction
        self.values = nn.Parameter(values.detach().clone())
        self.register_buffer("index", index.detach().to(torch.int64).clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @property
    def density(self) -> float:
        """Fraction of the dense weight the structure keeps: ``kept / numel``."""
        kept = int((self.index < self._reduction).sum())
        return kept / (self.values.shape[0] * self._reduction)

    def _dense2d(self) -> Tensor:
        return dense_from_compact(self.values, self.index, self._reduction)

    def _filled(self, layer: nn.Conv2d | nn.Linear):
        """``layer`` (freshly built, same shapes) holding :meth:`dense_weight`, the bias and the
        train/eval mode of this module."""
        with torch.no_grad():
            layer.weight.copy_(self.dense_weight())
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        layer.train(self.training)
        return layer

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        # a checkpoint's compact tensors define the structure: adopt their K (kept count per row)
        for name in ("values", "index"):
            stored = state_dict.get(prefix + name)
            current = getattr(self, name)
            if isinstance(stored, Tensor) and stored.dim() == 2 and stored.shape[0] == current.shape[0] \
                    and stored.shape != current.shape:
                new = torch.empty(stored.shape, dtype=current.dtype, device=current.device)
                if name == "values":
                    self.values = nn.Parameter(new, requires_grad=current.requires_grad)
                else:
                    self.index = new
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class SparseConv2d(_SparseBase):
    """A pruned ``nn.Conv2d`` (dilation 1, zero padding) running ``torch.ops.npas.sparse_conv2d``.

    Args:
        values, index: ``[F, K]`` compact weights and their reduction indices.
        bias: ``[F]`` or None.
        in_channels, kernel_size, stride, padding, groups: as ``nn.Conv2d``.
        scheme: the pruning scheme whose structure the kept weights follow (for the compiler).
    """

    def __init__(
        self, values: Tensor, index: Tensor, bias: Tensor | None, *, in_channels: int,
        kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0, groups: int = 1, scheme: str = "unstructured",
    ) -> None:
        kh, kw = _pair(kernel_size, "kernel_size")
        if in_channels % groups:
            raise ValueError(f"groups={groups!r} does not divide in_channels={in_channels!r}")
        super().__init__(values, index, bias, in_channels // groups * kh * kw, scheme)
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(values.shape[0]), int(groups)
        self.kernel_size = (kh, kw)
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, mask: Tensor | None = None, *, scheme: str = "unstructured") -> SparseConv2d:
        """Keep the weights of ``conv`` where ``mask`` (default: ``weight != 0``) is True.

        Raises:
            ValueError: dilation != 1, string padding (``'same'``/``'valid'``), padding_mode other
                than ``'zeros'``, a mask of the wrong shape, or an unknown scheme.
        """
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"conv: expected a torch.nn.Conv2d, got {type(conv).__name__}")
        if tuple(conv.dilation) != (1, 1):
            raise ValueError(f"dilation={tuple(conv.dilation)}: SparseConv2d supports dilation 1 only")
        if isinstance(conv.padding, str):
            raise ValueError(
                f"padding={conv.padding!r}: SparseConv2d needs explicit integer padding, e.g. padding=(1, 1)"
            )
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode={conv.padding_mode!r}: SparseConv2d supports padding_mode='zeros' only")
        weight = conv.weight.detach()
        mask = _mask_for(weight, mask, "conv")
        values, index = compact_from_dense(weight.reshape(weight.shape[0], -1), mask.reshape(weight.shape[0], -1))
        module = cls(
            values, index, None if conv.bias is None else conv.bias.detach(), in_channels=conv.in_channels,
            kernel_size=tuple(conv.kernel_size), stride=tuple(conv.stride), padding=tuple(conv.padding),
            groups=conv.groups, scheme=scheme,
        )
        module.values.requires_grad_(conv.weight.requires_grad)
        module.train(conv.training)
        return module

    def dense_weight(self) -> Tensor:
        """``[F, C / groups, kh, kw]`` weight with zeros where pruned (differentiable in ``values``)."""
        return self._dense2d().reshape(self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def to_dense(self) -> nn.Conv2d:
        """An equivalent ``nn.Conv2d`` (same device and dtype) holding :meth:`dense_weight`."""
        return self._filled(nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
            groups=self.groups, bias=self.bias is not None, device=self.values.device, dtype=self.values.dtype,
        ))

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.npas.sparse_conv2d(
            x, self.values, self.index, self.bias, self.in_channels, list(self.kernel_size),
            list(self.stride), list(self.padding), self.groups,
        )

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, bias={self.bias is not None}, "
                f"scheme={self.scheme!r}, density={self.density:.3f}")


class SparseLinear(_SparseBase):
    """A pruned ``nn.Linear`` running ``torch.ops.npas.sparse_linear``.

    Args:
        values, index: ``[F, K]`` compact weights and their input-feature indices.
        bias: ``[F]`` or None.
        in_features: as ``nn.Linear``.
        scheme: the pruning scheme whose structure the kept weights follow.
    """

    def __init__(
        self, values: Tensor, index: Tensor, bias: Tensor | None, *, in_features: int, scheme: str = "unstructured",
    ) -> None:
        super().__init__(values, index, bias, int(in_features), scheme)
        self.in_features, self.out_features = int(in_features), int(values.shape[0])

    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: Tensor | None = None, *, scheme: str = "unstructured") -> SparseLinear:
        """Keep the weights of ``linear`` where ``mask`` (default: ``weight != 0``) is True."""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"linear: expected a torch.nn.Linear, got {type(linear).__name__}")
        weight = linear.weight.detach()
        values, index = compact_from_dense(weight, _mask_for(weight, mask, "linear"))
        module = cls(values, index, None if linear.bias is None else linear.bias.detach(),
                     in_features=linear.in_features, scheme=scheme)
        module.values.requires_grad_(linear.weight.requires_grad)
        module.train(linear.training)
        return module

    def dense_weight(self) -> Tensor:
        """``[out_features, in_features]`` weight with zeros where pruned (differentiable in ``values``)."""
        return self._dense2d()

    def to_dense(self) -> nn.Linear:
        """An equivalent ``nn.Linear`` (same device and dtype) holding :meth:`dense_weight`."""
        return self._filled(nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                                      device=self.values.device, dtype=self.values.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.npas.sparse_linear(x, self.values, self.index, self.bias, self.in_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"scheme={self.scheme!r}, density={self.density:.3f}")
