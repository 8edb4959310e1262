"""Is a slow minute the model's or the machine's? A compiled model on two threads and on one, with the
cores' parallel round trip, round after round.

On a VM the host decides where the vCPUs run. On the project's 2-vCPU AMD EPYC VM it sometimes runs
them on cores far apart: a cache line then takes about 5x longer to go from one core to the other,
every parallel loop waits longer for its workers, and every read of what the other core has just
written is slower; one core alone runs as fast as ever. This script shows it in one process: each
round measures

- ``round trip``: µs per call of an empty parallel loop on two threads
  (``_placement.parallel_round_trip_us``);
- the dense and the pruned build of the model on two threads and on one, in samples of at least
  ``--sample-ms`` after a 0.2 s pause each (``measure_interleaved``, one round per call);
- where a C compiler is found (``cc``), ``core_pingpong.c`` built with it: a cache line's round trip
  between two threads pinned to CPUs 0 and 1 (ns), and CPU 1 reading 256 KiB that CPU 0 / that
  CPU 1 itself has just written (µs); ``--no-pingpong`` skips it;

then labels each round ``near`` or ``far`` (``_placement.placements``, by the ping-pong where it
ran) and reports the medians of each
placement's rounds. The rounds are printed as they come, so a placement change shows as it happens.

    .venv/bin/python benchmarks/bench_core_placement.py                    # mobilenetv3 @224, 5x, 60 rounds
    .venv/bin/python benchmarks/bench_core_placement.py --model efficientnet_b0 --rounds 120

Results: ``benchmarks/results/bench_core_placement_<model>.json``.
"""

from __future__ import annotations

import argparse
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
from npas_lightning.compiler.engines import Engine, measure_interleaved, tvm_engine
from npas_lightning.compiler.measure import LocalSession
from npas_lightning.compiler.threads import configure_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fresh_tile_cache, write_results  # noqa: E402
from _placement import PingPong, placements, probe, rule  # noqa: E402
from bench_sparse_models import uniform_plan  # noqa: E402

#: timed per round: (build, threads)
CELLS = [("dense", 2), ("pruned", 2), ("dense", 1), ("pruned", 1)]


def _cell_engines(builds: dict, x: np.ndarray) -> list[Engine]:
    """One engine per :data:`CELLS` entry: the build's ``tvm_engine`` (exported and loaded as the
    whole-model benchmark times it), its thread count set before every timing."""
    session = LocalSession()
    loaded = {name: tvm_engine(c, x, session) for name, c in builds.items()}

    def timer(engine: Engine, threads: int):
        def run(number: int) -> float:
            configure_threads(threads)
            return engine.time(number)
        return run

    return [Engine(f"{b}@{t}", timer(loaded[b], t)) for b, t in CELLS]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenetv3_large_100")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rate", type=float, default=5.0, help="uniform rate of the pruned build (bench_sparse_models' plan)")
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--sample-ms", type=float, default=30.0)
    p.add_argument("--no-pingpong", action="store_true", help="skip the C ping-pong between CPUs 0 and 1")
    args = p.parse_args()
    if args.rate <= 1:
        p.error(f"--rate {args.rate:g}: expected a pruning rate above 1")
    if args.rounds < 1:
        p.error(f"--rounds {args.rounds}: expected at least 1")
    if args.sample_ms < 0:
        p.error(f"--sample-ms {args.sample_ms:g}: expected a number >= 0")
    pingpong = None if args.no_pingpong else PingPong.build()
    if pingpong is None and not args.no_pingpong:
        print("no C compiler found (cc, gcc, clang): the ping-pong columns are left out")
    torch.manual_seed(0)
    x = torch.randn(1, 3, args.size, args.size)
    dense = timm.create_model(args.model, pretrained=False).eval()
    pruned = timm.create_model(args.model, pretrained=False).eval()
    pruned.load_state_dict(dense.state_dict())
    plan = uniform_plan(pruned, args.rate, balanced=True)
    apply_masks(pruned, compute_masks(pruned, plan), plan)
    builds = {"dense": compile_model(dense, x, threads=2, tile_cache=fresh_tile_cache()),
              "pruned": compile_model(pruned, x, plan=plan, threads=2, tile_cache=fresh_tile_cache())}
    engines = _cell_engines(builds, x.numpy())
    rounds = []
    header = "time      round trip µs  " + "  ".join(f"{b} @{t}t ms".rjust(14) for b, t in CELLS)
    print(header + ("  ping-pong: line round trip ns, read 256 KiB other / own core µs" if pingpong else ""), flush=True)
    for _ in range(args.rounds):
        pr = probe(2, pingpong)
        # one interleaved round: a warm-up run sizes each sample (>= --sample-ms, >= 5 runs), 0.2 s pauses
        stats = measure_interleaved(engines, number=5, repeat=1, warmup=0, threads=None, target="host",
                                    input_shape=list(x.shape), min_sample_ms=args.sample_ms)
        ms = {e.name: stats[e.name].median_ms for e in engines}
        rounds.append({"time": time.strftime("%H:%M:%S"), "probe": pr, "ms": ms})
        line = f"{rounds[-1]['time']}  {pr['round_trip_us']:13.2f}  " + "  ".join(f"{v:14.3f}" for v in ms.values())
        if pingpong:
            line += f"  {pr['line_round_trip_ns']:5.0f} {pr['read256k_other_us']:6.1f} {pr['read256k_own_us']:6.1f}"
        print(line, flush=True)
    probes = [r["probe"] for r in rounds]
    labels = placements(probes)
    summary = {}
    for where in ("near", "far"):
        picked = [r for r, label in zip(rounds, labels, strict=True) if label == where]
        if picked:
            summary[where] = {"rounds": len(picked),
                              **{k: float(np.median([r["probe"][k] for r in picked])) for k in picked[0]["probe"]},
                              **{k: float(np.median([r["ms"][k] for r in picked])) for k in picked[0]["ms"]},
                              # each round's ratio (both builds timed within a second), then the median
                              "pruned_vs_dense_2t": float(np.median([r["ms"]["dense@2"] / r["ms"]["pruned@2"]
                                                                     for r in picked]))}
    table = Table(title=f"{args.model} @{args.size}, dense and {args.rate:g}x builds, median ms per placement "
                        f"({rule(probes)})")
    extra = ("line round trip ns", "read 256 KiB other / own µs") if pingpong else ()
    for col in ("placement", "rounds", "round trip µs", *extra, *(f"{b} @{t} threads" for b, t in CELLS),
                "pruned vs dense @2"):
        table.add_column(col, justify="right")
    for where, s in summary.items():
        cells = ([f"{s['line_round_trip_ns']:.0f}",
                  f"{s['read256k_other_us']:.1f} / {s['read256k_own_us']:.1f}"] if pingpong else [])
        table.add_row(where, str(s["rounds"]), f"{s['round_trip_us']:.2f}", *cells,
                      *(f"{s[f'{b}@{t}']:.3f}" for b, t in CELLS), f"{s['pruned_vs_dense_2t']:.2f}x")
    Console(width=150).print(table)
    command = "python benchmarks/bench_core_placement.py " + " ".join(sys.argv[1:])
    path = write_results(f"bench_core_placement_{args.model}", command,
                         {"model": args.model, "size": args.size, "rate": args.rate, "sample_ms": args.sample_ms,
                          "rounds": [{**r, "placement": lab} for r, lab in zip(rounds, labels, strict=True)],
                          "placement_rule": rule(probes), "by_placement": summary})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
