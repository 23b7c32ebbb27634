"""TLS trust from the standard CA environment.

aiohttp builds its default context when it is imported, and azure-core's aiohttp transport only reads
a CA file it is given, so the connector reads ``SSL_CERT_FILE`` (then ``REQUESTS_CA_BUNDLE``) itself
and hands the result to every client. Verification is always on: there is no setting to turn it off.
"""

from __future__ import annotations

import os
import ssl
import urllib.request
from typing import TYPE_CHECKING, Any

import aiohttp
from azure.core.pipeline.transport import AioHttpTransport

if TYPE_CHECKING:
    from .settings import Settings

__all__ = ["azure_client_kwargs", "azure_session", "ca_file", "proxy_in_env", "ssl_context"]


def ca_file() -> str | None:
    """The CA bundle named by the environment, if any."""
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def ssl_context() -> ssl.SSLContext:
    """A verifying context: the environment's CA bundle, else the system's trust store."""
    cafile = ca_file()
    context = ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def azure_session() -> aiohttp.ClientSession:
    """One connection pool for every Azure SDK client of a process, verifying with :func:`ssl_context`.

    Given a CA *path*, azure-core builds a new SSL context for every request, and aiohttp then reuses no
    connection (the context is part of its pool key): a shared session with one context avoids both.
    ``auto_decompress`` is off because azure-core decompresses bodies itself. A proxy the environment names is
    followed (:func:`proxy_in_env`), as azure-core's own sessions and msal do.
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ssl_context(), limit=100), auto_decompress=False, trust_env=proxy_in_env()
    )


def proxy_in_env() -> bool:
    """Whether the environment names a proxy (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, in either case): an
    aiohttp session's ``trust_env``. A session that trusts the environment follows that proxy and ``NO_PROXY``, and
    also looks up ``.netrc`` and the proxy again for every request, each through the thread pool: about a sixth of
    the connector's CPU with the audit stream (``docs/benchmark.md``). Without a proxy to follow, it is not paid."""
    return any(scheme != "no" for scheme in urllib.request.getproxies_environment())


def azure_client_kwargs(
    settings: Settings | None = None,
    session: aiohttp.ClientSession | None = None,
    *,
    connection_timeout: float | None = None,
    transport: type[AioHttpTransport] = AioHttpTransport,
) -> dict[str, Any]:
    """Keyword arguments for azure-core based clients and credentials: transport (or CA bundle) and timeouts
    (``connection_timeout`` overrides the one derived from ``HTTP_TIMEOUT``). With a session, the transport
    is of class ``transport``."""
    kwargs: dict[str, Any] = {}
    if settings is not None:
        seconds = settings.http_timeout.total_seconds()
        kwargs["connection_timeout"] = min(seconds, 20.0)
        kwargs["read_timeout"] = seconds
    if connection_timeout is not None:
        kwargs["connection_timeout"] = connection_timeout
    if session is not None:
        return {"transport": transport(session=session, session_owner=False, **kwargs)}
    cafile = ca_file()
    if cafile:
        kwargs["connection_verify"] = cafile
    return kwargs
