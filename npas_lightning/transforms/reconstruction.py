"""Reconstruction init for filter-type candidates (paper 5.2.3, "weight initialization").

Each searchable layer's real input activations are captured with forward hooks on a few batches;
every candidate is fitted to minimise ``||candidate(x) - layer(x)||^2`` on them:

* single-conv candidates (``1x1``, ``3x3``, dense or depthwise): closed-form least squares (normal
  equations over unfolded patches, float64, tiny ridge);
* cascades (``3x3dw_1x1``, ``1x1_3x3dw_1x1``): ``steps`` Adam steps (norms in training mode), then
  the norms' running statistics are recomputed on the captured data and the last 1x1 conv is refitted
  in closed form on the eval-mode features;
* ``skip``: nothing to fit (its error is reported).

The reported error is relative: ``||cand(x) - layer(x)||_F / ||layer(x)||_F`` in eval mode.
Fitted candidates are cached on disk as state dicts (never pickled modules) under
``<cache_dir>/<state-dict hash>/<layer name>/<filter type>-e<expansion>.pt``.

Example::

    >>> result = fit_candidates(model, loader, layers=["blocks.2.0.conv_dw"], max_samples=64)
    >>> result.errors["blocks.2.0.conv_dw"]
    {'3x3': 0.21, '3x3dw_1x1': 0.35}
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.table import Table
from torch import nn

from npas_lightning.transforms.candidates import (
    FILTER_TYPES,
    FilterCandidate,
    allowed_filter_types,
    build_candidate,
)
from npas_lightning.transforms.context import surrounding_activation

__all__ = [
    "ReconstructionResult",
    "capture_inputs",
    "fit_candidate",
    "fit_candidates",
    "relative_error",
    "state_dict_hash",
]

_CHUNK = 64  # samples per forward chunk when evaluating on captured activations


def state_dict_hash(model: nn.Module) -> str:
    """SHA-256 over the state dict (sorted keys, dtypes, shapes and raw tensor bytes)."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def _batch_input(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, Mapping) and isinstance(batch.get("image"), torch.Tensor):
        return batch["image"]
    raise TypeError(
        f"batches must yield tensors or (input, target, ...) tuples, got {type(batch).__name__}"
    )


@torch.no_grad()
def capture_inputs(
    model: nn.Module, layer_names: Sequence[str], batches: Iterable[Any], *, max_samples: int = 256
) -> dict[str, torch.Tensor]:
    """Real input activations of ``layer_names`` (eval mode, forward hooks), at most ``max_samples`` each.

    ``batches`` yields input tensors or ``(input, target)`` pairs (a DataLoader works). Activations are
    stored on CPU. Raises KeyError for an unknown layer name, ValueError if nothing was captured.
    """
    if max_samples < 1:
        raise ValueError(f"capture_inputs: max_samples must be >= 1, got {max_samples}")
    modules = dict(model.named_modules())
    missing = [n for n in layer_names if n not in modules]
    if missing:
        raise KeyError(f"capture_inputs: layers {missing} are not submodules of {type(model).__name__}")
    store: dict[str, list[torch.Tensor]] = {n: [] for n in layer_names}
    counts = dict.fromkeys(layer_names, 0)
    handles = []
    for n in layer_names:
        def hook(_mod, args, _out, _n=n):
            if counts[_n] < max_samples:
                x = args[0][: max_samples - counts[_n]].detach().cpu()
                store[_n].append(x)
                counts[_n] += x.shape[0]
        handles.append(modules[n].register_forward_hook(hook))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in batches:
            model(_batch_input(batch).to(device))
            if all(c >= max_samples for c in counts.values()):
                break
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    empty = [n for n, xs in store.items() if not xs]
    if empty:
        raise ValueError(f"capture_inputs: layers {empty} did not run on the given batches")
    return {n: torch.cat(xs) for n, xs in store.items()}


def _forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([module(x[i: i + _CHUNK]) for i in range(0, x.shape[0], _CHUNK)])


@torch.no_grad()
def relative_error(candidate: nn.Module, original: nn.Module, x: torch.Tensor) -> float:
    """``||candidate(x) - original(x)||_F / ||original(x)||_F`` with both modules in eval mode."""
    modes = candidate.training, original.training
    candidate.eval()
    original.eval()
    try:
        num = den = 0.0
        for i in range(0, x.shape[0], _CHUNK):
            y = original(x[i: i + _CHUNK])
            num += float((candidate(x[i: i + _CHUNK]) - y).double().pow(2).sum())
            den += float(y.double().pow(2).sum())
    finally:
        candidate.train(modes[0])
        original.train(modes[1])
    return math.sqrt(num / max(den, 1e-30))


@torch.no_grad()
def _least_squares_conv(conv: nn.Conv2d, x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-9) -> None:
    """Set ``conv``'s weight and bias to the least-squares fit of ``y`` from ``x`` (dense or depthwise)."""
    k, s, p, g = conv.kernel_size, conv.stride, conv.padding, conv.groups
    cin, cout = conv.in_channels, conv.out_channels
    depthwise = g > 1 and g == cin == cout
    if g != 1 and not depthwise:
        raise ValueError(f"least squares supports dense or depthwise convs, got groups={g}")
    kk = k[0] * k[1]
    d = (1 if depthwise else cin) * kk + 1
    shape = (cout, d, d) if depthwise else (d, d)
    dev = x.device
    gram = torch.zeros(shape, dtype=torch.float64, device=dev)
    rhs = torch.zeros((cout, d) if depthwise else (d, cout), dtype=torch.float64, device=dev)
    for i in range(0, x.shape[0], _CHUNK):
        xb, yb = x[i: i + _CHUNK].double(), y[i: i + _CHUNK].double()
        cols = F.unfold(xb, k, padding=p, stride=s)  # (n, cin*kk, L)
        n, _, L = cols.shape
        yb = yb.reshape(n, cout, L)
        if depthwise:
            a = cols.reshape(n, cin, kk, L)
            a = torch.cat([a, torch.ones(n, cin, 1, L, dtype=a.dtype, device=dev)], dim=2)  # (n, C, d, L)
            gram += torch.einsum("ncdl,ncel->cde", a, a)
            rhs += torch.einsum("ncdl,ncl->cd", a, yb)
        else:
            a = torch.cat([cols, torch.ones(n, 1, L, dtype=cols.dtype, device=dev)], dim=1)  # (n, d, L)
            gram += torch.einsum("ndl,nel->de", a, a)
            rhs += torch.einsum("ndl,nol->do", a, yb)
    eye = torch.eye(d, dtype=torch.float64, device=dev)
    if depthwise:
        scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-12)[:, None, None]
        sol = torch.linalg.solve(gram + ridge * scale * eye, rhs.unsqueeze(-1)).squeeze(-1)  # (C, d)
        conv.weight.copy_(sol[:, :kk].reshape(cout, 1, *k).to(conv.weight.dtype))
        bias = sol[:, kk]
    else:
        scale = gram.diagonal().mean().clamp_min(1e-12)
        sol = torch.linalg.solve(gram + ridge * scale * eye, rhs)  # (d, cout)
        conv.weight.copy_(sol[:-1].T.reshape(cout, cin, *k).to(conv.weight.dtype))
        bias = sol[-1]
    if conv.bias is None:
        raise ValueError("least squares fit needs a conv with a bias")
    conv.bias.copy_(bias.to(conv.bias.dtype))


@torch.no_grad()
def _recalibrate_norms(candidate: nn.Module, x: torch.Tensor) -> None:
    norms = [m for m in candidate.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the captured data
    candidate.train()
    _forward(candidate, x)
    for m, mom in zip(norms, momenta, strict=True):
        m.momentum = mom
    candidate.eval()


def fit_candidate(
    candidate: FilterCandidate,
    original: nn.Module,
    x: torch.Tensor,
    *,
    steps: int = 300,
    lr: float = 1e-2,
    batch_size: int = 32,
    seed: int = 0,
) -> tuple[float, str]:
    """Fit ``candidate`` (in place) to reproduce ``original`` on inputs ``x``.

    Returns:
        (relative error in eval mode, method: "closed-form" | "adam+closed-form" | "none").
    """
    if steps < 0 or lr <= 0 or batch_size < 1:
        raise ValueError(f"fit_candidate: need steps >= 0, lr > 0, batch_size >= 1; got {steps}, {lr}, {batch_size}")
    ft = candidate.filter_type
    device = next((p.device for p in original.parameters()), x.device)
    x = x.detach().to(device)
    candidate.to(device)
    with torch.no_grad():
        original_mode = original.training
        original.eval()
        y = _forward(original, x)
        original.train(original_mode)
    if ft in ("keep", "skip"):
        return relative_error(candidate, original, x), "none"
    if ft in ("1x1", "3x3"):
        _least_squares_conv(candidate.conv, x, y)
        return relative_error(candidate, original, x), "closed-form"
    gen = torch.Generator().manual_seed(seed)
    y_scale = y.pow(2).mean().clamp_min(1e-12)
    candidate.train()
    opt = torch.optim.Adam(candidate.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    n = x.shape[0]
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        loss = F.mse_loss(candidate(x[idx]), y[idx]) / y_scale
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    _recalibrate_norms(candidate, x)
    head = candidate[:-1].eval()
    with torch.no_grad():
        feats = _forward(head, x)
    _least_squares_conv(candidate[-1], feats, y)
    candidate.eval()
    return relative_error(candidate, original, x), "adam+closed-form"


@dataclass
class ReconstructionResult:
    """Fitted candidates and their relative reconstruction errors, per layer and filter type."""

    fitted: dict[str, dict[str, FilterCandidate]] = field(default_factory=dict)
    errors: dict[str, dict[str, float]] = field(default_factory=dict)
    methods: dict[str, dict[str, str]] = field(default_factory=dict)
    cached: dict[str, dict[str, bool]] = field(default_factory=dict)
    model_hash: str = ""

    def mean_error_by_type(self) -> dict[str, float]:
        """Mean relative error per filter type across the fitted layers."""
        acc: dict[str, list[float]] = {}
        for per in self.errors.values():
            for ft, e in per.items():
                acc.setdefault(ft, []).append(e)
        return {ft: sum(v) / len(v) for ft, v in sorted(acc.items(), key=lambda kv: FILTER_TYPES.index(kv[0]))}

    def table(self) -> Table:
        table = Table(title=f"Reconstruction init (model {self.model_hash[:12]})")
        for col in ("layer", "filter type", "rel. error", "method", "cached"):
            table.add_column(col)
        for name, per in self.errors.items():
            for ft, e in per.items():
                table.add_row(name, ft, f"{e:.4f}", self.methods[name][ft], "yes" if self.cached[name][ft] else "no")
        return table


def _cache_path(cache_dir: Path, model_hash: str, layer: str, ft: str, expansion: float) -> Path:
    return cache_dir / model_hash / layer / f"{ft}-e{expansion:g}.pt"


def fit_candidates(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    layers: Sequence[str] | None = None,
    filter_types: Sequence[str] | None = None,
    expansion: float = 1.0,
    steps: int = 300,
    lr: float = 1e-2,
    max_samples: int = 128,
    cache_dir: str | Path | None = None,
    seed: int = 0,
) -> ReconstructionResult:
    """Capture real activations and fit every candidate of every chosen layer.

    Args:
        model: the trained model (not modified).
        batches: a few training batches (tensors or (x, y) pairs; a DataLoader works).
        layers: layer names (default: every Conv2d offering more than ``keep``).
        filter_types: restrict to these types (default: all offered types except ``keep``).
        expansion: hidden width multiple of ``1x1_3x3dw_1x1``.
        steps, lr: Adam settings for cascades.
        max_samples: captured samples per layer.
        cache_dir: if set, fitted candidates are loaded from / saved to
            ``<cache_dir>/<state_dict_hash(model)>/<layer>/<type>-e<expansion>.pt``. The fit settings
            (steps, lr, samples, batches) are not part of the key: a cached fit is reused as is.
    """
    modules = dict(model.named_modules())
    if filter_types is not None:
        bad = [ft for ft in filter_types if ft not in FILTER_TYPES]
        if bad:
            raise ValueError(f"fit_candidates: filter_types {bad} unknown; accepted: {list(FILTER_TYPES)}")
    if layers is None:
        layers = [n for n, m in modules.items()
                  if isinstance(m, nn.Conv2d) and len(allowed_filter_types(m)) > 1]
    else:
        bad = [n for n in layers if not isinstance(modules.get(n), nn.Conv2d)]
        if bad:
            raise ValueError(f"fit_candidates: layers {bad} are not Conv2d submodules of the model")
    wanted = {n: [ft for ft in allowed_filter_types(modules[n]) if ft != "keep"
                  and (filter_types is None or ft in filter_types)] for n in layers}
    wanted = {n: fts for n, fts in wanted.items() if fts}
    model_hash = state_dict_hash(model)
    result = ReconstructionResult(model_hash=model_hash)
    cache = Path(cache_dir) if cache_dir is not None else None
    uncached = [n for n, fts in wanted.items()
                if cache is None or not all(_cache_path(cache, model_hash, n, ft, expansion).exists() for ft in fts)]
    xs = capture_inputs(model, uncached, batches, max_samples=max_samples) if uncached else {}
    for name, fts in wanted.items():
        conv = modules[name]
        act = surrounding_activation(model, name)
        for ft in fts:
            path = _cache_path(cache, model_hash, name, ft, expansion) if cache else None
            hit = path is not None and path.exists()
            torch.manual_seed(seed)
            cand = build_candidate(ft, conv, expansion=expansion, act_layer=act, layer_name=name)
            if hit:
                saved = torch.load(path, map_location="cpu", weights_only=True)
                cand.load_state_dict(saved["state_dict"])
                cand.eval()
                err, method = float(saved["rel_error"]), str(saved["method"])
            else:
                err, method = fit_candidate(cand, conv, xs[name], steps=steps, lr=lr, seed=seed)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    torch.save({"state_dict": cand.state_dict(), "rel_error": err, "method": method,
                                "filter_type": ft, "expansion": expansion}, path)
            result.fitted.setdefault(name, {})[ft] = cand
            result.errors.setdefault(name, {})[ft] = err
            result.methods.setdefault(name, {})[ft] = method
            result.cached.setdefault(name, {})[ft] = hit
    return result
