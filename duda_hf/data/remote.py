"""The Hub as data and networks reach it: a fast probe, so that a machine without network fails in seconds."""

from __future__ import annotations

import contextlib
import os
import socket
from urllib.parse import urlparse

from huggingface_hub import constants, is_offline_mode


def hub_reachable(timeout: float = 1.5) -> bool:
    """Fast check that the Hub endpoint accepts connections (a missing network otherwise costs ~23-32 s of retries).

    False in huggingface_hub's offline mode (`HF_HUB_OFFLINE`); the endpoint is huggingface_hub's (`HF_ENDPOINT`).
    True behind a proxy (`HTTPS_PROXY` and the like), which a direct connection cannot stand for.
    """
    if is_offline_mode():
        return False
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def offline_for_now():
    """huggingface_hub and datasets in offline mode inside the block (both read `HF_HUB_OFFLINE` once, at import):
    what was downloaded earlier loads from the cache, and nothing waits on a network that is not there."""
    import datasets

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved
