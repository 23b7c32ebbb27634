"""The poller's lease over Azurite, through the fault proxy: a state write that never answers, or that lands
without its answer, costs the holder neither its lease nor its run, and the taker neither the lease nor the tick;
a write by somebody else still does.

The lease here lasts 6 s (renewed every second, given up 1 s early), so a run outlasts it in seconds; the
rules are those of the 40-second lease the poller takes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables.aio import TableServiceClient

from irm_connector._bounded import BoundedTransport
from irm_connector.deadline import Deadline
from irm_connector.errors import DeadlineError, LeaseLostError
from irm_connector.lease import LeaseTiming, PollerLease
from irm_connector.state import PollerState, Tables, Watermarks
from standins.storage_proxy import StorageProxy

TENANT, CONTENT_TYPE = "tenant-1", "Audit.General"
TIMING = LeaseTiming(lease=timedelta(seconds=6), heartbeat=timedelta(seconds=1), margin=timedelta(seconds=1))
WATERMARK = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
#: For the tests where another poller writes while a write of the holder's waits for its answer: a write is cut
#: only after 5 s, so the other poller's write (milliseconds) surely comes first, however loaded the machine.
PATIENT = LeaseTiming(lease=timedelta(seconds=20), heartbeat=timedelta(seconds=5), margin=timedelta(seconds=1))
#: Longer than a lease: the run needs its renewals.
WORK_SECONDS = TIMING.lease.total_seconds() + 2
#: The state entity's path (not the table's creation).
STATE_PATH = r"state\("


@pytest.fixture
async def watermarks(proxy: StorageProxy, prefix: str) -> AsyncIterator[Watermarks]:
    """The holder's view of the state table, through the proxy."""
    tables = Tables(TableServiceClient.from_connection_string(proxy.connection_string), prefix=prefix)
    yield Watermarks(tables)
    await tables.close()


@pytest.fixture
async def others(service: TableServiceClient, prefix: str) -> Watermarks:
    """The state table as another poller sees it, straight from Azurite."""
    return Watermarks(Tables(service, prefix=prefix))


async def _take(watermarks: Watermarks, owner: str = "holder", timing: LeaseTiming = TIMING) -> PollerLease:
    lease = await PollerLease.take(watermarks, TENANT, CONTENT_TYPE, owner, timing=timing)
    assert isinstance(lease, PollerLease), lease
    return lease


async def _run_past_a_lease(lease: PollerLease) -> None:
    """A run that works longer than a lease lasts, then moves the watermark."""

    async def work() -> None:
        await asyncio.sleep(WORK_SECONDS)
        await lease.write(watermark=WATERMARK)

    async with asyncio.timeout(WORK_SECONDS + 20):  # without the fix, the stuck renewal holds the run for good
        await lease.run(work())


async def test_a_renewal_that_never_answers_is_sent_again_and_the_run_keeps_its_lease(
    watermarks: Watermarks, others: Watermarks, proxy: StorageProxy
) -> None:
    lease = await _take(watermarks)
    stuck = proxy.hold("table.write", path=STATE_PATH)  # the first renewal: never forwarded, never answered
    try:
        await _run_past_a_lease(lease)
    finally:
        stuck.release()  # drops its connection; Azurite never saw it
    assert stuck.arrived.is_set()
    stored = await others.get_state(TENANT, CONTENT_TYPE)
    assert (stored.watermark, stored.lease_owner) == (WATERMARK, "holder")
    assert stored.leased_by_other("another poller"), "the lease ran out although its holder was working"


async def test_a_renewal_that_lands_without_its_answer_is_recognised_as_the_holders_own(
    watermarks: Watermarks, others: Watermarks, proxy: StorageProxy
) -> None:
    lease = await _take(watermarks)
    # The first renewal reaches Azurite and changes the entity's ETag, but its answer never comes back: the
    # write sent again carries the old ETag and is refused, as if another poller had written.
    unanswered = proxy.hold("table.write", path=STATE_PATH, after_answer=True)
    try:
        await _run_past_a_lease(lease)
    finally:
        unanswered.release()
    assert unanswered.arrived.is_set()
    stored = await others.get_state(TENANT, CONTENT_TYPE)
    assert (stored.watermark, stored.lease_owner) == (WATERMARK, "holder")


async def test_a_write_by_another_poller_still_loses_the_lease(
    watermarks: Watermarks, others: Watermarks, proxy: StorageProxy
) -> None:
    lease = await _take(watermarks, timing=PATIENT)
    unanswered = proxy.hold("table.write", path=STATE_PATH, after_answer=True)
    renewal = asyncio.create_task(lease.write())
    try:
        # Not arrived, the other poller would write first and the renewal fail on its stale ETag: this case untried.
        assert await asyncio.to_thread(unanswered.arrived.wait, 10)
        # The renewal landed unanswered; then another poller writes (as one would that judged the lease over).
        current = await others.get_state(TENANT, CONTENT_TYPE)
        await others.upsert_state(replace(current, lease_owner="another poller"))
    finally:
        unanswered.release()
    with pytest.raises(LeaseLostError, match="another poller changed the state"):
        await renewal
    with pytest.raises(LeaseLostError):
        await lease.write(watermark=WATERMARK)
    stored = await others.get_state(TENANT, CONTENT_TYPE)
    assert (stored.watermark, stored.lease_owner) == (None, "another poller")


async def _take_within_a_lease(watermarks: Watermarks) -> PollerLease:
    async with asyncio.timeout(TIMING.lease.total_seconds()):  # without the cut, the stuck request holds the take
        return await _take(watermarks)


async def test_a_take_whose_read_and_write_never_answer_gets_the_lease(
    watermarks: Watermarks, others: Watermarks, proxy: StorageProxy
) -> None:
    await others.upsert_state(PollerState(TENANT, CONTENT_TYPE, watermark=WATERMARK))  # a poller ran before
    stuck_read = proxy.hold("table.read", path=STATE_PATH)
    stuck_write = proxy.hold("table.write", path=STATE_PATH)
    try:
        lease = await _take_within_a_lease(watermarks)
    finally:
        stuck_read.release()
        stuck_write.release()
    assert stuck_read.arrived.is_set() and stuck_write.arrived.is_set()
    assert not lease.lost
    stored = await others.get_state(TENANT, CONTENT_TYPE)
    assert (stored.watermark, stored.lease_owner) == (WATERMARK, "holder")
    assert stored.leased_by_other("another poller")


async def test_a_first_take_that_lands_without_its_answer_is_recognised_as_the_takers_own(
    watermarks: Watermarks, others: Watermarks, proxy: StorageProxy
) -> None:
    # The state's first write creates the entity (a POST to the table); sent again, it meets its own entity (409).
    unanswered = proxy.hold("table.write", path=r"state$", after_answer=True)
    try:
        lease = await _take_within_a_lease(watermarks)
    finally:
        unanswered.release()
    assert unanswered.arrived.is_set()
    await lease.write(watermark=WATERMARK)  # the lease's ETag is the stored one: the holder writes on
    stored = await others.get_state(TENANT, CONTENT_TYPE)
    assert (stored.watermark, stored.lease_owner) == (WATERMARK, "holder")


async def test_a_take_refused_for_another_pollers_write_reports_it(
    watermarks: Watermarks, others: Watermarks, proxy: StorageProxy
) -> None:
    await others.upsert_state(PollerState(TENANT, CONTENT_TYPE, watermark=WATERMARK))
    # Between the taker's read and its write, another poller takes the lease.
    held = proxy.hold("table.write", path=STATE_PATH)
    take = asyncio.create_task(PollerLease.take(watermarks, TENANT, CONTENT_TYPE, "holder", timing=PATIENT))
    try:
        await asyncio.to_thread(held.arrived.wait, 10)
        current = await others.get_state(TENANT, CONTENT_TYPE)
        await others.upsert_state(replace(current, lease_owner="another poller", lease_seconds=40))
    finally:
        held.release()
    assert await take == "another poller took the lease first"
    stored = await others.get_state(TENANT, CONTENT_TYPE)
    assert stored.lease_owner == "another poller"


async def test_a_write_that_landed_but_failed_is_not_undone_by_the_release(
    others: Watermarks, proxy: StorageProxy, prefix: str
) -> None:
    """A watermark write that reached storage but failed on its way back (cut at the invocation's deadline, a
    failure, not a lost lease): the release that followed was built on the state from before it, recognised the
    landed write as the holder's own, and was sent on top of it with the old watermark. The watermark went back a
    window (and a subscription start written so, its 15-minute spacing)."""
    # The connector's storage transport, which ends a call at the invocation's deadline.
    tables = Tables(TableServiceClient.from_connection_string(proxy.connection_string, transport=BoundedTransport()),
                    prefix=prefix)  # fmt: skip
    lease = await _take(Watermarks(tables), timing=PATIENT)
    await lease.write(watermark=WATERMARK)
    later = WATERMARK + timedelta(hours=1)
    unanswered = proxy.hold("table.write", path=STATE_PATH, after_answer=True)
    try:
        # Cut by the invocation's deadline well before the lease's own cut (a heartbeat, 5 s).
        with Deadline(time.monotonic() + 2.0, 0.5).applied(), pytest.raises(DeadlineError):
            await lease.write(watermark=later)
    finally:
        unanswered.release()
    assert unanswered.arrived.is_set()
    await lease.release(last_error="")
    await tables.close()
    stored = await others.get_state(TENANT, CONTENT_TYPE)
    assert (stored.watermark, stored.lease_owner) == (later, "")


async def test_a_caller_stopped_while_a_lost_lease_s_work_cleans_up_is_stopped(
    watermarks: Watermarks, proxy: StorageProxy
) -> None:
    """The lease is lost, its work cancelled and cleaning up, and then the caller itself is stopped (Ctrl-C, `run`'s
    SIGTERM): its cancellation was swallowed with the work's, and it went on as if only the lease were lost,
    logging a failure and writing a health row while the process stopped."""
    lease = await _take(watermarks)
    cleaning = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cleaning.set()
            await asyncio.sleep(2)  # its way out, as a poll marks the blobs it queued
            raise

    proxy.add_fault("table.write", "status", status=503, code="ServerBusy", count=10_000)  # no renewal goes through
    caller = asyncio.create_task(lease.run(work()))
    async with asyncio.timeout(TIMING.lease.total_seconds() + 10):
        await cleaning.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
