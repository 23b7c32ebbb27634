"""Runs stand-in aiohttp apps over HTTPS in one background thread with its own event loop.

Why a thread: the connector's tests (sync or async, any event loop) and the msal code
(blocking ``requests``) must all reach the servers; a loop owned by a daemon thread serves
them regardless of what the caller's loop is doing. Sockets are bound to port 0 before the
apps start, so each service knows its own base URL and no port race can happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import web

from standins.base import ServiceStandIn

T = TypeVar("T")

#: The ingestion stand-in enforces the 1 MiB limits itself; aiohttp's own limit (checked on
#: the inflated body) must be out of its way.
CLIENT_MAX_SIZE = 64 * 1024 * 1024


def bind_free_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _end_remaining_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel and await the tasks still on the stopped loop, as ``asyncio.run`` does.

    A handler still waiting when the servers stop (a scripted 60 s latency, a client that gave up)
    would otherwise stay pending on a closed loop, and the garbage collector would later log "Task was
    destroyed but it is pending!" into whatever test runs then.
    """
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.wait(tasks, timeout=5))
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved


class ServerThread:
    """An event loop in a daemon thread serving the given stand-ins over HTTPS."""

    def __init__(self, ssl_context: ssl.SSLContext, host: str = "127.0.0.1") -> None:
        self.ssl_context = ssl_context
        self.host = host
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, services: list[ServiceStandIn]) -> None:
        if self.running:
            raise RuntimeError("already running")
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            _end_remaining_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="standins-servers", daemon=True)
        self._thread.start()
        ready.wait()
        try:
            self.call(self._start_all(services))
        except BaseException:
            self.stop()
            raise

    async def _start_all(self, services: list[ServiceStandIn]) -> None:
        for service in services:
            sock = bind_free_socket(self.host)
            port = sock.getsockname()[1]
            service.base_url = f"https://{self.host}:{port}"
            app = service.build_app()
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            await runner.setup()
            site = web.SockSite(runner, sock, ssl_context=self.ssl_context)
            await site.start()
            self._runners.append(runner)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run a coroutine on the server loop from another thread and wait for its result."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._runners:
            with contextlib.suppress(Exception):
                self.call(self._stop_all(), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop = None
        self._thread = None

    async def _stop_all(self) -> None:
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()
