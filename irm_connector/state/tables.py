"""The tables every kind of state is kept in: one client per table, created on first use, partition reads,
entity-group batches, and dropping the day tables that passed the retention.

The connector's tables are named ``{prefix}state``, ``{prefix}failures`` and ``{prefix}{kind}YYYYMMDD``
(day tables, e.g. ``irmblobs20260629``), so expiring a day's keys costs one request, not one per key.

A table can vanish under a process that created it earlier: the poller of another instance drops a day
table, or someone deletes it by hand. Every operation that finds its table gone (404 ``TableNotFound``; for about
40 s after the delete Azure answers any request 409 ``TableBeingDeleted``) creates it again and runs once more;
Azure refuses the create too in those 40 s, so creating waits that out. Reads that must not create a table (a day
table that may be on its way out) read it as empty.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar, cast
from urllib.parse import quote

import orjson
from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DecodeError,
    HttpResponseError,
    IncompleteReadError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.rest import AsyncHttpResponse, HttpRequest
from azure.data.tables import TableTransactionError, UpdateMode
from azure.data.tables import __version__ as _TABLES_VERSION
from azure.data.tables.aio import TableClient, TableServiceClient

from irm_connector._bounded import within
from irm_connector.errors import StateError, StorageDeadlineError, storage_error_code
from irm_connector.errors import storage_reason as reason
from irm_connector.models import parse_api_time, parse_http_date, utc_text

__all__ = ["BATCH", "Entity", "PartitionRead", "StoreStats", "Tables", "reason", "table_key"]

log = logging.getLogger(__name__)

#: An entity-group transaction holds at most 100 entities of one partition.
BATCH = 100
#: How long creating a table waits out ``TableBeingDeleted`` (Azure needs about 40 s after a delete).
BEING_DELETED_WAIT = 90.0
_BAD_KEY = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
_T = TypeVar("_T")
#: What the generated client sends with a query: JSON without type names the service can infer.
_QUERY_HEADERS = {"Accept": "application/json;odata=minimalmetadata", "DataServiceVersion": "3.0"}
#: Tries of a plain read whose answer's body breaks off (the SDK's own reads are retried so by its pipeline).
_BODY_ATTEMPTS = 3


class _Sender(Protocol):
    def send_request(self, request: HttpRequest, *, stream: bool) -> Awaitable[AsyncHttpResponse]: ...


_ERRORS: dict[int, type[HttpResponseError]] = {
    401: ClientAuthenticationError,
    403: ClientAuthenticationError,
    404: ResourceNotFoundError,
    409: ResourceExistsError,
    412: ResourceModifiedError,
}


def table_key(value: str) -> str:
    """A valid PartitionKey/RowKey: the value itself when it can be, else its hash."""
    if len(value) <= 255 and not _BAD_KEY.search(value):
        return value
    return "h-" + hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()


def _table_missing(exc: AzureError) -> bool:
    # An entity-group transaction reports it as its own error (TableTransactionError), a request as a 404.
    missing = isinstance(exc, (ResourceNotFoundError, TableTransactionError))
    return missing and storage_error_code(exc) == "TableNotFound"


def _being_deleted(exc: AzureError) -> bool:
    return isinstance(exc, HttpResponseError) and storage_error_code(exc) == "TableBeingDeleted"


def _table_gone(exc: AzureError) -> bool:
    """Deleted, or being deleted: Azure answers any request on a table 409 TableBeingDeleted for about 40 s after
    its delete, and 404 TableNotFound after (Azurite answers 404 at once)."""
    return _table_missing(exc) or _being_deleted(exc)


class Entity(dict[str, Any]):
    """An entity as :meth:`Tables.query_plain` reads it: its properties, and ``metadata`` (``etag``,
    ``timestamp``) as the SDK's ``TableEntity`` has them."""

    __slots__ = ("metadata",)

    def __init__(self, properties: dict[str, Any], metadata: dict[str, Any]) -> None:
        super().__init__(properties)
        self.metadata = metadata


@dataclass
class StoreStats:
    """Storage transactions, for the benchmark and the logs."""

    reads: int = 0
    writes: int = 0


@dataclass
class PartitionRead:
    """The entities a query returned, and the storage service's time when it answered (its ``Date``
    header): what a claim's age is judged by, never a local clock."""

    entities: list[Any] = field(default_factory=list)
    server_time: datetime | None = None
    #: how many of ``entities`` the first page of the answer held (None: all); later pages ran later
    first_page: int | None = None


#: The methods azure-core retries after a connection failure, and POST: for the calls that may be sent twice.
_WITH_POST = frozenset({"HEAD", "GET", "PUT", "DELETE", "OPTIONS", "TRACE", "POST"})


class Tables:
    """The connector's tables in one storage account. It owns the service client it is given."""

    def __init__(self, service: TableServiceClient, *, prefix: str = "irm", retention_days: int = 10) -> None:
        self._service = service
        self.prefix = prefix
        self.retention = timedelta(days=retention_days)
        self._clients: dict[str, TableClient] = {}
        self._created: set[str] = set()
        self._create_locks: dict[str, asyncio.Lock] = {}
        self._day_table = re.compile(rf"^{re.escape(prefix)}[a-z]+(\d{{8}})$")
        self._purged_on: dict[str, str] = {}  # table name -> the UTC day it was last purged by this process
        self.stats = StoreStats()

    def name(self, kind: str, day: str = "") -> str:
        """``{prefix}{kind}`` or, for a day table, ``{prefix}{kind}{YYYYMMDD}``."""
        return f"{self.prefix}{kind}{day}"

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        await self._service.close()

    def _client(self, name: str) -> TableClient:
        client = self._clients.get(name)
        if client is None:
            self._forget_days_before(self.cutoff_day(datetime.now(UTC)))
            client = self._clients[name] = self._service.get_table_client(name)
        return client

    def _forget_days_before(self, cutoff: str) -> None:
        """Forget the day tables past the retention: a client and a lock each (the client's transport is the
        service's, shared: nothing to close), for every day a worker has run, or a year's run held hundreds."""
        for name in list(self._clients):
            day = self._day_table.match(name)
            if day is not None and day.group(1) < cutoff:
                del self._clients[name]
                self._create_locks.pop(name, None)
                self._created.discard(name)

    async def table(self, name: str) -> TableClient:
        """The client of table ``name``, which is created the first time this process asks for it."""
        client = self._client(name)
        if name not in self._created:
            # One lock per table, so that a table being deleted (up to 90 s of waits) holds up no other. The creator
            # is bounded by its own invocation's deadline, which may end minutes after a waiter's: each waits only as
            # long as its own deadline allows, or it would outlive functionTimeout and the host restart the worker.
            lock = self._create_locks.setdefault(name, asyncio.Lock())
            await within(f"waiting for table {name} to be created", lock.acquire())
            try:
                if name not in self._created:
                    await self._create(name)
                    self._created.add(name)
            finally:
                lock.release()
        return client

    async def _create(self, name: str) -> None:
        waited, delay = 0.0, 1.0
        while True:
            self.stats.writes += 1
            try:
                # A connection failure is retried as for any other call (azure-core retries no POST without an
                # answer): sent again after it was applied, the create is answered 409, taken below for done.
                await self._service.create_table(name, retry_on_methods=_WITH_POST)
                return
            except AzureError as exc:
                if _being_deleted(exc) and waited < BEING_DELETED_WAIT:
                    if not waited:
                        log.warning("Table %s is being deleted; waiting to create it again", name)
                    await within(f"waiting to create table {name}", asyncio.sleep(delay))
                    waited, delay = waited + delay, min(delay * 2, 8.0)
                    continue
                if isinstance(exc, ResourceExistsError) and not _being_deleted(exc):
                    return
                hint = "; Azure refuses it for about 40 s after a delete" if _being_deleted(exc) else ""
                raise StateError(f"cannot create table {name}: {reason(exc)}{hint}") from exc

    async def _run(self, name: str, what: str, op: Callable[[TableClient], Awaitable[_T]]) -> _T:
        """``op`` on table ``name``; a table deleted under this process is created again and ``op`` runs once
        more. Storage errors become :class:`StateError` naming ``what`` failed."""
        for attempt in (1, 2):
            client = await self.table(name)
            try:
                return await op(client)
            except AzureError as exc:
                if attempt == 1 and _table_gone(exc):
                    log.warning(
                        "Table %s was deleted while in use (a retention cleanup, or by hand); creating it again", name
                    )
                    self._created.discard(name)
                    continue
                raise StateError(f"{what} {name} failed: {reason(exc)}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def query(
        self,
        table_name: str,
        query: str,
        parameters: dict[str, Any],
        *,
        select: list[str] | None = None,
        create: bool = True,
    ) -> PartitionRead:
        """Every entity matching ``query``, a page of 1,000 at a time, and the service's time. With
        ``create=False`` a missing table reads as empty and is not created."""
        dates: list[str] = []

        def server_date(response: Any) -> None:
            dates.append(response.http_response.headers.get("Date") or "")

        async def run(table: TableClient) -> list[Any]:
            out = []
            pages = table.query_entities(
                query, parameters=parameters, select=select, results_per_page=1000, raw_response_hook=server_date
            ).by_page()
            async for page in pages:
                self.stats.reads += 1
                async for entity in page:
                    out.append(entity)
            return out

        entities = await self._read(table_name, run, create=create)
        return PartitionRead(entities, parse_http_date(dates[-1]) if dates else None)

    async def query_plain(
        self,
        table_name: str,
        query: str,
        parameters: dict[str, str | datetime],
        *,
        select: list[str] | None = None,
        create: bool = True,
    ) -> PartitionRead:
        """As :meth:`query`, for entities whose properties are text and binary (the record-key shards): the
        service's JSON goes straight to :class:`Entity` dicts, binary decoded, any other typed value left as
        the JSON has it. The claims read these on every blob, and the SDK's general-purpose deserializers cost
        more CPU than the request; the request still goes through the table client's own pipeline
        (authentication, retries, logging, tracing)."""
        # Encoded as the SDK's generated operations encode theirs (here, and the continuation tokens): azure-core puts
        # the values into the URL as they are given, where a "+" reads as a space and a "&" ends the filter.
        options = {"$filter": quote(_filter(query, parameters), safe="")}
        if select:
            options["$select"] = ",".join(select)
        # The first page's: a claim judged by the service's time when the read began is never taken for older
        # than it is, and what a later page found may be newer than anything the first could have missed.
        first: list[tuple[datetime | None, int]] = []

        async def run(table: TableClient) -> list[Any]:
            first.clear()  # run again (a table re-created under the read): what it returns is this run's
            out: list[Any] = []
            page: dict[str, str] = dict(options)
            while True:
                # The generated operations name their service version each; Azure refuses a request without one.
                headers = {**_QUERY_HEADERS, "x-ms-version": table.api_version}
                request = HttpRequest("GET", f"/{table.table_name}()", params=page, headers=headers)
                response = await _send(table, request)
                self.stats.reads += 1
                out.extend(_entity(raw) for raw in _values(response))
                if not first:
                    first.append((parse_http_date(response.headers.get("Date")), len(out)))
                next_pk = response.headers.get("x-ms-continuation-NextPartitionKey")
                if not next_pk:
                    return out
                page = {**options, "NextPartitionKey": quote(next_pk, safe="")}
                if next_rk := response.headers.get("x-ms-continuation-NextRowKey"):
                    page["NextRowKey"] = quote(next_rk, safe="")

        entities = await self._read(table_name, run, create=create)
        server_time, first_page = first[0] if first else (None, None)
        return PartitionRead(entities, server_time, first_page)

    async def _read(
        self, table_name: str, run: Callable[[TableClient], Awaitable[list[Any]]], *, create: bool
    ) -> list[Any]:
        """``run`` on the table; with ``create=False`` a missing table reads as empty and is not created, and so
        does one being deleted (Azure answers its reads 409 for about 40 s after the poller drops it)."""
        if create:
            return await self._run(table_name, "reading", run)
        try:
            return await run(self._client(table_name))
        except AzureError as exc:
            if not _table_gone(exc):
                raise StateError(f"reading {table_name} failed: {reason(exc)}") from exc
            return []

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
        return (await self.query(table_name, query, parameters or {"pk": pk}, select=select)).entities

    async def write_unless_changed(
        self, table_name: str, entity: dict[str, Any], etag: str | None, *, what: str, gone_is_change: bool = False
    ) -> dict[str, Any] | None:
        """Create ``entity`` (``etag`` None) or replace it if nobody wrote it since it was read at ``etag``: the
        service's answer (``etag``, ``date``), or None when another writer came first (and, with
        ``gone_is_change``, when the entity was deleted meanwhile). Any other failure raises
        :class:`StateError` saying ``cannot write {what}``."""
        for attempt in (1, 2):
            table = await self.table(table_name)
            self.stats.writes += 1
            try:
                if etag is None:
                    return dict(await table.create_entity(entity))
                return dict(
                    await table.update_entity(
                        entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                    )
                )
            except AzureError as exc:
                if attempt == 1 and _table_gone(exc):
                    # Deleted under this process (see the module's docstring): created again. An entity read from
                    # it went with it, as if another writer had come first: the caller reads again and creates it.
                    # Before the general 409 below: a create on a table being deleted is answered 409 as well.
                    log.warning("Table %s was deleted while in use; creating it again", table_name)
                    self._created.discard(table_name)
                    if etag is None:
                        continue
                    await self.table(table_name)
                    return None
                if isinstance(exc, (ResourceExistsError, ResourceModifiedError)) and not _being_deleted(exc):
                    return None
                if isinstance(exc, ResourceNotFoundError) and gone_is_change:
                    return None
                if isinstance(exc, HttpResponseError) and exc.status_code == 412:
                    return None
                raise StateError(f"cannot write {what}: {reason(exc)}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def upsert(self, table_name: str, entity: dict[str, Any]) -> str | None:
        """Write ``entity`` whole (REPLACE); its new ETag."""

        async def run(table: TableClient) -> str | None:
            self.stats.writes += 1
            answer = await table.upsert_entity(entity, mode=UpdateMode.REPLACE)
            return str(answer.get("etag") or "") or None

        return await self._run(table_name, "writing to", run)

    async def merge_unless_changed(self, table_name: str, entity: dict[str, Any], etag: str) -> bool:
        """Set ``entity``'s properties on the stored entity if nobody wrote it since ``etag``. False when that
        did not happen for any reason (somebody wrote it, it is gone, the request failed): the caller then
        writes the entity whole, which the SDK retries where it does not retry a MERGE."""
        self.stats.writes += 1
        try:
            await self._client(table_name).update_entity(
                entity, mode=UpdateMode.MERGE, etag=etag, match_condition=MatchConditions.IfNotModified
            )
            return True
        except AzureError as exc:
            log.debug("A conditional merge into %s did not happen (%s); writing the entity whole", table_name,
                      reason(exc))  # fmt: skip
            return False

    async def delete(self, table_name: str, pk: str, row_key: str) -> None:
        """Delete one entity; one already gone (or a table already gone) is fine."""
        self.stats.writes += 1
        try:
            await self._client(table_name).delete_entity(pk, row_key)
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise StateError(f"deleting from {table_name} failed: {reason(exc)}") from exc

    async def write_batches(self, table_name: str, ops: list[Any]) -> None:
        """Entity-group transactions of up to :data:`BATCH` operations on one partition each."""
        # Upserts alone may be sent again after a connection failure (azure-core retries no POST without an
        # answer): applied twice they leave what once does. A delete applied, then sent again, fails the batch.
        retried = {"retry_on_methods": _WITH_POST} if all(op[0] == "upsert" for op in ops) else {}
        for start in range(0, len(ops), BATCH):

            async def run(table: TableClient, batch: list[Any] = ops[start : start + BATCH]) -> None:
                self.stats.writes += 1
                await table.submit_transaction(batch, **retried)

            await self._run(table_name, "a table transaction on", run)  # TableTransactionError is an AzureError

    async def drop_expired_tables(self, now: datetime, kinds: tuple[str, ...]) -> list[str]:
        """Drop the day tables of ``kinds`` older than the retention: one query, and one delete per expired
        day. Only the kinds named: another connector's prefix may start with this one's."""
        cutoff = self.cutoff_day(now)
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

    def cutoff_day(self, now: datetime) -> str:
        """``YYYYMMDD`` of the oldest day table the retention keeps at ``now``; older ones are dropped."""
        return (now - self.retention).astimezone(UTC).strftime("%Y%m%d")

    async def purge_expired(self, table_name: str, now: datetime) -> int:
        """:meth:`purge_entities` of what was last written a retention before ``now``, once a day per process: what
        it would find later in the day is a retention old by then anyway, and its query reads the whole table."""
        day = now.astimezone(UTC).strftime("%Y%m%d")
        if self._purged_on.get(table_name) == day:
            return 0
        removed = await self.purge_entities(table_name, now - self.retention)
        self._purged_on[table_name] = day
        return removed

    async def purge_entities(self, table_name: str, before: datetime) -> int:
        """Delete the entities of ``table_name`` last written before ``before`` (by the service's
        Timestamp), in entity-group batches per partition; a missing table has none. Returns how many."""
        read = await self.query(
            table_name, "Timestamp lt @before", {"before": before}, select=["PartitionKey", "RowKey"], create=False
        )
        by_partition: dict[str, list[Any]] = {}
        for entity in read.entities:
            key = {"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"]}
            by_partition.setdefault(str(entity["PartitionKey"]), []).append(("delete", key))
        for ops in by_partition.values():
            await self.write_batches(table_name, ops)
        return len(read.entities)


async def _send(table: TableClient, request: HttpRequest) -> AsyncHttpResponse:
    """``request`` (a read) through ``table``'s pipeline, read whole; an error answer raised as the SDK raises
    it (the exception class by status, ``error_code`` from the body), so callers tell errors apart alike."""
    for attempt in range(1, _BODY_ATTEMPTS + 1):
        # Streamed, so the body is parsed once (by orjson), not by the pipeline's JSON policy as well.
        response = await _pipeline_of(table).send_request(request, stream=True)
        try:
            # The transport bounds the request, not the body streamed after it.
            await within(f"reading table {table.table_name}", response.read())
        except StorageDeadlineError:
            await response.close()  # half read: its connection goes, not back to the pool
            raise
        except (IncompleteReadError, ServiceResponseError, ServiceRequestError):
            # The pipeline's retries end with the headers: a body cut short is tried again here.
            if attempt == _BODY_ATTEMPTS:
                raise
            continue
        if response.status_code >= 400:
            raise _error(response)
        return response
    raise AssertionError("unreachable")  # pragma: no cover


def _pipeline_of(table: TableClient) -> _Sender:
    """The generated client behind ``table``: where its pipeline is reachable, and its ``send_request`` is the
    documented way to send a request of one's own (https://aka.ms/azsdk/dpcodegen/python/send_request). It is
    a private attribute of azure-data-tables, there in the versions requirements.txt allows (12.7.x, as tested);
    a later one without it fails here with what to do, not with an AttributeError on every claim."""
    generated = getattr(table, "_client", None)
    if not callable(getattr(generated, "send_request", None)):
        raise StateError(
            f"azure-data-tables {_TABLES_VERSION} is not a version this connector reads tables with; deploy with the "
            "versions requirements.txt pins (azure-data-tables>=12.7,<12.8)"
        )
    return cast("_Sender", generated)


def _values(response: AsyncHttpResponse) -> list[dict[str, Any]]:
    """The entities of a query's answer; an answer that is not one raises as the SDK's reads do."""
    try:
        answer = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        answer = None
    values = answer.get("value") if isinstance(answer, dict) else None
    if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
        raise DecodeError("the answer to a table query is not a JSON list of entities", response=response)
    return values


def _error(response: AsyncHttpResponse) -> HttpResponseError:
    try:
        body = orjson.loads(response.content)
        code = str(body["odata.error"]["code"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        code = response.headers.get("x-ms-error-code") or ""
    error = _ERRORS.get(response.status_code, HttpResponseError)(f"{response.status_code} {code}", response=response)
    error.error_code = code or None  # type: ignore[attr-defined]  # the SDK's own errors carry it so, too
    return error


def _filter(query: str, parameters: dict[str, str | datetime]) -> str:
    """``query`` with each ``@name`` replaced by its value as an OData literal, as the SDK does it (the query's
    words are split at spaces)."""
    words = query.split(" ")
    for index, word in enumerate(words):
        if word.startswith("@"):
            value = parameters[word[1:]]
            if isinstance(value, str):
                words[index] = "'" + value.replace("'", "''") + "'"
            else:
                words[index] = f"datetime'{utc_text(value, timespec='microseconds')}'"
    return " ".join(words)


def _entity(raw: dict[str, Any]) -> Entity:
    """One entity of a query answer (minimal metadata): binary decoded; the Timestamp (to microseconds, as the
    SDK reads it: ``fromisoformat`` drops the seventh digit) and the ETag go to ``metadata``."""
    properties: dict[str, Any] = {}
    binary: list[str] = []
    for name, value in raw.items():
        if name.endswith("@odata.type"):
            if value == "Edm.Binary":
                binary.append(name[:-11])
        elif not name.startswith("odata."):
            properties[name] = value
    for name in binary:
        properties[name] = base64.b64decode(properties[name])
    stamp = properties.pop("Timestamp", None)
    return Entity(properties, {"etag": raw.get("odata.etag"), "timestamp": parse_api_time(stamp) if stamp else None})

