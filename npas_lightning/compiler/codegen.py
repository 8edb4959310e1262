"""Code generation on every core, reusing what earlier compiles built.

``tvm.compile`` lowers and optimises every TIR function of a model in one LLVM module, on one
thread: 4.7 s of the 9 s an efficientnet_b0 compile took with every layer sparse (``codegen_s`` in
``compile_breakdown``, ``benchmarks/results/bench_sparse_models_balanced.json``). The functions do
not call each other. So :func:`build_executable` runs the Relax pipeline and the VM code generation
as ``tvm.relax.build`` does, then builds the TIR functions on a thread pool (TVM releases the GIL
while it lowers and LLVM optimises) and links the VM executable from the modules.

With :data:`REUSE_FUNCTIONS` (the default) each function gets an LLVM module of its own, linked into
the VM as an external module. The module is kept by the function's symbol, its structural hash and
the target (:data:`FUNCTION_CACHE_SIZE` of them, least recently used dropped first). A later compile
in the process with a structurally equal function under the same symbol links the kept module
instead of building it again. Search candidates differ from each other in a few layers, so most of
their functions repeat. Without it, the functions are built in a few groups, imported into the first
group's module, and nothing is kept.

Either way the executable runs, and exports with ``export_library`` (which links every module's
object file), like ``tvm.compile``'s (``tests/compiler/test_codegen.py``;
``benchmarks/bench_codegen.py`` times them).

Example:
    >>> stats = {}
    >>> exe = build_executable(mod, spec.tvm_target, workers=2, stats=stats)   # mod: a Relax IRModule
    >>> stats["functions"], stats["reused"]     # functions linked, and how many earlier compiles built
    >>> vm = tvm.relax.VirtualMachine(exe, tvm.cpu())
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .threads import available_cpus

__all__ = ["FUNCTION_CACHE_SIZE", "GROUPS_PER_WORKER", "REUSE_FUNCTIONS", "build_executable", "clear_function_cache",
           "codegen_workers", "function_groups"]

#: groups per worker thread: the pool hands the next group to whichever thread is free, so a group
#: of large kernels does not leave the other threads idle at the end
GROUPS_PER_WORKER = 2

#: build every function in a module of its own and reuse it in later compiles of this process when a
#: function with the same symbol is structurally equal (False: groups of functions, nothing kept)
REUSE_FUNCTIONS = True

#: built functions kept for reuse (least recently used dropped first)
FUNCTION_CACHE_SIZE = 2048

_cache: OrderedDict[tuple[str, int, str], tuple[Any, Any]] = OrderedDict()  # key -> (PrimFunc, module)
_cache_lock = threading.Lock()


def clear_function_cache() -> None:
    """Forget every built function kept for reuse."""
    with _cache_lock:
        _cache.clear()


def _cached(key: tuple[str, int, str], func) -> Any:
    """The module built for ``func`` under ``key`` earlier in this process, else ``None``."""
    import tvm_ffi

    with _cache_lock:
        hit = _cache.get(key)
        if hit is None or not tvm_ffi.structural_equal(hit[0], func):
            return None
        _cache.move_to_end(key)
        return hit[1]


def _keep(key: tuple[str, int, str], func, module) -> None:
    with _cache_lock:
        _cache[key] = (func, module)
        _cache.move_to_end(key)
        while len(_cache) > FUNCTION_CACHE_SIZE:
            _cache.popitem(last=False)


def codegen_workers(workers: int | None) -> int:
    """Threads that generate code: ``workers``, or every CPU this process may use for ``None``.

    Raises ``ValueError`` naming ``codegen_workers`` for anything but a positive int or ``None``."""
    if workers is None:
        return available_cpus()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"codegen_workers={workers!r}: expected a positive int (threads generating code) or "
                         f"None (all {available_cpus()} CPUs of this process)")
    return workers


def function_groups(names: list[str], groups: int) -> list[list[str]]:
    """``names`` sorted and dealt round-robin into at most ``groups`` non-empty groups (deterministic).

    Example:
        >>> function_groups(["c", "a", "b", "d", "e"], 2)
        [['a', 'c', 'e'], ['b', 'd']]
    """
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups={groups!r}: expected a positive int")
    ordered = sorted(names)
    return [g for g in (ordered[i::groups] for i in range(groups)) if g]


def _parallel_ok(target) -> bool:
    """Only CPU code (LLVM) is split, with the build steps of ``tvm.relax.build`` this module calls
    present (TVM 0.27); wasm system libraries and GPU targets go through ``tvm.compile``."""
    from tvm import relax
    from tvm.relax import vm_build

    host = target if target.host is None else target.host
    private = (all(hasattr(vm_build, n) for n in ("_vmcodegen", "_filter_tir", "_is_device_module", "VMExecutable"))
               and hasattr(relax._ffi_api, "VMLink"))
    return private and target.kind.name == "llvm" and "wasm" not in str(host.attrs.get("mtriple", ""))


def build_executable(mod, target, *, workers: int | None = None, stats: dict | None = None) -> Any:
    """``tvm.compile(mod, target=target)`` with the TIR functions built on ``workers`` threads
    (:func:`codegen_workers`; one worker or a target that is not LLVM: ``tvm.compile`` itself) and,
    with :data:`REUSE_FUNCTIONS`, functions built by earlier compiles reused. ``stats`` (a dict) gets
    ``functions`` (TIR functions linked) and ``reused`` (how many of them came from earlier compiles)."""
    import tvm
    import tvm_ffi
    from tvm import relax
    from tvm.relax import vm_build

    n = codegen_workers(workers)
    if n == 1 or not _parallel_ok(target):
        return tvm.compile(mod, target=target)
    with target:
        mod = relax.get_pipeline("default")(mod)
    attrs = dict(mod.attrs) if mod.attrs else {}
    ext_libs = list(attrs.get("external_mods", []))
    params = dict(attrs.get("const_name_to_constant", {}))
    builder = relax.ExecBuilder()
    tir = vm_build._filter_tir(vm_build._vmcodegen(builder, mod, "bytecode"))
    funcs = {} if tir is None else {gv.name_hint: (gv, f) for gv, f in tir.functions.items()}
    reuse = REUSE_FUNCTIONS and not any(vm_build._is_device_module(m) for m in ext_libs)

    def build_all(groups: list[list[str]]) -> list:
        """One LLVM module per group of function names, built on the pool."""
        if not groups:
            return []
        with ThreadPoolExecutor(min(n, len(groups)), thread_name_prefix="npas-codegen") as pool:
            return list(pool.map(lambda names: tvm.tirx.build(
                tvm.IRModule({funcs[k][0]: funcs[k][1] for k in names}, attrs=tir.attrs), target=target), groups))

    reused, lib, linked = 0, None, []
    if reuse:  # one module per function, each linked into the VM as an external library
        keys = {k: (k, tvm_ffi.structural_hash(f), str(target)) for k, (_, f) in funcs.items()}
        modules = {k: _cached(keys[k], funcs[k][1]) for k in sorted(funcs)}
        missing = [k for k, m in modules.items() if m is None]
        reused = len(modules) - len(missing)
        for k, m in zip(missing, build_all([[k] for k in missing]), strict=True):
            modules[k] = m
            _keep(keys[k], funcs[k][1], m)
        linked = list(modules.values())
    else:  # a few groups imported into the first group's module, device code too (as relax.build does)
        libs = build_all(function_groups(list(funcs), n * GROUPS_PER_WORKER))
        if libs:
            lib = libs[0]
            for other in libs[1:] + [m for m in ext_libs if vm_build._is_device_module(m)]:
                lib.import_module(other)
    if stats is not None:
        stats.update(functions=len(funcs), reused=reused)
    host_ext = [m for m in ext_libs if not vm_build._is_device_module(m)]
    return vm_build.VMExecutable(relax._ffi_api.VMLink(builder, target, lib, linked + host_ext, params))
