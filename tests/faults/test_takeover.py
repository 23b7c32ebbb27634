"""A dead or stalled poller is replaced within a minute, and two live pollers never list at once.

Real processes: a poller child lists slowly (latency at the Management API stand-in), two ticker
children play the timer on other instances (a tick every few seconds), and the test kills or stops the
poller mid-listing. Each process sends its own PublisherIdentifier, so the stand-in's request log tells
who listed when.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from standins.workload import Workload, generate_workload
from tests.faults import report
from tests.harness import ConnectorHarness

if TYPE_CHECKING:
    from irm_connector.state.watermarks import PollerState

ROOT = Path(__file__).resolve().parents[2]
AUDIT = "Custom-O365Audit"
#: The timer of the ticker children: the contract's bound is 60 s plus one tick interval.
TICK = 5.0
#: Seconds per listing page at the stand-in: a window of 20 pages takes a minute, longer than a lease.
PAGE_LATENCY = 3.0


def _child(connector: ConnectorHarness, publisher: str, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """A poller process; what it logs goes to ``log``, for a failure to show."""
    env = {**os.environ, **connector.env, "PYTHONPATH": str(ROOT), "O365_PUBLISHER_ID": publisher}
    with log.open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.faults.child", *args], cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip


def _listings(connector: ConnectorHarness) -> list[tuple[float, float, str]]:
    """(start, end, publisher) of every listing request, by the stand-in's clock."""
    return sorted(
        (r.time - r.duration, r.time, r.publisher_identifier or "")
        for r in connector.standins.management.requests("list")
    )


def _overlaps(listings: list[tuple[float, float, str]]) -> list[tuple[str, str]]:
    """Pairs of listing requests of different pollers that were in flight at the same time."""
    found = []
    for i, (start, end, who) in enumerate(listings):
        for other_start, _other_end, other in listings[i + 1 :]:
            if other_start >= end:
                break
            if other != who:
                found.append((who, other))
    return found


async def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def _publish(connector: ConnectorHarness, seed: int) -> Workload:
    sim = connector.standins
    connector.set(LOGS_AUDIT_STREAM=AUDIT)
    sim.management.page_size = 2
    sim.management.set_subscription("Audit.General", "enabled")
    workload = generate_workload(seed=seed, total_records=40 * 30, blob_size=(30, 30), irm_share=0.05,
                                 tenant_id=sim.tenant_id)  # fmt: skip
    workload.publish(sim.management)
    sim.management.set_latency(PAGE_LATENCY, route="list")
    return workload


def _tally(connector: ConnectorHarness, workload: Workload) -> tuple[int, int]:
    audit = Counter(r["RecordId"] for r in connector.rows(AUDIT))
    return len(workload.record_ids - set(audit)), sum(audit.values()) - len(audit)


class _Pollers:
    """The poller under test and two tickers, each with its own PublisherIdentifier."""

    def __init__(self, connector: ConnectorHarness, tmp_path: Path) -> None:
        self.connector = connector
        self.holder_id, self.tickers = str(uuid.uuid4()), [str(uuid.uuid4()), str(uuid.uuid4())]
        self.ticks = [tmp_path / "ticks-0", tmp_path / "ticks-1"]
        self.logs = [tmp_path / "holder.log", tmp_path / "ticker-0.log", tmp_path / "ticker-1.log"]
        self.holder = _child(connector, self.holder_id, self.logs[0], "poll")
        self.running: list[subprocess.Popen[bytes]] = [self.holder]

    async def start_tickers(self) -> None:
        for ticker, ticks, log in zip(self.tickers, self.ticks, self.logs[1:], strict=True):
            self.running.append(_child(self.connector, ticker, log, "ticks", str(TICK), str(ticks)))
            await asyncio.sleep(TICK / 2)  # the two timers tick out of step

    def listings_by(self, publishers: list[str]) -> list[tuple[float, float, str]]:
        return [item for item in _listings(self.connector) if item[2] in publishers]

    def stop_tickers(self) -> None:
        for child in self.running[1:]:
            child.kill()
            child.wait(timeout=10)

    def logged(self) -> str:
        """What the pollers logged (warnings and errors), for an assertion's message."""
        return "\n".join(
            f"--- {log.name}:\n{log.read_text(errors='replace')[-4000:]}" for log in self.logs if log.exists()
        )

    def close(self) -> None:
        for child in self.running:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)


async def _holder_listing(pollers: _Pollers) -> None:
    await _wait(lambda: bool(pollers.listings_by([pollers.holder_id])), 60, "the first poller to list")


async def _watermark_state(connector: ConnectorHarness) -> PollerState:
    from irm_connector.runtime import get_runtime
    from irm_connector.settings import Settings

    settings = Settings.from_env()
    rt = await get_runtime(settings)
    return await rt.state.watermarks.get_state(settings.tenant_id, "Audit.General")


async def _listed_again(connector: ConnectorHarness) -> None:
    """Until a run of another poller has listed every window and let go of the lease."""
    deadline = time.monotonic() + 120
    while True:
        state = await _watermark_state(connector)
        if state.watermark is not None and not state.lease_owner:
            return
        assert time.monotonic() < deadline, "the other pollers never finished listing"
        await asyncio.sleep(0.5)


@pytest.mark.reports_outcome
async def test_a_killed_poller_is_replaced_within_a_minute(connector: ConnectorHarness, tmp_path: Path) -> None:
    workload = _publish(connector, seed=41)
    pollers = _Pollers(connector, tmp_path)
    try:
        await _holder_listing(pollers)
        await pollers.start_tickers()
        # The holder lists for longer than its lease lasts: the heartbeat keeps it while the tickers tick.
        await asyncio.sleep(45)
        pollers.holder.send_signal(signal.SIGKILL)
        killed = time.time()
        pollers.holder.wait(timeout=10)
        await _wait(lambda: bool(pollers.listings_by(pollers.tickers)), 60 + TICK + 60, "listing to resume")
        resumed = pollers.listings_by(pollers.tickers)[0][0]
        connector.standins.management.set_latency(0.0, route="list")
        await _listed_again(connector)
        pollers.stop_tickers()
    finally:
        pollers.close()
    holder_requests = pollers.listings_by([pollers.holder_id])
    overlaps = _overlaps(_listings(connector))
    await connector.poll()  # another tick: nothing left behind
    await connector.drain()
    lost, duplicates = _tally(connector, workload)
    report.record(report.Outcome(
        "Crashes", "poller", "killed (kill -9) mid-listing, two other instances ticking every 5 s",
        "a tick within a minute of the kill polls again (the lease runs out 40 s after the last "
        "heartbeat, by the storage clock); two live pollers never list at once; every record once",
        f"listing resumed {resumed - killed:.0f} s after the kill; the holder had listed "
        f"{holder_requests[-1][1] - holder_requests[0][0]:.0f} s while the others ticked; "
        f"{len(overlaps)} overlapping listings", lost, duplicates))  # fmt: skip
    assert resumed - killed <= 60 + TICK, pollers.logged()
    # longer than a lease: the heartbeat held it
    assert holder_requests[-1][1] - holder_requests[0][0] > 40, pollers.logged()
    assert overlaps == [], pollers.logged()
    assert (lost, duplicates) == (0, 0), pollers.logged()


@pytest.mark.reports_outcome
async def test_a_stalled_poller_cannot_move_the_watermark(connector: ConnectorHarness, tmp_path: Path) -> None:
    workload = _publish(connector, seed=42)
    pollers = _Pollers(connector, tmp_path)
    try:
        await _holder_listing(pollers)
        await pollers.start_tickers()
        await asyncio.sleep(10)
        pollers.holder.send_signal(signal.SIGSTOP)  # frozen mid-listing, like a stalled instance
        stopped = time.time()
        await _wait(lambda: bool(pollers.listings_by(pollers.tickers)), 60 + TICK + 60, "listing to resume")
        resumed = pollers.listings_by(pollers.tickers)[0][0]
        connector.standins.management.set_latency(0.0, route="list")
        await _listed_again(connector)
        pollers.stop_tickers()
        before = await _watermark_state(connector)
        woke = time.time()
        pollers.holder.send_signal(signal.SIGCONT)
        status = await asyncio.to_thread(pollers.holder.wait, 60)
        after = await _watermark_state(connector)
    finally:
        pollers.close()
    listed_after_waking = [item for item in pollers.listings_by([pollers.holder_id]) if item[0] >= woke]
    await connector.drain()
    lost, duplicates = _tally(connector, workload)
    report.record(report.Outcome(
        "Crashes", "poller", "stalled (SIGSTOP) mid-listing, resumed after another took over",
        "the stalled poller lists nothing more and writes nothing (the watermark stays the other's); every "
        "record once",
        f"taken over {resumed - stopped:.0f} s after the stall; after waking: {len(listed_after_waking)} "
        f"listings, state {'unchanged' if after.etag == before.etag else 'written'}", lost, duplicates))  # fmt: skip
    assert resumed - stopped <= 60 + TICK, pollers.logged()
    assert status != 0, pollers.logged()  # its run failed: the lease was lost
    assert listed_after_waking == [], pollers.logged()
    assert (after.etag, after.watermark) == (before.etag, before.watermark), pollers.logged()
    assert (lost, duplicates) == (0, 0), pollers.logged()
