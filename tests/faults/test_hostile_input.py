"""Broken and hostile input: each has its defined outcome and a clear log line, nothing else in the same
blob is lost, no bearer token goes anywhere but the API, and no record content reaches the logs."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from irm_connector.errors import PollError
from standins import StandIns
from standins.workload import generate_workload
from tests.faults import report
from tests.harness import ConnectorHarness

MARKER = "RECORD-CONTENT-MARKER-7f3a"  # appears in hostile records; must never appear in a log line
ALERTS = "Custom-IRMAlerts"
AUDIT = "Custom-O365Audit"
DELIVERED = "delivered; the repair is counted in one warning line"
PARKED = "unreadable: retried, then parked in the poison queue with an error line; requeue once it is fixed"
REFUSED = (
    "whole but not a JSON array: a second download gives the same bytes, so it is parked in the poison queue at "
    "the first delivery with an error line and the reason `poison list` shows; requeue once it is fixed"
)
DEEP = "DEEP-PLACEHOLDER"


def _hostile(**fields: Any) -> dict[str, Any]:
    base = {
        "Id": "9d7c0000-0000-4000-8000-00000000beef", "RecordType": 40, "CreationTime": "2026-11-27T06:00:00",
        "Operation": "AlertTriggered", "Category": "InsiderRiskManagement", "Name": MARKER, "Severity": "High",
        "Status": "Active", "AlertId": "hostile-alert", "Workload": "SecurityComplianceCenter",
        "Data": json.dumps({"userPrincipalName": "mallory@contoso.com", "note": MARKER}),
    }  # fmt: skip
    base.update(fields)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@dataclass(frozen=True)
class BlobCase:
    name: str
    expected: str
    records: Callable[[], list[Any]] | None = None  # hostile records mixed into good ones
    body: Callable[[bytes], bytes] | None = None  # or: the good body, spoiled
    headers: dict[str, str] | None = None
    hostile_id: str | None = "9d7c0000-0000-4000-8000-00000000beef"  # expected to arrive, when delivered

    @property
    def parked(self) -> bool:
        return self.expected in (PARKED, REFUSED)


BLOB_CASES = [
    # The bodies that cannot be read carry the marker too: their error paths must not quote them either.
    BlobCase("not JSON", REFUSED,
             body=lambda good: b"<html><body>Service Unavailable " + MARKER.encode() + b"</body></html>"),
    BlobCase("JSON that is not an array", REFUSED, body=lambda good: b'{"records": ["' + MARKER.encode() + b'"]}'),
    BlobCase("an array broken in the middle", REFUSED, records=lambda: [_hostile()],
             body=lambda good: good.replace(b"},{", b"},<br>{", 1)),
    BlobCase("truncated body", PARKED, records=lambda: [_hostile()], body=lambda good: good[: len(good) // 2]),
    BlobCase("gzip that is not", PARKED, records=lambda: [_hostile()], body=lambda good: good,
             headers={"Content-Encoding": "gzip"}),
    BlobCase("a record over 1 MB", DELIVERED, records=lambda: [_hostile(ObjectId="x" * 1_200_000)]),
    BlobCase("a field over 64 KB", DELIVERED, records=lambda: [_hostile(Comments="c" * 70_000)]),
    BlobCase("a record without Id", DELIVERED, records=lambda: [_hostile(Id=_DROP)], hostile_id=None),
    BlobCase("a record without CreationTime", DELIVERED, records=lambda: [_hostile(CreationTime=_DROP)]),
    BlobCase("an unparsable CreationTime", DELIVERED, records=lambda: [_hostile(CreationTime="27/11/2026 06:00")]),
    BlobCase("RecordType as a string", DELIVERED, records=lambda: [_hostile(RecordType="40")]),
    BlobCase(
        "NUL and unpaired surrogates",
        DELIVERED,
        body=lambda good: good.replace(
            b'"Name":"' + MARKER.encode(), b'"Name":"nul\\u0000 and \\ud800 lone ' + MARKER.encode()
        ),
        records=lambda: [_hostile()],
    ),
    BlobCase("deeply nested Data", DELIVERED, records=lambda: [_hostile(Data=_nested(5000))]),
    BlobCase(
        "a record nested 5,000 deep",
        DELIVERED,
        records=lambda: [_hostile(Extra=DEEP)],
        body=lambda good: good.replace(f'"{DEEP}"'.encode(), _nested(5000).encode()),
    ),
    BlobCase(
        "Data of 10,000 keys",
        DELIVERED,
        records=lambda: [_hostile(Data=json.dumps({f"k{i}": i for i in range(10_000)}))],
    ),
    BlobCase("the same Id twice in one blob", DELIVERED, records=lambda: [_hostile(), _hostile()]),
    BlobCase("a record that is not an object", DELIVERED, records=lambda: [MARKER, 42, None], hostile_id=None),
]


def _logged_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("irm_connector") and r.levelno >= logging.WARNING]


@pytest.mark.reports_outcome
@pytest.mark.parametrize("case", BLOB_CASES, ids=[c.name for c in BLOB_CASES])
async def test_hostile_blob(connector: ConnectorHarness, case: BlobCase, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    sim = connector.standins
    connector.set(LOGS_AUDIT_STREAM=AUDIT)
    sim.management.set_subscription("Audit.General", "enabled")
    good = generate_workload(seed=51, total_records=150, blob_size=(150, 150), irm_share=0.1, tenant_id=sim.tenant_id)
    records: list[Any] = list(good.blobs[0].records)
    if case.records is not None:
        records[10:10] = case.records()
    raw = json.dumps(records, separators=(",", ":")).encode()
    body = case.body(raw) if case.body is not None else raw
    created = datetime.now(UTC) - timedelta(hours=1)
    content_id = sim.management.add_blob("Audit.General", records, content_created=created, raw_body=body,
                                         headers=case.headers)  # fmt: skip
    await connector.poll()
    stats = await connector.drain()

    audit = {r["RecordId"]: r for r in connector.rows(AUDIT)}
    alerts = {r["RecordId"]: r for r in connector.rows(ALERTS)}
    lines = [r.getMessage() for r in _logged_records(caplog)]
    if case.parked:
        poison = await connector.messages(connector.queue_name + "-poison")
        assert len(poison) == 1 and content_id in poison[0]
        assert not audit
        assert any(content_id in line for line in lines)
        if case.expected == REFUSED:
            (listed,) = (await connector.cli("poison", "list"))["messages"]
            observed = f"parked at the first delivery ({stats.failed_attempts} failed attempts); poison list: " + (
                listed["reason"].split(": ", 1)[0]
            )
            assert stats.failed_attempts == 0 and sim.management.count("content") == 2
            assert listed["content_id"] == content_id and listed["attempts"] == 1
            assert "BadContentError" in listed["reason"] and "not" in listed["reason"]
        else:
            observed = f"parked after {stats.failed_attempts} attempts"
            assert stats.poisoned == 1
        # What the report promises: once the API serves the blob whole again, a requeue brings every record.
        [blob] = [b for b in sim.management.blobs() if b.content_id == content_id]
        blob.body, blob.headers = raw, {}
        requeued = await connector.cli("poison", "requeue", "--all")
        assert [m["content_id"] for m in requeued["requeued"]] == [content_id], requeued
        await connector.drain()
        audit = {r["RecordId"]: r for r in connector.rows(AUDIT)}
        alerts = {r["RecordId"]: r for r in connector.rows(ALERTS)}
    lost = len(good.record_ids - set(audit)) + len(good.irm_alert_record_ids - set(alerts))
    if case.hostile_id is not None and case.records is not None:
        lost += case.hostile_id not in audit
        lost += case.hostile_id not in alerts
    if not case.parked:
        repairs = [line for line in lines if "needed repair" in line]
        observed = "delivered" + (f"; {repairs[0].split(': ', 1)[1]}" if repairs else "")
        assert stats.poisoned == 0
        assert len(repairs) <= 1
        if case.name != "the same Id twice in one blob":
            assert repairs, "a repaired blob says so in one warning line"
    duplicates = len(connector.rows(AUDIT)) - len(audit) + len(connector.rows(ALERTS)) - len(alerts)
    report.record(report.Outcome("Hostile input", "content blob", case.name, case.expected, observed, lost, duplicates))
    assert lost == 0
    assert duplicates == 0
    assert MARKER not in caplog.text, "record content reached the logs"
    for row in connector.rows(AUDIT) + connector.rows(ALERTS):
        assert len(json.dumps(row, ensure_ascii=False).encode()) < 1024 * 1024


def _message(sim: StandIns, uri: str, tenant: str | None = None) -> str:
    now = datetime.now(UTC)
    return json.dumps({
        "v": 1, "tenantId": tenant or sim.tenant_id, "contentType": "Audit.General", "contentId": "forged",
        "contentUri": uri, "contentCreated": (now - timedelta(hours=1)).isoformat(),
        "contentExpiration": (now + timedelta(days=1)).isoformat(),
    })  # fmt: skip


#: (case, the message, the outcome expected, what its one error line must say)
MESSAGE_CASES: list[tuple[str, Callable[[Any], str | bytes], str, str]] = [
    ("not JSON", lambda sim: "hello", "refused: logged without its text and moved to the poison queue", "message is not JSON"),
    ("a record instead of a notification", lambda sim: FOREIGN,
     "refused: names the missing fields; the record it holds stays out of the log", "lacks contentUri"),
    ("over 48 KiB", lambda sim: json.dumps({"pad": "p" * 50_000}), "refused: too large for a content notification",
     "larger than a content notification can be"),
    ("JSON without the content fields", lambda sim: '{"contentId": 1}', "refused: names the missing fields",
     "lacks contentUri, contentId, contentType, contentCreated, contentExpiration, tenantId"),
    # Each contentUri names a user in its path: the error line says where it pointed and why, never the path.
    ("contentUri on another host", lambda sim: _message(sim, "https://attacker.example/api/v1.0/x/activity/feed/audit/alice@contoso.com"),
     "refused before any request: the token never leaves for that host",
     "refused contentUri on https://attacker.example: it is not on O365_API_ROOT"),
    ("contentUri over plain HTTP", lambda sim: _message(sim, sim.api_root.replace("https", "http") + "/api/v1.0/"
                                                       + sim.tenant_id + "/activity/feed/audit/alice@contoso.com"),
     "refused before any request", "it is not HTTPS"),
    ("contentUri of another tenant", lambda sim: _message(
        sim, f"{sim.api_root}/api/v1.0/00000000-0000-0000-0000-000000000001/activity/feed/audit/alice@contoso.com"),
     "refused before any request", "it is not under this tenant's audit content"),
    ("contentUri with a path escape", lambda sim: _message(
        sim, f"{sim.api_root}/api/v1.0/{sim.tenant_id}/activity/feed/../../../../alice@contoso.com"),
     "refused before any request", "it is not under this tenant's audit content"),
    ("a time past the calendar's end", lambda sim: _message(
        sim, f"{sim.api_root}/api/v1.0/{sim.tenant_id}/activity/feed/audit/1").replace(
        '"contentExpiration": "', '"contentExpiration": "9999-12-31T23:59:59-01:00", "was": "'),
     "refused: names the unreadable time (its UTC instant overflows)",
     "unreadable contentCreated or contentExpiration"),
    ("a contentType no feed has", lambda sim: _message(
        sim, f"{sim.api_root}/api/v1.0/{sim.tenant_id}/activity/feed/audit/1").replace(
        '"contentType": "Audit.General"', '"contentType": "alice@contoso.com' + "x" * 40_000 + '"'),
     "refused before any request: the value is not shown (it would have filled the rows' ContentType)",
     "contentType is not one of Audit.AzureActiveDirectory"),
    ("a contentId of 30,000 characters", lambda sim: _message(
        sim, f"{sim.api_root}/api/v1.0/{sim.tenant_id}/activity/feed/audit/1").replace(
        '"contentId": "forged"', '"contentId": "alice@contoso.com\\n' + "x" * 30_000 + '"'),
     "refused before any request: the value is not shown (every line quoting it would have been its)",
     "contentId is not one word"),
    ("message for another tenant", lambda sim: _message(
        sim, f"{sim.api_root}/api/v1.0/{sim.tenant_id}/activity/feed/audit/1", "00000000-0000-0000-0000-000000000001"),
     "refused: not for O365_TENANT_ID", "another tenant than O365_TENANT_ID"),
]  # fmt: skip


@pytest.mark.reports_outcome
@pytest.mark.parametrize(("name", "build", "expected", "says"), MESSAGE_CASES, ids=[c[0] for c in MESSAGE_CASES])
async def test_hostile_message(connector: ConnectorHarness, name: str, build: Callable[[StandIns], str | bytes], expected: str, says: str, caplog: pytest.LogCaptureFixture) -> None:
    sim = connector.standins
    neighbour = await report.queue_a_neighbour(connector, seed=61)
    listed = len(sim.management.requests())
    await connector.process(build(sim))
    asked = sim.management.requests()[listed:]
    await connector.drain()
    lost, duplicates = report.tally(connector, neighbour)
    poison = await connector.messages(connector.queue_name + "-poison")
    errors = [r.getMessage() for r in _logged_records(caplog) if r.levelno >= logging.ERROR]
    report.record(report.Outcome("Hostile input", "queue message", name, expected,
                                 f"poisoned, {len(errors)} error line", lost, duplicates))  # fmt: skip
    assert len(poison) == 1
    assert len(errors) == 1
    assert says in errors[0]  # this case's reason, not only some refusal
    assert "alice@contoso.com" not in caplog.text  # what a message holds is not the log's: `poison list` shows it
    assert asked == []  # no request carried the token anywhere, on any route
    assert lost == 0 and duplicates == 0  # the blob queued beside it arrived, once


@pytest.mark.reports_outcome
async def test_message_that_is_not_base64(connector: ConnectorHarness, caplog: pytest.LogCaptureFixture) -> None:
    from azure.storage.queue.aio import QueueClient

    neighbour = await report.queue_a_neighbour(connector, seed=62)
    async with QueueClient.from_connection_string(connector.azurite.connection_string, connector.queue_name) as raw:
        await raw.send_message(FOREIGN)  # on the neighbour's queue, without the base64 the trigger expects
        # One over 48 KiB grows past a queue message's 64 KiB when parked: refused, it came back for ever.
        await raw.send_message(LARGE_FOREIGN)
    stats = await asyncio.wait_for(connector.drain(), 120)
    lost, duplicates = report.tally(connector, neighbour)
    poison = sorted(await connector.messages(connector.queue_name + "-poison"), key=len)
    report.record(report.Outcome("Hostile input", "queue message", "not base64",
                                 "parked at once with an error line (the CLI's host; in Azure the Functions host parks it itself, never calling the function)",
                                 f"poisoned after {stats.failed_attempts} failed attempts", lost, duplicates))  # fmt: skip
    assert poison[0] == FOREIGN and len(poison) == 2
    assert LARGE_FOREIGN.startswith(poison[1].removesuffix(" [cut: over 48 KiB]")) and len(poison[1]) < 48 * 1024
    assert stats.poisoned == 2 and stats.failed_attempts == 0
    assert lost == 0 and duplicates == 0  # the blob queued before them arrived, once
    assert "not base64" in caplog.text
    assert "alice@contoso.com" not in caplog.text  # what it holds is not the log's: `poison list` shows it


#: A message someone wrote to the content queue by hand, a record in it, without the base64 the trigger expects.
FOREIGN = '{"UserId": "alice@contoso.com", "Operation": "FileDownloaded"}'
LARGE_FOREIGN = "[" + ", ".join([FOREIGN] * 900) + "]"  # about 60 KiB: fits a queue message only as it is


@pytest.mark.reports_outcome
async def test_hostile_listing_is_refused(connector: ConnectorHarness, caplog: pytest.LogCaptureFixture) -> None:
    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    good = generate_workload(seed=52, total_records=200, blob_size=(100, 100), irm_share=0.1, tenant_id=sim.tenant_id)
    good.publish(sim.management)
    sim.management.add_blob("Audit.General", [], content_created=datetime.now(UTC) - timedelta(minutes=30),
                            content_uri="https://attacker.example/steal")  # fmt: skip
    with pytest.raises(PollError, match="Check O365_API_ROOT and O365_CLOUD"):
        await connector.poll()  # nothing skipped in silence: the run fails, the watermark stays
    await connector.drain()
    lost, duplicates = report.tally(connector, good)
    report.record(
        report.Outcome(
            "Hostile input",
            "listing",
            "a listed contentUri on another host",
            "that entry is refused and fails the run (the watermark stays); the others are queued",
            "refused; the run failed",
            lost,
            duplicates,
        )
    )
    assert (lost, duplicates) == (0, 0)
    assert "refused" in caplog.text and "attacker.example" in caplog.text


async def test_a_next_page_that_repeats_ends_the_run_instead_of_listing_for_ever(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A NextPageUri naming a page already listed (a loop: a gateway's cache, a fault of the service) was followed
    for ever: a backfill never ended, and the poller, stopped near its timeout at the same place every run, halved
    its windows down to a minute while the watermark stayed. The window is listed again once from its start, as
    for a refused NextPageUri, and then the run fails for the content type, saying so."""
    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    sim.management.page_size = 1
    sim.management.next_page_repeats = True
    workload = generate_workload(seed=59, total_records=300, blob_size=(100, 100), tenant_id=sim.tenant_id)
    workload.publish(sim.management)
    with pytest.raises(PollError, match="already listed"):
        await asyncio.wait_for(connector.poll(), 60)
    # The first time says which content type, and why, before listing again.
    [again] = [r.getMessage() for r in caplog.records if "listing" in r.getMessage() and "again" in r.getMessage()]
    assert again.startswith("NextPageUri of Audit.General refused (") and "already listed" in again
    sim.management.next_page_repeats = False
    await connector.poll()  # the watermark stayed: the next run lists the window whole
    assert await connector.queue_length() == len(workload.blobs)


@pytest.mark.reports_outcome
async def test_hostile_next_page_is_refused(connector: ConnectorHarness, caplog: pytest.LogCaptureFixture) -> None:
    sim = connector.standins
    connector.set(LOGS_AUDIT_STREAM=AUDIT)  # every record counted, not only the alerts
    sim.management.set_subscription("Audit.General", "enabled")
    sim.management.page_size = 1
    sim.management.next_page_override = "https://attacker.example/api/v1/next"
    workload = generate_workload(seed=53, total_records=200, blob_size=(100, 100), tenant_id=sim.tenant_id)
    workload.publish(sim.management)
    with pytest.raises(Exception, match="refused"):
        await connector.poll()
    assert "attacker.example" in caplog.text
    # Fixed, the next run lists the window again from the unmoved watermark.
    sim.management.next_page_override = None
    await connector.poll()
    assert await connector.queue_length() == 2
    await connector.drain()
    lost, duplicates = report.tally(connector, workload)
    report.record(report.Outcome("Hostile input", "listing", "a NextPageUri on another host",
                                 "the run fails before following it; the watermark stays; nothing is sent there",
                                 "refused; after the fix every record delivered", lost, duplicates))  # fmt: skip
    assert (lost, duplicates) == (0, 0)




async def test_an_entra_error_of_tens_of_kilobytes_is_quoted_bounded(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway on the token path (or a forged answer) may answer an error of any size: Entra's
    error_description was cut to its first line only, quoted whole in every log line that told the failure, in
    LastError and in the exception raised to the host, which Application Insights keeps."""
    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    sim.entra.add_fault("token", "status", status=400, count=1, body={
        "error": "invalid_client", "error_description": "AADSTS7000215: " + "d" * 50_000 + "\nTrace ID: 1",
    })  # fmt: skip
    with pytest.raises(PollError) as refused:
        await connector.poll()
    assert "AADSTS7000215" in str(refused.value) and "d" * 301 not in str(refused.value)
    _assert_lines_bounded(caplog)


async def test_a_management_api_error_code_of_tens_of_kilobytes_is_quoted_bounded(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """The error's message was cut to 300 characters, its code not at all: 50,000 of them in the log lines, the
    health row's LastError and the exception raised to the host."""
    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    sim.management.add_fault("list", "status", status=400, code="AF" + "y" * 50_000, count=1)
    with pytest.raises(PollError) as failed:
        await connector.poll()
    assert "AFyyyy" in str(failed.value) and "y" * 65 not in str(failed.value)
    [health] = connector.rows("Custom-IRMConnectorHealth")[-1:]
    assert "AFyyyy" in health["LastError"] and "y" * 65 not in health["LastError"]
    _assert_lines_bounded(caplog)


def _assert_lines_bounded(caplog: pytest.LogCaptureFixture) -> None:
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("irm_connector")]
    assert lines and max(len(line) for line in lines) < 2000


async def test_a_listed_content_id_no_message_could_carry_fails_the_run_unquoted(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A listing (a gateway's, a forged one) naming a blob by 30,000 characters with a line break: the poller
    queued it and marked it queued, the processor parked it at once, and no later run listed it as new; its id
    filled the poller's own log lines and spans on the way. The run now fails before queueing anything (the
    watermark stays), and the id is quoted nowhere."""
    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    forged = "alice@contoso.com\n" + "x" * 30_000
    sim.management.add_blob("Audit.General", [_hostile()], content_id=forged,
                            content_created=datetime.now(UTC) - timedelta(hours=1))  # fmt: skip
    with pytest.raises(PollError, match="without a readable contentId") as failed:
        await connector.poll()
    assert await connector.queue_length() == 0
    assert "alice@contoso.com" not in str(failed.value) + caplog.text
    _assert_lines_bounded(caplog)
