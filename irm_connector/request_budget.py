"""One Management API request budget for every instance of the connector, per tenant.

The API counts requests per tenant in any 60-second window, and Flex Consumption runs many instances, so
a limiter per process cannot keep ``O365_MAX_REQUESTS_PER_MINUTE``. Instead every instance reserves
blocks of requests in :data:`SLOT`-second slots of the storage service's clock, with ETag-checked writes of
one entity per tenant (:mod:`.state.request_slots`), and sends a reserved request only while its slot lasts.

Why every sliding window holds: a request of slot ``k`` reaches the API between ``k*SLOT - SKEW`` and
``(k+1)*SLOT + SKEW``, where :data:`SKEW` covers the error of an instance's reading of the storage clock
and the request's transit. Any 60 s window therefore meets the requests of at most :data:`SLOTS_PER_WINDOW`
consecutive slots, and a reservation is granted only while every run of that many slots around its slot
stays within the budget. Instances read the time from the ``Date`` of the storage answers, bounded from
both sides by when they sent and received them, so their own clocks may be as wrong as they like.

Cost: an instance under steady demand writes about once per slot (6 a minute): it reserves what it is
waiting for or twice what it used the slot before, and a burst within a slot doubles the block with each
further write. A conflict with another instance's write costs a read and a second write; an idle instance
costs nothing. No instance takes more than a fair share of a slot (budget / slots per window), so one
cannot take a whole minute's budget at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from dataclasses import replace
from datetime import UTC, datetime

from .api_answers import MAX_RETRY_AFTER
from .state.request_slots import Observed, RequestSlots, SlotRing, SlotsChangedError

__all__ = ["SKEW", "SLOT", "SLOTS_PER_WINDOW", "ServerClock", "SharedRequestBudget", "room"]

log = logging.getLogger(__name__)

#: The API's window.
WINDOW = 60.0
#: Length of a slot, in seconds of the storage clock: the reservations' unit of time.
SLOT = 10.0
#: The most a request may land away from its slot: reading error of the storage clock plus transit.
SKEW = 4.0
#: How many slots' requests one 60 s window can meet.
SLOTS_PER_WINDOW = math.ceil((WINDOW + 2 * SKEW) / SLOT + 1)
#: A reading of the storage clock more uncertain than this is improved (another read) before it is used.
_CLOCK_SLACK = 1.5
_CONFLICT_TRIES = 5
#: What is left of the tenant's wait that :meth:`SharedRequestBudget.acquire` sleeps itself rather than hand back:
#: the readings of the storage clock by the instance that recorded it and the one that keeps it differ by about
#: this much, and a remainder handed back would cost the caller a try of a throttled call.
_PAUSE_SLEPT = 3.0
#: The longest wait a recorded pause can have left: the longest Retry-After honoured, and a minute for the clocks.
_LONGEST_PAUSE = MAX_RETRY_AFTER.total_seconds() + 60


def room(used: dict[int, int], slot: int, budget: int) -> int:
    """How many more requests ``slot`` may take while every run of :data:`SLOTS_PER_WINDOW` consecutive
    slots that contains it stays within ``budget``."""
    n = SLOTS_PER_WINDOW
    free = budget
    for last in range(slot, slot + n):
        free = min(free, budget - sum(used.get(s, 0) for s in range(last - n + 1, last + 1)))
    return max(free, 0)


def next_slot_with_room(used: dict[int, int], slot: int, budget: int) -> int:
    for later in range(slot + 1, slot + 2 * SLOTS_PER_WINDOW):
        if room(used, later, budget) > 0:
            return later
    return slot + 1


class ServerClock:
    """The storage service's time, read from the ``Date`` of its answers.

    ``Date`` has whole seconds (truncated or rounded), and the service wrote it somewhere between sending
    and receiving, so each answer bounds the offset between the service's clock and this process's
    monotonic clock from both sides; the bounds of all answers are intersected."""

    def __init__(self) -> None:
        self._low = -math.inf
        self._high = math.inf

    def observe(self, seen: Observed) -> None:
        if seen.date is None:
            return
        date = seen.date.timestamp()
        low, high = date - 0.5 - seen.received, date + 1.0 - seen.sent
        if low > self._high or high < self._low:
            # The bounds disagree: this machine's clock jumped (a suspended instance). Start again.
            self._low, self._high = low, high
        else:
            self._low, self._high = max(self._low, low), min(self._high, high)

    @property
    def uncertainty(self) -> float:
        return (self._high - self._low) / 2

    def now(self) -> float:
        """The storage service's time (epoch seconds); valid once an answer was observed."""
        return time.monotonic() + (self._low + self._high) / 2


class SharedRequestBudget:
    """``O365_MAX_REQUESTS_PER_MINUTE`` for all instances of a tenant: :meth:`acquire` before each request."""

    def __init__(self, slots: RequestSlots, tenant_id: str, per_minute: int) -> None:
        self._slots = slots
        self._tenant = tenant_id
        self._budget = per_minute
        self._share = max(1, math.ceil(per_minute / SLOTS_PER_WINDOW))
        self._clock = ServerClock()
        self._ring: SlotRing | None = None
        self._lock = asyncio.Lock()
        self._waiting = 0
        self._block_slot = -1
        self._block_left = 0
        self._block_used = 0
        self._block_granted = 0
        self._next_clock_read = 0.0
        #: The end of the latest wait the API asked of the tenant that this instance knows of (storage clock): kept
        #: apart from the ring, which an older answer processed after a newer write may replace.
        self._paused_until = 0.0

    async def acquire(self) -> float:
        """Wait until a request may be sent now, and return 0; or, while a wait the API asked of the tenant
        (``Retry-After``, met by any instance) has more than :data:`_PAUSE_SLEPT` seconds left, reserve nothing and
        return what is left of it. Raises :class:`~irm_connector.errors.StateError` when storage cannot be
        reached."""
        self._waiting += 1
        try:
            while True:
                async with self._lock:
                    left = await self._take()
                if left <= 0:
                    return 0.0
                if left > _PAUSE_SLEPT:
                    return left
                await asyncio.sleep(left)  # the end of a wait: not worth a try of the caller's
        finally:
            self._waiting -= 1

    async def pause(self, seconds: float) -> None:
        """Keep every instance's requests back for ``seconds`` from now, as the API asked (``Retry-After``): asked
        sooner, it throttles again, and the throttled requests count against the tenant's quota. A longer wait
        already recorded stands. Does not wait for the lock :meth:`acquire` holds while it sleeps for a slot:
        the ETag-checked write keeps the two from losing each other's change."""
        if self._ring is None:
            await self._read()
        until = self._clock.now() + seconds
        self._paused_until = max(self._paused_until, until)  # this instance keeps it even if the write fails
        for _ in range(_CONFLICT_TRIES):
            ring = self._ring or SlotRing(self._tenant)
            recorded = self._credible(ring.paused_until)
            if recorded is not None and recorded >= until - _PAUSE_SLEPT:
                return
            try:
                ring, seen = await self._slots.write(ring.pausing(until))
            except SlotsChangedError:
                await self._read()
                continue
            self._clock.observe(seen)
            self._keep(ring)
            return
        raise SlotsChangedError(f"other instances wrote the request budget {_CONFLICT_TRIES} times meanwhile")

    def _credible(self, until: float | None) -> float | None:
        """``until``, unless it is further ahead than any wait is recorded (MAX_RETRY_AFTER): one hand-edited, or
        written on a clock gone wrong, would hold every instance for as long, and hide the real waits behind it."""
        return until if until is not None and until - self._clock.now() <= _LONGEST_PAUSE else None

    def _keep(self, ring: SlotRing) -> None:
        """``ring`` as last read or written, once the clock has observed its answer. A wait recorded beyond belief
        is left out, so that the next write drops it: kept, it held every instance once it came within the hour."""
        recorded = self._credible(ring.paused_until)
        if recorded is not None:
            self._paused_until = max(self._paused_until, recorded)
        elif ring.paused_until is not None and ring.paused_until > self._clock.now():
            log.warning("The request budget held a Management API wait %.0f s ahead, longer than any Retry-After is "
                        "kept; it is dropped", ring.paused_until - self._clock.now())  # fmt: skip
            ring = replace(ring, paused_until=None)
        self._ring = ring

    def service_time(self) -> datetime | None:
        """The storage service's time, once an answer told it."""
        return datetime.fromtimestamp(self._clock.now(), UTC) if self._ring is not None else None

    def _pause_left(self) -> float:
        return self._paused_until - self._clock.now()

    async def _take(self) -> float:
        while True:
            unsure = self._clock.uncertainty > _CLOCK_SLACK and time.monotonic() > self._next_clock_read
            if self._ring is None or unsure:
                self._next_clock_read = time.monotonic() + SLOT
                await self._read()
            left = self._pause_left()
            if left > 0:
                return left
            slot = self._slot_now()
            if slot == self._block_slot:
                if self._block_left > 0:
                    self._block_left -= 1
                    self._block_used += 1
                    return 0.0
                if self._block_granted >= self._share:
                    await self._sleep_until(slot + 1)  # this instance had its share of the slot
                    continue
                # More demand in the same slot: each further block doubles, so a burst costs few writes.
                want = min(self._share - self._block_granted, max(self._waiting, self._block_used))
            else:
                last_used = self._block_used if slot == self._block_slot + 1 else 0
                self._block_slot, self._block_left, self._block_used, self._block_granted = slot, 0, 0, 0
                want = min(self._share, max(self._waiting, 2 * last_used, 1))
            granted, next_slot = await self._reserve(slot, want)
            if not granted:
                await self._sleep_until(next_slot)
                continue
            self._block_granted += granted
            self._block_left += granted
            # A block is good only in its own slot; if the slot ended while writing, the loop starts anew.

    async def _reserve(self, slot: int, want: int) -> tuple[int, int]:
        """``(granted, slot)``, or ``(0, the next slot that may have room)``."""
        for _ in range(_CONFLICT_TRIES):
            ring = self._ring or SlotRing(self._tenant)
            free = room(ring.used, slot, self._budget)
            wanted = ring.adding(slot, min(want, free)) if free > 0 else None
            if wanted is None:
                return 0, next_slot_with_room(ring.used, slot, self._budget)
            try:
                written, seen = await self._slots.write(wanted)
            except SlotsChangedError:
                await self._read()
                if self._slot_now() != slot:
                    return 0, self._slot_now()
                continue
            self._clock.observe(seen)
            self._keep(written)
            return min(want, free), slot
        return 0, slot + 1

    async def _read(self) -> None:
        ring, seen = await self._slots.read(self._tenant)
        if seen.date is None:
            # Storage answers carry a Date; if a proxy drops it, this machine's clock is the next best.
            seen = Observed(seen.sent, seen.received, datetime.now(UTC))
        self._clock.observe(seen)
        self._keep(ring)

    def _slot_now(self) -> int:
        return math.floor(self._clock.now() / SLOT)

    async def _sleep_until(self, slot: int) -> None:
        # A little jitter so instances waiting for the same slot do not all write at its first instant.
        wait = slot * SLOT - self._clock.now() + random.uniform(0.0, 0.3)  # noqa: S311 - jitter, not crypto
        await asyncio.sleep(max(wait, 0.0))
