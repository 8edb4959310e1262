"""Whole models, batch 1: uniform fine-grained structured pruning compiled with the plan vs our dense
model vs ONNX Runtime's dense model, all timed interleaved in one process.

Every conv but the first is pruned at the same rate: kxk convs (depthwise included) ``block_punched``,
1x1 convs and the classifier ``block_based`` (issue 6's whole-model benchmark). Goals: at 5x >= 3x
faster than our dense model and >= 2.4x faster than ONNX Runtime's dense model.

    .venv/bin/python benchmarks/bench_sparse_models.py                       # both models, 224x224
    .venv/bin/python benchmarks/bench_sparse_models.py --models efficientnet_b0 --size 64 --rates 5
    .venv/bin/python benchmarks/bench_sparse_models.py --balanced            # balanced block rows

Results go to ``benchmarks/results/bench_sparse_models[_balanced][_<size> unless 224].json``, with
the machine's FMA peak and 64 MB copy bandwidth before and after (``machine_before`` / ``_after``,
``_peak.machine_state``): on a shared VM the models ran up to 2x slower in some minutes.

Each timed sample lasts at least ``--sample-ms`` (30 ms by default; ``--number`` runs at the least):
after the 0.2 s pause between engines the cores take a few milliseconds to run at full speed again,
and samples of a fixed 5 runs (3 ms of a pruned mobilenetv3, 10 ms of its dense model) measured
every engine 1.1-1.5x slower, the short pruned models most (``--sample-ms 0`` reproduces them).

Before every round the cores' placement is probed (``_placement.probe``: the parallel round trip,
and a C ping-pong between the cores where a C compiler is found, ``--no-pingpong`` to skip it): on
the shared AMD VM the host runs the two vCPUs on distant cores in some minutes, and every engine on
two threads then loses up to 0.9 ms per run (see ``_placement``). Rounds are labelled ``near`` or
``far`` (``_placement.placements``, over all models' rounds together) and the results hold, per model, the speedups over all rounds (the table's
columns) and over each placement's rounds (``by_placement``; the second table). Speedups are medians
of each round's ratio (the engines of one round ran in the same few seconds); times are medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
from rich.console import Console
from rich.table import Table

from npas_lightning.algorithms.masking import apply_masks, compute_masks
from npas_lightning.compiler import compile_model
from npas_lightning.compiler.engines import measure_interleaved, onnxruntime_engine, tvm_engine
from npas_lightning.compiler.measure import LatencyStats, LocalSession
from npas_lightning.compiler.rewrite import SPARSE_LOWERINGS
from npas_lightning.plan import NPASScheme

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fresh_tile_cache, write_results  # noqa: E402
from _peak import machine_state  # noqa: E402
from _placement import PingPong, placements, probe, rule  # noqa: E402

MODELS = ["efficientnet_b0", "mobilenetv3_large_100"]


def uniform_plan(model: torch.nn.Module, rate: float, *, balanced: bool,
                 rates: dict[str, float] | None = None) -> NPASScheme:
    """block_punched on every kxk conv, block_based on 1x1 convs and the classifier; the first conv dense.
    ``rates``: other rates for some layers (by module name)."""
    first = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))
    plan = {}
    for name, m in model.named_modules():
        if name == first or not isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            continue
        one_by_one = isinstance(m, torch.nn.Linear) or (m.kernel_size == (1, 1) and m.groups == 1)
        scheme, block = ("block_based", [16, 4]) if one_by_one else ("block_punched", [8, 4])
        plan[name] = {"scheme": scheme, "rate": (rates or {}).get(name, rate), "block": block,
                      "params": {"balanced": balanced}}
    return NPASScheme.resolve(plan, model, exclude=[])


def bench_model(name: str, size: int, rates: list[float], threads: int, number: int, repeat: int,
                balanced: bool, sample_ms: float = 30.0, pingpong: PingPong | None = None) -> list[dict]:
    torch.manual_seed(0)
    dense = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(1, 3, size, size)
    compiled, rows = {}, {}
    t0 = time.perf_counter()
    compiled["dense"] = compile_model(dense, x, threads=threads, tile_cache=fresh_tile_cache())
    rows["dense"] = {"rate": 1.0, "compile_s": time.perf_counter() - t0, "compile_breakdown": compiled["dense"].timings}
    for rate in rates:
        model = timm.create_model(name, pretrained=False).eval()
        model.load_state_dict(dense.state_dict())
        plan = uniform_plan(model, rate, balanced=balanced)
        apply_masks(model, compute_masks(model, plan), plan)
        t0 = time.perf_counter()
        c = compile_model(model, x, plan=plan, threads=threads, tile_cache=fresh_tile_cache())
        key = f"{rate:g}x"
        compiled[key] = c
        sparse = [k.sparse for k in c.kernels if k.sparse and k.sparse.get("lowering") in SPARSE_LOWERINGS]
        work = sum(k.flops for k in c.kernels) / max(1, sum(k.flops for k in compiled["dense"].kernels))
        rows[key] = {"rate": rate, "compile_s": time.perf_counter() - t0, "compile_breakdown": c.timings,
                     "sparse_kernels": len(sparse), "kernel_work_vs_dense": work,
                     "max_rel_err": c.numerics.get("max_rel"),
                     "unread_channels_cut": c.prepare_info.get("unread_channels_cut", {})}
    session = LocalSession()
    xn = x.numpy()
    engines = [dataclasses.replace(tvm_engine(c, xn, session), name=key) for key, c in compiled.items()]
    engines.append(onnxruntime_engine(dense, xn, threads))
    stats, probes, per_round = _timed_rounds(engines, number, repeat, threads, list(x.shape), sample_ms, pingpong)
    for e in engines:
        if e.cleanup:
            e.cleanup()
    ort = stats["onnxruntime"].median_ms
    out = []
    for key, row in rows.items():
        out.append({"model": name, "input": size, "plan": key, "balanced": balanced, **row, "ms": stats[key].median_ms,
                    **_round_speedups(per_round, key), "ort_dense_ms": ort,
                    "stats": stats[key].to_dict(), "probes": probes, "round_ms": [r[key] for r in per_round],
                    "onnxruntime_round_ms": [r["onnxruntime"] for r in per_round]})
    return out


def label_placements(rows: list[dict]) -> None:
    """Label every round of the run ``near`` or ``far`` from all models' probes together (the rule is
    relative to the lowest probe: a model timed wholly in far minutes, labelled alone, would read
    near), and add each row's ``placements``, ``placement_rule`` and ``by_placement`` (per placement:
    rounds, median ms, medians of each round's ratio, the probes' medians)."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    probes = {m: next(r["probes"] for r in rows if r["model"] == m) for m in models}
    pooled = [p for m in models for p in probes[m]]
    labels, start = placements(pooled), 0
    for m in models:
        own = labels[start:start + len(probes[m])]
        start += len(probes[m])
        mine = [r for r in rows if r["model"] == m]
        dense = next(r for r in mine if r["plan"] == "dense")["round_ms"]
        for r in mine:
            by_placement = {}
            for where in ("near", "far"):
                idx = [i for i, label in enumerate(own) if label == where]
                if not idx:
                    continue
                rounds = [{"dense": dense[i], "onnxruntime": r["onnxruntime_round_ms"][i], r["plan"]: r["round_ms"][i]}
                          for i in idx]
                by_placement[where] = {"rounds": len(idx), "ms": float(np.median([r["round_ms"][i] for i in idx])),
                                       **_round_speedups(rounds, r["plan"]),
                                       **{k: float(np.median([probes[m][i][k] for i in idx])) for k in probes[m][0]}}
            r.update(placements=own, placement_rule=rule(pooled), by_placement=by_placement)


def _round_speedups(rounds: list[dict[str, float]], key: str) -> dict[str, float]:
    """Median over ``rounds`` of each round's ratio, our dense / ``key`` and ONNX Runtime / ``key``: the
    engines of one round ran within a few seconds of each other, so in one state of the machine (a
    ratio of medians would divide the medians of different rounds when the state changes)."""
    return {"speedup_vs_dense": float(np.median([r["dense"] / r[key] for r in rounds])),
            "speedup_vs_ort": float(np.median([r["onnxruntime"] / r[key] for r in rounds]))}


def _timed_rounds(engines, number: int, repeat: int, threads: int, input_shape: list[int], sample_ms: float,
                  pingpong: PingPong | None) -> tuple[dict, list[dict[str, float]], list[dict[str, float]]]:
    """``repeat`` interleaved rounds (``measure_interleaved``, one round per call), each after the
    placement probes: ``(stats over all rounds, probes per round, ms per engine per round)``."""
    probes: list[dict[str, float]] = []
    per_round: list[dict[str, float]] = []
    for i in range(repeat):
        probes.append(probe(threads, pingpong))
        stats = measure_interleaved(engines, number=number, repeat=1, warmup=2 if i == 0 else 0, threads=threads,
                                    target="host", input_shape=input_shape, min_sample_ms=sample_ms)
        per_round.append({name: s.median_ms for name, s in stats.items()})
    overall = {}
    for name, last in stats.items():  # runs per sample: the last round's (each round sizes its own)
        meta = {k: v for k, v in last.to_dict().items() if k not in ("median_ms", "mean_ms", "std_ms", "min_ms")}
        meta.update(repeats=repeat, warmup=2, input_shape=tuple(input_shape))
        overall[name] = LatencyStats.from_seconds([r[name] / 1e3 for r in per_round], **meta)
    return overall, probes, per_round


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rates", nargs="+", type=float, default=[3.0, 5.0, 10.0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--number", type=int, default=5)
    p.add_argument("--repeat", type=int, default=11, help="interleaved rounds (each after the placement probes)")
    p.add_argument("--balanced", action="store_true", help="balanced block rows (equal kept count per row)")
    p.add_argument("--sample-ms", type=float, default=30.0,
                   help="each timed sample lasts at least this long (0: --number runs per sample)")
    p.add_argument("--no-pingpong", action="store_true",
                   help="label the rounds by the parallel round trip alone (no C ping-pong between the cores)")
    args = p.parse_args()
    pingpong = None if args.no_pingpong else PingPong.build()
    command = "python benchmarks/bench_sparse_models.py " + " ".join(sys.argv[1:])
    rows: list[dict] = []
    before = machine_state(args.threads)
    for name in args.models:
        rows += bench_model(name, args.size, args.rates, args.threads, args.number, args.repeat, args.balanced,
                            args.sample_ms, pingpong)
    after = machine_state(args.threads)
    label_placements(rows)
    name_suffix = ("_balanced" if args.balanced else "") + ("" if args.size == 224 else f"_{args.size}")
    path = write_results("bench_sparse_models" + name_suffix, command,
                         {"threads": args.threads, "sample_ms": args.sample_ms, "rows": rows, "machine_before": before,
                          "machine_after": after})
    table = Table(title=f"uniform block-structured pruning, batch 1 @{args.size}, {args.threads} threads")
    # "compile s": compile_model's own total_s (the compile time); compile_s in the results file
    # is the wall time around the call, the numerics check against PyTorch included
    for col in ("model", "plan", "ms", "vs our dense", "vs ORT dense", "ORT dense ms", "kernel work", "compile s",
                "max rel err"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["model"], r["plan"], f"{r['ms']:.2f}", f"{r['speedup_vs_dense']:.2f}x",
                      f"{r['speedup_vs_ort']:.2f}x", f"{r['ort_dense_ms']:.2f}",
                      f"{r.get('kernel_work_vs_dense', 1.0):.2f}",
                      f"{r['compile_breakdown']['total_s']:.1f}" if r.get("compile_breakdown") else "-",
                      f"{r['max_rel_err']:.1e}" if r.get("max_rel_err") is not None else "-")
    Console(width=160).print(table)
    by = Table(title="the same rounds by the cores' placement, probed before each round "
                     f"({next(r['placement_rule'] for r in rows)})")
    probe_key = "line_round_trip_ns" if all("line_round_trip_ns" in p for r in rows for p in r["probes"]) else "round_trip_us"
    unit = "cache line ns" if probe_key == "line_round_trip_ns" else "round trip µs"
    for col in ("model", "plan", "near rounds", unit, "ms", "vs our dense", "vs ORT dense", "far rounds", unit + " ",
                "ms ", "vs our dense ", "vs ORT dense "):
        by.add_column(col)
    for r in rows:
        if r["plan"] == "dense":
            continue
        cells = []
        for where in ("near", "far"):
            p = r["by_placement"].get(where)
            cells += ([str(p["rounds"]), f"{p[probe_key]:.0f}" if probe_key == "line_round_trip_ns" else f"{p[probe_key]:.2f}",
                       f"{p['ms']:.2f}", f"{p['speedup_vs_dense']:.2f}x", f"{p['speedup_vs_ort']:.2f}x"]
                      if p else ["0", "-", "-", "-", "-"])
        by.add_row(r["model"], r["plan"], *cells)
    Console(width=160).print(by)
    probes = [pr for r in rows if r["plan"] == "dense" for pr in r["probes"]]
    trips = [pr["round_trip_us"] for pr in probes]
    lines = [pr["line_round_trip_ns"] for pr in probes if "line_round_trip_ns" in pr]
    print(f"per round: parallel round trip {min(trips):.2f}-{max(trips):.2f} µs"
          + (f", cache line round trip {min(lines):.0f}-{max(lines):.0f} ns" if lines else ""))
    print(f"machine before / after: FMA peak {before['fma']:.0f} / {after['fma']:.0f} GFLOP/s, "
          f"64 MB copy {before['copy_gbs']:.0f} / {after['copy_gbs']:.0f} GB/s, "
          f"parallel round trip {before['round_trip_us']:.2f} / {after['round_trip_us']:.2f} µs")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
