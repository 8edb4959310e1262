"""Ablations of five kernel decisions, each variant timed interleaved with the other in this process.

1. Register tiles on the stack (``conv_kernel.STACK_SCOPE = "global"``) against TVM's ``"local"``
   scope, which on CPU becomes a workspace allocation per tile: the same kernel built both ways on
   layers of efficientnet_b0's shapes (sparse 1x1 convs, depthwise convs on large and small maps,
   dense convs with tiles under and over the 1 KB stack limit, the per-pattern kernel).
2. The per-pattern kernel's design steps on pattern-pruned 3x3 convs, as speedups over the dense
   kernel: the block-sparse kernel on regrouped filters (best tile), the per-pattern kernel without
   channel blocks, with channel blocks, with two filters per tile, and with blocks but ``"local"``
   accumulators.
3. Channel blocks in the block-sparse conv (``conv_primfunc(..., cblock=...)``): the same tile with
   one reduction and with blocks of 32 and 64 input channels, on ``block_punched`` (8, 4) 3x3 convs
   whose input is larger (256 channels @56) and smaller (128 @28) than ``L2_INPUT_BYTES``.
4. Activation forms in the kernels' epilogues: SiLU's exp by Horner's rule with rounding by a shifter
   (:func:`~npas_lightning.compiler.epilogue.fast_exp`) against TOPI's Cephes form, and hard-swish
   times 1/6 against a division by 6, on sparse 1x1 expand convs and depthwise convs of
   efficientnet_b0's and mobilenetv3's shapes.
5. The block-sparse conv's last pixel chunk computed whole (``conv_kernel.TAIL_PIXELS = False``)
   against only its outputs below ``g.m`` (:func:`~npas_lightning.compiler.conv_kernel.tail_split`:
   whole vectors, then single pixels), on ``block_punched`` / ``block_based`` 5x layers whose pixel
   count is not a multiple of the pixel tile (a 3x3 stride-2 conv @28: 210 of 224; 1x1 convs @14 and
   @7), with one reduction and in channel blocks.

Usage::

    .venv/bin/python benchmarks/bench_kernel_ablation.py            # about 4 minutes
    .venv/bin/python benchmarks/bench_kernel_ablation.py --only activation
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402
from bench_sparse_layers import PATTERN_TILES, Bench, Layer, conv_tiles, masked_weight  # noqa: E402

from npas_lightning.compiler import conv_kernel, dense_kernel, epilogue, pattern_kernel  # noqa: E402
from npas_lightning.compiler.conv_kernel import ConvGeometry, ConvTile, conv_primfunc, depthwise_primfunc  # noqa: E402
from npas_lightning.compiler.rewrite import KernelChoice, clear_kernel_caches  # noqa: E402
from npas_lightning.compiler.sparse_pack import pack_sparse_rows  # noqa: E402

NAME = "bench_kernel_ablation"
#: the ablations, in the order they run (``--only``)
ABLATIONS = ("stack", "pattern", "cblock", "activation", "tail")


@contextmanager
def scope(name: str):
    """Build kernels with register tiles in storage scope ``name`` (the modules read it at build time)."""
    mods = (conv_kernel, dense_kernel, pattern_kernel)
    old = [m.STACK_SCOPE for m in mods]
    for m in mods:
        m.STACK_SCOPE = name
    clear_kernel_caches()
    try:
        yield
    finally:
        for m, o in zip(mods, old, strict=True):
            m.STACK_SCOPE = o
        clear_kernel_caches()


def _cephes_exp(x):
    """``exp(x)`` as the kernels computed it before: TOPI's ``fast_exp`` (Cephes constants, floor, a
    float-to-int conversion, ``p r^2 + r + 1``), clamped to +-88.376."""
    from tvm import tirx

    f32 = lambda v: tirx.const(v, "float32")  # noqa: E731
    x = tirx.max(tirx.min(x, f32(88.3762626647949)), f32(-88.3762626647949))
    n = tirx.floor(x * f32(1.44269504088896341) + f32(0.5))
    r = x - n * f32(0.693359375) - n * f32(-2.12194440e-4)
    p = f32(1.9875691500e-4)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * r + f32(c)
    return (p * r * r + r + f32(1.0)) * tirx.reinterpret("float32", tirx.shift_left(n.astype("int32") + 127, 23))


def _divided_activation(act: str, z):
    """The activations as the kernels computed them before: SiLU with :func:`_cephes_exp`, hard-swish
    divided by 6."""
    from tvm import tirx

    f32 = lambda v: tirx.const(v, "float32")  # noqa: E731
    if act == "silu":
        return z / (f32(1.0) + _cephes_exp(-z))
    if act == "hardswish":
        return z * tirx.min(tirx.max(z + f32(3.0), f32(0.0)), f32(6.0)) / f32(6.0)
    return CURRENT_ACTIVATION(act, z)


CURRENT_ACTIVATION = epilogue.activation_expr  # the other activations, whatever is patched in later


@contextmanager
def patched_activation(expr: Callable | None):
    """Build kernels with ``expr(act, z)`` as ``epilogue.activation_expr`` (``None``: the real one);
    the kernel caches are cleared on the way in and out."""
    real = epilogue.activation_expr
    epilogue.activation_expr = expr or real
    clear_kernel_caches()
    try:
        yield
    finally:
        epilogue.activation_expr = real
        clear_kernel_caches()


def activation_forms(name: str):
    """Build kernels with the activations' current forms (``"current"``) or the earlier ones
    (``"before"``: :func:`_divided_activation`)."""
    return patched_activation(_divided_activation if name == "before" else None)


def _estimate(timer) -> tuple:
    timer(1, 1)
    return timer, None, None, float(np.min(timer(max(1, int(2e-3 / max(timer(1, 1)[0], 1e-6))), 3)))


def depthwise_timer(b: Bench, c: int, hw: int, k: int, stride: int, mt: int, act: str = "silu"):
    g = ConvGeometry.make(1, c, hw, hw, c, (k, k), stride, (k // 2,) * 4, pixels=16 * mt)
    x = b.rng.standard_normal((1, c, g.x_len)).astype("float32")
    w = b.rng.standard_normal((c, k * k)).astype("float32")
    bias = b.rng.standard_normal(c).astype("float32")
    return b._timer(depthwise_primfunc(g, ConvTile(1, mt, 16), epilogue=act), [x, w, bias, (1, c, g.mp)])


def expand_timer(b: Bench, c: int, hw: int, f: int, act: str, tile: ConvTile):
    """A block_based (16, 4) 5x sparse 1x1 conv ``c -> f`` at ``hw x hw`` with bias and ``act``."""
    layer = Layer(f"1x1 {c}->{f} @{hw}", "conv", (1, c, hw, hw, f, 1, 1))
    pk = pack_sparse_rows(masked_weight(layer, "block_based", 5.0, seed=2, block=(16, 4)).reshape(f, -1), tile.ft)
    g = layer.geom(tile, f)
    func, buffers = conv_primfunc(g, tile, kept=pk.kept, counts=pk.counts, epilogue=act)
    x = b.rng.standard_normal((g.n, g.c, g.phases * g.plane)).astype("float32")
    bias = b.rng.standard_normal(pk.packed.shape[0] * tile.ft).astype("float32")
    return b._timer(func, [x, pk.packed, *buffers, bias, (g.n, pk.packed.shape[0] * tile.ft, g.mp)])


def activation_cases(b: Bench) -> list[tuple[str, Callable[[], object]]]:
    """(label, build) pairs of kernels with an activation epilogue (efficientnet_b0's SiLU and
    mobilenetv3's hard-swish layers)."""
    t8, t16 = ConvTile(8, 2, 16), ConvTile(16, 1, 16)
    return [
        ("sparse 1x1 16->96 @112, 5x, + SiLU", lambda: expand_timer(b, 16, 112, 96, "silu", t8)),
        ("sparse 1x1 24->144 @56, 5x, + SiLU", lambda: expand_timer(b, 24, 56, 144, "silu", t8)),
        ("sparse 1x1 112->672 @14, 5x, + SiLU", lambda: expand_timer(b, 112, 14, 672, "silu", t16)),
        ("depthwise 3x3 144 @56 + SiLU", lambda: depthwise_timer(b, 144, 56, 3, 1, 1)),
        ("depthwise 5x5 672 @14 + SiLU", lambda: depthwise_timer(b, 672, 14, 5, 1, 4)),
        ("sparse 1x1 80->480 @14, 5x, + hard-swish", lambda: expand_timer(b, 80, 14, 480, "hardswish", t16)),
        ("sparse 1x1 160->960 @7, 5x, + hard-swish", lambda: expand_timer(b, 160, 7, 960, "hardswish", t16)),
        ("depthwise 3x3 200 @14 + hard-swish", lambda: depthwise_timer(b, 200, 14, 3, 1, 1, "hardswish")),
        ("depthwise 5x5 960 @7 + hard-swish", lambda: depthwise_timer(b, 960, 7, 5, 1, 1, "hardswish")),
    ]


def run_pairs(b: Bench, cases, ways: dict, log) -> list[dict]:
    """Each case built both ``ways`` (``{name: context manager factory}``, the first is the baseline)
    and timed interleaved: rows ``{"kernel", "<name>_ms" x 2, "speedup"}``."""
    (name_a, way_a), (name_b, way_b) = ways.items()
    rows = []
    for label, build in cases:
        with way_a():
            first = _estimate(build())
        with way_b():
            second = _estimate(build())
        ta, tb = b.pair(first, second)
        rows.append({"kernel": label, f"{name_a}_ms": ta * 1e3, f"{name_b}_ms": tb * 1e3, "speedup": ta / tb})
        log(f"{label}: {name_a} {ta * 1e3:.4f} ms, {name_b} {tb * 1e3:.4f} ms, {ta / tb:.3f}x")
    return rows


@contextmanager
def last_chunk(tail: bool):
    """Build block-sparse convs computing their last pixel chunk whole (``tail=False``) or up to ``g.m``."""
    old = conv_kernel.TAIL_PIXELS
    conv_kernel.TAIL_PIXELS = tail
    clear_kernel_caches()
    try:
        yield
    finally:
        conv_kernel.TAIL_PIXELS = old
        clear_kernel_caches()


def tail_cases(b: Bench) -> list[tuple[str, Callable[[], object]]]:
    """(label, build) pairs: 5x block-sparse convs whose last pixel chunk is partly past ``g.m``."""
    s2 = Layer("3x3 s2 128->128 @28", "conv", (1, 128, 28, 28, 128, 3, 2))
    pw14 = Layer("1x1 112->672 @14", "conv", (1, 112, 14, 14, 672, 1, 1))
    pw7 = Layer("1x1 672->192 @7", "conv", (1, 672, 7, 7, 192, 1, 1))
    pw28 = Layer("1x1 256->256 @28", "conv", (1, 256, 28, 28, 256, 1, 1))
    w_s2 = masked_weight(s2, "block_punched", 5.0, seed=2, block=(8, 4), balanced=True)
    w14, w7, w28 = (masked_weight(layer, "block_based", 5.0, seed=2, block=(16, 4)) for layer in (pw14, pw7, pw28))
    cases = []
    for layer, w, tile, cblock in ((s2, w_s2, ConvTile(8, 2, 16), 0), (s2, w_s2, ConvTile(8, 3, 16), 0),
                                   (pw14, w14, ConvTile(8, 2, 16), 0), (pw14, w14, ConvTile(16, 1, 16), 0),
                                   (pw7, w7, ConvTile(8, 2, 16), 0), (pw7, w7, ConvTile(4, 4, 16), 0),
                                   (pw28, w28, ConvTile(8, 2, 16), 32)):
        g = layer.geom(tile)
        split = conv_kernel.tail_split(g, tile)
        choice = KernelChoice.of("block", tile, cblock) if cblock else tile
        label = (f"{layer.name}, 5x, tile {tile.ft}x{tile.mt}{f' cb{cblock}' if cblock else ''}: last chunk "
                 f"{split[0]} vectors + {split[1]} pixels ({g.m} of {g.mp} outputs)")
        cases.append((label, lambda layer=layer, choice=choice, w=w: b.conv(layer, choice, w, sparse=True)[0]))
    return cases


def run_tail(b: Bench, log) -> list[dict]:
    return run_pairs(b, tail_cases(b), {"whole": lambda: last_chunk(False), "tail": lambda: last_chunk(True)}, log)


def run_activation(b: Bench, log) -> list[dict]:
    return run_pairs(b, activation_cases(b), {"before": lambda: activation_forms("before"),
                                              "current": lambda: activation_forms("current")}, log)


def stack_cases(b: Bench) -> list[tuple[str, Callable[[], object]]]:
    """(label, build) pairs; ``build`` returns a timer for the kernel built in the current scope."""
    pw_small = Layer("1x1 96->24 @56", "conv", (1, 96, 56, 56, 24, 1, 1))
    pw_wide = Layer("1x1 112->672 @14", "conv", (1, 112, 14, 14, 672, 1, 1))
    c3 = Layer("3x3 128->128 @56", "conv", (1, 128, 56, 56, 128, 3, 1))
    c3_28 = Layer("3x3 128->128 @28", "conv", (1, 128, 28, 28, 128, 3, 1))
    w_small = masked_weight(pw_small, "block_based", 5.0, seed=2, block=(16, 4))
    w_wide = masked_weight(pw_wide, "block_based", 5.0, seed=2, block=(16, 4))
    w_dense = masked_weight(c3, "unstructured", 1.0, seed=1)
    w_pat = masked_weight(c3_28, "pattern", 5.0, seed=3)
    return [
        ("sparse 1x1 96->24 @56, 5x, tile 8x2", lambda: b.conv(pw_small, ConvTile(8, 2, 16), w_small, sparse=True)[0]),
        ("sparse 1x1 112->672 @14, 5x, tile 16x1", lambda: b.conv(pw_wide, ConvTile(16, 1, 16), w_wide, sparse=True)[0]),
        ("depthwise 3x3 s2 96 @112 + SiLU", lambda: depthwise_timer(b, 96, 112, 3, 2, 1)),
        ("depthwise 3x3 144 @56 + SiLU", lambda: depthwise_timer(b, 144, 56, 3, 1, 1)),
        ("depthwise 5x5 672 @14 + SiLU", lambda: depthwise_timer(b, 672, 14, 5, 1, 4)),
        ("depthwise 3x3 1152 @7 + SiLU", lambda: depthwise_timer(b, 1152, 7, 3, 1, 1)),
        ("dense 3x3 128->128 @56, tile 8x2 (1 KB: workspace both ways)",
         lambda: b.conv(c3, ConvTile(8, 2, 16), w_dense, sparse=False)[0]),
        ("dense 3x3 128->128 @56, tile 4x2 (512 B)", lambda: b.conv(c3, ConvTile(4, 2, 16), w_dense, sparse=False)[0]),
        ("per-pattern 3x3 128->128 @28, 5x, ft1 mt8 cb32",
         lambda: b.pattern(c3_28, KernelChoice("pattern", 1, 8, 16, 32), w_pat)[0]),
    ]


def run_stack(b: Bench, log) -> list[dict]:
    return run_pairs(b, stack_cases(b), {"local": lambda: scope("local"), "stack": lambda: scope("global")}, log)


def run_pattern(b: Bench, rates, log) -> list[dict]:
    layer = Layer("3x3 128->128 @28", "conv", (1, 128, 28, 28, 128, 3, 1))
    dense = b.best(layer, masked_weight(layer, "unstructured", 1.0, seed=1), conv_tiles(layer), sparse=False)
    variants = {
        "per-pattern, no channel blocks (ft1 mt8)": (KernelChoice("pattern", 1, 8, 16, 0), "global"),
        "per-pattern, channel blocks of 32 (ft1 mt8)": (KernelChoice("pattern", 1, 8, 16, 32), "global"),
        "per-pattern, channel blocks, two filters per tile (ft2 mt4)": (KernelChoice("pattern", 2, 4, 16, 32), "global"),
        "per-pattern, channel blocks, workspace accumulators": (KernelChoice("pattern", 1, 8, 16, 32), "local"),
    }
    rows = []
    for rate in rates:
        w = masked_weight(layer, "pattern", rate, seed=3)
        cands = {"block-sparse, regrouped (best tile)": b.best(
            layer, w, [t for t in PATTERN_TILES if t.pixels <= layer.geom(t).m], sparse=True, reorder=True)}
        for label, (choice, scope_name) in variants.items():
            with scope(scope_name):
                cands[label] = _estimate(b.pattern(layer, choice, w)[0])
        for label, cand in cands.items():
            td, tk = b.pair(dense, cand)
            rows.append({"layer": layer.name, "rate": rate, "kernel": label, "dense_ms": td * 1e3,
                         "kernel_ms": tk * 1e3, "speedup_vs_dense": td / tk})
            log(f"{layer.name} {rate:g}x {label}: {td / tk:.2f}x")
    return rows


def run_cblock(b: Bench, rates, log) -> list[dict]:
    rows = []
    for layer in (Layer("3x3 256->256 @56", "conv", (1, 256, 56, 56, 256, 3, 1)),
                  Layer("3x3 128->128 @28", "conv", (1, 128, 28, 28, 128, 3, 1))):
        for rate in rates:
            w = masked_weight(layer, "block_punched", rate, seed=2, block=(8, 4))
            one = _estimate(b.conv(layer, ConvTile(8, 2, 16), w, sparse=True)[0])
            for cblock in (32, 64):
                blocked = _estimate(b.conv(layer, KernelChoice("block", 8, 2, 16, cblock), w, sparse=True)[0])
                t1, tb = b.pair(one, blocked)
                rows.append({"layer": layer.name, "rate": rate, "cblock": cblock, "one_block_ms": t1 * 1e3,
                             "blocked_ms": tb * 1e3, "speedup": t1 / tb})
                log(f"{layer.name} {rate:g}x cblock {cblock}: {t1 * 1e3:.3f} -> {tb * 1e3:.3f} ms, {t1 / tb:.3f}x")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15, help="interleaved rounds per pair")
    p.add_argument("--rates", type=float, nargs="+", default=[2.25, 5.0, 10.0], help="pattern rates")
    p.add_argument("--block-rates", type=float, nargs="+", default=[2.0, 5.0, 10.0],
                   help="block_punched rates of the channel-block ablation")
    p.add_argument("--only", nargs="+", choices=ABLATIONS, default=list(ABLATIONS),
                   help="run these ablations only (results: bench_kernel_ablation_<names>.json)")
    args = p.parse_args()
    b = Bench(args.threads, args.repeats)
    console = Console()
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        console.print(f"[dim]{time.perf_counter() - t0:6.1f}s[/] {msg}")

    stack = run_stack(b, log) if "stack" in args.only else []
    pattern = run_pattern(b, args.rates, log) if "pattern" in args.only else []
    cblock = run_cblock(b, args.block_rates, log) if "cblock" in args.only else []
    activation = run_activation(b, log) if "activation" in args.only else []
    tail = run_tail(b, log) if "tail" in args.only else []
    t1 = Table(title="register tiles: TVM workspace ('local') vs stack ('global'), same kernel")
    for col in ("kernel", "workspace ms", "stack ms", "speedup"):
        t1.add_column(col, justify="left" if col == "kernel" else "right")
    for r in stack:
        t1.add_row(r["kernel"], f"{r['local_ms']:.4f}", f"{r['stack_ms']:.4f}", f"{r['speedup']:.3f}")
    t2 = Table(title="pattern-pruned 3x3 128->128 @28: speedup over the dense kernel")
    for col in ("rate", "kernel", "dense ms", "kernel ms", "speedup"):
        t2.add_column(col, justify="left" if col == "kernel" else "right")
    for r in pattern:
        t2.add_row(f"{r['rate']:g}", r["kernel"], f"{r['dense_ms']:.3f}", f"{r['kernel_ms']:.3f}",
                   f"{r['speedup_vs_dense']:.2f}")
    t3 = Table(title="block-sparse conv (block_punched 8x4, tile 8x2): one reduction vs channel blocks")
    for col in ("layer", "rate", "cblock", "one block ms", "blocked ms", "speedup"):
        t3.add_column(col, justify="left" if col == "layer" else "right")
    for r in cblock:
        t3.add_row(r["layer"], f"{r['rate']:g}", str(r["cblock"]), f"{r['one_block_ms']:.3f}", f"{r['blocked_ms']:.3f}",
                   f"{r['speedup']:.3f}")
    t4 = Table(title="activation epilogues: earlier forms (Cephes exp, division by 6) vs current, same kernel")
    for col in ("kernel", "before ms", "current ms", "speedup"):
        t4.add_column(col, justify="left" if col == "kernel" else "right")
    for r in activation:
        t4.add_row(r["kernel"], f"{r['before_ms']:.4f}", f"{r['current_ms']:.4f}", f"{r['speedup']:.3f}")
    t5 = Table(title="block-sparse convs: the last pixel chunk computed whole vs only below g.m, same kernel")
    for col in ("kernel", "whole ms", "tail ms", "speedup"):
        t5.add_column(col, justify="left" if col == "kernel" else "right")
    for r in tail:
        t5.add_row(r["kernel"], f"{r['whole_ms']:.4f}", f"{r['tail_ms']:.4f}", f"{r['speedup']:.3f}")
    console.print(*(t for t, rows in ((t1, stack), (t2, pattern), (t3, cblock), (t4, activation), (t5, tail))
                    if rows))
    command = "python benchmarks/bench_kernel_ablation.py " + " ".join(sys.argv[1:])
    name = NAME if set(args.only) == set(ABLATIONS) else "_".join([NAME, *args.only])
    path = write_results(name, command.strip(), {"threads": args.threads, "repeats": args.repeats,
                                                 "elapsed_s": time.perf_counter() - t0,
                                                 "stack_scope": stack, "pattern_kernel": pattern,
                                                 "block_conv_cblock": cblock, "activation_forms": activation,
                                                 "last_chunk": tail})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
