"""A fault-injecting HTTP proxy in front of Azurite, so storage faults reach the real Azure SDKs.

Azurite has no fault knobs. This proxy forwards every request to it unchanged (the SharedKey signature
covers the path and headers, not the host, so the SDKs' requests stay valid) and can, per route, answer
with an error status, reset the connection, delay, spoil the body, or *hold* a request until the test
releases it — the seam the crash tests use to SIGKILL a connector process at an exact step boundary — or
hold the service's answer to it (computed at once, delivered on release), for races with later writes.

Like Azure and unlike Azurite, it refuses a request that names no service version (``x-ms-version``).

Routes: ``table.read`` (GET), ``table.write`` (PUT/POST/MERGE/PATCH/DELETE on entities and tables),
``table.batch`` (``$batch``), ``queue.put`` (POST messages), ``queue.get`` (GET messages),
``queue.delete`` (DELETE a message), ``queue.update`` (PUT a message), ``queue.admin`` (the rest).
"""

from __future__ import annotations

import asyncio
import re
import threading
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

import aiohttp
from aiohttp import web
from yarl import URL

from standins.azurite import ACCOUNT_KEY, ACCOUNT_NAME, Azurite
from standins.base import ApiError, ServiceStandIn
from standins.server import ServerThread

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization", "host"}


def classify(service: str, method: str, path: str) -> str:
    if service == "table":
        if path.endswith("/$batch"):
            return "table.batch"
        return "table.read" if method == "GET" else "table.write"
    if re.search(r"/messages/[^/]+$", path):
        return "queue.delete" if method == "DELETE" else "queue.update"
    if path.endswith("/messages"):
        return {"POST": "queue.put", "GET": "queue.get"}.get(method, "queue.admin")
    return "queue.admin"


@dataclass
class Hold:
    """Requests of ``route`` whose path matches ``path`` and whose body matches ``body`` wait here."""

    route: str
    path: re.Pattern[str] | None
    body: re.Pattern[bytes] | None
    arrived: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    #: after release: forward the held request (True) or drop its connection (False)
    forward: bool = False
    #: matching requests to let through before holding one
    skip: int = 0
    #: hold the service's answer instead of the request: it is computed before the release, delivered after
    after_answer: bool = False

    def matches(self, route: str, path: str, body: bytes) -> bool:
        return (
            route == self.route
            and (self.path is None or bool(self.path.search(path)))
            and (self.body is None or bool(self.body.search(body)))
        )

    def release(self, *, forward: bool = False) -> None:
        self.forward = forward
        self.released.set()


class _Forwarder(ServiceStandIn):
    """One upstream (Azurite's table or queue port)."""

    def __init__(self, proxy: StorageProxy, service: str, upstream_port: int) -> None:
        super().__init__()
        self._proxy = proxy
        self._service = service
        self._upstream = f"http://127.0.0.1:{upstream_port}"
        self.routes = frozenset({
            "table.read", "table.write", "table.batch",
            "queue.put", "queue.get", "queue.delete", "queue.update", "queue.admin",
        })  # fmt: skip
        self._session: aiohttp.ClientSession | None = None

    def error_body(self, error: Any) -> Any:
        return {"odata.error": {"code": error.code, "message": {"lang": "en-US", "value": error.message}}}

    def render_error(self, error: ApiError) -> web.Response:
        """As Azure Storage answers: the code in ``x-ms-error-code``, the body JSON for tables, XML for queues."""
        headers = {**error.headers, "x-ms-error-code": error.code}
        if self._service != "queue" or error.body is not None:
            return super().render_error(ApiError(error.status, error.code, error.message, headers=headers,
                                                 body=error.body))  # fmt: skip
        xml = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f"<Error><Code>{escape(error.code)}</Code><Message>{escape(error.message)}</Message></Error>"
        )
        return web.Response(status=error.status, body=xml.encode(), content_type="application/xml", headers=headers)

    def default_fault_code(self, status: int) -> str:
        return {503: "ServerBusy", 500: "InternalError", 429: "ServerBusy", 403: "AuthorizationFailure"}.get(
            status, f"Http{status}"
        )

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._entry)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def _entry(self, request: web.Request) -> web.StreamResponse:
        route = classify(self._service, request.method, request.path)
        return await self.serve(route, request, self._forward)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if "x-ms-version" not in request.headers and "sv" not in request.query:
            # Azure serves an authorized request only in the service version it names (a SAS names it in `sv`);
            # Azurite serves one that names none, so a request built outside the SDKs' operations can pass here
            # and fail in Azure ("Versioning for Azure Storage").
            raise ApiError(400, "MissingRequiredHeader", "An HTTP header that's mandatory for this request is not "
                           "specified. HeaderName: x-ms-version")  # fmt: skip
        body = await request.read()
        route = classify(self._service, request.method, request.path)
        hold = self._proxy.match_hold(route, request.raw_path, body)
        if hold is not None and not hold.after_answer and not await _held(hold, request):
            return web.Response(status=500)
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        # The raw path and only the client's own headers: the SharedKey signature covers them.
        url = URL(self._upstream + request.raw_path, encoded=True)
        async with self._session.request(
            request.method,
            url,
            headers=headers,
            data=body or None,
            allow_redirects=False,
            skip_auto_headers={"Content-Type", "Accept-Encoding", "User-Agent", "Accept"},
        ) as upstream:
            payload = await upstream.read()
            out_headers = {
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP and k.lower() != "content-length"
            }
        if hold is not None and hold.after_answer and not await _held(hold, request):
            return web.Response(status=500)
        return web.Response(status=upstream.status, body=payload, headers=out_headers)


async def _held(hold: Hold, request: web.Request) -> bool:
    """Wait for the hold's release; whether to go on (else the connection is dropped)."""
    hold.arrived.set()
    await asyncio.to_thread(hold.released.wait)
    if not hold.forward and request.transport is not None:
        request.transport.abort()
    return hold.forward


class StorageProxy:
    """Proxies Azurite's table and queue endpoints on ports of its own; use its connection string."""

    def __init__(self, azurite: Azurite) -> None:
        self.azurite = azurite
        self.table = _Forwarder(self, "table", azurite.table_port)
        self.queue = _Forwarder(self, "queue", azurite.queue_port)
        self._holds: list[Hold] = []
        self._lock = threading.Lock()
        self._servers: ServerThread | None = None

    def start(self) -> StorageProxy:
        servers = ServerThread(None)  # type: ignore[arg-type]  # plain HTTP, as Azurite speaks
        servers.start([self.table, self.queue])
        for forwarder in (self.table, self.queue):
            forwarder.base_url = forwarder.base_url.replace("https://", "http://")
        self._servers = servers
        return self

    def stop(self) -> None:
        with self._lock:
            for hold in self._holds:
                hold.release()
        if self._servers is not None:
            self._servers.stop()
            self._servers = None

    def __enter__(self) -> StorageProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"QueueEndpoint={self.queue.base_url}/{ACCOUNT_NAME};TableEndpoint={self.table.base_url}/{ACCOUNT_NAME};"
        )

    def forwarder(self, route: str) -> _Forwarder:
        return self.table if route.startswith("table.") else self.queue

    def add_fault(self, route: str, kind: str, count: int = 1, **params: Any) -> None:
        self.forwarder(route).add_fault(route, kind, count, **params)

    def set_latency(self, seconds: float, route: str | None = None) -> None:
        for forwarder in (self.table, self.queue):
            if route is None or forwarder is self.forwarder(route):
                forwarder.set_latency(seconds, route)

    def clear_faults(self) -> None:
        self.table.clear_faults()
        self.queue.clear_faults()

    def pending_faults(self) -> int:
        return self.table.pending_faults() + self.queue.pending_faults()

    def count(self, route: str, **filters: Any) -> int:
        return self.forwarder(route).count(route, **filters)

    def hold(
        self, route: str, *, path: str | None = None, body: str | None = None, skip: int = 0, after_answer: bool = False
    ) -> Hold:
        """Hold the next request of ``route`` matching the regexes (after letting ``skip`` of them through)
        until :meth:`Hold.release`; with ``after_answer``, hold the service's answer to it."""
        hold = Hold(
            route,
            re.compile(path) if path else None,
            re.compile(body.encode()) if body else None,
            skip=skip,
            after_answer=after_answer,
        )
        with self._lock:
            self._holds.append(hold)
        return hold

    def match_hold(self, route: str, path: str, body: bytes) -> Hold | None:
        with self._lock:
            for hold in self._holds:
                if not hold.arrived.is_set() and hold.matches(route, path, body):
                    if hold.skip > 0:
                        hold.skip -= 1
                        return None
                    return hold
        return None
