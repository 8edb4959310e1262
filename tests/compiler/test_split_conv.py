"""Convs with their reduction split between threads (``conv_primfunc(..., split=T)``), against PyTorch.

Masks come from the project's real schemes; each kernel is built with ``tvm.tirx.build`` and run on
``tvm.runtime.tensor`` inputs, on the two threads the test session uses and on more parts than threads.
"""

import doctest

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm

from npas_lightning.compiler import rewrite, split_conv
from npas_lightning.compiler.conv_kernel import (
    ConvGeometry,
    ConvTile,
    conv_primfunc,
    nchw_from_planes,
    pack_conv_weight,
    planes_from_nchw,
)
from npas_lightning.compiler.epilogue import apply_epilogue
from npas_lightning.compiler.sparse_pack import pack_sparse_rows
from npas_lightning.compiler.split_conv import split_bounds, split_parts
from npas_lightning.compiler.targets import resolve_target

TARGET = resolve_target("host", threads=2).tvm_target
DEV = tvm.cpu()


def _run(g, func, inputs, fp):
    lib = tvm.tirx.build(func, target=TARGET)
    y = tvm.runtime.empty((g.n, fp, g.mp), "float32", DEV)
    lib(*[tvm.runtime.tensor(np.ascontiguousarray(a), DEV) for a in inputs], y)
    return y.numpy()


def _reference(x, w, stride, pad, gate, bias, act):
    xt = torch.from_numpy(x)
    if gate is not None:
        xt = xt * torch.from_numpy(gate)[:, :, None, None]
    ref = F.conv2d(F.pad(xt, (pad[1], pad[3], pad[0], pad[2])), torch.from_numpy(w), stride=stride).numpy()
    return ref if act is None else apply_epilogue(ref, bias, act)


def _split_conv(x, w, stride, pad, tile, split, *, sparse, gate=False, act=None, seed=0):
    """Run ``conv_primfunc(..., split=split)`` on ``x``; returns ``(out NCHW, reference)``."""
    rng = np.random.default_rng(seed)
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    g = ConvGeometry.make(n, c, h, wd, f, (kh, kw), stride, pad, pixels=tile.pixels)
    gates = rng.random((n, c)).astype("float32") if gate else None
    bias = rng.standard_normal(f).astype("float32") if act else None
    fp = -(-f // tile.ft) * tile.ft
    extra = ([gates] if gate else []) + ([np.pad(bias, (0, fp - f))] if act else [])
    if sparse:
        pk = pack_sparse_rows(w.reshape(f, -1), tile.ft)
        func, buffers = conv_primfunc(g, tile, kept=pk.kept, counts=pk.counts, epilogue=act, gate=gate, split=split)
        assert len(buffers) == 3 and buffers[2].shape == (pk.kept.shape[0], len(split_bounds(c, split)))
        out = _run(g, func, [planes_from_nchw(x, g), pk.packed, *buffers, *extra], fp)
    else:
        func = conv_primfunc(g, tile, epilogue=act, gate=gate, split=split)
        out = _run(g, func, [planes_from_nchw(x, g), pack_conv_weight(w, tile.ft), *extra], fp)
    return nchw_from_planes(out, g)[:, :f], _reference(x, w, stride, pad, gates, bias, act)


# (n, c, h, f, k, stride, scheme, rate, params, split, gate, act)
CASES = [
    (1, 96, 14, 24, 1, 1, "block_based", 5.0, {"block": (16, 4)}, 2, False, "none"),
    (1, 97, 7, 24, 1, 1, "block_based", 5.0, {"block": (8, 4)}, 2, True, "relu"),  # odd C, SE gate
    (2, 64, 9, 16, 1, 1, "block_based", 3.0, {"block": (8, 4), "balanced": True}, 3, True, "hardswish"),
    (1, 40, 12, 8, 1, 1, "unstructured", 3.0, {}, 4, False, "silu"),
    (1, 16, 10, 24, 3, 1, "block_punched", 2.0, {"block": (8, 4)}, 2, False, None),  # kxk, more filters
    (2, 12, 11, 8, 3, 2, "block_punched", 2.0, {"block": (8, 4)}, 2, True, "relu"),  # stride 2, padding
    (1, 5, 6, 4, 1, 1, "block_based", 2.0, {"block": (4, 1)}, 8, False, "none"),  # more parts than channels
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"c{c[1]}f{c[3]}k{c[4]}s{c[5]}-{c[6]}-split{c[9]}")
def test_sparse_split_conv_matches_torch(case, masked_weight):
    n, c, h, f, k, s, scheme, rate, params, split, gate, act = case
    x = np.random.default_rng(1).standard_normal((n, c, h, h)).astype("float32")
    w = masked_weight((f, c, k, k), scheme, rate, 2, **params)
    out, ref = _split_conv(x, w, s, (k // 2,) * 4, ConvTile(8, 1, 16), split, sparse=True, gate=gate, act=act)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("split", [2, 3])
@pytest.mark.parametrize("gate,act", [(False, None), (True, "relu"), (False, "silu")])
def test_dense_split_conv_matches_torch(split, gate, act, masked_weight):
    x = np.random.default_rng(3).standard_normal((2, 33, 9, 9)).astype("float32")
    w = masked_weight((20, 33, 1, 1), "dense", 1.0, 4)
    out, ref = _split_conv(x, w, 1, (0, 0, 0, 0), ConvTile(4, 2, 16), split, sparse=False, gate=gate, act=act)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sparse,split", [(True, 2), (True, 3), (False, 2)])
def test_split_conv_partials_add_up_to_the_conv(sparse, split, masked_weight):
    """``partials=True``: no second pass; the parts of ``Y[parts, ...]`` (the first with the bias) add up to the conv."""
    rng = np.random.default_rng(7)
    n, c, h, f = 2, 50, 7, 16
    x = rng.standard_normal((n, c, h, h)).astype("float32")
    w = masked_weight((f, c, 1, 1), "block_based" if sparse else "dense", 4.0, 8, block=(8, 4))
    tile = ConvTile(8, 1, 16)
    g = ConvGeometry.make(n, c, h, h, f, (1, 1), 1, (0, 0, 0, 0), pixels=tile.pixels)
    gates, bias = rng.random((n, c)).astype("float32"), rng.standard_normal(f).astype("float32")
    parts = split_parts(c, split)
    if sparse:
        pk = pack_sparse_rows(w.reshape(f, -1), tile.ft)
        func, buffers = conv_primfunc(g, tile, kept=pk.kept, counts=pk.counts, epilogue="none", gate=True,
                                      split=split, partials=True)
        inputs = [planes_from_nchw(x, g), pk.packed, *buffers, gates, bias]
    else:
        func = conv_primfunc(g, tile, epilogue="none", gate=True, split=split, partials=True)
        inputs = [planes_from_nchw(x, g), pack_conv_weight(w, tile.ft), gates, bias]
    assert func.params[-1].name == "Y" and [int(d) for d in func.params[-1].shape] == [parts, n, f, g.mp]
    lib = tvm.tirx.build(func, target=TARGET)
    y = tvm.runtime.empty((parts, n, f, g.mp), "float32", DEV)
    lib(*[tvm.runtime.tensor(np.ascontiguousarray(a), DEV) for a in inputs], y)
    out = nchw_from_planes(y.numpy().sum(axis=0), g)
    np.testing.assert_allclose(out, _reference(x, w, 1, (0, 0, 0, 0), gates, bias, "none"), rtol=1e-4, atol=1e-4)


def test_split_conv_with_empty_tiles_and_parts():
    """Filter tiles without entries, and tiles whose entries all fall in one part."""
    rng = np.random.default_rng(5)
    w = np.zeros((24, 64, 1, 1), "float32")
    w[:8, :10, 0, 0] = rng.standard_normal((8, 10))  # tile 0: first part only
    w[16:, 50:, 0, 0] = rng.standard_normal((8, 14))  # tile 2: second part only; tile 1 empty
    x = rng.standard_normal((1, 64, 8, 8)).astype("float32")
    out, ref = _split_conv(x, w, 1, (0, 0, 0, 0), ConvTile(8, 1, 16), 2, sparse=True, act="relu")
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_split_bounds_follow_tvm_parallel_chunks():
    assert split_bounds(96, 2).tolist() == [0, 48, 96]
    assert split_bounds(97, 2).tolist() == [0, 49, 97]
    assert split_bounds(10, 4).tolist() == [0, 3, 6, 9, 10]
    assert split_bounds(3, 8).tolist() == [0, 1, 2, 3]
    assert split_parts(97, 2) == 2 and split_parts(10, 4) == 4 and split_parts(3, 8) == 3
    with pytest.raises(ValueError, match=r"split=0: expected an integer >= 1"):
        split_bounds(8, 0)


def test_split_errors_name_the_argument(masked_weight):
    g1 = ConvGeometry.make(1, 32, 8, 8, 16, (1, 1), 1, (0, 0, 0, 0), pixels=16)
    g3 = ConvGeometry.make(1, 32, 8, 8, 16, (3, 3), 1, (1, 1, 1, 1), pixels=16)
    tile = ConvTile(8, 1, 16)
    pk = pack_sparse_rows(masked_weight((16, 32), "block_based", 2.0, 0, block=(8, 4)), 8)
    with pytest.raises(ValueError, match=r"split=-1: expected an integer >= 1"):
        conv_primfunc(g1, tile, split=-1)
    with pytest.raises(ValueError, match=r"split=2 on a dense 3x3 conv: the dense kernel splits 1x1 convs only"):
        conv_primfunc(g3, tile, split=2)
    with pytest.raises(ValueError, match=r"split=2 needs counts=\.\.\. with kept=\.\.\."):
        conv_primfunc(g1, tile, kept=pk.kept, split=2)
    with pytest.raises(ValueError, match=r"split=2 cannot be combined with masked=True or cblock="):
        conv_primfunc(g1, tile, kept=pk.kept, counts=pk.counts, epilogue="relu", masked=True, split=2)
    with pytest.raises(ValueError, match=r"split=2 cannot be combined with masked=True or cblock="):
        conv_primfunc(g1, tile, kept=pk.kept, counts=pk.counts, cblock=8, split=2)
    with pytest.raises(ValueError, match=r"partials=True with epilogue='relu': an activation needs the whole sum"):
        conv_primfunc(g1, tile, epilogue="relu", split=2, partials=True)
    with pytest.raises(ValueError, match=r"partials=True needs split=\.\.\. > 1"):
        conv_primfunc(g1, tile, partials=True)


def test_reduction_split_picks_projections(monkeypatch):
    proj = ConvGeometry.make(1, 96, 14, 14, 24, (1, 1), 1, (0, 0, 0, 0), pixels=32)
    expand = ConvGeometry.make(1, 24, 14, 14, 96, (1, 1), 1, (0, 0, 0, 0), pixels=32)
    conv3 = ConvGeometry.make(1, 96, 14, 14, 24, (3, 3), 1, (1, 1, 1, 1), pixels=32)
    assert rewrite.reduction_split(proj, 2) == 2 and rewrite.reduction_split(proj, 4) == 4
    assert rewrite.reduction_split(proj, 1) == 1
    assert rewrite.reduction_split(expand, 2) == 1 and rewrite.reduction_split(conv3, 2) == 1
    assert rewrite.reduction_split(proj, 2, cblock=32) == 1
    monkeypatch.setattr(rewrite, "SPLIT_REDUCTION", False)
    assert rewrite.reduction_split(proj, 2) == 1


def test_doctests():
    assert doctest.testmod(split_conv).failed == 0
