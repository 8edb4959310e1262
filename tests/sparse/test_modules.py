"""SparseConv2d / SparseLinear: from_dense, to_dense, state_dict, torch.export, refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from npas_lightning.sparse import SparseConv2d, SparseLinear


def _pruned_conv(c_in=6, c_out=8, k=3, groups=1, keep=0.4, seed=0, **kw):
    torch.manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, k, groups=groups, **kw)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < keep)
    return conv.eval()


def _pruned_linear(seed=0):
    torch.manual_seed(seed)
    fc = nn.Linear(12, 5)
    with torch.no_grad():
        fc.weight.mul_(torch.rand_like(fc.weight) < 0.5)
    return fc


@pytest.mark.parametrize(("kw", "groups"), [({"stride": 2, "padding": 1}, 1), ({"padding": (1, 0)}, 6),
                                            ({"bias": False}, 2)], ids=["s2", "depthwise", "grouped-nobias"])
def test_conv_from_dense_to_dense(kw, groups):
    conv = _pruned_conv(c_in=6, c_out=6 if groups == 6 else 8, groups=groups, **kw)
    sparse = SparseConv2d.from_dense(conv, scheme="block_punched")
    assert (sparse.in_channels, sparse.out_channels, sparse.groups) == (conv.in_channels, conv.out_channels, groups)
    assert (sparse.kernel_size, sparse.stride, sparse.padding) == (conv.kernel_size, conv.stride, conv.padding)
    assert sparse.scheme == "block_punched"
    assert isinstance(sparse.values, nn.Parameter) and "index" in dict(sparse.named_buffers())
    assert (sparse.bias is None) == (conv.bias is None)
    assert sparse.density == pytest.approx(float((conv.weight != 0).float().mean()))
    assert torch.equal(sparse.dense_weight(), conv.weight.detach())
    x = torch.randn(2, 6, 9, 9)
    torch.testing.assert_close(sparse(x), conv(x), atol=1e-5, rtol=1e-5)
    back = sparse.to_dense()
    assert isinstance(back, nn.Conv2d) and torch.equal(back(x), conv(x))


def test_explicit_mask_keeps_stored_zeros():
    conv = _pruned_conv()
    mask = torch.ones_like(conv.weight, dtype=torch.bool)  # a structural mask may cover zeros
    sparse = SparseConv2d.from_dense(conv, mask)
    assert sparse.density == 1.0 and sparse.values.shape == (8, 54)
    assert torch.equal(sparse.dense_weight(), conv.weight.detach())


def test_linear_from_dense_to_dense():
    fc = _pruned_linear()
    sparse = SparseLinear.from_dense(fc, scheme="block_based")
    assert (sparse.in_features, sparse.out_features) == (12, 5)
    x = torch.randn(3, 4, 12)
    torch.testing.assert_close(sparse(x), fc(x), atol=1e-6, rtol=1e-6)
    assert torch.equal(sparse.to_dense()(x), fc(x))
    assert sparse.density == pytest.approx(float((fc.weight != 0).float().mean()))


def test_state_dict_round_trip_adopts_the_checkpoint_structure():
    src = SparseConv2d.from_dense(_pruned_conv(seed=1, keep=0.3))
    dst = SparseConv2d.from_dense(_pruned_conv(seed=2, keep=0.7))  # another K
    assert dst.values.shape != src.values.shape
    sd = src.state_dict()
    assert set(sd) == {"values", "index", "bias"}
    dst.load_state_dict(sd)
    x = torch.randn(1, 6, 7, 7)
    assert torch.equal(dst(x), src(x))
    assert dst.density == src.density
    lin_src, lin_dst = SparseLinear.from_dense(_pruned_linear(3)), SparseLinear.from_dense(_pruned_linear(4))
    lin_dst.load_state_dict(lin_src.state_dict())
    assert torch.equal(lin_dst.index, lin_src.index) and torch.equal(lin_dst.values, lin_src.values)


def test_torch_export_shows_the_custom_op_nodes():
    model = nn.Sequential(
        SparseConv2d.from_dense(_pruned_conv(c_in=3, c_out=8, padding=1)), nn.ReLU(),
        SparseConv2d.from_dense(_pruned_conv(c_in=8, c_out=8, groups=8, padding=1)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), SparseLinear.from_dense(nn.Linear(8, 4)),
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    ep = torch.export.export(model, (x,))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count("npas.sparse_conv2d.default") == 2
    assert targets.count("npas.sparse_linear.default") == 1
    assert not any("convolution" in t or t.startswith("aten.conv") for t in targets)
    torch.testing.assert_close(ep.module()(x), model(x))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"dilation": 2}, r"dilation=\(2, 2\): SparseConv2d supports dilation 1 only"),
        ({"padding": "same"}, r"padding='same': SparseConv2d needs explicit integer padding"),
        ({"padding": 1, "padding_mode": "reflect"}, r"padding_mode='reflect': SparseConv2d supports padding_mode='zeros' only"),
    ],
)
def test_conv_refusals(kw, match):
    with pytest.raises(ValueError, match=match):
        SparseConv2d.from_dense(nn.Conv2d(4, 4, 3, **kw))


def test_other_refusals():
    conv = _pruned_conv()
    with pytest.raises(ValueError, match=r"mask of shape \[8, 6\] does not match the conv weight of shape \[8, 6, 3, 3\]"):
        SparseConv2d.from_dense(conv, torch.ones(8, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"scheme='blocky': expected one of the registered schemes"):
        SparseConv2d.from_dense(conv, scheme="blocky")
    with pytest.raises(ValueError, match=r"conv: expected a torch.nn.Conv2d, got Linear"):
        SparseConv2d.from_dense(nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"linear: expected a torch.nn.Linear, got Conv2d"):
        SparseLinear.from_dense(conv)
    with pytest.raises(ValueError, match=r"expected two \[F, K\] tensors of one shape"):
        SparseLinear(torch.zeros(3, 2), torch.zeros(3, 1, dtype=torch.long), None, in_features=4)
    with pytest.raises(ValueError, match=r"index values must lie in \[0, 4\] \(reduction length 4, 4 = padding\), got \[0, 5\]"):
        SparseLinear(torch.zeros(1, 2), torch.tensor([[0, 5]]), None, in_features=4)
    with pytest.raises(ValueError, match=r"index dtype torch.float32: expected an integer tensor"):
        SparseLinear(torch.zeros(1, 2), torch.zeros(1, 2), None, in_features=4)
    with pytest.raises(ValueError, match=r"groups=4 does not divide in_channels=6"):
        SparseConv2d(torch.zeros(4, 2), torch.zeros(4, 2, dtype=torch.long), None, in_channels=6, kernel_size=1, groups=4)


def test_docstring_examples_run():
    import doctest

    from npas_lightning.sparse import convert, modules, ops, structure

    for module in (modules, ops, structure, convert):
        result = doctest.testmod(module)
        assert result.failed == 0, module.__name__
