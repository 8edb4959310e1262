"""1x1 convs writing the next depthwise conv's padded input planes: the expand conv of an inverted
residual block computes over the planes of its (smaller) input, a masked epilogue zeroes the padding,
and the copy of the expanded tensor into the planes disappears."""

import numpy as np
import pytest
import torch
from torch import nn

from npas_lightning.compiler import compile_model, rewrite
from npas_lightning.compiler.conv_kernel import (
    ConvGeometry,
    ConvTile,
    conv_primfunc,
    live_chunks,
    plane_mask,
    planes_from_nchw,
)
from npas_lightning.compiler.numerics import check_kernel

ACTS = {"silu": nn.SiLU, "relu": nn.ReLU, "hardswish": nn.Hardswish}


class Expand(nn.Module):
    """1x1 expand (BN, activation) -> depthwise kxk (BN, activation) -> 1x1 project: MBConv's core."""

    def __init__(self, act: str = "silu", k: int = 3, stride: int = 1, c: int = 8, e: int = 32, share: bool = False):
        super().__init__()
        self.share = share
        self.pw = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), ACTS[act]())
        self.dw = nn.Sequential(nn.Conv2d(e, e, k, stride, k // 2, groups=e, bias=False), nn.BatchNorm2d(e),
                                ACTS[act]())
        self.project = nn.Conv2d(e, 16, 1)

    def forward(self, x):
        h = self.pw(x)
        y = self.project(self.dw(h))
        if self.share:  # the expanded tensor has a second reader: it must exist as a plain tensor
            return y.mean((2, 3)) + h.mean((2, 3))[:, :16]
        return y


def _compiled(model, size: int, plan=None, batch: int = 1, channels: int | None = None):
    """Compile ``model`` on a random ``[batch, channels, size, size]`` input (``channels``: its ``pw``'s
    inputs by default), check it and each kernel against PyTorch; records by module."""
    x = torch.randn(batch, channels or model.pw[0].in_channels, size, size)
    compiled = compile_model(model, x, plan=plan, threads=2)
    assert compiled.numerics["ok"], compiled.numerics
    with torch.no_grad():
        np.testing.assert_allclose(compiled.run(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-5)
    for record in compiled.kernels:  # what names a diverging layer rebuilds each kernel, mask included
        assert check_kernel(record, compiled.target.tvm_target)["max_rel"] < 1e-5, record.module
    return {r.module: r for r in compiled.kernels}


@pytest.mark.parametrize("act, k, stride, size", [("silu", 3, 1, 30), ("relu", 3, 2, 48), ("hardswish", 5, 1, 41),
                                                  ("silu", 5, 2, 72)])
def test_expand_conv_writes_the_depthwise_planes(bn_model, act, k, stride, size):
    records = _compiled(bn_model(lambda: Expand(act, k, stride)), size)
    pw, dw = records["pw.0"], records["dw.0"]
    assert pw.mask is not None and pw.symbol.endswith("_planes") and pw.shape["planes"] == [size, size]
    # the depthwise conv reads exactly the rows the expand conv wrote, in its own plane layout
    assert dw.shape["row"] == int(pw.func.params[-1].shape[2]) == pw.mask.size
    assert dw.shape["planes_hq"] >= ConvGeometry.make(1, 32, size, size, 32, (k, k), stride, (k // 2,) * 4,
                                                      pixels=16).hq
    assert pw.mask.sum() == size * size  # one 1 per image pixel, zeros on the padding and the tail


def test_batched_expand_conv_writes_one_set_of_planes_per_image(bn_model):
    records = _compiled(bn_model(lambda: Expand("silu", 3, 2)), 48, batch=2)
    assert records["pw.0"].mask is not None and records["pw.0"].shape["n"] == 2


def test_sparse_expand_conv_writes_the_planes_too(bn_model):
    from npas_lightning.algorithms.masking import apply_masks, compute_masks
    from npas_lightning.plan import NPASScheme

    model = bn_model(lambda: Expand("silu", 3, 2))
    plan = NPASScheme.resolve({"pw.0": {"scheme": "block_based", "rate": 2.0, "block": [16, 4]},
                               "dw.0": {"scheme": "block_punched", "rate": 2.0, "block": [8, 1]}}, model, exclude=[])
    apply_masks(model, compute_masks(model, plan), plan)
    records = _compiled(model, 48, plan)
    assert records["pw.0"].sparse["lowering"] == "block-sparse kernel" and records["pw.0"].mask is not None
    assert records["dw.0"].sparse is not None and records["dw.0"].shape.get("planes_hq")


def test_no_copy_of_the_expanded_tensor(bn_model):
    """The only pad left copies the 8-channel block input, not the 32-channel expanded tensor."""
    from tvm import tirx

    from npas_lightning.compiler.frontend import import_model
    from npas_lightning.compiler.pipeline import build_relax
    from npas_lightning.compiler.rewrite import TilePlanner
    from npas_lightning.compiler.targets import resolve_target

    model = bn_model(lambda: Expand("silu", 3, 1))
    spec = resolve_target("host", threads=1)
    imported = import_model(model, torch.randn(1, 8, 30, 30))
    mod = build_relax(imported.mod, spec, planner=TilePlanner(spec), names=imported.names).mod
    pads = [f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc) and "pad" in gv.name_hint]
    assert pads and all(int(f.params[-1].shape[1]) == 8 for f in pads)
    # the expand conv's first kernel, re-emitted over the planes, is not left in the module to be built
    kernels = {gv.name_hint for gv, f in mod.functions_items() if gv.name_hint.startswith("npas_")}
    assert "npas_conv_0_planes" in kernels and "npas_conv_0" not in kernels


@pytest.mark.parametrize("why, build, size", [
    ("a second reader", lambda: Expand("silu", 3, 1, share=True), 30),
    ("a 7x7 map under a 5x5 kernel computes 2.7x its pixels", lambda: Expand("silu", 5, 1), 7),
])
def test_expand_conv_keeps_its_own_layout_when_planes_do_not_pay(bn_model, why, build, size):
    records = _compiled(bn_model(build), size)
    assert records["pw.0"].mask is None and not records["dw.0"].shape.get("planes_hq"), why


def test_limits_are_read_at_compile_time_per_activation(bn_model, monkeypatch):
    monkeypatch.setattr(rewrite, "PLANES_OUTPUT_MAX_WORK_SILU", 0.0)
    assert _compiled(bn_model(lambda: Expand("silu", 3, 1)), 30)["pw.0"].mask is None
    assert _compiled(bn_model(lambda: Expand("relu", 3, 1)), 30)["pw.0"].mask is not None
    monkeypatch.setattr(rewrite, "PLANES_OUTPUT_MAX_WORK", 0.0)
    assert _compiled(bn_model(lambda: Expand("relu", 3, 1)), 30)["pw.0"].mask is None


def test_cheap_activations_take_planes_with_more_padding(bn_model):
    """28x28 under a stride-2 3x3 computes 1.4x the pixels of its own layout: over the SiLU limit (1.3),
    within the other (1.5)."""
    assert _compiled(bn_model(lambda: Expand("relu", 3, 2)), 28)["pw.0"].mask is not None
    assert _compiled(bn_model(lambda: Expand("silu", 3, 2)), 28)["pw.0"].mask is None


class Stem(nn.Module):
    """kxk stem (BN, activation) -> depthwise 3x3 (BN, activation) -> 1x1, optionally added to the stem's
    output (mobilenetv3's first block) or twice (a second residual reader)."""

    def __init__(self, act: str = "silu", k: int = 3, stride: int = 2, residual: int = 0):
        super().__init__()
        self.residual = residual
        self.stem = nn.Sequential(nn.Conv2d(3, 16, k, stride, k // 2, bias=False), nn.BatchNorm2d(16), ACTS[act]())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), ACTS[act]())
        self.pw = nn.Conv2d(16, 16, 1)

    def forward(self, x):
        h = self.stem(x)
        y = self.pw(self.dw(h))
        for _ in range(self.residual):
            y = y + h
        return y


@pytest.mark.parametrize("act, k, stride, residual, size", [("silu", 3, 2, 0, 96), ("hardswish", 3, 2, 1, 45),
                                                            ("relu", 3, 2, 2, 40)])
def test_stem_conv_writes_the_depthwise_planes(bn_model, act, k, stride, residual, size):
    """A kxk conv computes over its input padded further, so that its output rows are the depthwise
    conv's plane rows; residual adds read the image inside those planes."""
    records = _compiled(bn_model(lambda: Stem(act, k, stride, residual)), size, channels=3)
    stem, dw = records["stem.0"], records["dw.0"]
    out = -(-size // stride)
    assert stem.mask is not None and stem.symbol.endswith("_planes") and stem.mask.sum() == out * out
    assert stem.shape["planes"] == [out, out] and "live" not in stem.shape  # a dense kernel computes every row
    pad = k // 2
    assert stem.shape["p"][:2] == [pad + stride, pad + stride]  # one more plane row and column on top / left
    assert dw.shape["planes_hq"] and dw.shape["row"] == stem.mask.size


@pytest.mark.parametrize("k, stride", [(3, 1), (5, 2)])
def test_stem_keeps_its_own_layout_when_its_rows_cannot_be_the_planes_rows(bn_model, k, stride):
    """A row of a kxk conv's output ends in (k - 1) // stride columns it cannot compute; in the
    depthwise conv's planes only the one padding column on the right may hold them."""
    records = _compiled(bn_model(lambda: Stem("relu", k, stride, residual=1)), 40, channels=3)
    assert records["stem.0"].mask is None and not records["dw.0"].shape.get("planes_hq")


def test_stem_planes_leave_no_crop_or_pad_between_stem_and_depthwise(bn_model, built_function_names):
    names = built_function_names(bn_model(lambda: Stem("hardswish", residual=1)), torch.randn(1, 3, 32, 32))
    assert "npas_conv_0_planes" in names and "npas_conv_0" not in names
    # the image's phase planes, the block's sum (reading the stem inside its planes), nothing else
    layout = sorted(n for n in names if not n.startswith(("npas_", "main")))
    assert len(layout) == 2 and any("pad" in n and "transpose" in n for n in layout), layout


class Residuals(nn.Module):
    """Two inverted-residual blocks (1x1 expand, depthwise, 1x1 project, + input)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(Expand("relu", 3, 1, c=8, e=32) for _ in range(2))
        for block in self.blocks:
            block.project = nn.Conv2d(32, 8, 1)

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return x


def test_residual_add_reads_the_next_blocks_padded_input(bn_model, built_function_names):
    """The first block's sum is padded for the second expand conv's planes; the second block's
    residual add reads it inside that padding, so the sum is stored once, already padded."""
    model = bn_model(Residuals)
    _compiled(model, 20, channels=8)
    names = built_function_names(model, torch.randn(1, 8, 20, 20))
    assert [n for n in names if n.startswith("pad")] == ["pad"], names  # the model input's only
    assert any("add" in n and n.endswith("pad") for n in names), names


def test_masked_kernel_zeroes_the_padding():
    """The masked epilogue alone: act(conv + bias) on the image, exactly 0 on the padding."""
    from npas_lightning.compiler.numerics import _run
    from npas_lightning.compiler.targets import resolve_target

    rng = np.random.default_rng(0)
    gd = ConvGeometry.make(1, 4, 6, 6, 4, (3, 3), 1, (1, 1, 1, 1), pixels=16)
    ge = ConvGeometry.make(1, 4, 1, gd.x_len, 8, (1, 1), 1, (0, 0, 0, 0), pixels=16)
    ge = ge.reading_rows(ge.mp)
    tile = ConvTile(8, 1, 16)
    func = conv_primfunc(ge, tile, epilogue="silu", masked=True)
    assert [p.name for p in func.params][:4] == ["X", "W", "B", "Mk"]
    x = planes_from_nchw(rng.standard_normal((1, 4, 6, 6)).astype("float32"), gd)
    xr = np.pad(x, [(0, 0), (0, 0), (0, ge.mp - x.shape[2])])
    w = rng.standard_normal((8, 4)).astype("float32")
    bias = np.full(8, 2.0, "float32")  # silu(2) != 0: only the mask makes the padding 0
    mask = plane_mask(gd, ge.mp)
    out = _run(func, resolve_target("host", threads=1).tvm_target,
               [xr, w.T[None].copy(), bias, mask], (1, 8, ge.mp))
    z = np.einsum("fc,ncp->nfp", w, xr) + 2.0
    np.testing.assert_allclose(out, z / (1 + np.exp(-z)) * mask, rtol=1e-5, atol=1e-6)
    assert (out[:, :, mask == 0] == 0).all()


@pytest.mark.parametrize("k, stride", [(3, 1), (5, 1), (3, 2), (5, 2)])
def test_live_chunks_skip_the_padding_rows_only(masked_weight, k, stride):
    """A block-sparse 1x1 writer computing only the chunks that hold image positions writes exactly
    what the full writer writes: its mask is 0 in every chunk it skips (stride phases included)."""
    from npas_lightning.compiler.conv_kernel import live_chunks
    from npas_lightning.compiler.numerics import _run
    from npas_lightning.compiler.sparse_pack import pack_sparse_rows
    from npas_lightning.compiler.targets import resolve_target

    rng = np.random.default_rng(1)
    gd = ConvGeometry.make(1, 16, 14, 14, 16, (k, k), stride, (k // 2,) * 4, pixels=16)
    ge = ConvGeometry.make(1, 8, 1, gd.x_len, 16, (1, 1), 1, (0, 0, 0, 0), pixels=16).reading_rows(gd.x_len + 16)
    tile = ConvTile(4, 1, 16)
    pk = pack_sparse_rows(masked_weight((16, 8), "block_based", 2.0, 0, block=(4, 2)), 4)
    mask = plane_mask(gd, ge.mp)
    live = live_chunks(mask, 16)
    assert 0 < live.sum() < live.size  # there are padding chunks to skip
    assert (stride == 1) == (np.ptp(np.flatnonzero(live)) + 1 == live.sum())  # phases leave gaps between runs
    x = rng.standard_normal((1, 8, ge.x_len)).astype("float32")
    bias = rng.standard_normal(16).astype("float32")
    target = resolve_target("host", threads=2).tvm_target
    outs = []
    for chunks in (None, live):
        func, buffers = conv_primfunc(ge, tile, pk.kept, counts=pk.counts, epilogue="silu", masked=True, live=chunks)
        outs.append(_run(func, target, [x, pk.packed, *buffers, bias, mask], (1, 16, ge.mp)))
    np.testing.assert_array_equal(outs[1], outs[0])
    assert (outs[0][:, :, mask == 0] == 0).all() and (outs[0][:, :, mask == 1] != 0).any()


@pytest.mark.parametrize("k, stride, size", [(5, 1, 14), (5, 2, 28)])
def test_sparse_expand_conv_skipping_padding_rows_writes_planes_a_full_writer_would_not(bn_model, monkeypatch,
                                                                                      k, stride, size):
    """5x5 over 14x14: all plane rows are 1.6x the pixels (over the SiLU limit), the image rows 1.2x;
    stride-2 5x5 over 28x28: 1.4x and 1.1x (the padding rows of each of the four phase planes)."""
    from npas_lightning.algorithms.masking import apply_masks, compute_masks
    from npas_lightning.plan import NPASScheme

    model = bn_model(lambda: Expand("silu", k, stride))
    plan = NPASScheme.resolve({"pw.0": {"scheme": "block_based", "rate": 2.0, "block": [16, 4]}}, model, exclude=[])
    apply_masks(model, compute_masks(model, plan), plan)
    pw = _compiled(model, size, plan)["pw.0"]
    assert pw.mask is not None
    pixels = pw.tile["mt"] * pw.tile["vw"]
    # the chunks it computes: those holding image pixels, fewer than all the planes'
    assert pw.shape["live"] == live_chunks(pw.mask, pixels).sum() < pw.mask.size // pixels
    monkeypatch.setattr(rewrite, "PLANES_OUTPUT_SKIPS_PADDING", False)
    assert _compiled(model, size, plan)["pw.0"].mask is None


def test_sparse_stride2_depthwise_lets_its_expand_conv_skip_the_phases_it_never_reads(bn_model, monkeypatch):
    """A 3x3 stride-2 depthwise conv keeping kernel positions (0, 0) and (2, 2) in every channel reads
    only the even-even phase: the block-sparse expand conv writing its phase planes computes a
    quarter of them, and the model still matches PyTorch."""
    from npas_lightning.algorithms.masking import apply_masks, compute_masks
    from npas_lightning.plan import NPASScheme

    model = bn_model(lambda: Expand("silu", 3, 2))
    with torch.no_grad():
        keep = torch.zeros(3, 3)
        keep[0, 0] = keep[2, 2] = 1
        model.dw[0].weight.mul_(keep)
    plan = NPASScheme.resolve({"pw.0": {"scheme": "block_based", "rate": 2.0, "block": [16, 4]},
                               "dw.0": {"scheme": "block_punched", "rate": 4.5, "block": [8, 1]}}, model, exclude=[])
    apply_masks(model, compute_masks(model, plan), plan)  # the depthwise conv keeps its 2 nonzero positions
    records = _compiled(model, 48, plan)
    pw, dw = records["pw.0"], records["dw.0"]
    assert dw.sparse is not None and pw.mask is not None
    pixels = pw.tile["mt"] * pw.tile["vw"]
    every_phase = live_chunks(pw.mask, pixels).sum()
    assert pw.shape["live"] <= every_phase / 4 + 2  # one phase plane of four (a chunk may straddle two)
    monkeypatch.setattr(rewrite, "PLANES_OUTPUT_SKIPS_PHASES", False)
    assert _compiled(model, 48, plan)["pw.0"].shape["live"] == every_phase


def test_phase_masks_skip_chunks_and_leave_them_unwritten():
    """``conv_primfunc(phases=...)``: filter tile 0 computes phase 0 only, tile 1 phase 1 only; the
    chunks of the other phase keep what the output buffer held."""
    import tvm

    from npas_lightning.compiler.sparse_pack import pack_sparse_rows

    rng = np.random.default_rng(0)
    plane, c, f, tile = 32, 8, 16, ConvTile(8, 1, 16)
    g = ConvGeometry.make(1, c, 1, 2 * plane, f, (1, 1), 1, (0, 0, 0, 0), pixels=16).reading_rows(2 * plane)
    w = rng.standard_normal((f, c)).astype("float32")
    pk = pack_sparse_rows(w, 8)
    func, buffers = conv_primfunc(g, tile, pk.kept, counts=pk.counts, epilogue="relu", masked=True,
                                  phases=(plane, [0b01, 0b10]))
    x = rng.standard_normal((1, c, 2 * plane)).astype("float32")
    bias, mask = rng.standard_normal(f).astype("float32"), np.ones(2 * plane, "float32")
    dev = tvm.cpu()
    y = tvm.runtime.tensor(np.full((1, f, 2 * plane), 7.0, "float32"), dev)
    lib = tvm.tirx.build(func, target=_host_target())
    lib(*[tvm.runtime.tensor(a, dev) for a in (x, pk.packed, *buffers, bias, mask)], y)
    ref = np.maximum(np.einsum("fc,ncp->nfp", w, x) + bias[None, :, None], 0)
    out = y.numpy()
    np.testing.assert_allclose(out[:, :8, :plane], ref[:, :8, :plane], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[:, 8:, plane:], ref[:, 8:, plane:], rtol=1e-5, atol=1e-5)
    assert (out[:, :8, plane:] == 7).all() and (out[:, 8:, :plane] == 7).all()


def test_phase_masks_over_more_filter_tiles_than_a_word_holds():
    """40 filter tiles (two 32-bit words per phase table): each tile computes exactly the chunks of
    its mask's phases."""
    import tvm

    from npas_lightning.compiler.conv_kernel import phase_chunks
    from npas_lightning.compiler.sparse_pack import pack_sparse_rows

    rng = np.random.default_rng(1)
    plane, c, f, tile = 16, 8, 320, ConvTile(8, 1, 16)
    g = ConvGeometry.make(1, c, 1, 4 * plane, f, (1, 1), 1, (0, 0, 0, 0), pixels=16).reading_rows(4 * plane)
    w = rng.standard_normal((f, c)).astype("float32")
    pk = pack_sparse_rows(w, 8)
    masks = [int(m) for m in rng.integers(1, 16, size=f // 8)]
    func, buffers = conv_primfunc(g, tile, pk.kept, counts=pk.counts, epilogue="none", masked=True,
                                  phases=(plane, masks))
    dev = tvm.cpu()
    y = tvm.runtime.tensor(np.full((1, f, 4 * plane), 7.0, "float32"), dev)
    args = (rng.standard_normal((1, c, 4 * plane)).astype("float32"), pk.packed, *buffers,
            np.zeros(f, "float32"), np.ones(4 * plane, "float32"))
    tvm.tirx.build(func, target=_host_target())(*[tvm.runtime.tensor(a, dev) for a in args], y)
    computed = np.repeat(np.repeat(phase_chunks((plane, masks), 4, 16), 16, axis=1), 8, axis=0)
    assert ((y.numpy()[0] != 7.0) == computed).all()


def _host_target():
    from npas_lightning.compiler.targets import resolve_target

    return resolve_target("host", threads=1).tvm_target


def test_phase_bits_and_the_doctests():
    import doctest

    from npas_lightning.compiler import conv_kernel
    from npas_lightning.compiler.conv_kernel import phase_bits

    # 5x5 stride 2: positions (0,1) and (3,3) -> phases (0,1) and (1,1); a block of 2 channels
    assert phase_bits(np.array([[1, 18]]), 2, 2, (5, 5), 2).tolist() == [0b1010, 0b1010]
    assert doctest.testmod(conv_kernel).failed == 0 and doctest.testmod(rewrite).failed == 0


def test_errors_name_the_argument():
    g = ConvGeometry.make(1, 8, 12, 12, 8, (3, 3), 2, (1, 1, 1, 1), pixels=16)
    with pytest.raises(ValueError, match=r"hq=7: expected at least the conv's own 8 rows per phase plane"):
        g.reading_planes(7, 1000)
    with pytest.raises(ValueError, match=r"row=200: a 3x3 stride-2 conv over planes of 9 rows reads 237 elements "
                                         r"per row; expected row >= 237"):
        g.reading_planes(9, 200)
    g1 = ConvGeometry.make(1, 8, 4, 4, 8, (1, 1), 1, (0, 0, 0, 0), pixels=16)
    with pytest.raises(ValueError, match="masked=True needs epilogue=...: without a bias, zero padding already gives"):
        conv_primfunc(g1, ConvTile(8, 1, 16), masked=True)
    with pytest.raises(ValueError, match=r"live=3 flags: expected 1 booleans, one per pixel chunk of the output, "
                                         r"not all False, on a masked block-sparse kernel with counts=..., no cblock"):
        conv_primfunc(g1, ConvTile(8, 1, 16), np.zeros((1, 8), "int32"), counts=np.array([8]), epilogue="relu",
                      masked=True, live=(True, False, True))
    with pytest.raises(ValueError, match=r"live=1 flags: expected 1 booleans"):  # nothing to compute
        conv_primfunc(g1, ConvTile(8, 1, 16), np.zeros((1, 8), "int32"), counts=np.array([8]), epilogue="relu",
                      masked=True, live=(False,))
    with pytest.raises(ValueError, match=r"live=1 flags: expected"):  # a dense kernel computes every chunk
        conv_primfunc(g1, ConvTile(8, 1, 16), epilogue="relu", masked=True, live=(True,))
    with pytest.raises(ValueError, match=r"phases=\(0, 1 masks\): expected \(plane length >= 1, one non-negative "
                                         r"phase mask per filter tile = 1\) on a masked block-sparse kernel"):
        conv_primfunc(g1, ConvTile(8, 1, 16), np.zeros((1, 8), "int32"), counts=np.array([8]), epilogue="relu",
                      masked=True, phases=(0, [1]))
    with pytest.raises(ValueError, match=r"phases=\(16, 2 masks\): expected"):  # one mask per filter tile
        conv_primfunc(g1, ConvTile(8, 1, 16), np.zeros((1, 8), "int32"), counts=np.array([8]), epilogue="relu",
                      masked=True, phases=(16, [1, 2]))
    with pytest.raises(ValueError, match=r"phases=\(16, 1 masks\): expected"):  # a dense kernel computes them all
        conv_primfunc(g1, ConvTile(8, 1, 16), epilogue="relu", masked=True, phases=(16, [1]))
