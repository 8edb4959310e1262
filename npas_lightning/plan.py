"""Per-layer pruning plans as data: :class:`LayerPlan` and :class:`NPASScheme`.

An :class:`NPASScheme` is an ordered, immutable map ``layer name -> LayerPlan``: the object the search
proposes, the pruning callbacks apply, the compiler lowers and the checkpoint stores. Users write a
plan as a dict whose keys are glob patterns over module names (first match wins) and resolve it
against a model:

Example::

    >>> import timm
    >>> model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=10)
    >>> plan = NPASScheme.resolve({
    ...     "blocks.*.conv_pw": {"scheme": "block_based", "rate": 5, "block": [16, 4]},
    ...     "*": {"scheme": "block_punched", "rate": 3},
    ... }, model)
    >>> plan["blocks.1.0.conv_pw"].scheme, plan["blocks.1.0.conv_dw"].scheme
    ('block_based', 'block_punched')
    >>> "conv_stem" in plan, "classifier" in plan      # excluded by default
    (False, False)

Resolution rules:

* candidates are the model's ``nn.Conv2d`` and ``nn.Linear`` modules, in registration order;
* exclusions apply first: ``exclude=None`` means :func:`default_exclusions` (the first conv and the
  classifier: timm ``pretrained_cfg["first_conv"/"classifier"]`` when present, else the first Conv2d
  and the last Linear); pass a list of glob patterns to replace them (``[]`` excludes nothing);
* each layer gets the plan of the first pattern that matches it (``fnmatch``: ``*`` also matches
  dots, so ``blocks.*.conv_pw`` matches ``blocks.1.0.conv_pw``); a value ``None`` claims the layer
  but leaves it unpruned;
* a pattern that matches no layer, only excluded layers, or only layers claimed by earlier patterns
  is an error (a typo or a Hydra override appended after ``"*"`` would otherwise do nothing);
* every layer's scheme is validated against the layer (kind, kernel, block) and its filter type
  against :func:`npas_lightning.transforms.candidates.allowed_filter_types`; for a replaced layer
  (filter type other than ``keep``) the scheme must fit every weight of the replacement.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from npas_lightning.schemes import SchemeError, get_scheme, weight_kind
from npas_lightning.schemes._core import parse_block
from npas_lightning.schemes.registry import check_rate

__all__ = ["FILTER_TYPES", "LayerPlan", "NPASScheme", "PlanError", "default_exclusions", "prunable_layers"]

#: Filter types of paper Table 1 plus ``keep`` (same tuple as ``npas_lightning.transforms.FILTER_TYPES``).
FILTER_TYPES: tuple[str, ...] = ("keep", "1x1", "3x3", "3x3dw_1x1", "1x1_3x3dw_1x1", "skip")
_FIELDS = ("filter_type", "scheme", "rate", "block", "params")


class PlanError(ValueError):
    """A plan is malformed or does not fit the model; the message names the layer/pattern and the fix."""


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python (lazy import: OmegaConf is optional here)."""
    if type(value).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    return value


@dataclass(frozen=True, repr=False)
class LayerPlan:
    """What happens to one layer: filter type, pruning scheme, rate, block and scheme extras.

    Args:
        filter_type: one of :data:`FILTER_TYPES` (``keep`` leaves the layer's architecture alone).
        scheme: a registered scheme name (:func:`npas_lightning.schemes.list_schemes`).
        rate: pruning rate >= 1 (``1.0`` = not pruned).
        block: ``(a, b)`` for ``block_punched``/``block_based`` (``None`` = the scheme's default).
        params: scheme extras, e.g. ``{"k": 8}`` (pattern), ``{"prune": "rows", "balanced": True}``.

    Raises:
        PlanError: unknown filter type/scheme, bad rate or block, a block or param the scheme does
            not take, or ``skip`` with a rate other than 1.
    """

    filter_type: str = "keep"
    scheme: str = "unstructured"
    rate: float = 1.0
    block: tuple[int, int] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.filter_type not in FILTER_TYPES:
            raise PlanError(f"filter_type={self.filter_type!r}: accepted values are {list(FILTER_TYPES)}")
        try:
            scheme = get_scheme(self.scheme)
            rate = check_rate(self.rate, layer_name="<plan>", scheme=self.scheme)
            block = None if self.block is None else parse_block(_plain(self.block))
        except SchemeError as e:
            raise PlanError(str(e)) from None
        if block is not None and "block" not in scheme.defaults:
            raise PlanError(
                f"block={list(block)} given for scheme {self.scheme!r}, which takes no block; "
                "blocks apply to 'block_punched' and 'block_based'"
            )
        params = _plain(self.params)
        if not isinstance(params, Mapping):
            raise PlanError(f"params={params!r}: expected a mapping of scheme parameters")
        params = dict(params)
        accepted = sorted(set(scheme.defaults) - {"block"})
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            hint = " (give the block as LayerPlan.block)" if "block" in unknown else ""
            raise PlanError(
                f"params {unknown} are not parameters of scheme {self.scheme!r}{hint}; accepted: {accepted or 'none'}"
            )
        if self.filter_type == "skip" and rate != 1.0:
            raise PlanError(f"filter_type='skip' removes the layer, so rate must be 1, got {self.rate!r}")
        object.__setattr__(self, "rate", rate)
        object.__setattr__(self, "block", block)
        object.__setattr__(self, "params", types.MappingProxyType(dict(sorted(params.items()))))

    def __hash__(self) -> int:
        return hash(_canonical(self.to_dict()))

    def __repr__(self) -> str:
        return (f"LayerPlan(filter_type={self.filter_type!r}, scheme={self.scheme!r}, rate={self.rate!r}, "
                f"block={self.block!r}, params={dict(self.params)!r})")

    def __reduce__(self):  # mappingproxy does not pickle (Ray, checkpoints): rebuild from the fields
        return (_layer_plan, (self.to_dict(),))

    @property
    def pruned(self) -> bool:
        """True when the layer loses weights (rate > 1 and the layer still exists)."""
        return self.rate > 1.0 and self.filter_type != "skip"

    def scheme_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the scheme call: ``get_scheme(p.scheme)(w, p.rate, **p.scheme_kwargs())``."""
        kwargs = dict(self.params)
        if self.block is not None:
            kwargs["block"] = self.block
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of the fields (block as a list)."""
        return {
            "filter_type": self.filter_type, "scheme": self.scheme, "rate": self.rate,
            "block": None if self.block is None else list(self.block), "params": dict(self.params),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | LayerPlan, *, where: str = "layer plan") -> LayerPlan:
        """Build from a dict of fields (unknown keys are an error naming ``where``)."""
        if isinstance(d, LayerPlan):
            return d
        d = _plain(d)
        if not isinstance(d, Mapping):
            raise PlanError(f"{where}: expected a mapping of LayerPlan fields {list(_FIELDS)}, got {d!r}")
        unknown = sorted(set(d) - set(_FIELDS))
        if unknown:
            raise PlanError(f"{where}: unknown field(s) {unknown}; accepted: {list(_FIELDS)}")
        try:
            return cls(**d)
        except PlanError as e:
            raise PlanError(f"{where}: {e}") from None

    def structure(self) -> dict[str, Any] | None:
        """What determines the pruned structure; ``None`` for a no-op (keep, rate 1)."""
        if self.rate == 1.0:
            return None if self.filter_type == "keep" else {"filter_type": self.filter_type}
        d = self.to_dict()
        if d["block"] is None and "block" in get_scheme(self.scheme).defaults:
            d["block"] = list(get_scheme(self.scheme).defaults["block"])
        d["params"] = {**{k: v for k, v in get_scheme(self.scheme).defaults.items() if k != "block"},
                       **d["params"]}
        return d


def _layer_plan(fields: dict[str, Any]) -> LayerPlan:
    return LayerPlan(**fields)


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` of every ``nn.Conv2d`` and ``nn.Linear`` in registration order.

    A layer already replaced by its filter-type candidate (a module with a ``filter_type``
    attribute, see :func:`npas_lightning.transforms.apply_filter_types`) counts as one layer under
    its original name, so a plan resolves the same before and after its filter types are applied.
    """
    layers: dict[str, nn.Module] = {}
    applied: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(prefix + ".") for prefix in applied):
            continue
        if isinstance(getattr(module, "filter_type", None), str):
            applied.append(name)
            layers[name] = module
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            layers[name] = module
    return layers


def _candidate_weights(name: str, filter_type: str, candidate: nn.Module) -> list[tuple[str, Tensor, str]]:
    return [
        (f"{name}[{filter_type}].{n}", m.weight, "fc" if isinstance(m, nn.Linear) else weight_kind(m.weight, groups=m.groups))
        for n, m in candidate.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]


def default_exclusions(model: nn.Module) -> list[str]:
    """The first conv and the classifier of ``model`` (names, usable as glob patterns).

    timm's ``pretrained_cfg["first_conv"]``/``["classifier"]`` when they name a Conv2d/Linear of the
    model, else the first ``nn.Conv2d`` / the last ``nn.Linear``.
    """
    layers = prunable_layers(model)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    out: list[str] = []
    for key, fallback in (
        ("first_conv", next((n for n, m in layers.items() if isinstance(m, nn.Conv2d)), None)),
        ("classifier", next((n for n, m in reversed(layers.items()) if isinstance(m, nn.Linear)), None)),
    ):
        named = cfg.get(key)
        names = [named] if isinstance(named, str) else list(named or [])
        hits = [n for n in names if n in layers]
        out += hits if hits else ([fallback] if fallback else [])
    return list(dict.fromkeys(out))


def _layer_kind(module: nn.Module) -> str:
    from npas_lightning.layers import layer_kind

    return layer_kind(module)


def _validate_layer(name: str, module: nn.Module, lp: LayerPlan) -> None:
    """Check ``lp`` against the real module; raise PlanError naming the layer."""
    from npas_lightning.transforms.candidates import FilterTypeError, allowed_filter_types, build_candidate

    applied = getattr(module, "filter_type", None)
    if isinstance(applied, str):  # the candidate is already in the model
        if lp.filter_type != applied:
            raise PlanError(
                f"layer {name!r} already has filter type {applied!r} applied; the plan asks for "
                f"{lp.filter_type!r} (apply plans to the original model)"
            )
        weights = [] if lp.rate == 1.0 else _candidate_weights(name, applied, module)
        _validate_weights(lp, weights)
        return
    allowed = allowed_filter_types(module)
    if lp.filter_type not in allowed:
        raise PlanError(
            f"layer {name!r} ({_layer_kind(module)}): filter_type={lp.filter_type!r} is not offered; "
            f"filter types this layer accepts: {allowed}"
        )
    if lp.rate == 1.0:
        weights: list[tuple[str, Tensor, str]] = []
    elif lp.filter_type == "keep":
        weights = [(name, module.weight, _layer_kind(module))]
    else:
        try:
            cand = build_candidate(lp.filter_type, module, layer_name=name)
        except FilterTypeError as e:
            raise PlanError(str(e)) from None
        weights = _candidate_weights(name, lp.filter_type, cand)
    _validate_weights(lp, weights)


def _validate_weights(lp: LayerPlan, weights: list[tuple[str, Tensor, str]]) -> None:
    scheme = get_scheme(lp.scheme)
    for wname, w, kind in weights:
        try:
            scheme.validate(w.shape, lp.rate, layer_name=wname, kind=kind, **lp.scheme_kwargs())
        except SchemeError as e:
            raise PlanError(str(e)) from None


class NPASScheme(Mapping[str, LayerPlan]):
    """Ordered, immutable map ``layer name -> LayerPlan`` (resolved module names only).

    Build it with :meth:`resolve` (glob dict + model), :meth:`from_dict`/:meth:`from_json`/:meth:`load`
    (saved plans), or directly ``NPASScheme({"blocks.0.0.conv_dw": LayerPlan(...)})``.
    """

    def __init__(self, layers: Mapping[str, LayerPlan | Mapping[str, Any]] | Iterable[tuple[str, Any]] = ()):
        items = layers.items() if isinstance(layers, Mapping) else layers
        data: dict[str, LayerPlan] = {}
        for name, value in items:
            if not isinstance(name, str) or not name:
                raise PlanError(f"layer name {name!r}: expected a non-empty module name (str)")
            if name in data:
                raise PlanError(f"layer {name!r} appears twice in the plan")
            data[name] = LayerPlan.from_dict(value, where=f"layer {name!r}")
        self._layers = data

    # ---------------------------------------------------------------------------- Mapping protocol
    def __getitem__(self, name: str) -> LayerPlan:
        return self._layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def __repr__(self) -> str:
        return f"NPASScheme({len(self)} layers, hash={self.structural_hash()[:12]})"

    # ---------------------------------------------------------------------------- resolution
    @classmethod
    def resolve(
        cls, plan: NPASScheme | Mapping[str, Any], model: nn.Module, *, exclude: Sequence[str] | None = None,
    ) -> NPASScheme:
        """Resolve a glob-pattern plan (or validate an ``NPASScheme``) against ``model``.

        Args:
            plan: ``{glob pattern: LayerPlan fields | LayerPlan | None}`` (a Hydra ``DictConfig`` is
                fine), or an already resolved ``NPASScheme`` (validated, exclusions not applied).
            model: the model whose ``nn.Conv2d``/``nn.Linear`` module names are matched.
            exclude: glob patterns of layers never planned; ``None`` = :func:`default_exclusions`.

        Raises:
            PlanError: malformed plan, a pattern matching nothing usable, a layer name that is not a
                Conv2d/Linear of the model, or a scheme/filter type that does not fit its layer.
        """
        if not isinstance(model, nn.Module):
            raise PlanError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        layers = prunable_layers(model)
        if isinstance(plan, NPASScheme):
            missing = [n for n in plan if n not in layers]
            if missing:
                raise PlanError(
                    f"plan names {missing[:5]} which are not Conv2d/Linear layers of {type(model).__name__} "
                    f"(its layers look like {list(layers)[:4]})"
                )
            for name, lp in plan.items():
                _validate_layer(name, layers[name], lp)
            return plan
        plan = _plain(plan)
        if not isinstance(plan, Mapping):
            raise PlanError(
                f"plan must be an NPASScheme or a mapping {{glob pattern: LayerPlan fields}}, got {type(plan).__name__}"
            )
        if not plan:
            raise PlanError("plan is empty: give at least one {glob pattern: LayerPlan fields} entry")
        patterns: list[tuple[str, LayerPlan | None]] = []
        for pattern, value in plan.items():
            if not isinstance(pattern, str) or not pattern:
                raise PlanError(f"plan key {pattern!r}: expected a glob pattern over module names (str)")
            lp = None if value is None else LayerPlan.from_dict(value, where=f"plan[{pattern!r}]")
            patterns.append((pattern, lp))
        if exclude is None:
            exclude = default_exclusions(model)
        elif isinstance(exclude, str) or not all(isinstance(e, str) for e in _plain(exclude)):
            raise PlanError(f"exclude={exclude!r}: expected a list of glob patterns (use [] to exclude nothing)")
        exclude = list(_plain(exclude))

        claimed: dict[str, int] = {}  # layer -> index of the pattern that claimed it
        excluded = {n for n in layers if any(fnmatch.fnmatchcase(n, e) for e in exclude)}
        for name in layers:
            if name in excluded:
                continue
            for i, (pattern, _) in enumerate(patterns):
                if fnmatch.fnmatchcase(name, pattern):
                    claimed[name] = i
                    break
        for i, (pattern, _) in enumerate(patterns):
            if i in claimed.values():
                continue
            matches = [n for n in layers if fnmatch.fnmatchcase(n, pattern)]
            if not matches:
                raise PlanError(
                    f"plan pattern {pattern!r} matches no Conv2d/Linear layer of {type(model).__name__}; "
                    f"its layer names look like {list(layers)[:4]} ('*' matches dots too)"
                )
            usable = [n for n in matches if n not in excluded]
            if not usable:
                raise PlanError(
                    f"plan pattern {pattern!r} matches only excluded layers {matches[:5]} (exclude={exclude}); "
                    "pass a narrower exclude (e.g. exclude=[]) to plan them"
                )
            by = sorted({patterns[claimed[n]][0] for n in usable})
            raise PlanError(
                f"plan pattern {pattern!r} is shadowed: every layer it matches ({usable[:5]}) was already "
                f"claimed by earlier pattern(s) {by} (first match wins); move it before them"
            )
        resolved: dict[str, LayerPlan] = {}
        for name, i in claimed.items():
            pattern, lp = patterns[i]
            if lp is None:
                continue
            try:
                _validate_layer(name, layers[name], lp)
            except PlanError as e:
                raise PlanError(f"plan pattern {pattern!r}: {e}") from None
            resolved[name] = lp
        if not resolved:
            raise PlanError(f"plan matches no layer of {type(model).__name__} to prune (every match was None)")
        return cls(resolved)

    # ---------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{layer name: LayerPlan fields}`` in plan order (JSON-able)."""
        return {name: lp.to_dict() for name, lp in self._layers.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NPASScheme:
        """Inverse of :meth:`to_dict` (exact layer names, not patterns)."""
        d = _plain(d)
        if not isinstance(d, Mapping):
            raise PlanError(f"NPASScheme.from_dict: expected a mapping layer name -> fields, got {type(d).__name__}")
        return cls(d)

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> NPASScheme:
        """Inverse of :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanError(f"NPASScheme.from_json: not valid JSON ({e})") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON to ``path`` (parent directories created); return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> NPASScheme:
        """Read a plan written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise PlanError(f"NPASScheme.load: plan file {str(path)!r} does not exist")
        return cls.from_json(path.read_text())

    def structural_hash(self) -> str:
        """sha256 hex of the plan's structure, stable across processes and Python versions.

        Depends on structure only: layer order, ``5`` vs ``5.0``, a block/param equal to the scheme's
        default, and no-op entries (``keep`` at rate 1) do not change it.
        """
        structure = {name: s for name, lp in self._layers.items() if (s := lp.structure()) is not None}
        return hashlib.sha256(_canonical(structure).encode()).hexdigest()

    # ---------------------------------------------------------------------------- report
    def table(self, model: nn.Module, example_input: Tensor, *, title: str | None = "Pruning plan"):
        """Rich table: layer, kind, shape, filter type, scheme, rate, kept weights, MACs before/after.

        Every searchable layer of ``model`` (from :func:`npas_lightning.layers.enumerate_layers`) is a
        row. Kept weights and MACs after come from the real masks of the current weights for
        ``keep`` layers and for the convs of candidates already applied to ``model``; for layers still
        to be replaced, from the candidate's cost (weights / rate, marked ``~``).
        """
        from rich.table import Table

        from npas_lightning.layers import enumerate_layers

        infos = enumerate_layers(model, example_input)
        modules = prunable_layers(model)
        table = Table(title=title)
        for col, justify in (("layer", "left"), ("kind", "left"), ("shape", "left"), ("filter type", "left"),
                             ("scheme", "left"), ("rate", "right"), ("kept weights", "right"),
                             ("MACs before", "right"), ("MACs after", "right")):
            table.add_column(col, justify=justify)
        tot = {"numel": 0, "kept": 0.0, "before": 0, "after": 0.0}
        for li in infos:
            # a conv inside an applied filter-type candidate belongs to the candidate's plan entry
            owner = li.name if li.name in modules else next((n for n in modules if li.name.startswith(n + ".")), None)
            applied = owner is not None and owner != li.name
            weight = model.get_submodule(li.name).weight
            numel = weight.numel()
            lp = self._layers.get(owner) if owner is not None else None
            kept, after, approx = float(numel), float(li.macs), ""
            if lp is not None and lp.filter_type != "keep" and not applied:
                from npas_lightning.transforms.candidates import candidate_cost

                macs, params = candidate_cost(lp.filter_type, li)
                kept, after, approx = params / lp.rate, macs / lp.rate, "~"
            elif lp is not None and lp.rate > 1.0:
                mask = get_scheme(lp.scheme)(weight, lp.rate, layer_name=li.name, kind=li.kind, **lp.scheme_kwargs())
                kept = float(mask.sum())
                after = li.macs * kept / numel
            tot["numel"] += numel
            tot["kept"] += kept
            tot["before"] += li.macs
            tot["after"] += after
            if lp is None:
                scheme, rate, ftype = "-", "1", "keep"
            else:
                ftype = lp.filter_type
                scheme = lp.scheme + (f" {lp.block[0]}x{lp.block[1]}" if lp.block else "")
                rate = f"{lp.rate:g}" if approx or lp.rate == 1.0 else f"{lp.rate:g} ({numel / max(kept, 1):.2f})"
            table.add_row(
                li.name, li.kind, "x".join(str(s) for s in weight.shape), ftype, scheme, rate,
                f"{approx}{_fmt(kept)}/{_fmt(numel)}", _fmt(li.macs), f"{approx}{_fmt(after)}",
            )
        table.add_section()
        overall = tot["numel"] / tot["kept"] if tot["kept"] else math.inf
        table.add_row(f"total ({len(infos)} layers, {len(self)} planned)", "", "", "", "", f"{overall:.2f}",
                      f"{_fmt(tot['kept'])}/{_fmt(tot['numel'])}", _fmt(tot["before"]), _fmt(tot["after"]))
        return table


def _fmt(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"
