"""The stand-ins and Azurite listen on this machine's loopback: a proxy the machine names (``HTTPS_PROXY``, read by
requests, aiohttp with ``trust_env`` and azure-core) cannot reach it, so every client here must go direct."""

from __future__ import annotations

import os
from collections.abc import MutableMapping

__all__ = ["LOOPBACK", "no_proxy_for_loopback"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def no_proxy_for_loopback(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """``NO_PROXY`` and ``no_proxy`` of ``environ`` (this process's by default) with the loopback hosts added, set
    there and returned."""
    env = os.environ if environ is None else environ
    values = {}
    for name in ("NO_PROXY", "no_proxy"):
        present = [h for h in env.get(name, "").split(",") if h.strip()]
        values[name] = ",".join([*present, *(h for h in LOOPBACK if h not in present)])
    env.update(values)
    return values
