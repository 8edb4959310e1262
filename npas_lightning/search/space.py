"""The NPAS Phase-2 search space (paper Table 1), built from the real layer enumeration.

Each searched layer gets a tuple of valid :class:`Choice` (filter type, scheme, rate, block). A
trajectory is one choice index per layer; :meth:`SearchSpace.to_plan` turns it into an
:class:`~npas_lightning.plan.NPASScheme`.

Validity rules (an invalid combination is never generated):

* filter types come from ``npas_lightning.transforms.candidate_filter_types(layer)`` (never a larger
  kernel), intersected with the configured ``filter_types``;
* a scheme must fit every weight the layer has AFTER the filter-type choice: the real candidate
  module is built with ``npas_lightning.transforms.build_candidate`` and the registered scheme's
  shape-only ``validate(shape, rate, kind=..., block=...)`` must accept each of its Conv2d/Linear
  weights (kind from ``layers.layer_kind``); any ``SchemeError`` removes the choice (a kind the
  scheme does not apply to, ``pattern`` on a non-3x3 kernel, a bad block ...);
* rate 1 means "not pruned": one choice per filter type (scheme ``unstructured``, no block);
* ``skip`` has no weights: rate 1 only.

Example::

    >>> space = SearchSpace.from_model(model, torch.randn(1, 3, 32, 32), SpaceConfig())
    >>> traj = tuple(0 for _ in range(len(space)))
    >>> plan = space.to_plan(traj)
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from npas_lightning.layers import LayerInfo, enumerate_layers

__all__ = [
    "DEFAULT_RATES",
    "TABLE1_FILTER_TYPES",
    "TABLE1_SCHEMES",
    "Choice",
    "LayerSpace",
    "SearchSpace",
    "SpaceConfig",
    "SpaceError",
]

DEFAULT_RATES: tuple[float, ...] = (1.0, 2.0, 2.5, 3.0, 5.0, 7.0, 10.0)
TABLE1_FILTER_TYPES: tuple[str, ...] = ("keep", "1x1", "3x3", "3x3dw_1x1", "1x1_3x3dw_1x1", "skip")
TABLE1_SCHEMES: tuple[str, ...] = ("filter", "pattern", "block_punched", "block_based")
_BLOCK_SCHEMES = ("block_punched", "block_based")


class SpaceError(ValueError):
    """A search-space configuration or trajectory is invalid."""


class Choice(NamedTuple):
    """One per-layer option: the state component of Q-learning and the node label of the WL graph."""

    filter_type: str
    scheme: str
    rate: float
    block: tuple[int, int] | None = None

    def label(self) -> str:
        """Stable text label (used by the WL kernel and in tables)."""
        blk = f"{self.block[0]}x{self.block[1]}" if self.block else "-"
        return f"{self.filter_type}|{self.scheme}|{self.rate:g}|{blk}"


@dataclass
class SpaceConfig:
    """What the search may choose (``configs/search/default.yaml`` -> ``search.space``).

    Args:
        rates: pruning rates (1 = unpruned); each must be >= 1.
        filter_types: allowed filter types (subset of Table 1 plus ``keep``).
        schemes: allowed pruning schemes for rates > 1.
        blocks: per block scheme, the block sizes to try, e.g. ``{"block_punched": [[8, 4]]}``.
        include: glob patterns of layer names to search (default: all).
        exclude: glob patterns to leave out; ``None`` = the first conv and the classifier
            (timm ``pretrained_cfg`` when present, else the first Conv2d and the last Linear).
    """

    rates: Sequence[float] = DEFAULT_RATES
    filter_types: Sequence[str] = TABLE1_FILTER_TYPES
    schemes: Sequence[str] = TABLE1_SCHEMES
    blocks: dict[str, Sequence[Sequence[int]]] = field(
        default_factory=lambda: {"block_punched": [[8, 4]], "block_based": [[16, 4]]}
    )
    include: Sequence[str] = ("*",)
    exclude: Sequence[str] | None = None

    def __post_init__(self) -> None:
        self.rates = tuple(float(r) for r in self.rates)
        if not self.rates or any(r < 1.0 for r in self.rates):
            raise SpaceError(f"search.space.rates={list(self.rates)}: need a non-empty list of rates >= 1")
        bad = [f for f in self.filter_types if f not in TABLE1_FILTER_TYPES]
        if bad:
            raise SpaceError(
                f"search.space.filter_types has unknown value(s) {bad}; accepted: {list(TABLE1_FILTER_TYPES)}"
            )
        self.filter_types = tuple(self.filter_types)
        self.schemes = tuple(self.schemes)
        self.include = tuple(self.include)
        self.exclude = None if self.exclude is None else tuple(self.exclude)
        blocks: dict[str, tuple[tuple[int, int], ...]] = {}
        for name, sizes in dict(self.blocks or {}).items():
            tup = []
            for b in sizes:
                if len(b) != 2 or int(b[0]) < 1 or int(b[1]) < 1:
                    raise SpaceError(f"search.space.blocks.{name}: block {list(b)} must be two positive ints")
                tup.append((int(b[0]), int(b[1])))
            blocks[name] = tuple(tup)
        self.blocks = blocks


@dataclass(frozen=True)
class LayerSpace:
    """The valid choices of one searched layer."""

    name: str
    kind: str
    choices: tuple[Choice, ...]


def _weights_after(filter_type: str, module: nn.Module) -> list[tuple[tuple[int, ...], str]]:
    """(shape, kind) of each weight a layer has after ``filter_type`` (real candidate from transforms)."""
    from npas_lightning.layers import layer_kind

    if filter_type == "skip":
        return []
    if filter_type == "keep":
        return [(tuple(module.weight.shape), layer_kind(module))]
    from npas_lightning.transforms.candidates import build_candidate

    cand = build_candidate(filter_type, module)
    return [(tuple(m.weight.shape), layer_kind(m)) for m in cand.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _scheme_fits(scheme: str, weights: list[tuple[tuple[int, ...], str]], rate: float, block, *,
                 layer_name: str) -> bool:
    """Whether the registered ``scheme`` accepts every weight (shape-only validation, no tensor work)."""
    from npas_lightning.schemes import SchemeError, get_scheme

    if not weights:
        return False
    fn = get_scheme(scheme)
    params = {"block": block} if block is not None else {}
    for shape, kind in weights:
        try:
            fn.validate(shape, rate, layer_name=layer_name, kind=kind, **params)
        except SchemeError:
            return False
    return True


class SearchSpace:
    """Per-layer valid choices plus the data-flow edges between searched layers.

    Args:
        layers: one :class:`LayerSpace` per searched layer, in execution order.
        edges: directed (i, j) pairs over layer indices (data flows from layer i to layer j).
        edge_method: how ``edges`` were derived (``"fx"`` or ``"chain"``), recorded in the fingerprint.
    """

    def __init__(self, layers: Sequence[LayerSpace], edges: Sequence[tuple[int, int]] | None = None,
                 edge_method: str = "chain") -> None:
        if not layers:
            raise SpaceError("SearchSpace: no layer to search (check search.space.include/exclude)")
        for ls in layers:
            if not ls.choices:
                raise SpaceError(f"SearchSpace: layer {ls.name!r} has no valid choice")
        self.layers = tuple(layers)
        n = len(self.layers)
        if edges is None:
            edges = [(i, i + 1) for i in range(n - 1)]
            edge_method = "chain"
        for i, j in edges:
            if not (0 <= i < n and 0 <= j < n):
                raise SpaceError(f"SearchSpace: edge ({i}, {j}) out of range for {n} layers")
        self.edges = tuple(sorted({(int(i), int(j)) for i, j in edges}))
        self.edge_method = edge_method
        self._index = [{c: k for k, c in enumerate(ls.choices)} for ls in self.layers]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model: nn.Module, example_input: torch.Tensor, config: SpaceConfig | None = None,
                   *, layers: Sequence[LayerInfo] | None = None,
                   candidate_filter_types: Callable[[LayerInfo], list[str]] | None = None) -> SearchSpace:
        """Build the space of ``model`` (a timm model) from a real forward pass and Table 1."""
        from npas_lightning.search.graph import layer_edges

        config = config or SpaceConfig()
        if candidate_filter_types is None:
            from npas_lightning.transforms.candidates import candidate_filter_types
        layers = list(layers) if layers is not None else enumerate_layers(model, example_input)
        from npas_lightning.plan import default_exclusions

        exclude = config.exclude if config.exclude is not None else tuple(default_exclusions(model))
        modules = dict(model.named_modules())
        searched = [
            li for li in layers
            if any(fnmatch.fnmatchcase(li.name, p) for p in config.include)
            and not any(fnmatch.fnmatchcase(li.name, p) for p in exclude)
        ]
        if not searched:
            raise SpaceError(
                f"SearchSpace.from_model: include={list(config.include)} exclude={list(exclude)} "
                f"left no layer out of {len(layers)}"
            )
        spaces = [cls._layer_space(li, modules[li.name], config, candidate_filter_types) for li in searched]
        edges, method = layer_edges(model, [li.name for li in searched])
        return cls(spaces, edges, method)

    @staticmethod
    def _layer_space(li: LayerInfo, module: nn.Module, config: SpaceConfig, cand_fn) -> LayerSpace:
        choices: list[Choice] = []
        fts = [f for f in cand_fn(li) if f in config.filter_types]
        for ft in fts:
            if 1.0 in config.rates:
                choices.append(Choice(ft, "unstructured", 1.0, None))
            if ft == "skip":
                continue
            weights = _weights_after(ft, module)
            for scheme in config.schemes:
                blocks = (config.blocks.get(scheme) or (None,)) if scheme in _BLOCK_SCHEMES else (None,)
                for block in blocks:
                    for rate in config.rates:
                        if rate == 1.0:
                            continue
                        if _scheme_fits(scheme, weights, rate, block, layer_name=li.name):
                            choices.append(Choice(ft, scheme, rate, block))
        if not choices:
            raise SpaceError(
                f"SearchSpace: layer {li.name!r} ({li.kind}) has no valid choice with "
                f"filter_types={list(config.filter_types)} schemes={list(config.schemes)} rates={list(config.rates)}"
            )
        return LayerSpace(li.name, li.kind, tuple(choices))

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.layers)

    @property
    def names(self) -> list[str]:
        return [ls.name for ls in self.layers]

    @property
    def sizes(self) -> list[int]:
        return [len(ls.choices) for ls in self.layers]

    def size_log10(self) -> float:
        """log10 of the number of distinct trajectories."""
        import math

        return sum(math.log10(n) for n in self.sizes)

    def choice(self, depth: int, index: int) -> Choice:
        return self.layers[depth].choices[index]

    def index_of(self, depth: int, choice: Choice) -> int:
        return self._index[depth][choice]

    def validate(self, trajectory: Sequence[int]) -> tuple[int, ...]:
        """Check a trajectory (one choice index per layer) and return it as a tuple of ints."""
        traj = tuple(int(t) for t in trajectory)
        if len(traj) != len(self.layers):
            raise SpaceError(f"trajectory has {len(traj)} entries, the space has {len(self.layers)} layers")
        for d, t in enumerate(traj):
            if not 0 <= t < len(self.layers[d].choices):
                raise SpaceError(
                    f"trajectory[{d}]={t} out of range for layer {self.layers[d].name!r} "
                    f"(0..{len(self.layers[d].choices) - 1})"
                )
        return traj

    def choices_of(self, trajectory: Sequence[int]) -> list[Choice]:
        traj = self.validate(trajectory)
        return [ls.choices[t] for ls, t in zip(self.layers, traj, strict=True)]

    def to_plan_dict(self, trajectory: Sequence[int]) -> dict[str, dict[str, Any]]:
        """Plain dict ``{layer name: LayerPlan fields}`` of a trajectory."""
        out = {}
        for ls, c in zip(self.layers, self.choices_of(trajectory), strict=True):
            out[ls.name] = {"filter_type": c.filter_type, "scheme": c.scheme, "rate": float(c.rate),
                            "block": None if c.block is None else tuple(c.block)}
        return out

    def to_plan(self, trajectory: Sequence[int]):
        """The :class:`~npas_lightning.plan.NPASScheme` of a trajectory (layer name -> LayerPlan)."""
        from npas_lightning.plan import LayerPlan, NPASScheme

        return NPASScheme({name: LayerPlan(**fields) for name, fields in self.to_plan_dict(trajectory).items()})

    def trajectory_of(self, plan) -> tuple[int, ...]:
        """Inverse of :meth:`to_plan`: the trajectory of a plan (NPASScheme or its dict form) of this space."""
        out = []
        for d, ls in enumerate(self.layers):
            if ls.name not in plan:
                raise SpaceError(f"plan has no entry for searched layer {ls.name!r}")
            lp = plan[ls.name]
            get = lp.get if isinstance(lp, dict) else lambda k, _lp=lp: getattr(_lp, k)
            block = get("block")
            c = Choice(get("filter_type"), get("scheme"), float(get("rate")), None if block is None else tuple(block))
            if c not in self._index[d]:
                raise SpaceError(f"layer {ls.name!r}: {c} is not a choice of this space")
            out.append(self._index[d][c])
        return tuple(out)

    @classmethod
    def from_description(cls, d: dict[str, Any]) -> SearchSpace:
        """Rebuild a space from :meth:`describe` output (same fingerprint)."""
        layers = [LayerSpace(ls["name"], ls["kind"], tuple(
            Choice(c[0], c[1], float(c[2]), None if c[3] is None else tuple(c[3])) for c in ls["choices"]))
            for ls in d["layers"]]
        return cls(layers, [tuple(e) for e in d["edges"]], d["edge_method"])

    def random_trajectory(self, rng) -> tuple[int, ...]:
        """A uniformly random trajectory drawn with numpy Generator ``rng``."""
        return tuple(int(rng.integers(n)) for n in self.sizes)

    def describe(self) -> dict[str, Any]:
        """JSON-able description (layers, choices, edges) -- the input of :meth:`fingerprint`."""
        return {
            "layers": [
                {"name": ls.name, "kind": ls.kind, "choices": [list(c[:3]) + [c.block] for c in ls.choices]}
                for ls in self.layers
            ],
            "edges": [list(e) for e in self.edges],
            "edge_method": self.edge_method,
        }

    def fingerprint(self) -> str:
        """sha256 of the space's description: identical spaces give identical fingerprints."""
        blob = json.dumps(self.describe(), sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()

    def summary(self) -> dict[str, Any]:
        return {"layers": len(self), "choices_per_layer": self.sizes, "log10_size": round(self.size_log10(), 2),
                "edges": len(self.edges), "edge_method": self.edge_method, "fingerprint": self.fingerprint()[:12]}


def space_config_from_dict(d: dict[str, Any] | None) -> SpaceConfig:
    """A :class:`SpaceConfig` from a plain (Hydra) dict, ignoring ``_target_``."""
    d = dict(d or {})
    d.pop("_target_", None)
    known = set(SpaceConfig.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise SpaceError(f"search.space has unknown key(s) {unknown}; accepted: {sorted(known)}")
    return SpaceConfig(**d)

