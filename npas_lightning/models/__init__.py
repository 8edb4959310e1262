"""LightningModules: the timm classifier (and, with the algorithms issue, distillation)."""

from npas_lightning.models.classifier import ClassifierModule, create_timm_model, load_weights

__all__ = ["ClassifierModule", "create_timm_model", "load_weights"]
