"""Backfill: list a past range again (within the API's 7 days) and queue the blobs never queued, without
touching the live watermark or lease: the poller goes on as it was, and records already sent are not sent
again (the claims see them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial

from .errors import ConnectorError, InvalidWindowError, PollError, SubscriptionMissingError
from .models import ContentTypeReport, PollReport
from .poller import list_window
from .redaction import redact
from .runtime import Runtime
from .state import SeenPartitions
from .windows import RETENTION, plan_backfill

__all__ = ["BackfillProgress", "backfill"]

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
) -> PollReport:
    """List ``[start, end)`` again and queue the blobs not queued before, without touching the watermark or
    the lease: the live poller goes on as it was. Raises :class:`ValueError` for a range the API cannot
    list, :class:`PollError` (with the report) when a content type failed. Without ``now``, each content type's
    windows are planned when its turn comes: a range reaching 7 days back would otherwise have slipped out of
    the API's reach by the time the later ones are listed."""
    plan_backfill(start, end, now or datetime.now(UTC))  # a range the API cannot list at all raises here
    report = PollReport()
    causes: dict[str, ConnectorError] = {}
    for content_type in content_types or rt.settings.content_types:
        ct_report = ContentTypeReport(content_type)
        report.content_types.append(ct_report)
        seen: SeenPartitions = {}
        dims = {"content_type": content_type, "tenant_id": rt.settings.tenant_id}
        try:
            for attempt in (1, 2):
                moment = now or _api_now(rt, content_type)
                # What has left the 7 days since the range was checked is out of reach: the rest is listed.
                windows = plan_backfill(max(start, moment - RETENTION), end, moment)
                progress = partial(on_progress, ct_report, len(windows)) if on_progress is not None else None
                try:
                    for window in windows:
                        await list_window(rt, content_type, window, moment, seen, ct_report, progress)
                        ct_report.windows_listed += 1
                        if on_progress is not None:
                            on_progress(ct_report, len(windows))
                    break
                except InvalidWindowError:
                    # The first window refused, by an API whose clock is ahead of this machine's: the clock runs
                    # slow and put the oldest window past the API's 7 days. Planned again by the API's time, once.
                    behind = _behind_api(rt, content_type, datetime.now(UTC))
                    if attempt == 2 or now is not None or ct_report.windows_listed or not behind:
                        raise
                    log.warning("The API refused the oldest window of %s: this machine's clock is %d s behind the "
                                "API's; planned again by the API's time; set the clock right (NTP)", content_type,
                                behind.total_seconds(), extra=dims)  # fmt: skip
            ct_report.finished = True
        except SubscriptionMissingError as exc:
            ct_report.error = f"{exc} - start it with `irm-connector subscriptions start {content_type}`"
        except ValueError as exc:  # the range left the API's 7 days while the content types before were listed
            ct_report.error = str(exc)
        except ConnectorError as exc:
            causes[content_type] = exc
            ct_report.error = str(exc)
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


def _api_now(rt: Runtime, content_type: str) -> datetime:
    """This machine's time, or the Management API's at its last answer for ``content_type`` when that is later
    (a clock running slow)."""
    local = datetime.now(UTC)
    return local + _behind_api(rt, content_type, local)


def _behind_api(rt: Runtime, content_type: str, local: datetime) -> timedelta:
    """How far ``local`` is behind the Date of the Management API's last answer for ``content_type``; zero when
    it is not."""
    answered = rt.management.answered_at(content_type)
    return max(answered - local, timedelta(0)) if answered is not None else timedelta(0)
