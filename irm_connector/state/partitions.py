"""Reading the record-key partitions as a claim needs them, with this process's cache of their sent keys.

Sent shards never change, so a process keeps their keys per partition and afterwards reads only what was
written since (plus every pending shard, which can change or vanish): a blob's claim costs the delta, not
the whole hour again. Whether a pending shard is still live is judged by the storage service's clock: its
Timestamp against the ``Date`` of the read that found it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .shards import PENDING, SENT, Shard, ids_of
from .slots import Partition
from .tables import Tables

__all__ = ["PartitionReader", "PartitionView"]

#: Sent keys a process keeps (about 80 bytes each in memory); older partitions are dropped first.
_CACHE_KEYS = 1_000_000
#: How far before the newest Timestamp seen the next incremental read starts: Timestamps are assigned at
#: commit by the partition's server, so a small margin covers the skew of writes in flight.
_CACHE_OVERLAP = timedelta(seconds=2)


@dataclass
class _Known:
    """What a process knows of one partition: its sent shards (row key -> Timestamp of the version read)
    and their record keys, the newest Timestamp seen, and its pending shards as last read."""

    sent: dict[str, datetime] = field(default_factory=dict)
    ids: set[bytes] = field(default_factory=set)
    high_water: datetime | None = None
    pending: dict[str, Shard] = field(default_factory=dict)


@dataclass(frozen=True)
class PartitionView:
    part: Partition
    #: every sent key of the partition known to this process
    sent: set[bytes]
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
                    known.ids |= ids_of(entity)
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
