"""recipe=baseline: train the backbone on the chosen data and keep the best checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from npas_lightning.utils.builders import (
    best_checkpoint,
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_model,
    build_trainer,
    finish_loggers,
)


def run(cfg: DictConfig, *, ckpt_path: str | None = None, test: bool = False) -> dict[str, Any]:
    """Fit ``cfg.model`` on ``cfg.data``; return metrics and the best checkpoint's path.

    ``ckpt_path`` resumes an interrupted fit from a Lightning checkpoint; ``test`` also runs
    the test loop (on the validation split) with the best weights.
    """
    if ckpt_path and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"recipe.ckpt_path={ckpt_path!r} does not exist")
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    loggers = build_loggers(cfg)
    trainer = build_trainer(cfg, callbacks=build_callbacks(cfg), logger=loggers)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    best_path, best_score = best_checkpoint(trainer)
    if best_score is not None:
        metrics[f"best/{cfg.optimized_metric}"] = best_score
    if test:
        trainer.test(model, datamodule=datamodule, ckpt_path=best_path or None)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    artifacts = {"best checkpoint": best_path} if best_path else {}
    artifacts.update({f"{name} files": path for name, path in finish_loggers(loggers).items()})
    return {"recipe": "baseline", "metrics": metrics, "artifacts": artifacts}
