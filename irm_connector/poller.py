"""The poller: list what is new for each content type and queue one message per blob.

Per content type it takes a lease (so two pollers never list the same content type at once), plans
the windows from the watermark, lists each window to its last page, queues the blobs not queued before,
and only then moves the watermark to the window's end. It stops after ``POLL_TIME_BUDGET``; the next
tick continues from the watermark, so a 7-day catch-up never runs into the function timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from .content_queue import ContentMessage
from .errors import (
    ConnectorError,
    InvalidPageError,
    InvalidWindowError,
    LeaseLostError,
    PollError,
    StateError,
    SubscriptionMissingError,
    UntrustedUrlError,
)
from .health import write_health
from .models import ContentBlob, ContentTypeReport, PollReport
from .redaction import redact
from .runtime import Runtime
from .state import PollerState, SeenPartitions
from .telemetry import producer_span, traceparent
from .windows import Window, plan_windows

__all__ = ["list_window", "run_poller"]

log = logging.getLogger(__name__)

#: Leave this between subscription starts, as the API asks.
SUBSCRIPTION_START_INTERVAL = timedelta(minutes=15)
_ENQUEUE_CONCURRENCY = 16


async def run_poller(rt: Runtime, *, now: datetime | None = None, budget: timedelta | None = None) -> PollReport:
    """One poller run over every configured content type. Raises :class:`PollError` at the end if a
    content type failed, after the others had their turn."""
    settings = rt.settings
    started = time.monotonic()
    deadline = started + (budget or settings.poll_time_budget).total_seconds()
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    report = PollReport()
    try:
        dropped = await rt.state.drop_expired_tables(now or datetime.now(UTC))
        if dropped:
            log.info("Dropped %d expired dedupe tables", len(dropped))
    except StateError as exc:
        log.warning("Could not drop expired dedupe tables (tried again next run): %s", exc)

    for content_type in settings.content_types:
        ct_report = ContentTypeReport(content_type)
        report.content_types.append(ct_report)
        try:
            await _poll_content_type(rt, content_type, owner, deadline, ct_report, now)
        except ConnectorError as exc:
            ct_report.error = redact(str(exc))  # it reaches the health row and the PollError, outside the log filter
            log.error("Polling %s failed: %s", content_type, exc, extra={"content_type": content_type})
        await write_health(rt, ct_report)
    if report.errors:
        raise PollError("poller run failed for " + "; ".join(report.errors), report)
    return report


async def _poll_content_type(
    rt: Runtime, content_type: str, owner: str, deadline: float, report: ContentTypeReport, fixed_now: datetime | None
) -> None:
    settings = rt.settings
    dims = {"content_type": content_type, "tenant_id": settings.tenant_id}
    now = fixed_now or datetime.now(UTC)
    state = await rt.state.watermarks.get_state(settings.tenant_id, content_type)
    if state.leased_by_other(owner, now):
        report.skipped = f"another poller holds the lease until {state.lease_until}"
        report.watermark = state.watermark
        log.info("Skipping %s: %s", content_type, report.skipped, extra=dims)
        return
    # A run may overrun its budget by one window's listing; the lease covers twice the budget and is
    # renewed with every watermark write, so a crashed poller blocks its content type only briefly.
    lease_span = 2 * timedelta(seconds=max(5.0, deadline - time.monotonic()))
    try:
        state = await rt.state.watermarks.upsert_state(replace(state, lease_owner=owner, lease_until=now + lease_span))
    except LeaseLostError:
        report.skipped = "another poller took the lease first"
        return

    plan = plan_windows(
        watermark=state.watermark,
        now=now,
        overlap=settings.listing_overlap,
        initial_lookback=settings.initial_lookback,
    )
    if plan.unreachable is not None:
        log.error(
            "Content created in %s can no longer be listed: the API keeps 7 days and the connector was behind "
            "by more. Those blobs are lost to the API.",
            plan.unreachable,
            extra=dims,
        )
    seen: SeenPartitions = {}
    error = ""
    try:
        for window in plan.windows:
            if time.monotonic() >= deadline:
                log.info("Time budget used; %s continues from %s next run", content_type, window.start, extra=dims)
                break
            try:
                await list_window(rt, content_type, window, now, seen, report)
            except SubscriptionMissingError:
                state, report.subscription = await _start_subscription(rt, state, now, dims)
                if report.subscription == "waiting":
                    break
                await list_window(rt, content_type, window, now, seen, report)
            state = await rt.state.watermarks.upsert_state(
                replace(state, watermark=window.end, lease_until=datetime.now(UTC) + lease_span)
            )
            report.windows_listed += 1
        else:
            report.finished = True
    except SubscriptionMissingError as exc:
        error = redact(str(exc))  # last_error is kept in the state table and shown by `status`
        log.warning("%s still has no subscription after starting one; tried again next run", content_type, extra=dims)
    except InvalidWindowError as exc:
        error = redact(str(exc))
        log.warning("Window refused for %s; re-planned next run: %s", content_type, exc, extra=dims)
    except ConnectorError as exc:
        error = redact(str(exc))
        raise
    finally:
        report.watermark = state.watermark
        try:
            await rt.state.watermarks.upsert_state(
                replace(
                    state,
                    lease_owner="",
                    lease_until=None,
                    last_run=now,
                    last_error=error,
                    last_error_at=now if error else state.last_error_at,
                )
            )
        except StateError as exc:
            log.warning("Could not release the lease of %s (it expires by itself): %s", content_type, exc, extra=dims)


async def list_window(
    rt: Runtime,
    content_type: str,
    window: Window,
    now: datetime,
    seen: SeenPartitions,
    report: ContentTypeReport,
    on_page: Callable[[], None] | None = None,
) -> None:
    """List ``window`` to its last page, queuing as it goes; a refused NextPageUri restarts it once."""
    for attempt in (1, 2):
        try:
            async for page in rt.management.list_content(content_type, window):
                await _queue_page(rt, content_type, page, now, seen, report)
                if on_page is not None:
                    on_page()
            return
        except InvalidPageError:
            if attempt == 2:
                raise
            log.warning("NextPageUri refused; listing %s again from its start", window)


async def _queue_page(
    rt: Runtime,
    content_type: str,
    page: list[ContentBlob],
    now: datetime,
    seen: SeenPartitions,
    report: ContentTypeReport,
) -> None:
    settings = rt.settings
    dims = {"content_type": content_type, "tenant_id": settings.tenant_id}
    fresh: list[ContentBlob] = []
    report.blobs_listed += len(page)
    for blob in page:
        try:
            rt.management.check_url(blob.content_uri, "contentUri")
        except UntrustedUrlError as exc:
            report.blobs_refused += 1
            log.error("Listed blob %s refused: %s", blob.content_id, exc, extra=dims)
            continue
        if blob.content_expiration <= now:
            report.blobs_expired += 1
            log.warning(
                "Blob %s expired at %s before it could be queued; its records are lost to the API",
                blob.content_id,
                blob.content_expiration.isoformat(),
                extra=dims,
            )
            continue
        if await rt.state.queued_blobs.is_queued(content_type, blob, seen):
            report.blobs_already_queued += 1
            continue
        fresh.append(blob)
    if not fresh:
        return
    gate = asyncio.Semaphore(_ENQUEUE_CONCURRENCY)

    async def put(blob: ContentBlob) -> None:
        async with gate:
            # One trace per blob: the processor that takes the message continues it (traceparent).
            attributes = {**dims, "content_id": blob.content_id}
            with producer_span("irm.queue_blob", attributes):
                await rt.queue.put(ContentMessage(settings.tenant_id, blob, traceparent()))

    await asyncio.gather(*(put(b) for b in fresh))
    await rt.state.queued_blobs.mark_queued(content_type, fresh, seen)
    report.blobs_queued += len(fresh)


async def _start_subscription(
    rt: Runtime, state: PollerState, now: datetime, dims: dict[str, str]
) -> tuple[PollerState, str]:
    content_type = state.content_type
    if state.subscription_started and now - state.subscription_started < SUBSCRIPTION_START_INTERVAL:
        log.info(
            "No subscription for %s yet; started at %s, waiting", content_type, state.subscription_started, extra=dims
        )
        return state, "waiting"
    status = await rt.management.start_subscription(content_type)
    log.warning(
        "Started the subscription for %s (status %s). The first content can take up to 12 hours to appear.",
        content_type,
        status,
        extra=dims,
    )
    state = await rt.state.watermarks.upsert_state(replace(state, subscription_started=now))
    return state, status
