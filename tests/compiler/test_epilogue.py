"""Kernel epilogues: bias + activation found in the Relax graph and computed in the kernels."""

import numpy as np
import pytest
import torch
from torch import nn

from npas_lightning.compiler import compile_model
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
from npas_lightning.compiler.epilogue import (
    ACTIVATIONS,
    activation_expr,
    apply_epilogue,
    fast_exp,
    find_epilogues,
    kernel_bias,
)
from npas_lightning.compiler.numerics import _run
from npas_lightning.compiler.sparse_pack import (
    depthwise_block_counts,
    pack_sparse_depthwise,
    pack_sparse_rows,
)
from npas_lightning.compiler.targets import resolve_target

TARGET = resolve_target("host", threads=1).tvm_target


def _act(name: str) -> nn.Module:
    return {"none": nn.Identity(), "relu": nn.ReLU(), "silu": nn.SiLU(), "hardswish": nn.Hardswish()}[name]


class ActNet(nn.Module):
    """conv+BN+act for every activation, a depthwise conv, and a biased value with a second use."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Sequential(nn.Conv2d(8 if i else 3, 8, 3, padding=1, bias=False),
                                                 nn.BatchNorm2d(8), _act(a)) for i, a in enumerate(ACTIVATIONS))
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False), nn.BatchNorm2d(8),
                                nn.SiLU())
        self.shared = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        for block in self.convs:
            x = block(x)
        z = self.shared(self.dw(x))
        return torch.relu(z) + z  # z has two uses: only the bias goes into the kernel


def test_chains_are_found_in_the_folded_graph(bn_model):
    import tvm
    from tvm import relax
    from tvm.relax.transform import FoldBatchnormToConv2D

    from npas_lightning.compiler.fold import fold_constants
    from npas_lightning.compiler.frontend import import_model

    imported = import_model(bn_model(ActNet), torch.randn(1, 3, 16, 16))
    seq = [FoldBatchnormToConv2D(), relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings()]
    mod = fold_constants(tvm.transform.Sequential(seq)(imported.mod))
    acts = [chain.act for chain in find_epilogues(mod["main"]).values()]
    assert acts == [*ACTIVATIONS, "silu", "none"]


def test_compiled_model_computes_epilogues_in_its_kernels(bn_model):
    model = bn_model(ActNet)
    x = torch.randn(1, 3, 16, 16)
    compiled = compile_model(model, x, threads=2)
    assert compiled.numerics["ok"]
    assert [k.epilogue for k in compiled.kernels] == [*ACTIVATIONS, "silu", "none"]
    assert all(k.bias is not None and k.bias.shape == (8,) for k in compiled.kernels)
    np.testing.assert_allclose(compiled.run(x).numpy(), model(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_no_activation_is_left_outside_the_kernels(bn_model, built_function_names):
    names = built_function_names(bn_model(ActNet), torch.randn(1, 3, 16, 16))
    assert not [n for n in names if "sigmoid" in n or "clip" in n or "divide" in n]


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("kind", ["conv", "sparse_conv", "depthwise", "sparse_depthwise", "sparse_depthwise_counts"])
def test_kernel_epilogue_matches_reference(kind, act):
    rng = np.random.default_rng(0)
    depthwise = "depthwise" in kind
    c, f = 8, 8 if depthwise else 12  # 12 filters: the last filter tile of 8 is padding
    g = ConvGeometry.make(1, c, 9, 9, f, (3, 3), 2, (1, 1, 1, 1), pixels=16)
    tile = ConvTile(1 if depthwise else 8, 1, 16)
    w = rng.standard_normal((f, 1 if depthwise else c, 3, 3)).astype("float32")
    w *= rng.random(w.shape) < 0.4
    bias = (rng.standard_normal(f) * 3).astype("float32")
    order = None
    if kind == "conv":
        func, weights = conv_primfunc(g, tile, epilogue=act), [pack_conv_weight(w, 8)]
    elif kind == "sparse_conv":
        pk = pack_sparse_rows(w.reshape(f, -1), 8)
        func, buffers = conv_primfunc(g, tile, pk.kept, counts=pk.counts, epilogue=act)
        weights, order = [pk.packed, *buffers], pk.order
    elif kind == "depthwise":
        func, weights = depthwise_primfunc(g, tile, epilogue=act), [pack_depthwise_weight(w)]
    else:
        packed, kept = pack_sparse_depthwise(pack_depthwise_weight(w), 2)
        counts = depthwise_block_counts(w, 2) if kind.endswith("counts") else None
        assert counts is None or counts.min() < counts.max()  # blocks stopping at different counts
        func, shift = depthwise_primfunc(g, tile, kept, 2, epilogue=act, counts=counts)
        weights = [packed, shift]
    slots = f if depthwise else weights[0].shape[0] * tile.ft
    assert [p.name for p in func.params][-2] == "B"
    x = (rng.standard_normal((1, c, 9, 9)) * 3).astype("float32")
    out = _run(func, TARGET, [planes_from_nchw(x, g), *weights, kernel_bias(bias, slots, order)], (1, slots, g.mp))
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=2, padding=1,
                                     groups=c if depthwise else 1).numpy()
    np.testing.assert_allclose(nchw_from_planes(out, g), apply_epilogue(ref, bias, act), rtol=1e-5, atol=1e-5)


def _rewrites_its_output(func) -> bool:
    """Whether a kernel stores into its output ``Y`` a value read from ``Y`` (a tile re-read for the
    epilogue; the channel-blocked kernel's reload of its partial sums goes to the accumulators)."""
    return any("Y[" in rhs for lhs, _, rhs in (line.strip().partition(" = ") for line in func.script().splitlines())
               if lhs.startswith("Y["))


@pytest.mark.parametrize("in_registers", [True, False])
@pytest.mark.parametrize("kind", ["sparse_conv", "channel_blocked", "pattern"])
def test_ir_builder_kernels_apply_the_epilogue_on_the_accumulators_or_after_the_store(monkeypatch, kind,
                                                                                      in_registers):
    """``EPILOGUE_IN_REGISTERS`` picks where the block-sparse, channel-blocked and per-pattern kernels
    compute bias + SiLU: same outputs, and only the stored-then-re-read form rewrites its output (the
    memoised builds are keyed by it, so flipping it rebuilds)."""
    from npas_lightning.compiler import conv_kernel
    from npas_lightning.compiler.pattern_kernel import pack_pattern, pattern_primfunc
    from npas_lightning.schemes import get_scheme

    monkeypatch.setattr(conv_kernel, "EPILOGUE_IN_REGISTERS", in_registers)
    rng = np.random.default_rng(1)
    c, f = 16, 16
    g = ConvGeometry.make(1, c, 9, 9, f, (3, 3), 1, (1, 1, 1, 1), pixels=16)
    tile = ConvTile(8, 1, 16)
    w = torch.randn(f, c, 3, 3, generator=torch.Generator().manual_seed(1))
    w = (w * get_scheme("pattern")(w, 2.25)).numpy() if kind == "pattern" else \
        w.numpy() * (rng.random((f, c, 3, 3)) < 0.4)
    bias = (rng.standard_normal(f) * 3).astype("float32")
    order = None
    if kind == "pattern":
        pk = pack_pattern(w, tile.ft)
        func = pattern_primfunc(g, tile, pk.patterns, pk.k, epilogue="silu")
        weights, order = [pk.weights, pk.channels, pk.starts], pk.order
    else:
        pk = pack_sparse_rows(w.reshape(f, -1), 8)
        func, buffers = conv_primfunc(g, tile, pk.kept, counts=pk.counts, epilogue="silu",
                                      cblock=8 if kind == "channel_blocked" else None)
        weights, order = [pk.packed, *buffers], pk.order
    assert _rewrites_its_output(func) is not in_registers
    slots = weights[0].shape[0] * tile.ft
    x = (rng.standard_normal((1, c, 9, 9)) * 3).astype("float32")
    out = _run(func, TARGET, [planes_from_nchw(x, g), *weights, kernel_bias(bias, slots, order)], (1, slots, g.mp))
    out = out[:, :f] if order is None else out[:, :f][:, np.argsort(order)]
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()
    np.testing.assert_allclose(nchw_from_planes(out, g), apply_epilogue(ref, bias, "silu"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_registers", [True, False])
def test_uneven_depthwise_applies_the_epilogue_on_the_accumulators_or_after_the_store(monkeypatch, in_registers):
    """The depthwise kernel stopping at each block's count follows ``EPILOGUE_IN_REGISTERS`` too."""
    from npas_lightning.compiler import conv_kernel

    monkeypatch.setattr(conv_kernel, "EPILOGUE_IN_REGISTERS", in_registers)
    rng = np.random.default_rng(2)
    c = 12
    g = ConvGeometry.make(1, c, 9, 9, c, (3, 3), 1, (1, 1, 1, 1), pixels=16)
    w = rng.standard_normal((c, 1, 3, 3)).astype("float32") * (rng.random((c, 1, 3, 3)) < 0.4)
    packed, kept = pack_sparse_depthwise(pack_depthwise_weight(w), 1)
    counts = depthwise_block_counts(w, 1)
    assert counts.min() < counts.max()
    func, shift = depthwise_primfunc(g, ConvTile(1, 1, 16), kept, 1, epilogue="silu", counts=counts)
    assert _rewrites_its_output(func) is not in_registers
    bias = (rng.standard_normal(c) * 3).astype("float32")
    x = (rng.standard_normal((1, c, 9, 9)) * 3).astype("float32")
    out = _run(func, TARGET, [planes_from_nchw(x, g), packed, shift, bias], (1, c, g.mp))
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1, groups=c).numpy()
    np.testing.assert_allclose(nchw_from_planes(out, g), apply_epilogue(ref, bias, "silu"), rtol=1e-5, atol=1e-5)


def test_kernels_without_epilogue_keep_their_arguments():
    g = ConvGeometry.make(1, 8, 6, 6, 8, (3, 3), 1, (1, 1, 1, 1), pixels=16)
    pk = pack_sparse_rows(np.ones((8, 72), "float32"), 8)
    func, _ = conv_primfunc(g, ConvTile(8, 1, 16), pk.kept, counts=pk.counts)
    assert [p.name for p in func.params] == ["X", "W", "Kc", "Ks", "Y"]


@pytest.mark.parametrize("negate", [False, True])
def test_fast_exp_is_accurate_and_saturates(negate):
    from tvm import te

    xs = np.concatenate([np.linspace(-87, 88, 3501), [-1e4, -100.0, 100.0, 1e4]]).astype("float32")
    x = te.placeholder(xs.shape, name="x")
    arg = (lambda i: -x[i]) if negate else (lambda i: x[i])  # negate=True computes exp(-(-x))
    func = te.create_prim_func([x, te.compute(x.shape, lambda i: fast_exp(arg(i), negate=negate), name="y")])
    out = _run(func, TARGET, [xs], xs.shape)
    np.testing.assert_allclose(out[:-4], np.exp(xs[:-4].astype("float64")), rtol=1e-6)
    assert out[0] > 0 and out[-4] == out[-3] == 0.0 and np.isfinite(out[-2:]).all() and out[-1] > 1e38


def test_kernel_bias_follows_the_filter_order_and_pads_with_zero():
    b = np.array([1.0, 2.0, 3.0], "float32")
    assert kernel_bias(b, 4).tolist() == [1.0, 2.0, 3.0, 0.0]
    assert kernel_bias(b, 4, np.array([2, 0, 1])).tolist() == [3.0, 1.0, 2.0, 0.0]


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match=r"act='gelu': expected one of \('none', 'relu', 'silu', 'hardswish'\)"):
        apply_epilogue(np.zeros((1, 1, 1)), np.zeros(1), "gelu")
    with pytest.raises(ValueError, match=r"act='gelu': expected one of"):
        activation_expr("gelu", None)
