"""Lightning callbacks of npas-lightning (installed as ``npas_lightning.callbacks``)."""

from npas_lightning.callbacks.magnitude import MagnitudePruning
from npas_lightning.callbacks.pruning_base import PruningCallback, resolve_plan_root

__all__ = ["MagnitudePruning", "PruningCallback", "resolve_plan_root"]

from npas_lightning.callbacks.admm import ADMMPruning  # noqa: E402
from npas_lightning.callbacks.fpgm import GeometricMedianPruning  # noqa: E402
from npas_lightning.callbacks.group_lasso import GroupLassoPruning  # noqa: E402
from npas_lightning.callbacks.penalty_base import PenaltyPruning  # noqa: E402

__all__ += ["ADMMPruning", "GeometricMedianPruning", "GroupLassoPruning", "PenaltyPruning"]
