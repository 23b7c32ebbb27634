"""The tables every kind of state is kept in: one client per table, created on first use, partition reads,
entity-group batches, and dropping the day tables that passed the retention.

The connector's tables are named ``{prefix}state``, ``{prefix}failures`` and ``{prefix}{kind}YYYYMMDD``
(day tables, e.g. ``irmblobs20260629``), so expiring a day's keys costs one request, not one per key.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError
from azure.data.tables.aio import TableClient, TableServiceClient

from irm_connector.errors import StateError

__all__ = ["BATCH", "StoreStats", "Tables", "reason", "table_key"]

#: An entity-group transaction holds at most 100 entities of one partition.
BATCH = 100
_BAD_KEY = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")


def table_key(value: str) -> str:
    """A valid PartitionKey/RowKey: the value itself when it can be, else its hash."""
    if len(value) <= 255 and not _BAD_KEY.search(value):
        return value
    return "h-" + hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()


def reason(exc: BaseException) -> str:
    """What went wrong with a storage call, without anything of the request: the class and the code."""
    code = getattr(exc, "error_code", None) or getattr(exc, "status_code", None)
    return f"{type(exc).__name__}{f' ({code})' if code else ''}"


@dataclass
class StoreStats:
    """Storage transactions, for the benchmark and the logs."""

    reads: int = 0
    writes: int = 0


class Tables:
    """The connector's tables in one storage account. It owns the service client it is given."""

    def __init__(self, service: TableServiceClient, *, prefix: str = "irm", retention_days: int = 10) -> None:
        self._service = service
        self.prefix = prefix
        self.retention = timedelta(days=retention_days)
        self._clients: dict[str, TableClient] = {}
        self._created: set[str] = set()
        self._create_lock = asyncio.Lock()
        self.stats = StoreStats()

    def name(self, kind: str, day: str = "") -> str:
        """``{prefix}{kind}`` or, for a day table, ``{prefix}{kind}{YYYYMMDD}``."""
        return f"{self.prefix}{kind}{day}"

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        await self._service.close()

    async def table(self, name: str) -> TableClient:
        """The client of table ``name``, which is created the first time this process asks for it."""
        client = self._clients.get(name)
        if client is None:
            client = self._clients[name] = self._service.get_table_client(name)
        if name not in self._created:
            async with self._create_lock:
                if name not in self._created:
                    try:
                        self.stats.writes += 1
                        await self._service.create_table(name)
                    except ResourceExistsError:
                        pass
                    except AzureError as exc:
                        raise StateError(f"cannot create table {name}: {reason(exc)}") from exc
                    self._created.add(name)
        return client

    async def read_partition(
        self,
        table_name: str,
        pk: str,
        *,
        select: list[str] | None = None,
        query: str = "PartitionKey eq @pk",
        parameters: dict[str, Any] | None = None,
    ) -> list[Any]:
        """Every entity of one partition matching ``query`` (default: all), read a page of 1,000 at a time."""
        table = await self.table(table_name)
        out = []
        try:
            pages = table.query_entities(
                query, parameters=parameters or {"pk": pk}, select=select, results_per_page=1000
            ).by_page()
            async for page in pages:
                self.stats.reads += 1
                async for entity in page:
                    out.append(entity)
        except AzureError as exc:
            raise StateError(f"cannot read {table_name}: {reason(exc)}") from exc
        return out

    async def write_batches(self, table_name: str, ops: list[Any]) -> None:
        """Entity-group transactions of up to :data:`BATCH` operations on one partition each."""
        table = await self.table(table_name)
        for start in range(0, len(ops), BATCH):
            self.stats.writes += 1
            try:
                await table.submit_transaction(ops[start : start + BATCH])
            except AzureError as exc:  # TableTransactionError is one too
                raise StateError(f"table transaction on {table_name} failed: {reason(exc)}") from exc

    async def drop_expired_tables(self, now: datetime, kinds: tuple[str, ...]) -> list[str]:
        """Drop the day tables of ``kinds`` older than the retention: one query, and one delete per expired
        day. Only the kinds named: another connector's prefix may start with this one's."""
        cutoff = (now - self.retention).astimezone(UTC).strftime("%Y%m%d")
        dropped: list[str] = []
        alternatives = "|".join(re.escape(kind) for kind in kinds)
        pattern = re.compile(rf"^{re.escape(self.prefix)}(?:{alternatives})(\d{{8}})$")
        self.stats.reads += 1
        try:
            names = [
                t.name
                async for t in self._service.query_tables(
                    "TableName ge @lo and TableName lt @hi", parameters={"lo": self.prefix, "hi": self.prefix + "~"}
                )
            ]
            for name in names:
                match = pattern.match(name)
                if match and match.group(1) < cutoff:
                    self.stats.writes += 1
                    await self._service.delete_table(name)
                    self._created.discard(name)
                    dropped.append(name)
        except AzureError as exc:
            raise StateError(f"cannot drop expired tables: {reason(exc)}") from exc
        return dropped
