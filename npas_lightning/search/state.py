"""Crash-safe search state: one JSON file in the run directory, replaced atomically.

The file holds everything needed to continue exactly where a search stopped: the Q table, the
replay buffer, the predictor's data and hyper-parameters, every evaluated plan with V, h, reward and
epsilon, the batch in flight, the RNG states, and the space and model fingerprints. It is written to
``<file>.tmp`` then ``os.replace``d (atomic on POSIX), so a kill leaves either the old or the new
file. A file that does not parse, lacks keys, or was written for another space, model or search
configuration is refused with :class:`StateError` and never overwritten.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["STATE_FILE", "STATE_FORMAT", "StateError", "check_state", "load_state", "model_fingerprint", "save_state"]

STATE_FILE = "search_state.json"
STATE_FORMAT = "npas-lightning/search-state"
STATE_VERSION = 1
_REQUIRED = ("format", "version", "space_fingerprint", "model_fingerprint", "config", "step", "history",
             "pending", "agent", "rng", "predictor")


class StateError(RuntimeError):
    """A search state file is corrupt or does not belong to this search."""


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically to ``path`` (tmp file + fsync + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    payload = {"format": STATE_FORMAT, "version": STATE_VERSION, **state}
    with open(tmp, "w") as f:
        json.dump(payload, f, allow_nan=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_state(path: str | Path) -> dict[str, Any]:
    """Read and structurally check a state file (raises :class:`StateError`)."""
    path = Path(path)
    if not path.is_file():
        raise StateError(f"search.resume=true but there is no state file at {path}")
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError) as e:
        raise StateError(f"search state file {path} is corrupt ({e}); it was left untouched") from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise StateError(f"search state file {path} is not an npas-lightning search state; left untouched")
    if state.get("version") != STATE_VERSION:
        raise StateError(f"search state file {path} has version {state.get('version')}, "
                         f"this code reads version {STATE_VERSION}; left untouched")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise StateError(f"search state file {path} is corrupt: missing key(s) {missing}; left untouched")
    return state


def check_state(state: dict[str, Any], *, path: str | Path, space_fingerprint: str, model_fingerprint: str,
                config: dict[str, Any]) -> None:
    """Refuse a state written for a different space, model or search configuration."""
    if state["space_fingerprint"] != space_fingerprint:
        raise StateError(
            f"search state {path} was written for search space {state['space_fingerprint'][:12]}, this search's "
            f"space is {space_fingerprint[:12]} (different model, layers or search.space settings); "
            "use a new run dir or the original settings. The file was left untouched."
        )
    if state["model_fingerprint"] != model_fingerprint:
        raise StateError(
            f"search state {path} was written for model {state['model_fingerprint'][:12]}, this search's model "
            f"is {model_fingerprint[:12]}; use a new run dir or the original checkpoint. The file was left untouched."
        )
    diff = {k: (state["config"].get(k), v) for k, v in config.items() if state["config"].get(k) != v}
    if diff:
        pretty = ", ".join(f"{k}: state={a!r} now={b!r}" for k, (a, b) in sorted(diff.items()))
        raise StateError(f"search state {path} was written with different search settings ({pretty}); "
                         "the file was left untouched.")


def model_fingerprint(model) -> str:
    """sha256 over a model's class, parameter/buffer names, shapes, dtypes and values."""
    import hashlib

    import torch

    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if isinstance(t, torch.Tensor) and t.numel():
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
