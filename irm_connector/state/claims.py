"""Which records are sent: the claim protocol that lets concurrent processors send each record once.

Record keys are 16-byte digests of the record ``Id`` in shards (:mod:`.shards`), placed by the record's
stream and ``CreationTime`` (:mod:`.slots`): a claim costs a few table requests per blob and hour, not one
per record.

The rules:

- **Claim, then read back.** A delivery writes the keys it will send as *pending* shards, then reads what
  was written since its first read: of two deliveries claiming one record the earlier claim wins (rank:
  the service's Timestamp of the shard's first write, then its row key), and both sides rank alike. A
  shard keeps its rank across rewrites (``First``); records claimed later go into a new shard.
- **Sent is final.** After an upload is accepted the delivery's pending shards become *sent* in place; a
  partial upload writes new sent shards instead. No write ever reuses the row key of a sent shard (each
  delivery attempt has a nonce of its own), so a process caches sent keys per partition and later reads
  ask only for what is newer.
- **Held records wait.** A record in another delivery's live pending shard is *held*: the delivery sends
  its own rows first, then reads again until the holder has sent it (dropped) or given it up (claimed
  anew). A delivery never completes while a record of its blob is neither sent nor held alive by another,
  and never waits while it holds pending shards itself, so two deliveries never wait on each other.
- **Expiry, by the service's clock.** A pending shard is live for :data:`CLAIM_TTL` after its last write:
  its Timestamp against the ``Date`` of the read that found it. The TTL is the function timeout plus a
  margin, so a processor that is still running never loses its claim, whatever the machines' clocks say.
  A dead owner's records are taken over after that. A redelivery of the same message carries its own
  claim on (and its rank) only while a quarter of its life is left (:data:`CARRY_MARGIN`); nearer its end it
  claims anew, since the claim could expire and be taken over before the redelivery writes it again. A rewrite
  that lands after the claim's end all the same (a write stalled for minutes) ranks as a claim made then.
- **Release.** A failed attempt marks what was accepted as sent, then deletes its pending shards, so the
  retry (or a waiting delivery) can take the rest at once.

A crash between an accepted upload and the sent mark re-sends that delivery's rows when the host
redelivers the message (it finds its own claim): duplicates are possible there, loss is not.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from irm_connector.deadline import FUNCTION_TIMEOUT, cleaning_up
from irm_connector.errors import StateError
from irm_connector.models import Row

from .partitions import REPEATS, PartitionReader, PartitionView, SentKeys
from .shards import SENT, Shard, digest, owner_key, shard_entity, split
from .slots import Partition, Slot, Slots
from .tables import Tables

__all__ = ["CLAIM_MARGIN", "CLAIM_TTL", "FUNCTION_TIMEOUT", "Claim", "Claims"]

log = logging.getLogger(__name__)

#: Slack for the storage servers' clocks and for the host stopping an invocation late.
CLAIM_MARGIN = timedelta(minutes=2)
#: A pending claim lives this long after its last write: a processor still running never loses it, a dead
#: one's records are taken over soon after.
CLAIM_TTL = FUNCTION_TIMEOUT + CLAIM_MARGIN
#: The share of a claim's life that must be left for a redelivery to carry its own claim on (3 of 12 minutes):
#: more than the time from a claim's first read to its write, unless a write stalls (the read-back checks).
CARRY_MARGIN = 0.25


@dataclass
class _Mine:
    """One pending shard of this delivery's current round."""

    part: Partition
    row_key: str
    rows: list[Row]
    digests: list[bytes]
    #: the rank time it keeps; None until the read-back has seen its first write
    first: datetime | None
    #: the ETag of this delivery's last write of it
    etag: str | None = None
    #: a claim carried on from an attempt that did not finish: when it expires unless rewritten (service's clock)
    carried_until: datetime | None = None


@dataclass
class Claim:
    """One delivery's claim on the rows of one stream: what it must upload now (``mine``), what another
    delivery holds alive (``held``: wait, then :meth:`Claims.claim_held`), and the counts."""

    stream: str
    #: the blob's key, and this delivery's (the blob's key and the queue message's)
    blob: str
    owner: str
    #: this attempt's own: row keys are ``{owner}.{nonce}.{p|s}{n}``, never written by another attempt
    nonce: str = field(default_factory=lambda: secrets.token_hex(4))
    mine: list[Row] = field(default_factory=list)
    held: list[Row] = field(default_factory=list)
    already_sent: int = 0
    claimed_elsewhere: int = 0
    taken_over: int = 0
    pending: list[_Mine] = field(default_factory=list)
    written: int = 0

    def next_key(self, *, sent: bool = False) -> str:
        self.written += 1
        return f"{self.owner}.{self.nonce}.{'s' if sent else 'p'}{self.written}"


def _among(wanted: set[bytes], sets: Iterable[frozenset[bytes] | SentKeys]) -> set[bytes]:
    """The keys of ``wanted`` that any of ``sets`` (rival shards' keys, or partitions' sent keys) holds. A set
    intersection runs over the smaller side, so a claim costs about its own keys, not every rival shard's."""
    out: set[bytes] = set()
    for one in sets:
        out |= one.intersection(wanted)
    return out


class Claims:
    """The record-key tables and this process's cache of their sent keys."""

    KIND = Slots.DAY_KIND

    def __init__(self, tables: Tables, *, claim_ttl: timedelta = CLAIM_TTL, read_repeats: int = REPEATS) -> None:
        self._tables = tables
        self._claim_ttl = claim_ttl
        self._slots = Slots(tables)
        self._reader = PartitionReader(tables, claim_ttl, repeats=read_repeats)

    async def claim_records(self, stream: str, rows: Sequence[Row], content_id: str, message_id: str = "") -> Claim:
        """Claim ``rows`` of ``stream`` for one delivery of the blob ``content_id``; see the module docstring."""
        blob = owner_key(content_id)
        claim = Claim(stream=stream, blob=blob, owner=blob + owner_key(message_id)[:8])
        await self._round(claim, rows, first=True)
        return claim

    async def claim_held(self, claim: Claim) -> None:
        """Read the held rows' partitions again: rows sent meanwhile are dropped, rows no live claim holds
        any more are claimed (``claim.mine``), the rest stay held. Only after the last round was marked
        sent or released."""
        if claim.pending:
            raise RuntimeError("claim_held while this delivery still holds pending shards")
        await self._round(claim, claim.held, first=False)

    async def _round(self, claim: Claim, rows: Sequence[Row], *, first: bool) -> None:
        claim.mine, claim.held, claim.pending = [], [], []
        # the local clock only picks day tables: a day of margin
        groups = self._slots.group(claim.stream, rows, self._slots.rules(datetime.now(UTC)))
        try:
            for slot, group in groups.items():
                await self._claim_slot(claim, slot, group, first=first)
        except BaseException:
            # The slots claimed before the failure would hold their records until CLAIM_TTL: free them.
            await self.release(claim)
            raise

    async def _claim_slot(self, claim: Claim, slot: Slot, rows: list[Row], *, first: bool) -> None:
        reads = [await self._reader.read(part) for part in slot.parts]
        digests = [digest(row.record_id) for row in rows]
        wanted = set(digests)
        sent = _among(wanted, (r.sent for r in reads))
        own = [(s, live and self._lasts(r, s)) for r in reads for s, live in r.pending if s.owner == claim.owner]
        own_live = [s for s, carried in own if carried]
        own_stale = [s for s, carried in own if not carried]
        held = _among(wanted, (s.ids for r in reads for s, live in r.pending if s.owner != claim.owner and live))
        expired = _among(wanted, (s.ids for r in reads for s, live in r.pending if s.owner != claim.owner and not live))
        own_index = {d: s.row_key for s in own_live for d in wanted.intersection(s.ids)}
        carried: dict[str, tuple[list[Row], list[bytes]]] = {}
        free_rows: list[Row] = []
        free: list[bytes] = []
        for row, d in zip(rows, digests, strict=True):
            if d in sent:
                if first:
                    claim.already_sent += 1
                else:
                    claim.claimed_elsewhere += 1
            elif (key := own_index.get(d)) is not None:
                # This delivery's own claim from an attempt that did not finish: it keeps that claim's rank.
                kept = carried.setdefault(key, ([], []))
                kept[0].append(row)
                kept[1].append(d)
            elif d in held:
                claim.held.append(row)
            else:
                claim.taken_over += d in expired
                free_rows.append(row)
                free.append(d)

        written: list[_Mine] = []
        for shard in own_live:
            if shard.row_key in carried:
                own_rows, own_digests = carried[shard.row_key]
                written.append(_Mine(shard.part, shard.row_key, own_rows, own_digests, shard.rank[0],
                                     carried_until=shard.stamp + self._claim_ttl))  # fmt: skip
            else:
                await self._delete(shard.part, shard.row_key)  # all its rows are sent: nothing left to hold
        reuse = [s.row_key for s in own_stale if s.part == slot.primary]  # no stale shard of ours left behind
        for shard in own_stale:
            if shard.part != slot.primary:
                await self._delete(shard.part, shard.row_key)
        position = 0
        for piece in split(free):
            key = reuse.pop() if reuse else claim.next_key()
            written.append(_Mine(slot.primary, key, free_rows[position : position + len(piece)], piece, None))
            position += len(piece)
        for key in reuse:
            await self._delete(slot.primary, key)
        claim.pending.extend(written)  # released on a failure from here on, written or not
        for mine in written:
            await self._write(claim, mine, sent=False)
        if written:
            await self._read_back(claim, slot, reads, written)

    def _lasts(self, read: PartitionView, shard: Shard) -> bool:
        """Whether this delivery's own claim from an attempt that did not finish may be carried on with its rank:
        only while it cannot expire before this attempt writes it again. Carried nearer its end, it could be
        taken over meanwhile by a delivery that never sees the rewrite, and both would keep its records."""
        server_now = read.server_now
        return server_now is None or shard.live(server_now, self._claim_ttl - self._claim_ttl * CARRY_MARGIN)

    async def _read_back(self, claim: Claim, slot: Slot, reads: list[PartitionView], written: list[_Mine]) -> None:
        """Two deliveries can claim one record between the first read and the write. Read again what was
        written since: every side ranks the shards alike, so exactly one keeps each record. A live claim
        in a partition only consulted always wins: its writer does not read the partition written here."""
        after = [await self._reader.read(r.part, since=r.read_from) for r in reads]
        latest: dict[tuple[Partition, str], tuple[Shard, bool]] = {}
        for read in (*reads, *after):
            for shard, live in read.pending:
                latest[(shard.part, shard.row_key)] = (shard, live)
        # As read back: a new shard's rank is its own first write's (a reused row key had an older version).
        read_back = {(s.part, s.row_key): s for r in after for s, _ in r.pending if s.owner == claim.owner}
        rivals = [s for s, live in latest.values() if live and s.owner != claim.owner]
        wanted = {d for mine in written for d in mine.digests}
        consulted = _among(wanted, (s.ids for s in rivals if s.part != slot.primary))
        # None of the keys written was sent as the first reads knew: ask only what was added since.
        sent: set[bytes] = set()
        for first, again in zip(reads, after, strict=True):
            sent |= self._reader.sent_since(wanted, first, again)
        for mine in written:
            version = read_back.get((mine.part, mine.row_key))
            if version is None:
                raise StateError(
                    f"a claim just written to {mine.part.table} cannot be read back; the message is retried"
                )
            rank = version.rank
            if mine.carried_until is not None and version.stamp > mine.carried_until:
                # The rewrite of a carried claim landed after it had expired (a write stalled for minutes): a
                # delivery may have taken its records over meanwhile without seeing it. Its old rank would beat
                # that one, and both kept them: it ranks as a claim made now.
                rank = (version.stamp, mine.row_key)
            beaten = consulted | _among(wanted, (s.ids for s in rivals if s.part == slot.primary and s.rank < rank))
            keep_rows: list[Row] = []
            keep: list[bytes] = []
            for row, d in zip(mine.rows, mine.digests, strict=True):
                if d in sent:
                    claim.claimed_elsewhere += 1
                elif d in beaten:
                    claim.held.append(row)
                else:
                    keep_rows.append(row)
                    keep.append(d)
            changed = len(keep) < len(mine.digests)
            mine.rows, mine.digests, mine.first = keep_rows, keep, rank[0]
            if changed and not keep:
                await self._delete(mine.part, mine.row_key)
                claim.pending.remove(mine)
                continue
            if changed:
                await self._write(claim, mine, sent=False)
            claim.mine.extend(keep_rows)

    async def mark_sent(self, claim: Claim, rows: Sequence[Row] | None = None) -> None:
        """Record rows as sent after their upload succeeded: all of the round's rows when ``rows`` is None
        (its pending shards turn sent), else just ``rows`` (new sent shards, for a partial failure: the
        pending ones are released next). May use the invocation's margin: rows not marked are sent again."""
        with cleaning_up():
            await self._mark_sent(claim, rows)

    async def _mark_sent(self, claim: Claim, rows: Sequence[Row] | None) -> None:
        if rows is None:
            for mine in claim.pending:
                # In place when the shard is as this delivery wrote it: its keys are not sent again.
                sent = {"PartitionKey": mine.part.pk, "RowKey": mine.row_key, "S": SENT}
                if not mine.etag or not await self._tables.merge_unless_changed(mine.part.table, sent, mine.etag):
                    await self._write(claim, mine, sent=True)
            claim.pending = []
            return
        wanted = {id(r) for r in rows}
        by_part: dict[Partition, list[bytes]] = {}
        for mine in claim.pending:
            by_part.setdefault(mine.part, []).extend(
                d for r, d in zip(mine.rows, mine.digests, strict=True) if id(r) in wanted
            )
        for part, digests in by_part.items():
            for piece in split(digests):
                await self._write(claim, _Mine(part, claim.next_key(sent=True), [], piece, None), sent=True)

    async def release(self, claim: Claim) -> None:
        """Give up the round's unsent rows after a failure, so the host's retry of the message (or any
        other delivery waiting for them) can take them at once instead of after CLAIM_TTL. May use the
        invocation's margin."""
        with cleaning_up():
            for mine in claim.pending:
                try:
                    await self._delete(mine.part, mine.row_key)
                except StateError as exc:
                    log.warning("Could not release a claim (it expires by itself): %s", exc)
                    return
        claim.pending = []

    async def purge_expired(self, now: datetime) -> int:
        """Remove the keys of ``recother`` last written a retention ago (the day tables are dropped whole
        instead). Once a day per process (:meth:`Tables.purge_expired`)."""
        removed = await self._tables.purge_expired(self._slots.other_table, now)
        if removed:
            log.info("Removed %d expired record-key entities from %s", removed, self._slots.other_table)
        return removed

    async def _write(self, claim: Claim, mine: _Mine, *, sent: bool) -> None:
        entity = shard_entity(
            mine.part.pk,
            mine.row_key,
            owner=claim.owner,
            blob=claim.blob,
            digests=mine.digests,
            sent=sent,
            first=None if sent else mine.first,
        )
        mine.etag = await self._tables.upsert(mine.part.table, entity)

    async def _delete(self, part: Partition, row_key: str) -> None:
        await self._tables.delete(part.table, part.pk, row_key)
