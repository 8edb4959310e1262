"""Parallel code generation: the same executable as ``tvm.compile``, run and exported; its arguments."""

import numpy as np
import pytest
import torch
from torch import nn

from npas_lightning.compiler import CompileError, compile_model
from npas_lightning.compiler.cli import main as cli_main
from npas_lightning.compiler.codegen import GROUPS_PER_WORKER, codegen_workers, function_groups
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
    x = torch.randn(1, 3, 20, 20)
    return x, compile_model(_net(), x, codegen_workers=1), compile_model(_net(), x, codegen_workers=3)


def test_parallel_build_runs_like_one_thread(one_and_three):
    x, one, three = one_and_three
    assert three.numerics["ok"]
    # the parallel build links several LLVM modules (each group's) into the executable's library
    assert len(three.executable.mod.imports[0].imports) >= 1
    assert len(one.executable.mod.imports[0].imports) == 0
    for _ in range(2):
        xi = np.random.default_rng(0).standard_normal(tuple(x.shape)).astype("float32")
        np.testing.assert_array_equal(three.run(xi), one.run(xi))


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
    assert GROUPS_PER_WORKER >= 1


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


def test_cross_compiled_cpu_code_is_split_too():
    small = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    c = compile_model(small, torch.randn(1, 3, 16, 16), target=_cross_spec("arm64-android"), check=False,
                      codegen_workers=2)
    lib = c.executable.mod.imports[0]
    groups = [m.kind for m in lib.imports]  # the other groups' modules, imported into the first
    assert lib.kind == "llvm" and len(groups) >= 1 and set(groups) == {"llvm"}


def test_gpu_targets_build_as_tvm_compile_does():
    small = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    c = compile_model(small, torch.randn(1, 3, 16, 16), target=_cross_spec("adreno-opencl"), check=False,
                      codegen_workers=2)
    assert [m.kind for m in c.executable.mod.imports[0].imports] == ["opencl"]
