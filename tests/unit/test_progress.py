"""The long commands' progress: a bar at a terminal, plain lines in a log."""

from __future__ import annotations

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
