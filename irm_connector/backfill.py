"""Backfill: list a past range again (within the API's 7 days) and queue the blobs never queued, without
touching the live watermark or lease: the poller goes on as it was, and records already sent are not sent
again (the claims see them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from time import monotonic

from .errors import ConnectorError, PollError, SubscriptionMissingError, TransientApiError
from .models import ContentTypeReport, PollReport, utc_text
from .poller import list_window, recorded_pause, warn_clock_off
from .redaction import redact
from .runtime import Runtime
from .state import SeenPartitions
from .windows import RETENTION, plan_backfill

__all__ = ["BackfillProgress", "backfill", "service_now"]

log = logging.getLogger(__name__)

#: Called after each page and each window of a backfill: (the content type's report, windows planned).
BackfillProgress = Callable[[ContentTypeReport, int], None]


async def backfill(
    rt: Runtime,
    start: datetime,
    end: datetime,
    *,
    content_types: tuple[str, ...] | None = None,
    now: datetime | None = None,
    on_progress: BackfillProgress | None = None,
    include_queued: bool = False,
    report: PollReport | None = None,
) -> PollReport:
    """List ``[start, end)`` again and queue the blobs not queued before, without touching the watermark or
    the lease: the live poller goes on as it was. Raises :class:`ValueError` for a range the API cannot
    list, :class:`PollError` (with the report) when a content type failed. Without ``now``, each content type's
    windows are planned when its turn comes: a range reaching 7 days back would otherwise have slipped out of
    the API's reach by the time the later ones are listed. ``include_queued`` queues the blobs queued before
    too: their messages may have been purged from the poison queue, and the claims keep sent records from
    being sent again. ``report`` is filled in as the listing goes: a caller stopped midway still has what was
    queued (and marked) so far."""
    content_types = content_types or rt.settings.content_types
    # A range the API cannot list at all raises here.
    first = plan_backfill(start, end, now or await service_now(rt, content_types[0]))[0].start
    report = PollReport() if report is None else report
    causes: dict[str, ConnectorError] = {}
    # Throttling is counted per tenant: a long Retry-After one content type met holds for the others too, the
    # poller's (recorded on the state of the content type it met it for) as well as this backfill's.
    paused_until = None if now else await recorded_pause(rt, (*rt.settings.content_types, *content_types))
    for content_type in content_types:
        ct_report = ContentTypeReport(content_type)
        report.content_types.append(ct_report)
        seen: SeenPartitions = {}
        listed: set[str] = set()
        dims = {"content_type": content_type, "tenant_id": rt.settings.tenant_id}
        moment = now or datetime.now(UTC)
        read_at = monotonic()
        try:
            moment, throttled_until = (now, None) if now else await _service_state(rt, content_type, dims)
            read_at = monotonic()  # when `moment` was read: a Retry-After runs from its answer, not from then
            _hold_back(content_type, moment, max(filter(None, (throttled_until, paused_until)), default=None))
            # What has left the 7 days since the range was checked is out of reach: the rest is listed.
            windows = plan_backfill(max(start, moment - RETENTION), end, moment)
            if windows[0].start - first > timedelta(minutes=1):
                # The range the command's first line names is not all listed for this one: said, not left unseen
                # (seconds of it, lost to the time its state took to read, would be a warning every run).
                log.warning("Backfill of %s lists from %s, not %s: the API's 7 days moved on while the content types "
                            "before it were listed", content_type, utc_text(windows[0].start, timespec="seconds"),
                            utc_text(first, timespec="seconds"), extra=dims)  # fmt: skip
            progress = partial(on_progress, ct_report, len(windows)) if on_progress is not None else None
            for window in windows:
                await list_window(rt, content_type, window, moment, seen, ct_report, progress,
                                  include_queued=include_queued, listed=listed)  # fmt: skip
                ct_report.windows_listed += 1
                if on_progress is not None:
                    on_progress(ct_report, len(windows))
            ct_report.finished = True
        except SubscriptionMissingError as exc:
            ct_report.error = f"{exc} - start it with `irm-connector subscriptions start {content_type}`"
        except ValueError as exc:  # the range left the API's 7 days while the content types before were listed
            ct_report.error = str(exc)
        except ConnectorError as exc:
            causes[content_type] = exc
            ct_report.error = str(exc)
            if isinstance(exc, TransientApiError) and exc.retry_after is not None:
                # Counted from `moment`, a wait asked after minutes of listing had mostly passed already, and the
                # next content types were asked inside it, each throttled again on the tenant's count.
                until = moment + timedelta(seconds=monotonic() - read_at + exc.retry_after)
                paused_until = max(paused_until or until, until)
        if ct_report.error:
            ct_report.error = redact(ct_report.error)  # it reaches the PollError, outside the logging filter
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
        raise PollError("backfill failed for " + "; ".join(report.errors), report, causes)
    return report


def _hold_back(content_type: str, moment: datetime, until: datetime | None) -> None:
    """Raise while the Management API has asked this tenant for no requests (a Retry-After, recorded by the
    poller or met by this backfill): asked before then, it throttles again and counts the request."""
    if until is not None and until > moment:
        raise TransientApiError(
            f"the Management API asked for no requests from this tenant until {utc_text(until, timespec='seconds')} "
            "(Retry-After): run the backfill again then",
            retry_after=(until - moment).total_seconds(),
            operation="list",
            content_type=content_type,
        )


async def service_now(rt: Runtime, content_type: str, dims: dict[str, str] | None = None) -> datetime:
    """The storage service's time (the Date of a read of the content type's state), which places the API's 7-day
    edge as it does for the poller. By this machine's clock, hours fast it would refuse a start the API still serves
    and cut the oldest hours off ``--since 7d`` without a word; hours slow, plan a first window the API refuses."""
    return (await _service_state(rt, content_type, dims))[0]


async def _service_state(
    rt: Runtime, content_type: str, dims: dict[str, str] | None = None
) -> tuple[datetime, datetime | None]:
    """:func:`service_now`, and until when the poller was asked to leave the API alone (its state's Retry-After)."""
    local = datetime.now(UTC)
    state = await rt.state.watermarks.get_state(rt.settings.tenant_id, content_type)
    service = state.read_at
    if service is None:  # storage answers carry a Date; if a proxy drops it, this machine's clock is all there is
        return local, state.throttled_until
    if dims is not None:
        so = "the backfill is planned by the service's time"
        warn_clock_off(local - service, "ahead of the storage service's", so, service, dims)
        warn_clock_off(service - local, "behind the storage service's", so, service, dims)
    return service, state.throttled()
