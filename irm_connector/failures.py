"""Why a content message failed: the last failure per message, so ``irm-connector poison list`` can say
why each dead message died (the Functions host moves a message to ``<queue>-poison`` without a reason).

Table ``{prefix}failures``: PartitionKey the tenant, RowKey the message key (the content id when the
message is readable, else a hash of its text), with the reason (exception class and message: never record
content), the attempt number and the time. Written only when an attempt fails, so the normal path costs
nothing; read by the CLI.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

from .content_queue import ContentMessage
from .errors import BadMessageError, StateError
from .state import table_key

__all__ = ["Failure", "FailureStore", "describe", "message_key"]

log = logging.getLogger(__name__)

_MAX_REASON = 2000


def message_key(text: str | bytes) -> tuple[str, str]:
    """``(key, content_id)`` of a message body: the content id when it is a readable content message, else
    ``msg-`` and a hash of the text (content id empty)."""
    try:
        message = ContentMessage.decode(text)
    except BadMessageError:
        raw = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
        return "msg-" + hashlib.sha256(raw).hexdigest()[:40], ""
    return table_key(message.blob.content_id), message.blob.content_id


def describe(exc: BaseException) -> str:
    """``ExceptionClass: message``, first line, bounded. The connector's errors never carry record content
    or secrets; other exceptions are cut to their first line to be safe."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:_MAX_REASON]


@dataclass(frozen=True)
class Failure:
    key: str
    content_id: str
    content_type: str
    reason: str
    attempts: int
    time: datetime | None


class FailureStore:
    """The failures table. It borrows ``service`` (the runtime's or the CLI's table service client)."""

    def __init__(self, service: TableServiceClient, *, prefix: str, tenant_id: str) -> None:
        self._service = service
        self._name = f"{prefix}failures"
        self._tenant = table_key(tenant_id)
        self._created = False

    async def _table(self) -> TableClient:
        if not self._created:
            try:
                await self._service.create_table(self._name)
            except ResourceExistsError:
                pass
            except AzureError as exc:
                raise StateError(f"cannot create table {self._name}: {type(exc).__name__}") from exc
            self._created = True
        return self._service.get_table_client(self._name)

    async def record(self, text: str | bytes, exc: BaseException, *, attempts: int, reason: str = "") -> None:
        """Remember the failure of the message ``text`` (its latest attempt wins)."""
        key, content_id = message_key(text)
        content_type = ""
        if content_id:
            content_type = ContentMessage.decode(text).blob.content_type
        entity = {
            "PartitionKey": self._tenant,
            "RowKey": key,
            "ContentId": content_id[:1000],
            "ContentType": content_type,
            "Reason": reason or describe(exc),
            "Attempts": int(attempts),
            "FailedAt": datetime.now(UTC).isoformat(),
        }
        table = await self._table()
        async with table:
            try:
                await table.upsert_entity(entity, mode=UpdateMode.REPLACE)
            except AzureError as exc2:
                raise StateError(f"cannot write to table {self._name}: {type(exc2).__name__}") from exc2

    async def get(self, key: str) -> Failure | None:
        table = await self._table()
        async with table:
            try:
                entity = await table.get_entity(self._tenant, key)
            except ResourceNotFoundError:
                return None
            except AzureError as exc:
                raise StateError(f"cannot read table {self._name}: {type(exc).__name__}") from exc
        return _failure(dict(entity))

    async def all(self) -> dict[str, Failure]:
        table = await self._table()
        out: dict[str, Failure] = {}
        async with table:
            try:
                async for entity in table.query_entities("PartitionKey eq @pk", parameters={"pk": self._tenant}):
                    failure = _failure(dict(entity))
                    out[failure.key] = failure
            except AzureError as exc:
                raise StateError(f"cannot read table {self._name}: {type(exc).__name__}") from exc
        return out

    async def forget(self, key: str) -> None:
        table = await self._table()
        async with table:
            try:
                await table.delete_entity(self._tenant, key)
            except ResourceNotFoundError:
                pass
            except AzureError as exc:
                raise StateError(f"cannot write to table {self._name}: {type(exc).__name__}") from exc


def _failure(entity: dict[str, Any]) -> Failure:
    when = entity.get("FailedAt")
    try:
        moment = datetime.fromisoformat(when) if isinstance(when, str) and when else None
    except ValueError:
        moment = None
    return Failure(
        key=str(entity.get("RowKey", "")),
        content_id=str(entity.get("ContentId") or ""),
        content_type=str(entity.get("ContentType") or ""),
        reason=str(entity.get("Reason") or ""),
        attempts=int(entity.get("Attempts") or 0),
        time=moment,
    )
