"""Sparse kernels (block-sparse conv, depthwise, dense) and their packing, against PyTorch with masked weights.

Masks come from the project's real schemes (block_punched, block_based, pattern, unstructured, filter);
every kernel is built with ``tvm.tirx.build`` and run on ``tvm.runtime.tensor`` inputs.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm

from npas_lightning.compiler.conv_kernel import (
    ConvGeometry,
    ConvTile,
    conv_primfunc,
    depthwise_primfunc,
    nchw_from_planes,
    pack_conv_weight,
    planes_from_nchw,
)
from npas_lightning.compiler.dense_kernel import DenseTile, dense_primfunc
from npas_lightning.compiler.sparse_pack import (
    depthwise_block_counts,
    pack_sparse_depthwise,
    pack_sparse_rows,
    reorder_rows,
)
from npas_lightning.compiler.targets import resolve_target

TARGET = resolve_target("host", threads=2).tvm_target
DEV = tvm.cpu()


def _tensors(*arrays):
    return [tvm.runtime.tensor(np.ascontiguousarray(a), DEV) for a in arrays]


def _run_sparse_conv(x, w, stride, pad, tile, *, reorder=False, counts=False, cblock=None):
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    g = ConvGeometry.make(n, c, h, wd, f, (kh, kw), stride, pad, pixels=tile.pixels)
    pk = pack_sparse_rows(w.reshape(f, -1), tile.ft, reorder=reorder)
    func, buffers = conv_primfunc(g, tile, kept=pk.kept, counts=pk.counts if counts else None, cblock=cblock)
    assert len(buffers) == (3 if cblock else 2)
    lib = tvm.tirx.build(func, target=TARGET)
    y = tvm.runtime.empty((n, pk.packed.shape[0] * tile.ft, g.mp), "float32", DEV)
    lib(*_tensors(planes_from_nchw(x, g), pk.packed, *buffers), y)
    out = y.numpy()
    if pk.order is not None:  # slot j holds filter order[j]
        out = out.copy()
        out[:, pk.order] = y.numpy()[:, :f]
    return nchw_from_planes(out, g)


def _ref_conv(x, w, stride, pad, groups=1):
    xt = F.pad(torch.from_numpy(x), (pad[1], pad[3], pad[0], pad[2]))
    return F.conv2d(xt, torch.from_numpy(w), stride=stride, groups=groups).numpy()


# ---------------------------------------------------------------------------------------- conv
CONV_CASES = [  # n, c, f, h, w, k, stride, pad(t,l,b,r), scheme, rate, params, tile
    (1, 8, 20, 9, 11, 1, 1, (0, 0, 0, 0), "block_punched", 3.0, {"block": (8, 4)}, ConvTile(8, 2, 16)),
    (2, 12, 16, 7, 7, 1, 1, (0, 0, 0, 0), "block_based", 4.0, {"block": (8, 4)}, ConvTile(8, 1, 16)),
    (1, 8, 13, 10, 9, 3, 1, (1, 1, 1, 1), "block_punched", 2.0, {"block": (8, 4)}, ConvTile(8, 2, 16)),
    (2, 6, 20, 10, 9, 3, 2, (1, 1, 1, 1), "block_punched", 5.0, {"block": (4, 2)}, ConvTile(4, 1, 16)),
    (1, 5, 16, 15, 17, 3, 2, (0, 0, 1, 1), "pattern", 3.0, {}, ConvTile(4, 1, 16)),
    (2, 4, 9, 15, 15, 5, 1, (2, 2, 2, 2), "block_punched", 7.0, {"block": (4, 4)}, ConvTile(4, 2, 16)),
    (1, 4, 9, 15, 14, 5, 2, (2, 2, 2, 2), "unstructured", 3.0, {}, ConvTile(8, 1, 16)),
    (1, 3, 8, 16, 16, 7, 2, (3, 3, 3, 3), "block_punched", 10.0, {"block": (8, 1)}, ConvTile(8, 1, 16)),
    (1, 3, 5, 13, 13, 7, 1, (0, 0, 0, 0), "filter", 2.0, {}, ConvTile(4, 2, 16)),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"k{c[5]}s{c[6]}n{c[0]}-{c[8]}")
def test_sparse_conv_matches_torch(case, masked_weight):
    n, c, f, h, w, k, s, pad, scheme, rate, params, tile = case
    wt = masked_weight((f, c, k, k), scheme, rate, seed=k * 10 + s, **params)
    x = np.random.default_rng(0).standard_normal((n, c, h, w)).astype("float32")
    out = _run_sparse_conv(x, wt, s, pad, tile, counts=(k + s) % 2 == 0)  # both kernels over the grid
    ref = _ref_conv(x, wt, s, pad)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", CONV_CASES[:6] + CONV_CASES[7:], ids=lambda c: f"k{c[5]}s{c[6]}n{c[0]}-{c[8]}")
def test_channel_blocked_conv_matches_torch(case, masked_weight):
    """``cblock``: the reduction in blocks of input channels (uneven last block), added up in ``Y``."""
    n, c, f, h, w, k, s, pad, scheme, rate, params, tile = case
    wt = masked_weight((f, c, k, k), scheme, rate, seed=k * 10 + s, **params)
    x = np.random.default_rng(0).standard_normal((n, c, h, w)).astype("float32")
    for cblock in sorted({1, 2, (c + 1) // 2}):
        out = _run_sparse_conv(x, wt, s, pad, tile, counts=True, cblock=cblock)
        np.testing.assert_allclose(out, _ref_conv(x, wt, s, pad), rtol=1e-4, atol=1e-4, err_msg=f"cblock={cblock}")


def test_channel_blocked_conv_with_epilogue_and_mask(masked_weight):
    """The last channel block applies bias + activation (times the mask) to the summed tile."""
    from npas_lightning.compiler.conv_kernel import plane_mask

    rng = np.random.default_rng(3)
    c, f = 24, 16
    gd = ConvGeometry.make(1, c, 9, 9, f, (3, 3), 1, (1, 1, 1, 1), pixels=16)
    ge = ConvGeometry.make(1, c, 1, gd.x_len, f, (1, 1), 1, (0, 0, 0, 0), pixels=16)
    ge = ge.reading_rows(ge.mp)
    w = masked_weight((f, c), "block_based", 2.0, seed=3, block=(8, 4))
    pk = pack_sparse_rows(w, 8)
    func, buffers = conv_primfunc(ge, ConvTile(8, 1, 16), pk.kept, counts=pk.counts, epilogue="silu", masked=True,
                                  cblock=8)
    assert [p.name for p in func.params] == ["X", "W", "Kc", "Ks", "S", "B", "Mk", "Y"]
    xr = np.zeros((1, c, ge.mp), "float32")
    xr[:, :, : gd.x_len] = planes_from_nchw(rng.standard_normal((1, c, 9, 9)).astype("float32"), gd)
    bias, mask = rng.standard_normal(f).astype("float32"), plane_mask(gd, ge.mp)
    y = tvm.runtime.empty((1, f, ge.mp), "float32", DEV)
    tvm.tirx.build(func, target=TARGET)(*_tensors(xr, pk.packed, *buffers, bias, mask), y)
    z = np.einsum("fc,ncp->nfp", w, xr) + bias[None, :, None]
    np.testing.assert_allclose(y.numpy(), z / (1 + np.exp(-z)) * mask, rtol=1e-4, atol=1e-5)


def test_channel_starts_and_errors():
    from npas_lightning.compiler.conv_kernel import channel_starts

    chan, counts = np.array([[0, 3, 4, 9], [5, 6, 0, 0], [1, 1, 1, 1]]), np.array([4, 2, 0])
    assert channel_starts(chan, counts, 4, 10).tolist() == [[0, 2, 3, 4], [0, 0, 2, 2], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match=r"cblock=10: expected an integer in \[1, 10\)"):
        channel_starts(chan, counts, 10, 10)
    with pytest.raises(ValueError, match="kept entries are not sorted by input channel within a filter tile"):
        channel_starts(np.array([[3, 1]]), np.array([2]), 2, 4)
    g = ConvGeometry.make(1, 8, 6, 6, 8, (3, 3), 1, (1, 1, 1, 1), pixels=16)
    with pytest.raises(ValueError, match=r"cblock=4 needs counts=\.\.\. and gate=False"):
        conv_primfunc(g, ConvTile(8, 1, 16), kept=np.zeros((1, 3), "int32"), cblock=4)


def test_sparse_conv_unbalanced_and_empty_tiles(masked_weight):
    """Tiles keeping different counts (one keeps nothing) are padded to the largest count, exactly."""
    f, c, k = 12, 6, 3
    wt = masked_weight((f, c, k, k), "unstructured", 2.0, seed=5)
    wt[4:8] = 0  # tile 1 (ft=4) empty
    wt[8:12, :, 0, :] = 0  # tile 2 keeps fewer positions than tile 0
    pk = pack_sparse_rows(wt.reshape(f, -1), 4)
    counts = (pk.packed != 0).any(2).sum(1)
    assert counts[1] == 0 and counts[2] < counts[0]
    assert pk.counts.tolist() == counts.tolist()
    assert pk.work_fraction < pk.density
    x = np.random.default_rng(1).standard_normal((2, c, 8, 8)).astype("float32")
    ref = _ref_conv(x, wt, 1, (1, 1, 1, 1))
    for counts_on in (False, True):  # padded rectangle, and per-tile counts (padding skipped)
        np.testing.assert_allclose(_run_sparse_conv(x, wt, 1, (1, 1, 1, 1), ConvTile(4, 1, 16), counts=counts_on),
                                   ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_run_sparse_conv(x, wt, 1, (1, 1, 1, 1), ConvTile(4, 1, 16), counts=True, cblock=4),
                               ref, rtol=1e-4, atol=1e-4)  # channel blocks, the empty tile adding nothing


def test_pattern_conv_with_filter_reorder_matches_torch(masked_weight):
    wt = masked_weight((24, 6, 3, 3), "pattern", 2.25, seed=7)
    x = np.random.default_rng(2).standard_normal((1, 6, 12, 12)).astype("float32")
    out = _run_sparse_conv(x, wt, 1, (1, 1, 1, 1), ConvTile(8, 1, 16), reorder=True, counts=True)
    np.testing.assert_allclose(out, _ref_conv(x, wt, 1, (1, 1, 1, 1)), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------- depthwise
DW_CASES = [  # n, c, k, stride, pad, scheme, rate, params, block
    (2, 12, 3, 1, (1, 1, 1, 1), "block_punched", 3.0, {"block": (4, 1)}, 4),
    (1, 10, 3, 2, (0, 0, 1, 1), "pattern", 2.25, {}, 1),
    (1, 16, 5, 1, (2, 2, 2, 2), "block_punched", 5.0, {"block": (8, 1)}, 8),
    (2, 9, 5, 2, (1, 1, 2, 2), "unstructured", 2.0, {}, 4),
    (1, 8, 7, 2, (3, 3, 3, 3), "block_punched", 7.0, {"block": (2, 1)}, 2),
]


@pytest.mark.parametrize("counts", [False, True], ids=["padded", "counts"])
@pytest.mark.parametrize("case", DW_CASES, ids=lambda c: f"k{c[2]}s{c[3]}-{c[5]}-b{c[8]}")
def test_sparse_depthwise_matches_torch(case, counts, masked_weight):
    n, c, k, s, pad, scheme, rate, params, block = case
    wt = masked_weight((c, 1, k, k), scheme, rate, seed=k + s, **params)
    x = np.random.default_rng(3).standard_normal((n, c, 13, 11)).astype("float32")
    tile = ConvTile(1, 2, 16)
    g = ConvGeometry.make(n, c, 13, 11, c, (k, k), s, pad, pixels=tile.pixels)
    packed, kept = pack_sparse_depthwise(wt.reshape(c, -1), block)
    per_block = depthwise_block_counts(wt, block)
    assert per_block.max() == kept.shape[1]
    func, shift = depthwise_primfunc(g, tile, kept=kept, block=block, counts=per_block if counts else None)
    assert shift.shape == (kept.shape[0], kept.shape[1] + (counts and per_block.min() < per_block.max())) and shift.dtype == np.int32
    lib = tvm.tirx.build(func, target=TARGET)
    y = tvm.runtime.empty((n, c, g.mp), "float32", DEV)
    lib(*_tensors(planes_from_nchw(x, g), packed, shift), y)
    np.testing.assert_allclose(nchw_from_planes(y.numpy(), g), _ref_conv(x, wt, s, pad, groups=c),
                               rtol=1e-4, atol=1e-5)


def test_depthwise_cases_include_unbalanced_blocks(masked_weight):
    """The counts variant of the depthwise cases above runs per-block stops on unbalanced blocks."""
    unbalanced = []
    for _n, c, k, s, _pad, scheme, rate, params, block in DW_CASES:
        per_block = depthwise_block_counts(masked_weight((c, 1, k, k), scheme, rate, seed=k + s, **params), block)
        unbalanced.append(bool(per_block.min() < per_block.max()))
    assert sum(unbalanced) >= 2, unbalanced


def test_depthwise_counts_stop_each_block():
    """Blocks keeping fewer positions than the padded K stop at their count: the padding entries,
    given nonzero weights here, are not read (with them the output would differ)."""
    c, k = 4, 3
    g = ConvGeometry.make(1, c, 6, 6, c, (k, k), 1, (1, 1, 1, 1), pixels=16)
    kept = np.array([[4, 0, 8], [4, 1, 2]], "int32")  # block 0 keeps only the centre; padding after it
    packed = np.ones((c, 3), "float32")
    x = np.random.default_rng(0).standard_normal((1, c, 6, 6)).astype("float32")
    outs = {}
    for name, counts in (("padded", None), ("counts", np.array([1, 3]))):
        func, shift = depthwise_primfunc(g, ConvTile(1, 1, 16), kept=kept, block=2, counts=counts)
        y = tvm.runtime.empty((1, c, g.mp), "float32", DEV)
        tvm.tirx.build(func, target=TARGET)(*_tensors(planes_from_nchw(x, g), packed, shift), y)
        outs[name] = nchw_from_planes(y.numpy(), g)
    np.testing.assert_allclose(outs["counts"][0, :2], x[0, :2], rtol=1e-6)  # the centre tap alone
    np.testing.assert_allclose(outs["counts"][0, 2:], outs["padded"][0, 2:], rtol=1e-6)
    assert not np.allclose(outs["padded"][0, :2], x[0, :2])


def test_depthwise_without_kept_is_unchanged():
    """``kept=None`` keeps returning a bare PrimFunc with (X, W, Y)."""
    g = ConvGeometry.make(1, 4, 6, 6, 4, (3, 3), 1, (1, 1, 1, 1), pixels=16)
    func = depthwise_primfunc(g, ConvTile(1, 1, 16))
    assert len(func.params) == 3


# --------------------------------------------------------------------------------------- dense
DENSE_CASES = [  # n, c, f, scheme, rate, params, tile
    (1, 64, 40, "block_based", 4.0, {"block": (16, 4)}, DenseTile(16, 1, 4)),
    (1, 96, 70, "block_based", 5.0, {"block": (32, 8)}, DenseTile(32, 1, 4)),
    (3, 48, 33, "block_based", 3.0, {"block": (16, 4), "balanced": True}, DenseTile(16, 3, 4)),
    (3, 50, 20, "block_based", 2.0, {"block": (4, 8), "prune": "rows"}, DenseTile(16, 1, 1)),
    (64, 64, 48, "block_based", 7.0, {"block": (16, 4)}, DenseTile(16, 8, 4)),
    (64, 40, 36, "unstructured", 2.0, {}, DenseTile(16, 4, 4)),
    (1, 40, 36, "filter", 3.0, {}, DenseTile(16, 1, 4)),
]


@pytest.mark.parametrize("case", DENSE_CASES, ids=lambda c: f"n{c[0]}-{c[3]}-{c[4]}")
def test_sparse_dense_matches_torch(case, masked_weight):
    n, c, f, scheme, rate, params, tile = case
    wt = masked_weight((f, c), scheme, rate, seed=n + f, **params)
    x = np.random.default_rng(4).standard_normal((n, c)).astype("float32")
    pk = pack_sparse_rows(wt, tile.ft)
    ref = F.linear(torch.from_numpy(x), torch.from_numpy(wt)).numpy()
    for counts in (None, pk.counts):
        lib = tvm.tirx.build(dense_primfunc(n, c, f, tile, kept=pk.kept, counts=counts), target=TARGET)
        y = tvm.runtime.empty((n, pk.packed.shape[0] * tile.ft), "float32", DEV)
        lib(*_tensors(x, pk.packed, pk.kept), y)
        np.testing.assert_allclose(y.numpy()[:, :f], ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------- packing
def test_pack_sparse_rows_values_and_fractions():
    w = np.zeros((5, 6), "float32")
    w[0, [1, 4]] = [1, 2]
    w[1, 4] = 3
    w[3, [0, 5]] = [4, 5]
    w[4, 2] = 6
    pk = pack_sparse_rows(w, 2)  # tiles {0,1}: cols {1,4}; {2,3}: {0,5}; {4}: {2} (+pad)
    assert pk.kept.tolist() == [[1, 4], [0, 5], [2, 0]]
    assert pk.packed.shape == (3, 2, 2) and pk.packed.dtype == np.float32
    assert pk.packed[0].tolist() == [[1, 0], [2, 3]]
    assert pk.packed[2].tolist() == [[6, 0], [0, 0]]  # padding entry reads weight 0
    assert pk.order is None and pk.counts.tolist() == [2, 2, 1]
    assert pk.work_fraction == pytest.approx(5 * 2 / 30)
    assert pk.density == pytest.approx(3 * 2 * 2 / 30)
    assert pk.kept_fraction == pytest.approx(6 / 30)
    np.testing.assert_array_equal(pk.unpack(5, 6), w)


def test_pack_all_zero_tile_and_matrix_keep_one_entry():
    pk = pack_sparse_rows(np.zeros((7, 9), "float32"), 4)
    assert pk.kept.shape == (2, 1) and not pk.packed.any() and pk.kept_fraction == 0.0
    w = np.zeros((8, 9), "float32")
    w[:4, 3] = 1.0
    pk = pack_sparse_rows(w, 4)
    assert pk.kept.shape == (2, 1) and pk.kept[0, 0] == 3 and not pk.packed[1].any()
    packed, kept = pack_sparse_depthwise(np.zeros((5, 9), "float32"), 2)
    assert kept.shape == (3, 1) and packed.shape == (5, 1) and not packed.any()


@pytest.mark.parametrize("scheme,rate", [("pattern", 2.25), ("pattern", 5.0), ("unstructured", 3.0)])
def test_reorder_roundtrips_and_does_not_inflate_work(scheme, rate, masked_weight):
    f, c = 40, 8
    w = masked_weight((f, c, 3, 3), scheme, rate, seed=11).reshape(f, -1)
    plain, ro = pack_sparse_rows(w, 8), pack_sparse_rows(w, 8, reorder=True)
    if ro.order is not None:
        assert sorted(ro.order.tolist()) == list(range(f))
    np.testing.assert_array_equal(ro.unpack(f, w.shape[1]), w)
    assert ro.kept_fraction == plain.kept_fraction
    assert ro.density <= plain.density + 1e-12


def test_reorder_groups_identical_rows():
    """Filters with the same kept columns, interleaved, end up in the same tile: no padding left."""
    rng = np.random.default_rng(5)
    masks = rng.random((4, 30)) < 0.3
    rows = masks[np.tile(np.arange(4), 4)]  # 16 filters, 4 distinct masks, interleaved
    w = np.where(rows, rng.standard_normal(rows.shape), 0).astype("float32")
    assert pack_sparse_rows(w, 4).density > 1.5 * rows.mean()
    pk = pack_sparse_rows(w, 4, reorder=True)
    assert pk.density == pytest.approx(masks.sum(1).max() * 16 / w.size)
    tiles = pk.order.reshape(4, 4) % 4
    assert (tiles == tiles[:, :1]).all()
    order = reorder_rows(w != 0, 4)
    np.testing.assert_array_equal(order, pk.order)


def test_pack_sparse_depthwise_blocks(masked_weight):
    w = masked_weight((10, 1, 3, 3), "block_punched", 3.0, seed=3, block=(4, 1)).reshape(10, 9)
    packed, kept = pack_sparse_depthwise(w, 4)
    assert kept.shape[0] == 3 and packed.shape == (10, kept.shape[1])
    for b in range(3):  # the block's union of positions, sorted, then padding with weight 0
        union = np.flatnonzero((w[4 * b:4 * b + 4] != 0).any(0))
        assert kept[b, :len(union)].tolist() == union.tolist()
        rows = slice(4 * b, min(4 * b + 4, 10))
        np.testing.assert_array_equal(packed[rows], np.take_along_axis(w[rows], kept[[b]].repeat(w[rows].shape[0], 0), 1))
    assert (packed != 0).sum() == (w != 0).sum()


# --------------------------------------------------------------------------------------- errors
def test_pack_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"weight2d of shape \[2, 3, 4\]: expected a non-empty 2-D matrix"):
        pack_sparse_rows(np.zeros((2, 3, 4)), 4)
    with pytest.raises(ValueError, match=r"ft=0: expected an integer >= 1"):
        pack_sparse_rows(np.zeros((2, 3)), 0)
    with pytest.raises(ValueError, match=r"ft=True: expected an integer >= 1"):
        pack_sparse_rows(np.zeros((2, 3)), True)
    with pytest.raises(ValueError, match=r"weight of shape \[2, 3, 3\]: expected a depthwise weight"):
        pack_sparse_depthwise(np.zeros((2, 3, 3)), 1)
    with pytest.raises(ValueError, match=r"block=0: expected an integer >= 1"):
        pack_sparse_depthwise(np.zeros((2, 9)), 0)


def test_kernel_kept_errors_name_the_argument():
    g = ConvGeometry.make(1, 4, 6, 6, 8, (3, 3), 1, (1, 1, 1, 1), pixels=16)
    with pytest.raises(ValueError, match=r"kept of shape \[3, 2\] \(int32\): expected an integer array \[Fn, K\] = \[2, K>=1\]"):
        conv_primfunc(g, ConvTile(4, 1, 16), kept=np.zeros((3, 2), "int32"))
    with pytest.raises(ValueError, match=r"kept holds reduction indices in \[0, 36\]: expected \[0, C\*KH\*KW=36\)"):
        conv_primfunc(g, ConvTile(4, 1, 16), kept=np.array([[0, 36], [1, 2]], "int32"))
    with pytest.raises(ValueError, match=r"kept holds reduction indices in \[-1, 2\]: expected \[0, C=8\)"):
        dense_primfunc(1, 8, 16, DenseTile(16, 1, 1), kept=np.array([[-1, 2]], "int32"))
    with pytest.raises(ValueError, match=r"kept of shape \[2, 2\] \(float32\)"):
        dense_primfunc(1, 8, 16, DenseTile(16, 1, 1), kept=np.zeros((2, 2), "float32"))
    with pytest.raises(ValueError, match=r"counts of shape \[3\] \(int64\): expected an integer array \[Fn\] = \[2\]"):
        conv_primfunc(g, ConvTile(4, 1, 16), kept=np.zeros((2, 2), "int32"), counts=np.zeros(3, "int64"))
    with pytest.raises(ValueError, match=r"counts in \[0, 3\]: expected \[0, K=2\]"):
        dense_primfunc(1, 8, 32, DenseTile(16, 1, 1), kept=np.zeros((2, 2), "int32"), counts=np.array([0, 3]))
    with pytest.raises(ValueError, match=r"counts=\.\.\. needs kept=\.\.\."):
        conv_primfunc(g, ConvTile(4, 1, 16), counts=np.zeros(2, "int64"))
    with pytest.raises(ValueError, match=r"block=0: expected an integer >= 1 \(channels per kept-position block\)"):
        depthwise_primfunc(g, ConvTile(1, 1, 16), kept=np.zeros((4, 1), "int32"), block=0)
    with pytest.raises(ValueError, match=r"expected an integer array \[ceil\(C/block\), K\] = \[2, K>=1\] for C=4, block=2"):
        depthwise_primfunc(g, ConvTile(1, 1, 16), kept=np.zeros((4, 1), "int32"), block=2)
    with pytest.raises(ValueError, match=r"kept holds kernel positions in \[0, 9\]: expected \[0, 9\)"):
        depthwise_primfunc(g, ConvTile(1, 1, 16), kept=np.array([[0, 9]] * 4, "int32"))
    with pytest.raises(ValueError, match="counts=... needs kept"):
        depthwise_primfunc(g, ConvTile(1, 1, 16), counts=np.ones(4, "int32"))
    with pytest.raises(ValueError, match=r"counts of shape \[3\] \(int64\): expected an integer array \[ceil\(C/block\)\] = \[4\]"):
        depthwise_primfunc(g, ConvTile(1, 1, 16), kept=np.zeros((4, 2), "int32"), counts=np.array([1, 2, 2]))
    with pytest.raises(ValueError, match="expected every channel block to keep at least one"):
        depthwise_primfunc(g, ConvTile(1, 1, 16), kept=np.zeros((4, 2), "int32"), counts=np.array([1, 0, 2, 2]))


# ------------------------------------------------------------------------------- wider grid (slow)
@pytest.mark.slow
@pytest.mark.parametrize("s", [1, 2])
@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("k,scheme,params", [(k, "block_punched", {"block": (8, 4)}) for k in (1, 3, 5, 7)]
                         + [(k, "unstructured", {}) for k in (1, 3, 5, 7)] + [(3, "pattern", {})])
def test_sparse_conv_grid(k, s, n, scheme, params, masked_weight):
    f, c = 21, 10
    wt = masked_weight((f, c, k, k), scheme, 3.0, seed=k * s + n, **params)
    x = np.random.default_rng(k).standard_normal((n, c, 12, 13)).astype("float32")
    pad = (k // 2, k // 2, k // 2 + 1, k // 2)
    for tile in (ConvTile(8, 2, 16), ConvTile(4, 1, 16)):
        out = _run_sparse_conv(x, wt, s, pad, tile, reorder=scheme == "pattern", counts=tile.ft == 4)
        np.testing.assert_allclose(out, _ref_conv(x, wt, s, pad), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("n,nt", [(1, 1), (3, 1), (3, 3), (64, 4), (64, 8)])
@pytest.mark.parametrize("block", [(8, 4), (16, 4), (32, 8)])
def test_sparse_dense_grid(n, nt, block, masked_weight):
    c, f = 72, 50
    wt = masked_weight((f, c), "block_based", 5.0, seed=n, block=block)
    x = np.random.default_rng(n).standard_normal((n, c)).astype("float32")
    for ft in (16, 32):
        pk = pack_sparse_rows(wt, ft)
        lib = tvm.tirx.build(dense_primfunc(n, c, f, DenseTile(ft, nt, 4), kept=pk.kept, counts=pk.counts),
                             target=TARGET)
        y = tvm.runtime.empty((n, pk.packed.shape[0] * ft), "float32", DEV)
        lib(*_tensors(x, pk.packed, pk.kept), y)
        np.testing.assert_allclose(y.numpy()[:, :f], x @ wt.T, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------- loop orders
@pytest.mark.parametrize("outer", ["filters", "pixels"])
@pytest.mark.parametrize("counts", [False, True])
def test_conv_loop_orders_match_torch(monkeypatch, outer, counts, masked_weight):
    """Both kernel loop orders (filter tiles outside, or pixel chunks outside for inputs larger than
    L2) compute the same conv; the threshold is lowered so a small layer takes the pixel-outer path."""
    import npas_lightning.compiler.conv_kernel as ck

    monkeypatch.setattr(ck, "L2_INPUT_BYTES", 0 if outer == "pixels" else 1 << 40)
    tile = ConvTile(4, 2, 16)
    g = ConvGeometry.make(2, 6, 10, 9, 13, (3, 3), 1, (1, 1, 1, 1), pixels=tile.pixels)
    assert ck.pixel_outer(g) is (outer == "pixels")
    wt = masked_weight((13, 6, 3, 3), "block_punched", 3.0, seed=5, block=(4, 2))
    x = np.random.default_rng(1).standard_normal((2, 6, 10, 9)).astype("float32")
    ref = _ref_conv(x, wt, 1, (1, 1, 1, 1))
    out = _run_sparse_conv(x, wt, 1, (1, 1, 1, 1), tile, counts=counts)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    lib = tvm.tirx.build(conv_primfunc(g, tile), target=TARGET)  # the dense kernel, same loop order
    y = tvm.runtime.empty((2, 16, g.mp), "float32", DEV)
    lib(*_tensors(planes_from_nchw(x, g), pack_conv_weight(wt, 4)), y)
    np.testing.assert_allclose(nchw_from_planes(y.numpy(), g), ref, rtol=1e-4, atol=1e-4)


TAIL_CASES = [  # c, f, h, w, k, stride, pad, tile, what the last chunk computes (tail_split)
    (8, 16, 28, 28, 3, 2, (1, 1, 1, 1), ConvTile(8, 2, 16), (1, 2)),  # 14 rows of 15: 210 of 224
    (12, 16, 14, 14, 1, 1, (0, 0, 0, 0), ConvTile(8, 2, 16), (0, 4)),  # 196 of 224
    (8, 12, 7, 7, 1, 1, (0, 0, 0, 0), ConvTile(4, 4, 16), (3, 1)),  # 49 of 64
    (8, 12, 7, 7, 1, 1, (0, 0, 0, 0), ConvTile(4, 1, 16), (0, 1)),
    (8, 8, 5, 8, 1, 1, (0, 0, 0, 0), ConvTile(4, 2, 16), (1, 0)),  # 8 pixels left >= 4 filters: a vector
]


@pytest.mark.parametrize("kernel", ["filters outer", "pixels outer", "channel blocks"])
@pytest.mark.parametrize("case", TAIL_CASES, ids=lambda c: f"k{c[4]}s{c[5]}@{c[2]}-{c[7].ft}x{c[7].mt}")
def test_last_chunk_computes_only_the_outputs_below_m(monkeypatch, case, kernel, masked_weight):
    """The block-sparse conv's last pixel chunk: whole vectors, then single pixels (a filter vector
    each), the rest stored as 0; bias, SiLU (and a gate) as in the other chunks; the same outputs as
    the kernel computing the whole chunk (``TAIL_PIXELS = False``), in both loop orders and in
    channel blocks (the pixels' partial sums carried through ``Y``, the epilogue on the last block)."""
    import npas_lightning.compiler.conv_kernel as ck

    c, f, h, w, k, s, pad, tile, split = case
    outer = kernel.split()[0]
    cblock = c // 2 if kernel == "channel blocks" else None
    monkeypatch.setattr(ck, "L2_INPUT_BYTES", 0 if outer == "pixels" else 1 << 40)
    g = ConvGeometry.make(1, c, h, w, f, (k, k), s, pad, pixels=tile.pixels)
    assert ck.tail_split(g, tile) == split
    rng = np.random.default_rng(7)
    wt = masked_weight((f, c, k, k), "block_punched", 3.0, seed=11, block=(4, 2))
    x = rng.standard_normal((1, c, h, w)).astype("float32")
    gate = rng.random((1, c)).astype("float32") if cblock is None else np.ones((1, c), "float32")
    bias = rng.standard_normal(f).astype("float32")
    pk = pack_sparse_rows(wt.reshape(f, -1), tile.ft)
    fp = pk.packed.shape[0] * tile.ft
    outs = {}
    for tail in (True, False):
        monkeypatch.setattr(ck, "TAIL_PIXELS", tail)
        func, buffers = conv_primfunc(g, tile, kept=pk.kept, counts=pk.counts, epilogue="silu", gate=cblock is None,
                                      cblock=cblock)
        y = tvm.runtime.empty((1, fp, g.mp), "float32", DEV)
        gates = [gate] if cblock is None else []
        tvm.tirx.build(func, target=TARGET)(*_tensors(planes_from_nchw(x, g), pk.packed, *buffers, *gates,
                                                      np.pad(bias, (0, fp - f))), y)
        outs[tail] = y.numpy()
    z = _ref_conv(x * gate[:, :, None, None], wt, s, pad) + bias[None, :, None, None]
    np.testing.assert_allclose(nchw_from_planes(outs[True], g), z / (1 + np.exp(-z)), rtol=1e-4, atol=1e-5)
    computed = (g.mp // tile.pixels - 1) * tile.pixels + split[0] * tile.vw + split[1]
    np.testing.assert_allclose(outs[True][:, :, :computed], outs[False][:, :, :computed], rtol=1e-5, atol=1e-6)
    assert computed >= g.m and not outs[True][:, :, computed:].any()  # nobody reads past g.m: zeros
