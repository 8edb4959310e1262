"""The Relax pass pipeline: fold BN, rewrite kernels, legalize, fuse, schedule, build."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .codegen import build_executable
from .fastmath import fast_math
from .fold import fold_constants
from .generic_schedule import schedule_module
from .rewrite import KernelRecord, TilePlanner, drop_unused_kernels, rewrite_kernels
from .targets import TargetSpec

__all__ = ["BuildResult", "build_relax"]


@dataclass
class BuildResult:
    executable: object
    records: list[KernelRecord]
    timings: dict[str, float] = field(default_factory=dict)
    mod: object = None


def build_relax(mod, spec: TargetSpec, *, planner: TilePlanner | None, names: dict | None = None,
                schedule: bool = True, sparse_layers: dict[str, str] | None = None,
                codegen_workers: int | None = None) -> BuildResult:
    """Optimise and build ``mod`` for ``spec``.

    ``schedule=False`` gives the untuned reference: TVM's own lowering with no project kernels and
    no schedules (what the default pipeline produces). ``sparse_layers`` (module name -> scheme)
    selects the layers lowered to block-sparse kernels. ``codegen_workers`` threads generate the
    code (:func:`~npas_lightning.compiler.codegen.build_executable`; ``None``: every CPU).
    """
    import tvm
    from tvm import relax
    from tvm.relax.transform import FoldBatchnormToConv2D

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    seq = [FoldBatchnormToConv2D(), relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings()]
    mod = fold_constants(tvm.transform.Sequential(seq)(mod))
    records: list[KernelRecord] = []
    cpu_kernels = schedule and spec.device == "cpu" and planner is not None
    if cpu_kernels:
        mod, records = rewrite_kernels(mod, planner, names, sparse_layers)
        # drop the aliases and the calls the kernels took over (bias / activation / gated input, crops
        # nobody reads any more) before fusion, so fusion only groups what is still computed
        mod = relax.transform.DeadCodeElimination()(relax.transform.CanonicalizeBindings()(mod))
        mod = drop_unused_kernels(mod)
        mod = fast_math(mod)
    timings["rewrite_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    mod = tvm.transform.Sequential([
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ])(mod)
    if cpu_kernels:
        mod = schedule_module(mod, spec.vector_lanes)
    timings["fuse_schedule_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    linked: dict[str, int] = {}
    executable = build_executable(mod, spec.tvm_target, workers=codegen_workers, stats=linked)
    timings["codegen_s"] = time.perf_counter() - t2
    if linked:  # TIR functions linked, and how many were reused from earlier compiles of this process
        timings["codegen_functions"], timings["codegen_reused"] = linked["functions"], linked["reused"]
    return BuildResult(executable, records, timings, mod)
