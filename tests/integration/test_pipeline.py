"""End to end through the function entry points: Management API stand-in → Azurite queue → Sentinel stand-in."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from irm_connector.runtime import get_runtime
from irm_connector.schema import stream_schema
from irm_connector.settings import Settings
from standins.workload import generate_workload
from tests.clock import skew_local_clock
from tests.harness import ConnectorHarness


async def test_simulated_day_arrives_exactly_once(connector: ConnectorHarness) -> None:
    sim = connector.standins
    workload = generate_workload(
        seed=7,
        total_records=6000,
        blob_size=(200, 1200),
        irm_share=0.02,
        duplicate_share=0.05,
        tenant_id=sim.tenant_id,
        span=timedelta(hours=20),
    )
    workload.publish(sim.management)
    connector.set(LOGS_AUDIT_STREAM="Custom-O365Audit")

    await connector.poll()
    assert await connector.queue_length() == len(workload.blobs)
    stats = await connector.drain()
    assert stats.poisoned == 0

    alerts = connector.rows("Custom-IRMAlerts")
    audit = connector.rows("Custom-O365Audit")
    assert Counter(r["RecordId"] for r in alerts) == Counter(workload.irm_alert_record_ids)
    assert Counter(r["RecordId"] for r in audit) == Counter(workload.record_ids)
    expected = workload.expected_alerts()
    types = {c.name: c.type for c in stream_schema("alerts").columns}
    for row in alerts:
        want = expected[row["RecordId"]]
        assert row["TimeGenerated"] == row["CreationTime"]
        for column, value in want.items():
            if types[column] == "datetime":
                assert _utc(row[column]) == _utc(value), (column, row["RecordId"])
            else:
                assert row[column] == value, (column, row["RecordId"])

    # A second run re-lists the overlap and queues nothing new; nothing arrives twice.
    await connector.poll()
    assert await connector.queue_length() == 0
    await connector.drain()
    assert len(connector.rows("Custom-O365Audit")) == len(workload.record_ids)


async def test_an_alert_entity_event_reaches_its_columns(connector: ConnectorHarness) -> None:
    """RecordType 40's third operation, AlertEntityGenerated, names the entity an alert is about (apis.md); the
    simulated tenant publishes only AlertTriggered and AlertUpdated, so this carries one through the whole path:
    its AlertEntityId and EntityType columns in the alerts table, and the audit row's whole record."""
    sim = connector.standins
    workload = generate_workload(seed=11, total_records=300, blob_size=(300, 300), irm_share=0.05,
                                 tenant_id=sim.tenant_id)  # fmt: skip
    [record] = [r for r in workload.blobs[0].records if r["Id"] in workload.irm_alert_record_ids][:1]
    record |= {"Operation": "AlertEntityGenerated", "AlertEntityId": "mallory@contoso.com", "EntityType": "User"}
    workload.publish(sim.management)
    connector.set(LOGS_AUDIT_STREAM="Custom-O365Audit")
    await connector.poll()
    await connector.drain()
    [row] = [r for r in connector.rows("Custom-IRMAlerts") if r["RecordId"] == record["Id"]]
    assert (row["Operation"], row["AlertEntityId"], row["EntityType"]) == (
        "AlertEntityGenerated", "mallory@contoso.com", "User")  # fmt: skip
    [audit] = [r for r in connector.rows("Custom-O365Audit") if r["RecordId"] == record["Id"]]
    assert (audit["Record"]["AlertEntityId"], audit["Record"]["EntityType"]) == ("mallory@contoso.com", "User")


async def test_late_listed_blob_is_picked_up_by_the_overlap(connector: ConnectorHarness) -> None:
    sim = connector.standins
    now = datetime.now(UTC)
    early = generate_workload(
        seed=1,
        total_records=300,
        blob_size=(300, 300),
        irm_share=0.05,
        tenant_id=sim.tenant_id,
        start=now - timedelta(hours=3),
        span=timedelta(hours=1),
    )
    early.publish(sim.management)
    await connector.poll()
    await connector.drain()
    first = len(connector.rows())

    # A blob created 20 minutes ago that the API lists only now: inside the window already listed.
    late = generate_workload(
        seed=2,
        total_records=200,
        blob_size=(200, 200),
        irm_share=0.05,
        tenant_id=sim.tenant_id,
        start=now - timedelta(minutes=20),
        span=timedelta(minutes=1),
    )
    sim.management.add_blob(
        "Audit.General",
        late.blobs[0].records,
        content_created=now - timedelta(minutes=20),
        available_at=now + timedelta(seconds=1),
    )
    sim.clock.advance(timedelta(seconds=5))
    await connector.poll()
    assert await connector.queue_length() == 1
    await connector.drain()
    ids = [r["RecordId"] for r in connector.rows()]
    assert len(ids) == len(set(ids)) == first + len(late.irm_alert_record_ids)


async def test_two_pollers_at_once_queue_each_blob_once(connector: ConnectorHarness) -> None:
    import asyncio

    workload = generate_workload(
        seed=3, total_records=4000, blob_size=(100, 200), tenant_id=connector.standins.tenant_id
    )
    workload.publish(connector.standins.management)
    await asyncio.gather(connector.poll(), connector.poll())
    assert await connector.queue_length() == len(workload.blobs)
    # and the one that found the lease taken leaves nothing behind: a third run queues nothing new
    await connector.poll()
    assert await connector.queue_length() == len(workload.blobs)


async def test_bad_messages_go_to_the_poison_queue_and_are_not_retried(connector: ConnectorHarness, caplog: pytest.LogCaptureFixture) -> None:
    await connector.process("this is not json")
    forged = (
        '{"v":1,"tenantId":"%s","contentType":"Audit.General","contentId":"x","contentUri":"https://evil.example/steal",'
        '"contentCreated":"2026-11-27T00:00:00Z","contentExpiration":"2099-01-01T00:00:00Z"}'
        % connector.standins.tenant_id
    )
    await connector.process(forged)
    poison = await connector.messages(connector.queue_name + "-poison")
    assert poison == ["this is not json", forged]
    assert "not JSON" in caplog.text and "refused" in caplog.text
    # The forged URL never saw a request with our token: the stand-in logged no content call at all.
    assert connector.standins.management.count("content") == 0


async def test_expired_and_missing_content_complete_and_the_next_health_row_counts_them(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """Content gone when its message is processed completes it (no retry can bring it back), with an error line; the
    loss counts in the next health row's BlobsExpired, as a blob that expired before it was queued does. It showed
    in the log alone: a SOC watching Sentinel saw no loss."""
    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    now = datetime.now(UTC)
    content_id = sim.management.add_blob("Audit.General", [], content_created=now - timedelta(hours=1))
    sim.management.remove_blob(content_id)
    body = (
        '{"v":1,"tenantId":"%s","contentType":"Audit.General","contentId":"%s","contentUri":"%s",'
        '"contentCreated":"%s","contentExpiration":"%s"}'
        % (
            sim.tenant_id,
            content_id,
            sim.management.content_uri(content_id),
            (now - timedelta(hours=1)).isoformat(),
            (now + timedelta(days=6)).isoformat(),
        )
    )
    await connector.process(body)
    assert "skipped" in caplog.text and content_id in caplog.text
    # The API says a blob has expired (AF20051), not the message's contentExpiration read by this machine's clock.
    created = now - timedelta(days=7, minutes=1)
    gone = sim.management.add_blob("Audit.General", [], content_created=created)
    expired = body.replace(content_id, gone).replace((now - timedelta(hours=1)).isoformat(), created.isoformat())
    await connector.process(expired)
    assert f"Content {gone} expired at" in caplog.text
    # Neither is an error the host should retry, and neither is parked in the poison queue.
    assert await connector.queue_length(connector.queue_name + "-poison") == 0
    losses = [r for r in caplog.records if r.name == "irm_connector.processor" and r.levelno == logging.ERROR]
    assert len(losses) == 2
    await connector.process(expired)  # delivered twice: one blob lost, counted once
    await connector.poll()
    [row] = connector.rows("Custom-IRMConnectorHealth")
    assert row["BlobsExpired"] == 2
    await connector.poll()  # counted once: the next row starts afresh
    assert [r["BlobsExpired"] for r in connector.rows("Custom-IRMConnectorHealth")] == [2, 0]


async def test_missing_subscription_is_started(connector: ConnectorHarness) -> None:
    """The poller starts a missing subscription. What was published before it is never available (apis.md);
    what is published from then on arrives."""
    sim = connector.standins
    sim.management.set_subscription("Audit.General", None)
    before = generate_workload(seed=4, total_records=200, blob_size=(200, 200), tenant_id=sim.tenant_id)
    before.publish(sim.management)
    await connector.poll()
    assert sim.management.subscription("Audit.General") == "enabled"
    assert await connector.queue_length() == 0
    started = datetime.now(UTC)
    await asyncio.sleep(2)  # created since the start, and before the next run's window ends (the Date's whole second)
    after = generate_workload(seed=5, total_records=200, blob_size=(200, 200), irm_share=0.1,
                              tenant_id=sim.tenant_id, start=started, span=timedelta(milliseconds=500))  # fmt: skip
    after.publish(sim.management)
    await connector.poll()
    assert await connector.queue_length() == 1
    await connector.drain()
    assert Counter(r["RecordId"] for r in connector.rows("Custom-IRMAlerts")) == Counter(after.irm_alert_record_ids)


async def test_a_subscription_start_is_recorded_by_the_storage_service_s_clock(
    connector: ConnectorHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start of a missing subscription is recorded, so that starts stay 15 minutes apart (apis.md) whichever
    instance asks. Recorded by this machine's clock, an hour fast, the other instances read it as an hour ahead
    and waited an hour and a quarter before asking again; content published meanwhile is never available."""
    sim = connector.standins
    sim.management.set_subscription("Audit.General", None)
    skew_local_clock(monkeypatch, timedelta(hours=1), package="irm_connector")
    await connector.poll()
    assert sim.management.subscription("Audit.General") == "enabled"
    rt = await get_runtime(Settings.from_env())
    state = await rt.state.watermarks.get_state(sim.tenant_id, "Audit.General")
    assert state.subscription_started is not None
    assert abs(state.subscription_started - datetime.now(UTC)) < timedelta(minutes=5), state.subscription_started


def _utc(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def test_an_old_alert_keeps_its_event_time_and_a_large_record_stays_an_object(connector: ConnectorHarness) -> None:
    """Content four days old, as a catch-up lists it: Azure Monitor replaces a TimeGenerated over 2 days old with
    the time it received the row, so the alert's event time is in CreationTime. A record whose fields come to
    over 64 KB is cut by the connector, member by member, before the service would cut its JSON text in two:
    its Record is still an object a query can read a field of."""
    sim = connector.standins
    connector.set(LOGS_AUDIT_STREAM="Custom-O365Audit", INITIAL_LOOKBACK="5d")
    old = datetime.now(UTC) - timedelta(days=4)
    workload = generate_workload(seed=8, total_records=300, blob_size=(300, 300), irm_share=0.1,
                                 tenant_id=sim.tenant_id, start=old, span=timedelta(minutes=10))  # fmt: skip
    workload.publish(sim.management)
    large = {"CreationTime": old.strftime("%Y-%m-%dT%H:%M:%S"), "Id": "large-record", "RecordType": 25,
             "Operation": "FileAccessed", "Workload": "SharePoint", "UserId": "u@contoso.com",
             "Notes": ["n" * 3000 for _ in range(40)]}  # fmt: skip
    sim.management.add_blob("Audit.General", [large], content_created=old + timedelta(minutes=20))
    await connector.poll()
    await connector.drain()

    alerts = connector.rows("Custom-IRMAlerts")
    assert Counter(r["RecordId"] for r in alerts) == Counter(workload.irm_alert_record_ids)
    for row in alerts:
        assert _utc(row["TimeGenerated"]) > datetime.now(UTC) - timedelta(hours=1)  # replaced on arrival
        assert _utc(row["CreationTime"]) < datetime.now(UTC) - timedelta(days=3)  # the event's own time
    [big] = [r for r in connector.rows("Custom-O365Audit") if r["RecordId"] == "large-record"]
    assert isinstance(big["Record"], dict) and big["Record"]["Notes"]  # an object still, not a cut JSON text
    text = json.dumps(big["Record"], ensure_ascii=False)
    assert len(text.encode()) <= 64 * 1024 and "cut to fit 64 KB" in text  # and it says it was cut
