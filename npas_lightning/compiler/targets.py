"""Target presets and their resolution to TVM dict targets.

TVM 0.27 only accepts dict targets; the host preset pins the triple and asks LLVM for the host CPU
name (``tvm.codegen.llvm.GetHostCPUName``) because ``mcpu: native`` silently falls back to generic
code (see shared/design/TVM-NOTES.md).

Example:
    >>> spec = resolve_target("host")
    >>> spec.tvm_target.kind.name
    'llvm'
"""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TargetError", "TargetSpec", "known_targets", "resolve_target", "host_cpu_name"]


class TargetError(ValueError):
    """A target name, a target option or a cross compiler is unusable."""


def host_cpu_name() -> str:
    """The LLVM name of this machine's CPU (e.g. ``znver4``, ``emeraldrapids``)."""
    import tvm

    return str(tvm.get_global_func("tvm.codegen.llvm.GetHostCPUName")())


def _host_triple() -> str:
    machine = platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    return f"{arch}-linux-gnu"


def _host_vector_lanes(mcpu: str) -> int:
    import tvm

    feats = tvm.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures")()
    names = {str(k) for k, v in dict(feats).items() if bool(v)}
    if "avx512f" in names:
        return 16
    if "avx2" in names or "avx" in names:
        return 8
    return 4


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target: the TVM target dict plus what the compiler needs to know about it.

    ``name`` is the preset, ``target`` the dict handed to ``tvm.target.Target``, ``vector_lanes``
    float32 lanes per SIMD register (tile sizes derive from it), ``cross_compiler`` the path of the
    C compiler used by ``export_library`` (None: the system compiler, host only), ``device`` the
    TVM device kind ("cpu" or "opencl").
    """

    name: str
    target: dict[str, Any]
    vector_lanes: int = 16
    cross_compiler: str | None = None
    device: str = "cpu"
    is_host: bool = True
    host: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tvm_target(self):
        """``tvm.target.Target`` (with ``host`` attached for GPU targets)."""
        import tvm

        if self.host is not None:
            return tvm.target.Target(self.target, host=self.host)
        return tvm.target.Target(self.target)

    def key(self) -> str:
        """Stable string identifying the generated code (used in cache keys)."""
        items = sorted((k, str(v)) for k, v in self.target.items())
        host = sorted((k, str(v)) for k, v in (self.host or {}).items())
        return f"{self.name}|{items}|{host}"

    def fcompile(self):
        """The ``fcompile`` for ``export_library``: None (system compiler) or the cross compiler."""
        if self.cross_compiler is None:
            return None
        from tvm.support import cc

        return cc.cross_compiler(self.cross_compiler)


def _host(threads: int | None = None, **_: Any) -> TargetSpec:
    mcpu = host_cpu_name()
    cores = int(threads or os.cpu_count() or 1)
    tgt = {"kind": "llvm", "mtriple": _host_triple(), "mcpu": mcpu, "num-cores": cores}
    return TargetSpec("host", tgt, vector_lanes=_host_vector_lanes(mcpu))


def _find_compiler(ndk_cc: str | None, name: str, env_var: str = "TVM_NDK_CC") -> str:
    path = ndk_cc or os.environ.get(env_var)
    if not path:
        raise TargetError(
            f"target {name!r} needs a cross compiler: set compiler.ndk_cc (e.g. "
            f"<ndk>/toolchains/llvm/prebuilt/linux-x86_64/bin/aarch64-linux-android28-clang++) "
            f"or the environment variable {env_var}"
        )
    found = shutil.which(path) or (path if os.path.isfile(path) and os.access(path, os.X_OK) else None)
    if found is None:
        raise TargetError(
            f"target {name!r}: cross compiler ndk_cc={path!r} does not exist or is not executable; "
            "give the full path of the NDK clang++ for aarch64-linux-android"
        )
    return found


def _arm64_android(threads: int | None = None, ndk_cc: str | None = None, mcpu: str = "cortex-a76",
                   **_: Any) -> TargetSpec:
    cc_path = _find_compiler(ndk_cc, "arm64-android")
    tgt = {"kind": "llvm", "mtriple": "aarch64-linux-android", "mcpu": mcpu, "mattr": ["+neon"],
           "num-cores": int(threads or 4)}
    return TargetSpec("arm64-android", tgt, vector_lanes=4, cross_compiler=cc_path, is_host=False)


def _adreno_opencl(threads: int | None = None, ndk_cc: str | None = None, **_: Any) -> TargetSpec:
    cc_path = _find_compiler(ndk_cc, "adreno-opencl")
    host = {"kind": "llvm", "mtriple": "aarch64-linux-android", "mcpu": "cortex-a76", "num-cores": int(threads or 4)}
    tgt = {"kind": "opencl", "device": "adreno"}
    return TargetSpec("adreno-opencl", tgt, vector_lanes=4, cross_compiler=cc_path, device="opencl",
                      is_host=False, host=host)


_PRESETS = {"host": _host, "arm64-android": _arm64_android, "adreno-opencl": _adreno_opencl}


def known_targets() -> list[str]:
    """Names of the target presets (``configs/compiler/<name>.yaml`` mirror them)."""
    return sorted(_PRESETS)


def resolve_target(target: str | Mapping | TargetSpec = "host", *, threads: int | None = None,
                   ndk_cc: str | None = None) -> TargetSpec:
    """Resolve a preset name, a compiler config node (``target`` key) or a raw TVM dict target.

    Raises:
        TargetError: unknown preset (the message lists the known ones) or missing cross compiler.
    """
    if isinstance(target, TargetSpec):
        return target
    if isinstance(target, Mapping):
        cfg = dict(target)
        if "kind" in cfg:  # a raw TVM target dict
            lanes = 16 if cfg.get("kind") == "llvm" else 4
            host = cfg.get("mtriple", _host_triple()) == _host_triple() and cfg.get("kind") == "llvm"
            return TargetSpec(f"custom:{cfg.get('kind')}", cfg, vector_lanes=lanes, is_host=host)
        name = cfg.get("target", "host")
        return resolve_target(name, threads=threads or cfg.get("threads"), ndk_cc=ndk_cc or cfg.get("ndk_cc"))
    if not isinstance(target, str) or target not in _PRESETS:
        raise TargetError(
            f"unknown target={target!r}; known targets: {', '.join(known_targets())} "
            "(or a TVM target dict with a 'kind' key)"
        )
    return _PRESETS[target](threads=threads, ndk_cc=ndk_cc)
