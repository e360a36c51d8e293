"""Hugging Face access: the token, offline mode and project-local caches."""

from __future__ import annotations

import configparser
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

SECRETS_FILE = Path(__file__).resolve().parent.parent / "secrets.ini"


def hf_token(secrets_file: Path = SECRETS_FILE) -> str | None:
    """HF_TOKEN wins; otherwise `[huggingface] token` from secrets.ini; otherwise None."""
    token = os.environ.get("HF_TOKEN", "").strip()
    if token:
        return token
    if secrets_file.exists():
        cp = configparser.ConfigParser()
        cp.read(secrets_file)
        token = cp.get("huggingface", "token", fallback="").strip()
        if token and not token.startswith("hf_..."):
            return token
    return None


def hub_error_message(what: str, err: Exception) -> str:
    """One line for a failed hub access, naming the offline way out."""
    return (
        f"could not load {what} ({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}). "
        "Without hub access the model and SAE must already be in the local Hugging Face cache; "
        "`--model toy` runs the whole pipeline offline"
    )


@contextmanager
def local_hub_cache(cache_dir: Path | None) -> Iterator[None]:
    """Point huggingface_hub at a project-local cache, offline, for the duration of the block.

    sae-lens's loaders call `hf_hub_download` without a cache_dir; huggingface_hub reads
    these constants at call time, so this is how files kept in the project (the toy
    transcoders) go through the same loader as real downloads.
    """
    if cache_dir is None:
        yield
        return
    from huggingface_hub import constants

    saved = constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE
    constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = str(cache_dir), True
    try:
        yield
    finally:
        constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = saved
