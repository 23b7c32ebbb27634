"""Why a content message failed: the last failure per message, so ``irm-connector poison list`` can say
why each dead message died (the Functions host moves a message to ``<queue>-poison`` without a reason).

Table ``{prefix}failures``: PartitionKey the tenant, RowKey the message key (the content id when the
message is readable, else a hash of its text), with the reason (exception class and message: never record
content), the attempt number and the time. Written only when an attempt fails, so the normal path costs
nothing; read by the CLI.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError

from irm_connector.content_queue import Delivery
from irm_connector.errors import StateError
from irm_connector.models import parse_utc, utc_text

from .tables import Tables, reason, table_key

__all__ = ["Failure", "FailureStore", "describe", "message_key"]

_MAX_REASON = 2000


def message_key(delivery: Delivery) -> str:
    """The failure record's key of a message: the content id when it is a readable content message, else
    ``msg-`` and a hash of its text."""
    if delivery.message is not None:
        return table_key(delivery.message.blob.content_id)
    return "msg-" + hashlib.sha256(delivery.text.encode("utf-8", "replace")).hexdigest()[:40]


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
    """The ``{prefix}failures`` table of one tenant."""

    def __init__(self, tables: Tables, *, tenant_id: str) -> None:
        self._tables = tables
        self._name = tables.name("failures")
        self._tenant = table_key(tenant_id)

    async def upsert_failure(self, delivery: Delivery, reason_text: str, *, attempts: int) -> None:
        """Remember why ``delivery`` failed (its latest attempt wins)."""
        blob = delivery.message.blob if delivery.message is not None else None
        entity = {
            "PartitionKey": self._tenant,
            "RowKey": message_key(delivery),
            "ContentId": blob.content_id[:1000] if blob else "",
            "ContentType": blob.content_type if blob else "",
            "Reason": reason_text[:_MAX_REASON],
            "Attempts": int(attempts),
            "FailedAt": utc_text(datetime.now(UTC)),
        }
        await self._tables.upsert(self._name, entity)  # a table deleted under this process is created again

    async def get_failure(self, key: str) -> Failure | None:
        table = await self._tables.table(self._name)
        try:
            entity = await table.get_entity(self._tenant, key)
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise StateError(f"cannot read table {self._name}: {reason(exc)}") from exc
        return _failure(dict(entity))

    async def list_failures(self) -> dict[str, Failure]:
        """Every recorded failure of the tenant, by message key."""
        table = await self._tables.table(self._name)
        out: dict[str, Failure] = {}
        try:
            async for entity in table.query_entities("PartitionKey eq @pk", parameters={"pk": self._tenant}):
                failure = _failure(dict(entity))
                out[failure.key] = failure
        except AzureError as exc:
            raise StateError(f"cannot read table {self._name}: {reason(exc)}") from exc
        return out

    async def delete_failure(self, key: str) -> None:
        table = await self._tables.table(self._name)
        try:
            await table.delete_entity(self._tenant, key)
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise StateError(f"cannot write to table {self._name}: {reason(exc)}") from exc


def _failure(entity: dict[str, Any]) -> Failure:
    return Failure(
        key=str(entity.get("RowKey", "")),
        content_id=str(entity.get("ContentId") or ""),
        content_type=str(entity.get("ContentType") or ""),
        reason=str(entity.get("Reason") or ""),
        attempts=int(entity.get("Attempts") or 0),
        time=parse_utc(entity.get("FailedAt")),
    )
