"""npas_lightning.algorithms."""
