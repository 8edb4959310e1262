"""TVM vs PyTorch parity: whole model on a random input, then per-layer kernel checks to name the
first diverging layer."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .conv_kernel import (
    ConvGeometry,
    ConvTile,
    conv_primfunc,
    depthwise_primfunc,
    nchw_from_planes,
    pack_conv_weight,
    pack_depthwise_weight,
    phase_chunks,
    planes_from_nchw,
)
from .dense_kernel import DenseTile, dense_primfunc, pack_dense_weight
from .epilogue import apply_epilogue, kernel_bias
from .errors import NumericsError
from .split_conv import split_parts

__all__ = ["check_numerics", "check_kernel", "compare"]


def compare(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """max abs error, and max abs error relative to the reference's largest magnitude."""
    out, ref = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape:
        return {"max_abs": float("inf"), "max_rel": float("inf")}
    err = float(np.abs(out - ref).max()) if out.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return {"max_abs": err, "max_rel": err / max(scale, 1e-30)}


def check_kernel(record, target, *, seed: int = 0) -> dict[str, float]:
    """Build one project kernel standalone with the packed weights (and, for a block-sparse kernel,
    the index buffers; for a kernel with an epilogue, the bias) the graph embeds and compare it with
    PyTorch (the layer's BN-folded weight, zeros where pruned, then bias and activation) on random data."""
    rng = np.random.default_rng(seed)
    s = record.shape
    built = record.func is not None  # sparse kernels and kernels with an epilogue keep their PrimFunc
    if record.kind == "dense":
        n, c, f = s["n"], s["c"], s["f"]
        tile = DenseTile(**record.tile)
        x = rng.standard_normal((n, c)).astype("float32")
        if built:
            func, weights = record.func, [record.packed, *record.buffers]
        else:
            func = dense_primfunc(n, c, f, tile)
            weights = [record.packed if record.packed is not None else pack_dense_weight(record.weight, tile.ft)]
        y = _run(func, target, [x, *weights], (n, weights[0].shape[0] * tile.ft))
        return compare(y[:, :f], x @ record.weight.T)
    tile = ConvTile(**record.tile)
    pad = tuple(s["p"])
    g = ConvGeometry.make(s["n"], s["c"], s["h"], s["w"], s["f"], (s["kh"], s["kw"]), s["s"], pad, pixels=tile.pixels)
    if s.get("planes_hq"):  # a conv reading the padded planes its producer wrote
        g = g.reading_planes(s["planes_hq"], s["row"])
    elif s.get("row"):  # a 1x1 conv reading a producer's output rows
        g = g.reading_rows(s["row"])
    x = rng.standard_normal((g.n, g.c, g.h, g.w)).astype("float32")
    gate = rng.random((g.n, g.c)).astype("float32") if s.get("gate") else None
    xt = torch.nn.functional.pad(torch.from_numpy(x), (pad[1], pad[3], pad[0], pad[2]))
    if gate is not None:
        xt = xt * torch.from_numpy(gate)[:, :, None, None]
    depthwise = record.kind == "depthwise"
    ref = torch.nn.functional.conv2d(xt, torch.from_numpy(record.weight), stride=g.stride,
                                     groups=g.c if depthwise else 1).numpy()
    if built:
        func, weights = record.func, [record.packed, *record.buffers]
    elif depthwise:
        func, weights = depthwise_primfunc(g, tile), [pack_depthwise_weight(record.weight)]
    else:
        func, weights = conv_primfunc(g, tile), [pack_conv_weight(record.weight, tile.ft)]
    if record.packed is not None and not built:  # check the weights the compiled graph really embeds
        weights = [record.packed]
    fp = g.c if depthwise else weights[0].shape[0] * tile.ft
    if gate is not None:
        weights.append(gate)
    if record.epilogue is not None:  # the kernel adds the bias and applies the activation itself
        weights.append(kernel_bias(record.bias, fp, record.order))
        ref = apply_epilogue(ref, record.bias, record.epilogue)
    if record.mask is not None:  # a 1x1 conv writing the next conv's planes zeroes their padding
        weights.append(record.mask)
        ref = ref * record.mask[: g.m].reshape(g.oh, g.wq)[:, : g.ow]
    planes = planes_from_nchw(x, g)[:, :, : g.x_len]
    planes = np.pad(planes, [(0, 0), (0, 0), (0, g.x_len - planes.shape[2])])
    parts = split_parts(g.c, record.split) if record.partials else 1
    out = _run(func, target, [planes, *weights], (g.n, fp, g.mp), parts)
    if s.get("phases"):  # a planes writer skipping the stride phases nobody reads (1x1, one row): the rest
        computed = np.repeat(phase_chunks(s["phases"], g.mp // tile.pixels, tile.pixels), tile.pixels, axis=1)
        computed = np.repeat(computed, tile.ft, axis=0)[:fp]
        out = np.where(computed[None], out, 0.0)
        ref = np.where(computed[None, : g.f, None, : g.ow], ref, 0.0)
    if record.order is not None:  # filter slots back to the model's order
        out = out[:, np.argsort(record.order)]
    return compare(nchw_from_planes(out, g), ref)


def _run(func, target, inputs: list[np.ndarray], out_shape: tuple[int, ...], parts: int = 1) -> np.ndarray:
    """Build ``func`` for ``target`` and run it on the host with ``inputs`` and one float32 output
    (``parts`` > 1: a split kernel's ``[parts, *out_shape]`` partial sums, added up here)."""
    import tvm

    dev = tvm.cpu()
    lib = tvm.tirx.build(func, target=target)
    y = tvm.runtime.empty(out_shape if parts <= 1 else (parts, *out_shape), "float32", dev)
    lib(*[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in inputs], y)
    return y.numpy() if parts <= 1 else y.numpy().sum(axis=0)


def _ok(stats: dict[str, float], rtol: float, atol: float) -> bool:
    return stats["max_rel"] <= rtol or stats["max_abs"] <= atol


def check_numerics(compiled, model: torch.nn.Module, example_input: torch.Tensor, *, rtol: float = 1e-4,
                   atol: float = 0.0, seed: int = 0) -> dict[str, Any]:
    """Compare ``compiled`` with ``model`` on a random input shaped like ``example_input``.

    Passes when ``max_rel <= rtol`` (error relative to the largest output magnitude, so randomly
    initialised models with tiny logits are held to the same standard) or ``max_abs <= atol``
    (default 0: only an exact match passes by the absolute test).
    On failure every project kernel is checked alone, in model order, and the first one that diverges
    is named in the :class:`NumericsError`.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(example_input.shape, generator=gen, dtype=torch.float32)
    with torch.no_grad():
        ref = model(x)
    refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    outs = compiled.run(x.numpy())
    outs = outs if isinstance(outs, list) else [outs]
    stats = [compare(o, r.numpy()) for o, r in zip(outs, refs, strict=False)]
    report = {"max_abs": max(s["max_abs"] for s in stats), "max_rel": max(s["max_rel"] for s in stats),
              "rtol": rtol, "atol": atol, "outputs": len(refs)}
    ok = len(outs) == len(refs) and _ok(report, rtol, atol)
    report["ok"] = bool(ok)
    if ok:
        return report
    target = compiled.target.tvm_target
    for rec in compiled.kernels:
        layer = check_kernel(rec, target)
        if not _ok(layer, rtol, atol):
            report["first_diverging_layer"] = rec.module
            raise NumericsError(
                f"TVM output differs from PyTorch (max abs {report['max_abs']:.3g}, max rel {report['max_rel']:.3g}); "
                f"first diverging layer: {rec.module!r} ({rec.kind} kernel {rec.symbol}, shape {rec.shape}, "
                f"tile {rec.tile}; layer max abs {layer['max_abs']:.3g})", report)
    raise NumericsError(
        f"TVM output differs from PyTorch (max abs {report['max_abs']:.3g}, max rel {report['max_rel']:.3g}) "
        f"but every project kernel matches alone ({len(compiled.kernels)} checked): the divergence comes from "
        "TVM's own lowering of the remaining (fused elementwise/pooling) ops", report)
