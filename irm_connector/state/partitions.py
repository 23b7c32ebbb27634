"""Reading the record-key partitions as a claim needs them, with this process's cache of their sent keys.

Sent shards never change, so a process keeps their keys per partition and afterwards reads only what was
written since (plus every pending shard, which can change or vanish): a blob's claim costs the delta, not
the whole hour again. Whether a pending shard is still live is judged by the storage service's clock: its
Timestamp against the ``Date`` of the read that found it.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .shards import DIGEST, PENDING, SENT, Shard, digests_of
from .slots import Partition
from .tables import PartitionRead, Tables

__all__ = ["REPEATS", "PartitionReader", "PartitionView", "SentKeys"]

#: Sent keys a process keeps (about 25 bytes each in memory, see SentKeys); older partitions are dropped first.
_CACHE_KEYS = 1_000_000
#: A partition not read for this long is dropped whatever the count: a day's records stop coming a while after
#: the day, and under the key bound alone a quiet tenant's past days stayed cached for months. Read again, it is
#: read whole once.
_CACHE_IDLE = 6 * 3600.0
#: SentKeys buckets keys by their first bytes and keeps the rest of each key in one bytes object per bucket.
_HEAD = 2
_TAIL = DIGEST - _HEAD
#: How far before the newest Timestamp seen the next incremental read starts: Timestamps are assigned at
#: commit by the partition's server, so a small margin covers the skew of writes in flight.
_CACHE_OVERLAP = timedelta(seconds=2)
#: A read that would bring more known keys than this again (about 50 KB of them) is made in two requests
#: instead (:meth:`PartitionReader._read_changes`); a request costs more CPU than fewer keys would.
REPEATS = 3_000
#: Sent keys a process remembers in the order it added them (about 70 bytes each, in all partitions), so that a
#: claim's read-back checks its keys against those added since its first read only (:class:`_Journal`).
_JOURNAL_KEYS = 100_000
#: What a listing of a partition's shards reads of each: no record keys.
_LISTING = ["RowKey", "S", "K", "Timestamp"]


class SentKeys:
    """The record keys a partition's sent shards hold, packed: a set of 16-byte digests costs about 100 bytes a
    key (the bytes object and the set's slot), so a day's keys of a busy tenant, cached for every blob's claim,
    would be most of a worker's memory. Here keys are grouped by their first two bytes, and a group keeps the
    other 14 of each key side by side in one bytes object: about 25 bytes a key at 400,000, searched at C speed
    (``bytes.find``, a few keys per group)."""

    __slots__ = ("_buckets", "_count", "serial")

    _serials = itertools.count()

    def __init__(self) -> None:
        self._buckets: dict[bytes, bytes] = {}
        self._count = 0
        #: names this set in the process's journal (:class:`_Journal`), for as long as the process runs
        self.serial = next(SentKeys._serials)

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and bool(self.intersection((key,)))

    def intersection(self, keys: Iterable[bytes]) -> set[bytes]:
        """Those of ``keys`` held here, as ``set.intersection`` answers: what ``in`` says of each, in one call (a
        claim asks it of thousands)."""
        found: set[bytes] = set()
        bucket_of = self._buckets.get
        for key in keys:
            bucket = bucket_of(key[:_HEAD])
            if bucket is None or len(key) != DIGEST:
                continue
            tail = key[_HEAD:]
            at = bucket.find(tail)
            while at >= 0:
                if at % _TAIL == 0:
                    found.add(key)
                    break
                at = bucket.find(tail, at + 1)
        return found

    def update(self, keys: Iterable[bytes]) -> int:
        """Add ``keys``; how many there were."""
        # Key by key, no grouping first: a batch has far fewer keys than there are buckets, so a bucket rarely
        # gets two, and one concatenation per key is the least work per key (measured 35-50% less).
        buckets = self._buckets
        bucket_of = buckets.get
        added = 0
        for key in keys:
            head = key[:_HEAD]
            buckets[head] = bucket_of(head, b"") + key[_HEAD:]
            added += 1
        self._count += added
        return added


class _Journal:
    """The sent keys this process added lately, in the order added, across partitions (at most ``limit``): a
    claim's read-back asks only those added since its first read (:meth:`PartitionReader.sent_since`)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        #: (the set's serial, how many it held before, the keys added)
        self._entries: deque[tuple[int, int, list[bytes]]] = deque()
        self._keys = 0

    def add(self, sent: SentKeys, keys: Iterable[bytes]) -> int:
        """``sent.update(keys)``, remembered here."""
        batch = list(keys)
        before = len(sent)
        sent.update(batch)
        if batch:
            self._entries.append((sent.serial, before, batch))
            self._keys += len(batch)
            while self._keys > self._limit and self._entries:
                self._keys -= len(self._entries.popleft()[2])
        return len(batch)

    def since(self, sent: SentKeys, count: int) -> list[list[bytes]] | None:
        """The keys given to ``sent`` since it held ``count``, in batches; None when this no longer knows them all
        (ask ``sent`` itself instead). Keys are only ever added: those it held at ``count`` it holds still."""
        batches, found = [], 0
        for serial, before, batch in reversed(self._entries):
            if serial == sent.serial:
                if before < count:
                    break
                batches.append(batch)
                found += len(batch)
        # Every key added since, or the answer would miss a sent one: batches forgotten here, or keys given to
        # ``sent`` elsewhere than through :meth:`add`, leave the count short.
        return batches if found == len(sent) - count else None


@dataclass
class _Known:
    """What a process knows of one partition: its sent shards (row key -> Timestamp of the version read) and
    their record keys, the newest Timestamp seen, its pending shards as last read, and the Timestamps and key
    counts of the sent shards read lately (what a read that looks back would bring again)."""

    sent: dict[str, datetime] = field(default_factory=dict)
    recent: list[tuple[datetime, int]] = field(default_factory=list)
    ids: SentKeys = field(default_factory=SentKeys)
    high_water: datetime | None = None
    pending: dict[str, Shard] = field(default_factory=dict)
    #: when this process last read the partition (monotonic seconds)
    used: float = field(default_factory=time.monotonic)

    def cached(self, row_key: str, state: Any, stamp: datetime | None, keys_tag: Any) -> tuple[bool, Shard | None]:
        """Whether this process knows the keys of this version of a shard, and the pending shard it read them
        in (None for a sent shard already among the sent keys). Taken at once, because other deliveries of the
        process read the partition meanwhile and replace what is cached."""
        if stamp is None:
            return False, None
        shard = self.pending.get(row_key)
        if state == SENT:
            if self.sent.get(row_key) == stamp:
                return True, None
            # A shard turned sent in place keeps its keys' tag: the keys are the pending version's.
            return (True, shard) if keys_tag and shard is not None and shard.keys_tag == keys_tag else (False, None)
        return (True, shard) if shard is not None and shard.stamp == stamp else (False, None)

    def repeats(self, start: datetime, *, all_pending: bool) -> int:
        """How many known keys one read of the shards written from ``start`` (and, with ``all_pending``, of
        every pending shard) would bring again. Sent shards older than ``start`` are forgotten here: reads only
        look a little further back than the last."""
        self.recent = [(stamp, count) for stamp, count in self.recent if stamp >= start - _CACHE_OVERLAP]
        pending = sum(len(s.ids) for s in self.pending.values() if all_pending or s.stamp >= start)
        return pending + sum(count for stamp, count in self.recent if stamp >= start)


#: One shard as a read found it: the entity, its Timestamp, whether the entity holds the keys (else it is just
#: listed), and the pending shard this process read the same keys in, when it is just listed (None for a sent
#: shard already among the sent keys).
_Version = tuple[Any, datetime | None, bool, Shard | None]


@dataclass(frozen=True)
class PartitionView:
    part: Partition
    #: every sent key of the partition known to this process
    sent: SentKeys
    #: how many ``sent`` held when this view was taken (see :meth:`PartitionReader.sent_since`)
    sent_count: int
    #: every pending shard (a full read) or those written since (a read-back), with whether each is live
    pending: list[tuple[Shard, bool]]
    #: from when a read-back finds whatever this read could have missed (see :func:`_read_from`)
    read_from: datetime | None
    #: the storage service's time the pending shards' liveness was judged by (None: not known)
    server_now: datetime | None = None


def _read_from(floor: datetime | None, read: PartitionRead) -> datetime | None:
    """The newest Timestamp among what this read's first page found and what the reads finished before it began
    found (``floor``): anything written after the read ran is at least as new. Never one a read that ran
    alongside found: its answer may be from later than this read's, and a write in between would be missed by
    both this read and its read-back. Nor one of a later page, which ran later too."""
    first = read.entities if read.first_page is None else read.entities[: read.first_page]
    stamps = [e.metadata.get("timestamp") for e in first]
    return max((s for s in (floor, *stamps) if s is not None), default=None)


def _changes_query(part: Partition, floor: datetime | None, since: datetime | None) -> tuple[str, dict[str, Any]]:
    """What a read asks for: the shards written from ``since`` (a read-back), else every pending shard and those
    written from ``floor`` (the newest Timestamp seen before), else the whole partition; each looking
    :data:`_CACHE_OVERLAP` further back."""
    if since is not None:
        return "PartitionKey eq @pk and Timestamp ge @since", {"pk": part.pk, "since": since - _CACHE_OVERLAP}
    if floor is not None:
        parameters = {"pk": part.pk, "since": floor - _CACHE_OVERLAP, "pending": PENDING}
        return "PartitionKey eq @pk and ( Timestamp ge @since or S eq @pending )", parameters  # spaces: the SDK splits
    return "PartitionKey eq @pk", {"pk": part.pk}


class PartitionReader:
    """The record-key partitions of one process: reads, and the cache of their sent keys."""

    def __init__(self, tables: Tables, claim_ttl: timedelta, *, repeats: int = REPEATS) -> None:
        self._tables = tables
        self._claim_ttl = claim_ttl
        self._repeats = repeats
        self._cache: OrderedDict[tuple[str, str], _Known] = OrderedDict()
        self._journal = _Journal(_JOURNAL_KEYS)

    def sent_since(self, wanted: set[bytes], first: PartitionView, again: PartitionView) -> set[bytes]:
        """The keys of ``wanted`` sent, as ``again`` (a partition's read-back) knows, where none was as ``first``
        (its first read) knew: only the keys added between the two reads are asked."""
        batches = self._journal.since(again.sent, first.sent_count) if again.sent is first.sent else None
        if batches is None:  # the partition's cache was dropped between the reads, or much was added
            return again.sent.intersection(wanted)
        found: set[bytes] = set()
        for batch in batches:
            found |= wanted.intersection(batch)
        return found

    async def read(self, part: Partition, *, since: datetime | None = None) -> PartitionView:
        """The partition: every sent key, and the pending shards. With ``since`` only the shards written
        from then on are read (what could have raced with a claim), and ``pending`` holds just those."""
        key = (part.table, part.pk)
        cached = self._cache.pop(key, None)
        known = cached if cached is not None else _Known()
        known.used = time.monotonic()
        if cached is not None or since is None:
            self._cache[key] = known  # most recently used last
        # else a read-back of a partition dropped from the cache since its first read: what it finds is only what
        # was written since, and kept it would pass for all the partition's sent keys at the next first read.
        floor = known.high_water
        if floor is not None:
            again = known.repeats((since or floor) - _CACHE_OVERLAP, all_pending=since is None)
            if again > self._repeats:
                return await self._read_changes(part, known, floor, since)
        query, parameters = _changes_query(part, floor, since)
        result = await self._tables.query_plain(part.table, query, parameters, create=part.create)
        entities: list[_Version] = [(e, e.metadata.get("timestamp"), True, None) for e in result.entities]
        return self._view(part, known, entities, result.server_time, _read_from(floor, result), full=since is None)

    async def _read_changes(
        self, part: Partition, known: _Known, floor: datetime, since: datetime | None
    ) -> PartitionView:
        """A read of a partition this process has read before, in two requests instead of one that would bring
        many keys again: first which shards there are (row key, state and version only), then the keys of just
        the versions it has not seen. In a busy partition most would be seen ones otherwise: Timestamps only
        nearly follow commit order, so every read looks :data:`_CACHE_OVERLAP` back, and every read lists the
        pending shards (which can change or vanish)."""
        query, parameters = _changes_query(part, floor, since)
        listing = await self._tables.query_plain(part.table, query, parameters, select=_LISTING, create=part.create)
        listed = []
        for e in listing.entities:
            row_key, state, stamp = str(e["RowKey"]), e.get("S"), e.metadata.get("timestamp")
            listed.append((e, row_key, stamp, *known.cached(row_key, state, stamp, e.get("K"))))
        # Content is fetched for everything written after the newest version seen before, and for any older
        # version not seen (a write whose Timestamp came in behind a newer one's).
        unseen = [stamp for _, _, stamp, seen, _ in listed if not seen]
        content_query = "PartitionKey eq @pk and Timestamp gt @start"
        content_parameters: dict[str, Any] = {"pk": part.pk, "start": floor}
        if any(stamp is None for stamp in unseen):  # the service always sends one; if not, read it all again
            content_query, content_parameters = query, parameters
        elif older := [stamp for stamp in unseen if stamp is not None and stamp <= floor]:
            content_query, content_parameters["start"] = "PartitionKey eq @pk and Timestamp ge @start", min(older)
        content = PartitionRead()  # with nothing unseen, the listing alone is a whole read as of its time
        if unseen:
            content = await self._tables.query_plain(part.table, content_query, content_parameters, create=part.create)
        fetched = {str(e["RowKey"]): e for e in content.entities}
        entities: list[_Version] = []
        for listed_entity, row_key, stamp, seen, shard in listed:
            entity = fetched.pop(row_key, None)
            if entity is not None:
                entities.append((entity, entity.metadata.get("timestamp"), True, None))
            elif seen:
                entities.append((listed_entity, stamp, False, shard))
            # else: gone (or rewritten, and fetched) between the two requests
        # and those written after the listing
        entities.extend((e, e.metadata.get("timestamp"), True, None) for e in fetched.values())
        # The listing's Date is the earlier: judged by it, a claim is never taken for older than it is.
        server_time = listing.server_time or content.server_time
        return self._view(part, known, entities, server_time, _read_from(floor, listing), full=since is None)

    def _view(
        self,
        part: Partition,
        known: _Known,
        entities: list[_Version],
        server_time: datetime | None,
        read_from: datetime | None,
        *,
        full: bool,
    ) -> PartitionView:
        """What the entities read say of the partition (see :data:`_Version`)."""
        stamps = [stamp for _, stamp, _, _ in entities]
        # Without a Date header the newest Timestamp is the service's time as far as is known: a claim is
        # then judged younger than it is, never older.
        server_now = server_time or max((s for s in stamps if s), default=None) or known.high_water
        parsed: dict[str, Shard] = {}
        for entity, found, read, cached in entities:
            stamp: datetime = found or server_now or datetime.now(UTC)  # the service always sends one
            row_key = str(entity["RowKey"])
            if entity.get("S") == SENT:
                if not read and cached is None:
                    continue  # among the sent keys already
                # Sent shards are never rewritten; a newer version would still be merged, not skipped.
                if known.sent.get(row_key) != stamp:
                    known.sent[row_key] = stamp
                    keys = digests_of(entity) if cached is None else cached.ids
                    known.recent.append((stamp, self._journal.add(known.ids, keys)))
                continue
            shard = cached or known.pending.get(row_key)
            if shard is None or shard.stamp != stamp:  # a pending shard is parsed once per version
                shard = Shard.parse(part, entity, stamp)
            parsed[row_key] = shard
        # The next read starts here. Not from a later page's newest Timestamp: that page was read later, after
        # writes in the ranges the earlier pages had covered, which neither this read nor the next would find.
        if read_from is not None and (known.high_water is None or read_from > known.high_water):
            known.high_water = read_from
        if full:
            known.pending = parsed  # the full set of pending shards as of this read
        else:
            known.pending.update(parsed)
        self._trim()
        pending = [(s, server_now is None or s.live(server_now, self._claim_ttl)) for s in parsed.values()]
        return PartitionView(part, known.ids, len(known.ids), pending, read_from, server_now)

    def _trim(self) -> None:
        idle = time.monotonic() - _CACHE_IDLE
        while len(self._cache) > 1 and next(iter(self._cache.values())).used < idle:  # least recently used first
            self._cache.popitem(last=False)
        total = sum(len(c.ids) for c in self._cache.values())
        while total > _CACHE_KEYS and len(self._cache) > 1:
            _, oldest = self._cache.popitem(last=False)
            total -= len(oldest.ids)
