"""Progress of the long commands (`backfill`, `process`): tqdm's bar at a terminal; anywhere else (a build agent's
log, a pipe, a file) a plain line at most every half minute, as the work advances. tqdm alone is silent there, and
a backfill of a week said nothing for as long as it ran; a bar written to a log instead is one line of carriage
returns."""

from __future__ import annotations

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

    def update(self, done: int = 1) -> None:
        self._done += done
        if self._bar is not None:
            self._bar.update(done)
        self._line_if_due()

    def set_postfix(self, **counts: int) -> None:
        self._postfix = counts
        if self._bar is not None:
            self._bar.set_postfix(counts, refresh=False)
        self._line_if_due()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def _line_if_due(self) -> None:
        if self._bar is not None or time.monotonic() - self._last < self._every:
            return
        self._last = time.monotonic()
        beside = "".join(f", {name} {count:,}" for name, count in self._postfix.items())
        print(f"{self._desc}: {self._done:,} of {self._total:,} {self._unit}(s){beside}", file=self._file, flush=True)
