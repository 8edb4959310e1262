"""What each producer -> consumer edge of a compiled model costs the consumer: the consumer's time
right after its producer ran against its time right after itself ran, round after round, with the
cores' parallel round trip measured before each round.

The model is built as ``compile_model`` builds it (``bench_function_breakdown``'s build); every
function ``main`` calls is then built alone and called on tensors wired as ``main`` wires them
(each call's output is the next calls' input, views for reshapes, the constants as passed). For each
edge (a call B reading what a call A wrote), a round times B ten times right after A and ten times
right after B itself (mean µs of B alone). Right after A, B reads what A has just written, split
between the cores as A split it: where B splits its work otherwise, each core reads part of its
input from the other core's cache. Right after B itself, everything B reads is where B's own last
call left it. The difference is what the edge's cross-core data costs B (and A's leftovers in the
caches).

Rounds are labelled ``near`` or ``far`` (``_placement``: by a C ping-pong between the cores where a C
compiler is found, else by the parallel round trip; ``--no-pingpong``): on the shared AMD VM
the host runs the two vCPUs on distant cores in some minutes, and there every cross-core read costs
several times more. Per placement the script reports the edges' total extra time by the consumer's
kind, and the edges that cost most.

    .venv/bin/python benchmarks/bench_edges.py --model mobilenetv3_large_100 --rate 5      # about 3 minutes
    .venv/bin/python benchmarks/bench_edges.py --model efficientnet_b0 --rate 5 --rounds 4000

Results: ``benchmarks/results/bench_edges_<model>_<size>[_<rate>x].json``.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fresh_tile_cache, write_results  # noqa: E402
from _placement import PingPong, placements, probe, rule  # noqa: E402
from bench_function_breakdown import CONSOLE, _group, _pruned  # noqa: E402

from npas_lightning.compiler.frontend import import_model  # noqa: E402
from npas_lightning.compiler.pipeline import build_relax  # noqa: E402
from npas_lightning.compiler.rewrite import TilePlanner  # noqa: E402
from npas_lightning.compiler.targets import resolve_target  # noqa: E402
from npas_lightning.compiler.threads import configure_threads  # noqa: E402
from npas_lightning.compiler.tuning import TileCache  # noqa: E402
from npas_lightning.shrink import frozen_for_compile  # noqa: E402

#: calls of the consumer per edge, per way, per round
CALLS = 10


def _kind(name: str, records: dict) -> str:
    """The consumer's kind for the summary: the project kernel's layer kind, else its function group."""
    rec = records.get(name)
    if rec is None:
        return _group(name)
    if rec.kind == "conv":
        if rec.shape.get("kh", 1) == 1:
            return "1x1 conv writing dw planes" if "planes" in rec.shape else "1x1 conv"
        return "kxk conv"
    return {"depthwise": "depthwise conv", "dense": "matmul (FC, SE)"}.get(rec.kind, rec.kind)


def wired_calls(result, spec, x: np.ndarray) -> list[tuple[str, object, list, list[int | None]]]:
    """``main``'s calls in order, each ``(function name, built function, arguments, producer call
    index per argument)``: outputs allocated, inputs the earlier outputs (views for reshapes) or the
    constants ``main`` passes, the model input ``x``."""
    import tvm
    from tvm import relax
    from tvm.ir.expr import Constant

    call_tir = tvm.ir.Op.get("relax.call_tir")
    dev = tvm.cpu()
    main = result.mod["main"]
    tensors = {main.params[0]: tvm.runtime.tensor(x, dev)}
    producer: dict = {}
    built: dict = {}
    calls: list = []
    for block in main.body.blocks:
        for binding in block.bindings:
            var, value = binding.var, binding.value
            shape = [int(s) for s in var.ty.shape] if getattr(var.ty, "shape", None) is not None else None
            if isinstance(value, relax.Call) and value.op == call_tir:
                name = value.args[0].name_hint
                if name not in built:
                    lib = tvm.tirx.build(result.mod[name].with_attr("global_symbol", name), target=spec.tvm_target)
                    built[name] = lib[name]
                args, sources = [], []
                for arg in value.args[1].fields:
                    args.append(arg.value if isinstance(arg, Constant) else tensors[arg])
                    sources.append(None if isinstance(arg, Constant) else producer.get(arg))
                out = tvm.runtime.empty(shape, str(var.ty.dtype), dev)
                tensors[var], producer[var] = out, len(calls)
                calls.append((name, built[name], [*args, out], sources))
            elif isinstance(value, relax.Call):  # reshape builtins and the like: a view of their tensor
                source = next((a for a in value.args if isinstance(a, relax.Var) and a in tensors), None)
                if source is not None and shape is not None:
                    tensors[var] = tensors[source]._create_view(shape)
                    if source in producer:
                        producer[var] = producer[source]
            elif isinstance(value, relax.Var) and value in tensors:
                tensors[var] = tensors[value]
                if value in producer:
                    producer[var] = producer[value]
    return calls


def _after(calls, first: int, second: int) -> float:
    """Mean µs of call ``second`` over :data:`CALLS` calls, each right after call ``first``."""
    fa, aa = calls[first][1], calls[first][2]
    fb, ab = calls[second][1], calls[second][2]
    spent = 0.0
    for _ in range(CALLS):
        fa(*aa)
        t0 = time.perf_counter()
        fb(*ab)
        spent += time.perf_counter() - t0
    return spent / CALLS * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenetv3_large_100")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rate", type=float, default=None, help="prune uniformly at this rate first (balanced rows)")
    p.add_argument("--rounds", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=15, help="edges listed per placement")
    p.add_argument("--no-pingpong", action="store_true", help="label the rounds by the parallel round trip alone")
    args = p.parse_args()
    if args.rate is not None and args.rate <= 1:
        p.error(f"--rate {args.rate:g}: expected a pruning rate above 1 (leave it out for the dense model)")
    if args.rounds < 1:
        p.error(f"--rounds {args.rounds}: expected at least 1")
    if args.threads < 2:
        p.error(f"--threads {args.threads}: cross-core edges need at least 2 threads")
    from tvm import relax

    pingpong = None if args.no_pingpong else PingPong.build()
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    x = torch.randn(1, 3, args.size, args.size)
    if args.rate is not None:
        model = frozen_for_compile(*_pruned(model, args.rate), x)[0]
    spec = resolve_target("host", threads=args.threads)
    imported = import_model(model, x)
    result = build_relax(imported.mod, spec, planner=TilePlanner(spec, cache=TileCache(fresh_tile_cache())),
                         names=imported.names, sparse_layers=getattr(imported, "sparse", None))
    result.mod = relax.transform.RewriteDataflowReshape()(result.mod)  # what the build does to reshapes
    records = {r.symbol: r for r in result.records}
    configure_threads(args.threads)
    calls = wired_calls(result, spec, x.numpy())
    for _, fn, fn_args, _ in calls:
        fn(*fn_args)  # once through, as main runs them
    edges = sorted({(a, b) for b, (_, _, _, sources) in enumerate(calls) for a in sources if a is not None})
    rounds = []
    for i in range(args.rounds):
        pr = probe(args.threads, pingpong)
        rounds.append({"probe": pr,
                       "after_producer_us": [_after(calls, a, b) for a, b in edges],
                       "after_itself_us": [_after(calls, b, b) for _, b in edges]})
        if i % 50 == 0 or i == args.rounds - 1:
            extra = sum(rounds[-1]["after_producer_us"]) - sum(rounds[-1]["after_itself_us"])
            print(f"{time.strftime('%H:%M:%S')} round {i + 1}/{args.rounds}: round trip {pr['round_trip_us']:.2f} µs"
                  + (f", cache line {pr['line_round_trip_ns']:.0f} ns" if pingpong else "")
                  + f", edges' extra {extra:.0f} µs", flush=True)
    probes = [r["probe"] for r in rounds]
    labels = placements(probes)
    per_edge, summary = [], {}
    for where in ("near", "far"):
        picked = [r for r, label in zip(rounds, labels, strict=True) if label == where]
        if not picked:
            continue
        prod = np.median([r["after_producer_us"] for r in picked], axis=0)
        alone = np.median([r["after_itself_us"] for r in picked], axis=0)
        by_kind: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0])
        for (_, b), pu, su in zip(edges, prod, alone, strict=True):
            k = by_kind[_kind(calls[b][0], records)]
            k[0] += 1
            k[1] += pu - su
            k[2] += su
        summary[where] = {"rounds": len(picked),
                          **{k: float(np.median([r["probe"][k] for r in picked])) for k in picked[0]["probe"]},
                          "extra_us": float(np.sum(prod - alone)),
                          "by_consumer_kind": {k: {"edges": v[0], "extra_us": v[1], "after_itself_us": v[2]}
                                               for k, v in by_kind.items()}}
        per_edge.append((where, prod - alone, prod, alone))
    kinds = sorted({k for s in summary.values() for k in s["by_consumer_kind"]},
                   key=lambda k: -max(s["by_consumer_kind"].get(k, {"extra_us": 0})["extra_us"] for s in summary.values()))
    table = Table(title=f"{args.model} @{args.size} ({'dense' if args.rate is None else f'{args.rate:g}x'}), "
                        f"{args.threads} threads: each consumer's extra µs right after its producer, summed per "
                        f"kind ({rule(probes)})")
    table.add_column("consumer")
    table.add_column("edges", justify="right")
    for where, s in summary.items():
        line = f", cache line {s['line_round_trip_ns']:.0f} ns" if "line_round_trip_ns" in s else ""
        table.add_column(f"{where}: {s['rounds']} rounds, round trip {s['round_trip_us']:.2f} µs{line}", justify="right")
    for k in kinds:
        edges_n = next(s["by_consumer_kind"][k]["edges"] for s in summary.values() if k in s["by_consumer_kind"])
        table.add_row(k, str(edges_n), *(f"{s['by_consumer_kind'].get(k, {'extra_us': 0})['extra_us']:+.1f}"
                                         for s in summary.values()))
    table.add_row("all edges", str(len(edges)), *(f"{s['extra_us']:+.1f}" for s in summary.values()))
    CONSOLE.print(table)
    for where, extra, _, _ in per_edge:
        print(f"{where}: the {args.top} edges that cost most (µs, producer -> consumer)")
        for j in np.argsort(-extra)[:args.top]:
            a, b = edges[j]
            print(f"  {extra[j]:+7.1f}  {calls[a][0][:60]} -> {calls[b][0][:60]}")
    suffix = "" if args.rate is None else f"_{args.rate:g}x"
    command = "python benchmarks/bench_edges.py " + " ".join(sys.argv[1:])
    # per edge the medians of each placement, per round the probes and the edges' total (the per-round,
    # per-edge times would make a file of tens of MB)
    edge_rows = [{"producer": calls[a][0], "consumer": calls[b][0], "consumer_kind": _kind(calls[b][0], records),
                  **{f"{where}_{name}_us": float(v[j]) for where, _, prod, alone in per_edge
                     for name, v in (("after_producer", prod), ("after_itself", alone))}}
                 for j, (a, b) in enumerate(edges)]
    path = write_results(f"bench_edges_{args.model}_{args.size}{suffix}", command,
                         {"threads": args.threads, "calls_per_edge": CALLS, "edges": edge_rows,
                          "placement_rule": rule(probes), "summary": summary,
                          "rounds": [{"probe": r["probe"], "placement": lab,
                                      "extra_us": sum(r["after_producer_us"]) - sum(r["after_itself_us"])}
                                     for r, lab in zip(rounds, labels, strict=True)]})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
