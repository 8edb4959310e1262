"""Physical shrink of filter-pruned layers with Torch-Pruning's dependency graph.

A filter-pruned layer carries all-zero output filters (and, through
:func:`npas_lightning.algorithms.masking.parameter_masks`, a zero bias and zero BatchNorm affine on
those channels), so those channels output exactly zero. :func:`shrink_filter_pruned` removes them:
Torch-Pruning finds every layer coupled to the channels (BatchNorm, consumers' input channels,
depthwise convs, residual adds), and a layer is only cut when every coupled module that *produces*
values on the removed channels holds zeros there, which makes the removal exact. Otherwise the layer
stays dense-and-masked and the report says why (typical on timm families: a depthwise conv or a
Squeeze-Excite after an expansion conv, or a residual add that couples the channel with other
layers).

Example:
    >>> small, report = shrink_filter_pruned(model, plan, torch.randn(1, 3, 32, 32))  # doctest: +SKIP
    >>> report.params_after < report.params_before                                      # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from rich.table import Table
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from npas_lightning.plan import NPASScheme


@dataclass
class ShrinkReport:
    """What :func:`shrink_filter_pruned` did.

    Attributes:
        shrunk: layer -> (output channels before, after).
        kept_masked: layer -> why it was left dense with its mask.
        params_before / params_after: parameter counts of the whole model.
        max_abs_diff: largest |output difference| on the example input, shrunk vs masked model.
    """

    shrunk: dict[str, tuple[int, int]] = field(default_factory=dict)
    kept_masked: dict[str, str] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    max_abs_diff: float = 0.0

    def table(self) -> Table:
        t = Table(title=f"shrink: params {self.params_before:,} -> {self.params_after:,}, max |diff| {self.max_abs_diff:.2e}")
        t.add_column("layer")
        t.add_column("result")
        t.add_column("channels / reason")
        for name, (before, after) in self.shrunk.items():
            t.add_row(name, "shrunk", f"{before} -> {after}")
        for name, why in self.kept_masked.items():
            t.add_row(name, "kept masked", why)
        return t


def _zero_at(t: Tensor | None, idxs: list[int]) -> bool:
    return t is None or not bool(t.detach()[idxs].any())


def _as_plain(idxs) -> list[int]:
    return [int(getattr(i, "idx", i)) for i in idxs]


def shrink_filter_pruned(
    model: nn.Module,
    plan: NPASScheme | Mapping,
    example_input: Tensor,
    *,
    atol: float = 1e-5,
    inplace: bool = False,
) -> tuple[nn.Module, ShrinkReport]:
    """Remove the all-zero output channels of the plan's ``filter`` layers.

    Args:
        model: a masked model (its filter layers carry zero filters).
        plan: the plan (resolved, or the dict form resolved against ``model``).
        example_input: a batch used to trace the dependency graph and check outputs.
        atol: tolerance of the output check reported in ``max_abs_diff``.
        inplace: modify ``model`` instead of a deep copy.

    Returns:
        ``(shrunk model, ShrinkReport)``; the model is in eval mode.
    """
    import torch_pruning as tp

    if not isinstance(plan, NPASScheme):
        plan = NPASScheme.resolve(plan, model)
    model, report, reference, dg = _traced(model, example_input, inplace)
    names = {m: n for n, m in model.named_modules()}
    for name, lp in plan.items():
        if lp.scheme != "filter" or lp.rate <= 1.0 or lp.filter_type == "skip":
            continue
        layer = model.get_submodule(name)
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            report.kept_masked[name] = f"{type(layer).__name__} is not a Conv2d or Linear"
            continue
        dead = (~layer.weight.detach().reshape(layer.weight.shape[0], -1).any(dim=1)).nonzero().flatten().tolist()
        before = layer.weight.shape[0]
        if not dead:
            report.kept_masked[name] = "no all-zero output filter (is the model masked?)"
            continue
        if len(dead) == before:
            report.kept_masked[name] = "every filter is zero; removing the layer's output is not a shrink"
            continue
        if isinstance(layer, nn.Conv2d) and layer.groups > 1:
            report.kept_masked[name] = f"grouped/depthwise conv (groups={layer.groups}): its channels are tied to its input"
            continue
        fn = tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d) else tp.prune_linear_out_channels
        try:
            group = dg.get_pruning_group(layer, fn, idxs=dead)
        except Exception as err:  # Torch-Pruning cannot trace this layer's coupling
            report.kept_masked[name] = f"Torch-Pruning could not build the group: {type(err).__name__}: {err}"
            continue
        reasons = []
        for item in group.items:
            module = item.dep.target.module
            if not isinstance(module, nn.Module) or next(module.parameters(recurse=False), None) is None:
                continue
            why = _blocker_plain(item, dg, layer, names, _as_plain(item.idxs))
            if why:
                reasons.append(why)
        if reasons:
            report.kept_masked[name] = "; ".join(dict.fromkeys(reasons))
            continue
        if not dg.check_pruning_group(group):
            report.kept_masked[name] = "the group would remove every channel of a coupled layer"
            continue
        group.prune()
        report.shrunk[name] = (before, layer.weight.shape[0])
    _checked(model, example_input, report, reference)
    if report.max_abs_diff > atol:
        raise RuntimeError(
            f"shrinking changed the outputs by {report.max_abs_diff:.3g} > atol={atol}; layers shrunk: "
            f"{list(report.shrunk)}. This is a bug: every removed channel was checked to output zero"
        )
    return model, report


def _traced(model: nn.Module, example_input: Tensor, inplace: bool):
    """``(model, report, reference output, dependency graph)`` to shrink: ``model`` in eval mode (a
    deep copy unless ``inplace``), its parameter count in the report, traced by Torch-Pruning."""
    import torch_pruning as tp

    if not isinstance(example_input, Tensor):
        raise TypeError(f"example_input={type(example_input).__name__} must be a torch.Tensor batch")
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    report = ShrinkReport(params_before=sum(p.numel() for p in model.parameters()))
    with torch.no_grad():
        reference = model(example_input)
    return model, report, reference, tp.DependencyGraph().build_dependency(model, example_inputs=example_input)


def _checked(model: nn.Module, example_input: Tensor, report: ShrinkReport, reference: Tensor) -> None:
    """Fill the report's ``max_abs_diff`` (shrunk vs reference outputs) and ``params_after``."""
    with torch.no_grad():
        out = model(example_input)
    report.max_abs_diff = float((out - reference).abs().max()) if out.shape == reference.shape else float("inf")
    report.params_after = sum(p.numel() for p in model.parameters())


def _blocker_plain(item, dg, root: nn.Module, names: Mapping[nn.Module, str], idxs: list[int]) -> str | None:
    """Why removing ``idxs`` of this group item would change outputs (None when it would not)."""
    import torch_pruning as tp

    module = item.dep.target.module
    if module is root:
        return None
    name = names.get(module, type(module).__name__)
    handler = item.dep.handler
    if isinstance(module, nn.Conv2d):
        depthwise = module.groups == module.in_channels == module.out_channels and module.groups > 1
        if module.groups > 1 and not depthwise:
            return f"grouped conv {name} (groups={module.groups}) is coupled"
        if not depthwise and handler == tp.prune_conv_in_channels:
            return None  # a consumer: it reads zeros on those channels
        if _zero_at(module.weight, idxs) and _zero_at(module.bias, idxs):
            return None
        kind = "depthwise conv" if depthwise else "conv"
        return f"coupled {kind} {name} produces non-zero values on these channels"
    if isinstance(module, nn.Linear):
        if handler == tp.prune_linear_in_channels:
            return None
        if _zero_at(module.weight, idxs) and _zero_at(module.bias, idxs):
            return None
        return f"coupled linear {name} produces non-zero values on these channels"
    if isinstance(module, _BatchNorm):
        if _zero_at(module.weight, idxs) and _zero_at(module.bias, idxs):
            return None
        return f"BatchNorm {name} has a non-zero affine on these channels (it outputs a constant, not zero)"
    return f"coupled {type(module).__name__} {name} is not supported"


#: :func:`frozen_for_compile` also removes the channels no layer reads (:func:`shrink_unread_channels`)
SHRINK_UNREAD_CHANNELS = True


def _reads(module: nn.Module, idxs: list[int]) -> Tensor:
    """Per channel of ``idxs``: whether the conv / linear ``module`` has a nonzero weight on that input."""
    w = module.weight.detach()
    w = w.transpose(0, 1).reshape(w.shape[1], -1)  # [in, out * k * k]
    return w[idxs].ne(0).any(dim=1)


def shrink_unread_channels(model: nn.Module, example_input: Tensor, *, granule: int = 1, multiple: int = 8,
                           atol: float = 1e-5,
                           inplace: bool = False) -> tuple[nn.Module, ShrinkReport]:
    """Remove the output channels of convs that no layer reads.

    Torch-Pruning groups a conv's output channels with everything coupled to them: BatchNorms,
    activations, depthwise convs, squeeze-excite gates, residual adds, and the convs and linears that
    take them as input channels (the *readers*). A channel whose every reader holds only zero weights
    on it (block-sparse 1x1 convs at high rates leave most of their input channels unread: a
    projection with two filter blocks keeping 20% of the input groups each reads at most 40%) does
    not change the model's outputs, so the whole chain that computes it is cut: the expansion
    filter, its BatchNorm, the depthwise channel, the gate, the readers' zero columns. A group with a
    coupled layer of another kind (grouped conv, normalisation across channels) is left as it is.

    Args:
        model: a masked model (its pruned weights are zeros).
        example_input: a batch used to trace the dependency graph and check outputs.
        granule: channels are cut in aligned groups of this many, all unread (1: one by one).
        multiple: a producer whose channel count is a multiple of this keeps it one, leaving a few
            unread channels (the compiler's filter tiles are 8 wide: a count they do not divide
            would need its output copied out of padded filter slots).
        atol: largest allowed output change, relative to the outputs' largest magnitude.
        inplace: modify ``model`` instead of a deep copy.

    Returns:
        ``(model, ShrinkReport)``: ``shrunk`` maps each producer conv to its (before, after) output
        channels. Raises ``RuntimeError`` when the outputs changed (a coupling Torch-Pruning did not
        see); callers fall back to the unshrunk model.
    """
    import torch_pruning as tp

    for arg, value, what in (("granule", granule, "channels cut together"),
                             ("multiple", multiple, "channel counts stay multiples of it")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg}={value!r}: expected an int >= 1 ({what})")
    model, report, reference, dg = _traced(model, example_input, inplace)
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, nn.Conv2d) or layer.groups != 1:
            continue
        before = layer.out_channels
        group = dg.get_pruning_group(layer, tp.prune_conv_out_channels, idxs=list(range(before)))
        read, readers = torch.zeros(before, dtype=torch.bool), 0
        for item in group.items:
            module, handler, idxs = item.dep.target.module, item.dep.handler, _as_plain(item.idxs)
            if not isinstance(module, nn.Module) or next(module.parameters(recurse=False), None) is None:
                continue  # activations, adds, multiplies, pooling: channel-wise
            if len(idxs) != before:
                break  # a reshape or concat maps the channels: not followed
            if isinstance(module, (nn.Conv2d, nn.Linear)) and getattr(module, "groups", 1) == 1 and \
                    handler in (tp.prune_conv_in_channels, tp.prune_linear_in_channels):
                read |= _reads(module, idxs)
                readers += 1
            elif isinstance(module, _BatchNorm) or (isinstance(module, nn.Conv2d) and module.groups == module.in_channels
                                                    == module.out_channels) or \
                    handler in (tp.prune_conv_out_channels, tp.prune_linear_out_channels):
                continue  # computes channel c from channel c (or writes it): cut with it
            else:
                break  # a layer mixing channels some other way
        else:
            unread = (~read).reshape(-1).tolist()
            groups = [g for g in range(0, before, granule) if all(unread[g:g + granule])]
            if before % multiple == 0:  # keep the count a multiple of `multiple`: some unread groups stay
                groups = groups[: len(groups) - len(groups) % max(1, multiple // granule)]
            dead = [c for g in groups for c in range(g, min(g + granule, before))]
            if readers and dead and len(dead) < before:
                cut = dg.get_pruning_group(layer, tp.prune_conv_out_channels, idxs=dead)
                if dg.check_pruning_group(cut):
                    cut.prune()
                    report.shrunk[name] = (before, layer.out_channels)
    _checked(model, example_input, report, reference)
    scale = float(reference.abs().max()) or 1.0
    if report.max_abs_diff > atol * scale:
        raise RuntimeError(f"removing unread channels changed the outputs by {report.max_abs_diff:.3g} > "
                           f"{atol} x {scale:.3g}; producers cut: {list(report.shrunk)}")
    return model, report


def _has_unread_inputs(model: nn.Module) -> bool:
    """Whether some plain conv or linear has an input channel with only zero weights (cheap test before
    tracing a dependency graph)."""
    return any(isinstance(m, (nn.Conv2d, nn.Linear)) and getattr(m, "groups", 1) == 1 and m.weight.shape[1] > 1
               and not bool(_reads(m, list(range(m.weight.shape[1]))).all()) for m in model.modules())


def frozen_for_compile(model: nn.Module, plan: NPASScheme, example_input: torch.Tensor) -> tuple[nn.Module, dict]:
    """Eval-mode copy of a pruned model ready for code generation.

    1. the zeros of every layer the plan prunes with ``block_punched``, ``block_based`` or ``pattern``
       are checked against the plan (:func:`npas_lightning.sparse.check_structure` raises
       ``StructureError`` naming a layer that does not match), before anything else;
    2. filter-pruned channels are cut physically (and, with them, the matching input channels of
       the layers they feed);
    3. with sparse-scheme layers (and :data:`SHRINK_UNREAD_CHANNELS`), the channels no layer reads
       are cut (:func:`shrink_unread_channels`; ``info["unread_channels_cut"]``, or
       ``info["unread_channels_error"]`` when the model stays uncut);
    4. those sparse-scheme layers become sparse custom-op modules holding only their nonzero weights
       (:class:`~npas_lightning.sparse.SparseConv2d` / ``SparseLinear``), which the compiler lowers to
       block-sparse kernels.

    Returns ``(model, info)``; ``info`` says how many layers were cut or made sparse, or why the
    dense-masked model is used instead of a shrunk one (the shrink failed): it is measured as it is,
    and said so, never guessed.
    """
    from npas_lightning.algorithms.masking import planned_modules
    from npas_lightning.sparse import SPARSE_SCHEMES, check_structure, make_sparse, sparse_layers

    frozen = copy.deepcopy(model).cpu().eval()
    info: dict = {}
    done = sparse_layers(frozen)  # layers already sparse modules are lowered as they are
    sparse_plan = {n: lp for n, lp in plan.items() if lp.pruned and lp.scheme in SPARSE_SCHEMES and n not in done}
    for qual, (mod, lp) in planned_modules(frozen, sparse_plan).items():
        check_structure(qual, mod.weight.detach(), lp)
    if any(lp.scheme == "filter" and lp.pruned for lp in plan.values()):
        try:
            frozen, report = shrink_filter_pruned(frozen, plan, example_input, inplace=True)
            info.update(shrunk_layers=len(report.shrunk), params_after_shrink=report.params_after)
            if report.kept_masked:
                info["not_shrunk"] = {k: str(v)[:300] for k, v in report.kept_masked.items()}
        except Exception as err:  # noqa: BLE001 - measured as the dense-masked model, and said so
            info["shrink_error"] = f"{type(err).__name__}: {err}"[:300]
    if SHRINK_UNREAD_CHANNELS and sparse_plan and not done and _has_unread_inputs(frozen):
        try:
            frozen, report = shrink_unread_channels(frozen, example_input, inplace=False)
            if report.shrunk:
                info.update(unread_channels_cut={k: list(v) for k, v in report.shrunk.items()})
        except Exception as err:  # noqa: BLE001 - compiled unshrunk, and said so
            info["unread_channels_error"] = f"{type(err).__name__}: {err}"[:300]
    made = planned_modules(frozen, sparse_plan)
    with torch.no_grad():
        for qual, (mod, lp) in made.items():
            make_sparse(frozen, qual, mod.weight != 0, lp.scheme)
    if made:
        info["sparse_layers"] = len(made)
    return frozen, info
