"""backfill: list a past range again and queue what was never queued, without moving the live watermark."""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from irm_connector.backfill import backfill, service_now
from irm_connector.errors import PollError
from irm_connector.models import ContentTypeReport, PollReport
from irm_connector.runtime import get_runtime
from irm_connector.settings import Settings
from irm_connector.windows import EMPTY_RANGE, RETENTION, Window, plan_backfill, starts_in_the_future, too_far_back

from ._common import EXIT_OK, UsageError, duration_option, emit, iso, note_done, parse_moment
from ._preflight import ready
from ._progress import Progress
from .poll import failed_exit, report_lines
from .process import process_lines, work_queue

__all__ = ["backfill_command"]


async def backfill_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.since and (args.start or args.end):
        raise UsageError("give --since or --start/--end, not both")
    # In any case, as O365_CONTENT_TYPES and `subscriptions` take them; the configured spelling from here on.
    configured = {ct.lower(): ct for ct in settings.content_types}
    asked = tuple(args.content_type or settings.content_types)
    content_types = tuple(dict.fromkeys(configured.get(ct.lower(), ct) for ct in asked))  # each once
    unknown = [ct for ct in content_types if ct not in settings.content_types]
    if unknown:
        raise UsageError(f"{', '.join(unknown)} not in O365_CONTENT_TYPES ({', '.join(settings.content_types)})")
    # The range's own mistakes, before any call.
    _precheck(*_range(args, local_now := datetime.now(UTC)), local_now, end_given=bool(args.end))

    await ready(settings, management=True, ingestion=not args.no_process)
    rt = await get_runtime(settings)
    # Placed by the storage service's clock, as the poller places the API's 7-day edge: this machine's, half an
    # hour slow, put `--since 7d` past the edge (an "unexpected ValueError"); fast, it left the oldest part out.
    now = await service_now(rt, content_types[0])
    start, end = _range(args, now)
    windows = _plan(start, end, now)
    bar = Progress(
        total=len(windows) * len(content_types),
        desc="windows listed",
        unit="window",
    )
    seen: dict[str, int] = {}
    counts: dict[str, tuple[int, int]] = {}  # content type -> blobs queued, listed: the line gives the totals

    def progress(report: ContentTypeReport, planned: int) -> None:
        key = report.content_type
        if report.windows_listed != seen.get(key, 0):
            bar.update(report.windows_listed - seen.get(key, 0))
            seen[key] = report.windows_listed
        counts[key] = (report.blobs_queued, report.blobs_listed)
        bar.set_postfix(queued=sum(q for q, _ in counts.values()), listed=sum(n for _, n in counts.values()))

    report = PollReport()
    code = EXIT_OK
    try:
        try:
            # From the start as checked above, moved inside the 7 days (checked again after the preflight, the
            # range asked for may have slipped past the edge meanwhile), but not by the plan's lead before it: the
            # backfill leads it again, and listed from two minutes before --start.
            await backfill(
                rt,
                max(start.replace(microsecond=0), windows[0].start),
                end,
                content_types=content_types,
                on_progress=progress,
                include_queued=args.include_queued,
                report=report,
            )
        finally:
            bar.close()
    except PollError as exc:
        report, code = exc.report, failed_exit(exc)
    except asyncio.CancelledError:
        # Stopped while listing (Ctrl-C, SIGTERM): the blobs it queued are marked, so a rerun counts them as
        # queued before, and this is the only place the operator learns what this run queued.
        for ct_report in report.content_types:
            if not ct_report.finished and not ct_report.error:
                ct_report.error = "interrupted while listing"
        reached = {ct_report.content_type for ct_report in report.content_types}
        report.content_types += [ContentTypeReport(ct, skipped="interrupted before it was listed")
                                 for ct in content_types if ct not in reached]  # fmt: skip
        listing, lines = _listing(args, report, (start, end), windows)
        listing["interrupted"] = True
        lines.append("interrupted while listing: the blobs counted as queued stay on the queue; run the same "
                     "backfill again to list the rest")  # fmt: skip
        if args.json:
            note_done(listing)  # the error document carries it: stdout holds one document
        else:
            emit(args, listing, "\n".join(lines))
        raise
    listing, lines = _listing(args, report, (start, end), windows)
    # ok: set again once the queue is worked (nothing poisoned or put off there either)
    document: dict[str, Any] = {"ok": code == EXIT_OK, **listing}
    if not args.no_process:
        # The listing's outcome first: processing may fail (Storage, a signal), and a rerun finds its blobs
        # queued, so this would be the only place the operator learns what was queued. With --json, the error
        # document carries it.
        if args.json:
            note_done(listing)  # without ok: the whole run's
        else:
            emit(args, document, "\n".join(lines))
            lines = []
        # Whether or not this run queued anything: messages an earlier `--no-process`, or an abandoned run, left
        # on the queue would otherwise wait for a function app that may not run.
        processed, process_code = await work_queue(settings, max_messages=None, retry_delay=args.retry_delay)
        document["processing"] = processed
        lines += process_lines(processed, settings.poison_queue)
        code = max(code, process_code)
    document["ok"] = code == EXIT_OK
    emit(args, document, "\n".join(lines))
    return code


def _listing(
    args: argparse.Namespace, report: PollReport, requested: tuple[datetime, datetime], windows: tuple[Window, ...]
) -> tuple[dict[str, Any], list[str]]:
    """What the listing did, as the JSON document's fields and as the text's lines."""
    start, end = requested
    listing: dict[str, Any] = {
        "range": {"start": windows[0].start, "end": windows[-1].end},
        "requested": {"start": start, "end": end},
        "windows": len(windows),
        "blobs_queued": report.blobs_queued,
        "content_types": report.content_types,
    }
    lines = [
        f"backfill of [{iso(windows[0].start)}, {iso(windows[-1].end)}) in {len(windows)} window(s); "
        "the live watermark was not moved"
    ]
    if windows[0].start > start + timedelta(seconds=1):
        lines.append(f"(start moved to {iso(windows[0].start)}: the API lists at most 7 days back)")
    lines += report_lines(report, watermark=False)
    skipped = sum(ct.blobs_already_queued for ct in report.content_types)
    if skipped and not args.include_queued:
        lines.append(
            f"{skipped} blob(s) were queued before and not again: if their messages were purged from the poison "
            "queue, run the same backfill with --include-queued (records already sent are not sent again)"
        )
    return listing, lines


def _range(args: argparse.Namespace, now: datetime) -> tuple[datetime, datetime]:
    """``[start, end)`` as the options give it, ``--since`` and a missing ``--end`` counted from ``now``."""
    if args.since:
        since = duration_option(args.since, "--since")
        if since <= timedelta(0):
            raise UsageError(f"--since {args.since} is an empty range: give how far back to start, e.g. 3d or 12h")
        if since > RETENTION + timedelta(days=1):  # before year 1 for a large one: say what is wrong instead
            raise UsageError(f"--since {args.since} is more than 7 days back: the API keeps content for 7 days only")
        return now - since, now
    if args.start:
        return parse_moment(args.start, "--start"), parse_moment(args.end, "--end") if args.end else now
    raise UsageError("give --since (e.g. 3d) or --start (and optionally --end)")


#: How far this machine's clock may be from the storage service's before a range it calls more than 7 days back, or
#: in the future, is refused without asking the service, whose clock places the edge and the present.
_CLOCK_SLACK = timedelta(hours=1)


def _precheck(start: datetime, end: datetime, local_now: datetime, *, end_given: bool) -> None:
    """The mistakes a range shows by itself, told before a storage or token call can fail first: an --end not after
    --start, a start clearly in the future, and one clearly more than 7 days back. :func:`_plan` checks again by the
    service's clock: by this machine's, minutes slow, a --start a minute ago was refused as in the future."""
    if end_given and end <= start:
        raise UsageError(EMPTY_RANGE)
    if start >= local_now + _CLOCK_SLACK:
        raise UsageError(starts_in_the_future(start, local_now))
    if start < local_now - RETENTION - _CLOCK_SLACK:
        raise UsageError(too_far_back(start))


def _plan(start: datetime, end: datetime, now: datetime) -> tuple[Window, ...]:
    try:
        return plan_backfill(start, end, now)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
