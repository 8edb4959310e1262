"""Architecture transforms: Phase 1 activation swap and per-layer filter-type candidates.

Public API::

    swap_activations(model) -> SwapReport           # SiLU/swish -> Hardswish, sigmoid -> Hardsigmoid
    create_phase1_model(name, **timm_kwargs) -> (model, SwapReport)
    FILTER_TYPES, candidate_filter_types(layer), build_candidate(filter_type, conv, ...)
    fit_candidates(model, batches, ...) -> ReconstructionResult
    apply_filter_types(model, plan, fitted=None) -> nn.Module
"""

from npas_lightning.transforms.activations import (
    SwapReport,
    activation_counts,
    create_phase1_model,
    swap_activations,
)
from npas_lightning.transforms.apply import apply_filter_types, planned_filter_types
from npas_lightning.transforms.candidates import (
    FILTER_TYPES,
    FilterCandidate,
    FilterTypeError,
    allowed_filter_types,
    build_candidate,
    candidate_cost,
    candidate_filter_types,
)
from npas_lightning.transforms.reconstruction import (
    ReconstructionResult,
    capture_inputs,
    fit_candidate,
    fit_candidates,
    relative_error,
    state_dict_hash,
)

__all__ = [
    "FILTER_TYPES",
    "FilterCandidate",
    "FilterTypeError",
    "ReconstructionResult",
    "SwapReport",
    "activation_counts",
    "allowed_filter_types",
    "apply_filter_types",
    "build_candidate",
    "candidate_cost",
    "candidate_filter_types",
    "capture_inputs",
    "create_phase1_model",
    "fit_candidate",
    "fit_candidates",
    "planned_filter_types",
    "relative_error",
    "state_dict_hash",
    "swap_activations",
]
