"""Parallel code generation: the same executable as ``tvm.compile``, run and exported; its arguments."""

import numpy as np
import pytest
import torch
from torch import nn

from npas_lightning.compiler import CompileError, compile_model
from npas_lightning.compiler.cli import main as cli_main
from npas_lightning.compiler.codegen import (
    clear_function_cache,
    codegen_workers,
    function_groups,
)
from npas_lightning.compiler.config import compile_from_config
from npas_lightning.compiler.threads import available_cpus


class Net(nn.Module):
    """Stem, depthwise, squeeze-excite gate, 1x1 and a classifier: a dozen functions to split."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU())
        self.gate = nn.Conv2d(16, 16, 1)
        self.pw = nn.Conv2d(16, 24, 1)
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        x = self.dw(self.stem(x))
        x = self.pw(x * torch.sigmoid(self.gate(x.mean((2, 3), keepdim=True))))
        return self.head(x.mean((2, 3)))


def _net():
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture(scope="module")
def one_and_three():
    clear_function_cache()
    x = torch.randn(1, 3, 20, 20)
    return x, compile_model(_net(), x, codegen_workers=1), compile_model(_net(), x, codegen_workers=3)


def _modules(compiled) -> list[str]:
    """Kinds of the modules the VM executable links: TVM's one library, or one LLVM module per function
    (plus an empty C module the VM links when it has no library of its own)."""
    return [m.kind for m in compiled.executable.mod.imports]


def test_parallel_build_runs_like_one_thread(one_and_three):
    x, one, three = one_and_three
    assert three.numerics["ok"]
    n = three.timings["codegen_functions"]
    assert n >= 8 and three.timings["codegen_reused"] == 0
    assert _modules(three).count("llvm") == n and _modules(one) == ["llvm"]  # one module per function
    assert "codegen_functions" not in one.timings  # tvm.compile itself
    for seed in range(2):
        xi = np.random.default_rng(seed).standard_normal(tuple(x.shape)).astype("float32")
        np.testing.assert_array_equal(three.run(xi), one.run(xi))


def test_a_later_compile_reuses_the_functions_it_shares(one_and_three):
    x, one, three = one_and_three
    again = compile_model(_net(), x, codegen_workers=2)
    assert again.timings["codegen_reused"] == again.timings["codegen_functions"] == three.timings["codegen_functions"]
    wider = _net()
    wider.head = nn.Linear(24, 7)  # the classifier's function changes, the others do not
    other = compile_model(wider, x, codegen_workers=2)
    assert 0 < other.timings["codegen_reused"] < other.timings["codegen_functions"]
    with torch.no_grad():
        np.testing.assert_allclose(other.run(x), wider(x).numpy(), rtol=1e-4, atol=1e-6)
    xi = np.random.default_rng(2).standard_normal(tuple(x.shape)).astype("float32")
    np.testing.assert_array_equal(again.run(xi), one.run(xi))


def test_without_reuse_groups_are_built(monkeypatch, one_and_three):
    from npas_lightning.compiler import codegen

    x, one, _ = one_and_three
    monkeypatch.setattr(codegen, "REUSE_FUNCTIONS", False)
    grouped = compile_model(_net(), x, codegen_workers=2)
    assert grouped.timings["codegen_reused"] == 0
    assert _modules(grouped) == ["llvm"] and grouped.executable.mod.imports[0].imports  # groups in one library
    xi = np.random.default_rng(3).standard_normal(tuple(x.shape)).astype("float32")
    np.testing.assert_array_equal(grouped.run(xi), one.run(xi))


def test_the_function_cache_keeps_the_most_recent(monkeypatch):
    from npas_lightning.compiler import codegen

    monkeypatch.setattr(codegen, "FUNCTION_CACHE_SIZE", 3)
    clear_function_cache()
    x = torch.randn(1, 3, 12, 12)
    compile_model(_net(), x, codegen_workers=2, check=False)
    assert len(codegen._cache) == 3
    clear_function_cache()
    assert len(codegen._cache) == 0


def test_parallel_build_exports_one_library(one_and_three, tmp_path):
    import tvm
    from tvm import relax

    x, one, three = one_and_three
    out = three.export(tmp_path / "art")
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(out / "model.so")), tvm.cpu())
    xi = np.random.default_rng(1).standard_normal(tuple(x.shape)).astype("float32")
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(xi)).numpy(), one.run(xi))


def test_function_groups_deal_sorted_names_round_robin():
    assert function_groups(["c", "a", "b", "d", "e"], 2) == [["a", "c", "e"], ["b", "d"]]
    assert function_groups(["b", "a"], 4) == [["a"], ["b"]]  # never an empty group
    assert function_groups([], 3) == []
    with pytest.raises(ValueError, match="groups=0: expected a positive int"):
        function_groups(["a"], 0)


def test_codegen_workers_default_to_every_cpu():
    assert codegen_workers(None) == available_cpus()
    assert codegen_workers(3) == 3


@pytest.mark.parametrize("bad", [0, -2, True, 1.5, "2"])
def test_bad_codegen_workers_are_refused(bad):
    with pytest.raises(ValueError, match=rf"codegen_workers={bad!r}: expected a positive int"):
        codegen_workers(bad)


class Bessel(nn.Module):
    def forward(self, x):
        return torch.i0(x)


def test_compile_model_refuses_bad_codegen_workers_before_importing():
    # torch.i0 has no Relax converter: the argument's error comes out, so it is checked before the import
    model = nn.Sequential(nn.Conv2d(3, 4, 3), Bessel())
    with pytest.raises(CompileError, match="codegen_workers=0: expected a positive int"):
        compile_model(model, torch.randn(1, 3, 8, 8), codegen_workers=0)
    with pytest.raises(CompileError, match="codegen_workers=-1"):
        compile_from_config(model, torch.randn(1, 3, 8, 8), {"codegen_workers": -1})


def test_cli_refuses_bad_codegen_workers(capsys):
    assert cli_main(["resnet18", "--input", "1x3x32x32", "--codegen-workers", "0"]) == 2
    assert "npas-latency: error: codegen_workers=0: expected a positive int" in capsys.readouterr().err


def _cross_spec(name: str):
    import shutil

    from npas_lightning.compiler import resolve_target

    cc = shutil.which("g++") or shutil.which("clang++")
    if cc is None:
        pytest.skip("no C++ compiler to stand in for the NDK's (target resolution only checks it exists)")
    return resolve_target(name, ndk_cc=cc)


def test_cross_compiled_cpu_code_is_built_per_function_too():
    small = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    c = compile_model(small, torch.randn(1, 3, 16, 16), target=_cross_spec("arm64-android"), check=False,
                      codegen_workers=2)
    assert _modules(c).count("llvm") == c.timings["codegen_functions"] > 1


def test_gpu_targets_build_as_tvm_compile_does():
    small = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    c = compile_model(small, torch.randn(1, 3, 16, 16), target=_cross_spec("adreno-opencl"), check=False,
                      codegen_workers=2)
    assert [m.kind for m in c.executable.mod.imports[0].imports] == ["opencl"]
