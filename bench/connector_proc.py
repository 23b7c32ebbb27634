"""The connector, measured in a fresh process: the poller and the processor through the function
entry points of ``function_app.py``, the queue worked with host.json's concurrency.

CPU time and peak RSS are the process's own (``getrusage``: every thread, gzip included; the kernel's
high-water mark, ``VmHWM``); the stand-ins and Azurite run elsewhere. Storage transactions are counted twice:
by the connector's own counters (``StateStore.stats``, ``ContentQueue.sent``) and at the HTTP level
(:class:`RequestCounter`); the host's own queue calls (receive, delete) are counted in its process
(:mod:`bench.host_proc`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

from bench._child import cpu, entry, peak_rss_mb, use_connector_settings


class RequestCounter:
    """Counts every HTTP request the process's azure-core clients send (each retry too), by host:port: patched
    into ``AioHttpTransport.send``, which every async Azure client (tables, queues, ingestion, identity) goes
    through. The host's queue calls (receive, delete) are made in its own process and counted there."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def install(self) -> None:
        from azure.core.pipeline.transport import AioHttpTransport

        original = AioHttpTransport.send
        counts = self.counts

        async def send(transport: Any, request: Any, **kwargs: Any) -> Any:
            counts[urlsplit(request.url).netloc] += 1
            return await original(transport, request, **kwargs)

        AioHttpTransport.send = send


class RssSampler:
    """Samples this process's RSS (psutil) to report it over time, beside the kernel's high-water mark."""

    def __init__(self, interval: float = 0.05) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _functions() -> dict[str, Any]:
    from function_app import app

    return {str(f.get_function_name()): f.get_user_function() for f in app.get_functions()}


@entry
def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Child entry point. ``cfg``: env (settings), mode ("pipeline" or "message"), message (for "message")."""
    use_connector_settings(cfg["env"])

    functions = _functions()
    counter = RequestCounter()
    counter.install()
    import psutil

    rss_before = psutil.Process().memory_info().rss / 2**20
    with RssSampler() as sampler:
        if cfg.get("mode", "pipeline") == "pipeline":
            result = asyncio.run(_pipeline(functions))  # timed once the host is ready, as on Azure
        else:
            cpu0, wall0 = cpu(), time.perf_counter()
            messages = cfg["messages"] if cfg["mode"] == "messages" else [cfg["message"]]
            try:
                result = asyncio.run(_messages(functions, messages))
            except Exception as exc:  # reported with the memory it took to get there
                result = {"failed": f"{type(exc).__name__}: {exc}"[:400]}
            result["seconds"] = time.perf_counter() - wall0
            result["cpu_seconds"] = cpu() - cpu0
    result["peak_rss_mb"] = peak_rss_mb()
    result["sampled_peak_rss_mb"] = sampler.peak / 2**20
    result["rss_after_imports_mb"] = rss_before
    result["http_requests"] = requests_by_service(counter.counts, cfg["env"])
    return result


def requests_by_service(counts: Counter[str], env: dict[str, str]) -> dict[str, int]:
    """Requests per service: table, queue (the connector's own: puts, and the poller's depth and age reads),
    ingestion, identity."""
    names = {}
    for part in env["AzureWebJobsStorage"].split(";"):
        key, _, value = part.partition("=")
        if key in ("TableEndpoint", "QueueEndpoint", "BlobEndpoint"):
            names[urlsplit(value).netloc] = key.removesuffix("Endpoint").lower()
    names[urlsplit(env["LOGS_INGESTION_ENDPOINT"]).netloc] = "ingestion"
    out: Counter[str] = Counter()
    for host, count in counts.items():
        out[names.get(host, "identity")] += count
    return dict(out)


async def _pipeline(functions: dict[str, Any]) -> dict[str, Any]:
    """The poller (timer trigger) and the processor (queue trigger) in this process, as the Python worker runs
    them on Azure; the queue trigger's host part in a process of its own (:mod:`bench.host_proc`)."""
    import multiprocessing

    from azure.functions.timer import TimerRequest

    from bench import host_proc
    from irm_connector.runtime import close_runtimes, get_runtime
    from irm_connector.settings import Settings

    settings = Settings.from_env()
    poll_seconds = 0.0
    context = multiprocessing.get_context("spawn")
    here, there = context.Pipe()
    host = context.Process(target=host_proc.serve, args=(there, dict(os.environ)))
    host.start()
    there.close()  # the host's end is the host's: a host that dies ends the pipe, and the reader hears it
    ready, finished = host_proc.answer(here, functions, asyncio.get_running_loop())
    try:
        # On Azure the host runs before the first timer fires: its start-up (a process, its imports, about a
        # second here) timed as the connector's held back the first invocations and hid the listing's latency.
        await asyncio.wait_for(ready, timeout=120)
    except BaseException:
        host.kill()
        host.join(10)
        raise
    cpu0, wall0 = cpu(), time.perf_counter()

    async def poll() -> None:
        # As on Azure: the queue trigger takes each message as soon as the poller has queued it.
        nonlocal poll_seconds
        started = time.perf_counter()
        try:
            await functions["poller"](TimerRequest(past_due=False))  # the binding returns nothing
        finally:
            poll_seconds = time.perf_counter() - started
            with contextlib.suppress(OSError):  # a host that died: ``finished`` says so
                here.send(("poll-done",))

    try:
        _, (kind, host_result) = await asyncio.gather(poll(), finished)
        if kind != "done":
            raise RuntimeError(f"the host process failed:\n{host_result}")
        seconds, cpu_seconds = time.perf_counter() - wall0, cpu() - cpu0
        rt = await get_runtime(settings)
        out = {
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "poll_seconds": poll_seconds,
            "blobs_queued": rt.queue.sent,
            **host_result,
            "table_reads": rt.state.stats.reads,
            "table_writes": rt.state.stats.writes,
            "queue_puts": rt.queue.sent,
            "management": {"requests": rt.management.stats.requests, **rt.management.stats.by_operation},
            "ingestion": {
                "requests": rt.ingestor.stats.requests,
                "rows": rt.ingestor.stats.rows,
                "raw_bytes": rt.ingestor.stats.raw_bytes,
                "sent_bytes": rt.ingestor.stats.sent_bytes,
                "splits": rt.ingestor.stats.splits,
            },
        }
    finally:
        host.join(30)
        if host.is_alive():
            host.kill()
        await close_runtimes()
    return out


async def _messages(functions: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The processor entry point for these queue messages, all at once, as a worker runs the deliveries the
    host hands it side by side (the 50 MB blob alone; the burst of twelve 25 MB blobs)."""
    import azure.functions as func

    from irm_connector.content_queue import ContentMessage
    from irm_connector.models import ContentBlob, parse_api_time
    from irm_connector.runtime import close_runtimes, get_runtime
    from irm_connector.settings import Settings

    def queue_message(number: int, message: dict[str, Any]) -> func.QueueMessage:
        body = ContentMessage(
            tenant_id=os.environ["O365_TENANT_ID"],
            blob=ContentBlob(
                content_type=message["content_type"],
                content_id=message["content_id"],
                content_uri=message["content_uri"],
                content_created=parse_api_time(message["content_created"]),
                content_expiration=parse_api_time(message["content_expiration"]),
            ),
        ).encode()
        return func.queue.QueueMessage(id=f"m{number}", body=body.encode(), dequeue_count=1)  # type: ignore[no-untyped-call]

    try:
        # The bindings return nothing; the stand-in counts the rows.
        await asyncio.gather(*(functions["processor"](queue_message(n, m)) for n, m in enumerate(messages)))
        budget = (await get_runtime(Settings.from_env())).bodies
        held = {"bound_mb": budget.limit / 2**20, "peak_held_mb": budget.peak / 2**20}
    finally:
        await close_runtimes()
    return {"records": sum(m["records"] for m in messages), "bytes": sum(m["bytes"] for m in messages), **held}
