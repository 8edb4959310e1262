"""LightningModules: the timm classifier and knowledge distillation."""

from npas_lightning.models.classifier import ClassifierModule, create_timm_model, load_weights
from npas_lightning.models.distillation import DistillationModule, distillation_loss

__all__ = ["ClassifierModule", "DistillationModule", "create_timm_model", "distillation_loss", "load_weights"]
