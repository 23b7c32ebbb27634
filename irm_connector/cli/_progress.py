"""Progress of the long commands (`backfill`, `process`): tqdm's bar at a terminal; anywhere else (a build agent's
log, a pipe, a file) a plain line every half minute while the work runs, stalled or not. tqdm alone is silent there,
and a backfill of a week said nothing for as long as it ran; a bar written to a log instead is one line of carriage
returns."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import TextIO

from tqdm import tqdm

__all__ = ["Progress"]

#: Seconds between two lines where there is no terminal.
LINE_EVERY = 30.0


class Progress:
    """Counts ``unit``s done of ``total``, with a few named counts beside (``set_postfix``)."""

    def __init__(self, *, total: int, desc: str, unit: str, file: TextIO | None = None,
                 every: float | None = None) -> None:  # fmt: skip
        self._file = file if file is not None else sys.stderr
        self._total, self._desc, self._unit = total, desc, unit
        self._every = LINE_EVERY if every is None else every
        self._done = 0
        self._postfix: dict[str, int] = {}
        self._last = time.monotonic()
        at_terminal = hasattr(self._file, "isatty") and self._file.isatty()
        self._bar = tqdm(total=total, desc=desc, unit=unit, file=self._file, leave=False) if at_terminal else None
        # A step that stalls (a Retry-After, one slow blob) brings no update: the line comes on time all the same.
        self._tick: asyncio.TimerHandle | None = None
        if self._bar is None and self._every > 0:
            with contextlib.suppress(RuntimeError):  # no event loop: lines come with the updates only
                self._tick = asyncio.get_running_loop().call_later(self._every, self._on_time)

    def update(self, done: int = 1) -> None:
        self._done += done
        self._total = max(self._total, self._done)  # messages queued while `process` runs are worked too
        if self._bar is not None:
            self._bar.update(done)
        self._line_if_due()

    def set_postfix(self, **counts: int) -> None:
        self._postfix = counts
        if self._bar is not None:
            self._bar.set_postfix(counts, refresh=False)
        self._line_if_due()

    def close(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        if self._bar is not None:
            self._bar.close()

    def _on_time(self) -> None:
        self._line_if_due()
        wait = max(0.01, self._every - (time.monotonic() - self._last))  # a line an update printed counts
        self._tick = asyncio.get_running_loop().call_later(wait, self._on_time)

    def _line_if_due(self) -> None:
        if self._bar is not None or time.monotonic() - self._last < self._every:
            return
        self._last = time.monotonic()
        beside = "".join(f", {name} {count:,}" for name, count in self._postfix.items())
        print(f"{self._desc}: {self._done:,} of {self._total:,} {self._unit}(s){beside}", file=self._file, flush=True)
