"""The stand-ins' server thread: stopping it leaves nothing behind to disturb a later test."""

from __future__ import annotations

import asyncio
import gc
import logging

import aiohttp
import pytest
from aiohttp import web

from standins.server import ServerThread


class _Slow:
    """A service whose one handler outlives any client's patience."""

    base_url = ""

    def build_app(self) -> web.Application:
        async def slow(_request: web.Request) -> web.Response:
            await asyncio.sleep(60)
            return web.Response(text="late")

        app = web.Application()
        app.router.add_get("/", slow)
        return app


async def test_stop_ends_handlers_still_waiting(caplog: pytest.LogCaptureFixture) -> None:
    """A handler still sleeping when the servers stop used to stay a pending task; when the garbage
    collector found it later, asyncio logged "Task was destroyed but it is pending!" into whichever
    test ran then (once into a CLI test's one-line stderr)."""
    service = _Slow()
    servers = ServerThread(None)  # type: ignore[arg-type]  # plain HTTP is enough here
    servers.start([service])  # type: ignore[list-item]
    url = service.base_url.replace("https://", "http://")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            await session.get(url, timeout=aiohttp.ClientTimeout(total=0.5))

    caplog.set_level(logging.ERROR, logger="asyncio")
    servers.stop()
    gc.collect()

    assert not servers.running
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
