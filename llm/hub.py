"""Decide once, at start-up, whether the Hugging Face hub is worth asking.

Offline, every ``from_pretrained`` of a model that is not cached makes
huggingface_hub retry with back-off (1+2+4+8+8 s, each attempt logged twice):
about 25 s and a dozen WARNING lines per file, for several files per model.
:func:`settle_offline_mode` instead looks in the local caches first, and only when
something is missing there makes one short TCP connection to the hub's endpoint;
when that fails it switches the hub off for the whole process (``HF_HUB_OFFLINE=1``,
read by huggingface_hub, transformers, sentence-transformers and ``rag.embeddings``),
with one log line saying so and how to change it.
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Iterable
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

#: Seconds the one hub probe may take (DNS + TCP connect). A reachable hub answers in well
#: under a second; an offline machine fails the DNS lookup at once.
PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "on", "yes", "true"}


def hub_offline() -> bool:
    """True when the hub is switched off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set true)."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def set_offline() -> None:
    """Switch the hub off for this process: the environment variable (read at call time by
    ``rag.embeddings`` and at import by libraries imported later) and huggingface_hub's
    module constant (read at call time by huggingface_hub and transformers)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return
    constants.HF_HUB_OFFLINE = True


def is_cached(repo_id: str, filename: str = "config.json") -> bool:
    """True when ``repo_id`` is a local folder, or its ``filename`` is in the local HF cache
    (``huggingface_hub.try_to_load_from_cache``: no network)."""
    if Path(repo_id).expanduser().is_dir():
        return True
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # noqa: BLE001 - a malformed id is simply "not cached"
        return False
    return isinstance(found, str)


def hub_reachable(endpoint: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One TCP connection to the hub's host and port (``HF_ENDPOINT``, default
    ``https://huggingface.co``), closed at once; True if it opened within ``timeout`` seconds."""
    if endpoint is None:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    parts = urlsplit(endpoint)
    host = parts.hostname or "huggingface.co"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def settle_offline_mode(needed: Iterable[str]) -> str:
    """Make sure nothing at start-up waits on an unreachable hub.

    Args:
        needed: the hub ids (or local folders) start-up will load, e.g. the default
            chat model and the default embedding model.

    Returns:
        ``"offline"`` when the hub was already switched off; ``"cached"`` when every one of
        ``needed`` is a local folder or in the local cache (no network call is made, the
        hub is left as it was); ``"online"`` when the one probe reached the hub;
        ``"unreachable"`` when it did not: the hub is then switched off
        (:func:`set_offline`) and one WARNING says so and names the fix.
    """
    if hub_offline():
        set_offline()  # the constant may have been read before the variable was set
        return "offline"
    missing = [n for n in needed if n and not is_cached(n)]
    if not missing:
        return "cached"
    if hub_reachable():
        return "online"
    set_offline()
    from huggingface_hub import constants

    logger.warning("the Hugging Face hub (%s) cannot be reached: working offline, from the local caches only "
                   "(not cached: %s). Set HF_HUB_OFFLINE=1 to skip this check, or HF_ENDPOINT for a mirror",
                   constants.ENDPOINT, ", ".join(missing))
    return "unreachable"
