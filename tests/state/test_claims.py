"""The claim protocol, one rule at a time, against the real Azurite: each ``Claims`` here is one processor
(its own tables client and sent-key cache), as in two Function instances."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableServiceClient

from irm_connector.errors import StateError
from irm_connector.models import Row
from irm_connector.state import CLAIM_TTL, FUNCTION_TIMEOUT, Claims, Tables
from irm_connector.state.shards import SHARD_KEYS
from standins import Azurite
from standins.storage_proxy import Hold, StorageProxy
from tests.clock import skew_local_clock
from tests.state.conftest import MakeClaims

STREAM = "Custom-IRMAlerts"
ROOT = Path(__file__).resolve().parents[2]


#: When the running test started: its rows' default hour, one for the whole test even when it runs across an
#: hour's turn (rows of two hours fall in two slots, and a duplicate across them would go unseen).
_test_started = datetime.now(UTC)


@pytest.fixture(autouse=True)
def _one_hour_per_test() -> None:
    global _test_started
    _test_started = datetime.now(UTC)


#: How Azure answers any request on a table for about 40 s after its delete (Azurite deletes at once).
BEING_DELETED: dict[str, Any] = {
    "status": 409, "code": "TableBeingDeleted", "message": "The specified table is being deleted. Try operation later."
}  # fmt: skip


def _hour(at: datetime | None = None) -> str:
    return (at or _test_started).strftime("%Y%m%d%H")


def _rows(ids: range, hour: str | None = None) -> list[Row]:
    hour = _hour() if hour is None else hour
    return [Row(f"record-{i}", hour, b"{}") for i in ids]


def _ids(rows: list[Row]) -> set[str]:
    return {r.record_id for r in rows}


async def _arrived(hold: Hold) -> None:
    for _ in range(600):
        if hold.arrived.is_set():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the held request never came")


async def _entities(service: TableServiceClient, table: str) -> list[dict[str, Any]]:
    async with service.get_table_client(table) as client:
        return [dict(e) async for e in client.list_entities()]


# -- claim, then read back: the earlier claim wins, both sides agree -------------------------------------


async def test_the_earlier_claim_wins_and_both_sides_agree(make_claims: MakeClaims, proxy: StorageProxy) -> None:
    late = make_claims(via=proxy)
    early = make_claims()
    # ``late`` reads an empty partition, then its claim write is held: ``early`` reads, claims and reads
    # back before it, seeing nothing of ``late``. Both claimed records 50-99.
    hold = proxy.hold("table.write", path="rec", body=r'"S": ?"p"')
    racing = asyncio.create_task(late.claim_records(STREAM, _rows(range(0, 100)), "blob-late"))
    await _arrived(hold)
    won = await early.claim_records(STREAM, _rows(range(50, 150)), "blob-early")
    hold.release(forward=True)
    lost = await racing

    assert _ids(won.mine) == _ids(_rows(range(50, 150)))
    assert _ids(lost.mine) == _ids(_rows(range(0, 50)))
    assert _ids(lost.held) == _ids(_rows(range(50, 100)))  # not final: the winner may still fail
    await early.mark_sent(won)
    await late.mark_sent(lost)
    await late.claim_held(lost)
    assert lost.held == [] and lost.mine == [] and lost.claimed_elsewhere == 50


# -- takeover of an expired claim, judged by the service's clock -----------------------------------------


async def test_an_expired_claim_is_taken_over(make_claims: MakeClaims) -> None:
    ttl = timedelta(seconds=2)
    dead, other = make_claims(ttl=ttl), make_claims(ttl=ttl)
    rows = _rows(range(20))
    await dead.claim_records(STREAM, rows, "blob-dead")  # and never marks or releases: its process died
    waiting = await other.claim_records(STREAM, rows, "blob-other")
    assert waiting.mine == [] and len(waiting.held) == 20
    await asyncio.sleep(ttl.total_seconds() + 1.5)  # the service's Date has one-second resolution
    await other.claim_held(waiting)
    assert _ids(waiting.mine) == _ids(rows) and waiting.taken_over == 20


@pytest.mark.parametrize(
    ("life_gone", "write_held"),
    [(7.2, 2.3), (4.5, 5.0)],
    ids=["read-near-its-end", "write-landing-after-its-end"],
)
async def test_a_redelivery_s_claim_carried_on_is_not_kept_beside_a_takeover_made_before_its_write(
    make_claims: MakeClaims, proxy: StorageProxy, life_gone: float, write_held: float
) -> None:
    """An attempt claims and dies; the host delivers the message again, and a delivery of another blob takes the
    records over between the redelivery's read and its write, never seeing that write. Carried on with its old
    rank, the redelivery's claim beat the takeover, and both sent the records: read with less than a quarter of
    its life left, it is not carried on; read with more, but written after its end (a write stalled for minutes),
    it ranks as a claim made then."""
    ttl = timedelta(seconds=8)  # carried on only while 2 s of it are left
    dead, again, other = make_claims(ttl=ttl), make_claims(ttl=ttl, via=proxy), make_claims(ttl=ttl)
    rows = _rows(range(10))
    await dead.claim_records(STREAM, rows, "blob-x", "message-1")  # and never marks or releases
    await asyncio.sleep(life_gone)  # the Date has one-second resolution: 7.2 s, over 6 s gone; 4.5 s, under 6
    written = proxy.hold("table.write", path="rec", body=r'"S": ?"p"')
    redelivered = asyncio.create_task(again.claim_records(STREAM, rows, "blob-x", "message-1"))
    await _arrived(written)
    await asyncio.sleep(write_held)  # the claim has expired
    taken = await other.claim_records(STREAM, rows, "blob-y")
    assert _ids(taken.mine) == _ids(rows) and taken.taken_over == 10
    written.release(forward=True)
    raced = await redelivered
    assert raced.mine == [] and _ids(raced.held) == _ids(rows)


async def test_a_live_claim_is_not_taken_over_whatever_the_local_clock_says(
    make_claims: MakeClaims, monkeypatch: pytest.MonkeyPatch
) -> None:
    alive, other = make_claims(), make_claims()
    rows = _rows(range(20))
    await alive.claim_records(STREAM, rows, "blob-alive")
    skew_local_clock(monkeypatch, CLAIM_TTL + timedelta(hours=1))
    waiting = await other.claim_records(STREAM, rows, "blob-other")
    assert waiting.mine == [] and waiting.taken_over == 0 and len(waiting.held) == 20


def test_the_claim_ttl_outlasts_the_function_timeout_by_a_margin() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    match = re.fullmatch(r"(\d+):(\d+):(\d+)", host["functionTimeout"])
    assert match is not None
    hours, minutes, seconds = (int(x) for x in match.groups())
    host_timeout = timedelta(hours=hours, minutes=minutes, seconds=seconds)
    assert host_timeout == FUNCTION_TIMEOUT  # the deadlines read the timeout host.json gives the host
    # A claim outlives the longest invocation the host allows by at least a minute: else a live delivery's
    # records could be taken over while it still sends them.
    assert host_timeout + timedelta(minutes=1) <= CLAIM_TTL


# -- busy: another delivery's live claim holds its records -------------------------------------------------


async def test_records_another_delivery_holds_wait_until_it_has_sent_them(make_claims: MakeClaims) -> None:
    first, second, same_blob = make_claims(), make_claims(), make_claims()
    rows = _rows(range(30))
    holder = await first.claim_records(STREAM, rows, "blob-a", "message-1")
    other_blob = await second.claim_records(STREAM, _rows(range(20, 40)), "blob-b", "message-9")
    again = await same_blob.claim_records(STREAM, rows, "blob-a", "message-2")  # a second message, same blob
    assert _ids(other_blob.mine) == _ids(_rows(range(30, 40)))
    assert _ids(other_blob.held) == _ids(_rows(range(20, 30)))
    assert again.mine == [] and _ids(again.held) == _ids(rows)

    await first.mark_sent(holder)
    await second.mark_sent(other_blob)
    await second.claim_held(other_blob)
    await same_blob.claim_held(again)
    assert other_blob.held == [] and other_blob.mine == [] and other_blob.claimed_elsewhere == 10
    assert again.held == [] and again.mine == [] and again.claimed_elsewhere == 30


async def test_many_deliveries_in_two_processes_send_each_record_once(make_claims: MakeClaims) -> None:
    # Two processes, each with deliveries running side by side on overlapping records: a process's deliveries
    # share its cache of the partition while each other's reads replace what is in it.
    processes = [make_claims(), make_claims()]
    deliveries = 48
    sent: Counter[str] = Counter()

    async def deliver(n: int) -> None:
        claims = processes[n % 2]
        rows = _rows(range(n * 40, n * 40 + 120))  # each overlaps the next two
        claim = await claims.claim_records(STREAM, rows, f"blob-{n}", f"message-{n}")
        while True:
            sent.update(r.record_id for r in claim.mine)
            await claims.mark_sent(claim)
            if not claim.held:
                return
            await asyncio.sleep(0.05)
            await claims.claim_held(claim)

    await asyncio.gather(*(deliver(n) for n in range(deliveries)))
    assert set(sent) == _ids(_rows(range((deliveries - 1) * 40 + 120)))
    assert [record for record, count in sent.items() if count > 1] == []


# -- release: a failed attempt's records are free at once -------------------------------------------------


async def test_released_records_are_claimed_at_once(make_claims: MakeClaims) -> None:
    failing, waiting = make_claims(), make_claims()
    rows = _rows(range(25))
    claim = await failing.claim_records(STREAM, rows, "blob-failing")
    held = await waiting.claim_records(STREAM, rows, "blob-waiting")
    assert held.mine == []
    await failing.mark_sent(claim, claim.mine[:5])  # five arrived before the failure
    await failing.release(claim)
    await waiting.claim_held(held)
    assert _ids(held.mine) == _ids(rows[5:]) and held.claimed_elsewhere == 5 and held.taken_over == 0


# -- partial sent marks accumulate, in storage and in every cache ----------------------------------------


async def test_partial_sent_marks_of_successive_attempts_all_count(make_claims: MakeClaims) -> None:
    warm, cold = make_claims(), make_claims()
    rows = _rows(range(100))
    first = await warm.claim_records(STREAM, rows, "blob", "message")
    await warm.mark_sent(first, first.mine[:50])
    await warm.release(first)
    second = await warm.claim_records(STREAM, rows, "blob", "message")  # the host retries the message
    assert second.already_sent == 50 and _ids(second.mine) == _ids(rows[50:])
    await warm.mark_sent(second, second.mine[:25])
    await warm.release(second)

    third = await warm.claim_records(STREAM, rows, "blob", "message")
    assert third.already_sent == 75 and _ids(third.mine) == _ids(rows[75:])
    elsewhere = await cold.claim_records(STREAM, rows, "another-blob")
    assert elsewhere.already_sent == 75 and _ids(elsewhere.held) == _ids(rows[75:])


# -- sharding past one entity's size ---------------------------------------------------------------------


async def test_a_claim_larger_than_one_entity_takes_several(
    make_claims: MakeClaims, service: TableServiceClient, prefix: str
) -> None:
    big, other, cold = make_claims(), make_claims(), make_claims()
    count = 2 * SHARD_KEYS + 1000
    rows = _rows(range(count))
    # Another blob already holds a run of records in the middle.
    holder = await other.claim_records(STREAM, rows[SHARD_KEYS - 10 : SHARD_KEYS + 10], "blob-other")
    claim = await big.claim_records(STREAM, rows, "blob-big")
    assert len(claim.mine) == count - 20 and len(claim.held) == 20

    table = f"{prefix}rec{rows[0].hour[:8]}"
    pending = [e for e in await _entities(service, table) if e["S"] == "p" and e["Blob"] != holder.blob]
    assert len(pending) == 3  # 41,250 keys an entity
    await big.mark_sent(claim)
    await other.mark_sent(holder)
    seen = await cold.claim_records(STREAM, rows, "blob-third")
    assert seen.already_sent == count and seen.mine == []


# -- where keys live -------------------------------------------------------------------------------------


async def test_outlying_and_missing_creation_times_stay_inside_the_retention(
    make_claims: MakeClaims, service: TableServiceClient, prefix: str
) -> None:
    now = datetime.now(UTC)
    hours = {
        "1970": "1970010100",
        "30 days old": _hour(now - timedelta(days=30)),
        "a day ahead": _hour(now + timedelta(days=1)),
        "a year ahead": _hour(now + timedelta(days=365)),
        "none": "",
    }
    claims = make_claims()
    rows = [Row(f"record-{name}", hour, b"{}") for name, hour in hours.items()]
    claim = await claims.claim_records(STREAM, rows, "blob")
    await claims.mark_sent(claim)
    mine = {"lo": prefix, "hi": prefix + "~"}
    names = {t.name async for t in service.query_tables("TableName ge @lo and TableName lt @hi", parameters=mine)}
    assert names == {f"{prefix}rec{hours['a day ahead'][:8]}", f"{prefix}recother"}

    # The same records in another blob, in another process: every one is found sent.
    again = await make_claims().claim_records(STREAM, rows, "another-blob")
    assert again.already_sent == len(rows)


async def test_a_record_on_its_last_day_is_checked_against_its_day_table(make_claims: MakeClaims) -> None:
    last_day = (datetime.now(UTC) - timedelta(days=10)).strftime("%Y%m%d")
    rows = [Row("on-its-last-day", last_day + "12", b"{}")]
    # A day earlier its day table was the place for it: a retention a day longer puts it there today.
    younger = make_claims(retention_days=11)
    sent = await younger.claim_records(STREAM, rows, "blob")
    await younger.mark_sent(sent)
    again = await make_claims().claim_records(STREAM, rows, "another-blob")
    assert again.already_sent == 1 and again.mine == []


async def test_expired_keys_outside_day_tables_are_purged(make_claims: MakeClaims) -> None:
    claims = make_claims()
    rows = [Row("from-1970", "1970010100", b"{}")]
    claim = await claims.claim_records(STREAM, rows, "blob")
    await claims.mark_sent(claim)
    assert await claims.purge_expired(datetime.now(UTC)) == 0  # written just now
    later = make_claims()
    assert await later.purge_expired(datetime.now(UTC) + timedelta(days=11)) == 1
    fresh = await make_claims().claim_records(STREAM, rows, "another-blob")
    assert _ids(fresh.mine) == {"from-1970"}


# -- a table deleted under a warm process ----------------------------------------------------------------


async def test_a_day_table_deleted_under_a_warm_process_is_created_again(
    make_claims: MakeClaims, service: TableServiceClient, proxy: StorageProxy, prefix: str
) -> None:
    warm = make_claims(via=proxy)
    first = await warm.claim_records(STREAM, _rows(range(10)), "blob-1")
    await warm.mark_sent(first)
    await service.delete_table(f"{prefix}rec{_hour()[:8]}")  # another instance's cleanup, or an operator
    # Azure refuses to create a table again for about 40 s after a delete.
    proxy.add_fault("table.write", "status", 2, **BEING_DELETED)
    second = await warm.claim_records(STREAM, _rows(range(10, 20)), "blob-2")
    await warm.mark_sent(second)
    assert _ids(second.mine) == _ids(_rows(range(10, 20)))
    assert proxy.pending_faults() == 0
    check = await make_claims().claim_records(STREAM, _rows(range(10, 20)), "blob-3")
    assert check.already_sent == 10


async def test_a_day_table_being_deleted_under_a_warm_process_is_waited_out_and_created_again(
    make_claims: MakeClaims, service: TableServiceClient, proxy: StorageProxy, prefix: str
) -> None:
    """For about 40 s after a delete, Azure answers every request on the table 409 TableBeingDeleted, not only a
    create (Azurite deletes at once and answers 404): a claim's read then failed the delivery, where a table found
    gone is created again and read once more."""
    warm = make_claims(via=proxy)
    first = await warm.claim_records(STREAM, _rows(range(10)), "blob-1")
    await warm.mark_sent(first)
    await service.delete_table(f"{prefix}rec{_hour()[:8]}")  # another instance's cleanup, or an operator
    proxy.add_fault("table.read", "status", 1, **BEING_DELETED)  # the claim's read
    proxy.add_fault("table.write", "status", 2, **BEING_DELETED)  # creating it again, twice
    second = await warm.claim_records(STREAM, _rows(range(10, 20)), "blob-2")
    await warm.mark_sent(second)
    assert _ids(second.mine) == _ids(_rows(range(10, 20))) and proxy.pending_faults() == 0
    check = await make_claims().claim_records(STREAM, _rows(range(10, 20)), "blob-3")
    assert check.already_sent == 10


async def test_a_conditional_create_on_a_table_being_deleted_is_not_taken_for_another_writer(
    proxy: StorageProxy, service: TableServiceClient, prefix: str
) -> None:
    """Creating an entity in a table being deleted is answered 409 as a create that found the entity there is:
    taken for another writer that came first, the poller's lease write read as a lease lost."""
    tables = Tables(TableServiceClient.from_connection_string(proxy.connection_string), prefix=prefix)
    name = tables.name("state")
    try:
        assert await tables.write_unless_changed(name, {"PartitionKey": "p", "RowKey": "a"}, None, what="a") is not None
        await service.delete_table(name)
        proxy.add_fault("table.write", "status", 2, **BEING_DELETED)
        written = await tables.write_unless_changed(name, {"PartitionKey": "p", "RowKey": "b"}, None, what="b")
        assert written is not None and proxy.pending_faults() == 0
        assert [e["RowKey"] async for e in service.get_table_client(name).list_entities()] == ["b"]
    finally:
        await tables.close()


async def test_a_table_deleted_under_a_warm_process_is_created_again_for_a_transaction(
    azurite: Azurite, service: TableServiceClient, prefix: str
) -> None:
    """An entity-group transaction on a table deleted meanwhile fails as the transaction's error, not as the
    "not found" a single request's does: the table was not created again, and every batch write to it failed
    (the poller's queued-blob markers, run after run) until the process restarted."""
    tables = Tables(TableServiceClient.from_connection_string(azurite.connection_string), prefix=prefix)
    name = tables.name("queued")
    try:
        await tables.write_batches(name, [("upsert", {"PartitionKey": "p", "RowKey": "before"})])
        await service.delete_table(name)  # by hand, or another instance's cleanup
        await tables.write_batches(name, [("upsert", {"PartitionKey": "p", "RowKey": "after"})])
        assert [e["RowKey"] async for e in service.get_table_client(name).list_entities()] == ["after"]
    finally:
        await tables.close()


async def test_a_day_table_being_deleted_reads_as_empty_where_a_missing_one_does(
    proxy: StorageProxy, prefix: str
) -> None:
    """A record on the cutoff day is checked against its day table, read only if it exists. The poller drops
    that table at midnight, and for about 40 s Azure answers a read of it 409 TableBeingDeleted: the claim
    failed, and the delivery spent a dequeue count, where a table already gone reads as empty."""
    tables = Tables(TableServiceClient.from_connection_string(proxy.connection_string), prefix=prefix)
    name = tables.name("rec", "20260101")
    try:
        proxy.add_fault("table.read", "status", 1, **BEING_DELETED)
        read = await tables.query_plain(name, "PartitionKey eq @pk", {"pk": STREAM}, create=False)
        assert read.entities == [] and proxy.pending_faults() == 0
        # Anything else stays a failure: a read that cannot be told from an empty one must not pass for one.
        proxy.add_fault("table.read", "status", 1, status=409, code="Conflict")
        with pytest.raises(StateError, match="Conflict"):
            await tables.query_plain(name, "PartitionKey eq @pk", {"pk": STREAM}, create=False)
    finally:
        await tables.close()


# -- a warm process's read, and its sibling deliveries ----------------------------------------------------


async def test_a_sibling_read_between_a_listing_and_its_keys_does_not_hide_a_live_claim(
    azurite: Azurite, proxy: StorageProxy, service: TableServiceClient, prefix: str
) -> None:
    """A warm process lists a partition, then reads the keys of the versions it has not seen; meanwhile a
    sibling delivery of the same process reads the partition anew and replaces its cache. A live claim the
    listing found unchanged must still hold its records, though the cache now has a later version of it that
    the read-back, starting after the sibling's newer Timestamps, never brings."""
    warm_tables = Tables(TableServiceClient.from_connection_string(proxy.connection_string), prefix=prefix)
    other_tables = Tables(TableServiceClient.from_connection_string(azurite.connection_string), prefix=prefix)
    warm, other = Claims(warm_tables, read_repeats=-1), Claims(other_tables, read_repeats=-1)  # listing first
    try:
        owner = await other.claim_records(STREAM, _rows(range(1, 2)), "blob-owner")  # live, never sent here
        await warm.mark_sent(await warm.claim_records(STREAM, _rows(range(100, 101)), "blob-warm"))  # cached
        await other.claim_records(STREAM, _rows(range(200, 201)), "blob-unseen")  # so keys are read too
        keys = proxy.hold("table.read", path=r"Timestamp(%20|\+)gt", after_answer=True)
        racing = asyncio.create_task(warm.claim_records(STREAM, _rows(range(1, 2)), "blob-a"))
        await _arrived(keys)  # listed, and the keys' answer given: neither shows what follows
        shard = owner.pending[0]
        async with service.get_table_client(shard.part.table) as client:  # the owner writes its claim again
            entity = await client.get_entity(shard.part.pk, shard.row_key)
            await client.upsert_entity(entity, mode=UpdateMode.REPLACE)
        await asyncio.sleep(2.5)  # past the read-back's look back (_CACHE_OVERLAP)
        await other.claim_records(STREAM, _rows(range(300, 301)), "blob-later")
        await warm.claim_records(STREAM, _rows(range(400, 401)), "blob-sibling")  # replaces the cache
        keys.release(forward=True)
        raced = await racing
        assert _ids(raced.mine) == set() and _ids(raced.held) == {"record-1"}
    finally:
        await warm_tables.close()
        await other_tables.close()


async def test_a_sibling_read_answered_first_does_not_move_a_read_back_past_a_rival_claim(
    make_claims: MakeClaims, proxy: StorageProxy
) -> None:
    """One process, two deliveries: the first one's read of the partition runs, but its answer comes late.
    Meanwhile another processor claims the same records, and a sibling delivery reads the partition after that
    claim and is answered first. The first delivery's read-back must look back to its own read, not to what the
    sibling saw, or neither of its reads finds the rival's claim and both keep the records."""
    slow, rival = make_claims(via=proxy), make_claims()
    late = proxy.hold("table.read", path="rec", after_answer=True)
    racing = asyncio.create_task(slow.claim_records(STREAM, _rows(range(0, 10)), "blob-slow"))
    await _arrived(late)  # read while the partition was empty; the answer is held
    won = await rival.claim_records(STREAM, _rows(range(0, 10)), "blob-rival")
    assert _ids(won.mine) == _ids(_rows(range(0, 10)))
    await asyncio.sleep(2.5)  # past the read-back's look back (_CACHE_OVERLAP)
    await slow.claim_records(STREAM, _rows(range(50, 60)), "blob-sibling")  # reads after the rival's claim
    late.release(forward=True)
    raced = await racing
    assert raced.mine == [] and _ids(raced.held) == _ids(_rows(range(0, 10)))


async def test_a_partition_dropped_from_the_cache_between_a_claims_reads_is_read_whole_again(
    make_claims: MakeClaims, proxy: StorageProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker keeps a bounded number of sent keys and drops the partition used least lately. Dropped between a
    claim's first read and its read-back, the partition is known afterwards only by what the read-back found:
    the next claim must read it whole again, or it sends again the records sent before."""
    from irm_connector.state import partitions

    other = make_claims()
    yesterday = _hour(datetime.now(UTC) - timedelta(days=1))
    await other.mark_sent(await other.claim_records(STREAM, _rows(range(0, 50)), "blob-sent-today"))
    await other.mark_sent(await other.claim_records(STREAM, _rows(range(200, 220), yesterday), "blob-sent-yesterday"))
    await asyncio.sleep(2.5)  # the records sent last, past the read-back's look back from the newest
    await other.mark_sent(await other.claim_records(STREAM, _rows(range(60, 65)), "blob-sent-later"))
    monkeypatch.setattr(partitions, "_CACHE_KEYS", 70)
    busy = make_claims(via=proxy)
    written = proxy.hold("table.write", path="rec", body=r'"S": ?"p"')
    first = asyncio.create_task(busy.claim_records(STREAM, _rows(range(100, 110)), "blob-a"))
    await _arrived(written)  # today's partition read whole (55 sent keys cached); the claim not yet written
    await busy.claim_records(STREAM, _rows(range(300, 302), yesterday), "blob-b")  # 20 more keys: today's dropped
    written.release(forward=True)
    await busy.mark_sent(await first)
    copies = await busy.claim_records(STREAM, _rows(range(0, 50)), "blob-copies")  # records sent long before
    assert copies.mine == [] and copies.already_sent == 50


async def test_a_read_answered_in_pages_does_not_hide_a_record_sent_in_a_range_already_read(
    make_claims: MakeClaims, proxy: StorageProxy, service: TableServiceClient, prefix: str
) -> None:
    """A partition of more than 1,000 entities is answered in pages, each read when asked for. A record sent
    meanwhile in the row keys a page already covered is not in this read; an entity written later in a range a
    later page covers is. The next read starts from the newest Timestamp seen: taken from the later page, it starts
    after the sent record's, and the worker would send that record again with the next blob that holds a copy."""
    other = make_claims()
    await other.mark_sent(await other.claim_records(STREAM, _rows(range(0, 1)), "blob-sent"))
    table = f"{prefix}rec{_hour()[:8]}"
    async with service.get_table_client(table) as client:  # sent shards of other records: the partition pages
        for start in range(0, 1000, 100):
            await client.submit_transaction(
                [("upsert", {"PartitionKey": STREAM, "RowKey": f"g{i:04d}", "S": "s"}) for i in range(start, start + 100)]
            )
    warm = make_claims(via=proxy)
    second_page = proxy.hold("table.read", path="NextRowKey")
    reading = asyncio.create_task(warm.claim_records(STREAM, _rows(range(0, 1)), "blob-copy"))  # sent: no read-back
    await _arrived(second_page)
    await other.mark_sent(await other.claim_records(STREAM, _rows(range(5, 6)), "blob-5"))  # row key before "g…"
    await asyncio.sleep(2.5)  # past a read's look back (_CACHE_OVERLAP)
    async with service.get_table_client(table) as client:
        await client.upsert_entity({"PartitionKey": STREAM, "RowKey": "zzzz", "S": "s"})  # on the second page
    second_page.release(forward=True)
    assert (await reading).already_sent == 1
    copy = await warm.claim_records(STREAM, _rows(range(5, 6)), "blob-another-copy")
    assert copy.mine == [] and copy.already_sent == 1


# -- a read answered with something other than entities --------------------------------------------------


@pytest.mark.parametrize("spoiled", ["malformed", "truncated"])
async def test_a_read_answered_with_no_entities_fails_the_claim_and_holds_nothing(
    make_claims: MakeClaims, proxy: StorageProxy, spoiled: str
) -> None:
    warm = make_claims(via=proxy)
    await warm.mark_sent(await warm.claim_records(STREAM, _rows(range(5)), "blob-1"))
    proxy.add_fault("table.read", spoiled)
    with pytest.raises(StateError, match=r"reading \S+ failed: DecodeError"):
        await warm.claim_records(STREAM, _rows(range(5, 10)), "blob-2")
    retry = await warm.claim_records(STREAM, _rows(range(10)), "blob-2")
    assert _ids(retry.mine) == _ids(_rows(range(5, 10))) and retry.already_sent == 5


async def test_a_read_whose_answer_breaks_off_is_read_again(make_claims: MakeClaims, proxy: StorageProxy) -> None:
    warm = make_claims(via=proxy)
    await warm.mark_sent(await warm.claim_records(STREAM, _rows(range(5)), "blob-1"))
    proxy.add_fault("table.read", "cut", 2)
    claim = await warm.claim_records(STREAM, _rows(range(10)), "blob-2")
    assert _ids(claim.mine) == _ids(_rows(range(5, 10))) and claim.already_sent == 5
    assert proxy.pending_faults() == 0


async def test_a_wait_for_a_table_being_created_ends_with_the_waiter_s_own_deadline(
    proxy: StorageProxy, prefix: str
) -> None:
    """One delivery creates a day table while Storage is slow (or the table is being deleted: up to 90 s of
    waits), bounded by its own deadline. Another, with less time left, waited for it without a bound of its own,
    ran past functionTimeout, and the host restarted the worker under every invocation on it. It now fails within
    its own deadline, and a delivery that needs another table is not held up at all."""
    from irm_connector.deadline import Deadline
    from irm_connector.errors import StorageDeadlineError

    tables = Tables(TableServiceClient.from_connection_string(proxy.connection_string), prefix=prefix)
    slow, other = tables.name("rec", "20260701"), tables.name("rec", "20260702")
    held = proxy.hold("table.write", body=slow)
    try:
        with Deadline(time.monotonic() + 60).applied():
            creating = asyncio.ensure_future(tables.table(slow))
        await _arrived(held)
        loop = asyncio.get_running_loop()
        loop.call_later(8, lambda: held.release(forward=True))  # whatever the code does, the creator gets its answer
        started = time.monotonic()
        with Deadline(time.monotonic() + 1.5).applied(), pytest.raises(StorageDeadlineError):
            await tables.table(slow)
        assert time.monotonic() - started < 6  # by its deadline (1.5 s), not when the creator's answer comes (8 s)
        with Deadline(time.monotonic() + 1.5).applied():
            await tables.table(other)  # another table's lock: not behind the slow one
        assert not creating.done()
        held.release(forward=True)
        await asyncio.wait_for(creating, 30)
    finally:
        held.release(forward=True)
        await tables.close()


async def test_a_partition_not_read_for_a_while_is_dropped_from_the_cache_and_read_whole_again(
    make_claims: MakeClaims, proxy: StorageProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A day's records stop coming a while after the day. Its partition stayed cached until the process held a
    million keys, which a quiet tenant reaches after months: a worker's memory grew for weeks. A partition not read
    for a while is dropped now (here after a second); read again, it is read whole, and nothing is sent twice."""
    from irm_connector.state import partitions

    monkeypatch.setattr(partitions, "_CACHE_IDLE", 1.0)
    busy = make_claims(via=proxy)
    await busy.mark_sent(await busy.claim_records(STREAM, _rows(range(0, 20)), "blob-today"))
    yesterday = _hour(datetime.now(UTC) - timedelta(days=1))
    await asyncio.sleep(1.5)
    await busy.claim_records(STREAM, _rows(range(100, 101), yesterday), "blob-yesterday")  # today's idle: dropped

    def whole_reads() -> int:
        return sum(1 for r in proxy.table.requests("table.read")
                   if r.path.endswith(f"rec{_hour()[:8]}()") and "Timestamp" not in r.query.get("$filter", ""))  # fmt: skip

    before = whole_reads()
    copies = await busy.claim_records(STREAM, _rows(range(0, 20)), "blob-copies")
    assert copies.mine == [] and copies.already_sent == 20
    assert whole_reads() == before + 1


async def test_a_long_running_worker_forgets_the_day_tables_past_the_retention(azurite: Azurite, prefix: str) -> None:
    """A client and a lock are kept per table name, and day tables get a new name every day: a worker running for
    a year held hundreds of them (about 57 kB a client). Those past the retention are forgotten when a new one
    comes; what the retention keeps stays."""
    tables = Tables(TableServiceClient.from_connection_string(azurite.connection_string), prefix=prefix,
                    retention_days=8)  # fmt: skip
    today = datetime.now(UTC)
    try:
        for back in range(40, 0, -1):  # forty days of a worker's life, as the claims read their day tables
            day = (today - timedelta(days=back)).strftime("%Y%m%d")
            await tables.query_plain(tables.name("rec", day), "PartitionKey eq @pk", {"pk": STREAM}, create=False)
        await tables.table(tables.name("rec", today.strftime("%Y%m%d")))
        await tables.table(tables.name("state"))
        held = sorted(tables._clients)  # the one bound that matters here is how much a worker keeps
        assert len(held) == 8 + 1 + 1  # the cutoff day and the 7 after it, today's, and the state table
        assert held[0] == tables.name("rec", tables.cutoff_day(today)) and tables.name("state") in held
        assert set(tables._create_locks) <= set(held)
    finally:
        await tables.close()
