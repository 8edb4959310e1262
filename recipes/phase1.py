"""recipe=phase1: replace mobile-unfriendly activations and fine-tune (NPAS Phase 1, paper 5.1).

    python train.py recipe=phase1 recipe.init_checkpoint=<baseline .ckpt> data=fashion_mnist
    python train.py recipe=phase1 recipe.epochs=5 compiler.threads=2
    python train.py recipe=phase1 debug=smoke

Steps: top-1 of the starting model -> swap SiLU/swish -> hard-swish and sigmoid -> hard-sigmoid (SE
gates included) -> top-1 right after the swap -> fine-tune ``epochs`` epochs -> top-1 again. The
compiled latency (``npas_lightning.compiler``, ``cfg.compiler`` settings) is measured before the
swap and after the fine-tune. Without ``init_checkpoint`` the recipe first trains its own starting
point with ``cfg.trainer`` (and says so).

The fine-tuned model is saved as ``<output_dir>/phase1.ckpt``, a ClassifierModule checkpoint with
``hard_activations=True`` in its hyperparameters, so ``ClassifierModule.load_from_checkpoint`` rebuilds
the swapped network (state-dict keys are those of the unswapped backbone; the swap adds none).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from npas_lightning.transforms.activations import swap_activations
from npas_lightning.utils.builders import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_model,
    build_trainer,
    finish_loggers,
)

#: measurement settings under debug=smoke
SMOKE_MEASURE = {"number": 1, "repeat": 2, "warmup": 1}


def _top1(cfg: DictConfig, module: L.LightningModule, datamodule: L.LightningDataModule) -> float:
    trainer = build_trainer(cfg, logger=False, callbacks=[], enable_checkpointing=False,
                            enable_model_summary=False, enable_progress_bar=False)
    out = trainer.validate(module, datamodule=datamodule, verbose=False)
    return float(out[0]["val/acc1"])


def _latency(cfg: DictConfig, net: torch.nn.Module, example_input: torch.Tensor, smoke: bool) -> dict[str, Any]:
    """Compile and time ``net``; a dict with ``median_ms`` etc., or ``{"status": "not measured: ..."}``."""
    try:
        from npas_lightning.compiler import compile_model
    except ImportError as err:
        return {"status": f"not measured: compiler unavailable ({err})"}
    comp = OmegaConf.to_container(cfg.compiler, resolve=True) if cfg.get("compiler") else {}
    measure = dict(comp.get("measure") or {})
    if smoke:
        measure.update(SMOKE_MEASURE)
    try:
        compiled = compile_model(copy.deepcopy(net).eval(), example_input, target=comp.get("target", "host"),
                                 tune=bool(comp.get("tune", False)), threads=comp.get("threads"),
                                 check=bool(comp.get("check", True)), tile_cache=comp.get("tile_cache"))
        device = comp.get("device") or "local"
        stats = compiled.measure(number=int(measure.get("number", 10)), repeat=int(measure.get("repeat", 5)),
                                 warmup=int(measure.get("warmup", 2)), session=device,
                                 rpc=comp.get("rpc") if device == "rpc" else None)
    except Exception as err:  # an unsupported op or a failed build is reported, never guessed
        return {"status": f"not measured: {type(err).__name__}: {err}"}
    return {"status": "measured", **stats.to_dict()}


def _summary_table(acc: dict[str, float], lat: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="Phase 1: activation swap + fine-tune")
    table.add_column("stage")
    table.add_column("val top-1", justify="right")
    table.add_column("compiled latency", justify="right")
    rows = (("before swap", "before", "before"), ("right after swap", "swapped", None),
            ("after fine-tune", "finetuned", "after"))
    for label, akey, lkey in rows:
        if lkey is None:
            lat_txt = "-"
        else:
            d = lat[lkey]
            lat_txt = (f"{d['median_ms']:.3f} ms (median of {d['repeats']}x{d['runs']}, {d['target']}, "
                       f"threads={d['threads'] or 'all'}, input {tuple(d['input_shape'])})"
                       if d["status"] == "measured" else d["status"])
        table.add_row(label, f"{acc[akey]:.4f}", lat_txt)
    return table


def run(cfg: DictConfig, *, epochs: int = 5, init_checkpoint: str | None = None, measure_latency: bool = True,
        save_name: str = "phase1.ckpt") -> dict[str, Any]:
    """Swap activations, fine-tune ``epochs`` epochs, report top-1 and compiled latency.

    Args:
        epochs: fine-tune epochs after the swap (the paper uses 5); ``debug=smoke`` caps it at 1.
        init_checkpoint: starting weights (ClassifierModule ``.ckpt``, timm ``.pth``/``.safetensors``);
            ``None`` trains a starting point with ``cfg.trainer`` first.
        measure_latency: compile and time the model before and after (``cfg.compiler`` settings).
        save_name: file name of the fine-tuned checkpoint under the run's output directory.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"recipe.epochs={epochs!r} is not valid: expected an integer >= 0")
    if init_checkpoint is not None and not Path(init_checkpoint).is_file():
        raise FileNotFoundError(f"recipe.init_checkpoint={init_checkpoint!r} does not exist")
    if not save_name or Path(save_name).name != save_name:
        raise ValueError(f"recipe.save_name={save_name!r} must be a plain file name (it is written under the "
                         "run's output directory)")
    console = Console()
    smoke = bool(cfg.get("debug_smoke", False))
    out_dir = Path(cfg.paths.output_dir)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    module = build_model(cfg, datamodule, **({"checkpoint": init_checkpoint} if init_checkpoint else {}))
    loggers = build_loggers(cfg)
    artifacts: dict[str, str] = {}
    if init_checkpoint is None:
        console.print("[yellow]recipe.init_checkpoint is not set: training a starting point with cfg.trainer "
                      "first (pass recipe.init_checkpoint=<trained .ckpt> to start from trained weights)")
        build_trainer(cfg, logger=False, callbacks=[], enable_checkpointing=False).fit(module, datamodule=datamodule)
        start = out_dir / "phase1_start.ckpt"
        start.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": {f"net.{k}": v for k, v in module.net.state_dict().items()}}, start)
        artifacts["starting point"] = str(start)
    x, _ = next(iter(datamodule.val_dataloader()))
    example_input = torch.randn(1, *x.shape[1:])
    acc = {"before": _top1(cfg, module, datamodule)}
    lat: dict[str, dict[str, Any]] = {}
    not_asked = {"status": "not measured: recipe.measure_latency=false"}
    lat["before"] = _latency(cfg, module.net, example_input, smoke) if measure_latency else not_asked
    report = swap_activations(module.net)
    if "hard_activations" in module.hparams:  # checkpoints of this module rebuild the swapped network
        module.hparams["hard_activations"] = True
    console.print(f"Phase-1 activation swap: {report}")
    console.print(report.table())
    acc["swapped"] = _top1(cfg, module, datamodule)
    if epochs > 0:
        max_epochs = min(epochs, int(cfg.trainer.get("max_epochs") or 1)) if smoke else epochs
        trainer = build_trainer(cfg, callbacks=build_callbacks(cfg), logger=loggers, max_epochs=max_epochs)
        trainer.fit(module, datamodule=datamodule)
        ckpt = out_dir / save_name
        trainer.save_checkpoint(ckpt)
        artifacts["phase1 checkpoint"] = str(ckpt)
    acc["finetuned"] = _top1(cfg, module, datamodule)
    lat["after"] = _latency(cfg, module.net, example_input, smoke) if measure_latency else not_asked
    console.print(_summary_table(acc, lat))
    metrics: dict[str, float] = {
        "phase1/acc1_before_swap": acc["before"],
        "phase1/acc1_after_swap": acc["swapped"],
        "phase1/acc1_after_finetune": acc["finetuned"],
        "phase1/swapped_activations": float(report.num_replaced),
    }
    for key in ("before", "after"):
        if lat[key]["status"] == "measured":
            metrics[f"latency/{key}_ms"] = float(lat[key]["median_ms"])
    if "latency/before_ms" in metrics and "latency/after_ms" in metrics:
        metrics["latency/speedup"] = metrics["latency/before_ms"] / metrics["latency/after_ms"]
    metrics["val/acc1"] = acc["finetuned"]
    for logger in loggers:
        logger.log_metrics({k: v for k, v in metrics.items() if k.startswith(("phase1/", "latency/"))})
    artifacts.update({f"{name} files": path for name, path in finish_loggers(loggers).items()})
    return {"recipe": "phase1", "metrics": metrics, "swap": report.to_dict(), "latency": lat,
            "artifacts": artifacts}
