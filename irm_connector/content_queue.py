"""The content queue: one message per content blob, between the poller and the processor.

Messages are written base64-encoded, which is what the Functions queue trigger reads by default.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import TextBase64DecodePolicy
from azure.storage.queue.aio import QueueClient

from ._bounded import within
from .errors import BadMessageError, StateError, storage_error_code
from .errors import storage_reason as reason
from .models import CONTENT_ID, KNOWN_CONTENT_TYPES, ContentBlob, parse_api_time, utc_text

__all__ = [
    "MAX_DELAY",
    "MAX_MESSAGE_BYTES",
    "ContentMessage",
    "ContentQueue",
    "Delivery",
    "LenientBase64DecodePolicy",
    "UndecodableMessage",
    "create_queue_if_missing",
    "fit_message",
]

log = logging.getLogger(__name__)

#: 64 KiB after base64 leaves about 48 KiB of JSON.
MAX_MESSAGE_BYTES = 48 * 1024
#: The longest a message can be kept invisible: a visibility timeout of at most 7 days, in seconds.
MAX_DELAY = 7 * 86400
#: The messages the health row's backlog age looks at (the most one peek returns).
PEEK_MOST = 32
_REQUIRED = ("contentUri", "contentId", "contentType", "contentCreated", "contentExpiration", "tenantId")


@dataclass(frozen=True)
class ContentMessage:
    """What the processor needs to fetch one blob, plus the trace context of the poller that queued it, and how
    often it was put back for later (a refusing DCR, a long ``Retry-After``; a rescheduled message is a new one,
    its dequeue count 1 again)."""

    tenant_id: str
    blob: ContentBlob
    traceparent: str = ""
    rescheduled: int = 0
    #: Of those, the times it was put off for a wait (either API's throttling, a subscription that is off): only
    #: they count towards the limit of put-offs (processor.THROTTLED_PUT_OFFS). A refusing DCR's reschedules are
    #: bounded by the refusal's age, and an hour of them, counted in, left a message no put-off for the throttling
    #: of the catch-up that follows.
    put_offs: int = 0
    #: When the poller queued the blob, kept when the message is put back: a message put back every hour for a
    #: day is a day old, which its queue insertion time (the hour's) would not tell the health row.
    queued_at: datetime | None = None

    def encode(self) -> str:
        data: dict[str, Any] = {"v": 1, "tenantId": self.tenant_id, **self.blob.to_api()}
        if self.traceparent:
            data["traceparent"] = self.traceparent
        if self.rescheduled:
            data["rescheduled"] = self.rescheduled
        if self.put_offs:
            data["putOffs"] = self.put_offs
        if self.queued_at is not None:
            data["queuedAt"] = utc_text(self.queued_at, timespec="seconds")
        return orjson.dumps(data).decode()

    @classmethod
    def decode(cls, text: str | bytes) -> ContentMessage:
        """Parse a message body; raises :class:`BadMessageError` saying what is wrong with it."""
        raw = text.encode("utf-8", "replace") if isinstance(text, str) else text
        if len(raw) > MAX_MESSAGE_BYTES:
            raise BadMessageError(f"message of {len(raw)} bytes is larger than a content notification can be")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadMessageError("message is not JSON") from None
        if not isinstance(data, dict):
            raise BadMessageError("message is JSON but not an object")
        missing = [k for k in _REQUIRED if not isinstance(data.get(k), str) or not data.get(k)]
        if missing:
            raise BadMessageError(f"message lacks {', '.join(missing)}")
        if not CONTENT_ID.fullmatch(data["contentId"]):
            # Quoted in log lines, spans and exceptions from here on: one 30,000 characters long, or with a line
            # break, made every one of them the forger's. Not shown: `poison list` shows it.
            raise BadMessageError("message's contentId is not one word of at most 512 printable ASCII characters")
        if data["contentType"] not in KNOWN_CONTENT_TYPES:
            # Not from the poller, which queues the type it listed: its value (unbounded, perhaps a record's) would
            # have reached the rows' ContentType, the logs and the failures table. Not shown: `poison list` shows it.
            raise BadMessageError(f"message's contentType is not one of {', '.join(KNOWN_CONTENT_TYPES)}")
        try:
            blob = ContentBlob.from_api(data)
        except ValueError:
            raise BadMessageError("message has an unreadable contentCreated or contentExpiration") from None
        trace = data.get("traceparent")
        return cls(
            tenant_id=data["tenantId"],
            blob=blob,
            traceparent=trace if isinstance(trace, str) else "",
            rescheduled=_count(data.get("rescheduled")),
            put_offs=_count(data.get("putOffs")),
            queued_at=_time_or_none(data.get("queuedAt")),
        )


def _count(value: Any) -> int:
    """An optional count of a message: anything but a positive whole number (a message from elsewhere) is 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _time_or_none(value: Any) -> datetime | None:
    """An optional time of a message: unreadable (a message from elsewhere), it is left out, not refused."""
    try:
        return parse_api_time(value) if isinstance(value, str) else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Delivery:
    """One queue message as the trigger hands it over, decoded once: the content message, or why it is not
    one. Every step after (the processor, the failure record, the CLI) reads this, never the text again."""

    text: str
    message: ContentMessage | None
    #: why the text is not a content message; None when ``message`` is set
    problem: BadMessageError | None = None

    @classmethod
    def decode(cls, body: str | bytes) -> Delivery:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        try:
            return cls(text, ContentMessage.decode(body))
        except BadMessageError as exc:
            return cls(text, None, exc)


class UndecodableMessage(str):
    """The raw text of a queue message that is not base64, as :class:`LenientBase64DecodePolicy` hands it on."""


class LenientBase64DecodePolicy(TextBase64DecodePolicy):
    """Base64 decoding that marks a bad message instead of failing the whole receive call: one message
    someone wrote without encoding must not stop every other message behind it."""

    def decode(self, content: str, response: Any) -> str:
        # Not super().decode: the SDK's own error path fails while building its DecodeError.
        try:
            return base64.b64decode(content.encode("utf-8"), validate=True).decode("utf-8")
        except (ValueError, TypeError):  # binascii.Error and UnicodeDecodeError are ValueErrors
            return UndecodableMessage(content)


def fit_message(text: str) -> str:
    """``text`` as it can be parked: one too large for a queue message once base64-encoded (it can only have come
    from elsewhere: a message written by hand, without the encoding) is cut, saying so."""
    if len(text.encode("utf-8")) <= MAX_MESSAGE_BYTES:
        return text
    return text.encode("utf-8")[: MAX_MESSAGE_BYTES - 64].decode("utf-8", "ignore") + " [cut: over 48 KiB]"


async def create_queue_if_missing(client: QueueClient) -> None:
    """Create the queue unless it exists."""
    try:
        await client.create_queue()
    except ResourceExistsError as exc:
        # 409 is also a queue being deleted (Azure refuses its name for about 40 s after a delete) or disabled: taken
        # for "exists", the next write failed on a queue that is not there, saying nothing of why.
        if storage_error_code(exc) in ("QueueBeingDeleted", "QueueDisabled"):
            raise StateError(f"cannot create queue {client.queue_name}: {reason(exc)}; Azure refuses a deleted "
                             "queue's name for about 40 s, and the next try creates it") from exc  # fmt: skip
    except AzureError as exc:
        raise StateError(f"cannot create queue {client.queue_name}: {reason(exc)}") from exc


async def _depth(client: QueueClient) -> int:
    """Messages on the queue; 0 for a queue not created yet (the poison queue, until something failed)."""
    try:
        return int((await client.get_queue_properties()).approximate_message_count or 0)
    except ResourceNotFoundError:
        return 0


class ContentQueue:
    """The content queue and its poison queue, created on first use."""

    def __init__(self, main: QueueClient, poison: QueueClient) -> None:
        self._main = main
        self._poison = poison
        self._ready: set[str] = set()
        # The poller queues a page's blobs side by side: without it, each would create the queue again.
        self._creating = asyncio.Lock()
        self.sent = 0

    @property
    def main(self) -> QueueClient:
        return self._main

    @property
    def poison(self) -> QueueClient:
        return self._poison

    async def _ensure(self, client: QueueClient) -> None:
        if client.queue_name in self._ready:
            return
        # The creator's call is bounded by its own invocation's deadline, which may end minutes after a waiter's
        # (deliveries put back side by side on a worker that never queued): the wait is bounded by the waiter's.
        await within(f"waiting for queue {client.queue_name} to be created", self._creating.acquire())
        try:
            if client.queue_name not in self._ready:
                await create_queue_if_missing(client)
                self._ready.add(client.queue_name)
        finally:
            self._creating.release()

    async def put(self, message: ContentMessage) -> None:
        await self._send(self._main, message.encode())
        self.sent += 1

    async def reschedule(self, text: str, delay: int) -> None:
        """Put ``text`` back as a new message, invisible for ``delay`` seconds: the delivery that calls this
        then completes, so the message comes back later without having spent a dequeue count."""
        await self._send(self._main, text, delay=delay)

    async def backlog(self) -> tuple[int, int, int]:
        """The health row's queue facts: messages on the queue (invisible ones too), the age in seconds of the
        oldest visible one, and messages in the poison queue. A message's age runs from when its blob was first
        queued (:attr:`ContentMessage.queued_at`); a message put back for later is inserted anew, behind younger
        ones, so the first :data:`PEEK_MOST` are looked at, not only the first."""
        try:
            depth, poison = await _depth(self._main), await _depth(self._poison)
        except AzureError as exc:
            raise StateError(f"cannot read the queue lengths: {reason(exc)}") from exc
        return depth, (await self.oldest_age() or 0) if depth else 0, poison

    async def oldest_age(self, now: datetime | None = None) -> int | None:
        """The age in seconds at ``now`` (this machine's time by default) of the oldest of the first
        :data:`PEEK_MOST` visible messages of the content queue, from when its blob was first queued; ``None`` when
        none is visible (every message put off for later, or being processed)."""
        now = now or datetime.now(UTC)
        try:
            visible = await self._main.peek_messages(max_messages=PEEK_MOST)
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise StateError(f"cannot read the queue's oldest message: {reason(exc)}") from exc
        if not visible:
            return None
        oldest = 0
        for peeked in visible:
            since = _queued_at(peeked.content) or peeked.inserted_on
            if since is not None and peeked.inserted_on is not None:
                # No blob was first queued after its message was inserted: a stamp later than the storage
                # service's insertion time is a queuing machine's fast clock (the CLI's `poll` on a laptop),
                # and would make a backlog of hours read as none.
                since = min(since, peeked.inserted_on)
            if since is not None:
                oldest = max(oldest, int((now - since).total_seconds()))
        return oldest

    async def put_poison(self, text: str) -> None:
        """Park a message that cannot be processed where an operator finds it (see :func:`fit_message`)."""
        await self._send(self._poison, fit_message(text))

    async def _send(self, client: QueueClient, text: str, *, delay: int = 0) -> None:
        async def send() -> None:
            # -1: never expire. The queue's default of 7 days would silently drop a poison message nobody
            # looked at in time; an operator must be able to find it however late.
            await client.send_message(text, time_to_live=-1, visibility_timeout=delay or None)

        await self._ensure(client)
        try:
            try:
                await send()
            except ResourceNotFoundError:
                # Deleted since this process created it (an operator clearing a backlog): created again, as on
                # first use, or every later run of this worker would fail until it restarts.
                log.warning("Queue %s was deleted; creating it again", client.queue_name)
                self._ready.discard(client.queue_name)
                await self._ensure(client)
                await send()
        except AzureError as exc:
            raise StateError(f"cannot write to queue {client.queue_name}: {reason(exc)}") from exc

    async def close(self) -> None:
        await self._main.close()
        await self._poison.close()


def _queued_at(text: Any) -> datetime | None:
    """The ``queuedAt`` of a peeked message's text; None for a text that is not a content message."""
    try:
        return ContentMessage.decode(text).queued_at if isinstance(text, str) else None
    except BadMessageError:
        return None
