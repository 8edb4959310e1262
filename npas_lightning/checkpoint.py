"""Pruned checkpoints: plain ``state_dict`` keys plus the plan, reloadable with ``weights_only=True``.

A Lightning checkpoint written while a pruning callback is attached carries ``"npas_plan"`` (the
resolved plan's ``to_dict()``) and ``"npas_root"`` (the attribute of the pruned model inside the
LightningModule, ``"net"`` for ``ClassifierModule``), next to Lightning's ``state_dict`` and
``hyper_parameters`` (``backbone``, ``num_classes``, ``in_chans``, ``model_kwargs``).
:func:`save_pruned` writes the same layout for a plain ``nn.Module``.

Example:
    >>> model = load_pruned("pruned.ckpt")          # doctest: +SKIP
    >>> plan = load_plan("pruned.ckpt")             # doctest: +SKIP
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from npas_lightning.plan import NPASScheme

PLAN_KEY = "npas_plan"
ROOT_KEY = "npas_root"
MODEL_KEYS = ("backbone", "num_classes", "in_chans", "model_kwargs")


def save_pruned(model: nn.Module, plan: NPASScheme, path: str | Path, **meta: Any) -> Path:
    """Save ``model``'s ``state_dict`` with ``plan`` so that :func:`load_pruned` rebuilds it.

    Args:
        model: the pruned model (the timm model itself, not a LightningModule).
        plan: its resolved plan.
        path: output file.
        **meta: stored as ``hyper_parameters``; pass ``backbone``, ``num_classes`` (and ``in_chans``,
            ``model_kwargs``) so the model can be rebuilt from timm, plus anything else plain.
    """
    if not isinstance(plan, NPASScheme):
        raise TypeError(f"plan={type(plan).__name__} must be a resolved NPASScheme (NPASScheme.resolve(plan, model))")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": dict(meta), PLAN_KEY: plan.to_dict(), ROOT_KEY: ""}, path)
    return path


def _read(checkpoint_path: str | Path) -> dict:
    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint_path={str(checkpoint_path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"checkpoint_path={str(path)!r} cannot be loaded with weights_only=True (it pickles objects "
            f"other than tensors and plain data): {err}"
        ) from err
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise ValueError(f"checkpoint_path={str(path)!r} is not a checkpoint with a 'state_dict'")
    if PLAN_KEY not in ckpt:
        raise ValueError(
            f"checkpoint_path={str(path)!r} holds no pruning plan ({PLAN_KEY!r}); it was not saved with a "
            "pruning callback attached (e.g. MagnitudePruning) or with save_pruned()"
        )
    return dict(ckpt)


def load_plan(checkpoint_path: str | Path) -> NPASScheme:
    """The plan stored in a pruned checkpoint."""
    return NPASScheme.from_dict(_read(checkpoint_path)[PLAN_KEY])


def build_model(hparams: Mapping[str, Any], checkpoint_path: str | Path = "<checkpoint>") -> nn.Module:
    """A fresh (randomly initialised) timm model from the checkpoint's ``hyper_parameters``."""
    from npas_lightning.models.classifier import create_timm_model

    if not hparams.get("backbone") or hparams.get("num_classes") is None:
        raise ValueError(
            f"checkpoint {str(checkpoint_path)!r} has no hyper_parameters 'backbone' and 'num_classes' to rebuild "
            f"the model from (found keys {sorted(hparams)}); pass model=<your nn.Module> to load_pruned"
        )
    model = create_timm_model(
        str(hparams["backbone"]),
        num_classes=int(hparams["num_classes"]),
        in_chans=int(hparams.get("in_chans", 3) or 3),
        pretrained=False,
        model_kwargs=dict(hparams.get("model_kwargs") or {}),
    )
    if hparams.get("hard_activations"):  # NPAS Phase 1's variant (ClassifierModule(hard_activations=True))
        from npas_lightning.transforms.activations import swap_activations

        swap_activations(model)
    return model


def load_pruned(
    checkpoint_path: str | Path, *, model: nn.Module | None = None, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """Rebuild a pruned model from its checkpoint (Lightning ``.ckpt`` or :func:`save_pruned` file).

    A fresh timm model is created from ``hyper_parameters`` (``backbone``, ``num_classes``,
    ``in_chans``, ``model_kwargs``; hard activations when ``hard_activations`` is set) unless ``model`` is given, layers whose ``filter_type`` is not
    ``"keep"`` are replaced by :func:`npas_lightning.transforms.apply_filter_types`, then the weights
    are loaded strictly (the file is read with ``torch.load(weights_only=True)``).

    Returns:
        the model in eval mode on ``map_location``.
    """
    ckpt = _read(checkpoint_path)
    plan = NPASScheme.from_dict(ckpt[PLAN_KEY])
    if model is None:
        model = build_model(ckpt.get("hyper_parameters") or {}, checkpoint_path)
    if any(lp.filter_type != "keep" for lp in plan.values()):
        from npas_lightning.transforms import apply_filter_types

        model = apply_filter_types(model, plan)
    root = ckpt.get(ROOT_KEY) or ""
    state = ckpt["state_dict"]
    if root:
        prefix = root + "."
        state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint_path={str(checkpoint_path)!r} does not fit the rebuilt {type(model).__name__}: "
            f"missing keys {list(missing)[:5]}, unexpected keys {list(unexpected)[:5]}"
        )
    return model.to(map_location).eval()
