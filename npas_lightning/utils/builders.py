"""Instantiate the run's parts from the Hydra config (every part has a ``_target_``).

Recipes call these so every phase builds its data, model, callbacks, loggers and trainer the
same way; overrides let a phase change e.g. ``max_epochs`` or the output folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from npas_lightning.utils.wandb_logger import scrub_secrets


def _instantiate_group(group: DictConfig | None, what: str) -> list[Any]:
    items: list[Any] = []
    if not group:
        return items
    for key, node in group.items():
        if node is None:
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ValueError(f"{what}.{key} has no _target_; every {what} entry must name the class to build")
        items.append(hydra.utils.instantiate(node))
    return items


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The data module of ``cfg.data`` (raises on a bad root or class count before training)."""
    return hydra.utils.instantiate(cfg.data)


def build_model(cfg: DictConfig, datamodule: L.LightningDataModule | None = None, **overrides: Any) -> L.LightningModule:
    """The LightningModule of ``cfg.model``; checks its class count against the data's."""
    model = hydra.utils.instantiate(cfg.model, **overrides)
    check_model_matches_data(model, datamodule)
    return model


def check_model_matches_data(model: L.LightningModule, datamodule: L.LightningDataModule | None) -> None:
    """Refuse a model whose class count or input channels differ from the data's."""
    if datamodule is None:
        return
    hp = getattr(model, "hparams", {})
    for key, data_attr, data_key in (("num_classes", "num_classes", "num_classes"), ("in_chans", "in_chans", "channels")):
        model_value, data_value = hp.get(key), getattr(datamodule, data_attr, None)
        if model_value is not None and data_value is not None and int(model_value) != int(data_value):
            raise ValueError(
                f"model.{key}={model_value} does not match the data ({type(datamodule).__name__} has "
                f"{data_key}={data_value}); leave model.{key} at its default ${{data.{data_key}}}"
            )


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    """Every callback under ``cfg.callbacks``."""
    return _instantiate_group(cfg.get("callbacks"), "callbacks")


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """Every logger under ``cfg.logger`` with the resolved config logged (credentials removed)."""
    loggers = _instantiate_group(cfg.get("logger"), "logger")
    config = scrub_secrets(OmegaConf.to_container(cfg, resolve=True))
    for logger in loggers:
        logger.log_hyperparams(config)
    return loggers


def build_trainer(
    cfg: DictConfig,
    *,
    callbacks: list[Callback] | None = None,
    logger: list[Logger] | bool | None = None,
    **overrides: Any,
) -> L.Trainer:
    """The Trainer of ``cfg.trainer``; ``overrides`` replace config keys (e.g. ``max_epochs``)."""
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks or [], logger=logger, **overrides)


def best_checkpoint(trainer: L.Trainer) -> tuple[str | None, float | None]:
    """Path and score of the best checkpoint the trainer's ModelCheckpoint kept (else the last)."""
    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint):
            path = cb.best_model_path or cb.last_model_path or None
            score = float(cb.best_model_score) if cb.best_model_score is not None else None
            return path, score
    return None, None


def finish_loggers(loggers: list[Logger]) -> dict[str, str]:
    """Flush and close the loggers; return where each wrote its files."""
    where: dict[str, str] = {}
    for logger in loggers:
        logger.finalize("success")
        name = type(logger).__name__
        if name == "WandbLogger":
            import wandb

            run = wandb.run
            if run is not None:
                where["wandb"] = str(Path(run.dir).parent)
                run.finish()
        elif getattr(logger, "log_dir", None):
            where[name] = str(logger.log_dir)
    return where
