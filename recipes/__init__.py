"""End-to-end recipes of npas-lightning (installed as ``npas_lightning.recipes``)."""
