"""State in Table Storage: the poller's watermark and lease, which blobs are queued, which records are sent.

Tables (``irm`` is the prefix):

- ``irmstate``: one entity per (tenant, content type): the watermark, a lease so two pollers never list
  the same content type at once, and when a subscription was last started. Written with ETags, so a
  poller that lost its lease cannot move the watermark.
- ``irmblobsYYYYMMDD``: one marker per queued blob, by the blob's ``contentCreated`` day; keeps the
  listing overlap from queuing a blob twice.
- ``irmrecYYYYMMDD``: the keys of the records sent, per stream, by the record's ``CreationTime`` day
  (duplicates of a record share it), partitioned by hour so one query reads what a blob needs.

Record keys are 16-byte digests of the record ``Id``, packed into one entity per delivery (blob and queue
message) and hour: a few table requests per blob instead of one per record. A processor first *claims*
the records it will send (a *pending* entity), reads the partition back — of two deliveries claiming one
record the earlier claim wins, and both sides see the same order — uploads, then rewrites its entity as
*sent*. A crash between upload and that rewrite re-sends the blob's rows when the host redelivers the
message (the same message finds its own claim): duplicates are possible there, loss is not. A failed
attempt releases its claim; a claim whose owner died expires after :data:`CLAIM_TTL` and is taken over.
Another blob holding the same record skips it while it is claimed; another *message* for the same blob
waits (:class:`BlobBusy`). Sent entities never change, so a process caches their keys per partition and
later reads ask only for what was written since. Day tables older than the retention are dropped whole:
one request a day.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

from .errors import StateError
from .management_api import ContentBlob
from .normalize import Row

__all__ = ["CLAIM_TTL", "BlobBusy", "Claim", "LeaseLost", "PollerState", "StateStore", "table_key"]

log = logging.getLogger(__name__)

#: A claim lives this long: longer than one invocation may run (host.json functionTimeout), so a live
#: processor never loses it, and short enough that a dead one's rows are taken over soon after.
CLAIM_TTL = timedelta(minutes=10)
_BATCH = 100
#: Record keys are stored as 16-byte digests, packed into binary properties of an entity per blob and hour.
_DIGEST = 16
_PROPERTY_BYTES = 60_000 - 60_000 % _DIGEST
#: 11 x 60,000 bytes: under the 1 MiB entity limit even where binary is counted base64-encoded (Azurite).
_SHARD_PROPERTIES = 11
#: Sent keys a process keeps (about 80 bytes each in memory); older partitions are dropped first.
_CACHE_KEYS = 1_000_000
#: How far before the newest Timestamp seen the next incremental read starts: Timestamps are assigned at
#: commit by the partition's server, so a small margin covers the skew of writes in flight.
_CACHE_OVERLAP = timedelta(seconds=2)
_BAD_KEY = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
_SENT = "s"
_PENDING = "p"


def table_key(value: str) -> str:
    """A valid PartitionKey/RowKey: the value itself when it can be, else its hash."""
    if len(value) <= 255 and not _BAD_KEY.search(value):
        return value
    return "h-" + hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()


def _owner(content_id: str) -> str:
    return hashlib.sha256(content_id.encode("utf-8", "replace")).hexdigest()[:24]


def _iso(moment: datetime | None) -> str:
    return moment.astimezone(UTC).isoformat() if moment else ""


def _parse(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class BlobBusy(StateError):
    """Another delivery of the same blob is sending these rows; wait for it to finish or for its claim to
    expire."""


class LeaseLost(StateError):
    """Another poller took this content type's lease; this run stops for it."""


@dataclass(frozen=True)
class PollerState:
    """The state entity of one (tenant, content type)."""

    tenant_id: str
    content_type: str
    watermark: datetime | None = None
    lease_owner: str = ""
    lease_until: datetime | None = None
    subscription_started: datetime | None = None
    last_error: str = ""
    last_error_at: datetime | None = None
    last_run: datetime | None = None
    etag: str | None = None

    def leased_by_other(self, owner: str, now: datetime) -> bool:
        return bool(self.lease_owner) and self.lease_owner != owner and (self.lease_until or now) > now

    def entity(self) -> dict[str, Any]:
        return {
            "PartitionKey": table_key(self.tenant_id),
            "RowKey": table_key(self.content_type),
            "Watermark": _iso(self.watermark),
            "LeaseOwner": self.lease_owner,
            "LeaseUntil": _iso(self.lease_until),
            "SubscriptionStarted": _iso(self.subscription_started),
            "LastError": self.last_error[:2000],
            "LastErrorAt": _iso(self.last_error_at),
            "LastRun": _iso(self.last_run),
        }

    @classmethod
    def from_entity(cls, tenant_id: str, content_type: str, entity: dict[str, Any], etag: str | None) -> PollerState:
        return cls(
            tenant_id=tenant_id,
            content_type=content_type,
            watermark=_parse(entity.get("Watermark")),
            lease_owner=str(entity.get("LeaseOwner") or ""),
            lease_until=_parse(entity.get("LeaseUntil")),
            subscription_started=_parse(entity.get("SubscriptionStarted")),
            last_error=str(entity.get("LastError") or ""),
            last_error_at=_parse(entity.get("LastErrorAt")),
            last_run=_parse(entity.get("LastRun")),
            etag=etag,
        )


@dataclass
class Claim:
    """The rows of one stream this processor now owns and must upload, and what was left out and why."""

    stream: str
    #: the blob's key, and this delivery's (the blob's key and the queue message's)
    blob: str
    owner: str
    mine: list[Row] = field(default_factory=list)
    already_sent: int = 0
    claimed_elsewhere: int = 0
    taken_over: int = 0
    partial: int = 0
    slots: dict[tuple[str, str], list[Row]] = field(default_factory=dict)
    #: how many entities the claim of each slot took (more than one only past ~60,000 records)
    shards: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Shard:
    """A pending claim as read: one delivery's record keys in one hour slot (sent keys live in
    :class:`_SentKeys` instead)."""

    row_key: str
    owner: str
    blob: str
    #: (when the owner first claimed, RowKey): the earliest claim of a record wins.
    rank: tuple[datetime, str]
    stale: bool
    ids: set[bytes]
    stamp: datetime | None = None
    expires: datetime | None = None


@dataclass
class _SentKeys:
    """What a process knows of one partition's sent shards: their row keys, their record keys, and the
    newest Timestamp seen (the next read asks only for what is newer)."""

    rows: set[str] = field(default_factory=set)
    ids: set[bytes] = field(default_factory=set)
    high_water: datetime | None = None
    #: pending shards as last read, by row key (parsed once per version)
    pending: dict[str, _Shard] = field(default_factory=dict)


@dataclass(frozen=True)
class _View:
    sent: set[bytes]
    pending: list[_Shard]
    #: the newest (server) Timestamp known after this read: anything written later is at least as new
    read_from: datetime | None


def _ids(entity: Any) -> set[bytes]:
    return {
        bytes(block[i : i + _DIGEST])
        for name, block in entity.items()
        if name.startswith("I") and isinstance(block, bytes | bytearray)
        for i in range(0, len(block), _DIGEST)
    }


def _digest(record_id: str) -> bytes:
    return hashlib.blake2b(record_id.encode("utf-8", "replace"), digest_size=_DIGEST).digest()


def _union(sets: Iterable[set[bytes]]) -> set[bytes]:
    out: set[bytes] = set()
    for one in sets:
        out |= one
    return out


@dataclass
class StoreStats:
    """Storage transactions, for the benchmark and the logs."""

    reads: int = 0
    writes: int = 0


class StateStore:
    """The connector's tables. Use with ``async with``; it owns the service client it is given."""

    def __init__(
        self,
        service: TableServiceClient,
        *,
        prefix: str = "irm",
        retention_days: int = 10,
        claim_ttl: timedelta = CLAIM_TTL,
    ) -> None:
        self._service = service
        self._claim_ttl = claim_ttl
        self._prefix = prefix
        self._retention = timedelta(days=retention_days)
        self._tables: dict[str, TableClient] = {}
        self._created: set[str] = set()
        self._create_lock = asyncio.Lock()
        self._sent_cache: OrderedDict[tuple[str, str], _SentKeys] = OrderedDict()
        self.stats = StoreStats()

    @property
    def service(self) -> TableServiceClient:
        """The table service client, for other tables of the connector (the failure reasons)."""
        return self._service

    async def __aenter__(self) -> StateStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        for table in self._tables.values():
            await table.close()
        self._tables.clear()
        await self._service.close()

    # -- tables ------------------------------------------------------------------------------------

    async def _table(self, name: str, *, create: bool = True) -> TableClient:
        client = self._tables.get(name)
        if client is None:
            client = self._tables[name] = self._service.get_table_client(name)
        if create and name not in self._created:
            async with self._create_lock:
                if name not in self._created:
                    try:
                        self.stats.writes += 1
                        await self._service.create_table(name)
                    except ResourceExistsError:
                        pass
                    except AzureError as exc:
                        raise StateError(f"cannot create table {name}: {_reason(exc)}") from exc
                    self._created.add(name)
        return client

    def _state_table(self) -> str:
        return f"{self._prefix}state"

    def _blob_table(self, day: str) -> str:
        return f"{self._prefix}blobs{day}"

    def _record_table(self, day: str) -> str:
        return f"{self._prefix}rec{day}"

    # -- poller state ------------------------------------------------------------------------------

    async def get_poller_state(self, tenant_id: str, content_type: str) -> PollerState:
        table = await self._table(self._state_table())
        self.stats.reads += 1
        try:
            entity = await table.get_entity(table_key(tenant_id), table_key(content_type))
        except ResourceNotFoundError:
            return PollerState(tenant_id, content_type)
        except AzureError as exc:
            raise StateError(f"cannot read the poller state: {_reason(exc)}") from exc
        return PollerState.from_entity(tenant_id, content_type, dict(entity), entity.metadata.get("etag"))

    async def save_poller_state(self, state: PollerState) -> PollerState:
        """Write ``state`` if nobody wrote since it was read (ETag); raises :class:`LeaseLost` otherwise."""
        table = await self._table(self._state_table())
        self.stats.writes += 1
        try:
            if state.etag is None:
                result = await table.create_entity(state.entity())
            else:
                result = await table.update_entity(
                    state.entity(),
                    mode=UpdateMode.REPLACE,
                    etag=state.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
        except (ResourceExistsError, ResourceModifiedError) as exc:
            raise LeaseLost(f"another poller changed the state of {state.content_type}") from exc
        except HttpResponseError as exc:
            if exc.status_code == 412:
                raise LeaseLost(f"another poller changed the state of {state.content_type}") from exc
            raise StateError(f"cannot write the poller state: {_reason(exc)}") from exc
        except AzureError as exc:
            raise StateError(f"cannot write the poller state: {_reason(exc)}") from exc
        return replace(state, etag=result.get("etag"))

    async def list_poller_states(self, tenant_id: str) -> list[PollerState]:
        table = await self._table(self._state_table())
        self.stats.reads += 1
        out = []
        try:
            async for entity in table.query_entities("PartitionKey eq @pk", parameters={"pk": table_key(tenant_id)}):
                out.append(
                    PollerState.from_entity(tenant_id, str(entity["RowKey"]), dict(entity), entity.metadata.get("etag"))
                )
        except AzureError as exc:
            raise StateError(f"cannot read the poller state: {_reason(exc)}") from exc
        return out

    # -- queued blobs ------------------------------------------------------------------------------

    @staticmethod
    def _blob_slot(content_type: str, created: datetime) -> tuple[str, str]:
        created = created.astimezone(UTC)
        return created.strftime("%Y%m%d"), f"{table_key(content_type)}_{created:%H}"

    async def is_queued(self, content_type: str, blob: ContentBlob, cache: dict[tuple[str, str], set[str]]) -> bool:
        """Whether ``blob`` was queued before; ``cache`` keeps the partitions read in this run."""
        slot = self._blob_slot(content_type, blob.content_created)
        if slot not in cache:
            cache[slot] = {str(e["RowKey"]) for e in await self._read_partition(self._blob_table(slot[0]), slot[1])}
        return table_key(blob.content_id) in cache[slot]

    async def mark_blobs_queued(
        self, content_type: str, blobs: Iterable[ContentBlob], cache: dict[tuple[str, str], set[str]]
    ) -> None:
        groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for blob in blobs:
            slot = self._blob_slot(content_type, blob.content_created)
            groups[slot].append({"PartitionKey": slot[1], "RowKey": table_key(blob.content_id)})
        for (day, pk), entities in groups.items():
            await self._write_batches(self._blob_table(day), [("upsert", e) for e in entities])
            cache.setdefault((day, pk), set()).update(e["RowKey"] for e in entities)

    # -- record markers ----------------------------------------------------------------------------

    async def claim_records(self, stream: str, rows: Sequence[Row], content_id: str, message_id: str = "") -> Claim:
        """Claim ``rows`` of ``stream`` for one delivery of the blob ``content_id``; see the module docstring.

        Raises :class:`BlobBusy` when another delivery of the same blob holds a live claim on these rows."""
        blob = _owner(content_id)
        claim = Claim(stream=stream, blob=blob, owner=blob + _owner(message_id)[:8])
        groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
        for row in rows:
            groups[(row.hour[:8], f"{table_key(stream)}_{row.hour[8:]}")].append(row)
        for slot, group in groups.items():
            await self._claim_slot(slot, group, claim)
        return claim

    async def _claim_slot(self, slot: tuple[str, str], rows: list[Row], claim: Claim) -> None:
        table, pk = self._record_table(slot[0]), slot[1]
        view = await self._read_view(table, pk)
        live = [s for s in view.pending if not s.stale]
        own = [s for s in live if s.owner == claim.owner]
        own_ids = _union(s.ids for s in own)
        same_blob = _union(s.ids for s in live if s.owner != claim.owner and s.blob == claim.blob)
        others = _union(s.ids for s in live if s.blob != claim.blob)
        expired = _union(s.ids for s in view.pending if s.stale)
        mine: list[Row] = []
        for row in rows:
            digest = _digest(row.record_id)
            if digest in view.sent:
                claim.already_sent += 1
            elif digest in own_ids:
                mine.append(row)  # this delivery's own claim from an attempt that did not finish
            elif digest in same_blob:
                # Another delivery of this very blob (a second message for it) is sending these rows.
                # If it dies, its claim expires; until then this delivery must not decide for it.
                raise BlobBusy(f"another delivery of this blob holds claims in {table}/{pk}")
            elif digest in others:
                claim.claimed_elsewhere += 1  # another blob with the same record sends it
            else:
                claim.taken_over += digest in expired
                mine.append(row)
        if not mine:
            return
        # A retry keeps the rank of its first claim, so a rewrite never loses a race it had won.
        first = min((s.rank for s in own), default=None)
        claim.shards[slot] = await self._write_shard(
            table, pk, claim.owner, mine, sent=False, blob=claim.blob, first=first[0] if first else None
        )
        claim.slots[slot] = mine
        # Two processors can claim one record between the read and the write above. Read again: the
        # earliest first claim wins, every side ranks the shards alike, so exactly one keeps each record.
        # Only what was written since the first read can have raced with this claim.
        after = await self._read_view(table, pk, written_since=view.read_from, delta=True)
        rank = min((s.rank for s in after.pending if s.owner == claim.owner), default=None)
        if rank is None:
            raise StateError(f"the claim just written to {table}/{pk} cannot be read back")
        rivals = _union(s.ids for s in after.pending if s.owner != claim.owner and not s.stale and s.rank < rank)
        kept = [r for r in mine if (d := _digest(r.record_id)) not in rivals and d not in after.sent]
        if len(kept) < len(mine):
            claim.claimed_elsewhere += len(mine) - len(kept)
            mine = kept
            claim.slots[slot] = mine
            await self._write_shard(table, pk, claim.owner, mine, sent=False, first=rank[0], blob=claim.blob)
        claim.mine.extend(mine)

    async def mark_sent(self, claim: Claim, rows: Sequence[Row] | None = None) -> None:
        """Record rows as sent after their upload succeeded: all the claim's rows when ``rows`` is None
        (one write per hour slot), else just ``rows`` (a separate sent shard, for a partial failure)."""
        wanted = None if rows is None else {id(r) for r in rows}
        for slot, slot_rows in claim.slots.items():
            table = self._record_table(slot[0])
            if wanted is None:
                await self._write_shard(table, slot[1], claim.owner, slot_rows, sent=True, blob=claim.blob)
            else:
                part = [r for r in slot_rows if id(r) in wanted]
                if part:
                    claim.partial += 1
                    await self._write_shard(
                        table, slot[1], f"{claim.owner}s{claim.partial}", part, sent=True, blob=claim.blob
                    )

    async def release(self, claim: Claim) -> None:
        """Give up the claim's unsent rows after a failure, so the host's retry of the message — or any
        other blob with the same records — can take them at once instead of after CLAIM_TTL."""
        for slot in claim.slots:
            table = await self._table(self._record_table(slot[0]))
            for n in range(claim.shards.get(slot, 1)):
                self.stats.writes += 1
                try:
                    await table.delete_entity(slot[1], f"{claim.owner}-{n}")
                except ResourceNotFoundError:
                    pass
                except AzureError as exc:
                    log.warning("Could not release a claim (it expires by itself): %s", _reason(exc))
                    return

    async def _write_shard(
        self,
        table_name: str,
        pk: str,
        owner: str,
        rows: Sequence[Row],
        *,
        sent: bool,
        blob: str,
        first: datetime | None = None,
    ) -> int:
        """Write the digests of ``rows`` as one entity (or more, past ~60,000 rows); returns how many."""
        digests = b"".join(_digest(r.record_id) for r in rows)
        per_entity = _SHARD_PROPERTIES * _PROPERTY_BYTES
        pieces = [digests[i : i + per_entity] for i in range(0, len(digests), per_entity)] or [b""]
        expires = datetime.now(UTC) + self._claim_ttl
        for n, piece in enumerate(pieces):
            entity: dict[str, Any] = {
                "PartitionKey": pk,
                "RowKey": f"{owner}-{n}",
                "Owner": owner,
                "Blob": blob,
                "S": _SENT if sent else _PENDING,
                "Expires": expires.isoformat(),
            }
            if first is not None:
                entity["First"] = first.isoformat()
            for k in range(0, len(piece), _PROPERTY_BYTES):
                entity[f"I{k // _PROPERTY_BYTES}"] = piece[k : k + _PROPERTY_BYTES]
            table = await self._table(table_name)
            self.stats.writes += 1
            try:
                await table.upsert_entity(entity, mode=UpdateMode.REPLACE)
            except AzureError as exc:
                raise StateError(f"cannot write dedupe keys to {table_name}: {_reason(exc)}") from exc
        return len(pieces)

    async def _read_view(
        self, table_name: str, pk: str, *, written_since: datetime | None = None, delta: bool = False
    ) -> _View:
        """The partition as a claim needs it: every sent key, and the pending shards.

        Sent shards never change, so each process keeps their keys per partition and afterwards reads
        only what was written since (plus every pending shard, which can change or vanish): a blob's claim
        costs the delta, not the whole hour again. With ``written_since`` only shards written from then
        on are read — what could have raced with a claim — and ``pending`` holds just those.
        """
        key = (table_name, pk)
        cache = self._sent_cache.pop(key, None) or _SentKeys()
        self._sent_cache[key] = cache  # most recently used last
        query = "PartitionKey eq @pk"
        parameters: dict[str, Any] = {"pk": pk}
        if delta and written_since is not None:
            query += " and Timestamp ge @since"
            parameters["since"] = written_since - _CACHE_OVERLAP
        elif cache.high_water is not None:
            query += " and ( Timestamp ge @since or S eq @pending )"  # spaces: the SDK splits on them
            parameters |= {"since": cache.high_water - _CACHE_OVERLAP, "pending": _PENDING}
        now = datetime.now(UTC)
        pending: list[_Shard] = []
        parsed: dict[str, _Shard] = {}
        for entity in await self._read_partition(table_name, pk, select=None, query=query, parameters=parameters):
            stamp = entity.metadata.get("timestamp") or now
            if cache.high_water is None or stamp > cache.high_water:
                cache.high_water = stamp
            row_key = str(entity["RowKey"])
            if entity.get("S") == _SENT:
                if row_key not in cache.rows:
                    cache.rows.add(row_key)
                    cache.ids |= _ids(entity)
                continue
            known = cache.pending.get(row_key)
            if known is None or known.stamp != stamp:  # a pending shard is parsed once per version
                first = _parse(entity.get("First")) or stamp
                expires = _parse(entity.get("Expires")) or stamp + self._claim_ttl
                known = _Shard(
                    row_key=row_key,
                    owner=str(entity.get("Owner", "")),
                    blob=str(entity.get("Blob", "")),
                    rank=(first, row_key),
                    stale=False,
                    ids=_ids(entity),
                    stamp=stamp,
                    expires=expires,
                )
            parsed[row_key] = known
            stale = known.expires is not None and now > known.expires
            pending.append(replace(known, stale=True) if stale else known)
        if not delta:
            cache.pending = parsed  # the full set of pending shards as of this read
        else:
            cache.pending.update(parsed)
        self._trim_cache()
        return _View(sent=cache.ids, pending=pending, read_from=cache.high_water)

    def _trim_cache(self) -> None:
        total = sum(len(c.ids) for c in self._sent_cache.values())
        while total > _CACHE_KEYS and len(self._sent_cache) > 1:
            _, oldest = self._sent_cache.popitem(last=False)
            total -= len(oldest.ids)

    # -- housekeeping ------------------------------------------------------------------------------

    async def drop_expired_tables(self, now: datetime) -> list[str]:
        """Drop day tables older than the retention: one query, and one delete per expired day."""
        cutoff = (now - self._retention).astimezone(UTC).strftime("%Y%m%d")
        dropped: list[str] = []
        pattern = re.compile(rf"^{re.escape(self._prefix)}(?:blobs|rec)(\d{{8}})$")
        self.stats.reads += 1
        try:
            names = [
                t.name
                async for t in self._service.query_tables(
                    "TableName ge @lo and TableName lt @hi", parameters={"lo": self._prefix, "hi": self._prefix + "~"}
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
            raise StateError(f"cannot drop expired tables: {_reason(exc)}") from exc
        return dropped

    # -- primitives --------------------------------------------------------------------------------

    async def _read_partition(
        self,
        table_name: str,
        pk: str,
        select: list[str] | None = ["RowKey"],  # noqa: B006 - never mutated
        query: str = "PartitionKey eq @pk",
        parameters: dict[str, Any] | None = None,
    ) -> list[Any]:
        table = await self._table(table_name)
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
            raise StateError(f"cannot read {table_name}: {_reason(exc)}") from exc
        return out

    async def _write_batches(self, table_name: str, ops: list[Any]) -> None:
        for start in range(0, len(ops), _BATCH):
            await self._submit(table_name, ops[start : start + _BATCH])

    async def _submit(self, table_name: str, ops: list[Any]) -> None:
        """One entity-group transaction (up to 100 entities of one partition)."""
        table = await self._table(table_name)
        self.stats.writes += 1
        try:
            await table.submit_transaction(ops)
        except (TableTransactionError, AzureError) as exc:
            raise StateError(f"table transaction on {table_name} failed: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    code = getattr(exc, "error_code", None) or getattr(exc, "status_code", None)
    return f"{type(exc).__name__}{f' ({code})' if code else ''}"
