"""Where a compiled model's batch-1 time goes: every TIR function of the build timed alone.

The model is compiled as `compile_model` does it (same passes, kernels and schedules); each called
function is then built alone and timed on the constants its first call passes (weights, biases, the
sparse kernels' index buffers) and random activations of its own shapes, times the number of calls
in ``main``: the median of 7 rounds over all functions, 5 runs each (at 2 threads on a shared
2-vCPU VM a preempted worker stalls a whole parallel call; a median over rounds drops a busy moment).
Functions are grouped as the project's kernels (``npas_*``, which compute their layer's bias and
activation too), fused elementwise + layout functions (the zero-pad / stride-phase copies in front of
kxk convs, residual adds, crops, SE gates), and the rest (pooling, reductions).

The whole model is timed for comparison (median of 15 rounds), and every function is also timed
inside it: the VM calls a clock-reading callback around each call (``set_instrument``; median of 40
runs in batches of 5). That column shows how much longer the functions take in the model than alone
(inputs another core wrote, weights out of cache), the callback's own cost included.

``--threads 1`` runs everything on one core (results file ``..._1t.json``): inside the model the
functions then lose only what cold caches cost, not what reading the other core's writes costs
(``bench_cross_core.py``).

``--rate R --kernel-speedups`` also builds the dense model and times each layer's kernel in both
builds alone, in alternation: which layers gain less than the rate.

    .venv/bin/python benchmarks/bench_function_breakdown.py                        # efficientnet_b0 @224
    .venv/bin/python benchmarks/bench_function_breakdown.py --model mobilenetv3_large_100 --size 224
    .venv/bin/python benchmarks/bench_function_breakdown.py --rate 5     # uniform 5x plan, balanced
    .venv/bin/python benchmarks/bench_function_breakdown.py --rate 5 --compare silu planes --planes-limits 1.25 1.5
    .venv/bin/python benchmarks/bench_function_breakdown.py --model mobilenetv3_large_100 --rate 5 --compare planes --planes-limits 1.25 1.5 2
    .venv/bin/python benchmarks/bench_function_breakdown.py --rate 5 --compare activations silu
    .venv/bin/python benchmarks/bench_function_breakdown.py --rate 5 --unbalanced --compare whole-last-chunk

``--compare`` also builds the model other ways and times every build's whole model interleaved
with the one compiled as usual (15 rounds, samples of at least ``SAMPLE_MS``):

- ``silu``: every kernel's SiLU epilogue replaced by ReLU (a what-if: its outputs are wrong, it is
  timed, never used for results); the difference is what computing SiLU costs, at any pruning rate;
- ``planes``: no 1x1 conv writing the next depthwise conv's padded planes (both planes limits 0):
  the expanded tensors are copied into the planes instead;
- ``split``: no 1x1 projection conv splitting its reduction between the cores
  (``rewrite.SPLIT_REDUCTION = False``; :mod:`npas_lightning.compiler.split_conv`): each reads
  every input channel, half of them from the other core's cache;
- ``partials``: split convs without activation adding their parts up in a second pass of their own
  (``rewrite.SPLIT_PARTIALS = False``) instead of leaving them to the function that reads them next;
- ``activations``: SiLU and hard-swish in the forms the kernels used before (TOPI's Cephes exp and
  a division by 6, see ``bench_kernel_ablation.py``);
- ``kxk-planes``: no kxk conv (the stem) writing the next depthwise conv's planes
  (``rewrite.KXK_PLANES_OUTPUT = False``): its output is cropped, then zero-padded;
- ``residual-planes``: residual adds reading their tensor itself rather than inside the next
  block's padded planes (``rewrite.RESIDUAL_READS_PLANES = False``): each block's sum is stored
  twice, plain and padded;
- ``padding-rows``: block-sparse planes writers computing the padding rows above and below the image
  too (``rewrite.PLANES_OUTPUT_SKIPS_PADDING = False``; the planes limits then count them).
- ``serial-small``: the squeeze-excite FCs and the gates and activations on ``[1, C, 1, 1]`` tensors
  launched in parallel like every other function (``generic_schedule.SERIAL_MAX_ELEMENTS = 0``,
  ``dense_kernel.SERIAL_MAX_MACS = -1``) instead of running on the calling thread;
- ``ragged-rows``: the functions between the kernels without their vectorised row prefixes
  (``generic_schedule.VECTORIZE_RAGGED_ROWS = False``): rows 7, 14, 30, 57 or 114 wide run as TVM
  leaves them, which LLVM vectorised with gathers and masks.
- ``unread-channels``: the channels no layer reads (every reader's weights zero on them) computed like
  the others (``npas_lightning.shrink.SHRINK_UNREAD_CHANNELS = False``) instead of cut with the
  expansion filters, depthwise channels and gates that compute them before the build.
- ``phases``: block-sparse 1x1 convs writing a sparse stride-2 depthwise conv's phase planes compute
  every phase (``rewrite.PLANES_OUTPUT_SKIPS_PHASES = False``) instead of only the phases that conv
  reads in each filter tile's channels.
- ``stored-epilogue``: the block-sparse, channel-blocked and per-pattern kernels storing their raw
  sums and re-reading the tile for the bias and activation (``conv_kernel.EPILOGUE_IN_REGISTERS =
  False``) instead of applying them to the accumulators as they store them.
- ``whole-last-chunk``: block-sparse convs computing every pixel of their last pixel chunk
  (``conv_kernel.TAIL_PIXELS = False``) instead of the outputs below ``g.m`` only, a partial vector's
  pixels one at a time (:func:`~npas_lightning.compiler.conv_kernel.tail_split`).
- ``depthwise-counts``: sparse depthwise convs whose channel blocks all compute the largest count of
  kept kernel positions, padding included (``rewrite.DEPTHWISE_COUNTS = False``), instead of each
  block stopping at its own count (with ``--unbalanced``; balanced rows build the same kernels).

``--planes-limits 1.25 1.5 2`` builds it once per value with ``PLANES_OUTPUT_MAX_WORK`` and
``PLANES_OUTPUT_MAX_WORK_SILU`` both set to it, timed interleaved with the others.

Reshapes that the build turns into zero-copy views (``RewriteDataflowReshape``) are not counted.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import math
import sys
from collections.abc import Callable
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
from _common import fresh_tile_cache, write_results  # noqa: E402

CONSOLE = Console(width=150)  # wide tables stay unwrapped in logs too
LAYOUT = ("pad", "reshape", "transpose", "strided_slice", "permute")


def _group(name: str) -> str:
    if name.startswith("npas_"):
        return "project kernels"
    return "fused elementwise + layout" if any(k in name for k in LAYOUT) else "other"


def _pruned(model, rate: float, balanced: bool = True):
    """``model`` masked by the uniform plan of ``bench_sparse_models`` at ``rate`` (balanced rows by default)."""
    from bench_sparse_models import uniform_plan

    from npas_lightning.algorithms.masking import apply_masks, compute_masks

    plan = uniform_plan(model, rate, balanced=balanced)
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


@contextlib.contextmanager
def _compiler_flag(name: str, value, module: str = "rewrite"):
    """Models built inside see ``npas_lightning.compiler.<module>.<name> = value`` (``module`` a full
    ``npas_lightning...`` path: that module)."""
    import importlib

    mod = importlib.import_module(module if module.startswith("npas_lightning.") else f"npas_lightning.compiler.{module}")
    real = getattr(mod, name)
    setattr(mod, name, value)
    try:
        yield
    finally:
        setattr(mod, name, real)


@contextlib.contextmanager
def _parallel_tiny():
    """Models built inside run every function in parallel, however little work it has."""
    with _compiler_flag("SERIAL_MAX_ELEMENTS", 0, "generic_schedule"), _compiler_flag("SERIAL_MAX_MACS", -1, "dense_kernel"):
        yield


def _input_size(shape: dict) -> int:
    """A conv record's input height (a 1x1 conv writing planes records its rows as one long row)."""
    return shape["planes"][0] if shape.get("planes") and shape["kh"] == 1 else shape["h"]


def _planes_positions(record) -> int:
    """Plane positions a conv writing a depthwise conv's planes computes: every one, or the chunks that
    hold image positions (``rewrite.PLANES_OUTPUT_SKIPS_PADDING``) of the stride phases the depthwise
    conv reads (``rewrite.PLANES_OUTPUT_SKIPS_PHASES``): ``shape["live"]`` chunks per filter tile."""
    live = record.shape.get("live")
    if live is None:
        return len(record.mask)
    return live * record.tile["mt"] * record.tile["vw"]


#: --compare keys: (label, context manager building the model that way)
COMPARISONS = {"silu": ("SiLU as ReLU (what-if, wrong outputs)", _silu_as_relu),
               "split": ("no split reductions (every 1x1 conv split by filters)",
                         lambda: _compiler_flag("SPLIT_REDUCTION", False)),
               "partials": ("split convs adding their parts in a second pass",
                            lambda: _compiler_flag("SPLIT_PARTIALS", False)),
               "planes": ("no planes output (planes limits 0)", lambda: _planes_limit(0.0)),
               "padding-rows": ("planes writers computing the padding rows too (PLANES_OUTPUT_SKIPS_PADDING off)",
                                lambda: _compiler_flag("PLANES_OUTPUT_SKIPS_PADDING", False)),
               "kxk-planes": ("no kxk conv writing planes (the stem's output cropped, then padded)",
                              lambda: _compiler_flag("KXK_PLANES_OUTPUT", False)),
               "residual-planes": ("residual adds reading their own tensor (stored twice: plain and padded)",
                                   lambda: _compiler_flag("RESIDUAL_READS_PLANES", False)),
               "activations": ("activations as before (Cephes exp, division by 6)", _activations_before),
               "ragged-rows": ("rows no vector width divides left to LLVM (VECTORIZE_RAGGED_ROWS off)",
                               lambda: _compiler_flag("VECTORIZE_RAGGED_ROWS", False, "generic_schedule")),
               "serial-small": ("tiny functions parallel too (SERIAL_MAX_ELEMENTS 0, SERIAL_MAX_MACS -1)",
                                _parallel_tiny),
               "unread-channels": ("channels no layer reads computed too (shrink.SHRINK_UNREAD_CHANNELS off)",
                                   lambda: _compiler_flag("SHRINK_UNREAD_CHANNELS", False, "npas_lightning.shrink")),
               "phases": ("planes writers computing every stride phase (PLANES_OUTPUT_SKIPS_PHASES off)",
                          lambda: _compiler_flag("PLANES_OUTPUT_SKIPS_PHASES", False)),
               "stored-epilogue": ("sparse kernels storing raw sums, then re-reading them for the epilogue "
                                   "(EPILOGUE_IN_REGISTERS off)",
                                   lambda: _compiler_flag("EPILOGUE_IN_REGISTERS", False, "conv_kernel")),
               "depthwise-counts": ("sparse depthwise blocks all reading the largest count of kept positions "
                                    "(rewrite.DEPTHWISE_COUNTS off)", lambda: _compiler_flag("DEPTHWISE_COUNTS", False)),
               "whole-last-chunk": ("block-sparse convs computing all of their last pixel chunk (TAIL_PIXELS off)",
                                    lambda: _compiler_flag("TAIL_PIXELS", False, "conv_kernel"))}


def _timing_input(buf, arg, rng: np.random.Generator, dev):
    """A function's argument when it is timed alone: the constant its call passes (weights, and the
    index buffers a sparse kernel gathers with: zeros there would read one input channel, always in
    cache), else random values of the buffer's shape (activations, outputs)."""
    import tvm
    from tvm.ir.expr import Constant

    if isinstance(arg, Constant):
        return arg.value
    shape, dtype = [int(s) for s in buf.shape], str(buf.dtype)
    if not dtype.startswith("float"):
        raise ValueError(f"{buf}: an integer argument that is not a constant cannot be timed alone")
    return tvm.runtime.tensor(rng.random(shape).astype(dtype), dev)


def _alone_timers(result, spec, dev, rng: np.random.Generator) -> dict[str, tuple[Callable[[], float], int]]:
    """Every function ``main`` calls, built alone: ``name -> (timer, calls)``; ``timer()`` returns the
    mean ms of 5 back-to-back runs on :func:`_timing_input` arguments."""
    import tvm
    from tvm import relax, tirx

    call_tir = tvm.ir.Op.get("relax.call_tir")
    calls: collections.Counter = collections.Counter()
    first_args: dict[str, list] = {}  # each function's first call: its constants are timed as passed

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and expr.op == call_tir:
            calls[expr.args[0].name_hint] += 1
            first_args.setdefault(expr.args[0].name_hint, list(expr.args[1].fields))

    relax.analysis.post_order_visit(result.mod["main"].body, visit)
    timers = {}
    for gv, func in result.mod.functions_items():
        name = gv.name_hint
        if not isinstance(func, tirx.PrimFunc) or name not in calls:
            continue
        lib = tvm.tirx.build(func.with_attr("global_symbol", name), target=spec.tvm_target)
        inputs = [_timing_input(param, arg, rng, dev)
                  for param, arg in itertools.zip_longest(func.params, first_args[name])]
        evaluator = lib.time_evaluator(lib.entry_name, dev, number=5, repeat=1)
        timers[name] = (lambda ev=evaluator, a=inputs: ev(*a).mean * 1e3, calls[name])
    return timers


def _kernel_speedups(dense, pruned, spec, dev, rng: np.random.Generator, rounds: int = 7) -> list[dict]:
    """Each layer's kernel in the dense and the pruned build, timed alone in alternation (median of
    ``rounds``): ``module, kind, shape, density, dense_ms, pruned_ms, speedup`` per layer."""
    dense_timers, pruned_timers = _alone_timers(dense, spec, dev, rng), _alone_timers(pruned, spec, dev, rng)
    by_module = {r.module: r for r in dense.records}
    pairs = [(by_module[r.module], r) for r in pruned.records
             if r.module in by_module and by_module[r.module].symbol in dense_timers and r.symbol in pruned_timers]
    samples: dict[str, list[list[float]]] = {r.module: [[], []] for _, r in pairs}
    for _ in range(rounds):
        for d, r in pairs:
            samples[r.module][0].append(dense_timers[d.symbol][0]())
            samples[r.module][1].append(pruned_timers[r.symbol][0]())
    rows = []
    for _, r in pairs:
        dense_ms, pruned_ms = (float(np.median(v)) for v in samples[r.module])
        sh = r.shape
        shape = (f"{sh['c']}->{sh['f']}" if r.kind == "dense" else
                 f"{sh['kh']}x{sh['kw']} s{sh['s']} {sh['c']}->{sh['f']} @{_input_size(sh)}")
        rows.append({"module": r.module, "kind": r.kind, "shape": shape, "epilogue": r.epilogue,
                     "density": (r.sparse or {}).get("density", 1.0), "dense_ms": dense_ms, "pruned_ms": pruned_ms,
                     "speedup": dense_ms / pruned_ms})
    return rows


def _in_context_ms(vm, arg, runs: int = 40) -> tuple[dict[str, float], float]:
    """Every called function's time inside the whole model: the VM calls a Python callback before
    and after each call (``set_instrument``), which reads a clock. Per function: the median over
    ``runs`` runs of its time summed over the run. The callback's own cost (about a microsecond at
    each end of a call) is inside these times; the VM builtins (``vm.builtin.*``: tensor allocations
    from the planned storage, views), timed the same way, show its size. Returns ``(per function ms,
    median instrumented run ms)``."""
    import time

    clock, log, start = time.perf_counter, [], [0.0]

    def instrument(func, name, before_run, ret_value, *args):
        if before_run:
            start[0] = clock()
        else:
            log.append((name, clock() - start[0]))
        return 0  # 0: keep instrumenting

    vm.set_instrument(instrument)
    per_run, walls = [], []
    for i in range(runs + 1):
        if i % 5 == 0:  # batches of 5 runs spread over a few seconds: a busy moment spoils one batch
            time.sleep(0.2)
        log.clear()
        t0 = clock()
        vm["main"](arg)
        walls.append(clock() - t0)
        if i == 0:  # the first run warms the caches and the thread pool
            continue
        summed: dict[str, float] = collections.defaultdict(float)
        for name, seconds in log:
            summed[name] += seconds
        per_run.append(summed)
    vm.set_instrument(lambda *a: 0)
    names = set().union(*per_run)
    return ({n: float(np.median([r.get(n, 0.0) for r in per_run])) * 1e3 for n in names},
            float(np.median(walls[1:])) * 1e3)


#: ms each whole-model sample of ``_interleaved_ms`` lasts at least
SAMPLE_MS = 30.0


def _interleaved_ms(executables: list, x: np.ndarray, rounds: int = 15) -> list[float]:
    """Median ms of each executable's ``main``, timed in alternation ``rounds`` times."""
    import time

    import tvm
    from tvm import relax

    dev = tvm.cpu()
    vms = [relax.VirtualMachine(e, dev) for e in executables]
    arg = tvm.runtime.tensor(x)
    # samples of at least SAMPLE_MS (5 runs or more): after each pause the cores need some milliseconds
    # to come back, which 5-run samples of a 1 ms model mostly measure (bench_sparse_models.py --sample-ms)
    numbers = [max(5, math.ceil(SAMPLE_MS / (vm.time_evaluator("main", dev, number=5, repeat=3)(arg).median * 1e3)))
               for vm in vms]
    samples: list[list[float]] = [[] for _ in vms]
    for _ in range(rounds):
        for vm, number, out in zip(vms, numbers, samples, strict=True):
            time.sleep(0.05)  # spread over a few seconds: a busy moment of the VM spoils one round
            out.append(vm.time_evaluator("main", dev, number=number, repeat=1)(arg).mean * 1e3)
    return [float(np.median(v)) for v in samples]


def _print_speedups(rows: list[dict], label: str, top: int = 20) -> None:
    """The layers whose dense kernels take longest, with their pruned kernels, and the totals."""
    table = Table(title=f"each layer's kernel alone: dense vs {label} (the {top} slowest dense kernels)")
    for col in ("layer", "kind", "shape", "activation", "work", "dense ms", f"{label} ms", "speedup"):
        table.add_column(col, justify="left" if col in ("layer", "kind", "shape", "activation") else "right")
    for r in sorted(rows, key=lambda r: -r["dense_ms"])[:top]:
        table.add_row(r["module"], r["kind"], r["shape"], r["epilogue"] or "-", f"{r['density']:.2f}",
                      f"{r['dense_ms']:.3f}", f"{r['pruned_ms']:.3f}", f"{r['speedup']:.2f}x")
    dense, pruned = sum(r["dense_ms"] for r in rows), sum(r["pruned_ms"] for r in rows)
    table.add_row(f"all {len(rows)} layers", "", "", "", "", f"{dense:.3f}", f"{pruned:.3f}", f"{dense / pruned:.2f}x")
    CONSOLE.print(table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet_b0")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rate", type=float, default=None,
                   help="prune uniformly at this rate first (bench_sparse_models' balanced plan)")
    p.add_argument("--unbalanced", action="store_true",
                   help="with --rate: the plan without balanced rows (results file suffix _unbalanced)")
    p.add_argument("--compare", nargs="*", default=[], choices=sorted(COMPARISONS),
                   help="also build the model these ways and time all whole models interleaved (see above)")
    p.add_argument("--planes-limits", nargs="*", type=float, default=[],
                   help="also build with both planes limits set to each value (timed with --compare)")
    p.add_argument("--kernel-speedups", action="store_true",
                   help="with --rate: also build the dense model and time each layer's kernel in both builds "
                        "alone, in alternation (which layers gain less than the rate)")
    args = p.parse_args()
    if args.unbalanced and args.rate is None:
        p.error("--unbalanced is a pruning option: give --rate too")
    if args.kernel_speedups and args.rate is None:
        p.error("--kernel-speedups compares the pruned build's kernels with the dense build's: give --rate too")
    import tvm
    from tvm import relax

    model = timm.create_model(args.model, pretrained=False).eval()
    x = torch.randn(1, 3, args.size, args.size)
    spec = resolve_target("host", threads=args.threads)
    dense_import = import_model(model, x) if args.kernel_speedups else None
    pruned = _pruned(model, args.rate, not args.unbalanced) if args.rate is not None else None

    def frozen_import():
        """The model as compile_model prepares it (under the settings of the moment), imported."""
        frozen = frozen_for_compile(*pruned, x)[0] if pruned is not None else model
        return frozen, import_model(frozen, x)

    model, imported = frozen_import()

    def build(imp=imported):
        return build_relax(imp.mod, spec, planner=TilePlanner(spec, cache=TileCache(fresh_tile_cache())), names=imp.names,
                           sparse_layers=getattr(imp, "sparse", None))

    result = build()
    result.mod = relax.transform.RewriteDataflowReshape()(result.mod)  # what the build does to reshapes
    configure_threads(args.threads)
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    per_function, groups, counts = {}, collections.defaultdict(float), collections.Counter()
    timers = _alone_timers(result, spec, dev, rng)
    samples: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(7):  # rounds over all functions: a busy moment of the VM spoils one round, not a function
        for name, (timer, _) in timers.items():
            samples[name].append(timer())
    for name, (_, calls) in timers.items():
        ms = float(np.median(samples[name])) * calls
        per_function[name] = ms
        groups[_group(name)] += ms
        counts[_group(name)] += calls
    executable = tvm.compile(result.mod, target=spec.tvm_target)
    vm = relax.VirtualMachine(executable, dev)
    arg = tvm.runtime.tensor(x.numpy())
    whole = _interleaved_ms([executable], x.numpy())[0]
    in_context, instrumented_run = _in_context_ms(vm, arg)
    context_groups: dict[str, float] = collections.defaultdict(float)
    for name, ms in in_context.items():
        context_groups["VM builtins (allocations, views)" if name.startswith("vm.") else _group(name)] += ms
    label = "dense" if args.rate is None else f"{args.rate:g}x" + (", unbalanced rows" if args.unbalanced else "")
    table = Table(title=f"{args.model} ({label}) @{args.size}, batch 1, {args.threads} threads: whole model "
                        f"{whole:.2f} ms ({instrumented_run:.2f} ms instrumented)")
    for col in ("group", "calls", "ms (sum of functions timed alone)", "ms in the model (instrumented)"):
        table.add_column(col)
    for g in sorted(context_groups, key=lambda k: -groups.get(k, 0.0)):
        table.add_row(g, str(counts[g]) if g in counts else "", f"{groups[g]:.2f}" if g in groups else "",
                      f"{context_groups[g]:.2f}")
    table.add_row("total", str(sum(counts.values())), f"{sum(groups.values()):.2f}", f"{sum(context_groups.values()):.2f}")
    CONSOLE.print(table)
    top = sorted(per_function.items(), key=lambda kv: -kv[1])[:10]
    print("alone ms  in the model ms  function")
    for name, ms in top:
        print(f"{ms:8.3f}  {in_context.get(name, float('nan')):14.3f}  {name}")
    writers = {r.module: {"map": r.shape["planes"], "positions_vs_map": _planes_positions(r) / math.prod(r.shape["planes"])}
               for r in result.records if r.mask is not None}
    print(f"convs writing a depthwise conv's planes: {len(writers)}")
    for module, w in writers.items():
        print(f"  {module} @{w['map'][0]}x{w['map'][1]}: computes {w['positions_vs_map']:.3f}x the map's positions")
    compared = {}
    variants = [(COMPARISONS[k][0], COMPARISONS[k][1]) for k in args.compare]
    variants += [(f"planes limits {v:g}", lambda v=v: _planes_limit(v)) for v in args.planes_limits]
    if variants:
        builds = [executable]
        for _, way in variants:
            with way():
                builds.append(build(frozen_import()[1]).executable)
        times = _interleaved_ms(builds, x.numpy())
        compared = {"as compiled": times[0], **{way: t for (way, _), t in zip(variants, times[1:], strict=True)}}
        for way, ms in compared.items():
            print(f"{ms:7.2f} ms  whole model, {way} ({ms - times[0]:+.2f} ms)")
    speedups = []
    if args.kernel_speedups:
        dense_build = build(dense_import)
        speedups = _kernel_speedups(dense_build, result, spec, dev, rng)
        _print_speedups(speedups, label)
    suffix = (("" if args.rate is None else f"_{args.rate:g}x") + ("_unbalanced" if args.unbalanced else "")
              + ("" if args.threads == 2 else f"_{args.threads}t"))
    path = write_results(f"bench_function_breakdown_{args.model}_{args.size}{suffix}",
                         "python benchmarks/bench_function_breakdown.py " + " ".join(sys.argv[1:]),
                         {"plan": label, "whole_model_ms": whole, "groups_ms": dict(groups), "calls": dict(counts),
                          "top_functions_ms": dict(top), "functions_ms": per_function,
                          "in_model_functions_ms": in_context, "in_model_groups_ms": dict(context_groups),
                          "instrumented_run_ms": instrumented_run, "compared_whole_model_ms": compared,
                          "planes_writers": writers, "kernel_speedups": speedups})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
