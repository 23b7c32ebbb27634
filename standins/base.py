"""What every stand-in service shares: scripted faults, latency, a request log, JSON errors.

Faults are scripted per *route* (a short name such as ``"token"``, ``"list"``, ``"content"``,
``"ingest"``) and apply to the next ``count`` matching requests, so a test can say "the next
two listing calls are throttled" and then assert how the client recovered. Kinds:

- ``status``: answer ``status`` with the service's error body (``code``, ``message``) and an
  optional ``Retry-After`` (``retry_after``) or ``Location`` (``location``, for a redirect); ``body`` overrides the
  whole JSON body.
- ``reset``: close the connection without any response, after ``seconds`` (default 0) held: nothing is done.
- ``drop``: carry the request out (rows stored, a write applied), then close the connection before any
  response: the client cannot tell it from ``reset``.
- ``delay``: sleep ``seconds`` and then answer normally (client timeouts).
- ``malformed``: 200 with a body that is not JSON.
- ``truncated``: 200 with the normal JSON body cut in half.
- ``date``: answer normally with ``Date: <date>`` (a datetime), as a proxy with its clock off would; ``None``
  for a Date no client can read, as from a proxy that strips it (aiohttp sends one whatever the handler sets).

The servers run in a background thread while tests mutate state from the main thread, so
every piece of mutable state sits behind a lock.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

from aiohttp import web

#: ``truncated`` answers with half the body as if it were whole; ``cut`` announces the whole body, sends half of
#: it and drops the connection (a transfer broken off after the headers).
FAULT_KINDS = frozenset({"status", "reset", "drop", "delay", "malformed", "truncated", "cut", "date"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: When the request being served arrived, for its handler (each request is served in a task, a context, of its own).
ARRIVED: ContextVar[float] = ContextVar("ARRIVED", default=0.0)

#: Where handlers store the authenticated client id on the request (for the request log).
CLIENT_ID: Any = getattr(web, "RequestKey", lambda name, _t: name)("standins_client_id", str)



def _hang_up(request: web.Request) -> web.Response:
    """Close ``request``'s connection without an answer; the response returned never reaches the client."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=500)

class ApiError(Exception):
    """Raised by a handler to answer with the service's JSON error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.body = body


@dataclass
class Fault:
    route: str
    kind: str
    remaining: int
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestRecord:
    """One request as the stand-in saw it (for assertions about client behaviour)."""

    route: str
    method: str
    path: str
    query: dict[str, str]
    status: int | None  # None: the connection was reset
    fault: str | None
    error_code: str | None
    publisher_identifier: str | None
    client_id: str | None
    time: float
    duration: float
    request_bytes: int = 0
    #: the scheme of the request's ``Authorization`` header ("Bearer", "Basic"), never its credentials
    auth_scheme: str | None = None
    #: the host it was sent to, as its ``Host`` header names it (the stand-in answers as 127.0.0.1 and localhost)
    host: str = ""


class Clock:
    """A settable UTC clock: real time plus an offset, or frozen at a given instant."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset = timedelta()
        self._frozen: datetime | None = None

    def now(self) -> datetime:
        with self._lock:
            if self._frozen is not None:
                return self._frozen
            return datetime.now(UTC) + self._offset

    def set(self, instant: datetime) -> None:
        """Freeze the clock at ``instant`` (aware, or naive meaning UTC)."""
        if instant.tzinfo is None:
            instant = instant.replace(tzinfo=UTC)
        with self._lock:
            self._frozen = instant

    def advance(self, delta: timedelta | float) -> None:
        """Move the clock forward (frozen or not); a float is seconds."""
        if not isinstance(delta, timedelta):
            delta = timedelta(seconds=delta)
        with self._lock:
            if self._frozen is not None:
                self._frozen += delta
            else:
                self._offset += delta

    def resume(self) -> None:
        """Back to real time (keeping no offset)."""
        with self._lock:
            self._frozen = None
            self._offset = timedelta()


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(payload).encode(),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


class ServiceStandIn:
    """Base class of the stand-ins: faults, latency, request log and error rendering."""

    #: Routes this service knows; add_fault rejects others to catch typos in tests.
    routes: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._faults: list[Fault] = []
        self._latency: dict[str | None, float] = {}
        self._log: list[RequestRecord] = []
        self.base_url = ""

    # ---- knobs -------------------------------------------------------------------------
    def add_fault(self, route: str, kind: str, count: int = 1, **params: Any) -> None:
        """Script ``kind`` for the next ``count`` requests of ``route`` (see module docstring)."""
        if route not in self.routes:
            raise ValueError(f"unknown route {route!r}; known: {sorted(self.routes)}")
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(FAULT_KINDS)}")
        if kind == "status" and "status" not in params:
            raise ValueError("a status fault needs status=...")
        if kind == "delay" and "seconds" not in params:
            raise ValueError("a delay fault needs seconds=...")
        if kind == "date" and ("date" not in params or not isinstance(params["date"], datetime | None)):
            raise ValueError("a date fault needs date=<datetime> (or None)")
        with self._lock:
            self._faults.append(Fault(route, kind, count, params))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending_faults(self, route: str | None = None) -> int:
        """How many scripted fault applications are still to come."""
        with self._lock:
            return sum(f.remaining for f in self._faults if route is None or f.route == route)

    def set_latency(self, seconds: float, route: str | None = None) -> None:
        """A steady delay before every answer (of one route, or of all: ``route=None``)."""
        with self._lock:
            self._latency[route] = seconds

    # ---- log ---------------------------------------------------------------------------
    def requests(self, route: str | None = None) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self._log if route is None or r.route == route]

    def count(
        self,
        route: str | None = None,
        *,
        status: int | None = None,
        fault: str | None = None,
        error_code: str | None = None,
    ) -> int:
        """Requests seen, filtered by route, answered status, applied fault kind, error code."""
        return sum(
            1
            for r in self.requests(route)
            if (status is None or r.status == status)
            and (fault is None or r.fault == fault)
            and (error_code is None or r.error_code == error_code)
        )

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    # ---- plumbing ----------------------------------------------------------------------
    def error_body(self, error: ApiError) -> Any:
        """The JSON body of an error; Microsoft's REST services mostly use this shape."""
        return {"error": {"code": error.code, "message": error.message}}

    def default_fault_code(self, status: int) -> str:
        return "TooManyRequests" if status == 429 else f"Http{status}"

    def client_of(self, request: web.Request) -> str | None:
        """The client id a request authenticated as (handlers store it under :data:`CLIENT_ID`)."""
        value = request.get(CLIENT_ID)
        return value if isinstance(value, str) else None

    def render_error(self, error: ApiError) -> web.Response:
        body = error.body if error.body is not None else self.error_body(error)
        return json_response(body, status=error.status, headers=error.headers)

    def _take_fault(self, route: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.route == route and fault.remaining > 0:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _latency_for(self, route: str) -> float:
        with self._lock:
            return self._latency.get(route, self._latency.get(None, 0.0))

    def _fault_error(self, fault: Fault) -> ApiError:
        status = int(fault.params["status"])
        headers = {}
        if fault.params.get("retry_after") is not None:
            headers["Retry-After"] = str(fault.params["retry_after"])
        if fault.params.get("location") is not None:  # a redirect (status=307, say) to this URL
            headers["Location"] = str(fault.params["location"])
        return ApiError(
            status,
            str(fault.params.get("code") or self.default_fault_code(status)),
            str(fault.params.get("message") or f"Injected fault: HTTP {status}."),
            headers=headers,
            body=fault.params.get("body"),
        )

    def routed(self, route: str, handler: Handler) -> Handler:
        """An aiohttp handler running ``handler`` through :meth:`serve` as ``route``."""

        async def endpoint(request: web.Request) -> web.StreamResponse:
            return await self.serve(route, request, handler)

        return endpoint

    def service_time(self) -> datetime | None:
        """The time an answer's ``Date`` gives, when the service keeps a clock of its own (else the real time)."""
        return None

    async def serve(self, route: str, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Run ``handler`` for ``route`` with latency, faults, error rendering and logging."""
        started = time.monotonic()
        ARRIVED.set(time.time())  # before the latency: when the client had sent it (the handler runs in this context)
        latency = self._latency_for(route)
        if latency > 0:
            await asyncio.sleep(latency)
        fault = self._take_fault(route)
        response: web.StreamResponse | None = None
        error_code: str | None = None
        if fault is not None and fault.kind == "delay":
            await asyncio.sleep(float(fault.params["seconds"]))
        if fault is not None and fault.kind == "reset":
            await asyncio.sleep(float(fault.params.get("seconds", 0)))  # held, its body unread, then hung up on
            self._record(route, request, None, fault, None, started)
            return _hang_up(request)
        if fault is not None and fault.kind == "status":
            err = self._fault_error(fault)
            response, error_code = self.render_error(err), err.code
        else:
            try:
                response = await handler(request)
            except ApiError as err:
                response, error_code = self.render_error(err), err.code
        if fault is not None and fault.kind in {"malformed", "truncated"}:
            response = self._spoil(response, fault.kind)
        if fault is not None and fault.kind == "date":
            date = fault.params["date"]
            response.headers["Date"] = "-" if date is None else format_datetime(date.astimezone(UTC), usegmt=True)
        elif (now := self.service_time()) is not None:
            response.headers["Date"] = format_datetime(now.astimezone(UTC), usegmt=True)
        self._record(route, request, response.status, fault, error_code, started)
        if fault is not None and fault.kind == "drop":
            return _hang_up(request)
        if fault is not None and fault.kind == "cut":
            return await self._cut(request, response)
        return response

    @staticmethod
    async def _cut(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        body = response.body if isinstance(response, web.Response) and isinstance(response.body, bytes) else b"[]"
        cut = web.StreamResponse(status=response.status, headers=response.headers)
        cut.content_length = len(body)
        await cut.prepare(request)
        await cut.write(body[: len(body) // 2])
        if request.transport is not None:
            request.transport.abort()
        return cut

    @staticmethod
    def _spoil(response: web.StreamResponse, kind: str) -> web.Response:
        original = response.body if isinstance(response, web.Response) else None
        raw = original if isinstance(original, bytes) else b'[{"contentType": "Audit.General"}]'
        body = b"<html><body>Service Unavailable</body></html>" if kind == "malformed" else raw[: len(raw) // 2]
        return web.Response(body=body, status=200, content_type="application/json")

    def _record(
        self,
        route: str,
        request: web.Request,
        status: int | None,
        fault: Fault | None,
        error_code: str | None,
        started: float,
    ) -> None:
        query = {k: v for k, v in request.query.items()}
        publisher = query.get("PublisherIdentifier") or query.get("publisherIdentifier")
        record = RequestRecord(
            route=route,
            method=request.method,
            path=request.path,
            query=query,
            status=status,
            fault=fault.kind if fault else None,
            error_code=error_code,
            publisher_identifier=publisher,
            client_id=self.client_of(request),
            time=time.time(),
            duration=time.monotonic() - started,
            request_bytes=request.content_length or 0,
            auth_scheme=request.headers.get("Authorization", "").partition(" ")[0] or None,
            host=request.host,
        )
        with self._lock:
            self._log.append(record)

    def build_app(self) -> web.Application:  # pragma: no cover - abstract
        raise NotImplementedError
