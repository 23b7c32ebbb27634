"""Health that shows what the lag does not (issue 13, contract 5): the health rows Logs Ingestion receives carry
the backlog (QueueDepth, OldestQueuedSeconds), the poison queue (PoisonDepth), the listed blobs refused by the
URL check (BlobsRefused) and whether Logs Ingestion accepts the rows (IngestionState); when the health stream
itself is refused, the same facts go to the log (Application Insights) at error level."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from irm_connector.errors import PollError
from standins.workload import Workload, generate_workload
from tests.harness import ConnectorHarness

ALERTS = "Custom-IRMAlerts"
HEALTH = "Custom-IRMConnectorHealth"


def _publish(connector: ConnectorHarness, seed: int, blobs: int = 3) -> Workload:
    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    workload = generate_workload(seed=seed, total_records=100 * blobs, blob_size=(100, 100), irm_share=0.1,
                                 tenant_id=sim.tenant_id)  # fmt: skip
    workload.publish(sim.management)
    return workload


async def _health(connector: ConnectorHarness) -> dict[str, Any]:
    """The health row of the next poller run."""
    before = len(connector.rows(HEALTH))
    await connector.poll()
    rows = connector.rows(HEALTH)
    assert len(rows) == before + 1
    return rows[-1]


def _since(state: str) -> datetime:
    return datetime.fromisoformat(state.rsplit(" since ", 1)[1].replace("Z", "+00:00"))


async def test_backlog_shows_its_depth_and_age(connector: ConnectorHarness) -> None:
    workload = _publish(connector, seed=81)
    queued_at = time.monotonic()
    first = await _health(connector)
    assert first["QueueDepth"] == len(workload.blobs) and first["PoisonDepth"] == 0
    assert 0 <= first["OldestQueuedSeconds"] <= time.monotonic() - queued_at + 2  # queued by this poll
    assert first["IngestionState"] == "ok" and first["BlobsRefused"] == 0

    await asyncio.sleep(3)
    waiting = await _health(connector)  # nothing new listed; the backlog has aged
    assert waiting["QueueDepth"] == len(workload.blobs)
    assert 3 <= waiting["OldestQueuedSeconds"] <= time.monotonic() - queued_at + 2

    await connector.drain()
    worked = await _health(connector)
    assert (worked["QueueDepth"], worked["OldestQueuedSeconds"], worked["PoisonDepth"]) == (0, 0, 0)


async def test_a_message_put_back_for_hours_keeps_its_age(connector: ConnectorHarness) -> None:
    """A message put back again and again (a long Retry-After, a refusing DCR) is a new queue message each time:
    its age runs from when its blob was first queued, or a backlog stuck for hours would read minutes old, and
    the backlog-age rule would not fire. It is behind younger messages on the queue, and found there."""
    from dataclasses import replace

    from irm_connector.content_queue import ContentMessage

    workload = _publish(connector, seed=85, blobs=3)
    await connector.poll()
    async with connector.queue_client() as queue:
        first = await anext(queue.receive_messages())
        await queue.delete_message(first)
        message = ContentMessage.decode(first.content)
        assert message.queued_at is not None  # the poller's stamp
        # As the processor puts it back (a new message, behind the others) after three hours of put-offs.
        again = replace(message, rescheduled=3, queued_at=datetime.now(UTC) - timedelta(hours=3))
        await queue.send_message(again.encode())
    row = await _health(connector)
    assert row["QueueDepth"] == len(workload.blobs)
    assert 3 * 3600 <= row["OldestQueuedSeconds"] < 3 * 3600 + 300
    await connector.drain()
    assert Counter(r["RecordId"] for r in connector.rows(ALERTS)) == Counter(workload.irm_alert_record_ids)


async def test_a_message_queued_by_a_machine_whose_clock_runs_fast_still_shows_its_age(
    connector: ConnectorHarness,
) -> None:
    """`queuedAt` is the queuing machine's time: a `poll` from a laptop four hours fast stamped its messages four
    hours ahead, and a backlog three hours old read as none (OldestQueuedSeconds 0), so the backlog rule stayed
    silent. No message is queued after the storage service inserted it: that time bounds the stamp."""
    from dataclasses import replace

    from irm_connector.content_queue import ContentMessage
    from irm_connector.runtime import get_runtime
    from irm_connector.settings import Settings

    _publish(connector, seed=86, blobs=1)
    await connector.poll()
    async with connector.queue_client() as queue:
        first = await anext(queue.receive_messages())
        await queue.delete_message(first)
        ahead = replace(ContentMessage.decode(first.content), queued_at=datetime.now(UTC) + timedelta(hours=4))
        await queue.send_message(ahead.encode())
    inserted = time.monotonic()
    row = await _health(connector)
    assert row["QueueDepth"] == 1 and 0 <= row["OldestQueuedSeconds"] <= time.monotonic() - inserted + 2
    later = datetime.now(UTC) + timedelta(hours=3)
    rt = await get_runtime(Settings.from_env())
    assert 3 * 3600 - 2 <= (await rt.queue.oldest_age(later) or 0) <= 3 * 3600 + 60


async def test_poison_queue_depth(connector: ConnectorHarness) -> None:
    async with connector.queue_client() as queue:
        await queue.create_queue()
        await queue.send_message("not a content notification")  # parked in the poison queue at once
    await connector.drain()
    row = await _health(connector)
    assert (row["PoisonDepth"], row["QueueDepth"], row["OldestQueuedSeconds"]) == (1, 0, 0)


async def test_listed_blobs_refused_by_the_url_check_are_counted(connector: ConnectorHarness) -> None:
    sim = connector.standins
    _publish(connector, seed=82, blobs=1)
    sim.management.add_blob("Audit.General", [], content_created=datetime.now(UTC) - timedelta(minutes=30),
                            content_uri="https://[")  # fmt: skip
    with contextlib.suppress(PollError):  # whether a refused blob fails the run is not this test's concern
        await connector.poll()
    (row,) = connector.rows(HEALTH)
    assert row["BlobsRefused"] == 1


@pytest.mark.parametrize("status", [403, 404])
async def test_a_refused_stream_shows_in_ingestion_state_until_it_is_accepted(
    connector: ConnectorHarness, status: int
) -> None:
    sim = connector.standins
    workload = _publish(connector, seed=83)
    sim.ingestion.refuse_stream(ALERTS, status)
    refused_from = datetime.now(UTC).replace(microsecond=0)
    await connector.poll()
    await connector.drain(max_messages=len(workload.blobs))  # each delivery is rescheduled
    row = await _health(connector)
    assert row["IngestionState"].startswith(f"refused: {status} since ")
    assert refused_from <= _since(row["IngestionState"]) <= datetime.now(UTC)
    assert row["QueueDepth"] == len(workload.blobs)  # rescheduled: waiting, invisible for a while
    assert row["PoisonDepth"] == 0

    sim.ingestion.refuse_stream(ALERTS, None)
    await connector.drain()
    row = await _health(connector)
    assert (row["IngestionState"], row["QueueDepth"], row["PoisonDepth"]) == ("ok", 0, 0)
    assert Counter(r["RecordId"] for r in connector.rows(ALERTS)) == Counter(workload.irm_alert_record_ids)


async def test_a_refusal_of_a_stream_no_longer_sent_to_is_not_reported(connector: ConnectorHarness) -> None:
    """The audit stream refused (404: the redeploy that turned it off updated the DCR before the app's settings),
    then LOGS_AUDIT_STREAM emptied: nothing sends to it again, so nothing clears its refusal, and every health row
    read `refused: 404` (a High incident every half hour) and `status` exit 1, for as long as anyone let it."""
    audit = "Custom-O365Audit"
    sim = connector.standins
    connector.set(LOGS_AUDIT_STREAM=audit)
    workload = _publish(connector, seed=87, blobs=1)
    sim.ingestion.refuse_stream(audit, 404)
    await connector.poll()
    await connector.drain(max_messages=len(workload.blobs))  # rescheduled: the audit stream is refused
    assert (await _health(connector))["IngestionState"].startswith("refused: 404 since ")
    connector.set(LOGS_AUDIT_STREAM="")
    row = await _health(connector)
    assert row["IngestionState"] == "ok"
    doc = await connector.cli("status")
    assert "ingestion-refused" not in [p["code"] for p in doc["problems"]], doc["problems"]


async def test_a_refused_health_stream_puts_the_row_in_the_log_at_error_level(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture
) -> None:
    sim = connector.standins
    workload = _publish(connector, seed=84)
    sim.ingestion.refuse_stream(ALERTS, 403)
    await connector.poll()
    await connector.drain(max_messages=len(workload.blobs))
    sim.ingestion.refuse_stream(HEALTH, 403)
    caplog.clear()
    before = connector.rows(HEALTH)
    with caplog.at_level(logging.INFO, logger="irm_connector"):
        await connector.poll()
    assert connector.rows(HEALTH) == before  # this run's row never reached Sentinel
    [line] = [r for r in caplog.records if r.name == "irm_connector.health"]
    assert line.levelno == logging.ERROR
    text = line.getMessage()
    for fact in (f"QueueDepth={len(workload.blobs)}", "OldestQueuedSeconds=", "PoisonDepth=0", "BlobsRefused=0",
                 "IngestionState=refused: 403 since ", "LagSeconds=", "Errors=0"):  # fmt: skip
        assert fact in text, fact
    assert line.__dict__["health_QueueDepth"] == len(workload.blobs)  # a custom dimension in Application Insights
    fixes = [r.getMessage() for r in caplog.records if r.name == "irm_connector.refusals" and r.levelno == logging.ERROR]
    assert any(HEALTH in m and "Monitoring Metrics Publisher" in m and "30 minutes" in m for m in fixes)
    # `status` names both refusals, each with what it means: the health rows are no messages to put back.
    doc = await connector.cli("status")
    refused = {p["detail"].split(" (")[0].split()[-1]: p["detail"] for p in doc["problems"]
               if p["code"] == "ingestion-refused"}  # fmt: skip
    assert "put back for later" in refused[ALERTS] and "Application Insights" not in refused[ALERTS]
    assert "the health rows go to Application Insights" in refused[HEALTH] and "poison" not in refused[HEALTH]


async def test_a_refused_window_shows_in_the_health_row_and_the_next_run_lists_it(connector: ConnectorHarness) -> None:
    """AF20055 (a window the API calls invalid, as a clock off at the 7-day edge gets): the run fails for the
    content type, its health row says why, the watermark stays; the next run lists the window again."""
    workload = _publish(connector, seed=85)
    connector.standins.management.add_fault("list", "status", status=400, code="AF20055")
    before = len(connector.rows(HEALTH))
    with pytest.raises(PollError, match="AF20055"):
        await connector.poll()
    [row] = connector.rows(HEALTH)[before:]
    assert row["Errors"] == 1 and "AF20055" in row["LastError"]
    assert row["BlobsQueued"] == 0

    row = await _health(connector)
    assert (row["Errors"], row["LastError"], row["BlobsQueued"]) == (0, "", len(workload.blobs))
    await connector.drain()
    assert Counter(r["RecordId"] for r in connector.rows(ALERTS)) == Counter(workload.irm_alert_record_ids)


async def test_the_subscription_status_says_what_the_run_saw_not_enabled_by_default(connector: ConnectorHarness) -> None:
    """An administrator disabled the subscription: the API answers AF20022 to listing and AF20023 to starting it.
    The row says "disabled", and "enabled" only once a listing was answered."""
    sim = connector.standins
    _publish(connector, seed=83)
    sim.management.set_admin_disabled("Audit.General")
    with pytest.raises(PollError):
        await connector.poll()
    disabled = connector.rows(HEALTH)[-1]
    assert disabled["SubscriptionStatus"] == "disabled" and "AF20023" in disabled["LastError"]

    sim.management.set_admin_disabled("Audit.General", False)
    sim.management.set_subscription("Audit.General", "enabled")
    assert (await _health(connector))["SubscriptionStatus"] == "enabled"


async def test_a_subscription_an_administrator_disabled_is_asked_for_once_an_hour_not_every_run(
    connector: ConnectorHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """apis.md: AF20023 is reported, not restarted in a loop, and start requests stay 15 minutes apart. A start
    that failed was not recorded, so every run (every 5 minutes) asked again. Then none was asked until a listing
    succeeded, which none can while the subscription is off: with the default managed identity no operator could
    start it either (the command line needs the app's credential, which exists only in Azure). Now the poller asks
    once an hour, and starts it itself once it is allowed again."""
    from irm_connector.runtime import get_runtime
    from irm_connector.settings import Settings
    from tests.clock import pass_time

    sim = connector.standins
    sim.management.set_admin_disabled("Audit.General")
    ahead = [timedelta(0)]
    pass_time(monkeypatch, ahead)
    for minutes, starts in ((0, 1), (5, 1), (20, 1), (55, 1), (65, 2), (70, 2)):  # the timer's runs
        ahead[0] = timedelta(minutes=minutes)
        with pytest.raises(PollError) as failed:
            await connector.poll()
        assert "AF20023" in str(failed.value) and "asks to start it once an hour" in str(failed.value)
        assert connector.rows(HEALTH)[-1]["SubscriptionStatus"] == "disabled"
        assert sim.management.count("start") == starts, minutes

    sim.management.set_admin_disabled("Audit.General", False)  # allowed again
    ahead[0] = timedelta(minutes=130)
    assert (await _health(connector))["SubscriptionStatus"] == "enabled"
    assert sim.management.count("start") == 3 and sim.management.subscription("Audit.General") == "enabled"
    rt = await get_runtime(Settings.from_env())
    assert (await rt.state.watermarks.get_state(sim.tenant_id, "Audit.General")).subscription_refused == ""
    sim.management.set_subscription("Audit.General", None)  # gone, as after a tenant's move
    ahead[0] = timedelta(minutes=150)
    await connector.poll()
    assert sim.management.count("start") == 4 and sim.management.subscription("Audit.General") == "enabled"


async def test_a_start_that_fails_is_asked_again_15_minutes_on_not_retried_seconds_later(
    connector: ConnectorHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """apis.md: leave 15 minutes between start requests. A start answered 503 was retried within the call, seconds
    apart, as any other request is: start requests the API asks to space. It is asked once a run now, and the
    first run 15 minutes on asks again."""
    from tests.clock import pass_time

    sim = connector.standins
    sim.management.set_subscription("Audit.General", None)
    sim.management.add_fault("start", "status", count=1, status=503)
    ahead = [timedelta(0)]
    pass_time(monkeypatch, ahead)
    with pytest.raises(PollError) as failed:
        await connector.poll()
    assert "operation start" in str(failed.value)
    assert sim.management.count("start") == 1 and sim.management.subscription("Audit.General") is None
    ahead[0] = timedelta(minutes=5)
    with pytest.raises(PollError):
        await connector.poll()  # the timer's next run: within the 15 minutes, nothing is asked
    assert sim.management.count("start") == 1
    ahead[0] = timedelta(minutes=16)
    await connector.poll()
    assert sim.management.count("start") == 2 and sim.management.subscription("Audit.General") == "enabled"


async def test_a_start_minutes_into_a_run_is_recorded_at_its_own_time(
    connector: ConnectorHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The subscription goes while a run lists (a stop by another tool): its second window, 4 minutes in, is answered
    AF20022 and the poller starts it. The start was recorded at the run's beginning, so the next start could come
    11 minutes after this one, where apis.md asks for 15."""
    from irm_connector.runtime import get_runtime
    from irm_connector.settings import Settings
    from irm_connector.state.watermarks import PollerState
    from tests.clock import pass_time

    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    rt = await get_runtime(Settings.from_env())
    began = datetime.now(UTC)
    await rt.state.watermarks.upsert_state(PollerState(
        sim.tenant_id, "Audit.General", watermark=began - timedelta(minutes=3), window_seconds=60
    ))  # fmt: skip
    ahead = [timedelta(0)]
    pass_time(monkeypatch, ahead)
    sim.management.add_fault("list", "delay", seconds=0.5)  # the first window: answered 4 minutes on
    sim.management.add_fault("list", "status", status=400, code="AF20022")

    async def four_minutes_pass() -> None:
        while sim.management.pending_faults("list") > 1:
            await asyncio.sleep(0.01)
        ahead[0] = timedelta(minutes=4)

    passing = asyncio.ensure_future(four_minutes_pass())
    await connector.poll()
    await passing
    assert sim.management.count("start") == 1 and sim.management.subscription("Audit.General") == "enabled"
    started = (await rt.state.watermarks.get_state(sim.tenant_id, "Audit.General")).subscription_started
    assert started is not None and started >= began + timedelta(minutes=4) - timedelta(seconds=5), started


async def test_a_listing_that_says_an_administrator_disabled_the_subscription_leads_to_the_hourly_start(
    connector: ConnectorHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing answered AF20023 (disabled by an administrator; the stand-in answers AF20022 to a listing, as
    observed, but the code says the same): the run failed without ever asking to start it, run after run, so once
    it was allowed again nobody started it (with the default managed identity only the poller can), though the
    error's hint said the poller asks once an hour. It now goes the way of AF20022: a start at most once an hour."""
    from tests.clock import pass_time

    sim = connector.standins
    sim.management.set_admin_disabled("Audit.General")
    sim.management.add_fault("list", "status", status=400, code="AF20023", count=3)
    ahead = [timedelta(0)]
    pass_time(monkeypatch, ahead)
    for minutes in (0, 5):
        ahead[0] = timedelta(minutes=minutes)
        with pytest.raises(PollError, match="AF20023"):
            await connector.poll()
        assert sim.management.count("start") == 1  # asked at the first run, not again within the hour
    sim.management.set_admin_disabled("Audit.General", False)
    ahead[0] = timedelta(minutes=65)
    await connector.poll()
    assert sim.management.count("start") == 2 and sim.management.subscription("Audit.General") == "enabled"
    assert (await _health(connector))["SubscriptionStatus"] == "enabled"


async def test_a_subscription_found_gone_says_that_what_was_created_meanwhile_is_lost(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A subscription that existed goes (stopped by someone, a tenant's move): the poller starts it again, and
    content created while there was none is never available (apis.md). That was said nowhere, so a SOC read the
    quiet stretch as a quiet tenant; now one error line names the stretch, from the watermark on."""
    from irm_connector.runtime import get_runtime
    from irm_connector.settings import Settings

    sim = connector.standins
    _publish(connector, seed=87)
    await connector.poll()
    rt = await get_runtime(Settings.from_env())
    watermark = (await rt.state.watermarks.get_state(sim.tenant_id, "Audit.General")).watermark
    assert watermark is not None
    sim.management.set_subscription("Audit.General", None)
    with caplog.at_level(logging.WARNING, logger="irm_connector.poller"):
        await connector.poll()
    assert sim.management.subscription("Audit.General") == "enabled"
    [line] = [r for r in caplog.records if "never available" in r.getMessage()]
    assert line.levelno == logging.ERROR and watermark.isoformat() in line.getMessage()


async def test_a_first_subscription_reports_no_loss(connector: ConnectorHarness, caplog: pytest.LogCaptureFixture) -> None:
    """A tenant's first run starts the subscription: nothing was collected before, and nothing is called lost."""
    sim = connector.standins
    sim.management.set_subscription("Audit.General", None)  # the stand-ins start with it enabled
    with caplog.at_level(logging.WARNING, logger="irm_connector.poller"):
        await connector.poll()
    assert sim.management.count("start") == 1 and sim.management.subscription("Audit.General") == "enabled"
    assert [r for r in caplog.records if "Started the subscription for Audit.General" in r.getMessage()]
    assert not [r for r in caplog.records if "never available" in r.getMessage()]


async def test_a_fault_of_the_connector_s_own_in_one_content_type_ends_the_run_after_the_others(
    connector: ConnectorHarness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug (any exception not the connector's own kind) while one content type is polled failed the run at once:
    the invocation ended with the other content types still listing and queueing on the worker, outside it, and
    with no health row for any. Now the run ends after every content type has had its turn and its health row,
    the failed one's saying so, and the bug then reaches the host. Its traceback is logged by the connector: as
    deployed (OpenTelemetry on in the worker) the host sends no line of its own for a failed invocation."""
    from irm_connector import poller

    sim = connector.standins
    sim.management.set_subscription("Audit.SharePoint", "enabled")
    workload = _publish(connector, seed=71)
    listing = poller.list_window

    async def broken_for_sharepoint(rt: Any, content_type: str, *args: Any, **kwargs: Any) -> None:
        if content_type == "Audit.SharePoint":
            raise KeyError("a bug")  # a stand-in for any fault of the connector's own code
        await listing(rt, content_type, *args, **kwargs)

    monkeypatch.setattr(poller, "list_window", broken_for_sharepoint)
    sim.management.set_latency(1.0, route="list")  # Audit.General is still listing when SharePoint fails
    connector.set(O365_CONTENT_TYPES="Audit.SharePoint,Audit.General")
    with pytest.raises(KeyError), caplog.at_level(logging.ERROR, logger="irm_connector"):
        await connector.poll()
    [logged] = [r for r in caplog.records if r.getMessage() == "Polling Audit.SharePoint failed unexpectedly"]
    assert logged.exc_info is not None and "a bug" in str(logged.exc_info[1])
    rows = {r["ContentType"]: r for r in connector.rows(HEALTH)}
    assert rows["Audit.General"]["Errors"] == 0 and rows["Audit.General"]["BlobsQueued"] == len(workload.blobs)
    assert rows["Audit.SharePoint"]["Errors"] == 1 and "unexpected KeyError" in rows["Audit.SharePoint"]["LastError"]
    assert await connector.queue_length() == len(workload.blobs)


async def _failed_poll_texts(connector: ConnectorHarness) -> tuple[str, str]:
    """A poll that fails: its error's text and the LastError of the one health row it wrote, what the operator
    reads in the poller's log and in Sentinel."""
    before = len(connector.rows(HEALTH))
    with pytest.raises(PollError) as failed:
        await connector.poll()
    [row] = connector.rows(HEALTH)[before:]
    return str(failed.value), row["LastError"]


async def test_a_management_api_that_cannot_be_reached_is_named_with_its_cause(connector: ConnectorHarness) -> None:
    """A port that refuses, a host that does not resolve, a proxy's CA not trusted: the error read
    "ClientConnectorError talking to the Management API ...; check service health and the request budget", in
    the poller's log and the health row's LastError alike, and sent the operator to the wrong place."""
    from standins.azurite import free_ports

    [closed] = free_ports(1)
    connector.set(O365_API_ROOT=f"https://127.0.0.1:{closed}")
    for text in await _failed_poll_texts(connector):
        assert "cannot reach the Management API at 127.0.0.1 (connection refused)" in text, text
        assert "O365_API_ROOT" in text and "request budget" not in text, text


async def test_a_page_answering_in_the_api_s_place_is_named_as_such(connector: ConnectorHarness) -> None:
    """A proxy's block page or a captive portal answers the listing with HTML: the run failed with "check service
    health and the request budget", which sent the operator away from the proxy. Its error now names the proxy
    and the API root, in the poller's error and the health row alike."""
    connector.standins.management.add_fault("list", "malformed", count=1000)
    for text in await _failed_poll_texts(connector):
        assert "the API answered with a body that is not JSON" in text, text
        assert "check the proxy on the way (its pages answer in the API's place) and O365_API_ROOT" in text, text
        assert "request budget" not in text, text
