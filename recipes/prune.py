"""recipe=prune: start from trained weights, prune with the `pruning=` callback, fine-tune, save.

    python train.py recipe=prune pruning=magnitude recipe.init_checkpoint=<baseline .ckpt>

The pruning callback (configs/pruning/*.yaml, e.g. MagnitudePruning) carries the plan and decides
when masks change; this recipe only wires model, data, callback and trainer together, then writes
the final pruned checkpoint (plain state_dict keys + the plan; reload it with
``npas_lightning.checkpoint.load_pruned``) and prints the plan table and the measured sparsity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, open_dict
from rich.console import Console

from npas_lightning.callbacks import PruningCallback
from npas_lightning.utils.builders import (
    best_checkpoint,
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_model,
    build_trainer,
    finish_loggers,
)


def _pruning_node(cfg: DictConfig) -> DictConfig:
    node = cfg.get("pruning")
    if node is None:
        raise ValueError(
            "recipe=prune needs a pruning callback, but pruning=null; choose one from configs/pruning/ "
            "(e.g. `python train.py recipe=prune pruning=magnitude`)"
        )
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ValueError(f"pruning={node!r} has no _target_; a configs/pruning/*.yaml entry names its callback class")
    if cfg.get("debug_smoke"):
        # Smoke runs last one epoch: prune at epoch 0 so the run exercises masks end to end.
        node = node.copy()
        with open_dict(node):
            for key in ("start_epoch", "end_epoch"):
                if key in node:
                    node[key] = 0
    return node


def _example_input(datamodule: Any) -> torch.Tensor:
    batch = next(iter(datamodule.val_dataloader()))
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    return x[:1].cpu()


def run(
    cfg: DictConfig,
    *,
    init_checkpoint: str | None = None,
    ckpt_path: str | None = None,
    save_name: str = "pruned.ckpt",
    test: bool = False,
    teacher_checkpoint: str | None = None,
    kd_alpha: float = 0.5,
    kd_temperature: float = 4.0,
) -> dict[str, Any]:
    """Prune ``cfg.model`` (from ``init_checkpoint`` when given) with ``cfg.pruning`` and fine-tune.

    Args:
        init_checkpoint: weights to start from (ClassifierModule ``.ckpt``, timm ``.pth``/``.safetensors``).
        ckpt_path: resume an interrupted prune run from its Lightning checkpoint (masks included).
        save_name: file name of the final pruned checkpoint under ``paths.output_dir``.
        test: also run the test loop with the final pruned weights.
        teacher_checkpoint: a trained teacher (ClassifierModule ``.ckpt``, ``.pth``): the model becomes a
            DistillationModule and the fine-tune distils from it (``kd_alpha``, ``kd_temperature``).
    """
    node = _pruning_node(cfg)
    if init_checkpoint and not Path(init_checkpoint).is_file():
        raise FileNotFoundError(f"recipe.init_checkpoint={init_checkpoint!r} does not exist")
    if teacher_checkpoint and not Path(teacher_checkpoint).is_file():
        raise FileNotFoundError(f"recipe.teacher_checkpoint={teacher_checkpoint!r} does not exist")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"recipe.ckpt_path={ckpt_path!r} does not exist")
    if not save_name or Path(save_name).name != save_name:
        raise ValueError(f"recipe.save_name={save_name!r} must be a plain file name (written under paths.output_dir)")
    pruning = hydra.utils.instantiate(node)
    if not isinstance(pruning, PruningCallback):
        raise TypeError(
            f"pruning._target_={node._target_!r} built a {type(pruning).__name__}, not a PruningCallback "
            "(npas_lightning.callbacks.MagnitudePruning, ...)"
        )
    datamodule = build_datamodule(cfg)
    overrides: dict[str, Any] = {"checkpoint": init_checkpoint} if init_checkpoint else {}
    if teacher_checkpoint:
        overrides.update(_target_="npas_lightning.models.distillation.DistillationModule",
                         teacher_checkpoint=teacher_checkpoint, alpha=kd_alpha, temperature=kd_temperature)
    model = build_model(cfg, datamodule, **overrides)
    loggers = build_loggers(cfg)
    trainer = build_trainer(cfg, callbacks=[*build_callbacks(cfg), pruning], logger=loggers)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)

    out = Path(cfg.paths.output_dir) / save_name
    trainer.save_checkpoint(out)
    report = pruning.sparsity(model)
    metrics = {
        k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1 and not k.startswith("prune/sparsity/")
    }
    metrics.update({"prune/sparsity": report["sparsity"], "prune/rate": report["rate"]})
    if trainer.is_global_zero:
        console = Console()
        net = pruning.pruned_model(model)
        try:
            console.print(pruning.plan.table(net, _example_input(datamodule)))
        except Exception as err:  # the table is a report; never lose the trained model over it
            console.print(f"[yellow]plan table unavailable: {type(err).__name__}: {err}[/yellow]")
        console.print(
            f"pruned {len(report['layers'])} layers: sparsity {report['sparsity']:.4f} "
            f"(rate {report['rate']:.2f}x over the planned layers), measured from the weights' zeros"
        )
    if test:
        trainer.test(model, datamodule=datamodule)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    best_path, _ = best_checkpoint(trainer)
    artifacts = {"pruned checkpoint": str(out)}
    if best_path:
        artifacts["best checkpoint (during fine-tune)"] = best_path
    artifacts.update({f"{name} files": path for name, path in finish_loggers(loggers).items()})
    return {
        "recipe": "prune",
        "metrics": metrics,
        "artifacts": artifacts,
        "plan": pruning.plan.to_dict(),
    }
