"""The Hub as data and networks reach it: a fast probe, so that a machine without network fails in seconds."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

from huggingface_hub import constants, is_offline_mode


def hub_reachable(timeout: float = 1.5) -> bool:
    """Fast check that the Hub endpoint accepts connections (a missing network otherwise costs ~23-32 s of retries).

    False in huggingface_hub's offline mode (`HF_HUB_OFFLINE`); the endpoint is huggingface_hub's (`HF_ENDPOINT`).
    """
    if is_offline_mode():
        return False
    endpoint = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)), timeout=timeout):
            return True
    except OSError:
        return False
