"""The Functions host's part, in a process of its own: receiving queue messages, invoking the processor, then
deleting the message (or making it visible again, or moving it to the poison queue).

On Azure the host is a .NET process and the Python worker gets each invocation over gRPC: the queue calls
around an invocation are not the connector's CPU. So the benchmark runs the host's imitation here and sends
each invocation to the connector's process over a pipe; the connector's figures are its own.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import traceback
from multiprocessing.connection import Connection
from typing import Any

from bench._child import cpu


def serve(conn: Connection, env: dict[str, str]) -> None:
    """Process entry point: work the content queue, invoking the connector through ``conn``."""
    try:
        asyncio.run(_serve(conn, env))
    except BaseException:
        conn.send(("failed", traceback.format_exc()))


async def _serve(conn: Connection, env: dict[str, str]) -> None:
    from azure.functions import QueueMessage

    from bench.connector_proc import RequestCounter
    from irm_connector._tls import azure_session
    from irm_connector.cli.queue_trigger import HostQueueOptions, QueueWorker
    from irm_connector.content_queue import create_queue_if_missing
    from irm_connector.runtime import storage_clients
    from irm_connector.settings import Settings
    from standins.environment import drop_foreign_settings

    drop_foreign_settings(os.environ)
    os.environ.update(env)
    counter = RequestCounter()
    counter.install()
    settings = Settings.from_env()
    loop = asyncio.get_running_loop()
    replies: dict[int, asyncio.Future[str | None]] = {}
    poll_done = asyncio.Event()
    numbers = itertools.count()

    def read() -> None:  # the pipe's answers, in a thread: resolved on the loop
        while True:
            kind, *rest = conn.recv()
            if kind == "reply":
                number, error = rest
                loop.call_soon_threadsafe(replies.pop(number).set_result, error)
            elif kind == "poll-done":
                loop.call_soon_threadsafe(poll_done.set)
            elif kind == "stop":
                return

    async def invoke(message: QueueMessage) -> None:
        number = next(numbers)
        replies[number] = loop.create_future()
        conn.send(("invoke", number, message.get_body(), message.dequeue_count, message.id))
        error = await replies[number]
        if error is not None:
            raise RuntimeError(error)  # the host retries the message, as for any failed invocation

    threading.Thread(target=read, daemon=True).start()
    async with azure_session() as session:
        tables, main, poison = storage_clients(settings.storage, settings, [], session)
        await tables.close()
        cpu0 = cpu()
        async with main, poison:
            await create_queue_if_missing(main)
            options = HostQueueOptions.from_environment()
            conn.send(("ready",))
            stats = await QueueWorker(main, poison, invoke, options).run(until_empty=poll_done)
    conn.send((
        "done",
        {
            "processed": stats.processed,
            "failed_attempts": stats.failed_attempts,
            "poisoned": stats.poisoned,
            "concurrency": options.concurrency,
            "host_cpu_seconds": cpu() - cpu0,
            "host_queue_requests": sum(counter.counts.values()),
        },
    ))


def answer(
    conn: Connection, functions: dict[str, Any], loop: asyncio.AbstractEventLoop
) -> tuple[asyncio.Future[None], asyncio.Future[Any]]:
    """In the connector's process: run each invocation the host sends, and answer it. Returns two futures: the
    host is ready (its queue there, about to receive), and the host's summary when it is done (``("failed",
    text)`` if it ended without one). The pipe is read in a thread; the invocations run on ``loop``."""
    import azure.functions as func

    ready: asyncio.Future[None] = loop.create_future()
    finished: asyncio.Future[Any] = loop.create_future()
    running: set[asyncio.Task[None]] = set()

    def start(args: list[Any]) -> None:
        task = loop.create_task(run(*args))
        running.add(task)
        task.add_done_callback(running.discard)

    async def run(number: int, body: bytes, dequeue_count: int, message_id: str) -> None:
        message = func.queue.QueueMessage(id=message_id, body=body, dequeue_count=dequeue_count)  # type: ignore[no-untyped-call]
        try:
            await functions["processor"](message)
        except Exception as exc:  # the host sees the failure; the message comes back
            conn.send(("reply", number, f"{type(exc).__name__}: {exc}"[:300]))
        else:
            conn.send(("reply", number, None))

    def settle(kind: str, *rest: Any) -> None:
        if not ready.done():  # a host that failed before it was ready: said through ``ready`` too
            ready.set_exception(RuntimeError(f"the host process failed:\n{rest[0] if rest else kind}"))
        if not finished.done():
            finished.set_result((kind, *rest))

    def ready_now() -> None:
        if not ready.done():  # given up on meanwhile (the wait timed out)
            ready.set_result(None)

    def call(callback: Any, *args: Any) -> bool:
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: the run ended (or gave up) without this
            return False
        return True

    def read() -> None:
        while True:
            try:
                kind, *rest = conn.recv()
            except (EOFError, OSError):  # the host died without a word (killed, out of memory): not a wait for ever
                call(settle, "failed", "the host process ended without an answer")
                return
            if kind == "invoke":
                done = not call(start, rest)
            elif kind == "ready":
                done = not call(ready_now)
            else:
                call(settle, kind, *rest)
                done = True
            if done:
                return

    threading.Thread(target=read, daemon=True).start()
    return ready, finished
