"""The time an invocation has left: every wait and retry inside it is bounded by it.

A timed-out invocation makes the Functions host restart the worker, which kills every other invocation on
it half-way (rows sent but not marked, sent again). So each invocation takes a :class:`Deadline` at its
start, the function timeout ahead, and stops waiting or retrying while there is still :attr:`Deadline.margin`
left to release its claims and record why it failed: it then raises :class:`DeadlineError` and the host
retries the message.

The Management API and ingestion clients are handed the deadline. Storage calls are many and deep (claims,
watermarks, leases, the queue), so the deadline reaches them through the context instead: inside
:meth:`Deadline.applied` the storage clients' transport (:mod:`._bounded`) ends every try and every retry
wait within it, and a Management API call handed no deadline (starting a subscription) keeps it too; inside
:func:`cleaning_up` storage calls may use the margin, to commit what was sent and free what was not.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from .errors import ConnectorError, DeadlineError

__all__ = [
    "FUNCTION_TIMEOUT",
    "TIMEOUT_SETTING",
    "Deadline",
    "carried_after",
    "carried_through",
    "cleaning_up",
    "current_deadline",
    "function_timeout",
    "parse_timespan",
    "timeout_override",
    "within",
]

_T = TypeVar("_T")

log = logging.getLogger(__name__)

#: host.json ``functionTimeout``: no invocation runs longer (a test keeps the two equal).
FUNCTION_TIMEOUT = timedelta(minutes=10)

#: The app setting that overrides host.json's ``functionTimeout`` in Azure (the host reads it first).
TIMEOUT_SETTING = "AzureFunctionsJobHost__functionTimeout"
#: The share of the timeout kept back for the way out (releasing claims, recording the failure), at most
#: MARGIN_MOST seconds: a minute of a 10-minute timeout, 3 s of a 30-second one.
MARGIN_SHARE = 0.1
MARGIN_MOST = 60.0
#: What cleaning up leaves of the margin: the host stops the invocation at its timeout, not after.
CLEANUP_SLACK_SHARE = 0.25

_current: ContextVar[Deadline | None] = ContextVar("irm_connector_deadline", default=None)


def current_deadline() -> Deadline | None:
    """The deadline of the running invocation (see :meth:`Deadline.applied`), if any."""
    return _current.get()


@contextmanager
def cleaning_up() -> Iterator[None]:
    """Storage calls inside may use the margin: committing rows that were sent (else they are sent again),
    releasing claims, recording why the invocation failed. Outside any deadline, a no-op."""
    deadline = _current.get()
    if deadline is None or deadline.cleanup:
        yield
        return
    with Deadline(deadline.end, deadline.margin * CLEANUP_SLACK_SHARE, cleanup=True, then=deadline.then).applied():
        yield


async def carried_through(
    cleanup: Coroutine[Any, Any, _T], *, lost: str, extra: Mapping[str, str] | None = None
) -> _T:
    """``cleanup`` in the margin (:func:`cleaning_up`), and carried to its end through a cancel that comes meanwhile
    (the command line's second Ctrl-C, a lost lease), which is raised after it: cut, it left rows sent but unmarked,
    or blobs queued but unmarked, sent or queued again. Its failure, once cancelled, is logged saying what is
    ``lost`` (a service's failure as a warning, a fault of the code as an error with its stack): the cancel is what
    the caller hears."""
    with cleaning_up():
        task = asyncio.ensure_future(cleanup)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await _failure_told(task, lost, extra)
        raise


async def carried_after(
    cleanup: Coroutine[Any, Any, object], *, lost: str, extra: Mapping[str, str] | None = None
) -> None:
    """:func:`carried_through`, for a caller whose work already failed or was cancelled: what it raises next is
    what its own caller must hear (a throttle decides what becomes of a message), so the cleanup's failure is
    logged as in :func:`carried_through`."""
    await _failure_told(carried_through(cleanup, lost=lost, extra=extra), lost, extra)


async def _failure_told(task: Awaitable[object], lost: str, extra: Mapping[str, str] | None) -> None:
    try:
        await task
    except ConnectorError as exc:  # told here: the caller's failure or cancel goes on in its place
        log.warning("Cleaning up failed too (%s: %s): %s", type(exc).__name__, exc, lost,
                    extra=dict(extra or {}))  # fmt: skip
    except Exception:  # a fault of the code, not of a service: its stack, for whoever fixes it
        log.exception("Cleaning up failed too: %s", lost, extra=dict(extra or {}))


async def within(
    what: str, call: Awaitable[_T], *, deadline: Deadline | None = None, error: type[DeadlineError] = DeadlineError
) -> _T:
    """``call``, cut short with ``error`` when it would outlast ``deadline`` (by default the context's; with
    none, ``call`` is not bounded)."""
    deadline = deadline if deadline is not None else _current.get()
    if deadline is None:
        return await call
    usable = deadline.usable()
    if usable <= 0:
        if asyncio.iscoroutine(call):
            call.close()  # never started: no "was never awaited" warning
        raise error(deadline.spent_text(what))
    timer = asyncio.timeout(usable)
    try:
        async with timer:
            return await call
    except TimeoutError as exc:
        if timer.expired():
            raise deadline.expire(what, error=error) from exc
        raise


def parse_timespan(text: str) -> float:
    """A .NET TimeSpan as the host reads one, ``[d.]hh:mm[:ss[.fff]]`` or a number of days, in seconds: read as
    ``hh:mm:ss`` alone, ``00:05`` (five minutes to the host) failed every invocation as no timespan."""
    match = re.fullmatch(r"(\d+)|(?:(\d+)\.)?(\d+):(\d+)(?::(\d+(?:\.\d+)?))?", text.strip())
    if not match:
        raise ValueError(f"not a timespan: {text!r}")
    only_days, days, hours, minutes, seconds = match.groups()
    if only_days is not None:
        return int(only_days) * 86400.0
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds or 0)


def timeout_override(env: Mapping[str, str]) -> str:
    """The app setting over host.json's ``functionTimeout``, its name in any case, as the host's configuration
    matches names: ``AzureFunctionsJobHost__FunctionTimeout`` shortened the host's timeout, and the invocations'
    deadlines, read under the one spelling, kept host.json's."""
    wanted = TIMEOUT_SETTING.lower()
    return next((value.strip() for name, value in env.items() if name.lower() == wanted and value.strip()), "")


def function_timeout() -> float:
    """The function timeout in seconds: host.json's (:data:`FUNCTION_TIMEOUT`) or the app setting over it."""
    text = timeout_override(os.environ)
    if text:
        try:
            return parse_timespan(text)
        except ValueError:
            pass  # the host refuses to start with a bad timespan; this is never reached in Azure
    return FUNCTION_TIMEOUT.total_seconds()


#: What comes of a queue message's invocation that its deadline cuts short.
_RETRIED = "the message is retried"


@dataclass(frozen=True)
class Deadline:
    """When the invocation must have ended (monotonic seconds), and the margin kept back before it."""

    end: float
    margin: float = field(default=0.0)
    #: the margin is already what cleaning up may not use (:func:`cleaning_up`)
    cleanup: bool = False
    #: what comes of the work when the deadline cuts it short, for the operator reading the error
    then: str = _RETRIED

    @classmethod
    def for_invocation(cls, timeout: float | None = None, *, then: str = _RETRIED) -> Deadline:
        seconds = function_timeout() if timeout is None else timeout
        return cls(time.monotonic() + seconds, min(seconds * MARGIN_SHARE, MARGIN_MOST), then=then)

    @contextmanager
    def applied(self) -> Iterator[Deadline]:
        """Inside, every storage call of this task (and of the tasks it starts) ends within this deadline."""
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)

    def usable(self) -> float:
        """Seconds left for work, the margin kept back (0 when there is none)."""
        return max(0.0, self.end - self.margin - time.monotonic())

    def cap(self, seconds: float) -> float:
        """``seconds``, or less when less time is usable."""
        return min(seconds, self.usable())

    def allows(self, seconds: float) -> bool:
        """Whether a wait of ``seconds`` ends before the margin."""
        return seconds < self.usable()

    def check(self, what: str) -> None:
        """Raise :class:`DeadlineError` if no time is usable for ``what``."""
        if self.usable() <= 0:
            raise DeadlineError(self.spent_text(what))

    def spent_text(self, what: str) -> str:
        return f"{what}: the invocation's time is up (margin {self.margin:.0f} s kept to clean up)"

    def expire(
        self, what: str, seconds: float | None = None, *, error: type[DeadlineError] = DeadlineError
    ) -> DeadlineError:
        """The ``error`` for a wait of ``seconds`` that the time left cannot hold (None: a call cut short)."""
        if seconds is None:
            return error(
                f"{what}: cut short {self.margin:.0f} s before the invocation's timeout, to clean up; {self.then}"
            )
        return error(
            f"{what}: waiting {seconds:.0f} s more does not fit the {self.usable():.0f} s the invocation has "
            f"left before its timeout; {self.then}"
        )
