"""Where a compiled model's batch-1 time goes: every TIR function of the build timed alone.

The model is compiled as `compile_model` does it (same passes, kernels and schedules); each called
function is then built alone and timed on random inputs of its own shapes (median of 7 x 5 runs:
at 2 threads on a shared 2-vCPU VM a preempted worker stalls a whole parallel call, and a mean
keeps those stalls), times the number of calls in ``main``. Functions are grouped as the project's kernels (``npas_*``, which compute their
layer's bias and activation too), fused elementwise + layout functions (the zero-pad / stride-phase
copies in front of kxk convs, residual adds, crops, SE gates), and the rest (pooling, reductions).
The whole model is timed once for comparison.

    .venv/bin/python benchmarks/bench_function_breakdown.py                        # efficientnet_b0 @224
    .venv/bin/python benchmarks/bench_function_breakdown.py --model mobilenetv3_large_100 --size 224
    .venv/bin/python benchmarks/bench_function_breakdown.py --rate 5     # uniform 5x plan, balanced
    .venv/bin/python benchmarks/bench_function_breakdown.py --rate 5 --compare silu planes --planes-limits 1.25 1.5
    .venv/bin/python benchmarks/bench_function_breakdown.py --model mobilenetv3_large_100 --rate 5 --compare planes --planes-limits 1.25 1.5 2
    .venv/bin/python benchmarks/bench_function_breakdown.py --rate 5 --compare activations silu

``--compare`` also builds the model other ways and times every build's whole model interleaved
with the one compiled as usual:

- ``silu``: every kernel's SiLU epilogue replaced by ReLU (a what-if: its outputs are wrong, it is
  timed, never used for results); the difference is what computing SiLU costs, at any pruning rate;
- ``planes``: no 1x1 conv writing the next depthwise conv's padded planes (both planes limits 0):
  the expanded tensors are copied into the planes instead;
- ``activations``: SiLU and hard-swish in the forms the kernels used before (TOPI's Cephes exp and
  a division by 6, see ``bench_kernel_ablation.py``).

``--planes-limits 1.25 1.5 2`` builds it once per value with ``PLANES_OUTPUT_MAX_WORK`` and
``PLANES_OUTPUT_MAX_WORK_SILU`` both set to it, timed interleaved with the others.

Reshapes that the build turns into zero-copy views (``RewriteDataflowReshape``) are not counted.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import math
import sys
from pathlib import Path

import numpy as np
import timm
import torch
from rich.console import Console
from rich.table import Table

from npas_lightning.compiler.frontend import import_model
from npas_lightning.compiler.pipeline import build_relax
from npas_lightning.compiler.rewrite import TilePlanner
from npas_lightning.compiler.targets import resolve_target
from npas_lightning.compiler.threads import configure_threads
from npas_lightning.compiler.tuning import TileCache
from npas_lightning.shrink import frozen_for_compile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

LAYOUT = ("pad", "reshape", "transpose", "strided_slice", "permute")


def _group(name: str) -> str:
    if name.startswith("npas_"):
        return "project kernels"
    return "fused elementwise + layout" if any(k in name for k in LAYOUT) else "other"


def _pruned(model, rate: float):
    """``model`` masked by the balanced uniform plan of ``bench_sparse_models`` at ``rate``."""
    from bench_sparse_models import uniform_plan

    from npas_lightning.algorithms.masking import apply_masks, compute_masks

    plan = uniform_plan(model, rate, balanced=True)
    apply_masks(model, compute_masks(model, plan), plan)
    return model, plan


@contextlib.contextmanager
def _planes_limit(limit: float):
    """Kernels built inside write a depthwise conv's planes up to ``limit`` x their pixels, whatever
    the activation (``PLANES_OUTPUT_MAX_WORK`` and ``..._SILU``; 0: never, every input copied)."""
    from npas_lightning.compiler import rewrite

    real = rewrite.PLANES_OUTPUT_MAX_WORK, rewrite.PLANES_OUTPUT_MAX_WORK_SILU
    rewrite.PLANES_OUTPUT_MAX_WORK = rewrite.PLANES_OUTPUT_MAX_WORK_SILU = limit
    try:
        yield
    finally:
        rewrite.PLANES_OUTPUT_MAX_WORK, rewrite.PLANES_OUTPUT_MAX_WORK_SILU = real


def _silu_as_relu():
    """Kernels built inside compute ReLU where they would compute SiLU (timing what-if only)."""
    from bench_kernel_ablation import CURRENT_ACTIVATION, patched_activation
    from tvm import tirx

    return patched_activation(lambda act, z: tirx.max(z, tirx.const(0.0, "float32")) if act == "silu"
                              else CURRENT_ACTIVATION(act, z))


def _activations_before():
    """Kernels built inside compute SiLU and hard-swish in their earlier forms (TOPI's Cephes exp,
    a division by 6; ``bench_kernel_ablation.activation_forms``)."""
    from bench_kernel_ablation import activation_forms

    return activation_forms("before")


#: --compare keys: (label, context manager building the model that way)
COMPARISONS = {"silu": ("SiLU as ReLU (what-if, wrong outputs)", _silu_as_relu),
               "planes": ("no planes output (planes limits 0)", lambda: _planes_limit(0.0)),
               "activations": ("activations as before (Cephes exp, division by 6)", _activations_before)}


def _interleaved_ms(executables: list, x: np.ndarray, rounds: int = 7) -> list[float]:
    """Median ms of each executable's ``main``, timed in alternation ``rounds`` times."""
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    vms = [relax.VirtualMachine(e, dev) for e in executables]
    arg = tvm.runtime.tensor(x)
    samples: list[list[float]] = [[] for _ in vms]
    for _ in range(rounds):
        for vm, out in zip(vms, samples, strict=True):
            out.append(vm.time_evaluator("main", dev, number=5, repeat=1)(arg).mean * 1e3)
    return [float(np.median(v)) for v in samples]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet_b0")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rate", type=float, default=None,
                   help="prune uniformly at this rate first (bench_sparse_models' balanced plan)")
    p.add_argument("--compare", nargs="*", default=[], choices=sorted(COMPARISONS),
                   help="also build the model these ways and time all whole models interleaved (see above)")
    p.add_argument("--planes-limits", nargs="*", type=float, default=[],
                   help="also build with both planes limits set to each value (timed with --compare)")
    args = p.parse_args()
    import tvm
    from tvm import relax, tirx

    model = timm.create_model(args.model, pretrained=False).eval()
    x = torch.randn(1, 3, args.size, args.size)
    spec = resolve_target("host", threads=args.threads)
    if args.rate is not None:
        model, _ = frozen_for_compile(*_pruned(model, args.rate), x)
    imported = import_model(model, x)
    def build():
        return build_relax(imported.mod, spec, planner=TilePlanner(spec, cache=TileCache()), names=imported.names,
                           sparse_layers=getattr(imported, "sparse", None))

    result = build()
    result.mod = relax.transform.RewriteDataflowReshape()(result.mod)  # what the build does to reshapes
    configure_threads(args.threads)
    call_tir = tvm.ir.Op.get("relax.call_tir")
    calls: collections.Counter = collections.Counter()

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and expr.op == call_tir:
            calls[expr.args[0].name_hint] += 1

    relax.analysis.post_order_visit(result.mod["main"].body, visit)
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    per_function, groups, counts = {}, collections.defaultdict(float), collections.Counter()
    for gv, func in result.mod.functions_items():
        name = gv.name_hint
        if not isinstance(func, tirx.PrimFunc) or name not in calls:
            continue
        lib = tvm.tirx.build(func.with_attr("global_symbol", name), target=spec.tvm_target)
        inputs = [tvm.runtime.tensor(rng.random([int(s) for s in a.shape]).astype(str(a.dtype))
                                     if str(a.dtype).startswith("float")
                                     else np.zeros([int(s) for s in a.shape], dtype=str(a.dtype)), dev)
                  for a in func.params]
        ms = lib.time_evaluator(lib.entry_name, dev, number=5, repeat=7)(*inputs).median * 1e3 * calls[name]
        per_function[name] = ms
        groups[_group(name)] += ms
        counts[_group(name)] += calls[name]
    executable = tvm.compile(result.mod, target=spec.tvm_target)
    vm = relax.VirtualMachine(executable, dev)
    whole = vm.time_evaluator("main", dev, number=5, repeat=5)(tvm.runtime.tensor(x.numpy())).median * 1e3
    label = "dense" if args.rate is None else f"{args.rate:g}x"
    table = Table(title=f"{args.model} ({label}) @{args.size}, batch 1, {args.threads} threads: whole model "
                        f"{whole:.2f} ms")
    for col in ("group", "calls", "ms (sum of functions timed alone)"):
        table.add_column(col)
    for g, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
        table.add_row(g, str(counts[g]), f"{ms:.2f}")
    Console().print(table)
    top = sorted(per_function.items(), key=lambda kv: -kv[1])[:10]
    for name, ms in top:
        print(f"{ms:7.3f} ms  {name}")
    writers = {r.module: {"map": r.shape["planes"], "positions_vs_map": len(r.mask) / math.prod(r.shape["planes"])}
               for r in result.records if r.mask is not None}
    print(f"1x1 convs writing a depthwise conv's planes: {len(writers)}")
    for module, w in writers.items():
        print(f"  {module} @{w['map'][0]}x{w['map'][1]}: {w['positions_vs_map']:.3f}x the map's positions")
    compared = {}
    variants = [(COMPARISONS[k][0], COMPARISONS[k][1]) for k in args.compare]
    variants += [(f"planes limits {v:g}", lambda v=v: _planes_limit(v)) for v in args.planes_limits]
    if variants:
        builds = [executable]
        for _, way in variants:
            with way():
                builds.append(build().executable)
        times = _interleaved_ms(builds, x.numpy())
        compared = {"as compiled": times[0], **{label: t for (label, _), t in zip(variants, times[1:], strict=True)}}
        for label, ms in compared.items():
            print(f"{ms:7.2f} ms  whole model, {label} ({ms - times[0]:+.2f} ms)")
    suffix = "" if args.rate is None else f"_{args.rate:g}x"
    path = write_results(f"bench_function_breakdown_{args.model}_{args.size}{suffix}",
                         "python benchmarks/bench_function_breakdown.py " + " ".join(sys.argv[1:]),
                         {"plan": label, "whole_model_ms": whole, "groups_ms": dict(groups), "calls": dict(counts),
                          "top_functions_ms": dict(top), "compared_whole_model_ms": compared,
                          "planes_writers": writers})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
