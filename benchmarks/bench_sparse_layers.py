"""Layer level: the project's sparse kernels against its dense kernel, per pruning scheme and rate.

Each cell: speedup = dense kernel time / pruned-layer time, both measured interleaved in this process
(same kernel family, same threads, medians of repeats), each with the best tile of a small grid
(the project's auto-tuning). Pruned layers run as:

- ``block_punched`` (convs) / ``block_based`` (FC and 1x1 convs): the block-sparse kernel
  (``conv_primfunc`` / ``dense_primfunc`` with ``kept`` and per-tile ``counts``, packed by
  ``pack_sparse_rows``); the conv tiles are timed with one reduction and with channel blocks of 32
  and 64 (``cblock``, the compiler's ``block_conv_choices``); ``+balanced`` rows use the scheme's
  ``balanced=True`` (equal kept counts per filter band), when the scheme has that flag;
- ``pattern`` (3x3 only): the same block-sparse conv kernel on filter tiles regrouped by pattern
  (``pack_sparse_rows(..., reorder=True)``), small filter tiles;
- ``pattern (per-pattern kernel)``: ``pattern_primfunc``, one loop per pattern with the pattern's
  shifts as constants, one or two filters per tile (``pack_pattern``); ``compile_model`` times both
  kernels on a pattern layer and keeps the faster;
- ``unstructured``: the dense kernel with zeros (what the compiler emits for it);
- ``filter``: the dense kernel with ``round(F / rate)`` filters (the physically shrunk layer).

Roofline: ``FLOPs / rate / peak`` with ``peak`` = the cores' multiply-add throughput measured in this
process before and after the cells (the best of the two; ``_peak.py``: a TVM kernel of register FMA
chains, since torch's sgemm runs well below it on AMD CPUs; torch's sgemm is reported next to it);
the ``x roof`` column is measured time / roofline time.
Plots: Fig. 3b (speedup vs rate per scheme, 3x3 conv 256->256 @56x56) and Fig. 3a (dense conv
latency vs MACs for 1x1 / 3x3 / 5x5 at 56x56).

    .venv/bin/python benchmarks/bench_sparse_layers.py --threads 2
    .venv/bin/python benchmarks/bench_sparse_layers.py --quick      # smoke subset, ~1 min
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine, write_results  # noqa: E402
from _peak import best_peak, machine_peak  # noqa: E402

from npas_lightning.compiler.conv_kernel import ConvGeometry, ConvTile, conv_primfunc, pack_conv_weight  # noqa: E402
from npas_lightning.compiler.dense_kernel import DenseTile, dense_primfunc, pack_dense_weight  # noqa: E402
from npas_lightning.compiler.pattern_kernel import pack_pattern, pattern_primfunc  # noqa: E402
from npas_lightning.compiler.rewrite import KernelChoice, block_conv_choices, pattern_kernel_choices  # noqa: E402
from npas_lightning.compiler.sparse_pack import pack_sparse_rows  # noqa: E402
from npas_lightning.compiler.targets import resolve_target  # noqa: E402
from npas_lightning.compiler.threads import configure_threads
from npas_lightning.schemes import achieved_rate, get_scheme  # noqa: E402

NAME = "bench_sparse_layers"
RATES = (1.0, 2.0, 3.0, 5.0, 7.0, 10.0)
PATTERN_RATES = (2.25, 3.0, 5.0, 7.0, 10.0)
BLOCKS = ((8, 4), (16, 4), (32, 8))


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # conv | fc
    shape: tuple  # conv: (n, c, h, w, f, k, stride); fc: (n, c, f)

    @property
    def flops(self) -> int:
        if self.kind == "fc":
            n, c, f = self.shape
            return 2 * n * c * f
        return self.geom(ConvTile()).flops

    def geom(self, tile: ConvTile, f: int | None = None) -> ConvGeometry:
        n, c, h, w, f0, k, s = self.shape
        return ConvGeometry.make(n, c, h, w, f or f0, (k, k), s, (k // 2,) * 4, pixels=tile.pixels)

    @property
    def structured(self) -> str:
        return "block_based" if self.kind == "fc" or self.shape[5] == 1 else "block_punched"


LAYERS = [
    Layer("1x1 256->256 @28", "conv", (1, 256, 28, 28, 256, 1, 1)),
    Layer("3x3 128->128 @28", "conv", (1, 128, 28, 28, 128, 3, 1)),
    Layer("5x5 64->64 @28", "conv", (1, 64, 28, 28, 64, 5, 1)),
    Layer("3x3 s2 128->128 @28", "conv", (1, 128, 28, 28, 128, 3, 2)),
    Layer("FC 1024->1000 b1", "fc", (1, 1024, 1000)),
    Layer("FC 1024->1000 b64", "fc", (64, 1024, 1000)),
]
FIG3B = Layer("3x3 256->256 @56", "conv", (1, 256, 56, 56, 256, 3, 1))
FIG3A_CHANNELS = {1: (64, 128, 256), 3: (32, 64, 128), 5: (32, 64, 96)}

CONV_TILES = (ConvTile(8, 2, 16), ConvTile(8, 3, 16), ConvTile(4, 4, 16), ConvTile(16, 1, 16))
PATTERN_TILES = (ConvTile(1, 4, 16), ConvTile(1, 8, 16), ConvTile(2, 4, 16), ConvTile(4, 4, 16), ConvTile(8, 2, 16))


class Bench:
    """Builds kernels, tunes tiles on a short measurement, times pairs interleaved."""

    def __init__(self, threads: int, repeats: int):
        import tvm

        self.tvm = tvm
        self.spec = resolve_target("host", threads=threads)
        self.dev = tvm.cpu()
        self.repeats = repeats
        self.rng = np.random.default_rng(0)
        configure_threads(threads)

    # -- building: each returns a zero-argument callable's timer factory ------------------
    def _timer(self, func, args):
        lib = self.tvm.tirx.build(func, target=self.spec.tvm_target)
        targs = [self.tvm.runtime.tensor(np.ascontiguousarray(a), self.dev) if isinstance(a, np.ndarray)
                 else self.tvm.runtime.empty(a, "float32", self.dev) for a in args]

        def timer(number: int, repeat: int) -> list[float]:
            ev = lib.time_evaluator(lib.entry_name, self.dev, number=number, repeat=repeat)
            return list(ev(*targs).results)
        return timer

    def conv(self, layer: Layer, tile: ConvTile | KernelChoice, weight: np.ndarray, *, sparse: bool,
             reorder: bool = False):
        """A conv kernel's timer; ``tile`` a ``KernelChoice`` = the block-sparse kernel in channel blocks."""
        cblock = tile.cblock or None if isinstance(tile, KernelChoice) else None
        tile = tile.tile if isinstance(tile, KernelChoice) else tile
        f = weight.shape[0]
        g = layer.geom(tile, f)
        x = self.rng.standard_normal((g.n, g.c, g.phases * g.plane)).astype("float32")
        if not sparse:
            fp = -(-f // tile.ft) * tile.ft
            return self._timer(conv_primfunc(g, tile), [x, pack_conv_weight(weight, tile.ft), (g.n, fp, g.mp)]), 1.0
        pk = pack_sparse_rows(weight.reshape(f, -1), tile.ft, reorder=reorder)
        func, buffers = conv_primfunc(g, tile, kept=pk.kept, counts=pk.counts, cblock=cblock)
        fp = pk.packed.shape[0] * tile.ft
        return self._timer(func, [x, pk.packed, *buffers, (g.n, fp, g.mp)]), pk.work_fraction

    def pattern(self, layer: Layer, choice: KernelChoice, weight: np.ndarray):
        """The per-pattern kernel (one loop per pattern, compile-time shifts) on ``weight``."""
        tile, cblock = choice.tile, choice.cblock or None
        g = layer.geom(tile)
        x = self.rng.standard_normal((g.n, g.c, g.phases * g.plane)).astype("float32")
        pk = pack_pattern(weight, tile.ft, cblock=cblock)
        func = pattern_primfunc(g, tile, pk.patterns, pk.k, cblock=cblock)
        out = (g.n, pk.weights.shape[0] * tile.ft, g.mp)
        return self._timer(func, [x, pk.weights, pk.channels, pk.starts, out]), pk.work_fraction

    def fc(self, layer: Layer, tile: DenseTile, weight: np.ndarray, *, sparse: bool):
        n, c, _ = layer.shape
        f = weight.shape[0]
        x = self.rng.standard_normal((n, c)).astype("float32")
        if not sparse:
            fp = -(-f // tile.ft) * tile.ft
            return self._timer(dense_primfunc(n, c, f, tile), [x, pack_dense_weight(weight, tile.ft), (n, fp)]), 1.0
        pk = pack_sparse_rows(weight, tile.ft)
        fp = pk.packed.shape[0] * tile.ft
        func = dense_primfunc(n, c, f, tile, kept=pk.kept, counts=pk.counts)
        return self._timer(func, [x, pk.packed, pk.kept, (n, fp)]), pk.work_fraction

    def best(self, layer: Layer, weight: np.ndarray, tiles, *, sparse: bool, reorder: bool = False,
             pattern_kernel: bool = False):
        """Tune: the fastest tile of ``tiles`` on a short measurement; returns (timer, tile, density, est s)."""
        best = None
        for tile in tiles:
            if pattern_kernel:
                timer, dens = self.pattern(layer, tile, weight)
            elif layer.kind == "fc":
                timer, dens = self.fc(layer, tile, weight, sparse=sparse)
            else:
                timer, dens = self.conv(layer, tile, weight, sparse=sparse, reorder=reorder)
            timer(1, 1)  # warm-up
            est = float(np.min(timer(max(1, int(2e-3 / max(timer(1, 1)[0], 1e-6))), 3)))  # min: a selection
            if best is None or est < best[3]:
                best = (timer, tile, dens, est)
        return best

    def pair(self, dense, sparse) -> tuple[float, float]:
        """Median times of two timers measured interleaved (``repeats`` rounds of ~3 ms each)."""
        nd = max(1, int(3e-3 / dense[3]))
        ns = max(1, int(3e-3 / sparse[3]))
        td, ts = [], []
        for _ in range(self.repeats):
            td += dense[0](nd, 1)
            ts += sparse[0](ns, 1)
        return float(np.median(td)), float(np.median(ts))


def conv_tiles(layer: Layer, f: int | None = None, max_ft: int = 16):
    m = layer.geom(ConvTile(8, 1, 16), f).m
    return [t for t in CONV_TILES if t.ft <= max_ft and (t.mt == 1 or t.pixels <= m)]


def fc_tiles(layer: Layer, max_ft: int = 64):
    n = layer.shape[0]
    if n == 1:
        return [t for t in (DenseTile(16, 1, 4), DenseTile(32, 1, 4), DenseTile(64, 1, 4)) if t.ft <= max(16, max_ft)]
    return [t for t in (DenseTile(16, 8, 4), DenseTile(32, 4, 4), DenseTile(32, 8, 4), DenseTile(16, 4, 4))
            if t.ft <= max(16, max_ft) and n % t.nt == 0]


def masked_weight(layer: Layer, scheme: str, rate: float, seed: int, **params) -> np.ndarray:
    if layer.kind == "fc":
        _, c, f = layer.shape
        shape = (f, c)
    else:
        _, c, _, _, f, k, _ = layer.shape
        shape = (f, c, k, k)
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if rate == 1.0:
        return w.numpy()
    return (w * get_scheme(scheme)(w, rate, **params)).numpy()


def run_layer(b: Bench, layer: Layer, *, rates, blocks, pattern_rates, log,
              balanced_rates=(2.0, 5.0, 10.0)) -> list[dict]:
    """Every (scheme, block, rate) cell of one layer (the roofline columns come later: :func:`set_rooflines`)."""
    tiles = fc_tiles(layer) if layer.kind == "fc" else conv_tiles(layer)
    w_dense = masked_weight(layer, "unstructured", 1.0, seed=1)
    dense = b.best(layer, w_dense, tiles, sparse=False)
    rows = []

    def add(scheme, block, rate, sparse_best, achieved, kernel):
        td, ts = b.pair(dense, sparse_best)
        row = {"layer": layer.name, "flops": layer.flops, "scheme": scheme, "block": list(block) if block else None, "rate": rate,
               "achieved_rate": achieved, "kernel": kernel, "tile": sparse_best[1].to_dict(),
               "work_fraction": sparse_best[2], "dense_ms": td * 1e3, "sparse_ms": ts * 1e3, "speedup": td / ts,
               "dense_tile": dense[1].to_dict()}
        rows.append(row)
        log(row)

    structured = layer.structured
    has_balanced = "balanced" in get_scheme(structured).defaults
    for block in blocks:
        cand = fc_tiles(layer, block[0]) if layer.kind == "fc" else conv_tiles(layer, max_ft=max(4, block[0]))
        if layer.kind == "conv":  # the compiler's channel-blocked candidates too
            cand = cand + block_conv_choices(cand, layer.geom, layer.shape[1])
        for rate in rates:
            w = masked_weight(layer, structured, rate, seed=2, block=block)
            add(structured, block, rate, b.best(layer, w, cand, sparse=True), _achieved(w), "block-sparse")
        for rate in (balanced_rates if has_balanced else ()):
            w = masked_weight(layer, structured, rate, seed=2, block=block, balanced=True)
            add(structured + "+balanced", block, rate, b.best(layer, w, cand, sparse=True), _achieved(w),
                "block-sparse, balanced rows")
    if layer.kind == "conv" and layer.shape[5] == 3:
        for rate in pattern_rates:
            w = masked_weight(layer, "pattern", rate, seed=3)
            sp = b.best(layer, w, [t for t in PATTERN_TILES if t.pixels <= layer.geom(t).m], sparse=True, reorder=True)
            add("pattern", None, rate, sp, _achieved(w), "block-sparse, filters regrouped")
            pk = b.best(layer, w, pattern_kernel_choices(layer.geom, layer.shape[1], 16), sparse=True,
                        pattern_kernel=True)
            add("pattern (per-pattern kernel)", None, rate, pk, _achieved(w), "per-pattern loops, shifts constant")
    for rate in rates:
        w = masked_weight(layer, "unstructured", rate, seed=4)
        add("unstructured", None, rate, b.best(layer, w, tiles, sparse=False), _achieved(w), "dense with zeros")
    for rate in rates:
        f = layer.shape[-1] if layer.kind == "fc" else layer.shape[4]
        keep = max(1, round(f / rate))
        w = w_dense[:keep]
        if layer.kind == "fc":
            sp = b.best(Layer(layer.name, "fc", (*layer.shape[:2], keep)), w, fc_tiles(layer), sparse=False)
        else:
            sp = b.best(layer, w, conv_tiles(layer, keep), sparse=False)
        add("filter", None, rate, sp, f / keep, "dense, F/rate filters")
    return rows


def set_rooflines(rows: list[dict], peak_gflops: float) -> None:
    """Each row's ``roofline_ms`` (``flops / rate / peak``) and ``x_roofline`` (measured / roofline)."""
    for r in rows:
        r["roofline_ms"] = r["flops"] / r["rate"] / (peak_gflops * 1e9) * 1e3
        r["x_roofline"] = r["sparse_ms"] / r["roofline_ms"]


def _achieved(w: np.ndarray) -> float:
    return float(achieved_rate(torch.from_numpy(w != 0)))


def fig3a(b: Bench, *, channels) -> list[dict]:
    """Dense conv latency vs MACs at 56x56 for 1x1 / 3x3 / 5x5."""
    rows = []
    for k, chans in channels.items():
        for c in chans:
            layer = Layer(f"{k}x{k} {c}->{c} @56", "conv", (1, c, 56, 56, c, k, 1))
            w = masked_weight(layer, "unstructured", 1.0, seed=5)
            best = b.best(layer, w, conv_tiles(layer), sparse=False)
            t, _ = b.pair(best, best)
            macs = layer.flops // 2
            rows.append({"layer": layer.name, "k": k, "channels": c, "macs": macs, "ms": t * 1e3,
                         "gmacs_per_s": macs / t / 1e9, "tile": best[1].to_dict()})
    return rows


def plots(rows3b: list[dict], rows3a: list[dict], out_dir: Path) -> list[Path]:
    """Fig. 3b (speedup vs rate per scheme, from ``rows3b``) and Fig. 3a (latency vs MACs) as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for scheme in ("block_punched", "block_punched+balanced", "pattern", "pattern (per-pattern kernel)", "filter",
                   "unstructured"):
        pts = sorted((r["rate"], r["speedup"]) for r in rows3b if r["scheme"] == scheme)
        if pts:
            label = {"pattern": "pattern (block-sparse, regrouped)"}.get(scheme, scheme)
            ax.plot(*zip(*pts, strict=True), marker="o", label=label + (" (8,4)" if "block_" in scheme else ""))
    ax.plot([1, 10], [1, 10], "k:", lw=0.8, label="ideal (speedup = rate)")
    ax.set_xlabel("pruning rate (x)")
    ax.set_ylabel("speedup over the dense kernel (x)")
    paths.append(_save(plt, fig, ax, f"Fig. 3b: {rows3b[0]['layer']}, project TVM kernels", out_dir / f"{NAME}_fig3b.png"))
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for k in sorted({r["k"] for r in rows3a}):
        pts = sorted((r["macs"] / 1e6, r["ms"]) for r in rows3a if r["k"] == k)
        rate = np.median([r["gmacs_per_s"] for r in rows3a if r["k"] == k])
        ax.plot(*zip(*pts, strict=True), marker="o", label=f"{k}x{k} conv ({rate:.0f} GMAC/s median)")
    ax.set_xlabel("MACs (millions)")
    ax.set_ylabel("latency (ms)")
    paths.append(_save(plt, fig, ax, "Fig. 3a: dense conv latency vs MACs @56x56", out_dir / f"{NAME}_fig3a.png"))
    return paths


def _save(plt, fig, ax, title: str, path: Path) -> Path:
    """Title, grid and legend, then write ``path`` and close the figure."""
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _fmt_block(r):
    return "x".join(map(str, r["block"])) if r["block"] else "-"


def markdown(rows: list[dict], rows3a: list[dict]) -> str:
    lines = ["| layer | scheme | block | rate | achieved | dense ms | pruned ms | speedup | x roofline | tile |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["tile"]
        tile = f"ft{t['ft']}" + (f" mt{t['mt']}" if "mt" in t else f" nt{t['nt']}") + (
            f" cb{t['cblock']}" if t.get("cblock") else "")
        lines.append(f"| {r['layer']} | {r['scheme']} | {_fmt_block(r)} | {r['rate']:g} | {r['achieved_rate']:.2f} | "
                     f"{r['dense_ms']:.3f} | {r['sparse_ms']:.3f} | {r['speedup']:.2f} | {r['x_roofline']:.2f} | {tile} |")
    lines += ["", "| dense conv @56 | MACs (M) | ms | GMAC/s |", "|---|---|---|---|"]
    lines += [f"| {r['layer']} | {r['macs'] / 1e6:.0f} | {r['ms']:.3f} | {r['gmacs_per_s']:.1f} |" for r in rows3a]
    return "\n".join(lines)


def pivot(rows: list[dict]) -> str:
    """Markdown: one line per (layer, scheme, block), one column per rate: ``speedup (x roofline)``."""
    rates = sorted({r["rate"] for r in rows})
    lines = ["| layer | scheme | block | " + " | ".join(f"{x:g}x" for x in rates) + " |",
             "|---|---|---|" + "---|" * len(rates)]
    keys = dict.fromkeys((r["layer"], r["scheme"], _fmt_block(r)) for r in rows)
    for key in keys:
        cells = {r["rate"]: r for r in rows if (r["layer"], r["scheme"], _fmt_block(r)) == key}
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(
            f"{cells[x]['speedup']:.2f} ({cells[x]['x_roofline']:.2f})" if x in cells else "" for x in rates) + " |")
    return "\n".join(lines)


def _worst_best_roofline(rows: list[dict]) -> float | None:
    """Over the rates 2x, 3x and 5x that ``rows`` cover: the worst of each rate's best x-roofline."""
    per_rate = [min(r["x_roofline"] for r in rows if r["rate"] == rate) for rate in (2.0, 3.0, 5.0)
                if any(r["rate"] == rate for r in rows)]
    return max(per_rate, default=None)


def goals(rows: list[dict]) -> dict:
    """Best structured (block-sparse) speedup per layer at 5x and 10x; worst x-roofline at 2x-5x."""
    out = {}
    for layer in dict.fromkeys(r["layer"] for r in rows):
        st = [r for r in rows if r["layer"] == layer and r["scheme"].split("+")[0] in ("block_punched", "block_based")]
        best = {rate: max((r["speedup"] for r in st if r["rate"] == rate), default=None) for rate in (5.0, 10.0)}
        roof = _worst_best_roofline(st)
        out[layer] = {"best_5x": best[5.0], "best_10x": best[10.0], "worst_best_x_roofline_2_5x": roof,
                      "worst_best_x_roofline_2_5x_unbalanced": _worst_best_roofline(
                          [r for r in st if "+" not in r["scheme"]]),
                      "goal_5x_3.5": best[5.0] is not None and best[5.0] >= 3.5,
                      "goal_10x_5.5": best[10.0] is not None and best[10.0] >= 5.5,
                      "goal_roofline_1.3": roof is not None and roof <= 1.3}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a small subset (smoke check)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds per cell (default 21, quick 5)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    b = Bench(args.threads, args.repeats or (5 if args.quick else 21))
    console = Console()
    meta = machine()
    peak_before = machine_peak(args.threads)
    console.print(f"peak before: FMA {peak_before['fma']:.0f} GFLOP/s, torch sgemm {peak_before['torch_sgemm']:.0f} "
                  f"({args.threads} threads); {meta['cpu']}")
    layers = [LAYERS[1], LAYERS[4]] if args.quick else LAYERS
    rates = (1.0, 5.0, 10.0) if args.quick else RATES
    blocks = ((16, 4),) if args.quick else BLOCKS
    t0 = time.perf_counter()
    rows = []

    def log(r):
        console.print(f"[dim]{time.perf_counter() - t0:6.1f}s[/] {r['layer']:>22} {r['scheme']:>13} "
                      f"{_fmt_block(r):>5} {r['rate']:>5g}x: {r['speedup']:.2f}x ({r['sparse_ms']:.3f} ms)")
    for layer in layers:
        rows += run_layer(b, layer, rates=rates, blocks=blocks, pattern_rates=PATTERN_RATES[:1] if args.quick else PATTERN_RATES,
                          log=log, balanced_rates=(5.0,) if args.quick else tuple(r for r in rates if r > 1))
    fig3b_layer = Layer("3x3 128->128 @56", "conv", (1, 128, 56, 56, 128, 3, 1)) if args.quick else FIG3B
    rows3b = run_layer(b, fig3b_layer, rates=rates, blocks=((8, 4),),
                       pattern_rates=PATTERN_RATES[:1] if args.quick else PATTERN_RATES, log=log,
                       balanced_rates=tuple(r for r in rates if r > 1))
    rows3a = fig3a(b, channels={k: v[:2] for k, v in FIG3A_CHANNELS.items()} if args.quick else FIG3A_CHANNELS)
    elapsed = time.perf_counter() - t0
    peaks = best_peak(peak_before, machine_peak(args.threads))
    peak = peaks["fma"]
    set_rooflines(rows + rows3b, peak)
    console.print(f"peak (best of before and after): FMA {peak:.0f} GFLOP/s, torch sgemm {peaks['torch_sgemm']:.0f}")
    pngs = plots(rows3b, rows3a, RESULTS_DIR)
    table = Table(title=f"sparse kernels vs dense kernel, {args.threads} threads, FMA peak {peak:.0f} GFLOP/s")
    for col in ("layer", "scheme", "block", "rate", "achieved", "dense ms", "pruned ms", "speedup", "x roof"):
        table.add_column(col, justify="right" if col not in ("layer", "scheme") else "left")
    for r in rows + rows3b:
        table.add_row(r["layer"], r["scheme"], _fmt_block(r), f"{r['rate']:g}", f"{r['achieved_rate']:.2f}",
                      f"{r['dense_ms']:.3f}", f"{r['sparse_ms']:.3f}", f"{r['speedup']:.2f}", f"{r['x_roofline']:.2f}")
    console.print(table)
    g = goals(rows + rows3b)
    console.print(g)
    md = markdown(rows + rows3b, rows3a)
    md_pivot = pivot(rows + rows3b)
    print(md_pivot)
    command = "python benchmarks/bench_sparse_layers.py " + " ".join(sys.argv[1:])
    path = write_results(NAME, command.strip(), {
        "threads": args.threads, "quick": args.quick, "peak_gflops_fma": peak,
        "peak_gflops_torch_sgemm": peaks["torch_sgemm"], "peaks_before": peak_before, "elapsed_s": elapsed,
        "target": b.spec.target, "rows": rows, "fig3b": rows3b, "fig3a": rows3a, "goals": g,
        "plots": [str(p.relative_to(RESULTS_DIR.parent.parent)) for p in pngs], "markdown": md,
        "markdown_pivot": md_pivot})
    console.print(f"wrote {path} and {', '.join(p.name for p in pngs)} in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
