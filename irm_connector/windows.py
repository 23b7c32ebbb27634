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

__all__ = ["MAX_WINDOW", "RETENTION", "RETENTION_MARGIN", "Window", "WindowPlan", "format_api_time", "plan_windows"]

MAX_WINDOW = timedelta(hours=24)
RETENTION = timedelta(days=7)
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


def plan_windows(
    *,
    watermark: datetime | None,
    now: datetime,
    overlap: timedelta,
    initial_lookback: timedelta,
    max_window: timedelta = MAX_WINDOW,
    retention: timedelta = RETENTION,
    retention_margin: timedelta = RETENTION_MARGIN,
) -> WindowPlan:
    """Plan the windows from the watermark (``None`` on the first run) up to ``now``.

    The windows are contiguous, each at most ``max_window`` long, none starting before
    ``now - retention + retention_margin``; the first starts ``overlap`` behind the watermark.
    """
    if max_window <= timedelta(0) or overlap < timedelta(0) or initial_lookback <= timedelta(0):
        raise ValueError("max_window and initial_lookback must be positive, overlap not negative")
    end = _floor_second(now)
    earliest = _ceil_second(now - retention + retention_margin)
    if watermark is None:
        start = _floor_second(now - initial_lookback)
        unreachable = None
    else:
        watermark = _floor_second(watermark)
        start = _floor_second(watermark - overlap)
        unreachable = Window(watermark, earliest) if watermark < earliest else None
    start = max(start, earliest)

    windows: list[Window] = []
    while start < end:
        stop = min(start + max_window, end)
        windows.append(Window(start, stop))
        start = stop
    return WindowPlan(tuple(windows), unreachable)
