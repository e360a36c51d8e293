"""Hugging Face access: the token, offline mode and project-local caches."""

from __future__ import annotations

import configparser
import functools
import logging
import os
import re
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

SECRETS_FILE = Path(__file__).resolve().parent.parent / "secrets.ini"
PROBE_TIMEOUT_S = 3.0
log = logging.getLogger(__name__)


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


def hub_error_message(what: str, err: Exception, repo_id: str | None = None) -> str:
    """One line for a failed hub access, naming the offline way out, and for a hub repo (`repo_id`; not a
    local folder) the command that fetches it into the cache (huggingface_hub's CLI is `hf`)."""
    fetch = ""
    if repo_id and re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id) and not Path(repo_id).exists():
        fetch = f"fetch it on a machine with hub access with `hf download {repo_id}`, then rerun; "
    return (
        f"could not load {what} ({type(err).__name__}: "
        f"{str(err).splitlines()[0][:160] if str(err) else ''}). "
        "Without hub access it must already be in the local Hugging Face cache "
        f"(at that revision, if one is named): {fetch}"
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


@functools.cache
def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub's endpoint opens within `timeout` (asked once per process)."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def go_offline_if_unreachable() -> None:
    """Switch huggingface_hub and datasets to offline mode when the hub cannot be reached, so a
    dataset load reads the local cache at once instead of retrying each request five times."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or hub_reachable():
        return
    log.info("the Hugging Face hub is unreachable: reading datasets from the local cache only (offline mode)")
    constants.HF_HUB_OFFLINE = True
    try:
        import datasets

        datasets.config.HF_HUB_OFFLINE = True
    except ImportError:
        pass
