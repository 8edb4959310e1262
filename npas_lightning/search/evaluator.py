"""Fast evaluation of one NPAS scheme (paper section 5.2.3): ``evaluate(plan) -> EvalResult(V, h)``.

For each plan, on a copy of the Phase-1 network:

1. filter types: ``npas_lightning.transforms.apply_filter_types(net, plan, fitted=...)`` with the
   reconstruction-initialised candidates (``fitted`` from ``transforms.reconstruction.fit_candidates``);
2. one-shot magnitude pruning per scheme and rate: ``algorithms.masking.compute_masks`` +
   ``apply_masks``;
3. compilation of a frozen copy of the pruned network (code generation needs no trained weight
   values; ``filter``-pruned layers are first cut physically with ``npas_lightning.shrink`` so the
   compiled code is really smaller): torch.export runs first in this thread (it patches
   ``nn.Module.__call__`` process-wide, so no forward may run meanwhile), then the TVM build runs in a
   background thread while
4. a short fine-tune (``finetune_steps`` SGD steps) runs with the masks held (gradients and weights
   masked each step, ``MaskApplier``), then validation top-1 ``V`` is computed;
5. the latency ``h`` is measured once the fine-tune has finished (so training does not disturb the
   timing): ``compile_model(...).measure(...)``, median in ms. Latencies go through the compiler's
   process-safe SQLite ``LatencyCache``, keyed by the compiled model's structure (``model_hash``),
   the plan's ``structural_hash()``, the input shape, the target and the compiler version (latency
   does not depend on weight values), so a structure is compiled once across runs and Ray workers.

A NaN loss or NaN V gives ``ok=False`` with the reason; a compile error too (the search goes on).
The fine-tune is a plain PyTorch loop rather than a Lightning Trainer: a few dozen steps per
candidate, where a Trainer's setup would dominate.
"""

from __future__ import annotations

import copy
import hashlib
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from npas_lightning.search.result import EvalResult

__all__ = ["FastEvaluator"]


def _plan_seed(plan, seed: int) -> int:
    return int(hashlib.sha256(f"{seed}:{plan.structural_hash()}".encode()).hexdigest()[:8], 16)


class FastEvaluator:
    """The product evaluator of the search.

    Args:
        net: the Phase-1 network (a timm model; it is copied, never modified).
        train_loader_fn: zero-arg callable returning a training DataLoader (e.g. ``dm.train_dataloader``).
        val_loader_fn: zero-arg callable returning a validation DataLoader.
        example_input: input for compilation/timing (batch 1 recommended), e.g. ``torch.randn(1, 3, 32, 32)``.
        fitted: reconstruction-initialised candidates ``{layer: {filter_type: module}}`` (or a
            ``ReconstructionResult``); ``None`` = freshly initialised candidates.
        finetune_steps: SGD steps of the fine-tune (the budget).
        lr, momentum, weight_decay: SGD settings of the fine-tune.
        val_batches: validation batches used for V (``None`` = the whole validation set).
        compile_kwargs: extra kwargs of ``npas_lightning.compiler.compile_model`` (target, tune, threads, check,
            codegen_workers).
        measure_kwargs: kwargs of ``Compiled.measure`` (number, repeat, warmup, device, rpc).
        latency_stat: which statistic of the measured latency is h: ``median`` (default), ``min``
            (robust to interference on a shared machine) or ``mean``; all three are kept in ``info``.
        latency_cache: path of the compiler's SQLite ``LatencyCache`` (``None`` = its default path under
            ``$NPAS_CACHE_DIR``; ``False`` = no cache). Process-safe, so Ray workers share it.
        threads: torch intra-op threads during the evaluation (``None`` = leave as is).
        device: where the fine-tune runs: ``"auto"`` (CUDA when this process sees a GPU, e.g. a Ray task
            with ``search.ray.num_gpus=1``), ``"cpu"`` or ``"cuda[:i]"``. Compilation always uses a CPU copy.
        seed: base seed (each plan's fine-tune is seeded from it and the plan's structural hash).
    """

    def __init__(self, net: nn.Module, train_loader_fn: Callable[[], Any], val_loader_fn: Callable[[], Any],
                 example_input: torch.Tensor, *, fitted: Any = None, finetune_steps: int = 20, lr: float = 0.01,
                 momentum: float = 0.9, weight_decay: float = 0.0, val_batches: int | None = None,
                 compile_kwargs: Mapping[str, Any] | None = None, measure_kwargs: Mapping[str, Any] | None = None,
                 threads: int | None = None, device: str = "auto", latency_cache: str | bool | None = None,
                 latency_stat: str = "median", seed: int = 0) -> None:
        if finetune_steps < 0:
            raise ValueError(f"search.evaluator.finetune_steps={finetune_steps}: must be >= 0")
        if lr <= 0:
            raise ValueError(f"search.evaluator.lr={lr}: must be > 0")
        if val_batches is not None and val_batches < 1:
            raise ValueError(f"search.evaluator.val_batches={val_batches}: must be >= 1 or null")
        self.net = copy.deepcopy(net).cpu().eval()
        self.train_loader_fn = train_loader_fn
        self.val_loader_fn = val_loader_fn
        self.example_input = example_input.detach().cpu()
        self.fitted = getattr(fitted, "fitted", fitted)
        self.finetune_steps = int(finetune_steps)
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.val_batches = val_batches
        self.compile_kwargs = dict(compile_kwargs or {})
        self.measure_kwargs = dict(measure_kwargs or {})
        self.threads = threads
        if device != "auto" and not (device == "cpu" or device.startswith("cuda")):
            raise ValueError(f"search.evaluator.device={device!r}: accepted 'auto', 'cpu', 'cuda' or 'cuda:<i>'")
        self.device = device
        self.seed = int(seed)
        if latency_stat not in ("median", "min", "mean"):
            raise ValueError(f"search.evaluator.latency_stat={latency_stat!r}: accepted 'median', 'min', 'mean'")
        self.latency_stat = latency_stat
        self.latency_cache_path = latency_cache
        self._cache = None

    def _device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    # ------------------------------------------------------------------ pieces
    def build(self, plan) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """The Phase-1 net with the plan's filter types applied and its one-shot magnitude masks applied."""
        from npas_lightning.algorithms.masking import apply_masks, compute_masks

        model = copy.deepcopy(self.net)
        if any(lp.filter_type != "keep" for lp in plan.values()):
            from npas_lightning.transforms import apply_filter_types

            model = apply_filter_types(model, plan, fitted=self.fitted)
        masks = compute_masks(model, plan)
        apply_masks(model, masks, plan)
        return model, masks

    def __getstate__(self) -> dict[str, Any]:  # a Ray task opens its own SQLite connection
        state = dict(self.__dict__)
        state["_cache"] = None
        return state

    def cache(self):
        """The compiler's process-safe latency cache (``None`` when disabled)."""
        if self.latency_cache_path is False:
            return None
        if self._cache is None:
            from npas_lightning.compiler.cache import LatencyCache

            self._cache = LatencyCache(self.latency_cache_path or None)
        return self._cache

    def frozen_for_compile(self, model: nn.Module, plan) -> tuple[nn.Module, dict[str, Any]]:
        """Eval-mode copy of the pruned model for code generation; filter-pruned channels cut physically."""
        from npas_lightning.shrink import frozen_for_compile

        return frozen_for_compile(model, plan, self.example_input)

    def latency_key(self, frozen: nn.Module, plan) -> tuple[str, dict[str, Any]]:
        """Key of the compiler's latency cache: structure of the compiled model + plan + shape + target."""
        from npas_lightning.compiler import compiler_version, resolve_target
        from npas_lightning.compiler.cache import latency_key, model_hash

        spec = resolve_target(self.compile_kwargs.get("target", "host"), threads=self.compile_kwargs.get("threads"))
        # (check and codegen_workers change neither the code nor its latency)
        extras = {k: v for k, v in sorted(self.compile_kwargs.items()) if k not in ("target", "check", "codegen_workers")}
        parts = {"backbone": model_hash(frozen),
                 "plan": f"{plan.structural_hash()}|{extras}|{sorted(self.measure_kwargs.items())}",
                 "input_shape": [int(v) for v in self.example_input.shape], "target": spec.key(),
                 "compiler": compiler_version()}
        return latency_key(**parts), parts

    def _export(self, frozen: nn.Module, out: dict[str, Any]) -> None:
        """Stage 1, in the calling thread: torch.export + Relax import of the frozen model.

        torch.export patches ``nn.Module.__call__`` process-wide while it traces, so it must not run
        while another thread runs a forward pass (it broke the concurrent fine-tune with ``KeyError:
        'custom'`` / ``CURRENT_PATCHER is None``): it runs here, before the fine-tune starts.
        """
        from npas_lightning.compiler.frontend import import_model

        t0 = time.perf_counter()
        try:
            out["imported"] = import_model(frozen.eval(), self.example_input)
        except Exception as e:  # noqa: BLE001 - reported as a failed candidate
            out["error"] = f"compile failed (export): {type(e).__name__}: {e}"
        out["import_seconds"] = time.perf_counter() - t0

    def _build(self, frozen: nn.Module, out: dict[str, Any]) -> None:
        """Stage 2, in a background thread while the fine-tune runs: ``compile_model`` on the module
        imported by :meth:`_export` (Relax rewrite, schedules, code generation, numerics check).

        ``plan`` is not passed: the frozen model already has the plan's filter types, masks and shrunk
        channels, and the latency cache key (:meth:`latency_key`) carries the plan's structure.
        """
        from npas_lightning.compiler import compile_model

        t0 = time.perf_counter()
        try:
            out["compiled"] = compile_model(frozen, self.example_input, imported=out["imported"], **self.compile_kwargs)
        except Exception as e:  # noqa: BLE001 - reported as a failed candidate
            out["error"] = f"compile failed: {type(e).__name__}: {e}"
        out["compile_seconds"] = time.perf_counter() - t0 + out.get("import_seconds", 0.0)

    def finetune(self, model: nn.Module, masks: Mapping[str, torch.Tensor], plan) -> tuple[int, float | None]:
        """``finetune_steps`` masked SGD steps; returns (steps done, NaN step or None)."""
        from npas_lightning.algorithms.masking import MaskApplier

        if self.finetune_steps == 0:
            return 0, None
        dev = next(model.parameters()).device
        applier = MaskApplier(model, masks, plan)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        model.train()
        step = 0
        while step < self.finetune_steps:
            for x, y in self.train_loader_fn():
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                loss = nn.functional.cross_entropy(model(x), y)
                if not torch.isfinite(loss):
                    return step, float(step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                applier.grads_()
                opt.step()
                applier.weights_()
                step += 1
                if step >= self.finetune_steps:
                    break
        return step, None

    @torch.no_grad()
    def accuracy(self, model: nn.Module) -> float:
        model.eval()
        dev = next(model.parameters()).device
        correct = total = 0
        for i, (x, y) in enumerate(self.val_loader_fn()):
            if self.val_batches is not None and i >= self.val_batches:
                break
            x, y = x.to(dev), y.to(dev)
            logits = model(x)
            if not torch.isfinite(logits).all():
                return float("nan")
            correct += int((logits.argmax(1) == y).sum())
            total += int(y.numel())
        return correct / max(total, 1)

    # ------------------------------------------------------------------ the contract
    def evaluate(self, plan) -> EvalResult:
        old_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(int(self.threads))
        try:
            return self._evaluate(plan)
        finally:
            torch.set_num_threads(old_threads)

    def _evaluate(self, plan) -> EvalResult:
        t0 = time.perf_counter()
        torch.manual_seed(_plan_seed(plan, self.seed))
        model, masks = self.build(plan)
        frozen, info = self.frozen_for_compile(model, plan)
        key, parts = self.latency_key(frozen, plan)
        cache = self.cache()
        stats = cache.get(key) if cache is not None else None
        comp: dict[str, Any] = {}
        worker = None
        if stats is None:  # export here, then build in parallel with the fine-tune (no weight values needed)
            self._export(frozen, comp)
            if "error" not in comp:
                worker = threading.Thread(target=self._build, args=(frozen, comp), daemon=True)
                worker.start()
        dev = self._device()
        if dev.type != "cpu":
            model = model.to(dev)
            masks = {k: v.to(dev) for k, v in masks.items()}
        t1 = time.perf_counter()
        steps, nan_step = self.finetune(model, masks, plan)
        V = float("nan") if nan_step is not None else self.accuracy(model)
        t2 = time.perf_counter()
        info.update({"device": str(dev), "finetune_steps": steps, "finetune_seconds": t2 - t1,
                     "build_seconds": t1 - t0, "latency_cached": stats is not None})
        if stats is None:
            if worker is not None:
                worker.join()
            info["compile_seconds"] = comp.get("compile_seconds", comp.get("import_seconds"))
            if "error" in comp:
                return EvalResult(V=V, h=float("nan"), ok=False, reason=comp["error"][:500], info=info)
            t3 = time.perf_counter()  # measured after the fine-tune: training must not disturb the timing
            stats = comp["compiled"].measure(**self.measure_kwargs)
            info["measure_seconds"] = time.perf_counter() - t3
            if cache is not None:
                cache.put(key, stats, **parts)
        info["latency"] = stats.to_dict()
        h = float(getattr(stats, f"{self.latency_stat}_ms"))
        if nan_step is not None:
            return EvalResult(V=V, h=h, ok=False, reason=f"fine-tune diverged: NaN loss at step {int(nan_step)}",
                              info=info)
        if math.isnan(V):
            return EvalResult(V=V, h=h, ok=False, reason="non-finite logits in validation", info=info)
        return EvalResult(V=V, h=h, ok=True, info=info)
