"""Latency-cache hit time (the cost of a repeated structure in the search) and RPC overhead
(loopback TVM RPC server vs local timing of the same compiled model, interleaved).

    .venv/bin/python benchmarks/bench_compiler_cache.py --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import timm
import torch
from rich.console import Console
from rich.table import Table

from npas_lightning.compiler import compile_model
from npas_lightning.compiler.cache import LatencyCache
from npas_lightning.compiler.engines import measure_interleaved, tvm_engine
from npas_lightning.compiler.latency import measure_latency
from npas_lightning.compiler.measure import LocalSession, RPCSession

OUT = Path(__file__).parent / "results" / "bench_compiler_cache.json"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="efficientnet_b0")
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args()
    model = timm.create_model(args.model, pretrained=False).eval()
    x = torch.randn(1, 3, args.size, args.size)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = LatencyCache(Path(tmp) / "lat.sqlite")
        t0 = time.perf_counter()
        stats, hit = measure_latency(model, x, threads=args.threads, cache=cache, number=5, repeat=3)
        rows["miss_s"] = time.perf_counter() - t0
        assert not hit
        hits = []
        for _ in range(20):  # full lookup path: model hash + plan hash + key + SQLite read
            t1 = time.perf_counter()
            _, hit = measure_latency(model, x, threads=args.threads, cache=cache)
            hits.append(time.perf_counter() - t1)
            assert hit
        rows["hit_ms_median"] = 1e3 * statistics.median(hits)
        from npas_lightning.compiler.cache import latency_key

        key = latency_key("b", "dense", x.shape, "host", "v")
        cache.put(key, stats, backbone="b", plan="dense", input_shape=x.shape, target="host", compiler="v")
        raw = []
        for _ in range(200):
            t1 = time.perf_counter()
            cache.get(key)
            raw.append(time.perf_counter() - t1)
        rows["sqlite_get_ms_median"] = 1e3 * statistics.median(raw)

    from tvm import rpc

    compiled = compile_model(model, x, threads=args.threads)
    server = rpc.Server(host="127.0.0.1", port=9190, port_end=9390)
    try:
        session = RPCSession("127.0.0.1", server.port)
        xn = x.numpy()
        local = tvm_engine(compiled, xn, LocalSession())
        remote = tvm_engine(compiled, xn, session)
        remote.name = "rpc"
        st = measure_interleaved([local, remote], number=10, repeat=7, warmup=2, threads=args.threads,
                                 target="host", input_shape=x.shape)
        rows["local_ms"] = st["tvm"].median_ms
        rows["rpc_ms"] = st["rpc"].median_ms
        rows["rpc_overhead_pct"] = 100 * (rows["rpc_ms"] / rows["local_ms"] - 1)
        session.close()
    finally:
        server.terminate()
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.processor() or platform.machine()}", "threads": args.threads,
            "model": f"{args.model}@{args.size}"}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"meta": meta, **rows}, indent=2))
    t = Table(title=f"latency cache and RPC ({args.model}@{args.size}, {args.threads} threads)")
    t.add_column("measure")
    t.add_column("value")
    for k, v in rows.items():
        t.add_row(k, f"{v:.3f}")
    Console().print(t)


if __name__ == "__main__":
    main()
