"""GeometricMedianPruning (FPGM): remove the filters nearest each layer's geometric median."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from npas_lightning.algorithms.fpgm import DISTANCES, check_filter_plan, fpgm_masks
from npas_lightning.callbacks.magnitude import MagnitudePruning
from npas_lightning.plan import NPASScheme


class GeometricMedianPruning(MagnitudePruning):
    """FPGM (He et al. 2019) along a filter-pruning plan, one-shot or gradual.

    At each pruning event the filters whose summed distance to all other filters of the layer is
    smallest (those nearest the geometric median, whose information the others carry) are removed,
    ``round(numel / rate)`` weights in whole filters kept, exactly the ``filter`` scheme's count; the
    coupled bias/BatchNorm channels are zeroed too. Timing is MagnitudePruning's: one-shot at the
    start of ``start_epoch`` when ``end_epoch == start_epoch``, else gradual on the named schedule
    (every ``frequency`` epochs, the plan's rates reached at ``end_epoch``), then masked training.

    Every pruned layer of the plan must use the ``filter`` scheme: any other scheme is refused at
    ``setup`` (before training) with an :class:`~npas_lightning.algorithms.fpgm.FPGMError` naming
    the layer.

    Example:
        >>> cb = GeometricMedianPruning({"*": {"scheme": "filter", "rate": 2}}, start_epoch=0, end_epoch=3)

    Args:
        plan: an ``NPASScheme`` or its dict form (filter scheme only).
        start_epoch: first epoch that prunes.
        end_epoch: epoch at which the final rates are reached (``>= start_epoch``).
        frequency: epochs between mask updates of gradual pruning (``>= 1``).
        schedule: schedule name (``npas_lightning.algorithms.schedules.list_schedules()``).
        distance: ``"l2"`` (the paper's) or ``"l1"`` between flattened filters.
        **kwargs: ``exclude``, ``root``, ``log_per_layer`` of :class:`PruningCallback`.
    """

    def __init__(
        self,
        plan: NPASScheme | Mapping,
        start_epoch: int = 0,
        end_epoch: int = 0,
        frequency: int = 1,
        schedule: str = "cubic",
        distance: str = "l2",
        *,
        exclude: Sequence[str] | None = None,
        root: str | None = None,
        log_per_layer: bool = True,
    ) -> None:
        if distance not in DISTANCES:
            raise ValueError(f"distance={distance!r}: accepted values are {sorted(DISTANCES)}")
        if isinstance(plan, NPASScheme):
            check_filter_plan(plan)
        super().__init__(plan, start_epoch, end_epoch, frequency, schedule, exclude=exclude, root=root,
                         log_per_layer=log_per_layer)
        self.distance = distance

    def validate_plan(self, plan: NPASScheme) -> None:
        check_filter_plan(plan)

    def compute_masks(self, model, fraction: float):
        """Filters nearest the layer's geometric median go first."""
        return fpgm_masks(model, self.plan, rate_scale=fraction, distance=self.distance)
