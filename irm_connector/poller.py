"""The poller: list what is new for each content type and queue one message per blob.

Every configured content type is polled in every run, side by side. Per content type it takes a lease
(:mod:`.lease`: two pollers never list the same content type at once, and a dead poller's lease runs out
within 40 s), plans the windows from the watermark, lists each window to its last page, queues the blobs
not queued before, and only then moves the watermark to the window's end. It stops after
``POLL_TIME_BUDGET``; the next tick continues from the watermark, so a 7-day catch-up never runs into the
function timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial

from .api_answers import MAX_RETRY_AFTER
from .content_queue import ContentMessage
from .deadline import Deadline, carried_after, carried_through, cleaning_up, current_deadline
from .errors import (
    ConnectorError,
    InvalidPageError,
    InvalidWindowError,
    OperatorActionError,
    PollError,
    RefusedListingError,
    StateError,
    SubscriptionMissingError,
    TransientApiError,
    UntrustedUrlError,
    management_api_error,
)
from .health import write_health
from .lease import PollerLease
from .models import ContentBlob, ContentTypeReport, PollReport, utc_text
from .redaction import redact
from .runtime import Runtime
from .state import SeenPartitions
from .telemetry import producer_span, traceparent
from .windows import MAX_WINDOW, MIN_WINDOW, RETENTION_MARGIN, Window, grown_window, plan_windows, shrunk_window

__all__ = ["list_window", "run_poller", "warn_clock_off"]

log = logging.getLogger(__name__)

#: Leave this between subscription starts, as the API asks.
SUBSCRIPTION_START_INTERVAL = timedelta(minutes=15)
#: And this once an administrator's setting refused a start (AF20023).
REFUSED_START_INTERVAL = timedelta(hours=1)
#: A window's end this far past the Management API's clock is worth a warning (below it, ordinary skew).
CLOCK_WARNING_SECONDS = 60
_ENQUEUE_CONCURRENCY = 16


async def run_poller(rt: Runtime, *, now: datetime | None = None, budget: timedelta | None = None) -> PollReport:
    """One poller run over every configured content type. Raises :class:`PollError` at the end if a
    content type failed, after the others had their turn."""
    settings = rt.settings
    started = time.monotonic()
    deadline = started + (budget or settings.poll_time_budget).total_seconds()
    # The budget ends listing between windows (a window that would outlast the invocation stops at a page's end);
    # the invocation's timeout bounds every retry and storage call.
    limit = Deadline.for_invocation(then="the next run lists from the watermark")
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    report = PollReport([ContentTypeReport(content_type) for content_type in settings.content_types])
    with limit.applied():
        try:
            dropped = await rt.state.drop_expired_tables(now or datetime.now(UTC))
            if dropped:
                log.info("Dropped %d expired dedupe tables", len(dropped))
        except StateError as exc:
            log.warning("Could not drop expired dedupe tables (tried again next run): %s", exc)
        except Exception:
            # Logged here as a content type's is below: a caller (the host, `run`) can then take every unexpected
            # fault out of a run as told, its traceback once.
            log.exception("Dropping expired dedupe tables failed unexpectedly")
            raise

        # Every content type is polled in every run, side by side, each with the whole budget: one catching up
        # over days cannot starve the others (Audit.General carries the alerts). They share the request budget.
        causes: dict[str, ConnectorError] = {}
        # A fault of the connector's own in one content type waits for the others too: raised at once, it would end
        # the invocation with them still listing and queueing on the worker, outside it.
        # Throttling is counted per tenant: a Retry-After recorded for one content type holds the others back too.
        # (Unreadable state: each content type's own read below says so.)
        try:
            paused = await recorded_pause(rt, settings.content_types)
        except StateError:
            paused = None
        outcomes = await asyncio.gather(*(_poll_and_report(rt, r, owner, deadline, now, limit, causes, paused)
                                          for r in report.content_types), return_exceptions=True)  # fmt: skip
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    if report.errors:
        raise PollError("poller run failed for " + "; ".join(report.errors), report, causes)
    return report


async def _poll_and_report(
    rt: Runtime,
    report: ContentTypeReport,
    owner: str,
    deadline: float,
    now: datetime | None,
    limit: Deadline,
    causes: dict[str, ConnectorError],
    paused: datetime | None,
) -> None:
    content_type = report.content_type
    try:
        await _poll_content_type(rt, content_type, owner, deadline, report, now, limit, paused)
    except ConnectorError as exc:
        causes[content_type] = exc
        # It reaches the health row and the PollError, outside the log filter.
        report.error = _after_loss(report, redact(str(exc)))
        log.error("Polling %s failed: %s", content_type, exc, extra={"content_type": content_type})
    except Exception as exc:
        # A fault of the connector's own: its health row says the run failed, and the traceback is logged here. As
        # deployed (OpenTelemetry on in the worker) the host sends Application Insights no line of its own for it.
        report.error = _after_loss(report, f"unexpected {type(exc).__name__} (the log has its traceback)")
        log.exception("Polling %s failed unexpectedly", content_type, extra={"content_type": content_type})
        await _write_health(rt, report)
        raise
    await _write_health(rt, report)


async def _write_health(rt: Runtime, report: ContentTypeReport) -> None:
    if report.error and report.watermark is None:  # the state could not be read: what this process last knew of it
        report.watermark = rt.state.watermarks.known_watermark(rt.settings.tenant_id, report.content_type)
    # In the margin kept for the way out (the run's deadline is the context's): a run that used its time up (an API
    # that hangs) must still say why it failed, or the rules on the health rows have nothing to fire on.
    with cleaning_up():
        await write_health(rt, report, deadline=current_deadline())


async def _poll_content_type(
    rt: Runtime,
    content_type: str,
    owner: str,
    deadline: float,
    report: ContentTypeReport,
    fixed_now: datetime | None,
    limit: Deadline,
    paused: datetime | None = None,
) -> None:
    settings = rt.settings
    dims = {"content_type": content_type, "tenant_id": settings.tenant_id}
    now = fixed_now or datetime.now(UTC)
    lease = await PollerLease.take(rt.state.watermarks, settings.tenant_id, content_type, owner)
    if isinstance(lease, str):
        report.skipped = lease
        report.watermark = (await rt.state.watermarks.get_state(settings.tenant_id, content_type)).watermark
        log.info("Skipping %s: %s", content_type, report.skipped, extra=dims)
        return
    taken = (lease.state.written_at, time.monotonic())  # the storage service's time of the take's write
    if (until := max(filter(None, (lease.state.throttled(), paused)), default=None)) is not None:
        # Asked again before then, the API throttles again (and may count the request against the tenant).
        when = utc_text(until, timespec="seconds")
        report.skipped = f"the Management API asked for no requests until {when} (Retry-After)"
        report.watermark = lease.state.watermark
        log.info("Skipping %s: %s", content_type, report.skipped, extra=dims)
        await lease.release(last_run=now)
        return

    error: str | None = None  # stays None when the run is cancelled: it has no outcome to record
    throttled_until = None
    try:
        storage_clock = (lambda: fixed_now) if fixed_now else partial(_storage_time, *taken)
        await lease.run(_list_windows(rt, lease, deadline, report, (now, storage_clock), dims, limit))
        error = report.error  # a stretch the API no longer lists, when there was one
    except SubscriptionMissingError as exc:
        error = _after_loss(report, redact(str(exc)))  # last_error is kept in the state table and shown by `status`
        # Nothing of the content type is listed while it lasts: the health row (Errors, LastError) says so.
        report.error = error
        log.warning("%s still has no subscription after starting one; tried again next run", content_type, extra=dims)
    except InvalidWindowError as exc:
        error = _after_loss(report, redact(str(exc)))
        # The run failed for this content type: the health row (Errors, LastError) and the invocation say so, so
        # a refusal that comes back every run (a clock off by more than the planner's margins) is seen.
        report.error = error
        log.warning("Window refused for %s; re-planned next run: %s", content_type, exc, extra=dims)
    except ConnectorError as exc:
        error = _after_loss(report, redact(str(exc)))
        if isinstance(exc, OperatorActionError) and exc.code == "AF20023":
            report.subscription = "disabled"
        if isinstance(exc, TransientApiError) and exc.retry_after is not None:
            throttled_until = _storage_time(*taken) + min(timedelta(seconds=exc.retry_after), MAX_RETRY_AFTER)
        raise
    except Exception as exc:
        # A fault of the connector's own (logged with its traceback by the caller); `status` shows the run failed.
        error = _after_loss(report, f"unexpected {type(exc).__name__} (the log has its traceback)")
        raise
    finally:
        report.watermark = lease.state.watermark
        if error is None:
            # Cancelled (Ctrl-C, the host shutting down): the last run's time and error stay what they were; cleared,
            # a failing setup would read healthy in `status` until the next run.
            await lease.release()
        else:
            await lease.release(last_run=now, last_error=error,
                                last_error_at=now if error else lease.state.last_error_at,
                                throttled_until=throttled_until)  # fmt: skip


async def recorded_pause(rt: Runtime, content_types: tuple[str, ...]) -> datetime | None:
    """The latest Retry-After the poller recorded for any of ``content_types``, if still ahead (by the storage
    service's time). The API throttles per tenant: judged per content type, the others went on asking inside the
    wait, each throttled again."""
    tenant = rt.settings.tenant_id
    states = await asyncio.gather(*(rt.state.watermarks.get_state(tenant, ct) for ct in dict.fromkeys(content_types)))
    return max(filter(None, (state.throttled() for state in states)), default=None)


def _after_loss(report: ContentTypeReport, error: str) -> str:
    """The run's error, after the stretch it found lost to the API's 7 days if it did (``report.error`` holds it
    until then). Told alone, the later error hid the loss from the health row, its rule and `status`; and the next
    run, past the edge by then, has no loss to tell."""
    return f"{report.error}; then: {error}" if report.error else error


def _storage_time(written: datetime | None, at: float) -> datetime:
    """The storage service's time now, from its time ``written`` at this process's monotonic ``at``: the next
    run judges the throttling by that clock (:meth:`PollerState.throttled`), whatever this machine's says."""
    if written is None:  # a write answered without a Date: no storage service does that
        return datetime.now(UTC)
    return written + timedelta(seconds=time.monotonic() - at)


async def _list_windows(
    rt: Runtime,
    lease: PollerLease,
    deadline: float,
    report: ContentTypeReport,
    clocks: tuple[datetime, Callable[[], datetime]],
    dims: dict[str, str],
    limit: Deadline,
) -> None:
    """List the planned windows in order, moving the watermark after each, until the budget is used.
    ``clocks``: this machine's time, and the storage service's clock (which places the API's 7-day edge)."""
    content_type = lease.state.content_type
    now, storage_clock = clocks
    service_now = storage_clock()
    # Windows ending at this machine's time would hold every blob back by as much, and the lag would not show it.
    warn_clock_off(service_now - now, "behind the storage service's", "the windows end at the service's time",
                    service_now, dims)  # fmt: skip
    budget = deadline - time.monotonic()
    # Within the planner's bounds whatever the state says: a WindowSeconds edited to 1 planned windows that never
    # moved on (the loop held the worker), one of two days a window the API may answer in part.
    longest = (min(MAX_WINDOW, max(MIN_WINDOW, timedelta(seconds=lease.state.window_seconds)))
               if lease.state.window_seconds > 0 else MAX_WINDOW)  # fmt: skip
    plan = plan_windows(
        watermark=lease.state.watermark,
        now=max(now, service_now),  # a clock running fast is held to the API's time at the watermark instead
        service_now=service_now,
        overlap=rt.settings.listing_overlap,
        initial_lookback=rt.settings.initial_lookback,
        first_start=lease.state.first_start,
        max_window=longest,
    )
    if plan.unreachable is not None:
        lost = (
            f"content created in {plan.unreachable} can no longer be listed: the API keeps 7 days and the connector "
            f"was behind by more (it lists from {RETENTION_MARGIN // timedelta(minutes=1)} minutes inside them, so "
            "that clock skew never takes a start over the edge); those blobs are lost to the API"
        )
        log.error("%s%s.", lost[0].upper(), lost[1:], extra=dims)
        # The run goes on with what the API keeps, and fails once it has: the health row (Errors, LastError) and
        # `status` name the stretch lost, which a log line alone left for someone to search for.
        report.error = lost
    if plan.rewound is not None:
        await lease.write(watermark=plan.rewound)
    if lease.state.watermark is None and plan.windows and plan.windows[0].start != lease.state.first_start:
        await lease.write(first_start=plan.windows[0].start)  # this run may fail before its first window's end
    seen: SeenPartitions = {}
    listed: set[str] = set()
    slowest = 0.0  # the longest wait for a page in this run's windows so far
    for window in plan.windows:
        if time.monotonic() >= deadline:
            log.info("Time budget used; %s continues from %s next run", content_type, window.start, extra=dims)
            return
        if window is not plan.windows[0] and not limit.allows(2 * slowest):
            # POLL_TIME_BUDGET may outlast the invocation (nothing ties the setting to the host's timeout): a window
            # begun without the time for one page would fail the run with DeadlineError where it can end cleanly.
            # Twice the slowest yet: a page a little slower than the last would fail it all the same.
            log.info("Out of time; %s continues from %s next run", content_type, window.start, extra=dims)
            return
        lease.check()
        started = time.monotonic()
        pages = [started, 0.0]  # when the last page came, the longest wait for one

        def stop_if_out_of_time(pages: list[float] = pages) -> None:
            # Listed on, the window would meet the invocation's timeout and fail where every run fails: stopped
            # when a wait as long as the longest yet no longer fits, it is listed in shorter ones from the next run.
            at = time.monotonic()
            pages[1], pages[0] = max(pages[1], at - pages[0]), at
            if not limit.allows(pages[1]):
                raise _WindowTooLong

        listing = partial(list_window, rt, content_type, window, now, seen, report, guard=lease.check,
                          deadline=limit, stop=stop_if_out_of_time, listed=listed)  # fmt: skip
        try:
            try:
                await listing()
            except (SubscriptionMissingError, OperatorActionError) as exc:
                # AF20023 (an administrator disabled it) from a listing too: unanswered by a start, nobody would
                # start it once it is allowed again. The start is asked at most once an hour then.
                if isinstance(exc, OperatorActionError) and exc.code != "AF20023":
                    raise
                # By the storage service's clock, as the lease and the throttle: an instance an hour fast wrote a start
                # the others read as an hour ahead, and waited an hour and a quarter before asking again.
                # Its time now: minutes into a catch-up, the run's start put the next start that much early.
                report.subscription = await _start_subscription(rt, lease, storage_clock(), dims)
                if report.subscription == "waiting":
                    raise  # started lately, and still missing
                await listing()
        except _WindowTooLong:
            if window is not plan.windows[0]:
                # It began late in the run: the next run begins with it, and has the whole invocation for it.
                log.info("Out of time; %s continues from %s next run", content_type, window.start, extra=dims)
                return
            shorter = shrunk_window(window)
            await lease.write(window_seconds=int(shorter.total_seconds()))
            log.warning(
                "Listing %s of %s would outlast the invocation (the blobs of its pages so far are queued); the next "
                "runs list windows of at most %s, so that the watermark moves",
                window, content_type, shorter, extra=dims,
            )  # fmt: skip
            return
        slowest = max(slowest, pages[1] or time.monotonic() - started)  # a window of one page: the window's time
        longest = grown_window(longest) if time.monotonic() - started < budget / 2 else longest
        watermark = _within_service_time(window.end, rt.management.answered_at(content_type), dims)
        await lease.write(watermark=watermark, first_start=None, subscription_refused="",
                          window_seconds=0 if longest >= MAX_WINDOW else int(longest.total_seconds()))  # fmt: skip
        report.windows_listed += 1
        if watermark < window.end and window is not plan.windows[-1]:
            # The rest of the plan lies in the API's future, and the next window starts a lead before this one's end,
            # past the watermark: listed on, the run left what the API created in between to no window, and each
            # later window moved the watermark on to its own answer's time, past that stretch and its overlap.
            log.info("Caught up with the Management API's time; %s continues from %s next run",
                     content_type, watermark, extra=dims)  # fmt: skip
            break
    report.finished = True


class _WindowTooLong(Exception):
    """A window's listing would outlast the invocation: stopped at a page's end, to be listed in shorter ones."""


def _within_service_time(end: datetime, service_time: datetime | None, dims: dict[str, str]) -> datetime:
    """The watermark after listing a window that ends at ``end``: at most the Management API's own time when it
    answered. A window planned by a clock running fast ends in the API's future, where nothing was created yet;
    a watermark there would skip what is created before that clock's time comes."""
    if service_time is None or end <= service_time:
        return end
    warn_clock_off(end - service_time, "ahead of the Management API's", "the watermark stays at the API's time",
                    service_time, dims)  # fmt: skip
    return service_time


def warn_clock_off(off: timedelta, how: str, so: str, service_time: datetime, dims: dict[str, str]) -> None:
    """One warning when this machine's clock is ``off`` (positive: the way ``how`` says) by more than a minute."""
    if off.total_seconds() > CLOCK_WARNING_SECONDS:
        log.warning("This machine's clock is %d s %s: %s (%s); set the clock right (NTP)",
                    off.total_seconds(), how, so, service_time.isoformat(), extra=dims)  # fmt: skip


async def list_window(
    rt: Runtime,
    content_type: str,
    window: Window,
    now: datetime,
    seen: SeenPartitions,
    report: ContentTypeReport,
    on_page: Callable[[], None] | None = None,
    *,
    guard: Callable[[], None] | None = None,
    deadline: Deadline | None = None,
    stop: Callable[[], None] | None = None,
    include_queued: bool = False,
    listed: set[str] | None = None,
) -> None:
    """List ``window`` to its last page, queuing as it goes; a refused NextPageUri restarts it once.
    ``guard`` runs before every listing request and may raise to stop (the poller's lease check); no retry
    waits past ``deadline``. ``stop`` runs when a page after the first has come, before it is queued, and may
    raise to leave the window unfinished (every run queues at least a page; one that ends in time is whole).
    ``include_queued`` queues the blobs queued before as well (a backfill after their messages were lost).
    ``listed``: the content ids a run has listed in its windows so far (they overlap by a minute), each taken and
    counted once in the run; without it, once in the window.

    The next page is fetched while this one is queued: the API's answer and the queue writes overlap, and a
    window of many pages costs about the longer of the two, not their sum."""
    listed = set() if listed is None else listed
    for attempt in (1, 2):
        pages = rt.management.list_content(content_type, window, guard=guard, deadline=deadline)
        following: asyncio.Future[list[ContentBlob] | None] = asyncio.ensure_future(anext(pages, None))
        try:
            first = True
            while (page := await following) is not None:
                if stop is not None and not first:
                    stop()
                first = False
                following = asyncio.ensure_future(anext(pages, None))
                await _queue_page(rt, content_type, page, now, seen, report, listed, include_queued=include_queued)
                if on_page is not None:
                    on_page()
            return
        except InvalidPageError as exc:
            if attempt == 2:
                raise
            log.warning("NextPageUri of %s refused (%s); listing %s again from its start, once", content_type, exc,
                        window, extra={"content_type": content_type, "tenant_id": rt.settings.tenant_id})  # fmt: skip
        finally:
            if not following.done():
                following.cancel()
            await asyncio.wait([following])  # never raises the fetch's own failure: one was raised already
            if not following.cancelled():
                following.exception()  # retrieved, so asyncio does not log it as lost
            await pages.aclose()


async def _queue_page(
    rt: Runtime,
    content_type: str,
    page: list[ContentBlob],
    now: datetime,
    seen: SeenPartitions,
    report: ContentTypeReport,
    listed: set[str],
    *,
    include_queued: bool = False,
) -> None:
    settings = rt.settings
    dims = {"content_type": content_type, "tenant_id": settings.tenant_id}
    fresh: list[ContentBlob] = []
    refused: list[UntrustedUrlError] = []
    # A blob given up here is lost, one queued after it expired costs a request (the API answers AF20051): so
    # expired only by both clocks. This machine's alone would give up, hours fast, blobs the API still serves;
    # the API's alone, a Date a proxy got wrong.
    answered = rt.management.answered_at(content_type)
    expired_by = now if answered is None else min(answered, now)
    for blob in page:
        # Listed again in this run (the windows overlap by a minute, a page may name a blob twice, a refused
        # NextPageUri lists the window again): taken and counted once. With include_queued, a second listing
        # was queued a second time.
        if blob.content_id in listed:
            continue
        listed.add(blob.content_id)
        report.blobs_listed += 1
        try:
            rt.management.check_url(blob.content_uri, "contentUri")
        except UntrustedUrlError as exc:
            report.blobs_refused += 1
            refused.append(exc)
            log.debug("Listed blob %s refused: %s", blob.content_id, exc, extra=dims)  # one error line below
            continue
        if blob.content_expiration <= expired_by:
            report.blobs_expired += 1
            log.error(  # records lost: an error, as the processor's for a blob that expires on the queue
                "Blob %s expired at %s before it could be queued; its records are lost to the API",
                blob.content_id,
                blob.content_expiration.isoformat(),
                extra=dims,
            )
            continue
        if not include_queued and await rt.state.queued_blobs.is_queued(content_type, blob, seen):
            report.blobs_already_queued += 1
            continue
        fresh.append(blob)
    if fresh:
        await _queue_blobs(rt, content_type, fresh, seen, report, dims)
    if refused:
        # Skipping them would move the watermark past them: the run fails, and says which settings to check.
        raise RefusedListingError(content_type, len(refused), refused[0])


#: What a run whose marking of the blobs it queued failed leaves behind.
_UNMARKED = "the {} blob(s) it queued are not marked: the next run queues them again, and their records are sent once"


async def _queue_blobs(
    rt: Runtime,
    content_type: str,
    fresh: list[ContentBlob],
    seen: SeenPartitions,
    report: ContentTypeReport,
    dims: dict[str, str],
) -> None:
    settings = rt.settings
    gate = asyncio.Semaphore(_ENQUEUE_CONCURRENCY)

    queued: list[ContentBlob] = []

    async def put(blob: ContentBlob) -> None:
        async with gate:
            # One trace per blob: the processor that takes the message continues it (traceparent).
            attributes = {**dims, "content_id": blob.content_id}
            with producer_span("irm.queue_blob", attributes):
                await rt.queue.put(
                    ContentMessage(settings.tenant_id, blob, traceparent(), queued_at=datetime.now(UTC))
                )
        queued.append(blob)

    # The blobs queued before a put failed, or before the run was cancelled (Ctrl-C, SIGTERM, a lost lease), are
    # remembered: the next run would otherwise queue each again, and every second message costs a download and a
    # parse before the dedupe drops its rows.
    async def remember() -> None:
        if queued:
            await rt.state.queued_blobs.mark_queued(content_type, queued, seen)
            report.blobs_queued += len(queued)

    try:
        results = await asyncio.gather(*(put(b) for b in fresh), return_exceptions=True)
    except asyncio.CancelledError:
        # gather ends only when every put has: ``queued`` is whole (a put cut mid-request may still have landed).
        await carried_after(remember(), lost=_UNMARKED.format(len(queued)), extra=dims)
        raise
    # Carried to its end through a cancel that comes meanwhile: cut, the batch left the blobs just queued unmarked.
    await carried_through(remember(), lost=_UNMARKED.format(len(queued)), extra=dims)
    failed = next((result for result in results if result is not None), None)
    if failed is not None:
        raise failed


async def _start_subscription(rt: Runtime, lease: PollerLease, now: datetime, dims: dict[str, str]) -> str:
    state = lease.state
    content_type = state.content_type
    if state.subscription_refused and state.subscription_started and (
        now - state.subscription_started < REFUSED_START_INTERVAL
    ):
        # An administrator disabled it (apis.md: report, do not restart in a loop). Asked once an hour, the poller
        # starts it itself once it is allowed again: no one else may be able to (the command line needs the app's
        # credential, which in managed_identity mode exists only in Azure). A listing that succeeds clears this.
        raise management_api_error(0, state.subscription_refused, "", "start", content_type)
    if state.subscription_started and now - state.subscription_started < SUBSCRIPTION_START_INTERVAL:
        log.info(
            "No subscription for %s yet; started at %s, waiting", content_type, state.subscription_started, extra=dims
        )
        return "waiting"
    lease.check()
    # Written first: a start that fails counts too, so that start requests stay 15 minutes apart (apis.md).
    await lease.write(subscription_started=now)
    try:
        status = await rt.management.start_subscription(content_type)
    except OperatorActionError as exc:
        if exc.code == "AF20023":
            await lease.write(subscription_refused=exc.code)
        raise
    log.warning(
        "Started the subscription for %s (status %s). The first content can take up to 12 hours to appear.",
        content_type,
        status,
        extra=dims,
    )
    if state.watermark is not None:
        # It was listed before, so it had a subscription that went (stopped, or refused by an administrator).
        log.error(
            "%s had no subscription for a while: content created while it had none is never available (at most "
            "from the watermark, %s, until now). Search the tenant's audit log for that stretch if it matters.",
            content_type, state.watermark.isoformat(), extra=dims,
        )  # fmt: skip
    return status
