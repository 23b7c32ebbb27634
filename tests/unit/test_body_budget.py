"""The body budget's line: first come, first served, a large reservation not overtaken by small ones, and a
waiter that is cancelled (an invocation that timed out) or runs out of its invocation's time neither keeps room
nor keeps the others waiting."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from irm_connector.body_budget import MAX_DOWNLOADS, BodyBudget, _NoRoom
from irm_connector.deadline import Deadline
from irm_connector.errors import ConnectorError, DeadlineError


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_large_reservation_is_not_overtaken() -> None:
    budget = BodyBudget(10)
    await budget._wait_take(6)
    served: list[str] = []

    async def take(name: str, amount: int) -> None:
        await budget._wait_take(amount)
        served.append(name)

    large = asyncio.create_task(take("large", 8))
    await _settle()
    small = asyncio.create_task(take("small", 2))  # would fit now, but comes after the large one
    await _settle()
    assert served == [] and budget.in_use == 6
    budget._release(6)
    await asyncio.gather(large, small)
    assert served == ["large", "small"] and budget.in_use == 10 and budget.peak == 10


async def test_a_cancelled_waiter_keeps_no_room_and_blocks_no_one() -> None:
    budget = BodyBudget(10)
    await budget._wait_take(6)
    whole = asyncio.create_task(budget._wait_take(10))
    await _settle()
    small = asyncio.create_task(budget._wait_take(2))
    await _settle()
    assert not small.done()
    whole.cancel()
    with pytest.raises(asyncio.CancelledError):
        await whole
    await small
    assert budget.in_use == 8 and budget.whole == 0
    budget._release(8)
    await budget._wait_take(10)
    assert budget.whole == 1 and budget.peak == 10


async def test_a_wait_for_room_the_invocation_cannot_hold_fails_it_and_gives_its_place_up() -> None:
    budget = BodyBudget(10)
    await budget._wait_take(6)  # another delivery's body, held past this one's deadline

    async def download(read: Any) -> bytes:
        raise _NoRoom(8)  # what reading an 8-byte body does when there is no room

    deadline = Deadline(time.monotonic() + 2.0, margin=1.0)  # a second for a loaded machine to unwind
    with deadline.applied(), pytest.raises(DeadlineError, match="MAX_BLOB_MB_IN_FLIGHT"):
        await budget.hold().fetch(download)
    assert time.monotonic() < deadline.end
    assert budget.in_use == 6 and not budget._line
    budget._release(6)
    await budget._wait_take(10)  # nobody waits in front: the whole bound is free
    assert budget.whole == 1


def test_the_bound_is_at_least_one_byte() -> None:
    with pytest.raises(ValueError):
        BodyBudget(0)


async def test_a_body_that_never_finds_room_names_the_setting_that_gives_it_room(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A body that outgrows its room on every read (a chunked or compressed blob on a busy worker) fails the
    delivery after its downloads. The error named the Management API's health and request budget, which have no
    part in it; the bound is MAX_BLOB_MB_IN_FLIGHT. The last download's shortfall is not waited for: the wait,
    in line behind other deliveries, was followed by no download."""
    budget = BodyBudget(100)
    reads = 0

    async def download(read: Any) -> bytes:
        nonlocal reads
        reads += 1
        raise _NoRoom(8)  # the room it got was not enough once more of the body came

    with caplog.at_level("INFO", logger="irm_connector"), pytest.raises(ConnectorError) as failed:
        await budget.hold().fetch(download)
    assert "MAX_BLOB_MB_IN_FLIGHT" in str(failed.value) and "request budget" not in str(failed.value)
    assert "the message is retried" in str(failed.value)
    waits = [r for r in caplog.records if "it waits for room, then downloads again" in r.getMessage()]
    assert reads == MAX_DOWNLOADS and len(waits) == reads - 1


def test_a_body_that_grows_to_the_whole_bound_is_counted_as_whole() -> None:
    """A body of unknown size (compressed on the wire) reserves as it arrives. Alone on the worker, it reaches
    the whole bound in steps, never in one reservation: it was not counted among the bodies that held the whole
    bound, and whether the large blob of a burst was depended on the order the deliveries ran in."""
    budget = BodyBudget(10)
    hold = budget.hold()
    hold._make_room(3)
    hold._make_room(7)
    assert budget.whole == 0
    hold._make_room(25)  # larger than the bound: it takes the rest
    assert hold.held == 10 and budget.in_use == 10 and budget.whole == 1
    hold._make_room(30)  # already whole: nothing more to take, nothing counted again
    assert budget.whole == 1
    hold.release()
    assert budget.in_use == 0
