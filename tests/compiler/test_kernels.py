"""Project kernels (conv, depthwise, dense; dense and block-sparse index paths) against PyTorch."""

import numpy as np
import pytest
import torch
import tvm

from npas_lightning.compiler import dense_kernel
from npas_lightning.compiler.conv_kernel import (
    ConvGeometry,
    ConvTile,
    conv_primfunc,
    depthwise_primfunc,
    nchw_from_planes,
    pack_conv_weight,
    pack_depthwise_weight,
    planes_from_nchw,
)
from npas_lightning.compiler.dense_kernel import DenseTile, dense_primfunc, pack_dense_weight
from npas_lightning.compiler.targets import resolve_target

TARGET = resolve_target("host", threads=2).tvm_target
DEV = tvm.cpu()


def _run_conv(x, w, stride, pad, tile, depthwise=False):
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    g = ConvGeometry.make(n, c, h, wd, f, (kh, kw), stride, pad, pixels=tile.pixels)
    if depthwise:
        func, packed, fp = depthwise_primfunc(g, tile), pack_depthwise_weight(w), c
    else:
        func, packed, fp = conv_primfunc(g, tile), pack_conv_weight(w, tile.ft), -(-f // tile.ft) * tile.ft
    lib = tvm.tirx.build(func, target=TARGET)
    y = tvm.runtime.empty((n, fp, g.mp), "float32", DEV)
    lib(tvm.runtime.tensor(planes_from_nchw(x, g), DEV), tvm.runtime.tensor(packed, DEV), y)
    return nchw_from_planes(y.numpy(), g)


def _ref(x, w, stride, pad, groups=1):
    xt = torch.nn.functional.pad(torch.from_numpy(x), (pad[1], pad[3], pad[0], pad[2]))
    return torch.nn.functional.conv2d(xt, torch.from_numpy(w), stride=stride, groups=groups).numpy()


CONV_CASES = [  # n, c, f, h, w, k, stride, pad(t,l,b,r)
    (1, 5, 7, 9, 11, 1, 1, (0, 0, 0, 0)),
    (1, 8, 19, 7, 7, 1, 2, (0, 0, 0, 0)),
    (1, 6, 13, 10, 9, 3, 1, (1, 1, 1, 1)),
    (2, 6, 13, 10, 9, 3, 2, (1, 1, 1, 1)),
    (1, 3, 16, 15, 17, 3, 2, (0, 0, 1, 1)),  # asymmetric ("same") padding
    (1, 4, 9, 15, 15, 5, 1, (2, 2, 2, 2)),
    (1, 4, 9, 15, 14, 5, 2, (2, 2, 2, 2)),
    (1, 3, 8, 16, 16, 7, 2, (3, 3, 3, 3)),
    (1, 3, 5, 13, 13, 7, 1, (0, 0, 0, 0)),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("tile", [ConvTile(8, 2, 16), ConvTile(4, 1, 16)])
def test_conv_matches_torch(case, tile):
    n, c, f, h, w, k, s, pad = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w)).astype("float32")
    wt = rng.standard_normal((f, c, k, k)).astype("float32")
    out = _run_conv(x, wt, s, pad, tile)
    ref = _ref(x, wt, s, pad)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k,s,pad", [(3, 1, (1, 1, 1, 1)), (3, 2, (1, 1, 1, 1)), (5, 1, (2, 2, 2, 2)),
                                     (5, 2, (1, 1, 2, 2)), (7, 2, (3, 3, 3, 3))])
def test_depthwise_matches_torch(k, s, pad):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 12, 13, 11)).astype("float32")
    wt = rng.standard_normal((12, 1, k, k)).astype("float32")
    out = _run_conv(x, wt, s, pad, ConvTile(1, 2, 16), depthwise=True)
    np.testing.assert_allclose(out, _ref(x, wt, s, pad, groups=12), rtol=1e-4, atol=1e-5)


def test_block_sparse_conv_reads_only_kept_entries():
    """The index-buffer path (used by block-punched pruning): kept entries per filter block."""
    rng = np.random.default_rng(2)
    n, c, f, h, w, k, s, pad = 1, 6, 20, 11, 11, 3, 2, (1, 1, 1, 1)
    tile = ConvTile(8, 1, 16)
    x = rng.standard_normal((n, c, h, w)).astype("float32")
    wt = rng.standard_normal((f, c, k, k)).astype("float32")
    g = ConvGeometry.make(n, c, h, w, f, (k, k), s, pad, pixels=tile.pixels)
    fn, r = -(-f // 8), c * k * k
    kept = np.stack([np.sort(rng.choice(r, r // 3, replace=False)) for _ in range(fn)]).astype("int32")
    packed = pack_conv_weight(wt, 8)
    compact = np.ascontiguousarray(np.take_along_axis(packed, kept[:, :, None].astype(np.int64), 1))
    mask = np.zeros((fn, r), bool)
    np.put_along_axis(mask, kept.astype(np.int64), True, 1)
    masked = (packed * mask[:, :, None]).transpose(0, 2, 1).reshape(fn * 8, r)[:f].reshape(wt.shape)
    func, (chan, shift) = conv_primfunc(g, tile, kept=kept)
    lib = tvm.tirx.build(func, target=TARGET)
    y = tvm.runtime.empty((n, fn * 8, g.mp), "float32", DEV)
    args = [planes_from_nchw(x, g), compact, chan, shift]
    lib(*[tvm.runtime.tensor(a, DEV) for a in args], y)
    np.testing.assert_allclose(nchw_from_planes(y.numpy(), g), _ref(x, masked, s, pad), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n,c,f,tile", [(1, 37, 19, DenseTile(16, 1, 1)), (1, 64, 100, DenseTile(32, 1, 4)),
                                        (6, 40, 33, DenseTile(16, 2, 4)), (8, 24, 64, DenseTile(64, 8, 4)),
                                        (2, 256, 100, DenseTile(32, 2, 4))])  # the last one parallel
def test_dense_matches_torch(n, c, f, tile):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, c)).astype("float32")
    w = rng.standard_normal((f, c)).astype("float32")
    lib = tvm.tirx.build(dense_primfunc(n, c, f, tile), target=TARGET)
    y = tvm.runtime.empty((n, -(-f // tile.ft) * tile.ft), "float32", DEV)
    lib(tvm.runtime.tensor(x, DEV), tvm.runtime.tensor(pack_dense_weight(w, tile.ft), DEV), y)
    np.testing.assert_allclose(y.numpy()[:, :f], x @ w.T, rtol=1e-4, atol=1e-4)


# multiply-adds (padded filters included) dense / with a quarter of the channels kept:
# 72x24: 2304 / 576; 480x32: 15360 / 3840; 1024x1000: 1032192 / 258048; batch 2, 256x100: 65536 / 16384
@pytest.mark.parametrize("n,c,f,dense_parallel,sparse_parallel", [
    (1, 72, 24, False, False), (1, 480, 32, False, False), (1, 1024, 1000, True, True), (2, 256, 100, True, False)])
def test_dense_runs_tiny_matmuls_serially(n, c, f, dense_parallel, sparse_parallel):
    """At most SERIAL_MAX_MACS (16384) multiply-adds: no parallel launch."""
    assert dense_kernel.SERIAL_MAX_MACS == 16384
    tile = DenseTile(16, 1, 4) if n == 1 else DenseTile(32, 2, 4)
    assert ("T.parallel" in dense_primfunc(n, c, f, tile).script()) is dense_parallel
    rng = np.random.default_rng(5)
    fn = -(-f // tile.ft)
    k = c // 4
    kept = np.stack([np.sort(rng.choice(c, k, replace=False)) for _ in range(fn)]).astype("int32")
    sparse = dense_primfunc(n, c, f, tile, kept=kept, counts=np.full(fn, k))
    assert ("T.parallel" in sparse.script()) is sparse_parallel


def test_dense_rejects_batch_not_divisible_by_tile():
    with pytest.raises(ValueError, match="tile.nt=4 must divide the batch size n=6"):
        dense_primfunc(6, 8, 16, DenseTile(16, 4, 1))


def test_block_sparse_dense():
    rng = np.random.default_rng(4)
    n, c, f, ft = 3, 48, 40, 16
    x = rng.standard_normal((n, c)).astype("float32")
    w = rng.standard_normal((f, c)).astype("float32")
    fn = -(-f // ft)
    kept = np.stack([np.sort(rng.choice(c, 12, replace=False)) for _ in range(fn)]).astype("int32")
    packed = pack_dense_weight(w, ft)
    compact = np.ascontiguousarray(np.take_along_axis(packed, kept[:, :, None].astype(np.int64), 1))
    mask = np.zeros((fn, c), bool)
    np.put_along_axis(mask, kept.astype(np.int64), True, 1)
    masked = (packed * mask[:, :, None]).transpose(0, 2, 1).reshape(fn * ft, c)[:f]
    lib = tvm.tirx.build(dense_primfunc(n, c, f, DenseTile(ft, 1, 4), kept=kept), target=TARGET)
    y = tvm.runtime.empty((n, fn * ft), "float32", DEV)
    lib(*[tvm.runtime.tensor(a, DEV) for a in (x, compact, kept)], y)
    np.testing.assert_allclose(y.numpy()[:, :f], x @ masked.T, rtol=1e-4, atol=1e-4)


def test_geometry_layout_roundtrip():
    g = ConvGeometry.make(1, 2, 9, 9, 2, (3, 3), 2, (1, 1, 1, 1), pixels=16)
    assert (g.oh, g.ow, g.phases) == (5, 5, 4)
    assert g.mp % 16 == 0 and g.mp >= g.m
    # every read of a valid output stays inside the flattened row
    assert g.mp - 1 + int(g.offsets().max()) < g.phases * g.plane + g.plane
