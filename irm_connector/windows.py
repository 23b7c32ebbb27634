"""Planning the listing windows: pure time arithmetic, no I/O.

The Management API lists content by ``contentCreated`` in windows of at most 24 hours that start no
more than 7 days back, start inclusive and end exclusive. The watermark is the end of the last window
that was listed to its end and whose blobs are all on the queue. Each run starts ``overlap`` behind the
watermark because a blob can become listable after its ``contentCreated`` (late listing); the content
markers keep the overlap from queuing a blob twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .models import utc_text

__all__ = [
    "EMPTY_RANGE",
    "MAX_WINDOW",
    "MIN_WINDOW",
    "RETENTION",
    "RETENTION_MARGIN",
    "WINDOW_LEAD",
    "Window",
    "WindowPlan",
    "format_api_time",
    "grown_window",
    "plan_backfill",
    "plan_windows",
    "shrunk_window",
    "split_windows",
    "starts_in_the_future",
    "too_far_back",
    "window_lead",
]

MAX_WINDOW = timedelta(hours=24)
#: The shortest window a content type whose windows outlast an invocation comes down to.
MIN_WINDOW = timedelta(minutes=1)
#: The API's own limit: content older than this cannot be listed.
RETENTION = timedelta(days=7)
#: How far each window of a run after its first starts before the previous one ends (see :func:`split_windows`).
WINDOW_LEAD = timedelta(minutes=1)
#: Start a little inside the 7 days so clock skew and the time a run takes never push a start over the edge.
RETENTION_MARGIN = timedelta(minutes=15)


def format_api_time(moment: datetime) -> str:
    """The API's ``YYYY-MM-DDTHH:MM:SS`` (UTC, no zone suffix)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _floor_second(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(microsecond=0)


def _ceil_second(moment: datetime) -> datetime:
    floored = _floor_second(moment)
    return floored if floored == moment else floored + timedelta(seconds=1)


@dataclass(frozen=True, order=True)
class Window:
    """``[start, end)`` over ``contentCreated``, at whole seconds, UTC."""

    start: datetime
    end: datetime

    @property
    def span(self) -> timedelta:
        return self.end - self.start

    def params(self) -> dict[str, str]:
        return {"startTime": format_api_time(self.start), "endTime": format_api_time(self.end)}

    def __str__(self) -> str:
        return f"[{format_api_time(self.start)}, {format_api_time(self.end)})"


@dataclass(frozen=True)
class WindowPlan:
    """The windows to list, in order, and the stretch that has already left the API's 7 days (never
    listable again: reported, not silently skipped)."""

    windows: tuple[Window, ...]
    unreachable: Window | None = None
    #: A watermark ahead of now, brought back to now: to be written before listing. Left ahead, no run with a
    #: listing overlap shorter than the lead would list before it, and once now passed it the next window would
    #: start there, past what was created meanwhile.
    rewound: datetime | None = None


def plan_windows(
    *,
    watermark: datetime | None,
    now: datetime,
    overlap: timedelta,
    initial_lookback: timedelta,
    first_start: datetime | None = None,
    service_now: datetime | None = None,
    max_window: timedelta = MAX_WINDOW,
    retention: timedelta = RETENTION,
    retention_margin: timedelta = RETENTION_MARGIN,
) -> WindowPlan:
    """Plan the windows from the watermark (``None`` until a window is listed to its end; then from
    ``first_start``, where a failed first run's windows started, or ``initial_lookback`` back) up to ``now``.

    The windows overlap by :func:`window_lead` (:func:`split_windows`), each at most ``max_window`` long, none
    starting before ``service_now - retention + retention_margin``; the first starts ``overlap`` behind the
    watermark, at most half of ``max_window``, so that it ends past the watermark, and at least the lead.
    ``service_now`` is a Microsoft service's time (the storage service's, read from its answers), so that the
    7-day edge is the API's and not this machine's: a clock hours fast would skip the oldest hours of a catch-up,
    one slow by more than the margin would have every run's first window refused. It defaults to ``now``.
    """
    if max_window <= timedelta(0) or overlap < timedelta(0) or initial_lookback <= timedelta(0):
        raise ValueError("max_window and initial_lookback must be positive, overlap not negative")
    end = _floor_second(now)
    earliest = _ceil_second((service_now or now) - retention + retention_margin)
    if watermark is None:
        # A first run that failed before listing a window to its end planned from there: what was created since
        # would otherwise fall out of the lookback with every failed run. An earlier start (a longer lookback) wins.
        start = _floor_second(min(now - initial_lookback, first_start or now))
        # Failed for long enough, such a run's start leaves the API's 7 days: reported like a watermark's.
        unreachable = Window(first_start, earliest) if first_start is not None and first_start < earliest else None
        rewound = None
    else:
        # A watermark ahead of now was written by a clock that ran fast (or this one runs slow): listing again
        # from now costs a few listed blobs that the markers keep off the queue; starting from it would skip
        # whatever was created between now and it.
        rewound = end if watermark > end else None
        watermark = _floor_second(min(watermark, now))
        # Windows shrunk below the overlap (the API lists slowly) would end before the watermark: a run with time
        # for one would write it back, every run, until the 7 days were left behind. At most half a window back,
        # the first window always moves it; unshrunk (24 hours), an overlap up to 12 hours is as set.
        # And at least the lead windows overlap by (0 set): a blob created at the watermark's very second would
        # otherwise rest on one answer whose startTime is its contentCreated, as between windows (split_windows).
        start = _floor_second(watermark - max(window_lead(max_window), min(overlap, max_window / 2)))
        unreachable = Window(watermark, earliest) if watermark < earliest else None
    return WindowPlan(split_windows(max(start, earliest), end, max_window), unreachable, rewound)


def shrunk_window(listed: Window) -> timedelta:
    """The longest window of the next runs after ``listed`` would have outlasted its invocation: half as long.
    Listed again whole, it would outlast every one, and the watermark would never move until its content left the
    API's 7 days."""
    return max(MIN_WINDOW, (listed.end - listed.start) / 2)


def grown_window(longest: timedelta) -> timedelta:
    """The longest window after one was listed well within the budget: twice as long, up to the API's 24 hours."""
    return min(MAX_WINDOW, longest * 2)


def split_windows(start: datetime, end: datetime, max_window: timedelta = MAX_WINDOW) -> tuple[Window, ...]:
    """``[start, end)`` as windows of at most ``max_window``, each after the first starting :func:`window_lead`
    before the previous one ends; empty when ``end <= start``.

    Listed back to back, a blob created at the very second one window ends and the next starts would rest on a
    single answer whose ``startTime`` is its exact ``contentCreated``, which the API has been seen to leave out
    (apis.md: "list from a little earlier and dedupe"). The content markers keep the blobs listed twice off the
    queue, as they do the run's overlap behind the watermark."""
    lead = window_lead(max_window)
    if lead >= max_window:
        raise ValueError(f"a window of {max_window} cannot move on by its lead of {lead}")
    windows: list[Window] = []
    while start < end:
        stop = min(start + max_window, end)
        windows.append(Window(start, stop))
        start = stop - lead if stop < end else stop
    return tuple(windows)


def window_lead(max_window: timedelta) -> timedelta:
    """How far a window starts before the previous one's end: :data:`WINDOW_LEAD`, at most an eighth of a shrunk
    window (whole seconds, at least one), so that short windows still move on by most of their length."""
    return max(timedelta(seconds=1), timedelta(seconds=int(min(WINDOW_LEAD, max_window / 8).total_seconds())))


#: A backfill range that holds nothing, as the options give it or once its end is cut at now.
EMPTY_RANGE = "the range is empty: --end must be after --start (and not in the future)"


def starts_in_the_future(start: datetime, now: datetime) -> str:
    """What a backfill starting at ``start``, at or after ``now``, is told (it gave no --end, or one later still)."""
    start_text, now_text = utc_text(start, timespec="seconds"), utc_text(now, timespec="seconds")
    return (
        f"the range starts in the future ({start_text}, and it is now {now_text}): "
        "content is listed once it is published; give a --start in the past, or --since"
    )


def too_far_back(start: datetime) -> str:
    """What a backfill starting at ``start``, past the API's 7 days, is told."""
    start_text = utc_text(start, timespec="seconds")  # UTC: --start may name an offset
    return (
        f"start {start_text} is more than 7 days back: the API keeps content for 7 days only; give a --start "
        "within the last 7 days, or --since 7d"
    )


def plan_backfill(start: datetime, end: datetime, now: datetime) -> tuple[Window, ...]:
    """The windows of a backfill over ``[start, end)`` (``end`` left out, as the API's ``endTime`` is), listed
    from :func:`window_lead` before ``start``: at most 24 hours each, inside the API's 7 days.

    A start up to 7 days back is moved inside the retention margin; raises :class:`ValueError` when the range
    is empty or starts more than 7 days back (that content can no longer be listed)."""
    start, end, now = start.astimezone(UTC), end.astimezone(UTC), now.astimezone(UTC)
    if start < now - RETENTION - timedelta(minutes=5):  # a little slack for --since 7d
        raise ValueError(too_far_back(start))
    end = min(end, now).replace(microsecond=0)
    earliest = (now - RETENTION + RETENTION_MARGIN).replace(microsecond=0) + timedelta(seconds=1)
    asked = start.replace(microsecond=0)
    if asked >= now:
        raise ValueError(starts_in_the_future(asked, now))
    # From a lead before the start asked, as the poller's windows start before its watermark: a --start at a
    # blob's exact contentCreated (`poison list` shows it) rested on an answer the API has been seen to leave it
    # out of. The markers and claims keep what the extra minute lists from being sent twice.
    start = max(asked - window_lead(MAX_WINDOW), earliest)
    if end <= max(asked, earliest):
        if asked < end:
            minutes = int(RETENTION_MARGIN.total_seconds() // 60)
            earliest_text = utc_text(earliest, timespec="seconds")
            raise ValueError(
                f"the range ends before {earliest_text}: the oldest {minutes} minutes of the API's 7 "
                "days are not listed (a margin for clock skew, lest the API refuse the window); content that old "
                "is about to leave the API"
            )
        raise ValueError(EMPTY_RANGE)
    return split_windows(start, end)
