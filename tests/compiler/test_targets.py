"""Target presets, their errors and the configs/compiler nodes."""

import pytest
from hydra import compose, initialize_config_dir

from npas_lightning.compiler import TargetError, known_targets, resolve_target
from npas_lightning.compiler.config import target_from_config

CONFIGS = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "configs")


def test_host_target_is_a_dict_target_with_cpu_name_and_cores():
    spec = resolve_target("host", threads=2)
    assert spec.target["kind"] == "llvm"
    assert spec.target["mtriple"].endswith("linux-gnu")
    assert spec.target["num-cores"] == 2
    assert spec.target["mcpu"] not in ("", "generic")
    assert spec.tvm_target.kind.name == "llvm"


def test_unknown_target_lists_known_ones():
    with pytest.raises(TargetError, match=r"unknown target='tpu-v9'; known targets: adreno-opencl, arm64-android, host"):
        resolve_target("tpu-v9")
    assert known_targets() == ["adreno-opencl", "arm64-android", "host"]


def test_missing_cross_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TVM_NDK_CC", raising=False)
    with pytest.raises(TargetError, match="target 'arm64-android' needs a cross compiler: set compiler.ndk_cc"):
        resolve_target("arm64-android")
    with pytest.raises(TargetError, match="ndk_cc='/nonexistent/clang' does not exist or is not executable"):
        resolve_target("adreno-opencl", ndk_cc="/nonexistent/clang")


@pytest.mark.parametrize("name", ["host", "arm64-android", "adreno-opencl"])
def test_config_presets_compose(name, monkeypatch):
    monkeypatch.setenv("TVM_NDK_CC", "/usr/bin/g++")  # any executable: resolution only checks it exists
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"compiler={name}"])
    assert cfg.compiler.target == name
    spec = target_from_config(cfg.compiler)
    assert spec.name == name
    assert spec.is_host == (name == "host")
