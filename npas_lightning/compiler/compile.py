"""``compile_model``: PyTorch model -> TVM shared library with the project's kernels, checked.

Example:
    >>> import timm, torch
    >>> model = timm.create_model("resnet18", pretrained=False)
    >>> compiled = compile_model(model, torch.randn(1, 3, 64, 64), target="host", threads=2)
    >>> stats = compiled.measure(number=10, repeat=5)
    >>> compiled.export("artifacts/resnet18")
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .codegen import codegen_workers as resolve_codegen_workers
from .errors import CompileError
from .measure import (
    LatencyStats,
    LoadedModel,
    LocalSession,
    MeasureSession,
    open_session,
    quiet_native_stderr,
    time_loaded,
    time_vm,
)
from .numerics import check_numerics
from .targets import TargetSpec, resolve_target
from .threads import configure_threads
from .tuning import TileCache

__all__ = ["Compiled", "compile_model", "compiler_version", "plan_hash"]

_VERSIONED_SOURCES = ("fastmath.py", "fold.py", "conv_kernel.py", "dense_kernel.py", "epilogue.py", "generic_schedule.py",
                      "rewrite.py", "pipeline.py", "frontend.py", "sparse_pack.py", "sparse_import.py",
                      "pattern_kernel.py", "split_conv.py", "threads.py")


def compiler_version() -> str:
    """TVM version + a digest of the kernel/schedule sources: changes whenever generated code may."""
    import tvm

    h = hashlib.sha256(str(tvm.__version__).encode())
    here = Path(__file__).parent
    for name in _VERSIONED_SOURCES:
        h.update((here / name).read_bytes())
    return f"tvm{tvm.__version__}-{h.hexdigest()[:12]}"


def plan_hash(plan: Any, model: nn.Module) -> str:
    """Structural hash of a plan (``"dense"`` for no plan); dict plans are resolved against ``model``."""
    resolved = _resolve_plan(plan, model)
    return "dense" if resolved is None else resolved.structural_hash()


def _resolve_plan(plan: Any, model: nn.Module):
    """``NPASScheme`` of ``plan`` on ``model`` (None for no plan). A model whose layers are already
    sparse modules takes an ``NPASScheme`` as it is (its names no longer resolve as Conv2d/Linear)."""
    if plan is None:
        return None
    from npas_lightning.plan import NPASScheme  # lazy: the plan module is optional for dense compiles
    from npas_lightning.sparse import sparse_layers

    if not isinstance(plan, (NPASScheme, Mapping)):
        raise CompileError(f"plan must be an NPASScheme, its dict form or None, got {type(plan).__name__}")
    if sparse_layers(model):
        if isinstance(plan, NPASScheme):
            return plan
        raise CompileError("this model's layers are already sparse modules (npas_lightning.sparse.sparsify): pass "
                           "the plan as a resolved NPASScheme, or compile the plain pruned model with plan=...")
    return NPASScheme.resolve(plan, model)


def _plan_notes(resolved, records, prepare_info: Mapping[str, Any]) -> None:
    """Say, per kernel, how a pruned layer the plan names was lowered when it was not block-sparse."""
    if resolved is None:
        return
    not_shrunk = dict(prepare_info.get("not_shrunk") or {})
    failed = prepare_info.get("shrink_error")
    for rec in records:
        base = rec.module.split(".")
        name = next((".".join(base[:i]) for i in range(len(base), 0, -1) if ".".join(base[:i]) in resolved), None)
        lp = resolved[name] if name is not None else None
        if rec.sparse is not None or lp is None or not lp.pruned:
            continue
        if lp.scheme == "unstructured":
            how = "dense kernel: the zeros are computed (no structure to skip)"
        elif lp.scheme == "filter" and (name in not_shrunk or failed):
            how = f"dense kernel, pruned filters computed as zeros: not shrunk ({not_shrunk.get(name) or failed})"
        elif lp.scheme == "filter":
            how = "dense kernel on the physically shrunk layer"
        else:
            how = "dense kernel"
        rec.sparse = {"scheme": lp.scheme, "lowering": how, "planned_rate": lp.rate}


@dataclass
class Compiled:
    """A compiled model: run it, time it, export it."""

    executable: Any
    target: TargetSpec
    input_shape: tuple[int, ...]
    plan_hash: str
    kernels: list = field(repr=False, default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    numerics: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None
    model_name: str = ""
    #: what :func:`~npas_lightning.shrink.frozen_for_compile` did for ``plan=`` (shrunk / sparse layers)
    prepare_info: dict[str, Any] = field(default_factory=dict)

    # -- running -----------------------------------------------------------------------------
    def _export_fn(self, executable, path: str) -> None:
        executable.export_library(path, fcompile=self.target.fcompile())

    def _check_input(self, x) -> np.ndarray:
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if tuple(arr.shape) != tuple(self.input_shape):
            raise CompileError(f"input shape {tuple(arr.shape)} does not match the compiled input_shape "
                               f"{tuple(self.input_shape)}; compile again for another shape")
        return np.ascontiguousarray(arr, dtype="float32")

    def run(self, x, *, session: MeasureSession | str | None = None):
        """Run once; returns a numpy array (torch tensor if ``x`` is one; a list for several outputs)."""
        arr = self._check_input(x)
        outs = self._run_numpy(arr, session)
        if isinstance(x, torch.Tensor):
            outs = [torch.from_numpy(o) for o in outs]
        return outs[0] if len(outs) == 1 else outs

    def _run_numpy(self, arr: np.ndarray, session=None) -> list[np.ndarray]:
        if session is None and self.target.is_host:
            import tvm
            from tvm import relax

            if self.threads:
                configure_threads(int(self.threads))
            vm = relax.VirtualMachine(self.executable, tvm.cpu())
            out = vm["main"](tvm.runtime.tensor(arr))
            outs = list(out) if not hasattr(out, "numpy") else [out]
            return [o.numpy() for o in outs]
        sess = open_session(session)
        _, outs = time_vm(self.executable, self._export_fn, sess, [arr], device_kind=self.target.device,
                          number=1, repeat=1, warmup=1, threads=self.threads)
        return outs

    def measure(self, number: int = 10, repeat: int = 5, warmup: int = 2, *,
                session: MeasureSession | str | Mapping | None = None, device: str | None = None,
                rpc: Mapping | None = None) -> LatencyStats:
        """Time the model with ``time_evaluator``: ``repeat`` samples, each the mean of ``number`` runs.

        ``session``/``device``/``rpc`` select where: local (default), ``"rpc"`` with ``rpc={host, port,
        key, tracker}``, ``"host:port"``, or an open :class:`MeasureSession`. Same code path for all.
        """
        for name, val in (("number", number), ("repeat", repeat)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        if not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
        sess = session if isinstance(session, MeasureSession) else open_session(session or device or "local", rpc)
        if not self.target.is_host and isinstance(sess, LocalSession):
            raise CompileError(f"target {self.target.name!r} is not this machine: measure it over RPC "
                               "(compiler.device=rpc with compiler.rpc.host/port or a tracker)")
        x = np.random.default_rng(0).standard_normal(self.input_shape).astype("float32")
        if isinstance(sess, LocalSession):  # export + link once per process, not once per measurement
            if self._local_loaded is None:
                self._local_loaded = LoadedModel(self.executable, self._export_fn, sess,
                                                 device_kind=self.target.device, threads=self.threads)
            secs, _ = time_loaded(self._local_loaded, [x], number=number, repeat=repeat, warmup=warmup)
        else:
            secs, _ = time_vm(self.executable, self._export_fn, sess, [x], device_kind=self.target.device,
                              number=number, repeat=repeat, warmup=warmup, threads=self.threads)
        return LatencyStats.from_seconds(
            secs, runs=number, repeats=repeat, warmup=warmup, threads=int(self.threads or 0),
            target=self.target.name, input_shape=tuple(self.input_shape), device=sess.name)

    # -- artefacts ------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        import tvm

        from npas_lightning import __version__ as npas_version

        return {
            "model": self.model_name,
            "target": {"name": self.target.name, "tvm": self.target.target, "host": self.target.host},
            "input_shape": list(self.input_shape),
            "plan_hash": self.plan_hash,
            "threads": self.threads,
            "versions": {"tvm": str(tvm.__version__), "torch": torch.__version__, "npas_lightning": npas_version,
                         "compiler": compiler_version()},
            "kernels": [{"kind": k.kind, "module": k.module, "symbol": k.symbol, "shape": k.shape, "tile": k.tile,
                         "tuned": k.tuned, "sparse": k.sparse, "epilogue": k.epilogue, "split": k.split}
                        for k in self.kernels],
            "prepare": self.prepare_info,
            "compile_time_s": self.timings,
            "numerics": self.numerics,
            "library": "model.so",
            "params": "params.npz",
        }

    def export(self, directory: str | os.PathLike, *, params: Mapping[str, np.ndarray] | None = None) -> Path:
        """Write ``model.so`` (constants bound inside), ``params.npz`` and ``manifest.json``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        with quiet_native_stderr():
            self._export_fn(self.executable, str(out / "model.so"))
        np.savez(out / "params.npz", **dict(params or self._params))
        (out / "manifest.json").write_text(json.dumps(self.manifest(), indent=2, default=str))
        return out

    _params: dict = field(default_factory=dict, repr=False)
    #: the library loaded in this process by the first local measure(), reused by later ones
    _local_loaded: Any = field(default=None, repr=False)


def compile_model(model: nn.Module, example_input: torch.Tensor, *, plan: Any = None,
                  target: str | Mapping | TargetSpec = "host", tune: bool = False, threads: int | None = None,
                  check: bool = True, tile_cache: str | os.PathLike | TileCache | None = None,
                  rtol: float = 1e-4, atol: float = 0.0, schedule: bool = True,
                  imported: Any = None, codegen_workers: int | None = None) -> Compiled:
    """Compile ``model`` for ``target`` with the project's kernels.

    Args:
        model: a ``torch.nn.Module`` (put in eval mode).
        example_input: float32 tensor of the exact input shape (batch included).
        plan: ``NPASScheme`` or its dict form. Its layers are lowered by scheme: ``filter`` layers are cut
            physically, ``block_punched`` / ``block_based`` / ``pattern`` layers become sparse modules
            (:func:`npas_lightning.sparse.sparsify`, which reads the model's zeros and raises
            :class:`~npas_lightning.sparse.StructureError` naming a layer whose zeros do not have the
            plan's structure) lowered to block-sparse kernels, ``unstructured`` stays dense (reported
            so). Also enters the plan hash of the manifest and caches. A model already prepared
            (sparse modules inside, e.g. by ``frozen_for_compile``) is lowered as it is.
        target: preset name (``host``, ``arm64-android``, ``adreno-opencl``), a ``configs/compiler`` node
            or a TVM target dict.
        tune: measure a small tile grid per layer (best kept in the on-disk tile cache).
        threads: TVM worker threads (default: all cores).
        check: compare TVM and PyTorch on a random input (host targets); raise :class:`NumericsError`
            naming the first diverging layer.
        schedule: ``False`` builds TVM's unscheduled default lowering (the "untuned" reference).
        imported: the result of ``frontend.import_model(model, example_input)`` done earlier, e.g. in the
            main thread: ``torch.export`` patches ``nn.Module.__call__`` process-wide while it traces, so
            a caller that builds in a background thread while training runs imports first.
        codegen_workers: threads that generate the code (LLVM), each building a group of the model's
            functions (:mod:`npas_lightning.compiler.codegen`); ``None``: every CPU of this process, 1:
            ``tvm.compile`` on one thread. The generated code is the same either way.
    """
    from .frontend import import_model
    from .pipeline import build_relax
    from .rewrite import TilePlanner

    spec = resolve_target(target, threads=threads)
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise CompileError(f"threads must be a positive int or None, got {threads!r}")
    try:
        codegen_workers = resolve_codegen_workers(codegen_workers)
    except ValueError as err:
        raise CompileError(str(err)) from None
    if threads is not None and spec.is_host:
        configure_threads(threads)  # a pool too small for them is an error now, not after the build
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1:
        raise CompileError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    resolved = _resolve_plan(plan, model)
    phash = "dense" if resolved is None else resolved.structural_hash()
    t0 = time.perf_counter()
    model = model.eval()
    prepare_info: dict[str, Any] = {}
    if imported is None:
        if resolved is not None:
            from npas_lightning.shrink import frozen_for_compile

            model, prepare_info = frozen_for_compile(model, resolved, example_input)
        imported = import_model(model, example_input)
    t_import = time.perf_counter() - t0
    cache = tile_cache if isinstance(tile_cache, TileCache) else TileCache(tile_cache)
    planner = TilePlanner(spec, tune=tune, cache=cache)
    result = build_relax(imported.mod, spec, planner=planner, names=imported.names, schedule=schedule,
                         sparse_layers=getattr(imported, "sparse", None), codegen_workers=codegen_workers)
    _plan_notes(resolved, result.records, prepare_info)
    timings = {"import_s": t_import, **result.timings, "total_s": time.perf_counter() - t0}
    params = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()
              if isinstance(v, torch.Tensor) and v.is_floating_point()}
    compiled = Compiled(result.executable, spec, tuple(example_input.shape), phash, result.records, timings,
                        threads=threads, model_name=type(model).__name__, prepare_info=prepare_info, _params=params)
    if check and spec.is_host:
        compiled.numerics = check_numerics(compiled, model, example_input, rtol=rtol, atol=atol)
    return compiled
