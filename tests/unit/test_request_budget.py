"""The arithmetic of the shared request budget: slots granted by ``room`` never let a 60 s window pass the
budget, and the storage clock is read within its bounds."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

from irm_connector.request_budget import SKEW, SLOT, SLOTS_PER_WINDOW, ServerClock, room
from irm_connector.state.request_slots import Observed


def test_a_window_meets_no_more_slots_than_counted() -> None:
    # Requests of slot k land in [k*SLOT - SKEW, (k+1)*SLOT + SKEW); slide a 60 s window along in small steps.
    for step in range(0, int(SLOT * 100)):
        start = step / 100
        met = [k for k in range(-20, 40) if k * SLOT - SKEW < start + 60 and (k + 1) * SLOT + SKEW > start]
        assert len(met) <= SLOTS_PER_WINDOW


def test_reservations_in_any_order_keep_every_run_of_slots_within_the_budget() -> None:
    rng = random.Random(7)
    for budget in (1, 5, 20, 1000):
        used: dict[int, int] = {}
        for _ in range(2000):
            # Instances a slot apart (clock reading at a boundary) reserve in a slot near "now".
            slot = rng.randrange(0, 60) + rng.choice((0, 0, 1, -1))
            free = room(used, slot, budget)
            if free:
                used[slot] = used.get(slot, 0) + rng.randint(1, free)
        for last in range(-SLOTS_PER_WINDOW, 60 + SLOTS_PER_WINDOW):
            assert sum(used.get(s, 0) for s in range(last - SLOTS_PER_WINDOW + 1, last + 1)) <= budget
        assert sum(used.values()) >= budget  # and the budget was used, not refused


def test_the_storage_clock_is_read_from_date_headers_within_a_second() -> None:
    clock = ServerClock()
    skew = 1234.5  # this machine's clock is 20 minutes wrong: only the Date headers count
    for _ in range(3):
        sent = time.monotonic()
        server = time.time() + skew
        received = time.monotonic() + 0.05
        clock.observe(Observed(sent, received, datetime.fromtimestamp(int(server), UTC)))
        time.sleep(0.3)
    assert abs(clock.now() - (time.time() + skew)) < 1.0
    assert clock.uncertainty <= 0.8
