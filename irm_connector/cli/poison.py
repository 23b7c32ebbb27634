"""poison list | requeue | purge: the dead messages, why each failed, and sending them back."""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.queue import QueueMessage

from irm_connector.content_queue import Delivery, create_queue_if_missing
from irm_connector.errors import StateError
from irm_connector.redaction import redact
from irm_connector.settings import Settings
from irm_connector.state import Failure, FailureStore, message_key

from ._common import EXIT_FAILED, EXIT_OK, Storage, UsageError, confirm, emit, iso, storage
from ._preflight import ready

__all__ = ["poison"]

#: How long a poison message being requeued or purged is hidden from other readers (renewed when needed).
LOCK_SECONDS = 60

log = logging.getLogger("irm_connector.cli")


def _describe(message: Any, failures: dict[str, Failure]) -> dict[str, Any]:
    text = message.content if isinstance(message.content, str) else str(message.content)
    delivery = Delivery.decode(text)
    key = message_key(delivery)
    content_id = content_type = created = ""
    if delivery.message is not None:
        blob = delivery.message.blob
        content_id, content_type, created = blob.content_id, blob.content_type, iso(blob.content_created) or ""
    failure = failures.get(key)
    return {
        "id": message.id,
        "inserted": message.inserted_on,
        "content_type": content_type,
        "content_id": content_id,
        "content_created": created,
        "reason": failure.reason if failure else (
            "unknown: no failure was recorded for this message (it failed where nothing could record it: the "
            "settings or the connector's clients were broken, and its log lines 'Configuration error: …' or 'The "
            "connector could not start: …' say why; or the host parked it, its last attempt cut off by "
            "functionTimeout or a worker crash, or its text one the host could not decode; look in the app's log "
            f"(Application Insights) at {iso(message.inserted_on) or 'the time it was parked'}, where the message had "
            "the id it had on the content queue, not this one)"
        ),
        "attempts": failure.attempts if failure else None,
        "failed_at": failure.time if failure else None,
        # Not a content notification: written by hand or by another tool, it may hold a secret; masked as any output.
        "text": redact(text)[:200] if not content_id else None,  # masked whole: a secret cut short is not masked
    }


async def _list(args: argparse.Namespace, settings: Settings, store: Storage, failures: FailureStore) -> int:
    depth = await store.depth(store.poison)
    messages: list[Any] = []
    if depth:
        try:
            messages = list(await store.poison.peek_messages(max_messages=args.limit))
        except ResourceNotFoundError:
            messages = []
    known = await failures.list_failures() if messages else {}
    items = [_describe(m, known) for m in messages]
    lines = [f"{settings.poison_queue}: {depth} message(s)" + (f", showing {len(items)}" if depth > len(items) else "")]
    if len(items) < min(depth, args.limit):
        lines.append(f"  {_held(min(depth, args.limit) - len(items), settings.poison_queue)}")
    for item in items:
        what = f"{item['content_type']} {item['content_id']}" if item["content_id"] else f"unreadable: {item['text']!r}"
        attempts = f", {item['attempts']} attempt(s)" if item["attempts"] else ""
        lines.append(f"{item['id']}  {what}")
        lines.append(f"    reason{attempts}: {item['reason']}")
    readable = sum(1 for item in items if item["content_id"])
    if readable:
        lines.append("send them back with `irm-connector poison requeue --all` (or by ID)")
    if readable < len(items):
        # requeue leaves these where they are: it sends back content notifications only.
        lines.append(f"{len(items) - readable} not a content notification: nothing can process them and requeue "
                     "leaves them; `irm-connector poison purge` deletes them (with every other poison message: "
                     "requeue those first)")  # fmt: skip
    emit(args, {"queue": settings.poison_queue, "depth": depth, "messages": items}, "\n".join(lines))
    return EXIT_OK


class _Walk:
    """Receives every poison message once and hands each match to ``act`` while this run holds it.

    A message is hidden for ``lock_seconds`` when it is received. Acting on each match in the page that
    received it (and renewing the hold of one whose turn comes late) means a queue of any length never shows
    this run a message it already sent: the whole queue is not held at once. A message that comes back all
    the same (its delete was refused) is deleted, never sent twice. Others are skipped, and given back at the
    end; the walk stops when the queue is empty, or when every message it holds back came round again without
    a new one. A message parked after ``counted`` (the queue's time when it was counted) is one of those skipped:
    nobody has seen why it failed, and it takes no place of a counted one in :meth:`unseen`.
    """

    def __init__(self, store: Storage, lock_seconds: int, *, counted: datetime) -> None:
        self.store = store
        self.lock = lock_seconds
        self.counted = counted
        self.others: dict[str, QueueMessage] = {}
        #: the skipped messages parked after the count
        self.since: set[str] = set()
        self.acted: set[str] = set()
        self._refused: dict[str, QueueMessage] = {}  # message id -> its latest receipt, while its delete is refused

    @property
    def undeleted(self) -> list[str]:
        """The messages acted on whose delete was refused at their last try: each once, however often it was."""
        return list(self._refused)

    async def run(
        self, matches: Callable[[QueueMessage], bool], act: Callable[[QueueMessage], Awaitable[None]]
    ) -> None:
        stale = 0  # messages received again since the last one seen for the first time
        try:
            while True:
                page = await self._receive()
                received = time.monotonic()
                fresh = [m for m in page if m.id not in self.others and m.id not in self.acted]
                for message in page:
                    if message.id in self.others:
                        self.others[message.id] = message  # the latest receipt gives it back at the end
                    elif message.id not in self.acted and not _parked_before(message, self.counted):
                        self.others[message.id] = message
                        self.since.add(message.id)
                    elif message.id not in self.acted and not matches(message):
                        self.others[message.id] = message
                    else:
                        await self._handle(message, received, act)
                stale = 0 if fresh else stale + len(page)
                # Done when nothing is left, or when every message held back came round again without a
                # new one among them (a long walk outlives the holds; what comes back first is no sign).
                if not page or (not fresh and stale >= len(self.others) + len(self._refused)):
                    return
        finally:
            # The skipped, and those whose delete was refused: `poison list` shows them at once, not after the hold.
            for message in [*self.others.values(), *self._refused.values()]:
                # Refused when its hold ran out and someone received it since: it is visible anyway.
                with contextlib.suppress(HttpResponseError):
                    await self.store.poison.update_message(message, visibility_timeout=0)

    def unseen(self, depth: int) -> int:
        """How many of ``depth`` messages, counted before the walk, it never received: hidden by another reader
        (a `poison` command running, or one stopped less than :data:`LOCK_SECONDS` ago) all along."""
        return max(0, depth - len((self.acted | self.others.keys()) - self.since))

    async def _receive(self) -> list[QueueMessage]:
        try:
            return [
                m
                async for m in self.store.poison.receive_messages(
                    messages_per_page=32, max_messages=32, visibility_timeout=self.lock
                )
            ]
        except ResourceNotFoundError:
            return []  # no poison queue: nothing to do

    async def _handle(
        self, message: QueueMessage, received: float, act: Callable[[QueueMessage], Awaitable[None]]
    ) -> None:
        if time.monotonic() - received > self.lock / 2:
            # Its turn came late in a slow page: hold it again (a fresh receipt) before acting on it.
            try:
                message = await self.store.poison.update_message(message, visibility_timeout=self.lock)
            except HttpResponseError:
                return  # someone else received it meanwhile; it is theirs now
        if message.id not in self.acted:
            await act(message)
            self.acted.add(message.id)
        try:
            await self.store.poison.delete_message(message)
        except HttpResponseError as exc:
            log.warning(
                "Could not delete poison message %s after acting on it (HTTP %s): purge it, do not requeue it again",
                message.id,
                exc.status_code,
            )
            self._refused[message.id] = message
        else:
            self._refused.pop(message.id, None)


def _text(message: QueueMessage) -> str:
    return message.content if isinstance(message.content, str) else str(message.content)


def _content_id(message: QueueMessage) -> str:
    parsed = Delivery.decode(_text(message)).message
    return parsed.blob.content_id if parsed is not None else ""


def _parked_before(message: QueueMessage, when: datetime) -> bool:
    """Whether ``message`` was surely in the poison queue at ``when`` (the queue's own time, a whole second, as the
    message's is): parked in an earlier second. One of ``when``'s own second may have come just after."""
    return message.inserted_on is None or message.inserted_on < when


async def _requeue(args: argparse.Namespace, settings: Settings, store: Storage, failures: FailureStore) -> int:
    wanted = None if args.all else set(args.ids)
    # The queue's time at the start: what is parked after it is left, as purge leaves it. With the function app
    # running, a message requeued here that fails again comes back under a new id while a long walk goes on, and
    # would be requeued a second time, and again for as long as the walk lasts.
    depth, started = await store.depth_at(store.poison, as_a_second_begins=True)
    await create_queue_if_missing(store.main)
    done: list[dict[str, Any]] = []
    kept: list[str] = []

    def named(message: QueueMessage) -> bool:
        return wanted is None or message.id in wanted or _content_id(message) in wanted - {""}

    def matches(message: QueueMessage) -> bool:
        if not named(message):
            return False
        if Delivery.decode(_text(message)).message is None:
            # Not a content notification: the processor would park it again at once, whatever was fixed.
            kept.append(message.id)
            return False
        return True

    async def send_back(message: QueueMessage) -> None:
        delivery = Delivery.decode(_text(message))
        parsed, text = delivery.message, delivery.text
        if parsed is not None:
            # Parked once its put-offs for throttling ran out: sent back with them counted, the next throttle would
            # skip them and park it again within minutes. A requeue is the operator's word that it is over.
            # And it is queued now: with the day it was first queued, `status` and the OldestQueuedSeconds rule
            # called a message sent back a minute ago a backlog of days.
            text = replace(parsed, put_offs=0, queued_at=datetime.now(UTC)).encode()
        # The main queue client base64-encodes, as the runtime's ContentQueue does and the trigger expects.
        await store.main.send_message(text, time_to_live=-1)
        done.append({"id": message.id, "content_id": parsed.blob.content_id if parsed is not None else ""})
        try:
            await failures.delete_failure(message_key(delivery))
        except StateError as exc:
            # Sent back already: stopping here would leave it in both queues. A stale failure record is harmless
            # (the message's next success clears it).
            log.warning("Could not clear the failure record of %s: %s", message.id, exc)

    walk = _Walk(store, LOCK_SECONDS, counted=started)
    await walk.run(matches, send_back)
    kept = sorted(set(kept))
    # Those named, parked since the start: left.
    since = {i: _content_id(walk.others[i]) for i in walk.since if named(walk.others[i])}
    found = {d["id"] for d in done} | {d["content_id"] for d in done} | set(kept) | set(since) | set(since.values())
    missing = sorted(wanted - found) if wanted is not None else []
    lines = [f"{len(done)} message(s) sent back to {settings.content_queue}"]
    lines += [f"  {d['id']}  {d['content_id']}" for d in done]
    if kept:
        lines.append(f"left in {settings.poison_queue}, not content notifications (no retry can help; `poison purge` "
                     f"deletes them): {', '.join(kept)}")  # fmt: skip
    if missing:
        lines.append(f"not found in {settings.poison_queue}: {', '.join(missing)}")
    if walk.undeleted:
        lines.append(f"sent back but still in {settings.poison_queue} (delete refused): {', '.join(walk.undeleted)}")
    unseen = walk.unseen(depth)
    if unseen:
        lines.append(_held(unseen, settings.poison_queue))
    if since:
        lines.append(_parked_since(len(since), "the requeue began", "requeue"))
    if done:
        lines.append("process them with `irm-connector process` (or let the function app pick them up)")
    emit(args, {"requeued": done, "not_content": kept, "not_found": missing, "not_deleted": walk.undeleted,
                "not_seen": unseen, "left_parked_since_start": len(since)}, "\n".join(lines))  # fmt: skip
    named_kept = wanted is not None and bool(kept or since)
    return EXIT_FAILED if missing or walk.undeleted or named_kept or unseen else EXIT_OK


def _parked_since(count: int, when: str, command: str) -> str:
    return (
        f"{count} message(s) parked since {when} are left (a message's time in the queue is a whole second, and "
        f"those of that second may have come after it): `poison list` shows why they failed; `poison {command}` "
        "takes them"
    )


def _held(unseen: int, queue: str) -> str:
    return (
        f"{unseen} message(s) of {queue} were not seen: another reader holds them (a `poison` command running, "
        f"or one stopped less than {LOCK_SECONDS} s ago); run this again in a minute"
    )


async def _purge(args: argparse.Namespace, settings: Settings, store: Storage, failures: FailureStore) -> int:
    # The queue's time when it was counted: what is parked after that (while the operator reads the question) was
    # not in the count they said yes to, and nobody has seen why it failed; it stays.
    depth, counted = await store.depth_at(store.poison, as_a_second_begins=True)
    if depth:
        await confirm(
            args,
            f"Delete the {depth} message(s) of {settings.poison_queue} for good? Their records come back only by "
            "`backfill --include-queued` over their time, while the API keeps them (7 days).",
        )
    taken: dict[str, str] = {}  # message id -> its failure record's key

    async def take(message: QueueMessage) -> None:
        taken[message.id] = message_key(Delivery.decode(_text(message)))

    walk = _Walk(store, LOCK_SECONDS, counted=counted)
    await walk.run(lambda message: True, take)
    # Each failure record only once its message is gone: one whose delete was refused stays in the queue, and
    # `poison list` should still say why it failed.
    undeleted = walk.undeleted
    for message_id, key in taken.items():
        if message_id not in undeleted:
            try:
                await failures.delete_failure(key)
            except StateError as exc:
                # The messages are gone already: failing here reported a deletion done as a storage failure. A stale
                # record is harmless (`poison list` shows the records of messages in the queue only).
                log.warning("Could not clear the failure record of %s: %s", message_id, exc)
    purged = len(taken) - len(undeleted)
    unseen = walk.unseen(depth)
    since = len(walk.since)
    lines = [f"{purged} message(s) deleted from {settings.poison_queue}"]
    if unseen:
        lines.append(_held(unseen, settings.poison_queue))
    if since:
        lines.append(_parked_since(since, "the count", "purge"))
    emit(args, {"purged": purged, "not_deleted": undeleted, "not_seen": unseen, "left_parked_since_count": since},
         "\n".join(lines))  # fmt: skip
    return EXIT_FAILED if undeleted or unseen else EXIT_OK


async def poison(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "requeue" and not args.all and not args.ids:
        raise UsageError("name the message IDs (or content ids) to requeue, or pass --all")
    if args.action == "requeue" and args.all and args.ids:
        raise UsageError("give IDs or --all, not both")
    await ready(settings)
    async with storage(settings) as store:
        failures = store.state.failures
        if args.action == "list":
            return await _list(args, settings, store, failures)
        if args.action == "requeue":
            return await _requeue(args, settings, store, failures)
        return await _purge(args, settings, store, failures)
