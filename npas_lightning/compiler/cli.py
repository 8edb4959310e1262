"""``npas-latency``: compile a model, time it next to torch / ONNX Runtime, print a table or JSON.

Examples::

    npas-latency efficientnet_b0 --input 1x3x224x224 --compare torch,onnxruntime
    npas-latency runs/best.ckpt --input 1x3x32x32 --json
    npas-latency mobilenetv3_large_100 --target arm64-android --rpc 192.168.1.20:9090
    npas-latency --cache-stats
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["main", "parse_input_shape", "load_model"]


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"1x3x224x224"`` -> (1, 3, 224, 224); a clear error otherwise."""
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(f"--input {text!r} is not a shape like 1x3x224x224 (positive ints joined by 'x')")
    return shape


def load_model(model_or_ckpt: str, *, num_classes: int | None = None, in_chans: int | None = None) -> tuple[nn.Module, Any, str]:
    """A timm model name or a checkpoint path -> (model in eval mode, plan or None, display name)."""
    path = Path(model_or_ckpt)
    if path.suffix in (".ckpt", ".pt", ".pth") or path.is_file():
        if not path.is_file():
            raise ValueError(f"MODEL_OR_CKPT={model_or_ckpt!r}: checkpoint file does not exist")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        from npas_lightning.checkpoint import PLAN_KEY, build_model, load_plan, load_pruned

        if PLAN_KEY in ckpt:
            return load_pruned(path), load_plan(path), path.name
        model = build_model(ckpt.get("hyper_parameters") or {}, path)
        state = ckpt.get("state_dict", ckpt)
        if any(k.startswith("net.") for k in state):
            state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
        model.load_state_dict(state)
        return model.eval(), None, path.name
    import timm

    if not timm.is_model(model_or_ckpt):
        close = timm.list_models(f"*{model_or_ckpt.split('_')[0]}*")[:10]
        raise ValueError(f"MODEL_OR_CKPT={model_or_ckpt!r} is neither a checkpoint file nor a timm model name"
                         + (f"; similar timm models: {', '.join(close)}" if close else ""))
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    return timm.create_model(model_or_ckpt, pretrained=False, **kwargs).eval(), None, model_or_ckpt


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="npas-latency", description="Compile with TVM and measure latency "
                                "(TVM vs torch eager vs ONNX Runtime, interleaved in one process).")
    p.add_argument("model", nargs="?", help="timm model name or checkpoint (.ckpt) path")
    p.add_argument("--input", default="1x3x224x224", help="input shape, e.g. 1x3x224x224")
    p.add_argument("--target", default="host", help="target preset (host, arm64-android, adreno-opencl)")
    p.add_argument("--rpc", default=None, help="measure TVM on a TVM RPC server host:port")
    p.add_argument("--rpc-key", default="", help="RPC key (with --tracker: the device key)")
    p.add_argument("--tracker", default=None, help="RPC tracker host:port (use with --rpc-key)")
    p.add_argument("--compare", default="", help="comma list of engines to compare: torch,onnxruntime")
    p.add_argument("--threads", type=int, default=None, help="threads for every engine (default: all cores)")
    p.add_argument("--tune", action="store_true", help="measure a tile grid per layer (cached on disk)")
    p.add_argument("--codegen-workers", type=int, default=None,
                   help="threads generating code while compiling (default: all cores; 1: one thread)")
    p.add_argument("--number", type=int, default=10, help="runs per sample")
    p.add_argument("--repeat", type=int, default=5, help="samples (rounds) per engine")
    p.add_argument("--sample-ms", type=float, default=0.0,
                   help="each sample lasts at least this long (more than --number runs for a fast engine; "
                        "0: --number runs)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up runs per engine")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size for timm names")
    p.add_argument("--ndk-cc", default=None, help="cross compiler for arm64-android / adreno-opencl")
    p.add_argument("--no-check", action="store_true", help="skip the TVM vs PyTorch numerics check")
    p.add_argument("--json", action="store_true", help="print JSON on stdout instead of a table")
    p.add_argument("--cache-stats", action="store_true", help="print latency-cache statistics and exit")
    p.add_argument("--cache", default=None, help="latency cache path (default ~/.cache/npas_lightning/latency.sqlite)")
    return p


def _cache_stats(args) -> int:
    from .cache import LatencyCache

    stats = LatencyCache(args.cache).stats()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"latency cache {stats['path']}")
    table.add_column("field")
    table.add_column("value")
    for k in ("entries", "hits", "bytes"):
        table.add_row(k, str(stats[k]))
    for tgt, n in stats["by_target"].items():
        table.add_row("target", f"{tgt}: {n}")
    for comp, n in stats["by_compiler"].items():
        table.add_row("compiler", f"{comp}: {n}")
    Console().print(table)
    return 0


def run(args) -> dict[str, Any]:
    from .codegen import codegen_workers
    from .compile import compile_model
    from .engines import ENGINES, measure_interleaved, onnxruntime_engine, torch_engine, tvm_engine
    from .measure import LocalSession, RPCSession, parse_rpc
    from .targets import resolve_target

    shape = parse_input_shape(args.input)
    compare = [c.strip() for c in args.compare.split(",") if c.strip()]
    bad = [c for c in compare if c not in ENGINES or c == "tvm"]
    if bad:
        raise ValueError(f"--compare {args.compare!r}: unknown engine(s) {bad}; choose from torch, onnxruntime")
    if not args.sample_ms >= 0:
        raise ValueError(f"--sample-ms {args.sample_ms!r}: expected milliseconds >= 0 (0: --number runs per sample)")
    for name in ("number", "repeat"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    codegen_workers(args.codegen_workers)  # before the model is built
    spec = resolve_target(args.target, threads=args.threads, ndk_cc=args.ndk_cc)
    if args.rpc:
        host, port = parse_rpc(args.rpc)
        session = RPCSession(host, port, key=args.rpc_key)
    elif args.tracker:
        session = RPCSession(tracker=args.tracker, key=args.rpc_key)
    else:
        if not spec.is_host:
            raise ValueError(f"--target {args.target} is not this machine: give --rpc host:port or --tracker")
        session = LocalSession()
    model, plan, display = load_model(args.model, num_classes=args.num_classes, in_chans=shape[1])
    x = torch.randn(shape)
    compiled = compile_model(model, x, plan=plan, target=spec, tune=args.tune, threads=args.threads,
                             check=not args.no_check and spec.is_host, codegen_workers=args.codegen_workers)
    xn = x.numpy()
    engines = [tvm_engine(compiled, xn, session)]
    for name in compare:
        engines.append(torch_engine(model, xn, args.threads) if name == "torch"
                       else onnxruntime_engine(model, xn, args.threads))
    try:
        stats = measure_interleaved(engines, number=args.number, repeat=args.repeat, warmup=args.warmup,
                                    threads=args.threads, target=spec.name, input_shape=shape,
                                    min_sample_ms=args.sample_ms)
    finally:
        for e in engines:
            if e.cleanup:
                e.cleanup()
    tvm_ms = stats["tvm"].median_ms
    results = {}
    for name, st in stats.items():
        d = st.to_dict()
        d["ratio_to_tvm"] = st.median_ms / tvm_ms if tvm_ms > 0 else float("nan")
        results[name] = d
    results["tvm"]["compile_s"] = compiled.timings.get("total_s")
    results["tvm"]["numerics"] = compiled.numerics
    return {"model": display, "input": list(shape), "target": spec.name, "results": results}


def _print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{report['model']} {'x'.join(map(str, report['input']))} on {report['target']}")
    for col in ("engine", "median ms", "mean ms", "std ms", "min ms", "x TVM", "threads", "device"):
        t.add_column(col, justify="right" if col != "engine" else "left")
    for name, r in report["results"].items():
        t.add_row(name, f"{r['median_ms']:.3f}", f"{r['mean_ms']:.3f}", f"{r['std_ms']:.3f}", f"{r['min_ms']:.3f}",
                  f"{r['ratio_to_tvm']:.2f}", str(r["threads"]), r["device"])
    Console().print(t)
    tv = report["results"]["tvm"]
    num = tv.get("numerics") or {}
    extra = f", max rel err {num['max_rel']:.2e}" if "max_rel" in num else ""
    Console().print(f"compile {tv.get('compile_s') or 0:.1f} s{extra}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.cache_stats:
        return _cache_stats(args)
    if not args.model:
        parser.error("MODEL_OR_CKPT is required (a timm model name or a checkpoint path)")
    try:
        report = run(args)
    except ValueError as err:
        print(f"npas-latency: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2, default=_json_default))
    else:
        _print_table(report)
    return 0


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
