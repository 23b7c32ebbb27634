"""The Functions host's queue trigger, imitated: working the content queue without the host (the CLI's
``process``, ``run`` and ``backfill``, the demo, the benchmark and the tests).

The host keeps ``batchSize`` messages in flight and fetches more when fewer than ``newBatchThreshold``
remain, so up to ``batchSize + newBatchThreshold`` run at once. A message whose handler raises becomes
visible again after ``visibilityTimeout``; one that has failed ``maxDequeueCount`` times moves to
``<queue>-poison``.

Those settings are host.json's ``extensions.queues``. host.json sits beside the package, not in it, so
:class:`HostQueueOptions` carries its values as defaults (``tests/unit/test_host_queue_options.py``
keeps the two equal) and reads from the environment the app settings that override host.json in Azure,
``AzureFunctionsJobHost__extensions__queues__<name>``: with or without the host, the queue is worked alike.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import azure.functions as func
from azure.core.exceptions import AzureError
from azure.functions.queue import QueueMessage as FunctionQueueMessage
from azure.storage.queue.aio import QueueClient

from irm_connector.content_queue import UndecodableMessage, create_queue_if_missing, fit_message
from irm_connector.deadline import parse_timespan
from irm_connector.errors import SettingsError, StateError, storage_reason

__all__ = [
    "HOST_SETTINGS",
    "OVERRIDE_PREFIX",
    "HostQueueOptions",
    "HostSetting",
    "QueueWorker",
    "WorkerStats",
    "parse_timespan",
]

log = logging.getLogger(__name__)

Handler = Callable[[func.QueueMessage], Awaitable[Any]]


#: The app settings that override host.json's queue settings: ``AzureFunctionsJobHost__extensions__queues__batchSize``.
OVERRIDE_PREFIX = "AzureFunctionsJobHost__extensions__queues__"


class HostSetting(NamedTuple):
    """One queue setting of host.json: the :class:`HostQueueOptions` field it sets, how an app setting's text
    is read (``form`` says what it must look like), and the least and most values accepted (``most_text``: the most
    as the setting is written)."""

    field: str
    parse: Callable[[str], float]
    form: str
    least: float
    most: float = float("inf")
    most_text: str = ""


#: The queue settings of host.json that the worker imitates, by their name there.
HOST_SETTINGS = {
    # The host refuses a batch over 32, the most messages Storage hands out at once.
    "batchSize": HostSetting("batch_size", int, "a whole number", 1, 32, "32 (the most the Functions host takes)"),
    "newBatchThreshold": HostSetting("new_batch_threshold", int, "a whole number", 0),
    "maxDequeueCount": HostSetting("max_dequeue_count", int, "a whole number", 1),
    # Storage refuses a visibility timeout over 7 days: every retry would fail to put its message back.
    "visibilityTimeout": HostSetting("visibility_timeout", parse_timespan, "a timespan such as 00:00:30", 0, 604800,
                                     "7.00:00:00 (7 days, the most Storage accepts)"),
}


@dataclass(frozen=True)
class HostQueueOptions:
    """``extensions.queues`` of host.json: the defaults are its values."""

    batch_size: int = 8
    new_batch_threshold: int = 4
    max_dequeue_count: int = 5
    visibility_timeout: float = 30.0

    @property
    def concurrency(self) -> int:
        return self.batch_size + self.new_batch_threshold

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> HostQueueOptions:
        """host.json's values with the ``AzureFunctionsJobHost__extensions__queues__<name>`` app settings over
        them. Names match in any case, as the host's configuration matches them; the settings the worker
        does not imitate (``maxPollingInterval``, ``messageEncoding``) are ignored."""
        prefix = OVERRIDE_PREFIX.lower()
        by_name = {prefix + name.lower(): setting for name, setting in HOST_SETTINGS.items()}
        overrides: dict[str, Any] = {}
        problems: list[SettingsError] = []  # every one named at once, as the connector's own settings are
        for name, text in (os.environ if environ is None else environ).items():
            setting = by_name.get(name.lower())
            if setting is None:
                continue
            try:
                value = setting.parse(text)
            except ValueError:
                problems.append(SettingsError(name, f"is not {setting.form}"))
                continue
            if value < setting.least:
                problems.append(SettingsError(name, f"is less than {setting.least:g}"))
            elif value > setting.most:
                problems.append(SettingsError(name, f"is more than {setting.most_text or f'{setting.most:g}'}"))
            else:
                overrides[setting.field] = value
        if problems:
            raise SettingsError.combine(problems)
        return replace(cls(), **overrides)


@dataclass
class WorkerStats:
    processed: int = 0
    failed_attempts: int = 0
    poisoned: int = 0
    #: messages left that this worker could not see when it stopped (put off for later, or held by another)
    left_invisible: int = 0
    #: messages whose last delivery here failed and that no later one settled (processed or parked) before it stopped
    awaiting_retry: int = 0


#: How long an idle worker waits before it looks at the queue again, at first and at most (the host backs off
#: likewise, up to maxPollingInterval).
_IDLE_FIRST = 0.05
_IDLE_LAST = 1.0
#: How long a worker that is to stop on an empty queue waits when the queue still counts messages it cannot
#: see, once the retries it scheduled itself are due: long enough for a message another worker just deleted
#: (the count is approximate) or rescheduled briefly (a refusal's first delays are 5 s). What stays invisible
#: longer was put off for later (up to an hour) or is held by another worker (the function app, a run that was
#: killed): the run stops and says how many, rather than sit silent until they come back.
_INVISIBLE_GRACE = 60.0
#: How long a run that stops once the queue is empty keeps trying a queue that fails (a 5xx, no answer) before it
#: gives up with the error; a refusal (4xx: a role removed, a firewall rule) ends it at once. A run that works
#: the queue for as long as it is left running (`run`) keeps trying, as the host does.
_STORAGE_PATIENCE = 60.0


class _Failing:
    """The queue's own calls failing one after another: tried again a second later, and given up (the error
    raised, for the command's exit 3) at a refusal, or after :data:`_STORAGE_PATIENCE`, unless ``patient``."""

    def __init__(self, *, patient: bool) -> None:
        self._patient = patient
        self._since: float | None = None

    async def again(self, what: str, exc: AzureError) -> None:
        now = time.monotonic()
        self._since = now if self._since is None else self._since
        status = getattr(exc, "status_code", None)
        refused = isinstance(status, int) and 400 <= status < 500 and status not in (408, 429)
        if not self._patient and (refused or now - self._since >= _STORAGE_PATIENCE):
            raise exc
        log.warning("Could not %s (%s); trying again", what, storage_reason(exc))
        await asyncio.sleep(1.0)

    def over(self) -> None:
        self._since = None


class QueueWorker:
    """Runs ``handler`` for the messages of ``queue`` with the host's concurrency, retry and poison rules."""

    def __init__(
        self,
        queue: QueueClient,
        poison: QueueClient,
        handler: Handler,
        options: HostQueueOptions,
        *,
        lock_seconds: int = 600,
    ) -> None:
        self._queue = queue
        self._poison = poison
        self._handler = handler
        self._options = options
        self._lock = lock_seconds
        self.stats = WorkerStats()
        #: messages this worker failed to park: back past maxDequeueCount, they did not crash a delivery
        self._unparked: set[str] = set()
        #: messages this worker copied to the poison queue but could not remove from the content queue
        self._copied: set[str] = set()
        #: when the messages this worker put back for a retry are visible again (monotonic)
        self._retries_due = 0.0
        #: messages whose last delivery here failed, until one settles them
        self._failed: set[str] = set()

    async def run(
        self,
        *,
        max_messages: int | None = None,
        until_empty: bool | asyncio.Event = True,
        stop: asyncio.Event | None = None,
    ) -> WorkerStats:
        """Process messages until the queue is empty (or ``max_messages`` were handled, or ``stop`` is set).

        ``until_empty`` as an event: keep waiting on an empty queue until it is set (something is still
        filling the queue, as a poller running beside the worker), then stop when the queue is empty."""
        in_flight: set[asyncio.Task[None]] = set()
        try:
            return await self._run(in_flight, max_messages, until_empty, stop)
        finally:
            if in_flight:  # finished, also when the queue failed: each holds a message and maybe claims
                await asyncio.gather(*in_flight, return_exceptions=True)
            self.stats.awaiting_retry = len(self._failed)

    async def _run(
        self,
        in_flight: set[asyncio.Task[None]],
        max_messages: int | None,
        until_empty: bool | asyncio.Event,
        stop: asyncio.Event | None,
    ) -> WorkerStats:
        gate = asyncio.Semaphore(self._options.concurrency)
        handled = 0
        idle = _IDLE_FIRST
        unseen_since: float | None = None  # since when the queue counts messages none of which can be received
        failing = _Failing(patient=isinstance(until_empty, asyncio.Event) or not until_empty)
        while not (stop and stop.is_set()):
            if max_messages is not None and handled >= max_messages:
                break
            room = self._options.concurrency - len(in_flight)
            want = min(32, room, (max_messages - handled) if max_messages is not None else 32)
            messages = []
            if want > 0:
                try:
                    messages = [
                        m
                        async for m in self._queue.receive_messages(
                            messages_per_page=want, max_messages=want, visibility_timeout=self._lock
                        )
                    ]
                except AzureError as exc:
                    await failing.again("read the queue", exc)
                    continue
                failing.over()
            for message in messages:
                handled += 1
                await gate.acquire()
                task = asyncio.create_task(self._one(message))
                in_flight.add(task)

                def finished(done: asyncio.Task[None]) -> None:
                    in_flight.discard(done)
                    gate.release()

                task.add_done_callback(finished)
            if messages:
                idle = _IDLE_FIRST
                unseen_since = None
                continue
            if in_flight:
                await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                properties = await self._queue.get_queue_properties()
            except AzureError as exc:
                await failing.again("read the queue length", exc)
                continue
            failing.over()
            done = until_empty.is_set() if isinstance(until_empty, asyncio.Event) else until_empty
            left = properties.approximate_message_count
            if not left and done:
                break
            if left and done and time.monotonic() >= self._retries_due:
                unseen_since = unseen_since if unseen_since is not None else time.monotonic()
                if time.monotonic() - unseen_since >= _INVISIBLE_GRACE:
                    self.stats.left_invisible = left
                    break
            else:
                unseen_since = None
            # As the host does on an empty queue: poll again soon, then less and less often.
            await asyncio.sleep(idle)
            idle = min(idle * 2, _IDLE_LAST)
        return self.stats

    async def _one(self, message: Any) -> None:
        body = message.content
        if isinstance(body, UndecodableMessage):
            # The host would fail this message on every delivery; park it at once, saying why.
            # Its text is not logged: written by hand or by another tool, it may hold anything (`poison list` shows it).
            await self._park(message, str(body), "Message %s is not base64 (written without encoding?), %d characters",
                             message.id, len(str(body)))  # fmt: skip
            return
        if message.dequeue_count > self._options.max_dequeue_count:
            # Its last delivery ended without an answer (the worker crashed or was stopped in it), or its parking
            # failed: the host parks such a message without running it again.
            last = ("its parking failed" if message.id in self._unparked | self._copied
                    else "the last ending without an answer (a crash, a stop)")  # fmt: skip
            await self._park(message, body, "Message %s was delivered %d times, %s, and is not run again",
                             message.id, message.dequeue_count, last)  # fmt: skip
            return
        function_message = FunctionQueueMessage(  # type: ignore[no-untyped-call]
            id=message.id,
            body=body.encode("utf-8") if isinstance(body, str) else body,
            dequeue_count=message.dequeue_count,
            pop_receipt=message.pop_receipt,
            insertion_time=message.inserted_on,
            expiration_time=message.expires_on,
        )
        started = time.perf_counter()
        try:
            await self._handler(function_message)
        except Exception as exc:
            self.stats.failed_attempts += 1
            self._failed.add(message.id)
            await self._settled(message, self._after_failure(message, body, exc))
            return
        self._failed.discard(message.id)
        try:
            await self._queue.delete_message(message)
        except AzureError as exc:
            # The message comes back when its lock expires and is processed again: its rows are
            # already marked sent, so that costs a download, not a duplicate.
            log.warning("Could not delete message %s (%s); it will be seen again", message.id, type(exc).__name__)
        self.stats.processed += 1
        log.debug("Message %s done in %.2fs", message.id, time.perf_counter() - started)

    async def _after_failure(self, message: Any, body: str, exc: Exception) -> None:
        """A failed delivery, as the host handles it: back on the queue after the retry delay, or, the last
        attempt, into the poison queue."""
        if message.dequeue_count >= self._options.max_dequeue_count:
            await self._park(message, body, "Message %s failed %d times: %s", message.id, message.dequeue_count, exc)
            return
        log.warning("Message %s failed (attempt %d of %d), retried: %s",
                    message.id, message.dequeue_count, self._options.max_dequeue_count, exc)  # fmt: skip
        delay = int(self._options.visibility_timeout)
        self._retries_due = max(self._retries_due, time.monotonic() + delay)
        await self._queue.update_message(message, visibility_timeout=delay)

    async def _settled(self, message: Any, work: Awaitable[None]) -> None:
        """``work``, which retries ``message``. Storage refusing it loses nothing: the message comes back when its
        lock ends, and is retried (or parked) then."""
        try:
            await work
        except AzureError as error:
            log.warning("Could not retry message %s (%s); it comes back in %d s, when its lock ends",
                        message.id, type(error).__name__, self._lock)  # fmt: skip

    async def _park(self, message: Any, body: str, why: str, *args: object) -> None:
        """``message`` into the poison queue, as ``body``, and off the content queue; one error line says ``why``
        and whether it was moved (Storage refusing it loses nothing: the message comes back when its lock ends)."""
        copied = message.id in self._copied
        try:
            if not copied:
                await create_queue_if_missing(self._poison)
                # A message not written base64 grows by a third when parked, past a queue message's 64 KiB when it
                # was over 48 KiB: refused, it came back every lock's end for ever.
                await self._poison.send_message(fit_message(body), time_to_live=-1)
                copied = True
                self._copied.add(message.id)
                self._unparked.discard(message.id)
                self._failed.discard(message.id)
                self.stats.poisoned += 1
            await self._queue.delete_message(message)
        except (AzureError, StateError) as error:
            cause = storage_reason(error) if isinstance(error, AzureError) else str(error)
            if copied:
                # Said "not moved" and parked again when it came back, the poison queue held it twice, and the run
                # counted it as waiting for a retry rather than parked.
                log.error(f"{why}; copied to %s, but removing it from %s failed (%s): it comes back in %d s, when "
                          "its lock ends, to be removed by this run if it still runs (else parked again: the poison "
                          "queue then holds it twice)", *args, self._poison.queue_name, self._queue.queue_name,
                          cause, self._lock)  # fmt: skip
                return
            log.error(f"{why}; could not move it to %s (%s): it comes back in %d s, when its lock ends",
                      *args, self._poison.queue_name, cause, self._lock)  # fmt: skip
            self._unparked.add(message.id)
            return
        self._copied.discard(message.id)
        log.error(f"{why}; moved to %s", *args, self._poison.queue_name)
