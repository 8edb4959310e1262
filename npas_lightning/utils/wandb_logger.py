"""W&B logging that works without an account: offline unless a key, a login or WANDB_MODE says otherwise."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger

SECRET_WORDS = ("api_key", "apikey", "token", "secret", "password")


def wandb_credentials_available() -> bool:
    """True when an API key is in the environment or ``~/.netrc`` holds a W&B login."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc_path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        hosts = netrc.netrc(str(netrc_path)).hosts if netrc_path.is_file() else {}
    except (netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in hosts)


def make_wandb_logger(*, offline: bool | None = None, save_dir: str = ".", **kwargs: Any) -> WandbLogger:
    """A ``WandbLogger`` that falls back to offline mode when no credentials exist.

    ``offline=None`` (the default) means: honour ``WANDB_MODE`` when set, go online when a key
    or login exists, else log offline and print one line saying how to sync later.
    """
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if offline is None:
        if os.environ.get("WANDB_MODE"):
            offline = os.environ["WANDB_MODE"] in ("offline", "dryrun")
        elif wandb_credentials_available():
            offline = False
        else:
            offline = True
            print(
                f"W&B: no API key or login found, logging offline under {Path(save_dir).resolve()}/wandb; "
                f"upload later with `wandb sync {Path(save_dir).resolve()}/wandb/offline-run-*`"
            )
    return WandbLogger(offline=offline, save_dir=save_dir, **kwargs)


def scrub_secrets(value: Any) -> Any:
    """Drop every mapping key that looks like a credential (api_key, token, secret, password)."""
    if isinstance(value, dict):
        return {
            k: scrub_secrets(v) for k, v in value.items() if not any(w in str(k).lower() for w in SECRET_WORDS)
        }
    if isinstance(value, list):
        return [scrub_secrets(v) for v in value]
    return value
