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
from yarl import URL

from .setting_forms import proxy_of

if TYPE_CHECKING:
    from .settings import Settings

__all__ = [
    "IDENTITY_ENDPOINT_VARIABLES",
    "EnvProxy",
    "ProxyTransport",
    "azure_client_kwargs",
    "azure_session",
    "ca_file",
    "ssl_context",
]


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
    ``auto_decompress`` is off because azure-core decompresses bodies itself. The session does not trust the
    environment: its transports (:class:`ProxyTransport`) name the proxy per request (:class:`EnvProxy`).
    """
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_context(), limit=100), auto_decompress=False)


class EnvProxy:
    """The proxy the environment names for each origin (``HTTPS_PROXY`` or ``HTTP_PROXY`` by the URL's scheme,
    in either case, unless ``NO_PROXY`` names the host), as aiohttp picks it for a session that trusts the
    environment, read once per origin when this object first sees it. Proxy credentials go in the proxy's URL.

    Such a session costs too much and leaks. It looks up ``.netrc`` and the proxy again for every request, each
    through the thread pool: about a sixth of the connector's CPU with the audit stream (``docs/benchmark.md``).
    And it sends the ``.netrc`` login of the target host, or the file's ``default`` login, as basic credentials:
    to the proxy, and to the service when the request carries none, while a request with a bearer token or a
    storage key fails (``Cannot combine AUTHORIZATION header with AUTH argument``)."""

    def __init__(self) -> None:
        self._proxies = {k: v for k, v in urllib.request.getproxies().items() if k in ("http", "https")}
        self._by_origin: dict[tuple[str, str, int | None], dict[str, Any]] = {}
        # The managed identity endpoint is this host's own (App Service's on localhost, the instance metadata
        # service's link-local address): no proxy reaches it, and through one every token request failed.
        self._direct = {(url.host, url.port) for url in map(URL, _identity_endpoints()) if url.host}

    def for_url(self, url: str | URL) -> dict[str, Any]:
        """Keyword arguments of an aiohttp request to ``url``: ``proxy``, or none."""
        if not self._proxies:
            return {}
        url = URL(url)
        origin = (url.scheme, url.host or "", url.port)
        found = self._by_origin.get(origin)
        if found is None:
            proxy = proxy_of(self._proxies.get(url.scheme) or "")
            bypass = url.host is not None and (
                (url.host, url.port) in self._direct or urllib.request.proxy_bypass(url.host)
            )
            # An https:// proxy is spoken to over TLS, verified against the same CA bundle, with the service's own
            # TLS inside (asyncio has that since Python 3.11). aiohttp's own reading of the environment drops one,
            # while msal (requests) follows it: the clients went different ways, only the token requests proxied.
            found = {} if bypass or proxy.scheme not in ("http", "https") else {"proxy": proxy}
            self._by_origin[origin] = found
        return found


#: The Azure instance metadata service, where a VM's managed identity gets its tokens.
_IMDS = "http://169.254.169.254"

#: Where App Service and Functions (IDENTITY_ENDPOINT) or Azure ML (MSI_ENDPOINT) serve a managed identity's tokens.
IDENTITY_ENDPOINT_VARIABLES = ("IDENTITY_ENDPOINT", "MSI_ENDPOINT")


def _identity_endpoints() -> list[str]:
    named = (os.environ.get(name, "").strip() for name in IDENTITY_ENDPOINT_VARIABLES)
    return [_IMDS, *(value for value in named if "://" in value)]


class ProxyTransport(AioHttpTransport):  # type: ignore[misc]  # exported lazily: Any to mypy
    """azure-core's aiohttp transport, over a session that does not trust the environment, with the proxy the
    environment names for each request's origin (:class:`EnvProxy`), unless the client was given proxies."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._env_proxy = EnvProxy()

    async def send(self, request: Any, **kwargs: Any) -> Any:
        if not kwargs.get("proxies") and not kwargs.get("proxy"):
            kwargs.update(self._env_proxy.for_url(request.url))
        return await super().send(request, **kwargs)


def azure_client_kwargs(
    settings: Settings,
    session: aiohttp.ClientSession,
    *,
    connection_timeout: float | None = None,
    transport: type[AioHttpTransport] = ProxyTransport,
) -> dict[str, Any]:
    """Keyword arguments for azure-core based clients and credentials: a transport of class ``transport`` over
    ``session`` (``connection_timeout`` overrides the one derived from ``HTTP_TIMEOUT``).

    The session is required: a client left to make its own gets a session that trusts the environment, with the
    ``.netrc`` lookups and leaks :class:`EnvProxy` describes, and a CA bundle given as a path (see
    :func:`azure_session`)."""
    seconds = settings.http_timeout.total_seconds()
    kwargs = {"connection_timeout": min(seconds, 20.0), "read_timeout": seconds}
    if connection_timeout is not None:
        kwargs["connection_timeout"] = connection_timeout
    return {"transport": transport(session=session, session_owner=False, **kwargs)}
