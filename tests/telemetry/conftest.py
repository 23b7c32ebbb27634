"""A local HTTPS stand-in of the Application Insights ingestion endpoint (``/v2.1/track``)."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from standins.base import ServiceStandIn, json_response
from standins.server import ServerThread
from standins.tls import TestCA


class AppInsightsStandIn(ServiceStandIn):
    """Accepts every envelope and keeps them (each one a dict)."""

    routes = frozenset({"track", "other"})

    def __init__(self) -> None:
        super().__init__()
        self._envelopes: list[dict[str, Any]] = []
        self._raw: list[str] = []
        self._guard = threading.Lock()

    def envelopes(self) -> list[dict[str, Any]]:
        with self._guard:
            return list(self._envelopes)

    def raw(self) -> str:
        with self._guard:
            return "\n".join(self._raw)

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v2.1/track", self.routed("track", self._track))
        app.router.add_post("/v2/track", self.routed("track", self._track))
        app.router.add_route("*", "/{tail:.*}", self.routed("other", self._other))
        return app

    async def _track(self, request: web.Request) -> web.Response:
        body = await request.read()
        if body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        text = body.decode("utf-8", "replace")
        items: list[dict[str, Any]] = []
        try:
            data = json.loads(text)
            items = data if isinstance(data, list) else [data]
        except json.JSONDecodeError:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        with self._guard:
            self._raw.append(text)
            self._envelopes.extend(items)
        return json_response({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []})

    async def _other(self, request: web.Request) -> web.Response:
        await request.read()
        return json_response({})


@pytest.fixture
def appinsights(test_ca: TestCA) -> Iterator[AppInsightsStandIn]:
    service = AppInsightsStandIn()
    server = ServerThread(test_ca.server_context())
    server.start([service])
    try:
        yield service
    finally:
        server.stop()


_exporter: InMemorySpanExporter | None = None


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The spans this test records. The tracer provider is process-wide and set once, and a processor cannot
    be taken off it again: one exporter serves every test, emptied before and after each. (A processor shut
    down after its test made every later span in the session log "Processor is already shutdown", which
    broke the tests that count the CLI's stderr lines when they ran after these.)"""
    global _exporter
    if _exporter is None:
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            provider = TracerProvider()
            trace.set_tracer_provider(provider)
        _exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
    _exporter.clear()
    yield _exporter
    _exporter.clear()
