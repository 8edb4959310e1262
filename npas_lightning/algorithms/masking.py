"""Mask math shared by every pruning algorithm: compute, apply, and measure masks.

Masks are plain ``torch.bool`` tensors of a layer's weight shape, keyed by the layer's qualified
module name (the names of a resolved :class:`~npas_lightning.plan.NPASScheme`). They are applied in
place (``weight *= mask``); there is no ``weight_orig``/``weight_mask`` reparametrisation, so a pruned
model's ``state_dict`` has the same keys as the dense one.

Filter pruning removes whole output channels. So that a removed channel really outputs zero (and
can be cut out physically, see :mod:`npas_lightning.shrink`), a ``filter`` layer's mask also zeroes
the layer's bias and the affine weight and bias of the BatchNorm registered right after it (the
next module with parameters, when it is a BatchNorm over the same channels; timm and torchvision
models all follow that order).

Example:
    >>> masks = compute_masks(model, plan)             # doctest: +SKIP
    >>> apply_masks(model, masks, plan)                # doctest: +SKIP
    >>> sparsity_report(model, plan)["sparsity"]       # doctest: +SKIP
    0.666...
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from npas_lightning.algorithms.schedules import rate_at_fraction
from npas_lightning.plan import LayerPlan, NPASScheme
from npas_lightning.schemes import get_scheme

Masks = dict[str, Tensor]


def planned_modules(model: nn.Module, plan: Mapping[str, LayerPlan]) -> dict[str, tuple[nn.Module, LayerPlan]]:
    """``{weight layer name: (module, LayerPlan)}`` for every layer of ``plan`` that has weights.

    A layer kept as is (``filter_type="keep"``) is its own conv/linear module. A layer whose filter
    type was applied (:func:`npas_lightning.transforms.apply_filter_types`) is replaced by a small
    module; each Conv2d/Linear inside it is planned with the layer's scheme and rate, under its
    real module name (``"<layer>.<sub>"``). ``filter_type="skip"`` layers have no weights.
    """
    out: dict[str, tuple[nn.Module, LayerPlan]] = {}
    for name, lp in plan.items():
        if lp.filter_type == "skip":
            continue
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"layer {name!r} of the plan is not a module of {type(model).__name__}") from None
        if lp.filter_type == "keep":
            subs = [(name, module)] if isinstance(module, (nn.Conv2d, nn.Linear)) else []
        else:
            subs = [
                (f"{name}.{n}" if n else name, m)
                for n, m in module.named_modules()
                if isinstance(m, (nn.Conv2d, nn.Linear))
            ]
        if not subs:
            raise ValueError(
                f"layer {name!r} ({type(module).__name__}, filter_type={lp.filter_type!r}) has no Conv2d/Linear "
                "weight to prune; a plan names conv or linear modules"
            )
        for sub, m in subs:
            out[sub] = (m, lp)
    return out


@torch.no_grad()
def compute_masks(
    model: nn.Module,
    plan: NPASScheme | Mapping[str, LayerPlan],
    rate_scale: float = 1.0,
    *,
    weights: Mapping[str, Tensor] | None = None,
) -> Masks:
    """Magnitude masks for every pruned layer of ``plan``, from the layer's scheme function.

    Args:
        model: the model whose weights are ranked (names are relative to it).
        plan: a resolved plan (layer name -> LayerPlan).
        rate_scale: fraction of each layer's final sparsity to reach, in [0, 1] (gradual pruning);
            1.0 gives the planned rate. See :func:`~npas_lightning.algorithms.schedules.rate_at_fraction`.
        weights: tensors to rank instead of the layers' weights (e.g. ADMM's ``W + U``), by name.

    Returns:
        ``{layer name: bool mask of the weight's shape}`` on the weight's device; layers whose
        effective rate is 1.0 get no mask.
    """
    if not 0.0 <= rate_scale <= 1.0:
        raise ValueError(f"rate_scale={rate_scale!r} must lie in [0, 1] (fraction of the planned sparsity)")
    masks: Masks = {}
    for name, (module, lp) in planned_modules(model, plan).items():
        if not lp.pruned:
            continue
        weight = module.weight
        source = weight if weights is None else weights[name]
        rate = rate_at_fraction(float(lp.rate), rate_scale)
        if rate <= 1.0:
            continue
        mask = get_scheme(lp.scheme)(source.detach(), rate, layer_name=name, **lp.scheme_kwargs())
        masks[name] = mask.to(device=weight.device, dtype=torch.bool)
    return masks


def coupled_batchnorm(model: nn.Module, name: str) -> str | None:
    """Name of the BatchNorm that normalises the output channels of layer ``name``, if any.

    It is the next module with parameters registered after the layer, when that module is a
    BatchNorm over ``out_channels`` features (conv -> bn order of timm and torchvision).
    """
    layer = model.get_submodule(name)
    out_channels = layer.weight.shape[0]
    seen = False
    for other_name, module in model.named_modules():
        if other_name == name:
            seen = True
            continue
        if not seen or other_name.startswith(name + "."):
            continue
        if next(module.parameters(recurse=False), None) is None:
            continue
        if isinstance(module, _BatchNorm) and module.num_features == out_channels and module.affine:
            return other_name
        return None
    return None


def parameter_masks(model: nn.Module, masks: Mapping[str, Tensor], plan: Mapping[str, LayerPlan] | None = None) -> Masks:
    """Masks per parameter (``"<layer>.weight"`` ...), adding the coupled ones of filter layers.

    With ``plan``, each ``filter`` layer's removed output channels are also zeroed in the layer's bias
    and in its BatchNorm's weight and bias (:func:`coupled_batchnorm`), so they output exactly zero.
    """
    out: Masks = {}
    planned = planned_modules(model, plan) if plan is not None else {}
    for name, mask in masks.items():
        out[f"{name}.weight"] = mask
        if name not in planned or planned[name][1].scheme != "filter":
            continue
        channels = mask.reshape(mask.shape[0], -1).any(dim=1)
        if getattr(model.get_submodule(name), "bias", None) is not None:
            out[f"{name}.bias"] = channels
        bn = coupled_batchnorm(model, name)
        if bn is not None:
            out[f"{bn}.weight"] = channels
            out[f"{bn}.bias"] = channels
    return out


class MaskApplier:
    """Applies fixed masks to weights and gradients with one fused ``_foreach_mul_`` each.

    Built once per set of masks (the float copies and the parameter list are cached), so the
    per-step cost is two vectorised multiplications over the pruned parameters.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, Tensor], plan: Mapping[str, LayerPlan] | None = None):
        named = dict(model.named_parameters())
        pmasks = parameter_masks(model, masks, plan)
        missing = [k for k in pmasks if k not in named]
        if missing:
            raise ValueError(f"masks name parameters that {type(model).__name__} does not have: {missing[:5]}")
        self.names = list(pmasks)
        self.params: list[Tensor] = [named[k] for k in self.names]
        self.bool_masks: list[Tensor] = [pmasks[k].to(device=p.device) for k, p in zip(self.names, self.params, strict=True)]
        self.float_masks: list[Tensor] = [
            m.to(dtype=p.dtype) for m, p in zip(self.bool_masks, self.params, strict=True)
        ]
        for k, p, m in zip(self.names, self.params, self.bool_masks, strict=True):
            if p.shape != m.shape:
                raise ValueError(f"mask for {k!r} has shape {tuple(m.shape)}, the parameter {tuple(p.shape)}")

    @torch.no_grad()
    def weights_(self) -> None:
        """``param *= mask`` for every masked parameter, in place."""
        if self.params:
            # detached views share storage; _foreach_mul_ on Parameters themselves is ~50x slower
            torch._foreach_mul_([p.detach() for p in self.params], self.float_masks)

    @torch.no_grad()
    def grads_(self) -> None:
        """``param.grad *= mask`` for every masked parameter that has a gradient."""
        grads, fmasks = [], []
        for p, m in zip(self.params, self.float_masks, strict=True):
            if p.grad is not None:
                grads.append(p.grad)
                fmasks.append(m if p.grad.dtype == m.dtype else m.to(p.grad.dtype))
        if grads:
            torch._foreach_mul_(grads, fmasks)

    @torch.no_grad()
    def optimizer_state_(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        """Zero the optimizer state (momentum, Adam moments) of removed weights.

        Every state tensor of a masked parameter's shape is multiplied by the mask, so a buffer
        filled before a weight was pruned cannot push it away from zero again.
        """
        by_id = {id(p): m for p, m in zip(self.params, self.bool_masks, strict=True)}
        for opt in optimizers:
            for p, state in opt.state.items():
                mask = by_id.get(id(p))
                if mask is None:
                    continue
                for value in state.values():
                    if isinstance(value, Tensor) and value.shape == mask.shape:
                        value.mul_(mask.to(value.dtype))


def apply_masks(model: nn.Module, masks: Mapping[str, Tensor], plan: Mapping[str, LayerPlan] | None = None) -> None:
    """Zero the removed weights in place (``weight *= mask``); with ``plan``, also the coupled
    bias/BatchNorm channels of filter layers (see :func:`parameter_masks`)."""
    MaskApplier(model, masks, plan).weights_()


@torch.no_grad()
def sparsity_report(model: nn.Module, plan: Mapping[str, LayerPlan]) -> dict:
    """Sparsity of the planned layers measured from the real zeros of their weights.

    Returns ``{"sparsity", "rate", "zeros", "numel", "layers": {name: {"sparsity", "rate",
    "zeros", "numel", "target_rate"}}}``; ``rate`` is ``numel / nonzeros`` (``inf`` when all zero),
    overall values cover every planned layer that has a weight (skipped layers are left out).
    """
    layers: dict[str, dict] = {}
    planned = planned_modules(model, plan)
    names = list(planned)
    weights = [planned[n][0].weight.detach() for n in names]
    nonzeros = torch.stack([torch.count_nonzero(w) for w in weights]).tolist() if weights else []
    total = zeros_total = 0
    for name, w, nz in zip(names, weights, nonzeros, strict=True):
        numel = w.numel()
        zeros = numel - int(nz)
        total += numel
        zeros_total += zeros
        layers[name] = {
            "sparsity": zeros / numel,
            "rate": numel / nz if nz else float("inf"),
            "zeros": zeros,
            "numel": numel,
            "target_rate": float(planned[name][1].rate),
        }
    kept = total - zeros_total
    return {
        "sparsity": zeros_total / total if total else 0.0,
        "rate": total / kept if kept else float("inf"),
        "zeros": zeros_total,
        "numel": total,
        "layers": layers,
    }
