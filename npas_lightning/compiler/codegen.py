"""Code generation on every core: a Relax module's TIR functions built in parallel LLVM modules.

``tvm.compile`` lowers and optimises every TIR function of a model in one LLVM module, on one
thread: 4.7 s of the 9 s an efficientnet_b0 compile took with every layer sparse (``codegen_s`` in
``compile_breakdown``, ``benchmarks/results/bench_sparse_models_balanced.json``). The functions do
not call each other, so :func:`build_executable` runs the Relax pipeline and the VM code generation
as ``tvm.relax.build`` does, splits the TIR functions into groups, builds the groups on a thread
pool (TVM releases the GIL while it lowers and LLVM optimises), imports the groups' modules into the
first one and links the VM executable from it. The executable runs, and exports with
``export_library`` (which links every group's object file), like ``tvm.compile``'s
(``tests/compiler/test_codegen.py``; ``benchmarks/bench_codegen.py`` times both).

Example:
    >>> exe = build_executable(mod, spec.tvm_target, workers=2)   # mod: a Relax IRModule
    >>> vm = tvm.relax.VirtualMachine(exe, tvm.cpu())
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .threads import available_cpus

__all__ = ["GROUPS_PER_WORKER", "build_executable", "codegen_workers", "function_groups"]

#: groups per worker thread: the pool hands the next group to whichever thread is free, so a group
#: of large kernels does not leave the other threads idle at the end
GROUPS_PER_WORKER = 2


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


def build_executable(mod, target, *, workers: int | None = None) -> Any:
    """``tvm.compile(mod, target=target)`` with the TIR functions built on ``workers`` threads
    (:func:`codegen_workers`; one worker or a target that is not LLVM: ``tvm.compile`` itself)."""
    import tvm
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
    lib = None
    if funcs:
        groups = function_groups(list(funcs), n * GROUPS_PER_WORKER)

        def build(names: list[str]):
            return tvm.tirx.build(tvm.IRModule({funcs[k][0]: funcs[k][1] for k in names}, attrs=tir.attrs),
                                  target=target)

        with ThreadPoolExecutor(min(n, len(groups)), thread_name_prefix="npas-codegen") as pool:
            libs = list(pool.map(build, groups))
        lib = libs[0]
        for other in libs[1:]:
            lib.import_module(other)
    # external modules as relax.build links them: device code into the TIR library, the rest to the VM
    if lib is not None:
        for m in ext_libs:
            if vm_build._is_device_module(m):
                lib.import_module(m)
    host_ext = [m for m in ext_libs if not vm_build._is_device_module(m)]
    return vm_build.VMExecutable(relax._ffi_api.VMLink(builder, target, lib, host_ext, params))
