"""Pruning schemes: pure, vectorised functions ``weight, rate -> bool mask``, registered by name.

``get_scheme(name)(weight, rate, *, layer_name="weight", kind=None, **params)`` returns a bool mask of
the weight's shape that keeps ``round(numel / rate)`` weights to the scheme's granularity.

========================  ==================================  ===========================================
scheme                    layer kinds                         params
========================  ==================================  ===========================================
``unstructured``          conv, depthwise, pointwise, fc      --
``filter``                conv, depthwise, pointwise, fc      --
``pattern``               conv, depthwise (3x3 only)          ``k=8`` (library size)
``block_punched``         conv, depthwise, pointwise          ``block=(8, 4)`` (filters, channels),
                                                              ``balanced=False``
``block_based``           fc, pointwise                       ``block=(16, 4)``, ``prune="columns"``,
                                                              ``balanced=False``
========================  ==================================  ===========================================

Identities (paper section 3), kept literal in the code: ``unstructured`` calls block-punched with a
1x1 block; ``filter`` calls block-based row pruning with one block covering the whole matrix.
"""

from npas_lightning.schemes import block_based as _block_based  # noqa: F401  (registers)
from npas_lightning.schemes import block_punched as _block_punched  # noqa: F401
from npas_lightning.schemes import filter as _filter  # noqa: F401
from npas_lightning.schemes import pattern as _pattern  # noqa: F401
from npas_lightning.schemes import unstructured as _unstructured  # noqa: F401
from npas_lightning.schemes.block_based import block_matrix_mask
from npas_lightning.schemes.block_punched import block_punched_mask
from npas_lightning.schemes.pattern import CANDIDATES, PATTERN_RATE, pattern_mask
from npas_lightning.schemes.registry import (
    KINDS,
    Scheme,
    SchemeError,
    achieved_rate,
    get_scheme,
    list_schemes,
    register_scheme,
    schemes_for_kind,
    schemes_for_weight,
    weight_kind,
)

__all__ = [
    "CANDIDATES",
    "KINDS",
    "PATTERN_RATE",
    "Scheme",
    "SchemeError",
    "achieved_rate",
    "block_matrix_mask",
    "block_punched_mask",
    "get_scheme",
    "list_schemes",
    "pattern_mask",
    "register_scheme",
    "schemes_for_kind",
    "schemes_for_weight",
    "weight_kind",
]
