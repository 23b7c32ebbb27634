"""Which records are sent: the claim protocol that lets concurrent processors send each record once.

Record keys are 16-byte digests of the record ``Id``, kept in ``{prefix}recYYYYMMDD`` (by the record's
``CreationTime`` day, which duplicates of a record share), partitioned by stream and hour, packed into one
entity per delivery (blob and queue message) and hour: a few table requests per blob instead of one per
record.

The rules:

- **Claim, then read back.** A processor first writes the keys it will send as a *pending* shard, then
  reads what was written since its first read: of two deliveries claiming one record the earlier first
  claim wins (rank: the time of the owner's first claim, then its row key), and both sides rank alike.
- **Sent is final.** After an upload is accepted the shard is rewritten as *sent*. Sent shards never
  change, so a process caches their keys per partition and later reads ask only for what is newer.
- **Takeover.** A pending shard whose owner died expires after :data:`CLAIM_TTL`; its records are taken
  over by the next claimant.
- **Busy.** Another *message* for the same blob waits (:class:`~irm_connector.errors.BlobBusyError`) while
  the first one's claim lives; another *blob* holding the same record skips it.
- **Release.** A failed attempt deletes its pending shards so the retry (or another blob) can take them at
  once; rows accepted before the failure are marked sent first.

A crash between an accepted upload and the sent mark re-sends that delivery's rows when the host redelivers
the message (it finds its own claim): duplicates are possible there, loss is not.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from irm_connector.errors import BlobBusyError, StateError
from irm_connector.models import Row, parse_utc

from .tables import Tables, reason, table_key

__all__ = ["CLAIM_TTL", "Claim", "Claims"]

log = logging.getLogger(__name__)

#: A claim lives this long: longer than one invocation may run (host.json functionTimeout), so a live
#: processor never loses it, and short enough that a dead one's rows are taken over soon after.
CLAIM_TTL = timedelta(minutes=10)
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
_SENT = "s"
_PENDING = "p"


def _owner(content_id: str) -> str:
    return hashlib.sha256(content_id.encode("utf-8", "replace")).hexdigest()[:24]


def _digest(record_id: str) -> bytes:
    return hashlib.blake2b(record_id.encode("utf-8", "replace"), digest_size=_DIGEST).digest()


def _ids(entity: Any) -> set[bytes]:
    return {
        bytes(block[i : i + _DIGEST])
        for name, block in entity.items()
        if name.startswith("I") and isinstance(block, bytes | bytearray)
        for i in range(0, len(block), _DIGEST)
    }


def _union(sets: Iterable[set[bytes]]) -> set[bytes]:
    out: set[bytes] = set()
    for one in sets:
        out |= one
    return out


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


class Claims:
    """The ``{prefix}recYYYYMMDD`` day tables and this process's cache of their sent keys."""

    KIND = "rec"

    def __init__(self, tables: Tables, *, claim_ttl: timedelta = CLAIM_TTL) -> None:
        self._tables = tables
        self._claim_ttl = claim_ttl
        self._sent_cache: OrderedDict[tuple[str, str], _SentKeys] = OrderedDict()

    def _table_name(self, day: str) -> str:
        return self._tables.name(self.KIND, day)

    async def claim_records(self, stream: str, rows: Sequence[Row], content_id: str, message_id: str = "") -> Claim:
        """Claim ``rows`` of ``stream`` for one delivery of the blob ``content_id``; see the module docstring.

        Raises :class:`BlobBusyError` when another delivery of the same blob holds a live claim on these rows."""
        blob = _owner(content_id)
        claim = Claim(stream=stream, blob=blob, owner=blob + _owner(message_id)[:8])
        groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
        for row in rows:
            groups[(row.hour[:8], f"{table_key(stream)}_{row.hour[8:]}")].append(row)
        for slot, group in groups.items():
            await self._claim_slot(slot, group, claim)
        return claim

    async def _claim_slot(self, slot: tuple[str, str], rows: list[Row], claim: Claim) -> None:
        table, pk = self._table_name(slot[0]), slot[1]
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
                raise BlobBusyError(f"another delivery of this blob holds claims in {table}/{pk}")
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
            table = self._table_name(slot[0])
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
        """Give up the claim's unsent rows after a failure, so the host's retry of the message (or any
        other blob with the same records) can take them at once instead of after CLAIM_TTL."""
        for slot in claim.slots:
            table = await self._tables.table(self._table_name(slot[0]))
            for n in range(claim.shards.get(slot, 1)):
                self._tables.stats.writes += 1
                try:
                    await table.delete_entity(slot[1], f"{claim.owner}-{n}")
                except ResourceNotFoundError:
                    pass
                except AzureError as exc:
                    log.warning("Could not release a claim (it expires by itself): %s", reason(exc))
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
        table = await self._tables.table(table_name)
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
            self._tables.stats.writes += 1
            try:
                await table.upsert_entity(entity, mode=UpdateMode.REPLACE)
            except AzureError as exc:
                raise StateError(f"cannot write dedupe keys to {table_name}: {reason(exc)}") from exc
        return len(pieces)

    async def _read_view(
        self, table_name: str, pk: str, *, written_since: datetime | None = None, delta: bool = False
    ) -> _View:
        """The partition as a claim needs it: every sent key, and the pending shards.

        Sent shards never change, so each process keeps their keys per partition and afterwards reads
        only what was written since (plus every pending shard, which can change or vanish): a blob's claim
        costs the delta, not the whole hour again. With ``written_since`` only shards written from then
        on are read (what could have raced with a claim), and ``pending`` holds just those.
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
        for entity in await self._tables.read_partition(table_name, pk, query=query, parameters=parameters):
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
                first = parse_utc(entity.get("First")) or stamp
                expires = parse_utc(entity.get("Expires")) or stamp + self._claim_ttl
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
