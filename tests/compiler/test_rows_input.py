"""1x1 convs reading the previous kernel's output rows, squeeze-excite gates folded into the weights,
and pooling over kernel rows: the copies between kernels that the rewrite removes."""

import numpy as np
import pytest
import torch
from torch import nn

from npas_lightning.compiler import compile_model
from npas_lightning.compiler.conv_kernel import (
    L2_INPUT_BYTES,
    ConvGeometry,
    ConvTile,
    conv_primfunc,
    pack_conv_weight,
    pixel_outer,
)
from npas_lightning.compiler.numerics import _run, check_kernel
from npas_lightning.compiler.sparse_pack import pack_sparse_rows
from npas_lightning.compiler.targets import resolve_target

TARGET = resolve_target("host", threads=1).tvm_target


class SEBlock(nn.Module):
    """depthwise -> squeeze-excite -> 1x1 project -> 1x1 expand (MBConv without the residual)."""

    def __init__(self):
        super().__init__()
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.SiLU())
        self.reduce = nn.Conv2d(16, 4, 1)
        self.expand = nn.Conv2d(4, 16, 1)
        self.project = nn.Sequential(nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24))
        self.pw = nn.Sequential(nn.Conv2d(24, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())

    def forward(self, x):
        x = self.dw(x)
        gate = torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return self.pw(self.project(x * gate)).mean((2, 3))


def test_gated_1x1_conv_reads_the_depthwise_rows(bn_model):
    model = bn_model(SEBlock)
    x = torch.randn(1, 16, 13, 13)
    compiled = compile_model(model, x, threads=2)
    assert compiled.numerics["ok"]
    by_module = {k.module: k for k in compiled.kernels}
    project, pw = by_module["project.0"], by_module["pw.0"]
    # the depthwise output rows are 13 + 2 columns wide; the project conv reads them gated
    assert project.shape["w"] == 15 and project.shape["gate"] and project.shape["row"] >= 13 * 15
    # the next 1x1 conv reads the project conv's rows (no gate), the same 15 columns
    assert pw.shape["w"] == 15 and not pw.shape["gate"]
    np.testing.assert_allclose(compiled.run(x).numpy(), model(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    # the per-layer check (what names a diverging layer) rebuilds these kernels with rows, gate and epilogue
    for record in compiled.kernels:
        assert check_kernel(record, compiled.target.tvm_target)["max_rel"] < 1e-5, record.module


def test_pooling_and_gate_leave_no_copy_between_kernels(bn_model, built_function_names):
    names = built_function_names(bn_model(SEBlock), torch.randn(1, 16, 13, 13))
    assert sum(n.startswith("rows_mean") for n in names) == 2  # SE pool and the final pool read kernel rows
    assert not [n for n in names if "multiply" in n]  # no gated copy of the depthwise output
    # the one crop left is the SE reduce FC's (4 outputs padded to a vector tile), not a feature map's
    assert [n for n in names if "strided_slice" in n] == [n for n in names if "strided_slice" in n and "relu" in n]
    assert len([n for n in names if "strided_slice" in n]) == 1


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("c, oh, ow, wq, row", [(12, 5, 5, 7, 48), (72, 30, 30, 32, 3840)])
def test_gated_kernel_over_rows_matches_torch(sparse, c, oh, ow, wq, row):
    """The second geometry's input (72 x 3840 floats) exceeds L2_INPUT_BYTES: pixel chunks run
    outside the filter tiles and the gated weights are recomputed for every tile of every chunk."""
    rng = np.random.default_rng(1)
    f = 20
    tile = ConvTile(8, 1, 16)
    g = ConvGeometry.make(1, c, oh, wq, f, (1, 1), 1, (0, 0, 0, 0), pixels=tile.pixels).reading_rows(row)
    assert pixel_outer(g) == (c * row * 4 > L2_INPUT_BYTES) == (c == 72)  # both loop orders are covered
    w = rng.standard_normal((f, c)).astype("float32") * (rng.random((f, c)) < 0.5)
    rows = rng.standard_normal((1, c, row)).astype("float32")  # a producer's rows: oh x wq, then a tail
    gate = rng.random((1, c)).astype("float32")
    if sparse:
        pk = pack_sparse_rows(w, 8)
        func, buffers = conv_primfunc(g, tile, pk.kept, counts=pk.counts, gate=True)
        weights, slots = [pk.packed, *buffers], pk.packed.shape[0] * 8
    else:
        func, weights, slots = conv_primfunc(g, tile, gate=True), [pack_conv_weight(w, 8)], 24
    assert [p.name for p in func.params][-2] == "G"
    out = _run(func, TARGET, [rows, *weights, gate], (1, slots, g.mp))
    x = rows[:, :, : oh * wq].reshape(1, c, oh, wq) * gate[:, :, None, None]
    ref = np.einsum("fc,nchw->nfhw", w, x)
    got = out[:, :f, : oh * wq].reshape(1, f, oh, wq)
    np.testing.assert_allclose(got[..., :ow], ref[..., :ow], rtol=1e-5, atol=1e-5)


def test_reading_rows_is_refused_where_it_cannot_work():
    g = ConvGeometry.make(1, 8, 6, 6, 8, (3, 3), 1, (1, 1, 1, 1), pixels=16)
    with pytest.raises(ValueError, match=r"a 3x3 stride-1 conv with pad \(1, 1, 1, 1\) .* cannot read rows of 64: "
                                         r"expected a 1x1 stride-1 unpadded conv with mp <= row"):
        g.reading_rows(64)
    g1 = ConvGeometry.make(1, 8, 6, 7, 8, (1, 1), 1, (0, 0, 0, 0), pixels=32)
    with pytest.raises(ValueError, match="64 outputs per row cannot read rows of 48"):
        g1.reading_rows(48)
    assert g1.reading_rows(64).x_len == 64


def test_small_maps_under_wide_kernels_are_copied_instead():
    """4x4 maps under a 5x5 depthwise: rows of 8 columns would double the 1x1 conv's pixel vectors
    (more than ROWS_INPUT_MAX_WORK), so the 1x1 conv reads the cropped map."""
    model = nn.Sequential(nn.Conv2d(16, 16, 5, padding=2, groups=16), nn.ReLU(), nn.Conv2d(16, 8, 1)).eval()
    x = torch.randn(1, 16, 4, 4)
    compiled = compile_model(model, x, threads=1)
    pw = compiled.kernels[-1]
    assert compiled.numerics["ok"] and pw.shape["w"] == 4 and "row" not in pw.shape


def test_tiny_maps_keep_the_activation_outside_the_kernel():
    """A 2x2 map fills 4 of a 16-pixel vector tile: the kernel stores the raw conv and the bias and
    activation run as a separate pass over the 4 valid pixels (EPILOGUE_MIN_VALID)."""
    model = nn.Sequential(nn.Conv2d(8, 16, 1), nn.SiLU(), nn.Conv2d(16, 16, 3, padding=1), nn.SiLU()).eval()
    for size, fused in ((2, None), (6, "silu")):
        compiled = compile_model(model, torch.randn(1, 8, size, size), threads=1)
        assert compiled.numerics["ok"] and [k.epilogue for k in compiled.kernels] == [fused, fused]
