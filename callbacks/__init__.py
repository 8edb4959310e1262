"""Lightning callbacks of npas-lightning (installed as ``npas_lightning.callbacks``)."""

from npas_lightning.callbacks.magnitude import MagnitudePruning
from npas_lightning.callbacks.pruning_base import PruningCallback, resolve_plan_root

__all__ = ["MagnitudePruning", "PruningCallback", "resolve_plan_root"]
