"""The per-pattern conv kernel: packing, numerics against PyTorch, errors, and its place in compile_model.

Masks come from the project's pattern scheme (centre + 3 neighbours, library of 8, connectivity
pruning above rate 9/4); every kernel is built with ``tvm.tirx.build`` and run on real tensors.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from torch import nn

from npas_lightning.algorithms.masking import apply_masks, compute_masks
from npas_lightning.compiler import compile_model
from npas_lightning.compiler.conv_kernel import ConvGeometry, ConvTile, nchw_from_planes, planes_from_nchw
from npas_lightning.compiler.epilogue import apply_epilogue
from npas_lightning.compiler.numerics import check_kernel
from npas_lightning.compiler.pattern_kernel import pack_pattern, pattern_primfunc
from npas_lightning.compiler.targets import resolve_target
from npas_lightning.compiler.tuning import TileCache
from npas_lightning.plan import NPASScheme
from npas_lightning.schemes import get_scheme

TARGET = resolve_target("host", threads=2).tvm_target
DEV = tvm.cpu()


def _pattern_weight(shape, rate, seed):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return (w * get_scheme("pattern")(w, rate)).numpy()


def _run(x, w, stride, pad, tile, *, epilogue=None, bias=None, max_patterns=16, cblock=None):
    n, c, h, wd = x.shape
    f = w.shape[0]
    g = ConvGeometry.make(n, c, h, wd, f, (3, 3), stride, pad, pixels=tile.pixels)
    pk = pack_pattern(w, tile.ft, max_patterns=max_patterns, cblock=cblock)
    fp = pk.weights.shape[0] * tile.ft
    args = [planes_from_nchw(x, g), pk.weights, pk.channels, pk.starts]
    if epilogue:
        slots = np.zeros(fp, "float32")
        slots[: f] = bias if pk.order is None else bias[pk.order]
        args.append(slots)
    lib = tvm.tirx.build(pattern_primfunc(g, tile, pk.patterns, pk.k, epilogue=epilogue, cblock=cblock),
                         target=TARGET)
    y = tvm.runtime.empty((n, fp, g.mp), "float32", DEV)
    lib(*[tvm.runtime.tensor(np.ascontiguousarray(a), DEV) for a in args], y)
    out = y.numpy()[:, :f]
    if pk.order is not None:  # slot j holds filter order[j]
        out = out[:, np.argsort(pk.order)]
    return nchw_from_planes(out, g), pk


@pytest.mark.parametrize("ft,cblock", [(1, None), (2, None), (3, None), (1, 4), (2, 3)])
@pytest.mark.parametrize("rate", [2.25, 5.0])
def test_packing_round_trips_and_groups_by_pattern(ft, cblock, rate):
    w = _pattern_weight((13, 10, 3, 3), rate, seed=1)
    pk = pack_pattern(w, ft, cblock=cblock)
    assert np.array_equal(pk.unpack().reshape(w.shape), w)
    assert np.all(np.diff(pk.starts, axis=1) >= 0) and pk.starts[:, 0].tolist() == [0] * pk.starts.shape[0]
    blocks = 1 if cblock is None else -(-10 // cblock)
    assert pk.starts.shape[1] == blocks * len(pk.patterns) + 1 and pk.cblock == (cblock or 10)
    for b in range(blocks):  # each (block, pattern) bucket holds channels of its block only
        lo, hi = pk.starts[:, b * len(pk.patterns)], pk.starts[:, (b + 1) * len(pk.patterns)]
        for t in range(pk.channels.shape[0]):
            assert np.all(pk.channels[t, lo[t]:hi[t]] // pk.cblock == b)
    assert pk.weights.shape == (-(-13 // ft), pk.k, max(map(len, pk.patterns)), ft)
    assert pk.kept_fraction == pytest.approx(float((w != 0).mean()))
    if ft == 1:  # one filter per tile: exactly the scheme's library, no union, work = kept weights
        assert len(pk.patterns) <= 8 and all(len(p) == 4 and 4 in p for p in pk.patterns)
        assert pk.work_fraction == pytest.approx(pk.kept_fraction)
    else:
        assert pk.kept_fraction <= pk.work_fraction <= 1.0


def test_a_weight_zero_by_chance_joins_its_pattern():
    w = _pattern_weight((8, 6, 3, 3), 2.25, seed=2)
    before = pack_pattern(w, 1).patterns
    f, c = np.argwhere(np.abs(w).sum((2, 3)) > 0)[0]
    kh, kw = np.argwhere((w[f, c] != 0) & (np.arange(9).reshape(3, 3) != 4))[0]
    w[f, c, kh, kw] = 0.0
    pk = pack_pattern(w, 1)
    assert pk.patterns == before  # the 3-position kernel runs in its 4-position pattern with a 0 weight
    assert np.array_equal(pk.unpack().reshape(w.shape), w)


def test_more_patterns_than_allowed_run_as_full_kernels():
    w = _pattern_weight((16, 12, 3, 3), 2.25, seed=3)
    pk = pack_pattern(w, 2, max_patterns=4)
    assert len(pk.patterns) == 4 and pk.patterns[-1] == tuple(range(9))
    assert np.array_equal(pk.unpack().reshape(w.shape), w)


CASES = [  # n, c, h, w, f, stride, pad, rate, tile, epilogue, cblock
    (1, 6, 9, 11, 8, 1, (1, 1, 1, 1), 2.25, ConvTile(1, 2, 16), None, None),
    (2, 5, 12, 12, 21, 1, (1, 1, 1, 1), 5.0, ConvTile(2, 1, 16), "relu", None),
    (1, 7, 13, 10, 9, 2, (1, 1, 1, 1), 3.0, ConvTile(1, 1, 16), "silu", None),
    (1, 4, 8, 8, 12, 2, (0, 0, 1, 1), 2.25, ConvTile(4, 1, 16), "hardswish", None),
    (2, 8, 7, 7, 16, 1, (0, 0, 0, 0), 7.0, ConvTile(2, 2, 16), None, None),
    (1, 11, 14, 14, 10, 1, (1, 1, 1, 1), 5.0, ConvTile(1, 2, 16), "silu", 4),  # 3 channel blocks, edge block
    (2, 9, 12, 11, 7, 2, (1, 1, 1, 1), 2.25, ConvTile(2, 1, 16), "relu", 3),
    (1, 6, 10, 10, 5, 1, (1, 1, 1, 1), 3.0, ConvTile(1, 1, 16), None, 64),  # a block wider than C: one block
]


@pytest.mark.parametrize("n,c,h,wd,f,stride,pad,rate,tile,epilogue,cblock", CASES)
def test_pattern_kernel_matches_torch(n, c, h, wd, f, stride, pad, rate, tile, epilogue, cblock):
    x = np.random.default_rng(0).standard_normal((n, c, h, wd)).astype("float32")
    w = _pattern_weight((f, c, 3, 3), rate, seed=4)
    bias = np.random.default_rng(1).standard_normal(f).astype("float32")
    out, pk = _run(x, w, stride, pad, tile, epilogue=epilogue, bias=bias, cblock=cblock)
    xt = F.pad(torch.from_numpy(x), (pad[1], pad[3], pad[0], pad[2]))
    ref = F.conv2d(xt, torch.from_numpy(w), stride=stride).numpy()
    if epilogue:
        ref = apply_epilogue(ref, bias, epilogue)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_full_kernel_fallback_matches_torch():
    x = np.random.default_rng(2).standard_normal((1, 9, 10, 10)).astype("float32")
    w = _pattern_weight((10, 9, 3, 3), 2.25, seed=5)
    out, pk = _run(x, w, 1, (1, 1, 1, 1), ConvTile(2, 1, 16), max_patterns=3)
    assert pk.patterns[-1] == tuple(range(9))
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_bad_arguments_are_named():
    w = _pattern_weight((4, 3, 3, 3), 2.25, seed=6)
    with pytest.raises(ValueError, match=r"weight of shape \[4, 27\]: expected a conv weight \[F, C, KH, KW\]"):
        pack_pattern(w.reshape(4, -1))
    with pytest.raises(ValueError, match=r"ft=0: expected an integer >= 1"):
        pack_pattern(w, 0)
    with pytest.raises(ValueError, match=r"max_patterns=1: expected an integer >= 2"):
        pack_pattern(w, 1, max_patterns=1)
    with pytest.raises(ValueError, match=r"cblock=0: expected an integer >= 1 \(input channels per block\) or None"):
        pack_pattern(w, 1, cblock=0)
    with pytest.raises(ValueError, match=r"a 9x9 kernel has 81 positions: the pattern kernel takes at most 62"):
        pack_pattern(np.ones((2, 2, 9, 9), "float32"))
    g = ConvGeometry.make(1, 3, 8, 8, 4, (3, 3), 1, (1, 1, 1, 1), pixels=16)
    with pytest.raises(ValueError, match=r"patterns=\(\(4, 9\),\): expected non-empty tuples of kernel positions "
                                         r"in \[0, 9\)"):
        pattern_primfunc(g, ConvTile(1, 1, 16), ((4, 9),), k=1)
    with pytest.raises(ValueError, match=r"patterns=\(\): expected non-empty"):
        pattern_primfunc(g, ConvTile(1, 1, 16), (), k=1)
    with pytest.raises(ValueError, match=r"k=0: expected an integer >= 1"):
        pattern_primfunc(g, ConvTile(1, 1, 16), ((4,),), k=0)
    with pytest.raises(ValueError, match=r"cblock=-2: expected an integer >= 1"):
        pattern_primfunc(g, ConvTile(1, 1, 16), ((4,),), k=1, cblock=-2)
    with pytest.raises(ValueError, match=r"geometry mp=\d+ is not a multiple of the tile's 32 pixels"):
        pattern_primfunc(g, ConvTile(1, 2, 16), ((4,),), k=1)


class _ConvBnNet(nn.Module):
    """A stem, a 3x3 conv with BN and ReLU (the pattern-pruned layer), global pool, FC."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv = nn.Conv2d(16, 24, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(torch.relu(self.stem(x)))))
        return self.fc(x.mean((2, 3)))


def _pattern_pruned_net():
    torch.manual_seed(1)
    model = _ConvBnNet().eval()
    plan = NPASScheme.resolve({"conv": {"scheme": "pattern", "rate": 3.0}}, model, exclude=[])
    apply_masks(model, compute_masks(model, plan), plan)
    return model, plan


def test_compile_model_times_the_pattern_kernel_and_runs_the_cached_choice(tmp_path):
    """Tuning times both kernels for the pattern layer and caches the winner; a cache entry naming the
    pattern kernel (as a faster target would record it) makes compile_model lower the layer to it."""
    model, plan = _pattern_pruned_net()
    x = torch.randn(2, 3, 12, 12)
    path = tmp_path / "tiles.json"
    tuned = compile_model(model, x, plan=plan, tune=True, tile_cache=TileCache(path), threads=2, check=False)
    data = json.loads(path.read_text())
    (key,) = [k for k in data if k.startswith("pattern-conv-sparse|")]
    assert data[key]["tile"]["kernel"] in ("block", "pattern")
    rec = next(r for r in tuned.kernels if r.module == "conv")
    assert rec.tuned and rec.sparse["lowering"] in ("block-sparse kernel", "pattern kernel")

    data[key]["tile"] = {"kernel": "pattern", "ft": 2, "mt": 1, "vw": data[key]["tile"]["vw"], "cblock": 8}
    path.write_text(json.dumps(data))
    compiled = compile_model(model, x, plan=plan, tile_cache=TileCache(path), threads=2)
    assert compiled.numerics["ok"], compiled.numerics
    rec = next(r for r in compiled.kernels if r.module == "conv")
    assert rec.sparse["lowering"] == "pattern kernel" and rec.symbol.startswith("npas_pattern_conv")
    assert rec.epilogue == "relu" and rec.tile == {"ft": 2, "mt": 1, "vw": data[key]["tile"]["vw"]}
    assert rec.sparse["cblock"] == 8  # two blocks of the conv's 16 input channels
    assert rec.flops < rec.shape["f"] * rec.shape["c"] * 9 * 2 * 144 * 2  # fewer than the dense conv's
    assert check_kernel(rec, compiled.target.tvm_target)["max_rel"] < 1e-5
    with torch.no_grad():
        assert torch.allclose(compiled.run(x), model(x), rtol=1e-4, atol=1e-5)


class _WideNet(nn.Module):
    """A 3x3 conv wide enough (48 input channels) for channel blocks of 32."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 48, 3, padding=1)
        self.conv = nn.Conv2d(48, 32, 3, padding=1)

    def forward(self, x):
        return torch.nn.functional.silu(self.conv(torch.relu(self.stem(x)))).mean((2, 3))


@pytest.mark.parametrize("rate,lowering", [(5.0, "pattern kernel"), (3.0, "block-sparse kernel")])
def test_untuned_compile_runs_heavily_pruned_pattern_layers_on_the_pattern_kernel(tmp_path, rate, lowering):
    torch.manual_seed(2)
    model = _WideNet().eval()
    plan = NPASScheme.resolve({"conv": {"scheme": "pattern", "rate": rate}}, model, exclude=[])
    apply_masks(model, compute_masks(model, plan), plan)
    x = torch.randn(1, 3, 24, 24)  # 5 chunks of 128 pixels: enough parallel iterations for channel blocks
    compiled = compile_model(model, x, plan=plan, tile_cache=TileCache(tmp_path / "tiles.json"), threads=2)
    assert compiled.numerics["ok"], compiled.numerics
    rec = next(r for r in compiled.kernels if r.module == "conv")
    assert not rec.tuned and rec.sparse["lowering"] == lowering
    if lowering == "pattern kernel":
        assert rec.sparse["cblock"] == 32 and rec.epilogue == "silu" and rec.tile["mt"] == 8
        assert rec.sparse["density"] == pytest.approx(rec.sparse["kept_fraction"], abs=1e-3)  # no union work
    with torch.no_grad():
        assert torch.allclose(compiled.run(x), model(x), rtol=1e-4, atol=1e-5)


def test_docstring_examples_run():
    import doctest

    from npas_lightning.compiler import pattern_kernel

    assert doctest.testmod(pattern_kernel).failed == 0
