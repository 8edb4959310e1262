"""torch.ops.npas.sparse_conv2d / sparse_linear: numerics vs the masked dense op, gradients, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from npas_lightning.sparse import SparseConv2d, SparseLinear, compact_from_dense, dense_from_compact


def _masked(shape, keep=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    mask = torch.rand(shape, generator=g) < keep
    mask.view(shape[0], -1)[0] = False  # one row keeps nothing: padded to K entirely
    mask.view(shape[0], -1)[1] = True   # one row keeps everything: K = R
    return w * mask, mask


def _compact(w, mask):
    return compact_from_dense(w.reshape(w.shape[0], -1), mask.reshape(w.shape[0], -1))


# ------------------------------------------------------------------------------------------ helpers
def test_compact_dense_round_trip_and_padding():
    w, mask = _masked((5, 12))
    values, index = compact_from_dense(w, mask)
    counts = mask.sum(1)
    assert values.shape == index.shape == (5, int(counts.max()))
    assert index.dtype == torch.int64
    assert torch.equal((index < 12).sum(1), counts)          # kept entries first, in order
    assert torch.equal(index[0], torch.full((index.shape[1],), 12))  # the empty row is all padding
    assert torch.all(index[:, 1:] >= index[:, :-1])
    assert torch.equal(dense_from_compact(values, index, 12), w)
    assert torch.equal(values[index == 12], torch.zeros(int((index == 12).sum())))


def test_compact_from_dense_refusals():
    with pytest.raises(ValueError, match=r"weight2d of shape \[2, 3, 4\]: expected a 2-D"):
        compact_from_dense(torch.zeros(2, 3, 4), torch.ones(2, 3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask of shape \[3, 2\] does not match weight2d of shape \[2, 3\]"):
        compact_from_dense(torch.zeros(2, 3), torch.ones(3, 2, dtype=torch.bool))


def test_padded_values_never_reach_the_dense_weight():
    w, mask = _masked((4, 6))
    values, index = compact_from_dense(w, mask)
    junk = values.clone()
    junk[index == 6] = 123.0
    assert torch.equal(dense_from_compact(junk, index, 6), w)


# ------------------------------------------------------------------------------------------ forward
CONV_CASES = [(k, s, g, b) for k in (1, 3, 5, 7) for s in (1, 2) for g in ("dense", "depthwise") for b in (1, 4)]


@pytest.mark.parametrize(("k", "stride", "groups", "batch"), CONV_CASES,
                         ids=[f"k{k}-s{s}-{g}-b{b}" for k, s, g, b in CONV_CASES])
def test_conv_forward_matches_masked_dense(k, stride, groups, batch):
    c_in, c_out, n_groups = (6, 10, 1) if groups == "dense" else (6, 6, 6)
    padding = (k // 2, k // 2) if batch == 1 else (k // 2, 0)  # symmetric and asymmetric padding
    w, mask = _masked((c_out, c_in // n_groups, k, k), seed=k + stride)
    values, index = _compact(w, mask)
    x = torch.randn(batch, c_in, 11, 9)
    bias = torch.randn(c_out)
    y = torch.ops.npas.sparse_conv2d(x, values, index, bias, c_in, [k, k], [stride, stride], list(padding), n_groups)
    ref = F.conv2d(x, w, bias, stride, padding, 1, n_groups)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    y0 = torch.ops.npas.sparse_conv2d(x, values, index, None, c_in, [k, k], [stride, stride], list(padding), n_groups)
    torch.testing.assert_close(y0, F.conv2d(x, w, None, stride, padding, 1, n_groups), atol=1e-5, rtol=1e-5)


def test_conv_non_square_kernel():
    w, mask = _masked((8, 4, 3, 1), seed=3)
    values, index = _compact(w, mask)
    x = torch.randn(2, 4, 7, 7)
    y = torch.ops.npas.sparse_conv2d(x, values, index, None, 4, [3, 1], [1, 2], [1, 0], 1)
    torch.testing.assert_close(y, F.conv2d(x, w, None, (1, 2), (1, 0)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(3, 16), (2, 5, 16)], ids=["2d", "3d"])
def test_linear_forward_matches_masked_dense(shape):
    w, mask = _masked((12, 16), seed=4)
    values, index = compact_from_dense(w, mask)
    x, bias = torch.randn(shape), torch.randn(12)
    y = torch.ops.npas.sparse_linear(x, values, index, bias, 16)
    assert y.shape == (*shape[:-1], 12)
    torch.testing.assert_close(y, F.linear(x, w, bias), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.ops.npas.sparse_linear(x, values, index, None, 16), F.linear(x, w),
                               atol=1e-5, rtol=1e-5)


def test_opcheck_schema_fake_and_autograd_registration():
    w, mask = _masked((6, 3, 3, 3), seed=5)
    values, index = _compact(w, mask)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    conv_args = (x, values.requires_grad_(), index, torch.randn(6, requires_grad=True), 3, [3, 3], [2, 2], [1, 1], 1)
    torch.library.opcheck(torch.ops.npas.sparse_conv2d.default, conv_args)
    wl, ml = _masked((5, 7), seed=6)
    vl, il = compact_from_dense(wl, ml)
    lin_args = (torch.randn(2, 3, 7, requires_grad=True), vl.requires_grad_(), il, torch.randn(5, requires_grad=True), 7)
    torch.library.opcheck(torch.ops.npas.sparse_linear.default, lin_args)


# ---------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("depthwise", [False, True], ids=["dense", "depthwise"])
def test_conv_gradients_match_masked_dense_layer(depthwise):
    c_in, c_out, groups = (4, 6, 1) if not depthwise else (6, 6, 6)
    w, mask = _masked((c_out, c_in // groups, 3, 3), seed=7)
    values, index = _compact(w, mask)
    values.requires_grad_()
    bias = torch.randn(c_out, requires_grad=True)
    x = torch.randn(2, c_in, 7, 7, requires_grad=True)
    g = torch.randn(2, c_out, 4, 4)
    (torch.ops.npas.sparse_conv2d(x, values, index, bias, c_in, [3, 3], [2, 2], [1, 1], groups) * g).sum().backward()

    w_ref = w.clone().requires_grad_()
    b_ref = bias.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    (F.conv2d(x_ref, w_ref, b_ref, 2, 1, 1, groups) * g).sum().backward()
    gw = w_ref.grad.reshape(c_out, -1)
    kept = index < gw.shape[1]
    torch.testing.assert_close(values.grad[kept], gw.gather(1, index.clamp(max=gw.shape[1] - 1))[kept])
    assert torch.equal(values.grad[~kept], torch.zeros(int((~kept).sum())))  # padding: zero grad
    assert (~kept).any()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(bias.grad, b_ref.grad)


def test_unbatched_conv_input():
    w, mask = _masked((6, 4, 3, 3), seed=12)
    values, index = _compact(w, mask)
    values.requires_grad_()
    x = torch.randn(4, 7, 7, requires_grad=True)
    y = torch.ops.npas.sparse_conv2d(x, values, index, None, 4, [3, 3], [1, 1], [1, 1], 1)
    torch.testing.assert_close(y, F.conv2d(x.detach(), w, None, 1, 1), atol=1e-5, rtol=1e-5)
    y.square().sum().backward()
    xb = x.detach()[None].requires_grad_()
    vb = values.detach().clone().requires_grad_()
    torch.ops.npas.sparse_conv2d(xb, vb, index, None, 4, [3, 3], [1, 1], [1, 1], 1).square().sum().backward()
    torch.testing.assert_close(x.grad, xb.grad[0])
    torch.testing.assert_close(values.grad, vb.grad)


def test_linear_gradients_match_masked_dense_layer():
    w, mask = _masked((6, 10), seed=8)
    values, index = compact_from_dense(w, mask)
    values.requires_grad_()
    bias = torch.randn(6, requires_grad=True)
    x = torch.randn(2, 3, 10, requires_grad=True)
    g = torch.randn(2, 3, 6)
    (torch.ops.npas.sparse_linear(x, values, index, bias, 10) * g).sum().backward()
    w_ref, b_ref, x_ref = (t.detach().clone().requires_grad_() for t in (w, bias, x))
    (F.linear(x_ref, w_ref, b_ref) * g).sum().backward()
    kept = index < 10
    torch.testing.assert_close(values.grad[kept], w_ref.grad.gather(1, index.clamp(max=9))[kept])
    assert torch.equal(values.grad[~kept], torch.zeros(int((~kept).sum())))
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(bias.grad, b_ref.grad)


def test_a_tiny_sparse_model_trains():
    torch.manual_seed(0)
    conv, fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8 * 4 * 4, 4)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.5)
        fc.weight.mul_(torch.rand_like(fc.weight) < 0.5)
    model = nn.Sequential(SparseConv2d.from_dense(conv), nn.ReLU(), nn.Identity(), nn.Flatten(),
                          SparseLinear.from_dense(fc))
    zeros_before = [m.dense_weight() == 0 for m in (model[0], model[4])]
    x, y = torch.randn(16, 3, 4, 4), torch.randint(0, 4, (16,))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    for m, zeros in zip((model[0], model[4]), zeros_before, strict=True):
        dense = m.dense_weight()
        assert torch.equal(dense[zeros], torch.zeros(int(zeros.sum())))  # pruned positions stay zero
        assert bool((dense[~zeros] != 0).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_forward_gradients_opcheck_and_compile():
    dev = torch.device("cuda")
    for groups, c_in, c_out in ((1, 8, 16), (8, 8, 8)):
        w, mask = _masked((c_out, c_in // groups, 3, 3), seed=9)
        values, index = (t.to(dev) for t in _compact(w, mask))
        values.requires_grad_()
        w = w.to(dev).requires_grad_()
        x = torch.randn(4, c_in, 10, 10, device=dev)
        y = torch.ops.npas.sparse_conv2d(x, values, index, None, c_in, [3, 3], [2, 2], [1, 1], groups)
        ref = F.conv2d(x, w, None, 2, 1, 1, groups)
        torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)
        g = torch.randn_like(y)
        (y * g).sum().backward()
        (ref * g).sum().backward()
        gw = w.grad.reshape(c_out, -1)
        kept = index < gw.shape[1]
        torch.testing.assert_close(values.grad[kept], gw.gather(1, index.clamp(max=gw.shape[1] - 1))[kept],
                                   atol=1e-4, rtol=1e-4)
        assert not values.grad[~kept].any()
        torch.library.opcheck(torch.ops.npas.sparse_conv2d.default,
                              (x, values, index, None, c_in, [3, 3], [2, 2], [1, 1], groups))
    wl, ml = _masked((6, 10), seed=10)
    vl, il = (t.to(dev) for t in compact_from_dense(wl, ml))
    xl = torch.randn(3, 10, device=dev)
    torch.testing.assert_close(torch.ops.npas.sparse_linear(xl, vl, il, None, 10), F.linear(xl, wl.to(dev)),
                               atol=1e-4, rtol=1e-4)
    torch.library.opcheck(torch.ops.npas.sparse_linear.default, (xl, vl.requires_grad_(), il, None, 10))
    conv = nn.Conv2d(8, 16, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.3)
    model = nn.Sequential(SparseConv2d.from_dense(conv), nn.ReLU()).to(dev)
    x = torch.randn(2, 8, 12, 12, device=dev)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)
