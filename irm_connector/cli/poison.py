"""poison list | requeue | purge: the dead messages, why each failed, and sending them back."""

from __future__ import annotations

import argparse
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueMessage

from irm_connector.content_queue import Delivery, create_queue_if_missing
from irm_connector.settings import Settings
from irm_connector.state import Failure, FailureStore, message_key

from ._common import EXIT_FAILED, EXIT_OK, Storage, UsageError, confirm, emit, iso, storage
from ._preflight import ready

__all__ = ["poison"]

#: Messages being requeued or purged are hidden this long from other readers.
_LOCK_SECONDS = 60


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
        "reason": failure.reason if failure else "unknown (no failure was recorded for this message)",
        "attempts": failure.attempts if failure else None,
        "failed_at": failure.time if failure else None,
        "text": text[:200] if not content_id else None,
    }


async def _list(args: argparse.Namespace, settings: Settings, store: Storage, failures: FailureStore) -> int:
    depth = await store.depth(store.poison)
    limit = max(1, min(32, args.limit))
    messages: list[Any] = []
    if depth:
        try:
            messages = list(await store.poison.peek_messages(max_messages=limit))
        except ResourceNotFoundError:
            messages = []
    known = await failures.list_failures() if messages else {}
    items = [_describe(m, known) for m in messages]
    lines = [f"{settings.poison_queue}: {depth} message(s)" + (f", showing {len(items)}" if depth > len(items) else "")]
    for item in items:
        what = f"{item['content_type']} {item['content_id']}" if item["content_id"] else f"unreadable: {item['text']!r}"
        attempts = f", {item['attempts']} attempt(s)" if item["attempts"] else ""
        lines.append(f"{item['id']}  {what}")
        lines.append(f"    reason{attempts}: {item['reason']}")
    if items:
        lines.append("send them back with `irm-connector poison requeue --all` (or by ID)")
    emit(args, {"queue": settings.poison_queue, "depth": depth, "messages": items}, "\n".join(lines))
    return EXIT_OK


async def _drain(store: Storage, wanted: set[str] | None) -> tuple[list[QueueMessage], list[QueueMessage]]:
    """Receive every poison message once: ``(matched, others)``; ``wanted`` None matches all. Each match is
    invisible for a minute; the caller deletes it or gives the others back."""
    matched: list[QueueMessage] = []
    others: list[QueueMessage] = []
    try:
        while True:
            page = [
                m
                async for m in store.poison.receive_messages(
                    messages_per_page=32, max_messages=32, visibility_timeout=_LOCK_SECONDS
                )
            ]
            if not page:
                break
            for message in page:
                text = message.content if isinstance(message.content, str) else str(message.content)
                parsed = Delivery.decode(text).message
                content_id = parsed.blob.content_id if parsed is not None else ""
                if wanted is None or message.id in wanted or (content_id and content_id in wanted):
                    matched.append(message)
                else:
                    others.append(message)
    except ResourceNotFoundError:
        pass
    return matched, others


async def _requeue(args: argparse.Namespace, settings: Settings, store: Storage, failures: FailureStore) -> int:
    if not args.all and not args.ids:
        raise UsageError("name the message IDs (or content ids) to requeue, or pass --all")
    if args.all and args.ids:
        raise UsageError("give IDs or --all, not both")
    wanted = None if args.all else set(args.ids)
    matched, others = await _drain(store, wanted)
    await create_queue_if_missing(store.main)
    done: list[dict[str, Any]] = []
    for message in matched:
        text = message.content if isinstance(message.content, str) else str(message.content)
        # The main queue client base64-encodes, as the runtime's ContentQueue does and the trigger expects.
        await store.main.send_message(text, time_to_live=-1)
        await store.poison.delete_message(message)
        delivery = Delivery.decode(text)
        await failures.delete_failure(message_key(delivery))
        content_id = delivery.message.blob.content_id if delivery.message is not None else ""
        done.append({"id": message.id, "content_id": content_id})
    for message in others:  # give back at once what was not asked for
        await store.poison.update_message(message, visibility_timeout=0)
    found = {d["id"] for d in done} | {d["content_id"] for d in done}
    missing = sorted(wanted - found) if wanted is not None else []
    lines = [f"{len(done)} message(s) sent back to {settings.content_queue}"]
    lines += [f"  {d['id']}  {d['content_id']}" for d in done]
    if missing:
        lines.append(f"not found in {settings.poison_queue}: {', '.join(missing)}")
    if done:
        lines.append("process them with `irm-connector process` (or let the function app pick them up)")
    emit(args, {"requeued": done, "not_found": missing}, "\n".join(lines))
    return EXIT_FAILED if missing else EXIT_OK


async def _purge(args: argparse.Namespace, settings: Settings, store: Storage, failures: FailureStore) -> int:
    depth = await store.depth(store.poison)
    if depth:
        confirm(args, f"Delete the {depth} message(s) of {settings.poison_queue} for good?")
    matched, _ = await _drain(store, None)
    for message in matched:
        await store.poison.delete_message(message)
        text = message.content if isinstance(message.content, str) else str(message.content)
        await failures.delete_failure(message_key(Delivery.decode(text)))
    emit(args, {"purged": len(matched)}, f"{len(matched)} message(s) deleted from {settings.poison_queue}")
    return EXIT_OK


async def poison(args: argparse.Namespace, settings: Settings) -> int:
    await ready(settings)
    async with storage(settings) as store:
        failures = store.state.failures
        if args.action == "list":
            return await _list(args, settings, store, failures)
        if args.action == "requeue":
            return await _requeue(args, settings, store, failures)
        return await _purge(args, settings, store, failures)
