"""SIGKILL at each step boundary, then a restart: every record arrives; duplicates only from the
window between an accepted upload and its commit, and at most one blob's rows.

The connector runs in a child process whose storage goes through the fault proxy. The proxy holds the
request that marks the step boundary, the test kills the child while it waits there, and the host's
part (redelivering the message, the next timer tick) is played afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from standins.storage_proxy import Hold
from standins.workload import Workload, generate_workload
from tests.faults import report
from tests.harness import ConnectorHarness

ROOT = Path(__file__).resolve().parents[2]
AUDIT = "Custom-O365Audit"
ALERTS = "Custom-IRMAlerts"


def _start_child(connector: ConnectorHarness, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, **connector.env, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.faults.child", *args], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


async def _kill_when_held(child: subprocess.Popen[str], hold: Hold) -> None:
    deadline = time.monotonic() + 60
    while not hold.arrived.is_set():
        if child.poll() is not None:
            out = child.stdout.read() if child.stdout else ""
            raise AssertionError(f"the child ended before reaching the step boundary:\n{out[-3000:]}")
        if time.monotonic() > deadline:
            child.kill()
            raise AssertionError("the child never reached the step boundary")
        await asyncio.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    if child.stdout:
        child.stdout.close()
    hold.release(forward=False)


def _tally(connector: ConnectorHarness, workload: Workload, *, alerts_expected: bool = True) -> tuple[int, int]:
    audit = Counter(r["RecordId"] for r in connector.rows(AUDIT))
    alerts = Counter(r["RecordId"] for r in connector.rows(ALERTS))
    lost = len(workload.record_ids - set(audit))
    if alerts_expected:
        lost += len(workload.irm_alert_record_ids - set(alerts))
    duplicates = sum(audit.values()) - len(audit) + sum(alerts.values()) - len(alerts)
    return lost, duplicates


def _workload(connector: ConnectorHarness, seed: int, blobs: int = 3, *, two_days: bool = False) -> Workload:
    """``two_days``: every other record happened two days earlier, so each blob's keys fill two day
    partitions and its claim takes two writes."""
    sim = connector.standins
    connector.set(LOGS_AUDIT_STREAM=AUDIT, POLL_TIME_BUDGET="10s")
    workload = generate_workload(seed=seed, total_records=300 * blobs, blob_size=(300, 300), irm_share=0.05,
                                 duplicate_share=0.05, tenant_id=sim.tenant_id)  # fmt: skip
    if two_days:
        for blob in workload.blobs:
            for record in blob.records[::2]:
                earlier = datetime.fromisoformat(record["CreationTime"]) - timedelta(days=2)
                record["CreationTime"] = earlier.strftime("%Y-%m-%dT%H:%M:%S")
    sim.management.set_subscription("Audit.General", "enabled")
    workload.publish(sim.management)
    return workload


async def _poll_after_lease(connector: ConnectorHarness) -> None:
    """The next timer ticks: the dead poller's lease (40 s after its last write) runs out first."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        await connector.poll()
        state = connector.standins.management.count("list")
        await asyncio.sleep(1.0)
        if connector.standins.management.count("list") == state and await _watermark_moved(connector):
            return
    raise AssertionError("the lease of the killed poller never expired")


async def _watermark_moved(connector: ConnectorHarness) -> bool:
    from irm_connector.runtime import get_runtime
    from irm_connector.settings import Settings

    settings = Settings.from_env()
    rt = await get_runtime(settings)
    state = await rt.state.watermarks.get_state(settings.tenant_id, "Audit.General")
    return state.watermark is not None and not state.lease_owner


async def _kill_poller_then_restart(connector: ConnectorHarness, hold: Hold) -> tuple[int, int]:
    """Kill a polling child at ``hold``, let the next ticks run and the queue drain; returns the queue
    length before and after the restart."""
    await _kill_when_held(_start_child(connector, "poll"), hold)
    queued_before = await connector.queue_length()
    await _poll_after_lease(connector)
    queued_after = await connector.queue_length()
    await connector.drain()
    return queued_before, queued_after


@pytest.mark.reports_outcome
async def test_kill_after_enqueue_before_the_watermark_write(faulty: ConnectorHarness) -> None:
    connector = faulty
    workload = _workload(connector, seed=31)
    hold = connector.proxy.hold("table.write", path="state", body=r'"Watermark": ?"\d')  # type: ignore[attr-defined]
    queued_before, queued_after = await _kill_poller_then_restart(connector, hold)
    lost, duplicates = _tally(connector, workload)
    report.record(report.Outcome(
        "Crashes", "poller", "killed after enqueue, before the watermark write",
        "the next run re-lists the window; the blob markers keep it from queuing again",
        f"{queued_before} messages before the restart, {queued_after} after", lost, duplicates))  # fmt: skip
    assert queued_before == len(workload.blobs)
    assert queued_after == queued_before
    assert (lost, duplicates) == (0, 0)


@pytest.mark.reports_outcome
async def test_kill_after_enqueue_before_the_blob_markers(faulty: ConnectorHarness) -> None:
    connector = faulty
    workload = _workload(connector, seed=32)
    hold = connector.proxy.hold("table.batch")  # type: ignore[attr-defined]
    queued_before, queued_after = await _kill_poller_then_restart(connector, hold)
    lost, duplicates = _tally(connector, workload)
    report.record(report.Outcome(
        "Crashes", "poller", "killed after enqueue, before the blob markers",
        "the next run queues the blobs again; the record dedupe keeps their rows single",
        f"{queued_before} messages before the restart, {queued_after} after", lost, duplicates))  # fmt: skip
    assert queued_after == 2 * queued_before == 2 * len(workload.blobs)
    assert (lost, duplicates) == (0, 0)


async def _one_message(connector: ConnectorHarness, tmp_path: Path) -> tuple[str, Path]:
    await connector.poll()
    async with connector.queue_client() as q:
        [message] = [m async for m in q.receive_messages(max_messages=1, visibility_timeout=600)]
    path = tmp_path / "message.json"
    path.write_text(message.content)
    return message.content, path


@pytest.mark.reports_outcome
async def test_kill_in_the_middle_of_the_dedupe_claims(faulty: ConnectorHarness, tmp_path: Path) -> None:
    connector = faulty
    workload = _workload(connector, seed=33, blobs=1, two_days=True)
    # One stream only (no category matches), so the claims of its two day partitions are written one after
    # another, before any upload: the kill falls between the two.
    connector.set(ALERT_CATEGORIES="MailFlow")  # the workload has no such alert
    body, path = await _one_message(connector, tmp_path)
    hold = connector.proxy.hold("table.write", path="rec", body=r'"S": ?"p"', skip=1)  # type: ignore[attr-defined]
    await _kill_when_held(_start_child(connector, "process", str(path)), hold)
    uploaded_before = len(connector.rows(AUDIT))
    await connector.process(body, dequeue_count=2)  # the host redelivers the message
    lost, duplicates = _tally(connector, workload, alerts_expected=False)
    report.record(report.Outcome(
        "Crashes", "processor", "killed between two dedupe claim writes",
        "the redelivered message finds its own claims and sends every row once",
        f"{uploaded_before} rows uploaded before the kill", lost, duplicates))  # fmt: skip
    assert uploaded_before == 0
    assert (lost, duplicates) == (0, 0)


@pytest.mark.reports_outcome
async def test_kill_after_the_upload_before_the_commit(faulty: ConnectorHarness, tmp_path: Path) -> None:
    connector = faulty
    workload = _workload(connector, seed=34, blobs=1)
    body, path = await _one_message(connector, tmp_path)
    hold = connector.proxy.hold("table.write", path="rec", body=r'"S": ?"s"')  # type: ignore[attr-defined]
    await _kill_when_held(_start_child(connector, "process", str(path)), hold)
    uploaded_before = len(connector.rows(AUDIT)) + len(connector.rows(ALERTS))
    await connector.process(body, dequeue_count=2)
    lost, duplicates = _tally(connector, workload)
    blob_rows = len(workload.blobs[0].records) + sum(
        1 for r in workload.blobs[0].records if r["Id"] in workload.irm_alert_record_ids
    )
    report.record(report.Outcome(
        "Crashes", "processor", "killed after an accepted upload, before its commit",
        "the redelivered message sends the uncommitted rows again (duplicates allowed: at most one blob's rows)",
        f"{uploaded_before} rows uploaded before the kill", lost, duplicates))  # fmt: skip
    assert uploaded_before > 0
    assert lost == 0
    assert 0 < duplicates <= blob_rows


@pytest.mark.reports_outcome
async def test_kill_during_a_poison_move(faulty: ConnectorHarness) -> None:
    connector = faulty
    workload = _workload(connector, seed=35, blobs=1)
    await connector.poll()
    # The blob fails (400: the DCR refuses the rows; a 401/403/404 would reschedule it instead): it is poisoned
    # on the first failure.
    connector.standins.ingestion.add_fault("ingest", "status", count=1000, status=400, code="InvalidContent")
    hold = connector.proxy.hold("queue.delete")  # type: ignore[attr-defined]
    await _kill_when_held(_start_child(connector, "work", "3", "1"), hold)
    in_poison = await connector.queue_length(connector.queue_name + "-poison")
    on_main = await connector.queue_length()  # the copy whose delete the kill cut off
    connector.standins.ingestion.clear_faults()
    await asyncio.sleep(3.5)  # the killed worker's lock on the message runs out
    stats = await connector.drain()
    async with connector.queue_client(connector.queue_name + "-poison") as poison:
        copies = [m.content async for m in poison.receive_messages(max_messages=32)]
    for copy in copies:  # the operator's requeue
        await connector.process(copy)
    lost, duplicates = _tally(connector, workload)
    report.record(report.Outcome(
        "Crashes", "worker", "killed between the poison copy and the delete",
        "the message exists twice (main and poison); processing both sends every row once",
        f"{in_poison} poison copy, message back on the main queue", lost, duplicates))  # fmt: skip
    assert in_poison == 1 and on_main == 1 and stats.processed == 1
    assert (lost, duplicates) == (0, 0)


@pytest.mark.reports_outcome
async def test_azurite_stopped_mid_run_and_started_again(connector: ConnectorHarness) -> None:
    sim = connector.standins
    connector.set(LOGS_AUDIT_STREAM=AUDIT)
    workload = generate_workload(seed=36, total_records=3000, blob_size=(300, 300), irm_share=0.05,
                                 tenant_id=sim.tenant_id)  # fmt: skip
    sim.management.set_subscription("Audit.General", "enabled")
    workload.publish(sim.management)
    sim.ingestion.set_latency(1.0)  # every upload outlasts the outage's start: the drain is mid-run when it comes
    await connector.poll()
    drain = asyncio.ensure_future(connector.drain())
    caught_mid_run = False

    async def outage() -> None:
        nonlocal caught_mid_run
        await asyncio.sleep(0.5)
        try:
            await asyncio.to_thread(connector.azurite.stop)
            caught_mid_run = not drain.done()  # else the test passed without an outage to ride out
            await asyncio.sleep(3.0)
        finally:  # the session's Azurite: every later test needs it, whatever became of the drain
            await asyncio.to_thread(connector.azurite.start)

    # Both to their end, so the restart has happened whatever the drain did.
    drained, restarted = await asyncio.gather(drain, outage(), return_exceptions=True)
    for failure in (drained, restarted):
        if isinstance(failure, BaseException):
            raise failure
    assert not isinstance(drained, BaseException)
    assert caught_mid_run
    stats = drained
    await connector.drain()
    lost, duplicates = _tally(connector, workload)
    report.record(report.Outcome(
        "Crashes", "Azurite", "storage stopped for 3 s mid-run, then started",
        "the SDK retries and the host's redelivery carry the run through, no operator action; a commit the "
        "outage catches re-sends that blob's rows (duplicates allowed, never loss)",
        "recovered" if stats.poisoned == 0 else f"{stats.poisoned} poisoned", lost, duplicates))  # fmt: skip
    assert stats.poisoned == 0
    assert lost == 0
    # A commit the outage catches re-sends that blob's rows once: at most one more copy of a row, and at most the
    # rows of the blobs in flight together (the host's concurrency).
    from irm_connector.cli.queue_trigger import HostQueueOptions

    for stream in (AUDIT, ALERTS):
        assert max(Counter(r["RecordId"] for r in connector.rows(stream)).values()) <= 2
    alert_ids = workload.irm_alert_record_ids
    blob_rows = max(len(b.records) + sum(1 for r in b.records if r["Id"] in alert_ids) for b in workload.blobs)
    assert duplicates <= HostQueueOptions.from_environment().concurrency * blob_rows


@pytest.mark.reports_outcome
async def test_tokens_expire_and_refresh_during_a_long_run(connector: ConnectorHarness) -> None:
    sim = connector.standins
    # Tokens that live 2 s in a run of several: each library must notice expiry and fetch anew.
    sim.tokens.lifetime = 2.0
    connector.set(LOGS_AUDIT_STREAM=AUDIT)
    workload = generate_workload(seed=37, total_records=4000, blob_size=(100, 100), irm_share=0.05,
                                 tenant_id=sim.tenant_id)  # fmt: skip
    sim.management.set_subscription("Audit.General", "enabled")
    workload.publish(sim.management)
    sim.management.set_latency(0.4, route="content")
    sim.ingestion.set_latency(0.5)
    await connector.poll()
    stats = await connector.drain()
    lost, duplicates = _tally(connector, workload)
    issued = sim.tokens.issued_by_kind()
    report.record(report.Outcome(
        "Crashes", "tokens", "tokens expiring during a long run",
        "msal and azure-identity fetch new tokens; a token that expires in flight is refused once and "
        "the call or the invocation is retried",
        "tokens refreshed" + (", a refused token retried" if stats.failed_attempts else ""),
        lost, duplicates))  # fmt: skip
    assert issued.get("client_secret", 0) >= 2 and issued.get("managed_identity", 0) >= 2
    assert (lost, duplicates) == (0, 0)
