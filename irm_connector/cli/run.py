"""run: the function app without the Functions host. Polls on ``POLL_SCHEDULE`` (NCRONTAB, six fields with
seconds first, as the timer trigger reads it) and works the content queue continuously with the host's
concurrency, retry and poison rules. SIGTERM or Ctrl-C stops it: the poll and the messages in flight finish,
then it exits 0."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import azure.functions as func
from azure.functions.timer import TimerRequest
from croniter import CroniterError, croniter

from irm_connector import handlers
from irm_connector.content_queue import create_queue_if_missing
from irm_connector.errors import ConnectorError, PollError, SettingsError, UsageError
from irm_connector.models import PARKED_OUTCOMES, PollReport
from irm_connector.settings import Settings

from ._common import EXIT_OK, GracefulStop, emit, iso, queue_options, storage
from ._preflight import ready
from .queue_trigger import QueueWorker

__all__ = ["Schedule", "run"]

log = logging.getLogger("irm_connector.cli")

DEFAULT_SCHEDULE = "0 */5 * * * *"


class Schedule:
    """An NCRONTAB expression: ``{second} {minute} {hour} {day} {month} {day-of-week}`` (or the five fields
    of classic cron, without seconds)."""

    def __init__(self, expression: str) -> None:
        self.expression = expression.strip()
        fields = self.expression.split()
        if len(fields) not in (5, 6) or not croniter.is_valid(self.expression, second_at_beginning=len(fields) == 6):
            raise SettingsError(
                "POLL_SCHEDULE",
                f"is not an NCRONTAB expression ({len(fields)} fields; write six, seconds first, e.g. '0 */5 * * * *')",
            )
        self._seconds_first = len(fields) == 6
        try:  # valid fields may still name no date at all (30 February): said now, not at the first wait
            self.next_after(datetime.now(UTC))
        except (CroniterError, ValueError) as exc:
            raise SettingsError("POLL_SCHEDULE", "names no time that ever comes (such as 30 February)") from exc

    @classmethod
    def from_settings(cls) -> Schedule:
        """``POLL_SCHEDULE``, as the Functions host reads it (its default when unset)."""
        return cls(os.environ.get("POLL_SCHEDULE", "") or DEFAULT_SCHEDULE)

    def next_after(self, moment: datetime) -> datetime:
        # Day of month and day of week both, as NCrontab reads them (the host's): "1-7 ... 1" is the first Monday,
        # where cron's default (either one) fires on each of the first seven days and on every Monday.
        it = croniter(self.expression, moment, second_at_beginning=self._seconds_first, day_or=False)
        value = it.get_next(datetime)
        assert isinstance(value, datetime)
        return value if value.tzinfo else value.replace(tzinfo=UTC)


async def _poll_loop(schedule: Schedule, stop: asyncio.Event, poll_now: bool, counts: dict[str, int]) -> None:
    first = poll_now
    while not stop.is_set():
        if not first:
            due = schedule.next_after(datetime.now(UTC))
            wait = max(0.0, (due - datetime.now(UTC)).total_seconds())
            log.info("Next poll at %s", iso(due))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)
            if stop.is_set():
                return
        first = False
        # A stop ends the poll in flight too, as SIGTERM ends `poll` (its lease released, the watermark where its
        # last whole window left it): waited for, a slow API kept `run` for up to POLL_TIME_BUDGET, past a
        # supervisor's grace period, and its SIGKILL left the lease held and no result printed.
        polling: asyncio.Future[PollReport] = asyncio.ensure_future(handlers.poll(TimerRequest(past_due=False)))
        stopping = asyncio.ensure_future(stop.wait())
        either: set[asyncio.Future[Any]] = {polling, stopping}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            polling.cancel()  # abandoned (a second signal): the poll with it
            raise
        finally:
            stopping.cancel()
        if not polling.done():
            polling.cancel()
            try:
                await polling
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # this loop abandoned meanwhile (a second signal), not only the poll ended
            except Exception as exc:  # its own failure on the way out: the stop is what counts
                log.debug("The poll in flight ended with %s as it stopped", type(exc).__name__)
            log.info("The poll in flight was stopped; the next run lists from where it left off")
            return
        try:
            report = polling.result()
            counts["polls"] += 1
            counts["queued"] += report.blobs_queued
        except ConnectorError as exc:
            counts["polls"] += 1
            counts["poll_errors"] += 1
            if isinstance(exc, PollError):  # one content type failed: what the others queued was queued all the same
                counts["queued"] += exc.report.blobs_queued
            log.error("Poll failed (the next one is on schedule): %s", exc)
        except Exception as exc:
            # A fault of the connector's own: the next poll runs on schedule, as under the Functions host; ending
            # here would abandon the messages in flight and their claims. The poller (or the client startup) has
            # logged its traceback already: a second copy here would read as a second fault.
            counts["polls"] += 1
            counts["poll_errors"] += 1
            log.error("Poll failed unexpectedly with %s (the next one is on schedule)", type(exc).__name__)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.schedule:
        try:
            schedule = Schedule(args.schedule)
        except SettingsError as exc:  # given on the command line, not in the settings
            raise UsageError(f"--schedule {exc.problem}") from None
    else:
        schedule = Schedule.from_settings()
    options = queue_options(args.retry_delay)
    await ready(settings, management=True, ingestion=True)
    stop = asyncio.Event()
    counts = {"polls": 0, "poll_errors": 0, "queued": 0}
    # Counted, not kept: a run lasts for days. The worker counts a message the processor parked or put back for
    # later as done (its delivery succeeded); the summary says which they were, as `process` does.
    outcomes: Counter[str] = Counter()

    async def process(message: func.QueueMessage) -> None:
        outcomes[(await handlers.process(message)).outcome] += 1

    with GracefulStop(stop).installed():  # before the line that says a signal stops it
        # On stderr with --json: stdout holds the one JSON document printed when it stops.
        print(
            f"running: polling on '{schedule.expression}', working {settings.content_queue}; Ctrl-C or SIGTERM stops",
            file=sys.stderr if getattr(args, "json", False) else sys.stdout,
            flush=True,
        )
        async with storage(settings) as store:
            await create_queue_if_missing(store.main)
            worker = QueueWorker(store.main, store.poison, process, options)

            async def work() -> None:
                try:
                    await worker.run(until_empty=False, stop=stop)
                finally:
                    stop.set()  # a worker that died stops the poller too: the exit code says why

            await asyncio.gather(_poll_loop(schedule, stop, args.poll_now, counts), work())
    stats = worker.stats
    # The host moves a message that failed too often; the processor parks one no retry could help at once.
    poisoned = stats.poisoned + sum(n for outcome, n in outcomes.items() if outcome in PARKED_OUTCOMES)
    document = {
        "stopped": True,
        **counts,
        "processed": stats.processed,
        "rescheduled": outcomes["rescheduled"],
        "failed_attempts": stats.failed_attempts,
        "poisoned": poisoned,
        "awaiting_retry": stats.awaiting_retry,
        "outcomes": dict(outcomes),
    }
    text = (
        f"stopped: {counts['polls']} poll(s) ({counts['poll_errors']} failed), {counts['queued']} blob(s) queued, "
        f"{stats.processed} message(s) processed, {poisoned} poisoned"
    )
    if outcomes["rescheduled"]:
        text += (f"\n{outcomes['rescheduled']} time(s) a message was put back for later: Logs Ingestion refused or "
                 "throttled its rows, the Management API asked for a wait, or another delivery held its records (the "
                 "log lines say which)")  # fmt: skip
    if stats.awaiting_retry:
        # Put back on the queue after a failed delivery, with a retry not yet due: not lost, but not sent either,
        # and a stop that says only "processed" reads as all done.
        text += (f"\n{stats.awaiting_retry} message(s) failed and wait on the queue for a retry: the function app, "
                 "or the next `run` or `process`, takes them when it is due")  # fmt: skip
    emit(args, document, text)
    return EXIT_OK
