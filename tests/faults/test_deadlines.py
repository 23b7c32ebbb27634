"""No invocation outlives its timeout (issue 13, contract 3).

A processor child runs one invocation with ``functionTimeout`` set to 30 s through the app setting the host
reads over host.json (``AzureFunctionsJobHost__functionTimeout``), against a dependency that never recovers
while it runs: Logs Ingestion answering 503 with ``Retry-After: 12``
(azure-core honours it, uncapped, on each of its three retries of a status: 36 s; the retries that fit are
made, the one that does not is not), or Table Storage, through the fault proxy, answering every read only
after 45 s (inside the 60 s ``HTTP_TIMEOUT``, so the SDK waits for it: one read outlasts the timeout), or
Entra ID answering the Management API's token request after 45 s. The invocation must end by itself, raising,
before its timeout; its claims released and its failure recorded. Once the fault clears, the queue is worked and every
record arrives exactly once. A throttle whose wait does not fit (the Management API answering 429 with
``Retry-After: 120``; six attempts would wait 10 minutes) is not a failure: the message is put off for that wait.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials_async import AsyncTokenCredential
from azure.data.tables.aio import TableServiceClient

from irm_connector._bounded import BoundedCredential
from irm_connector._tls import azure_session
from irm_connector.content_queue import Delivery
from irm_connector.deadline import TIMEOUT_SETTING, Deadline
from irm_connector.errors import PollError, StorageDeadlineError
from irm_connector.runtime import get_runtime, storage_clients
from irm_connector.settings import Settings
from irm_connector.state import message_key
from standins import StandIns
from standins.storage_proxy import StorageProxy
from standins.workload import Workload, generate_workload
from tests.faults import report
from tests.harness import ConnectorHarness, record_api_wait

ROOT = Path(__file__).resolve().parents[2]
AUDIT = "Custom-O365Audit"
ALERTS = "Custom-IRMAlerts"
HEALTH = "Custom-IRMConnectorHealth"
TIMEOUT = 30
#: How long the test waits for the child beyond the timeout itself (interpreter start, imports) before it
#: calls the invocation stuck.
STARTUP = 30
EXPECTED = (
    "the invocation fails by itself before its function timeout (no wait or retry is started that the time left "
    "cannot hold), its claims released and its failure recorded; after the fault clears every record arrives once"
)


def _invoke(connector: ConnectorHarness, message: str, tmp_path: Path) -> dict[str, Any]:
    """One invocation in a process of its own, with the function timeout set as an app setting."""
    path = tmp_path / "message.json"
    path.write_text(message, encoding="utf-8")
    env = {
        **os.environ, **connector.env, "PYTHONPATH": str(ROOT),
        "AzureFunctionsJobHost__functionTimeout": f"00:00:{TIMEOUT}",
    }  # fmt: skip
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.child", "invoke", str(path)], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = child.communicate(timeout=TIMEOUT + STARTUP)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise AssertionError(f"the invocation was still running {TIMEOUT + STARTUP} s after it started") from None
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, err[-3000:]
    return dict(json.loads(lines[-1]))


async def _pending_claims(connector: ConnectorHarness) -> int:
    """Pending (unsent, unreleased) claim shards in every record-key table of this connector."""
    prefix = connector.env["STATE_TABLE_PREFIX"]
    count = 0
    async with TableServiceClient.from_connection_string(connector.azurite.connection_string) as service:
        names = [t.name async for t in service.query_tables(f"TableName ge '{prefix}rec' and TableName lt '{prefix}rec~'")]
        for name in names:
            table = service.get_table_client(name)
            count += len([e async for e in table.query_entities("S eq 'p'")])
    return count


async def _failure_reason(message: str) -> str:
    rt = await get_runtime(Settings.from_env())
    failure = await rt.state.failures.get_failure(message_key(Delivery.decode(message)))
    return failure.reason if failure else ""


async def _one_blob_queued(connector: ConnectorHarness, *, seed: int, records: int = 300) -> tuple[Workload, str]:
    """A blob of ``records`` records (5% alerts) published, listed by a poll and queued: its workload and message."""
    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    workload = generate_workload(seed=seed, total_records=records, blob_size=(records, records), irm_share=0.05,
                                 tenant_id=sim.tenant_id)  # fmt: skip
    workload.publish(sim.management)
    await connector.poll()
    [message] = await connector.messages()
    return workload, message


CASES = [
    ("Logs Ingestion", "ingestion", "ingest", "status", {"status": 503, "retry_after": 12},
     f"503 with Retry-After: 12 on every upload, functionTimeout {TIMEOUT} s (app setting)"),
    ("Table Storage read", "proxy", "table.read", "delay", {"seconds": 45},
     f"every read answered after 45 s (HTTP_TIMEOUT 60 s), functionTimeout {TIMEOUT} s (app setting)"),
    ("Entra ID token", "entra", "token", "delay", {"seconds": 45},
     f"the Management API token answered after 45 s (HTTP_TIMEOUT 60 s), functionTimeout {TIMEOUT} s (app setting)"),
]  # fmt: skip


@pytest.mark.reports_outcome
@pytest.mark.parametrize(
    ("subject", "service", "route", "kind", "fault", "case"), CASES,
    ids=["ingestion-503", "table-read-slow", "entra-token-slow"],
)  # fmt: skip
async def test_an_invocation_ends_before_its_timeout(
    connector: ConnectorHarness, proxy: StorageProxy, tmp_path: Path, subject: str, service: str, route: str,
    kind: str, fault: dict[str, Any], case: str,
) -> None:  # fmt: skip
    sim = connector.standins
    connector.set(LOGS_AUDIT_STREAM=AUDIT, AzureWebJobsStorage=proxy.connection_string)
    seed = {"management": 61, "ingestion": 62, "entra": 65}.get(service, 63)
    workload, message = await _one_blob_queued(connector, seed=seed)
    faulty = proxy if service == "proxy" else getattr(sim, service)
    faulty.add_fault(route, kind, count=1000, **fault)

    outcome = _invoke(connector, message, tmp_path)
    faulty.clear_faults()
    pending = await _pending_claims(connector)
    reason = await _failure_reason(message)

    stats = await connector.drain()
    lost, duplicates = report.tally(connector, workload)
    report.record(report.Outcome(
        "Faults", subject, case, EXPECTED,
        f"the invocation raised {outcome['raised'].split(':')[0]} after {outcome['seconds']:.0f} s of {TIMEOUT} s; "
        f"{pending} claims left pending; failure recorded: {reason.split(':')[0] or 'no'}; then "
        f"{stats.processed} delivered", lost, duplicates))  # fmt: skip
    deadline_errors = ("DeadlineError", "StorageDeadlineError")  # the latter a storage failure as well
    assert outcome["raised"].split(":")[0] in deadline_errors, outcome
    assert outcome["seconds"] < TIMEOUT  # the contract: it ended before the host would have stopped it
    assert pending == 0
    assert reason.split(":")[0] in deadline_errors, reason
    assert (lost, duplicates) == (0, 0)
    assert await connector.queue_length(connector.queue_name + "-poison") == 0


PUT_OFF_CASES = [
    ("Content download", "management", "content", 120, "TransientApiError", 61),
    ("Logs Ingestion", "ingestion", "ingest", 600, "IngestionThrottledError", 66),
]


@pytest.mark.reports_outcome
@pytest.mark.parametrize(("subject", "service", "route", "wait", "error", "seed"), PUT_OFF_CASES,
                         ids=["management-429", "ingestion-429"])  # fmt: skip
async def test_a_throttle_whose_wait_the_invocation_cannot_hold_puts_the_message_off_for_it(
    connector: ConnectorHarness, tmp_path: Path, subject: str, service: str, route: str, wait: int, error: str,
    seed: int,
) -> None:  # fmt: skip
    """Every answer 429 with a Retry-After the invocation's time left cannot hold. The Management API's failed the
    invocation with DeadlineError, whose retries by the host 30 s apart met the same throttle and parked the
    message after five (with the default 10 minutes, each attempt first waited up to 8 of them); azure-core slept
    Logs Ingestion's whole, holding an upload slot and the blob's room until the timeout, for a failure that said
    nothing of the wait. Now no such wait is started: the message is put off for the wait named, the recorded
    reason names it, and when the message comes back every record arrives once."""
    sim = connector.standins
    connector.set(LOGS_AUDIT_STREAM=AUDIT)
    workload, message = await _one_blob_queued(connector, seed=seed)
    faulty = getattr(sim, service)
    faulty.add_fault(route, "status", count=1000, status=429, retry_after=wait)
    outcome = _invoke(connector, message, tmp_path)
    faulty.clear_faults()
    reason = await _failure_reason(message)
    pending = await _pending_claims(connector)
    # The message the child was handed stays (the host's would not); the one put off is back after the wait.
    queued, visible = await connector.queue_length(), await connector.messages()
    await connector.let_the_api_wait_pass()
    await connector.process(message)  # as when the put-off one shows up again, after the wait
    lost, duplicates = report.tally(connector, workload)
    report.record(report.Outcome(
        "Faults", subject, f"429 with Retry-After: {wait} on every answer, functionTimeout {TIMEOUT} s (app setting)",
        "the message is put off for the wait named, before the function timeout and without the host's retries "
        "(no wait is started that the time left cannot hold), its claims released; when it comes back every "
        "record arrives once",
        f"put off after {outcome['seconds']:.0f} s of {TIMEOUT} s ({reason.split(':')[0]}); {pending} claims left "
        "pending; then delivered", lost, duplicates))  # fmt: skip
    # Put off (nothing raised for the host) before the function timeout: a wait started on that Retry-After would
    # have met the deadline and raised DeadlineError.
    assert outcome["raised"] == "" and outcome["seconds"] < TIMEOUT, outcome
    assert reason.startswith(error) and f"Retry-After {wait} s" in reason, reason
    assert pending == 0 and queued == 2 and visible == [message]
    assert (lost, duplicates) == (0, 0)
    assert await connector.queue_length(connector.queue_name + "-poison") == 0


@pytest.mark.reports_outcome
async def test_a_poller_run_ends_before_its_timeout_when_starting_a_subscription_is_throttled(
    connector: ConnectorHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starting a subscription is handed no deadline of its own: it keeps the run's (from the context). A throttle
    whose wait does not fit ends the run at once, and the next runs leave the content type alone until the wait
    named is over. The start asked for counts, answered or not: the next is asked 15 minutes later (apis.md)."""
    sim = connector.standins
    connector.set(**{TIMEOUT_SETTING: f"00:00:{TIMEOUT}"})
    sim.management.set_subscription("Audit.General", None)
    sim.management.add_fault("start", "status", count=1000, status=429, retry_after=120)

    started = time.monotonic()
    with pytest.raises(PollError) as failed:
        await connector.poll()
    seconds = time.monotonic() - started
    sim.management.clear_faults()
    await connector.poll()  # the next run, within the wait named: the content type is left alone
    assert sim.management.count("start") == 1
    # 16 minutes on: the wait named is over, and so are the 15 minutes between starts (both are judged by the
    # storage service's clock, which the test cannot move: taken out of the state instead).
    rt = await get_runtime(Settings.from_env())
    state = await rt.state.watermarks.get_state(sim.tenant_id, "Audit.General")
    assert state.throttled_until is not None and state.subscription_started is not None
    await rt.state.watermarks.upsert_state(replace(
        state, throttled_until=None, subscription_started=state.subscription_started - timedelta(minutes=16)
    ))  # fmt: skip
    await connector.let_the_api_wait_pass()
    await connector.poll()  # a run 15 minutes on: starts it
    # Published since the start (what came before it is never available, apis.md), before the next window ends.
    subscribed = datetime.now(UTC)
    await asyncio.sleep(2)
    workload = generate_workload(seed=64, total_records=300, blob_size=(300, 300), irm_share=0.05,
                                 tenant_id=sim.tenant_id, start=subscribed,
                                 span=timedelta(milliseconds=500))  # fmt: skip
    workload.publish(sim.management)
    await connector.poll()
    stats = await connector.drain()
    lost, duplicates = report.tally(connector, workload)
    report.record(report.Outcome(
        "Faults", "Subscription start (poller)",
        f"429 with Retry-After: 120 on every start, functionTimeout {TIMEOUT} s (app setting)",
        "the poller run fails by itself before its function timeout, naming the throttle, and the next runs leave "
        "the content type alone for the wait named; a run 15 minutes later (the API's spacing of starts) starts "
        "the subscription and every alert arrives once",
        f"the run failed after {seconds:.0f} s of {TIMEOUT} s; then the subscription was "
        f"{sim.management.subscription('Audit.General')} and {stats.processed} blobs delivered", lost, duplicates))  # fmt: skip
    assert "throttled (Retry-After 120 s)" in str(failed.value) and "operation start" in str(failed.value)
    assert seconds < TIMEOUT
    assert sim.management.subscription("Audit.General") == "enabled"
    assert (lost, duplicates) == (0, 0) and stats.processed > 0


async def test_a_poller_run_that_used_its_time_up_still_writes_its_health_row(connector: ConnectorHarness) -> None:
    """The Management API hanging (a proxy dropping packets): the listing used the invocation's time up to its
    margin, and the health row, written with the same spent deadline, never left. No Errors=1 or LastError reached
    Sentinel, and the rules on the health rows had nothing to fire on. It is written in the margin kept for the way
    out, as claims are released and failures recorded."""
    sim = connector.standins
    connector.set(**{TIMEOUT_SETTING: f"00:00:{TIMEOUT}"})
    sim.management.set_subscription("Audit.General", "enabled")
    sim.management.add_fault("list", "delay", count=1000, seconds=TIMEOUT * 2)
    started = time.monotonic()
    with pytest.raises(PollError, match="time"):
        await connector.poll()
    assert time.monotonic() - started < TIMEOUT
    sim.management.clear_faults()
    [row] = connector.rows(HEALTH)
    assert row["Errors"] == 1 and row["ContentType"] == "Audit.General"
    assert "Management API" in row["LastError"] and "the next run lists from the watermark" in row["LastError"]


async def test_a_poll_time_budget_past_the_timeout_ends_the_run_between_windows_not_in_a_failure(
    connector: ConnectorHarness,
) -> None:
    """POLL_TIME_BUDGET longer than the function timeout (nothing refuses it: it is a setting, the timeout the
    host's) in a catch-up over slow listings: a window was begun with no time left to list it, its first request
    failed with DeadlineError, and every catch-up run ended in PollError and an ERROR line. A window is begun only
    when the time left holds twice the slowest page yet; the run ends cleanly and the next continues."""
    sim = connector.standins
    connector.set(**{TIMEOUT_SETTING: f"00:00:{TIMEOUT}"}, POLL_TIME_BUDGET="15m", INITIAL_LOOKBACK="4d")
    sim.management.set_subscription("Audit.General", "enabled")
    sim.management.add_fault("list", "delay", count=1000, seconds=TIMEOUT * 0.4)
    await connector.poll()  # raised PollError
    sim.management.clear_faults()
    [row] = connector.rows(HEALTH)
    assert row["Errors"] == 0 and row["LastError"] == "", row
    # Some windows listed, not all four days: the watermark moved, and the next run continues from it.
    assert 24 * 3600 < row["LagSeconds"] < 4 * 24 * 3600, row


async def test_a_storage_call_ends_within_the_deadline_when_its_token_request_hangs(
    standins: StandIns, connector_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Identity-based storage settings: a call first asks the managed identity endpoint for a token, through
    azure-identity's own transport. A hung endpoint must not hold the call past the invocation's deadline."""
    endpoint = standins.entra.base_url  # never reached: the token does not come
    monkeypatch.delenv("AzureWebJobsStorage")
    monkeypatch.setenv("AzureWebJobsStorage__tableServiceUri", endpoint)
    monkeypatch.setenv("AzureWebJobsStorage__queueServiceUri", endpoint)
    monkeypatch.setenv("AzureWebJobsStorage__credential", "managedidentity")
    settings = Settings.from_env()
    standins.entra.set_latency(40.0, route="msi")
    credentials: list[AsyncTokenCredential] = []
    async with azure_session() as session:
        tables, main, poison = storage_clients(settings.storage, settings, credentials, session)
        try:
            started = time.monotonic()
            with Deadline.for_invocation(5.0).applied(), pytest.raises(StorageDeadlineError) as cut:
                await tables.get_table_client("bounded").get_entity("p", "r")
            seconds = time.monotonic() - started
            standins.entra.set_latency(0.0, route="msi")
            with Deadline.for_invocation(5.0).applied():  # an endpoint that answers: the token comes through
                token = await BoundedCredential(credentials[0]).get_token_info("https://storage.azure.com/.default")
        finally:
            for close in (tables.close, main.close, poison.close, *(c.close for c in credentials)):
                await close()
    assert seconds < 20.0  # cut by the deadline (5 s), not held by the endpoint (40 s): room for a slow machine
    assert "token request for storage" in str(cut.value), cut.value  # the token request was what hung
    assert standins.tokens.validate(token.token, "https://storage.azure.com") is not None


async def test_an_entity_call_s_retry_wait_is_bounded_by_the_deadline(
    connector: ConnectorHarness, proxy: StorageProxy
) -> None:
    """azure-data-tables hands each table's client the service's transport in a wrapper that forwards ``send`` but
    not ``sleep``: the retry waits of entity calls (claims, sent marks, the lease) were slept whole, past the
    invocation's deadline, and only the next try failed (a 16 s wait begun just inside the deadline ended past the
    function timeout). A wait that does not fit is refused before it starts, as for the service's own calls."""
    connector.set(AzureWebJobsStorage=proxy.connection_string)
    rt = await get_runtime(Settings.from_env())
    await rt.state.watermarks.get_state(connector.standins.tenant_id, "Audit.General")  # the table exists
    proxy.add_fault("table.read", "reset", count=1000)
    try:
        with Deadline.for_invocation(4.0).applied(), pytest.raises(StorageDeadlineError) as cut:
            await rt.state.watermarks.get_state(connector.standins.tenant_id, "Audit.General")
    finally:
        proxy.clear_faults()
    assert "retrying storage call GET" in str(cut.value), cut.value  # the wait refused, not slept whole


async def test_a_put_back_waiting_for_another_to_create_the_queue_ends_within_its_own_deadline(
    connector: ConnectorHarness, proxy: StorageProxy
) -> None:
    """A worker that only processes creates the content queue on its first write: a put-back, when deliveries are
    put back side by side (a DCR refusing). The others waited for the first one's creation, bounded only by the
    first one's deadline: with storage slow, a delivery whose invocation began minutes earlier waited on past its
    own timeout, and the host restarted the worker. The wait ends within the waiter's own deadline."""
    connector.set(AzureWebJobsStorage=proxy.connection_string)
    rt = await get_runtime(Settings.from_env())
    creation = proxy.hold("queue.admin")  # the creator's request waits here, as on slow storage
    with Deadline.for_invocation(600.0).applied():
        creator = asyncio.create_task(rt.queue.reschedule("first", 60))
    try:
        while not creation.arrived.is_set():
            await asyncio.sleep(0.05)
        started = time.monotonic()
        with Deadline.for_invocation(3.0).applied(), pytest.raises(StorageDeadlineError) as cut:
            await asyncio.wait_for(rt.queue.reschedule("second", 60), 30)  # before: waited for the creator
        seconds = time.monotonic() - started
    finally:
        creation.release(forward=True)
    await creator
    # Ended by its own deadline (3 s), well before the creator's (600 s): room for a slow shared machine.
    assert seconds < 15.0
    assert f"waiting for queue {rt.queue.main.queue_name} to be created" in str(cut.value), cut.value
    # The creator went on: its message is on the queue, and the waiter's, cut short, is not.
    properties = await rt.queue.main.get_queue_properties()
    assert properties.approximate_message_count == 1


async def test_a_throttled_delivery_whose_release_used_the_margin_is_still_put_off(
    connector: ConnectorHarness, proxy: StorageProxy
) -> None:
    """Logs Ingestion throttles the upload with a wait the invocation cannot hold, and storage is slow to release
    the claim: releasing may use the margin kept for the way out, and so may putting the message back. Put back
    without it, the message was failed to the host instead (a dequeue count spent, the poison queue after five)."""
    sim = connector.standins
    timeout = 20  # a margin of 2 s, the last 0.5 s of it kept from the way out too
    connector.set(**{TIMEOUT_SETTING: f"00:00:{timeout}"}, AzureWebJobsStorage=proxy.connection_string,
                  HTTP_TIMEOUT="60s")  # fmt: skip
    workload, message = await _one_blob_queued(connector, seed=67, records=200)
    sim.ingestion.add_fault("ingest", "status", count=1000, status=429, retry_after=600)
    release = proxy.hold("table.write", path="rec", body="^$")  # the claim's release: a DELETE, no body
    started = time.monotonic()
    delivery = asyncio.create_task(connector.process(message))
    while not release.arrived.is_set():
        await asyncio.sleep(0.05)
    # Answered once the invocation's own time is up (at 18 s), inside the margin, early in it: what follows (the
    # message put back through the proxy) has the rest, on a machine busy with Azurite and the stand-ins.
    await asyncio.sleep(started + timeout * 0.9 + 0.2 - time.monotonic())
    release.release(forward=True)
    await delivery  # put off: nothing for the host
    sim.ingestion.clear_faults()
    assert time.monotonic() - started < timeout  # within the invocation: the host would have killed it after
    assert await connector.queue_length() == 2  # the one handed over (the host's would be gone), and the put-off one
    await connector.process(message)  # as when the put-off one comes back
    assert Counter(r["RecordId"] for r in connector.rows(ALERTS)) == Counter(workload.irm_alert_record_ids)


async def test_a_tenant_wait_the_invocation_cannot_hold_puts_the_message_off_for_it(
    connector: ConnectorHarness, tmp_path: Path
) -> None:
    """Another instance met a Retry-After of 50 s (recorded in the request budget for the tenant); this invocation
    has 27 s it may use. The wait used to be slept whole before the download was asked: past the function timeout,
    where the host stops the invocation. Now a recorded wait is kept only when the invocation can hold it and the
    request after it: this one puts its message off for the wait, and the records arrive once when it is back."""
    workload, message = await _one_blob_queued(connector, seed=67)  # the listing wrote the budget's entity
    await record_api_wait(connector.azurite.connection_string, connector.env, 50)
    downloads = connector.standins.management.count("content")
    outcome = _invoke(connector, message, tmp_path)
    reason = await _failure_reason(message)
    queued, visible = await connector.queue_length(), await connector.messages()
    assert outcome["raised"] == "" and outcome["seconds"] < TIMEOUT, outcome  # before: 50 s slept, then downloaded
    assert connector.standins.management.count("content") == downloads  # nothing asked inside the wait
    assert reason.startswith("TransientApiError") and "asked the tenant to wait" in reason, reason
    assert queued == 2 and visible == [message]  # the one put off is invisible until the wait is over
    await connector.let_the_api_wait_pass()
    await connector.process(message)
    assert report.tally(connector, workload) == (0, 0)
