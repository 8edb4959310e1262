"""compile_model on a small CNN covering every kernel kind; run, measure, export; errors."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from npas_lightning.compiler import CompileError, NumericsError, UnsupportedOpError, compile_model


class SqueezeExcite(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.reduce = nn.Conv2d(c, 4, 1)
        self.expand = nn.Conv2d(4, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(s))))


class TinyNet(nn.Module):
    """conv+BN+hardswish, stride-2 depthwise 5x5, SE, 1x1 (non-divisible filters), pooling, softmax."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(12),
                                  nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(12, 12, 5, stride=2, padding=2, groups=12, bias=False),
                                nn.BatchNorm2d(12), nn.ReLU())
        self.se = SqueezeExcite(12)
        self.pw = nn.Conv2d(12, 21, 1)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.head = nn.Linear(21, 10)

    def forward(self, x):
        x = self.pw(self.se(self.dw(self.stem(x))))
        x = self.pool(x).mean((2, 3))
        return torch.softmax(self.head(x), dim=-1)


def _tiny():
    torch.manual_seed(0)
    m = TinyNet().eval()
    for bn in (m.stem[1], m.dw[1]):  # non-trivial BN statistics so folding is exercised
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return m


@pytest.fixture(scope="module")
def compiled():
    return _tiny(), compile_model(_tiny(), torch.randn(2, 3, 23, 23), threads=2)


def test_compile_run_matches_torch(compiled):
    model, c = compiled
    assert c.numerics["ok"] and c.numerics["max_rel"] < 1e-4
    kinds = sorted({k.kind for k in c.kernels})
    assert kinds == ["conv", "dense", "depthwise"]
    assert [k.module for k in c.kernels][:2] == ["stem.0", "dw.0"]
    x = torch.randn(2, 3, 23, 23)
    out = c.run(x)
    assert isinstance(out, torch.Tensor)
    with torch.no_grad():
        np.testing.assert_allclose(out.numpy(), model(x).numpy(), rtol=1e-4, atol=1e-6)


def test_measure_returns_stats(compiled):
    _, c = compiled
    st = c.measure(number=2, repeat=3, warmup=1)
    assert st.runs == 2 and st.repeats == 3 and st.warmup == 1 and st.threads == 2
    assert st.target == "host" and st.input_shape == (2, 3, 23, 23) and st.device == "local"
    assert 0 < st.min_ms <= st.median_ms and st.std_ms >= 0
    with pytest.raises(ValueError, match="number must be a positive int, got 0"):
        c.measure(number=0)


def test_export_writes_library_params_manifest(compiled, tmp_path):
    _, c = compiled
    out = c.export(tmp_path / "art")
    man = json.loads((out / "manifest.json").read_text())
    assert (out / "model.so").stat().st_size > 0
    assert "stem.0.weight" in np.load(out / "params.npz")
    assert man["input_shape"] == [2, 3, 23, 23] and man["plan_hash"] == "dense"
    assert man["target"]["tvm"]["kind"] == "llvm" and man["versions"]["tvm"].startswith("0.27")
    assert [k["epilogue"] for k in man["kernels"] if k["kind"] != "dense"] == ["hardswish", "relu", "none"]
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(out / "model.so")), tvm.cpu())
    x = np.random.default_rng(0).standard_normal((2, 3, 23, 23)).astype("float32")
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), c.run(x), rtol=1e-6)


def test_wrong_input_shape_is_refused(compiled):
    _, c = compiled
    with pytest.raises(CompileError, match=r"input shape \(1, 3, 23, 23\) does not match the compiled input_shape"):
        c.run(np.zeros((1, 3, 23, 23), "float32"))


class Bessel(nn.Module):
    def forward(self, x):
        return torch.i0(x)


def test_unsupported_op_names_op_and_module():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), Bessel()))
    with pytest.raises(UnsupportedOpError, match=r"unsupported op aten.i0.default in module '1.1' \(Bessel\)"):
        compile_model(model, torch.randn(1, 3, 8, 8), check=False)


def test_bad_arguments_are_refused():
    with pytest.raises(CompileError, match="example_input must be a float32 torch.Tensor"):
        compile_model(nn.Conv2d(3, 4, 3), torch.zeros(1, 3, 8, 8, dtype=torch.int64))
    with pytest.raises(CompileError, match="plan must be an NPASScheme, its dict form or None, got list"):
        compile_model(nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8), plan=[1])


def test_numerics_error_names_the_first_diverging_layer(monkeypatch):
    """Corrupt the packed weight of the depthwise kernel only (a deliberate fault injected in this
    test) and check that the numerics check names that layer."""
    from npas_lightning.compiler import rewrite

    real = rewrite.pack_depthwise_weight
    monkeypatch.setattr(rewrite, "pack_depthwise_weight", lambda w: real(w) * 1.5)
    with pytest.raises(NumericsError, match=r"first diverging layer: 'dw.0' \(depthwise kernel"):
        compile_model(_tiny(), torch.randn(1, 3, 16, 16), threads=2)


def test_tuning_measures_grid_and_caches_best(tmp_path):
    from npas_lightning.compiler.tuning import TileCache

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()
    x = torch.randn(1, 3, 6, 6)
    path = tmp_path / "tiles.json"
    c1 = compile_model(model, x, tune=True, tile_cache=path, threads=1)
    assert all(k.tuned for k in c1.kernels) and c1.numerics["ok"]
    cache = json.loads(path.read_text())
    assert len(cache) == 2 and {k.split("|")[0] for k in cache} == {"conv", "dense"}
    assert all(v["seconds"] > 0 for v in cache.values())
    # a second compile without tuning reuses the measured tiles
    c2 = compile_model(model, x, tune=False, tile_cache=TileCache(path), threads=1)
    assert [k.tile for k in c2.kernels] == [k.tile for k in c1.kernels] and all(k.tuned for k in c2.kernels)


def test_repeated_local_measurements_reuse_the_loaded_library():
    from npas_lightning.compiler import compile_model

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()).eval()
    compiled = compile_model(model, torch.randn(1, 3, 16, 16))
    first = compiled.measure(number=1, repeat=1, warmup=0)
    loaded = compiled._local_loaded
    second = compiled.measure(number=1, repeat=2, warmup=1)
    assert loaded is not None and compiled._local_loaded is loaded
    assert first.repeats == 1 and second.repeats == 2 and second.median_ms > 0


def test_layers_of_equal_shape_share_one_kernel():
    """Structurally equal kernels (same shape, tile and structure) are generated once and called twice."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1)).eval()
    x = torch.randn(1, 8, 16, 16)
    c = compile_model(model, x)
    symbols = [k.symbol for k in c.kernels]
    assert len(symbols) == 3 and symbols[0] == symbols[1] != symbols[2]
    np.testing.assert_allclose(c.run(x).numpy(), model(x).detach().numpy(), rtol=1e-4, atol=1e-4)
