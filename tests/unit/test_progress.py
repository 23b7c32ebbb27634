"""The long commands' progress: a bar at a terminal, plain lines in a log."""

from __future__ import annotations

import asyncio
import io
import os
import pty

from irm_connector.cli._progress import Progress


def test_at_a_terminal_the_bar_is_drawn_and_no_plain_line() -> None:
    controller, terminal = pty.openpty()
    try:
        with os.fdopen(terminal, "w") as tty:
            bar = Progress(total=3, desc="processed", unit="blob", file=tty, every=0.0)
            bar.update()
            bar.update()
            bar.close()
        text = os.read(controller, 65536).decode()
    finally:
        os.close(controller)
    assert "processed" in text and "\r" in text, text
    assert "processed: 1 of 3 blob(s)" not in text, text


def test_in_a_log_a_plain_line_comes_at_most_once_an_interval() -> None:
    log = io.StringIO()
    bar = Progress(total=3, desc="processed", unit="blob", file=log, every=3600.0)
    bar.update()
    bar.set_postfix(queued=2)
    bar.close()
    assert log.getvalue() == ""  # within the first interval: nothing yet
    bar = Progress(total=1200, desc="windows listed", unit="window", file=log, every=0.0)
    bar.update(1000)
    bar.set_postfix(queued=1500, listed=2000)
    bar.close()
    assert log.getvalue().splitlines() == [
        "windows listed: 1,000 of 1,200 window(s)",
        "windows listed: 1,000 of 1,200 window(s), queued 1,500, listed 2,000",
    ]


async def test_in_a_log_a_stalled_step_still_gets_its_line_and_none_comes_after_the_end() -> None:
    """A step that stalls (a Retry-After, one slow blob) brings no update: a line came only when work advanced."""
    log = io.StringIO()
    bar = Progress(total=4, desc="processed", unit="blob", file=log, every=0.05)
    bar.update()
    for _ in range(100):  # the first line is due after 0.05 s; a busy machine may be late with it
        await asyncio.sleep(0.05)
        if log.getvalue():
            break
    bar.close()
    ended = log.getvalue()
    assert ended.startswith("processed: 1 of 4 blob(s)\n"), ended
    await asyncio.sleep(0.2)
    assert log.getvalue() == ended


def test_work_that_grows_while_it_runs_is_not_counted_past_its_total() -> None:
    """Messages queued while `process` runs are worked too: the line read "5 of 4"."""
    log = io.StringIO()
    bar = Progress(total=4, desc="processed", unit="blob", file=log, every=0.0)
    bar.update(5)
    bar.close()
    assert log.getvalue() == "processed: 5 of 5 blob(s)\n"
