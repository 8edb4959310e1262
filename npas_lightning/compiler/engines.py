"""Inference engines timed side by side in one process: compiled TVM, torch eager, ONNX Runtime.

``measure_interleaved`` warms every engine up, then runs ``repeat`` rounds; in each round every engine
runs ``number`` times back to back (mean per run recorded), so load changes on a shared machine hit
all engines alike and the ratios stay meaningful.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .measure import LatencyStats, LoadedModel, MeasureSession

__all__ = ["Engine", "tvm_engine", "torch_engine", "onnxruntime_engine", "measure_interleaved", "ENGINES"]

ENGINES = ("tvm", "torch", "onnxruntime")


@dataclass
class Engine:
    """``time(number) -> seconds per run`` and where it runs."""

    name: str
    time: Callable[[int], float]
    device: str = "local"
    cleanup: Callable[[], None] | None = None


def tvm_engine(compiled, x: np.ndarray, session: MeasureSession) -> Engine:
    loaded = LoadedModel(compiled.executable, compiled._export_fn, session, device_kind=compiled.target.device,
                         threads=compiled.threads)
    loaded.set_inputs([x])
    loaded.run()

    def run(number: int) -> float:
        return float(loaded.time(number, 1)[0])

    return Engine("tvm", run, session.name)


def _wall(fn: Callable[[], object], number: int) -> float:
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def torch_engine(model: nn.Module, x: np.ndarray, threads: int | None) -> Engine:
    if threads:
        torch.set_num_threads(int(threads))
    xt = torch.from_numpy(x)
    model = model.eval()

    def once():
        with torch.inference_mode():
            return model(xt)

    once()
    return Engine("torch", lambda number: _wall(once, number))


def onnxruntime_engine(model: nn.Module, x: np.ndarray, threads: int | None) -> Engine:
    try:
        import onnxruntime as ort
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ValueError("--compare onnxruntime needs the onnxruntime package (pip install onnxruntime)") from err
    tmp = tempfile.mkdtemp(prefix="npas-onnx-")
    path = os.path.join(tmp, "model.onnx")
    with torch.no_grad():
        torch.onnx.export(model.eval(), (torch.from_numpy(x),), path, input_names=["x"], opset_version=17,
                          dynamo=False)
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feed = {"x": x}

    def once():
        return sess.run(None, feed)

    once()

    def cleanup():
        for name in os.listdir(tmp):
            os.remove(os.path.join(tmp, name))
        os.rmdir(tmp)

    return Engine("onnxruntime", lambda number: _wall(once, number), cleanup=cleanup)


def measure_interleaved(engines: Sequence[Engine], *, number: int, repeat: int, warmup: int, threads: int | None,
                        target: str, input_shape: Sequence[int], pause_s: float = 0.2,
                        min_sample_ms: float = 0.0) -> dict[str, LatencyStats]:
    """Time all engines in interleaved rounds; returns one :class:`LatencyStats` per engine name.

    ``pause_s`` passes between two engines' timings: ONNX Runtime's and TVM's thread pools spin
    for a while after a run, and without a pause that spinning steals the cores from the next
    engine. Our dense models timed right after ONNX Runtime were 10-50% slow without one, and ONNX
    Runtime timed 20 ms after TVM on two threads ran about 2x slow: TVM's workers spin longer.

    ``min_sample_ms`` (> 0): each engine runs at least ``number`` times per sample, and more, so that
    a sample lasts about that long, judged from its last warm-up run (at least one is run). After the pause the cores take a few
    milliseconds to run at full speed again: on a 2-core AMD EPYC VM, samples of 5 runs (3 ms of a
    pruned mobilenetv3) measured every engine 1.1-1.5x slower than samples of 50, the short models
    most (``bench_sparse_models.py --sample-ms``).
    """
    if isinstance(min_sample_ms, bool) or not isinstance(min_sample_ms, (int, float)) or min_sample_ms < 0:
        raise ValueError(f"min_sample_ms={min_sample_ms!r}: expected a number >= 0 (milliseconds per sample)")
    runs = {eng.name: number for eng in engines}
    for eng in engines:
        per_run = None
        for _ in range(max(0, warmup, 1 if min_sample_ms else 0)):  # one at least to size the samples
            per_run = eng.time(1)
        if min_sample_ms:
            runs[eng.name] = max(number, math.ceil(min_sample_ms / 1e3 / max(per_run, 1e-9)))
    samples: dict[str, list[float]] = {e.name: [] for e in engines}
    for _ in range(repeat):
        for eng in engines:
            time.sleep(pause_s)
            samples[eng.name].append(eng.time(runs[eng.name]))
    out = {}
    for eng in engines:
        out[eng.name] = LatencyStats.from_seconds(
            samples[eng.name], runs=runs[eng.name], repeats=repeat, warmup=warmup, threads=int(threads or 0),
            target=target if eng.name == "tvm" else "local", input_shape=tuple(input_shape), device=eng.device)
    return out
