"""LightningModules: the timm classifier and knowledge distillation."""

from npas_lightning.models import shrunk  # noqa: F401  registers the timm models efficientnet_b0_cm050 / _cm075
from npas_lightning.models.classifier import ClassifierModule, create_timm_model, load_weights
from npas_lightning.models.distillation import DistillationModule, distillation_loss

__all__ = ["ClassifierModule", "DistillationModule", "create_timm_model", "distillation_loss", "load_weights"]
