"""Reading the record-key partitions as a claim needs them, with this process's cache of their sent keys.

Sent shards never change, so a process keeps their keys per partition and afterwards reads only what was
written since (plus every pending shard, which can change or vanish): a blob's claim costs the delta, not
the whole hour again. Whether a pending shard is still live is judged by the storage service's clock: its
Timestamp against the ``Date`` of the read that found it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .shards import DIGEST, PENDING, SENT, Shard, digests_of
from .slots import Partition
from .tables import Tables

__all__ = ["PartitionReader", "PartitionView", "SentKeys"]

#: Sent keys a process keeps (about 25 bytes each in memory, see SentKeys); older partitions are dropped first.
_CACHE_KEYS = 1_000_000
#: SentKeys buckets keys by their first bytes and keeps the rest of each key in one bytes object per bucket.
_HEAD = 2
_TAIL = DIGEST - _HEAD
#: How far before the newest Timestamp seen the next incremental read starts: Timestamps are assigned at
#: commit by the partition's server, so a small margin covers the skew of writes in flight.
_CACHE_OVERLAP = timedelta(seconds=2)


class SentKeys:
    """The record keys a partition's sent shards hold, packed: a set of 16-byte digests costs about 100 bytes a
    key (the bytes object and the set's slot), so a day's keys of a busy tenant, cached for every blob's claim,
    would be most of a worker's memory. Here keys are grouped by their first two bytes, and a group keeps the
    other 14 of each key side by side in one bytes object: about 25 bytes a key at 400,000, searched at C speed
    (``bytes.find``, a few keys per group)."""

    __slots__ = ("_buckets", "_count")

    def __init__(self) -> None:
        self._buckets: dict[bytes, bytes] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, bytes) or len(key) != DIGEST:
            return False
        bucket = self._buckets.get(key[:_HEAD])
        if bucket is None:
            return False
        tail = key[_HEAD:]
        at = bucket.find(tail)
        while at >= 0:
            if at % _TAIL == 0:  # a match across two keys' boundary is not a key
                return True
            at = bucket.find(tail, at + 1)
        return False

    def update(self, keys: Iterable[bytes]) -> None:
        grouped: dict[bytes, list[bytes]] = {}
        for key in keys:
            grouped.setdefault(key[:_HEAD], []).append(key[_HEAD:])
        for head, tails in grouped.items():
            self._buckets[head] = self._buckets.get(head, b"") + b"".join(tails)
            self._count += len(tails)


@dataclass
class _Known:
    """What a process knows of one partition: its sent shards (row key -> Timestamp of the version read)
    and their record keys, the newest Timestamp seen, and its pending shards as last read."""

    sent: dict[str, datetime] = field(default_factory=dict)
    ids: SentKeys = field(default_factory=SentKeys)
    high_water: datetime | None = None
    pending: dict[str, Shard] = field(default_factory=dict)


@dataclass(frozen=True)
class PartitionView:
    part: Partition
    #: every sent key of the partition known to this process
    sent: SentKeys
    #: every pending shard (a full read) or those written since (a read-back), with whether each is live
    pending: list[tuple[Shard, bool]]
    #: the newest Timestamp seen: anything written later is at least as new
    read_from: datetime | None


class PartitionReader:
    """The record-key partitions of one process: reads, and the cache of their sent keys."""

    def __init__(self, tables: Tables, claim_ttl: timedelta) -> None:
        self._tables = tables
        self._claim_ttl = claim_ttl
        self._cache: OrderedDict[tuple[str, str], _Known] = OrderedDict()

    async def read(self, part: Partition, *, since: datetime | None = None) -> PartitionView:
        """The partition: every sent key, and the pending shards. With ``since`` only the shards written
        from then on are read (what could have raced with a claim), and ``pending`` holds just those."""
        key = (part.table, part.pk)
        known = self._cache.pop(key, None) or _Known()
        self._cache[key] = known  # most recently used last
        query = "PartitionKey eq @pk"
        parameters: dict[str, Any] = {"pk": part.pk}
        if since is not None:
            query += " and Timestamp ge @since"
            parameters["since"] = since - _CACHE_OVERLAP
        elif known.high_water is not None:
            query += " and ( Timestamp ge @since or S eq @pending )"  # spaces: the SDK splits on them
            parameters |= {"since": known.high_water - _CACHE_OVERLAP, "pending": PENDING}
        result = await self._tables.query(part.table, query, parameters, create=part.create)
        stamps = [e.metadata.get("timestamp") for e in result.entities]
        # Without a Date header the newest Timestamp is the service's time as far as is known: a claim is
        # then judged younger than it is, never older.
        server_now = result.server_time or max((s for s in stamps if s), default=None) or known.high_water
        parsed: dict[str, Shard] = {}
        for entity, found in zip(result.entities, stamps, strict=True):
            stamp: datetime = found or server_now or datetime.now(UTC)  # the service always sends one
            if known.high_water is None or stamp > known.high_water:
                known.high_water = stamp
            row_key = str(entity["RowKey"])
            if entity.get("S") == SENT:
                # Sent shards are never rewritten; a newer version would still be merged, not skipped.
                if known.sent.get(row_key) != stamp:
                    known.sent[row_key] = stamp
                    known.ids.update(digests_of(entity))
                continue
            shard = known.pending.get(row_key)
            if shard is None or shard.stamp != stamp:  # a pending shard is parsed once per version
                shard = Shard.parse(part, entity, stamp)
            parsed[row_key] = shard
        if since is None:
            known.pending = parsed  # the full set of pending shards as of this read
        else:
            known.pending.update(parsed)
        self._trim()
        pending = [(s, server_now is None or s.live(server_now, self._claim_ttl)) for s in parsed.values()]
        return PartitionView(part, known.ids, pending, known.high_water)

    def _trim(self) -> None:
        total = sum(len(c.ids) for c in self._cache.values())
        while total > _CACHE_KEYS and len(self._cache) > 1:
            _, oldest = self._cache.popitem(last=False)
            total -= len(oldest.ids)
