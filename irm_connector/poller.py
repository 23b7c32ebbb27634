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
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial

import orjson

from . import __version__
from .content_queue import ContentMessage
from .errors import (
    ConnectorError,
    IngestionError,
    InvalidPage,
    InvalidWindow,
    OperatorActionRequired,
    StateError,
    SubscriptionMissing,
    UntrustedUrlError,
)
from .management_api import ContentBlob
from .normalize import Row
from .runtime import Runtime
from .state import LeaseLost, PollerState
from .telemetry import producer_span, traceparent
from .windows import MAX_WINDOW, RETENTION, RETENTION_MARGIN, Window, plan_windows

__all__ = ["BackfillProgress", "ContentTypeReport", "PollFailed", "PollReport", "backfill", "run_poller"]

log = logging.getLogger(__name__)

#: Leave this between subscription starts, as the API asks.
SUBSCRIPTION_START_INTERVAL = timedelta(minutes=15)
_ENQUEUE_CONCURRENCY = 16


@dataclass
class ContentTypeReport:
    content_type: str
    windows_listed: int = 0
    blobs_listed: int = 0
    blobs_queued: int = 0
    blobs_already_queued: int = 0
    blobs_expired: int = 0
    blobs_refused: int = 0
    watermark: datetime | None = None
    skipped: str = ""
    error: str = ""
    subscription: str = ""
    finished: bool = False


@dataclass
class PollReport:
    content_types: list[ContentTypeReport] = field(default_factory=list)

    @property
    def blobs_queued(self) -> int:
        return sum(r.blobs_queued for r in self.content_types)

    @property
    def errors(self) -> list[str]:
        return [f"{r.content_type}: {r.error}" for r in self.content_types if r.error]


class PollFailed(ConnectorError):
    """A poller run in which a content type failed; ``report`` holds what every content type did."""

    def __init__(self, message: str, report: PollReport) -> None:
        super().__init__(message)
        self.report = report


async def run_poller(rt: Runtime, *, now: datetime | None = None, budget: timedelta | None = None) -> PollReport:
    """One poller run over every configured content type. Raises :class:`ConnectorError` at the end if a
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
        except (OperatorActionRequired, StateError, ConnectorError) as exc:
            ct_report.error = str(exc)
            log.error("Polling %s failed: %s", content_type, exc, extra={"content_type": content_type})
        await _write_health(rt, ct_report)
    if report.errors:
        raise PollFailed("poller run failed for " + "; ".join(report.errors), report)
    return report


async def _poll_content_type(
    rt: Runtime, content_type: str, owner: str, deadline: float, report: ContentTypeReport, fixed_now: datetime | None
) -> None:
    settings = rt.settings
    dims = {"content_type": content_type, "tenant_id": settings.tenant_id}
    now = fixed_now or datetime.now(UTC)
    state = await rt.state.get_poller_state(settings.tenant_id, content_type)
    if state.leased_by_other(owner, now):
        report.skipped = f"another poller holds the lease until {state.lease_until}"
        report.watermark = state.watermark
        log.info("Skipping %s: %s", content_type, report.skipped, extra=dims)
        return
    # A run may overrun its budget by one window's listing; the lease covers twice the budget and is
    # renewed with every watermark write, so a crashed poller blocks its content type only briefly.
    lease_span = 2 * timedelta(seconds=max(5.0, deadline - time.monotonic()))
    try:
        state = await rt.state.save_poller_state(replace(state, lease_owner=owner, lease_until=now + lease_span))
    except LeaseLost:
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
    cache: dict[tuple[str, str], set[str]] = {}
    error = ""
    try:
        for window in plan.windows:
            if time.monotonic() >= deadline:
                log.info("Time budget used; %s continues from %s next run", content_type, window.start, extra=dims)
                break
            try:
                await _list_window(rt, content_type, window, now, cache, report)
            except SubscriptionMissing:
                state, report.subscription = await _start_subscription(rt, state, now, dims)
                if report.subscription == "waiting":
                    break
                await _list_window(rt, content_type, window, now, cache, report)
            state = await rt.state.save_poller_state(
                replace(state, watermark=window.end, lease_until=datetime.now(UTC) + lease_span)
            )
            report.windows_listed += 1
        else:
            report.finished = True
    except SubscriptionMissing as exc:
        error = str(exc)
        log.warning("%s still has no subscription after starting one; tried again next run", content_type, extra=dims)
    except InvalidWindow as exc:
        error = str(exc)
        log.warning("Window refused for %s; re-planned next run: %s", content_type, exc, extra=dims)
    except ConnectorError as exc:
        error = str(exc)
        raise
    finally:
        report.watermark = state.watermark
        try:
            await rt.state.save_poller_state(
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


async def _list_window(
    rt: Runtime,
    content_type: str,
    window: Window,
    now: datetime,
    cache: dict[tuple[str, str], set[str]],
    report: ContentTypeReport,
    on_page: Callable[[], None] | None = None,
) -> None:
    """List ``window`` to its last page, queuing as it goes; a refused NextPageUri restarts it once."""
    for attempt in (1, 2):
        try:
            async for page in rt.management.list_content(content_type, window):
                await _queue_page(rt, content_type, page, now, cache, report)
                if on_page is not None:
                    on_page()
            return
        except InvalidPage:
            if attempt == 2:
                raise
            log.warning("NextPageUri refused; listing %s again from its start", window)


async def _queue_page(
    rt: Runtime,
    content_type: str,
    page: list[ContentBlob],
    now: datetime,
    cache: dict[tuple[str, str], set[str]],
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
        if await rt.state.is_queued(content_type, blob, cache):
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
    await rt.state.mark_blobs_queued(content_type, fresh, cache)
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
    state = await rt.state.save_poller_state(replace(state, subscription_started=now))
    return state, status


async def _write_health(rt: Runtime, report: ContentTypeReport) -> None:
    """One health row per run and content type, through the same ingestion path, so Sentinel itself can
    tell when the connector goes quiet. A failure here never fails the run."""
    settings = rt.settings
    if not settings.health_stream:
        return
    now = datetime.now(UTC)
    row = {
        "TimeGenerated": now.isoformat().replace("+00:00", "Z"),
        "O365TenantId": settings.tenant_id,
        "ContentType": report.content_type,
        "Watermark": report.watermark.isoformat().replace("+00:00", "Z") if report.watermark else None,
        "LagSeconds": int((now - report.watermark).total_seconds()) if report.watermark else None,
        "BlobsListed": report.blobs_listed,
        "BlobsQueued": report.blobs_queued,
        "BlobsExpired": report.blobs_expired,
        "Errors": 1 if report.error else 0,
        "LastError": report.error[:1000],
        "SubscriptionStatus": report.subscription or ("skipped" if report.skipped else "enabled"),
        "ConnectorVersion": __version__,
    }
    try:
        await rt.ingestor.upload(settings.health_stream, [Row("", "", orjson.dumps(row))])
    except IngestionError as exc:
        log.warning("Could not write the health row for %s: %s", report.content_type, exc)


#: Called after each page and each window of a backfill: (the content type's report, windows planned).
BackfillProgress = Callable[[ContentTypeReport, int], None]


def plan_backfill(start: datetime, end: datetime, now: datetime) -> tuple[Window, ...]:
    """The windows of a backfill over ``[start, end)``: at most 24 hours each, inside the API's 7 days.

    A start up to 7 days back is moved inside the retention margin; raises :class:`ValueError` when the range
    is empty or starts more than 7 days back (that content can no longer be listed)."""
    start, end, now = start.astimezone(UTC), end.astimezone(UTC), now.astimezone(UTC)
    if start < now - RETENTION - timedelta(minutes=5):  # a little slack for --since 7d
        raise ValueError(
            f"start {start:%Y-%m-%dT%H:%M:%SZ} is more than 7 days back: the API keeps content for 7 days only"
        )
    end = min(end, now).replace(microsecond=0)
    earliest = (now - RETENTION + RETENTION_MARGIN).replace(microsecond=0) + timedelta(seconds=1)
    start = max(start.replace(microsecond=0), earliest)
    if end <= start:
        raise ValueError("the range is empty: --end must be after --start (and not in the future)")
    windows: list[Window] = []
    while start < end:
        stop = min(start + MAX_WINDOW, end)
        windows.append(Window(start, stop))
        start = stop
    return tuple(windows)


async def backfill(
    rt: Runtime,
    start: datetime,
    end: datetime,
    *,
    content_types: tuple[str, ...] | None = None,
    now: datetime | None = None,
    on_progress: BackfillProgress | None = None,
) -> PollReport:
    """List ``[start, end)`` again and queue the blobs not queued before, without touching the watermark or
    the lease: the live poller goes on as it was. Raises :class:`ValueError` for a range the API cannot
    list, :class:`PollFailed` (with the report) when a content type failed."""
    moment = now or datetime.now(UTC)
    windows = plan_backfill(start, end, moment)
    report = PollReport()
    for content_type in content_types or rt.settings.content_types:
        ct_report = ContentTypeReport(content_type)
        report.content_types.append(ct_report)
        cache: dict[tuple[str, str], set[str]] = {}
        dims = {"content_type": content_type, "tenant_id": rt.settings.tenant_id}
        try:
            progress = partial(on_progress, ct_report, len(windows)) if on_progress is not None else None
            for window in windows:
                await _list_window(rt, content_type, window, moment, cache, ct_report, progress)
                ct_report.windows_listed += 1
                if on_progress is not None:
                    on_progress(ct_report, len(windows))
            ct_report.finished = True
        except SubscriptionMissing as exc:
            ct_report.error = f"{exc} - start it with `irm-connector subscriptions start {content_type}`"
        except (OperatorActionRequired, StateError, ConnectorError) as exc:
            ct_report.error = str(exc)
        if ct_report.error:
            log.error("Backfill of %s failed: %s", content_type, ct_report.error, extra=dims)
        else:
            log.info(
                "Backfill of %s: %d windows, %d blobs listed, %d queued, %d already queued",
                content_type,
                ct_report.windows_listed,
                ct_report.blobs_listed,
                ct_report.blobs_queued,
                ct_report.blobs_already_queued,
                extra=dims,
            )
    if report.errors:
        raise PollFailed("backfill failed for " + "; ".join(report.errors), report)
    return report
