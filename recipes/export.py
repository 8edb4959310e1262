"""recipe=export: compile a checkpoint with TVM, write the artefacts and a latency report.

    python train.py recipe=export recipe.checkpoint=logs/.../best.ckpt compiler.threads=2
    python train.py recipe=export recipe.input_shape=[1,3,224,224] recipe.compare=[torch,onnxruntime]

Writes ``model.so``, ``params.npz``, ``manifest.json`` and ``latency.json`` into ``recipe.output_dir``
(default: ``<run dir>/export``). The latency of every engine is measured in this process, interleaved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from npas_lightning.compiler.config import compile_from_config, target_from_config
from npas_lightning.compiler.engines import (
    ENGINES,
    measure_interleaved,
    onnxruntime_engine,
    torch_engine,
    tvm_engine,
)
from npas_lightning.compiler.measure import open_session


def _model_and_plan(cfg: DictConfig, checkpoint: str | None):
    if checkpoint:
        from npas_lightning.compiler.cli import load_model

        model, plan, _ = load_model(checkpoint)
        return model, plan
    from npas_lightning.utils.builders import build_model

    return build_model(cfg).net.eval(), None


def run(cfg: DictConfig, *, checkpoint: str | None = None, output_dir: str | None = None,
        input_shape: list[int] | None = None, compare: list[str] | None = None) -> dict[str, Any]:
    """Compile ``checkpoint`` (or the configured model with fresh weights), export it, time it.

    Args:
        checkpoint: Lightning ``.ckpt`` of a ClassifierModule or a pruned checkpoint (plan inside).
        output_dir: artefact directory (default ``<paths.output_dir>/export``).
        input_shape: e.g. ``[1, 3, 224, 224]``; default batch 1 at the data's channels and image size.
        compare: engines timed next to TVM (``torch``, ``onnxruntime``).
    """
    compare = list(compare or [])
    bad = [c for c in compare if c not in ENGINES or c == "tvm"]
    if bad:
        raise ValueError(f"recipe.compare={compare}: unknown engine(s) {bad}; choose from torch, onnxruntime")
    if checkpoint and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"recipe.checkpoint={checkpoint!r} does not exist")
    smoke = bool(cfg.get("debug_smoke", False))
    if input_shape is None:
        data = cfg.get("data") or {}
        size = 32 if smoke else int(data.get("image_size", 224) or 224)
        input_shape = [1, int(data.get("channels", 3) or 3), size, size]
    shape = [int(s) for s in input_shape]
    if len(shape) != 4 or any(s < 1 for s in shape):
        raise ValueError(f"recipe.input_shape={input_shape!r} must be 4 positive ints [N, C, H, W]")
    ccfg = cfg.get("compiler")
    out = Path(output_dir or Path(cfg.paths.output_dir) / "export")
    model, plan = _model_and_plan(cfg, checkpoint)
    x = torch.randn(shape)
    compiled = compile_from_config(model, x, ccfg, plan=plan)
    compiled.export(out)
    measure = OmegaConf.to_container(ccfg.get("measure"), resolve=True) if ccfg is not None and ccfg.get("measure") else {}
    number, repeat, warmup = (2, 2, 1) if smoke else (int(measure.get("number", 10)), int(measure.get("repeat", 5)),
                                                      int(measure.get("warmup", 2)))
    rpc = OmegaConf.to_container(ccfg.rpc, resolve=True) if ccfg is not None and ccfg.get("rpc") else None
    session = open_session(ccfg.get("device", "local") if ccfg is not None else "local", rpc)
    threads = compiled.threads
    xn = x.numpy()
    engines = [tvm_engine(compiled, xn, session)]
    engines += [torch_engine(model, xn, threads) if c == "torch" else onnxruntime_engine(model, xn, threads)
                for c in compare]
    try:
        stats = measure_interleaved(engines, number=number, repeat=repeat, warmup=warmup, threads=threads,
                                    target=target_from_config(ccfg).name, input_shape=shape)
    finally:
        for e in engines:
            if e.cleanup:
                e.cleanup()
    report = {"model": str(cfg.model.get("backbone", "")) if cfg.get("model") else "", "input": shape,
              "target": compiled.target.name, "results": {k: v.to_dict() for k, v in stats.items()},
              "compile_s": compiled.timings.get("total_s"), "numerics": compiled.numerics,
              "plan_hash": compiled.plan_hash, "checkpoint": checkpoint}
    (out / "latency.json").write_text(json.dumps(report, indent=2, default=str))
    metrics = {f"latency/{k}_ms": v.median_ms for k, v in stats.items()}
    metrics["latency/compile_s"] = float(compiled.timings.get("total_s", 0.0))
    if "max_rel" in compiled.numerics:
        metrics["latency/max_rel_err"] = float(compiled.numerics["max_rel"])
    return {"recipe": "export", "metrics": metrics,
            "artifacts": {"export dir": str(out), "latency report": str(out / "latency.json")}}
