"""Hostile URLs: a ``contentUri`` (in a queue message or a listing) or a ``NextPageUri`` that leaves the tenant's
feed once the HTTP client has normalized it (percent-decoding, dot segments), or that does not parse at all, is
refused at the first delivery, before any request carries the token. The stand-in logs every request, routed or
not, so "no request went there" is observed, not assumed."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from irm_connector.errors import PollError
from standins import StandIns
from standins.workload import generate_workload
from tests.faults import report
from tests.harness import ConnectorHarness

OTHER_TENANT = "00000000-0000-0000-0000-000000000001"
UP = "%2e%2e/"  # a dot segment, percent-encoded: yarl decodes it and resolves it before the request


def _feed(sim: StandIns, version: str = "v1.0") -> str:
    return f"{sim.api_root}/api/{version}/{sim.tenant_id}/activity/feed"


def _outside(sim: StandIns) -> list[str]:
    """Requests that reached the Management API stand-in outside this tenant's feed (with the token)."""
    tenant = sim.tenant_id.lower()
    feed = (f"/api/v1.0/{tenant}/activity/feed/", f"/api/v1/{tenant}/activity/feed/")
    return [r.path for r in sim.management.requests() if r.route == "other" or not r.path.lower().startswith(feed)]


def _message(sim: StandIns, uri: str) -> str:
    now = datetime.now(UTC)
    return json.dumps({
        "v": 1, "tenantId": sim.tenant_id, "contentType": "Audit.General", "contentId": "forged", "contentUri": uri,
        "contentCreated": (now - timedelta(hours=1)).isoformat(), "contentExpiration": (now + timedelta(days=1)).isoformat(),
    })  # fmt: skip


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("irm_connector") and r.levelno >= logging.ERROR]


REFUSED = "refused at the first delivery, before any request: the token never leaves the tenant's audit folder"

MESSAGE_CASES: list[tuple[str, Callable[[StandIns], str]]] = [
    ("contentUri escaping the feed through %2e%2e", lambda sim: f"{_feed(sim)}/{UP * 5}other"),
    ("contentUri into another tenant's feed through %2e%2e",
     lambda sim: f"{_feed(sim)}/audit/{UP * 4}{OTHER_TENANT}/activity/feed/audit/1"),
    ("contentUri in the feed but outside audit/",
     lambda sim: f"{_feed(sim)}/subscriptions/content?contentType=Audit.General"),
    ("contentUri that does not parse", lambda sim: "https://["),
]  # fmt: skip


@pytest.mark.reports_outcome
@pytest.mark.parametrize(("name", "uri"), MESSAGE_CASES, ids=[c[0] for c in MESSAGE_CASES])
async def test_hostile_content_uri_in_a_message(
    connector: ConnectorHarness, name: str, uri: Callable[[StandIns], str], caplog: pytest.LogCaptureFixture
) -> None:
    sim = connector.standins
    neighbour = await report.queue_a_neighbour(connector, seed=63)
    listed = len(sim.management.requests())
    await connector.process(_message(sim, uri(sim)), dequeue_count=1)  # completes: no retry by the host
    asked = sim.management.requests()[listed:]
    await connector.drain()
    lost, duplicates = report.tally(connector, neighbour)
    poison = await connector.messages(connector.queue_name + "-poison")
    errors = _errors(caplog)
    report.record(report.Outcome("Hostile input", "queue message", name, REFUSED,
                                 f"poisoned, {len(errors)} error line, {len(asked)} requests",
                                 lost, duplicates))  # fmt: skip
    assert len(poison) == 1 and json.loads(poison[0])["contentUri"] == uri(sim)
    assert len(errors) == 1 and "refused" in errors[0]
    assert asked == []
    assert lost == 0 and duplicates == 0  # the blob queued beside it arrived, once


LISTED_CASES: list[tuple[str, Callable[[StandIns], str]]] = [
    ("a listed contentUri that does not parse", lambda sim: "https://["),
    ("a listed contentUri escaping the feed through %2e%2e", lambda sim: f"{_feed(sim)}/audit/{UP * 6}other"),
]


@pytest.mark.reports_outcome
@pytest.mark.parametrize(("name", "uri"), LISTED_CASES, ids=[c[0] for c in LISTED_CASES])
async def test_hostile_content_uri_in_a_listing(
    connector: ConnectorHarness, name: str, uri: Callable[[StandIns], str], caplog: pytest.LogCaptureFixture
) -> None:
    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    good = generate_workload(seed=54, total_records=200, blob_size=(100, 100), irm_share=0.1, tenant_id=sim.tenant_id)
    good.publish(sim.management)
    sim.management.add_blob("Audit.General", [], content_created=datetime.now(UTC) - timedelta(minutes=30),
                            content_uri=uri(sim))  # fmt: skip
    # Nothing is skipped in silence: the run fails, so the watermark stays behind the refused entry.
    with pytest.raises(PollError, match="O365_API_ROOT and O365_CLOUD"):
        await connector.poll()
    await connector.drain()
    (health,) = connector.rows("Custom-IRMConnectorHealth")
    lost, duplicates = report.tally(connector, good)
    report.record(report.Outcome("Hostile input", "listing", name,
                                 "that entry is refused, counted (BlobsRefused) and fails the run, so the watermark "
                                 "stays; the others are queued and delivered",
                                 f"{health['BlobsRefused']} refused, {health['BlobsQueued']} queued, "
                                 f"Errors={health['Errors']}", lost, duplicates))  # fmt: skip
    assert (lost, duplicates) == (0, 0)
    assert health["BlobsRefused"] == 1 and health["BlobsQueued"] == len(good.blobs) and health["Errors"] == 1
    assert health["Watermark"] is None  # the first run's window did not complete
    assert any("refused" in line for line in _errors(caplog))
    assert _outside(sim) == []


NEXT_PAGE_CASES: list[tuple[str, Callable[[StandIns], str]]] = [
    ("a NextPageUri into another tenant's feed through %2e%2e",
     lambda sim: f"{_feed(sim, 'v1')}/{UP * 3}{OTHER_TENANT}/activity/feed/subscriptions/content?contentType=Audit.General"),
    ("a NextPageUri that does not parse", lambda sim: "https://["),
]  # fmt: skip


@pytest.mark.reports_outcome
@pytest.mark.parametrize(("name", "uri"), NEXT_PAGE_CASES, ids=[c[0] for c in NEXT_PAGE_CASES])
async def test_hostile_next_page_uri(
    connector: ConnectorHarness, name: str, uri: Callable[[StandIns], str], caplog: pytest.LogCaptureFixture
) -> None:
    sim = connector.standins
    # Every record counted, not only the alerts.
    connector.set(O365_CONTENT_TYPES="Audit.General,Audit.Exchange", LOGS_AUDIT_STREAM="Custom-O365Audit")
    for content_type in ("Audit.General", "Audit.Exchange"):
        sim.management.set_subscription(content_type, "enabled")
    sim.management.page_size = 1
    sim.management.next_page_override = uri(sim)
    workload = generate_workload(seed=55, total_records=200, blob_size=(100, 100), tenant_id=sim.tenant_id)
    workload.publish(sim.management)
    records: list[dict[str, Any]] = []
    sim.management.add_blob("Audit.Exchange", records, content_created=datetime.now(UTC) - timedelta(minutes=30))

    with pytest.raises(PollError, match="refused NextPageUri") as failed:
        await connector.poll()
    by_type = {r.content_type: r for r in failed.value.report.content_types}
    assert _outside(sim) == []
    assert by_type["Audit.Exchange"].blobs_queued == 1 and not by_type["Audit.Exchange"].error
    assert await connector.queue_length() == 2  # Audit.General's first page and Audit.Exchange's blob
    # Fixed, the next run lists Audit.General's window again from the unmoved watermark.
    sim.management.next_page_override = None
    await connector.poll()
    assert await connector.queue_length() == 3
    await connector.drain()
    lost, duplicates = report.tally(connector, workload)
    report.record(report.Outcome("Hostile input", "listing", name,
                                 "that content type's run fails before following it (the watermark stays) and the "
                                 "other content types are listed; nothing is sent there",
                                 "refused; the other content type listed; after the fix every record delivered",
                                 lost, duplicates))  # fmt: skip
    assert (lost, duplicates) == (0, 0)


@pytest.mark.reports_outcome
async def test_api_root_on_another_host_than_the_listing_fails_the_run(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """``O365_API_ROOT`` (or ``O365_CLOUD``) names another host than the one the API lists its blobs on, as a
    proxy root does: every listed blob fails the URL check. Skipped, they would be lost with ``Errors`` 0."""
    sim = connector.standins
    connector.set(O365_CONTENT_TYPES="Audit.General,Audit.Exchange")
    for content_type in ("Audit.General", "Audit.Exchange"):
        sim.management.set_subscription(content_type, "enabled")
    general = generate_workload(seed=56, total_records=300, blob_size=(100, 100), irm_share=0.1, tenant_id=sim.tenant_id)
    general.publish(sim.management)
    sim.management.add_blob("Audit.Exchange", [], content_created=datetime.now(UTC) - timedelta(minutes=30))
    # The API names its blobs on another host of its own (the stand-in answers as localhost too).
    for blob in sim.management.blobs("Audit.General"):
        blob.content_uri = sim.management.content_uri(blob.content_id).replace("127.0.0.1", "localhost")

    with pytest.raises(PollError) as failed:
        await connector.poll()
    by_type = {r.content_type: r for r in failed.value.report.content_types}
    health = {row["ContentType"]: row for row in connector.rows("Custom-IRMConnectorHealth")}
    errors = [line for line in _errors(caplog) if "Audit.General" in line]
    assert sim.management.count("content") == 0  # nothing was fetched from the other host either
    first = (health["Audit.General"]["Errors"], health["Audit.General"]["BlobsRefused"], len(errors))

    # The operator fixes the setting (here: the API lists on the root's host again); the next run lists the
    # window again from the unmoved watermark and every blob arrives.
    for blob in sim.management.blobs("Audit.General"):
        blob.content_uri = None
    await connector.poll()
    await connector.drain()
    lost, duplicates = report.tally(connector, general)
    report.record(report.Outcome("Faults", "Settings", "O365_API_ROOT on another host than the API lists blobs on",
                                 "that content type's run fails with one error naming O365_API_ROOT and O365_CLOUD, "
                                 "BlobsRefused counts the blobs and the watermark stays; the other content types "
                                 "run; once fixed, the next run delivers every blob",
                                 f"Errors={first[0]}, BlobsRefused={first[1]}, {first[2]} error line; after the fix "
                                 "delivered", lost, duplicates))  # fmt: skip
    assert "O365_API_ROOT and O365_CLOUD" in by_type["Audit.General"].error
    assert by_type["Audit.General"].blobs_refused == len(general.blobs) and by_type["Audit.General"].blobs_queued == 0
    assert first == (1, len(general.blobs), 1)
    assert not by_type["Audit.Exchange"].error and by_type["Audit.Exchange"].blobs_queued == 1
    assert (lost, duplicates) == (0, 0)
