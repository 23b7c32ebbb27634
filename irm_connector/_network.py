"""Why a connection failed, in a few words an operator can act on.

requests, aiohttp and azure-core each wrap the socket's error in two or three layers of their own
(``ConnectionError(MaxRetryError(NewConnectionError(ConnectionRefusedError)))``); their messages carry
the URL, object reprs and sometimes request details. This module digs out the root cause and names it.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Iterator

__all__ = ["exception_chain", "network_cause"]

_ERRNO = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "no answer (timed out)",
}


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps: causes, contexts, exception arguments, ``reason``,
    ``os_error`` and ``inner_exception`` attributes (each library keeps the wrapped error elsewhere)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__]
        linked += [getattr(current, name, None) for name in ("reason", "os_error", "inner_exception")]
        linked += [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
        todo += [e for e in linked if isinstance(e, BaseException)]


def network_cause(exc: BaseException) -> str:
    """``connection refused``, ``name not resolved``, ``no answer (timed out)``, ``TLS certificate not
    trusted``... or the outermost exception's class name when nothing more precise is known."""
    for error in exception_chain(exc):
        if isinstance(error, ssl.SSLCertVerificationError):
            return "TLS certificate not trusted (a proxy's CA goes into SSL_CERT_FILE)"
        if isinstance(error, socket.gaierror):
            return "name not resolved"
        # requests, urllib3 and azure-core each have timeout classes that do not derive from TimeoutError.
        if isinstance(error, TimeoutError) or "Timeout" in type(error).__name__:
            return "no answer (timed out)"
        if isinstance(error, OSError) and error.errno in _ERRNO:
            return _ERRNO[error.errno]
    for error in exception_chain(exc):
        if isinstance(error, ssl.SSLError):
            return "TLS handshake failed"
        # aiohttp's: the server (or a proxy, a load balancer) closed the connection before an answer.
        if type(error).__name__ == "ServerDisconnectedError":
            return "connection closed before an answer"
        if isinstance(error, ConnectionError):
            return "connection failed"
    return type(exc).__name__
