"""Window planning: contiguous, at most 24 hours, never past the API's 7 days, overlap behind the watermark."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from irm_connector.windows import (
    MAX_WINDOW,
    MIN_WINDOW,
    RETENTION,
    RETENTION_MARGIN,
    WINDOW_LEAD,
    Window,
    WindowPlan,
    grown_window,
    plan_windows,
    shrunk_window,
    split_windows,
    window_lead,
)

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def plan(watermark: datetime | None, now: datetime = NOW, overlap: timedelta = HOUR, lookback: timedelta = timedelta(hours=24)) -> WindowPlan:
    return plan_windows(watermark=watermark, now=now, overlap=overlap, initial_lookback=lookback)


def test_first_run_starts_initial_lookback_back_in_one_window() -> None:
    p = plan(None)
    assert [(w.start, w.end) for w in p.windows] == [(NOW - timedelta(hours=24), NOW)]
    assert p.unreachable is None


def test_a_first_run_after_a_failed_one_starts_where_that_one_did_or_earlier() -> None:
    failed_at = NOW - 3 * HOUR - timedelta(hours=24)  # where the first run, 3 hours ago, started
    kept = plan_windows(watermark=None, now=NOW, overlap=HOUR, initial_lookback=timedelta(hours=24),
                        first_start=failed_at)  # fmt: skip
    lead = WINDOW_LEAD
    assert [(w.start, w.end) for w in kept.windows] == [(failed_at, failed_at + MAX_WINDOW), (failed_at + MAX_WINDOW - lead, NOW)]
    longer = plan_windows(watermark=None, now=NOW, overlap=HOUR, initial_lookback=timedelta(days=2),
                          first_start=failed_at)  # fmt: skip
    assert longer.windows[0].start == NOW - timedelta(days=2)  # INITIAL_LOOKBACK made longer since: it counts


def test_regular_run_relists_the_overlap_behind_the_watermark() -> None:
    p = plan(NOW - timedelta(minutes=5))
    assert [(w.start, w.end) for w in p.windows] == [(NOW - timedelta(minutes=65), NOW)]


def test_catch_up_splits_into_24_hour_windows_inside_the_7_days() -> None:
    p = plan(NOW - timedelta(days=3))
    assert len(p.windows) == 4
    assert p.windows[0].start == NOW - timedelta(days=3) - HOUR
    assert all(w.span <= MAX_WINDOW for w in p.windows)
    assert p.windows[-1].end == NOW


def test_a_watermark_ahead_of_now_is_listed_again_from_now() -> None:
    # A fast clock wrote it (or this one runs slow): starting from it would skip what is created until then.
    p = plan(NOW + timedelta(hours=3))
    assert [(w.start, w.end) for w in p.windows] == [(NOW - HOUR, NOW)]
    assert p.unreachable is None
    assert p.rewound == NOW


def test_a_watermark_ahead_of_now_is_brought_back_even_with_no_overlap() -> None:
    """With no overlap only the lead is listed again; the watermark must still come back to now, or the run after
    now passed it would start there, past whatever was created meanwhile."""
    p = plan_windows(watermark=NOW + timedelta(hours=3), now=NOW, overlap=timedelta(0), initial_lookback=HOUR)
    assert (p.windows, p.rewound) == ((Window(NOW - WINDOW_LEAD, NOW),), NOW)
    assert plan(NOW - HOUR).rewound is None


@pytest.mark.parametrize("max_window", [MAX_WINDOW, timedelta(hours=4), MIN_WINDOW])
def test_with_no_overlap_a_run_still_starts_the_lead_behind_the_watermark(max_window: timedelta) -> None:
    """``LISTING_OVERLAP=0``: each run's first window started at the watermark, the previous run's last end, so a
    blob created at that very second rested on one answer whose startTime was its contentCreated, which the API
    has been seen to leave out (apis.md), and no later run listed that second again. Runs now overlap by the
    lead that windows within a run do."""
    watermark = NOW - 2 * HOUR
    p = plan_windows(watermark=watermark, now=NOW, overlap=timedelta(0), initial_lookback=HOUR, max_window=max_window)
    assert p.windows[0].start == watermark - window_lead(max_window) < watermark


def test_watermark_older_than_7_days_reports_the_unreachable_stretch() -> None:
    watermark = NOW - timedelta(days=9)
    p = plan(watermark)
    earliest = NOW - RETENTION + RETENTION_MARGIN
    assert p.unreachable is not None
    assert p.unreachable.start == watermark
    assert p.unreachable.end == earliest
    assert p.windows[0].start == earliest


def test_the_7_day_edge_is_the_service_clocks_not_this_machines() -> None:
    """A clock 3 hours fast must not give up the oldest 3 hours of a catch-up, nor one 3 hours slow plan a first
    window the API refuses as more than 7 days back: the edge follows the service's time."""
    watermark = NOW - RETENTION + timedelta(hours=1)  # listable: an hour inside the API's 7 days
    edge = NOW - RETENTION + RETENTION_MARGIN
    for skew in (timedelta(hours=3), -timedelta(hours=3)):
        p = plan_windows(watermark=watermark, now=NOW + skew, service_now=NOW, overlap=HOUR,
                         initial_lookback=timedelta(hours=24))  # fmt: skip
        assert p.windows[0].start == edge  # the overlap reaches past the edge: the edge, by the API's clock
        assert p.unreachable is None


def test_api_time_format_has_whole_seconds_and_no_zone() -> None:
    w = plan(None, now=datetime(2026, 11, 27, 12, 0, 0, 999999, tzinfo=UTC)).windows[0]
    assert w.params() == {"startTime": "2026-11-26T12:00:00", "endTime": "2026-11-27T12:00:00"}


moments = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC))


@given(
    now=moments,
    behind=st.one_of(st.none(), st.timedeltas(min_value=timedelta(hours=-6), max_value=timedelta(days=30))),
    overlap=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=24)),
    lookback=st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=7)),
)
def test_windows_never_leave_a_gap_or_break_the_api_rules(now: datetime, behind: timedelta | None, overlap: timedelta, lookback: timedelta) -> None:
    watermark = None if behind is None else now - behind
    p = plan(watermark, now=now, overlap=overlap, lookback=lookback)
    earliest = now - RETENTION + RETENTION_MARGIN
    for a, b in zip(p.windows, p.windows[1:], strict=False):
        # No gap, and a little overlap: a blob on the boundary is not left to an answer starting at its very second.
        assert a.end - window_lead(MAX_WINDOW) == b.start
    for w in p.windows:
        assert w.start < w.end
        assert w.span <= MAX_WINDOW
        assert w.start >= earliest - timedelta(seconds=1)
        assert w.start.microsecond == 0 and w.end.microsecond == 0
    if p.windows:
        assert p.windows[-1].end == now.replace(microsecond=0)
        if watermark is not None:
            # The first window starts at or before the watermark unless the 7 days forbid it, and then
            # the stretch that cannot be listed is reported.
            wm = min(watermark, now).replace(microsecond=0)  # one ahead of now counts from now
            assert p.windows[0].start <= wm or p.unreachable is not None
            if p.unreachable is not None:
                assert p.unreachable.start == wm and p.unreachable.end >= p.windows[0].start


def test_a_window_that_outlasted_a_run_comes_back_shorter_and_grows_again_up_to_24_hours() -> None:
    assert shrunk_window(Window(NOW - timedelta(hours=24), NOW)) == timedelta(hours=12)
    assert shrunk_window(Window(NOW - timedelta(seconds=90), NOW)) == MIN_WINDOW
    assert grown_window(timedelta(hours=6)) == timedelta(hours=12)
    assert grown_window(timedelta(hours=16)) == MAX_WINDOW
    p = plan_windows(watermark=NOW - timedelta(hours=10), now=NOW, overlap=timedelta(0), initial_lookback=HOUR,
                     max_window=timedelta(hours=4))  # fmt: skip
    assert [w.end - w.start for w in p.windows] == [timedelta(hours=4), timedelta(hours=4), timedelta(hours=2, minutes=3)]


def test_shrunk_windows_reach_past_the_watermark_however_long_the_overlap() -> None:
    """Windows shrunk below LISTING_OVERLAP (the API lists slowly) began an overlap behind the watermark and ended
    before it: a run with time for one window wrote the watermark back by the difference, every run, until the
    7 days were left behind. The overlap is at most half a window: the first one always moves the watermark."""
    watermark = NOW - 2 * HOUR  # behind since the API slowed down
    p = plan_windows(watermark=watermark, now=NOW, overlap=HOUR, initial_lookback=HOUR, max_window=timedelta(minutes=32))
    assert p.windows[0] == Window(watermark - timedelta(minutes=16), watermark + timedelta(minutes=16))
    tiny = plan_windows(watermark=watermark, now=NOW, overlap=HOUR, initial_lookback=HOUR, max_window=MIN_WINDOW)
    assert tiny.windows[0] == Window(watermark - MIN_WINDOW / 2, watermark + MIN_WINDOW / 2)
    # Unshrunk, the overlap is as set.
    assert plan(watermark).windows[0].start == watermark - HOUR


@given(
    now=moments,
    behind=st.timedeltas(min_value=timedelta(seconds=2), max_value=timedelta(days=6)),
    overlap=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=24)),
    longest=st.timedeltas(min_value=MIN_WINDOW, max_value=MAX_WINDOW),
)
def test_the_first_window_always_ends_past_the_watermark(
    now: datetime, behind: timedelta, overlap: timedelta, longest: timedelta
) -> None:
    watermark = (now - behind).replace(microsecond=0)
    p = plan_windows(watermark=watermark, now=now, overlap=overlap, initial_lookback=HOUR, max_window=longest)
    assert p.windows[0].end > watermark


def test_each_window_starts_a_little_before_the_last_one_ended_and_short_ones_still_move_on() -> None:
    """apis.md: a startTime that is a blob's exact contentCreated can answer without it; list from a little
    earlier. Each window after a run's first starts a minute back, an eighth of a shrunk one (whole seconds)."""
    day = split_windows(NOW - timedelta(days=2), NOW)
    minute = WINDOW_LEAD
    assert [(w.start, w.end) for w in day] == [
        (NOW - timedelta(days=2), NOW - timedelta(days=1)),
        (NOW - timedelta(days=1) - minute, NOW - minute),
        (NOW - 2 * minute, NOW),
    ]
    assert window_lead(MIN_WINDOW) == timedelta(seconds=7) and window_lead(timedelta(seconds=2)) == timedelta(seconds=1)
    short = split_windows(NOW - timedelta(minutes=10), NOW, MIN_WINDOW)
    assert all(w.span == MIN_WINDOW for w in short[:-1]) and short[-1].end == NOW
    assert all(b.start == a.end - timedelta(seconds=7) for a, b in pairwise(short))
    assert len(short) == 12  # 10 minutes in steps of 53 s: a fifth more listing while the API is slow
    assert split_windows(NOW, NOW) == () and split_windows(NOW - HOUR, NOW) == (Window(NOW - HOUR, NOW),)


def test_a_first_run_failing_past_the_7_days_reports_what_left_them() -> None:
    """The start a failing first run kept (``first_start``) is listed from while it can be; once it has left the
    API's 7 days, that stretch is reported as lost, as for a watermark, not dropped without a word."""
    kept = NOW - timedelta(days=8)
    p = plan_windows(watermark=None, now=NOW, overlap=HOUR, initial_lookback=timedelta(hours=24), first_start=kept)
    earliest = NOW - RETENTION + RETENTION_MARGIN
    assert p.unreachable == Window(kept, earliest) and p.windows[0].start == earliest
    assert plan(None).unreachable is None


def test_a_backfill_range_within_the_margin_at_the_7_day_edge_is_refused_as_such() -> None:
    """A range wholly within the oldest 15 minutes of the API's 7 days was refused as "the range is empty: --end
    must be after --start (and not in the future)", which it was not; the operator could not tell what to change."""
    from irm_connector.windows import plan_backfill

    start = NOW - RETENTION + timedelta(minutes=1)
    with pytest.raises(ValueError, match="oldest 15 minutes of the API's 7 days") as refused:
        plan_backfill(start, start + timedelta(minutes=10), NOW)
    assert "empty" not in str(refused.value)
    with pytest.raises(ValueError, match="the range is empty"):
        plan_backfill(NOW - HOUR, NOW - 2 * HOUR, NOW)
    # Reaching past the margin, it is listed from the margin's end.
    [window] = plan_backfill(start, start + RETENTION_MARGIN + HOUR, NOW)
    assert window.start == (NOW - RETENTION + RETENTION_MARGIN + timedelta(seconds=1))


def test_a_window_too_short_to_move_on_is_refused_not_looped_on() -> None:
    """A window no longer than its lead would start each next window where the last began: refused, where it looped
    for ever and held the worker."""
    start = datetime(2026, 6, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="cannot move on"):
        split_windows(start, start + timedelta(hours=1), timedelta(seconds=1))
    assert len(split_windows(start, start + timedelta(hours=1), MIN_WINDOW)) > 1


def test_a_backfill_starting_in_the_future_says_so() -> None:
    """``backfill --start <tomorrow>`` with no ``--end`` was told "--end must be after --start", an option the
    operator never gave; the mistake is the start."""
    from irm_connector.windows import plan_backfill

    with pytest.raises(ValueError, match="starts in the future") as refused:
        plan_backfill(NOW + HOUR, NOW, NOW)
    assert "--end" not in str(refused.value) and "2026" in str(refused.value)
    with pytest.raises(ValueError, match="starts in the future"):
        plan_backfill(NOW + HOUR, NOW + 2 * HOUR, NOW)
    # Given with an offset, the time is told in UTC, as the Z it is written with says.
    from irm_connector.windows import starts_in_the_future, too_far_back

    east = timezone(timedelta(hours=2))
    assert "(2026-11-27T13:00:00Z, and it is now 2026-11-27T12:00:00Z)" in starts_in_the_future(
        (NOW + HOUR).astimezone(east), NOW
    )
    assert too_far_back(datetime(2026, 11, 1, 2, 0, tzinfo=east)).startswith("start 2026-11-01T00:00:00Z ")
    with pytest.raises(ValueError, match="the range is empty"):
        plan_backfill(NOW - HOUR, NOW - 2 * HOUR, NOW)
