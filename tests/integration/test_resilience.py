"""Faults the connector must ride out, and the failures it must surface, through the function entry points."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography import x509

from irm_connector.deadline import Deadline
from irm_connector.errors import IngestionRefusedError, PollError, SettingsError, StateError
from irm_connector.ingestion import pack_rows
from irm_connector.models import Row, parse_api_time
from irm_connector.runtime import get_runtime
from irm_connector.settings import Settings
from standins.storage_proxy import StorageProxy
from standins.workload import Workload, generate_workload
from tests.clock import skew_local_clock
from tests.harness import ConnectorHarness


def _publish(connector: ConnectorHarness, seed: int, records: int = 2000, **kw: Any) -> Workload:
    kw.setdefault("blob_size", (200, 600))
    workload = generate_workload(seed=seed, total_records=records, irm_share=0.05,
                                 tenant_id=connector.standins.tenant_id, **kw)
    workload.publish(connector.standins.management)
    return workload


def _on_arrival(service: Any, route: str, action: Callable[[], None]) -> threading.Thread:
    """Run ``action`` (in a thread) as soon as the request that takes ``route``'s scripted fault arrives: the
    fault is taken on arrival, before a ``delay`` holds the answer, so ``action`` runs while it is held."""
    def watch() -> None:
        for _ in range(3000):
            if not service.pending_faults(route):
                action()
                return
            threading.Event().wait(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


async def _faults_taken(service: Any, route: str) -> None:
    """Until every scripted fault of ``route`` has been taken by a request that arrived (a ``delay`` then holds
    its answer): those requests are at the service, still unanswered."""
    for _ in range(1000):
        if not service.pending_faults(route):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the requests scripted for {route} never arrived")


def _assert_exactly_once(connector: ConnectorHarness, workload: Workload) -> None:
    got = Counter(r["RecordId"] for r in connector.rows("Custom-IRMAlerts"))
    assert got == Counter(workload.irm_alert_record_ids)


def _messages_for(connector: ConnectorHarness, workload: Workload) -> list[str]:
    """The queue messages the poller would make for the workload's published blobs."""
    from irm_connector.content_queue import ContentMessage
    from irm_connector.models import ContentBlob

    sim = connector.standins
    return [
        ContentMessage(sim.tenant_id, ContentBlob(
            content_type=blob.content_type, content_id=content_id, content_uri=sim.management.content_uri(content_id),
            content_created=blob.content_created, content_expiration=blob.content_created + timedelta(days=7),
        )).encode()
        for content_id, blob in zip(workload.content_ids, workload.blobs, strict=True)
    ]  # fmt: skip


async def test_throttling_and_transient_faults_are_ridden_out(connector: ConnectorHarness) -> None:
    sim = connector.standins
    workload = _publish(connector, seed=11)
    mgmt = sim.management
    mgmt.add_fault("list", "status", status=429, retry_after=1)
    mgmt.add_fault("list", "status", status=403, code="AF429")
    mgmt.add_fault("list", "reset", count=2)
    mgmt.add_fault("content", "status", status=503, count=2)
    mgmt.add_fault("content", "status", status=500, code="AF50000")
    mgmt.add_fault("content", "delay", seconds=0.5)
    sim.ingestion.add_fault("ingest", "status", status=429, retry_after=1)
    sim.ingestion.add_fault("ingest", "status", status=503)

    await connector.poll()
    stats = await connector.drain()
    assert stats.poisoned == 0
    _assert_exactly_once(connector, workload)
    assert mgmt.pending_faults() == 0 and sim.ingestion.pending_faults() == 0
    assert mgmt.count("list", status=429) == 1 and mgmt.count("list", error_code="AF429") >= 2
    # The throttled listing was asked again only once its Retry-After (1 s) had passed: asked sooner, the real API
    # throttles again and counts the request against the tenant's quota. The stand-in answers it whatever the time.
    throttled, retried = mgmt.requests("list")[:2]
    assert throttled.status == 429
    assert retried.time - retried.duration - throttled.time >= 1.0
    # Every call carried the PublisherIdentifier (the tenant id by default), content downloads too.
    assert set(mgmt.publisher_identifiers()) == {sim.tenant_id}


@pytest.mark.parametrize("status", [408, 429, 502])
async def test_transient_ingestion_answers_azure_core_leaves_alone_are_retried_inside_the_call(
    connector: ConnectorHarness, status: int
) -> None:
    """408, 429 without Retry-After and 502 on an upload: azure-core retries none of them on a POST. Left to the
    host, each costs a failed invocation 30 s later, and a blip of a couple of minutes poisons the messages."""
    sim = connector.standins
    workload = _publish(connector, seed=13, records=400, blob_size=(200, 200))
    sim.ingestion.add_fault("ingest", "status", status=status, count=2)
    await connector.poll()
    stats = await connector.drain()
    assert (stats.failed_attempts, stats.poisoned) == (0, 0)
    assert sim.ingestion.pending_faults() == 0
    _assert_exactly_once(connector, workload)


async def test_a_token_that_expired_on_the_way_is_fetched_anew_not_taken_for_a_refusal(
    connector: ConnectorHarness,
) -> None:
    """Logs Ingestion answers 401 to a token that expired while its request was on the way (a slow request, a clock
    a little off). Taken as the DCR refusing the identity, it was recorded in the shared state, and every delivery
    of the stream, on every instance, was put off until a probe got through."""
    sim = connector.standins
    workload = _publish(connector, seed=16, records=300, blob_size=(300, 300))
    sim.tokens.lifetime = 3.0
    sim.ingestion.add_fault("ingest", "delay", seconds=4)  # the token is checked when the request is answered
    await connector.poll()
    stats = await connector.drain()
    assert sim.ingestion.pending_faults() == 0
    assert (stats.failed_attempts, stats.poisoned, stats.processed) == (0, 0, len(workload.blobs))
    assert sim.ingestion.count("ingest", status=401) == 1
    rt = await get_runtime(Settings.from_env())
    assert await rt.state.refusals.current(rt.settings.dcr_immutable_id, fresh=True) == {}
    _assert_exactly_once(connector, workload)


async def test_a_token_the_identity_endpoint_refuses_is_not_taken_for_the_dcr_refusing_rows(
    connector: ConnectorHarness,
) -> None:
    """Once a worker has had a token, azure-identity passes the identity endpoint's own error answer on, status
    and all. Read as Logs Ingestion's answer, a 404 (an identity detached from the app) said "check
    LOGS_DCR_IMMUTABLE_ID" and was recorded as the DCR refusing the stream, putting off its messages on every
    instance; the cause is the identity, and the message is retried as for any token failure."""
    sim = connector.standins
    workload = _publish(connector, seed=23, records=600, blob_size=(300, 300))
    first, second = _messages_for(connector, workload)
    sim.tokens.lifetime = 2.0
    await connector.process(first)
    await asyncio.sleep(2.5)  # the token expired: the next upload needs another
    sim.entra.add_fault("msi", "status", status=404, count=1000)
    with pytest.raises(Exception) as raised:
        await connector.process(second)
    assert str(raised.value).startswith("could not get a token for Logs Ingestion (Custom-IRMAlerts)")
    assert sim.ingestion.count("ingest", status=404) == 0
    rt = await get_runtime(Settings.from_env())
    assert await rt.state.refusals.current(rt.settings.dcr_immutable_id, fresh=True) == {}
    sim.entra.clear_faults()
    await connector.process(second)
    _assert_exactly_once(connector, workload)


async def test_a_gateway_fault_that_outlasts_the_retries_is_not_called_a_refusal(connector: ConnectorHarness) -> None:
    """A 502 on every try: the invocation fails for the host to retry, and its error says the upload failed, not
    that Logs Ingestion refused the rows (README's troubleshooting sends a refusal to the DCR's columns)."""
    sim = connector.standins
    workload = _publish(connector, seed=14, records=300, blob_size=(300, 300))
    [message] = _messages_for(connector, workload)
    sim.ingestion.add_fault("ingest", "status", count=1000, status=502)
    with pytest.raises(Exception) as raised:
        await connector.process(message)
    assert str(raised.value).startswith("Logs Ingestion failed for Custom-IRMAlerts (HTTP 502")
    assert str(raised.value).endswith("): the message is retried")


async def test_a_connection_reset_by_logs_ingestion_is_ridden_out_inside_the_invocation(
    connector: ConnectorHarness,
) -> None:
    """azure-core retries no POST that got no answer: a reset failed the invocation, the host asked again 30 s
    later, and a gateway's blip of two or three minutes parked every message in flight after five deliveries.
    The upload is now sent again within the call, as a 502 is: one delivery, every record once."""
    sim = connector.standins
    workload = _publish(connector, seed=32, records=300, blob_size=(300, 300))
    [message] = _messages_for(connector, workload)
    sim.ingestion.add_fault("ingest", "reset", count=2)
    await connector.process(message)
    assert sim.ingestion.count("ingest", fault="reset") == 2
    _assert_exactly_once(connector, workload)


async def test_a_content_404_without_the_api_s_code_is_retried_not_taken_for_gone(
    connector: ConnectorHarness,
) -> None:
    """The API says content is gone with its codes (AF20050-AF20052). A bare 404 (a gateway's, a proxy's route
    miss) was read as one too: the message was completed on its first delivery and its records were lost, while
    the API still kept them. It now fails the delivery for the host to retry, naming the answer."""
    sim = connector.standins
    workload = _publish(connector, seed=33, records=300, blob_size=(300, 300))
    [message] = _messages_for(connector, workload)
    sim.management.add_fault("content", "status", count=1, status=404, body={"message": "Resource not found"})
    with pytest.raises(Exception) as raised:
        await connector.process(message)
    assert "unexpected answer" in str(raised.value) and "404" in str(raised.value)
    await connector.process(message)  # the host's next delivery
    _assert_exactly_once(connector, workload)


async def test_a_logs_ingestion_endpoint_that_cannot_be_reached_is_named_with_its_cause(
    connector: ConnectorHarness,
) -> None:
    """A wrong LOGS_INGESTION_ENDPOINT, a firewall, a DCE's private DNS: the error read "upload to
    Custom-IRMAlerts failed: ServiceRequestError; the message is retried", naming neither the cause, nor the host,
    nor the setting, and the last delivery's poison line said "retried" too. Once the endpoint is right, every
    record arrives once."""
    from standins.azurite import free_ports

    workload = _publish(connector, seed=31, records=300, blob_size=(300, 300))
    [message] = _messages_for(connector, workload)
    right = connector.env["LOGS_INGESTION_ENDPOINT"]
    [closed] = free_ports(1)
    connector.set(LOGS_INGESTION_ENDPOINT=f"https://127.0.0.1:{closed}")
    with pytest.raises(Exception) as raised:
        await connector.process(message)
    assert str(raised.value) == (
        f"cannot reach Logs Ingestion at 127.0.0.1:{closed} (connection refused) for Custom-IRMAlerts: check "
        "LOGS_INGESTION_ENDPOINT (the DCE's logs ingestion URL) and the network to it"
    )
    connector.set(LOGS_INGESTION_ENDPOINT=right)
    await connector.process(message)
    _assert_exactly_once(connector, workload)


async def test_a_delivery_waiting_for_its_process_probe_of_a_refused_stream_stops_within_its_deadline(
    connector: ConnectorHarness,
) -> None:
    """The DCR refuses the alerts stream and another delivery of this process probes it, with no answer yet: a
    delivery beside it waits for that answer only as long as its own invocation may run, then fails by itself.
    Waiting on, it would outlive functionTimeout and the host would restart the worker under every invocation."""
    from irm_connector import refusals
    from irm_connector.errors import DeadlineError

    sim = connector.standins
    stream = "Custom-IRMAlerts"
    workload = _publish(connector, seed=73, records=200, blob_size=(200, 200))
    [message] = _messages_for(connector, workload)
    rt = await get_runtime(Settings.from_env())
    await rt.state.refusals.record(rt.settings.dcr_immutable_id, stream, 403, "", probe_after=0)
    sim.ingestion.add_fault("ingest", "delay", count=1, seconds=6)
    probing = asyncio.ensure_future(connector.process(message))  # wins the probe; its upload waits for an answer
    await _faults_taken(sim.ingestion, "ingest")
    assert stream in rt.state.refusals.probes
    try:
        with Deadline.for_invocation(3.0).applied(), pytest.raises(DeadlineError, match="probe of Custom-IRMAlerts"):
            await asyncio.wait_for(refusals.admit(rt, stream), 60)
        assert not probing.done()  # it gave up on the probe's answer, which was still to come
    finally:
        await probing
    _assert_exactly_once(connector, workload)  # the probe was accepted


async def test_a_probe_whose_records_another_delivery_holds_lets_the_deliveries_beside_it_go(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """The DCR refuses the alerts stream. Delivery B wins the probe, but another delivery still at work holds every
    one of B's records, so B waits for them (up to 4 minutes) with nothing to probe with. Delivery C beside it
    does not wait that out for B's answer: it is rescheduled at once, as any delivery of a refused stream is."""
    from irm_connector.blob_parse import parse_blob
    from irm_connector.content_queue import ContentMessage
    from irm_connector.models import ContentBlob
    from irm_connector.normalize import ContentRef, Routing, normalize_blob

    sim, stream = connector.standins, "Custom-IRMAlerts"
    held = _publish(connector, seed=15, records=100, blob_size=(100, 100))
    beside = _publish(connector, seed=16, records=100, blob_size=(100, 100))
    [blob] = held.blobs
    same = sim.management.add_blob("Audit.General", blob.records, content_created=blob.content_created)
    rt = await get_runtime(Settings.from_env())
    ref = ContentRef(held.content_ids[0], "Audit.General", blob.content_created)
    rows = normalize_blob(parse_blob(orjson.dumps(blob.records)), ref, Routing(stream, ""), sent_at=datetime.now(UTC))
    await rt.state.claims.claim_records(stream, rows.rows[stream], held.content_ids[0], "still-at-work")
    await rt.state.refusals.record(rt.settings.dcr_immutable_id, stream, 403, "", probe_after=0)
    message_b = ContentMessage(sim.tenant_id, ContentBlob(
        content_type="Audit.General", content_id=same, content_uri=sim.management.content_uri(same),
        content_created=blob.content_created, content_expiration=blob.content_created + timedelta(days=7),
    )).encode()  # fmt: skip
    [message_c] = _messages_for(connector, beside)
    with caplog.at_level(logging.INFO, logger="irm_connector"):
        b = asyncio.ensure_future(connector.process(message_b))
        try:
            for _ in range(300):
                if "being sent by another delivery; waiting" in caplog.text or b.done():
                    break
                await asyncio.sleep(0.1)
            assert not b.done()
            await asyncio.wait_for(connector.process(message_c), 60)
        finally:
            b.cancel()
            await asyncio.wait([b])
    assert "rescheduled" in caplog.text
    assert await connector.queue_length() == 1  # C, back on the queue later, its dequeue count spared
    assert connector.rows(stream) == []


async def test_a_refusal_recorded_on_a_fast_clock_is_probed_as_soon_as_on_any_other(
    connector: ConnectorHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal's times were its writer's clock: an instance an hour fast (the command line on a laptop) recorded
    the next probe an hour ahead, and every other instance held the stream's rows back for that hour after the role
    arrived. They are the storage service's times now, whoever writes them."""
    from irm_connector.refusals import PROBE_LEAST
    from irm_connector.runtime import close_runtimes

    sim = connector.standins
    workload = _publish(connector, seed=61, records=200, blob_size=(200, 200))
    [message] = _messages_for(connector, workload)
    ahead = [timedelta(hours=1)]
    skew_local_clock(monkeypatch, ahead, package="irm_connector")
    sim.ingestion.deny_role(denied=True)
    await connector.process(message)  # refused: rescheduled, the refusal recorded
    assert connector.rows("Custom-IRMAlerts") == []
    ahead[0] = timedelta(0)
    await close_runtimes()  # another instance, its clock right
    sim.ingestion.deny_role(denied=False)  # the role assignment has arrived
    await asyncio.sleep(PROBE_LEAST + 1)
    await connector.process(message)  # as when it comes back: it probes, and its rows are accepted
    _assert_exactly_once(connector, workload)


async def test_a_read_of_the_refusals_answered_after_this_process_s_own_write_does_not_undo_it(
    connector: ConnectorHarness,
) -> None:
    """A delivery's read of the refusals was sent before another delivery of the process recorded a refusal, and
    answered after: its older answer (none) replaced what the process knew for 10 s, and deliveries beside it sent
    their rows to the refused stream, each refused again."""
    with StorageProxy(connector.azurite) as proxy:
        connector.set(AzureWebJobsStorage=proxy.connection_string)
        rt = await get_runtime(Settings.from_env())
        store, dcr = rt.state.refusals, rt.settings.dcr_immutable_id
        held = proxy.hold("table.read", path="refusals", after_answer=True)  # answered, then held
        stale = asyncio.ensure_future(store.current(dcr, fresh=True))
        assert await asyncio.to_thread(held.arrived.wait, 30)
        await store.record(dcr, "Custom-IRMAlerts", 403, "AuthorizationFailed", probe_after=60)
        held.release(forward=True)
        assert await stale == {}  # what the read found when it was answered
        assert "Custom-IRMAlerts" in await store.current(dcr)  # what the process goes by, not read again


async def test_a_delivery_killed_while_it_clears_a_refusal_has_committed_its_rows_first(
    connector: ConnectorHarness,
) -> None:
    """The probe of a refused stream is accepted, and the worker dies while it clears the refusal: its rows were
    already marked sent, so the message's redelivery sends none of them again."""
    stream = "Custom-IRMAlerts"
    workload = _publish(connector, seed=57, records=200, blob_size=(200, 200))
    [message] = _messages_for(connector, workload)
    storage = connector.env["AzureWebJobsStorage"]
    with StorageProxy(connector.azurite) as proxy:
        connector.set(AzureWebJobsStorage=proxy.connection_string)
        rt = await get_runtime(Settings.from_env())
        await rt.state.refusals.record(rt.settings.dcr_immutable_id, stream, 403, "", probe_after=0)
        clearing = proxy.hold("table.write", path="refusals", skip=1)  # taking the probe passes; the clearing waits
        delivery = asyncio.ensure_future(connector.process(message))
        assert await asyncio.to_thread(clearing.arrived.wait, 60)
        delivery.cancel()  # the worker dies
        await asyncio.wait([delivery])
        clearing.release(forward=False)
    connector.set(AzureWebJobsStorage=storage)
    assert len(connector.rows(stream)) == len(workload.irm_alert_record_ids)  # the probe's upload arrived

    rt = await get_runtime(Settings.from_env())
    await rt.state.refusals.clear(rt.settings.dcr_immutable_id, stream)  # another delivery's probe got through
    await connector.process(message, dequeue_count=2)
    _assert_exactly_once(connector, workload)


async def test_failing_blob_is_retried_then_poisoned_and_arrives_after_requeue(connector: ConnectorHarness) -> None:
    sim = connector.standins
    workload = _publish(connector, seed=12, records=600, blob_size=(600, 600))
    await connector.poll()
    # 400 from Logs Ingestion: the DCR does not declare these columns (a 401/403/404 is rescheduled instead:
    # tests/faults/test_refusing_dcr.py).
    sim.ingestion.add_fault("ingest", "status", count=1000, status=400, code="InvalidContent")
    stats = await connector.drain()
    assert stats.poisoned == 1
    assert stats.failed_attempts == 5  # host.json maxDequeueCount
    assert connector.rows("Custom-IRMAlerts") == []
    [poisoned] = await connector.messages(connector.queue_name + "-poison")

    sim.ingestion.clear_faults()
    await connector.process(poisoned)  # what `poison requeue` leads to
    _assert_exactly_once(connector, workload)


async def test_a_row_value_a_refusal_quotes_never_leaves_with_the_exception(connector: ConnectorHarness) -> None:
    """Logs Ingestion's 400 may quote a row's value (the stand-in's names the column and what it got). The error
    raised to the host, whose traceback Application Insights records with every exception it chains, names the
    stream, the status and the code, and no value."""
    sim = connector.standins
    workload = _publish(connector, seed=43, records=300, blob_size=(300, 300))
    [message] = _messages_for(connector, workload)
    quoted = "Row 3: column 'UserPrincipalName' is declared string but got int; the row: alice@contoso.com"
    sim.ingestion.add_fault("ingest", "status", count=1000, status=400, code="InvalidContent", message=quoted)
    with pytest.raises(Exception) as raised:
        await connector.process(message)
    printed = "".join(traceback.format_exception(raised.value))
    assert "Logs Ingestion refused rows for Custom-IRMAlerts (HTTP 400, InvalidContent)" in printed
    assert "alice@contoso.com" not in printed

async def test_crash_between_upload_and_commit_resends_never_loses(connector: ConnectorHarness) -> None:
    """The upload succeeds, then storage goes away before the rows are marked sent: the invocation fails,
    the host retries it, and the blob's rows are sent again. Nothing is lost; the only duplicates are
    that one blob's."""
    sim = connector.standins
    workload = _publish(connector, seed=13, records=500, blob_size=(500, 500))
    await connector.poll()
    [message] = await connector.messages()
    # The upload's answer waits until Azurite is down (its stop takes a second or two on a busy machine).
    sim.ingestion.add_fault("ingest", "delay", seconds=4.0)
    stopper = _on_arrival(sim.ingestion, "ingest", connector.azurite.stop)  # the claims are written by then
    try:
        with pytest.raises(StateError):
            await connector.process(message)
        stopper.join()
        delivered_once = Counter(r["RecordId"] for r in connector.rows("Custom-IRMAlerts"))
        assert delivered_once == Counter(workload.irm_alert_record_ids)  # the upload itself went through
    finally:
        stopper.join()
        if not connector.azurite.running:  # the session's Azurite: every later test needs it
            connector.azurite.start()

    await connector.process(message, dequeue_count=2)
    got = Counter(r["RecordId"] for r in connector.rows("Custom-IRMAlerts"))
    assert set(got) == workload.irm_alert_record_ids  # nothing lost
    assert set(got.values()) == {2}  # re-sent once: that blob's rows, and only those

    # Once committed, a third delivery of the same message sends nothing.
    await connector.process(message, dequeue_count=3)
    assert Counter(r["RecordId"] for r in connector.rows("Custom-IRMAlerts")) == got


async def test_poller_stops_on_its_time_budget_and_the_next_run_continues(connector: ConnectorHarness) -> None:
    sim = connector.standins
    connector.set(INITIAL_LOOKBACK="3d", POLL_TIME_BUDGET="10s")
    sim.management.set_subscription("Audit.General", "enabled")
    workload = _publish(connector, seed=14, records=900, blob_size=(300, 300), span=timedelta(days=2, hours=12))
    sim.management.set_latency(5.5, route="list")
    await connector.poll()
    first = await connector.queue_length()
    # Three 24-hour windows planned; at 5.5 s a listing, the budget of 10 s ends the run before the third.
    assert sim.management.count("list") in (1, 2)
    assert first < len(workload.blobs)
    sim.management.set_latency(0.0, route="list")
    await connector.poll()
    assert await connector.queue_length() == len(workload.blobs)
    await connector.drain()
    _assert_exactly_once(connector, workload)


async def test_a_window_whose_listing_outlasts_a_run_is_listed_in_shorter_ones(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A catch-up window of 24 hours whose pages take longer than an invocation may (here 14 pages of 2.5 s
    against a function timeout of 30 s). Listed whole again by every run, it failed every run at the same page:
    the watermark never moved, and after 7 days its content was lost. Now the window is stopped at a page's end
    before the invocation's timeout, and the next runs list shorter ones until the watermark moves."""
    sim = connector.standins
    connector.set(INITIAL_LOOKBACK="1d", POLL_TIME_BUDGET="10s", AzureFunctionsJobHost__functionTimeout="00:00:30")
    workload = _publish(connector, seed=17, records=1400, blob_size=(100, 100),
                        start=datetime.now(UTC) - timedelta(hours=20), span=timedelta(hours=14))  # fmt: skip
    sim.management.page_size = 1
    sim.management.set_latency(2.5, route="list")
    rt = await get_runtime(Settings.from_env())
    runs = 0
    with caplog.at_level(logging.WARNING, logger="irm_connector.poller"):
        while runs < 4:
            runs += 1
            await connector.poll()
            state = await rt.state.watermarks.get_state(sim.tenant_id, "Audit.General")
            if state.watermark is not None and state.watermark > datetime.now(UTC) - timedelta(hours=1):
                break
    assert state.watermark is not None and state.watermark > datetime.now(UTC) - timedelta(hours=1), runs
    assert "would outlast the invocation" in caplog.text
    # A run stopped inside its window had pages answered: the subscription is on, not "unknown".
    assert [r["SubscriptionStatus"] for r in connector.rows("Custom-IRMConnectorHealth")] == ["enabled"] * runs
    assert await connector.queue_length() == len(workload.blobs)
    await connector.drain()
    _assert_exactly_once(connector, workload)


@pytest.mark.parametrize(("window_seconds", "lookback"), [(1, "2h"), (2 * 86400, "3d")], ids=["one-second", "two-days"])
async def test_a_window_length_edited_in_the_state_is_held_to_the_planner_s_bounds(
    connector: ConnectorHarness, window_seconds: int, lookback: str
) -> None:
    """``WindowSeconds`` of the state entity edited by hand (or by a tool): one second planned windows that never
    moved on, a loop that held the worker until the host killed it, every run; two days, a window longer than the
    API's 24 hours, which it may answer in part. Either is read as the nearest length the planner allows."""
    sim = connector.standins
    connector.set(INITIAL_LOOKBACK=lookback)
    workload = _publish(connector, seed=23, records=400, blob_size=(100, 100),
                        start=datetime.now(UTC) - timedelta(minutes=90), span=timedelta(minutes=60))  # fmt: skip
    rt = await get_runtime(Settings.from_env())
    state = await rt.state.watermarks.get_state(sim.tenant_id, "Audit.General")
    await rt.state.watermarks.upsert_state(replace(state, window_seconds=window_seconds))
    await asyncio.wait_for(connector.poll(), 60)
    spans = [(parse_api_time(r.query["endTime"]) - parse_api_time(r.query["startTime"]))
             for r in sim.management.requests("list") if "startTime" in r.query]  # fmt: skip
    assert spans and max(spans) <= timedelta(hours=24)
    assert await connector.queue_length() == len(workload.blobs)
    await connector.drain()
    _assert_exactly_once(connector, workload)


async def test_windows_shrunk_below_the_overlap_never_move_the_watermark_back(connector: ConnectorHarness) -> None:
    """Listing slows down in steady state: the next runs list windows half as long, but each began LISTING_OVERLAP
    (an hour) behind the watermark, so a run with time for one window ended it half an hour before the watermark
    and wrote it back there, every run, until the 7 days were left behind and nothing new was listed. The overlap
    is now at most half a window: every run moves the watermark on. It re-lists less far back while the API is
    slow, and as far as set again once it is fast: the blobs listed late all arrive."""
    sim = connector.standins
    connector.set(LISTING_OVERLAP="1h", POLL_TIME_BUDGET="10s", AzureFunctionsJobHost__functionTimeout="00:00:30")
    rt = await get_runtime(Settings.from_env())

    async def watermark() -> datetime:
        state = await rt.state.watermarks.get_state(sim.tenant_id, "Audit.General")
        assert state.watermark is not None
        return state.watermark

    await connector.poll()  # steady state: a watermark of now
    watermarks = [await watermark()]
    # 12 blobs listed late, from 4 minutes before the watermark: 12 pages of 2.5 s outlast the invocation (30 s).
    workload = _publish(connector, seed=19, records=1200, blob_size=(100, 100),
                        start=watermarks[0] - timedelta(minutes=4), span=timedelta(minutes=4))  # fmt: skip
    sim.management.page_size = 1
    sim.management.set_latency(2.5, route="list")
    while watermarks[-1] == watermarks[0] and len(watermarks) < 7:
        await connector.poll()
        watermarks.append(await watermark())
        assert watermarks[-1] >= watermarks[-2], [str(w) for w in watermarks]
    assert watermarks[-1] > watermarks[0], [str(w) for w in watermarks]
    sim.management.set_latency(0, route="list")
    for _ in range(8):
        if await connector.queue_length() == len(workload.blobs):
            break
        await connector.poll()
        watermarks.append(await watermark())
        assert watermarks[-1] >= watermarks[-2], [str(w) for w in watermarks]
    assert await connector.queue_length() == len(workload.blobs)
    await connector.drain()
    _assert_exactly_once(connector, workload)


async def test_a_relative_next_page_uri_is_followed_on_the_api_s_host(connector: ConnectorHarness) -> None:
    """A NextPageUri of a path and query only (as a gateway rewriting it may send it) is the API's next page, not
    an untrusted URL: refused, every run failed at the same page until the window's content left the 7 days."""
    sim = connector.standins
    sim.management.page_size = 2
    sim.management.next_page_relative = True
    workload = _publish(connector, seed=15, records=1400, blob_size=(200, 200))
    await connector.poll()
    assert await connector.queue_length() == len(workload.blobs) == 7
    await connector.drain()
    _assert_exactly_once(connector, workload)


async def test_paging_follows_next_page_with_either_spelling(connector: ConnectorHarness) -> None:
    sim = connector.standins
    sim.management.page_size = 2
    sim.management.next_page_header = "NextPageUrl"
    workload = _publish(connector, seed=15, records=1400, blob_size=(200, 200))
    await connector.poll()
    assert await connector.queue_length() == len(workload.blobs) == 7
    await connector.drain()
    _assert_exactly_once(connector, workload)


def _pfx_base64(connector: ConnectorHarness, password: bytes | None) -> str:
    """The stand-in app's certificate as a base64 PFX: with ``None`` as Key Vault gives a certificate it holds
    (no password, whatever it was imported with)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    pem = connector.standins.certificate_path.read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    cert = x509.load_pem_x509_certificate(pem)
    protection = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    pfx = pkcs12.serialize_key_and_certificates(b"irm", key, cert, None, protection)  # type: ignore[arg-type]  # an RSA key
    return base64.b64encode(pfx).decode()


@pytest.mark.parametrize(
    "mode",
    ["certificate", "certificate-pfx", "certificate-pfx-wrapped", "certificate-keyvault", "certificate-keyvault-pem",
     "certificate-chain-first", "managed_identity"],
)
async def test_other_auth_modes_reach_the_api(connector: ConnectorHarness, mode: str, tmp_path: Path) -> None:
    sim = connector.standins
    if mode == "certificate":
        connector.set(O365_AUTH_MODE="certificate", O365_CLIENT_SECRET="",
                      O365_CLIENT_CERTIFICATE_PATH=str(sim.certificate_path))
    elif mode == "certificate-pfx":  # a PFX with its password, as a deployment without Key Vault may give it
        connector.set(O365_AUTH_MODE="certificate", O365_CLIENT_SECRET="",
                      O365_CLIENT_CERTIFICATE=_pfx_base64(connector, b"pfx-pass"),
                      O365_CLIENT_CERTIFICATE_PASSWORD="pfx-pass")  # fmt: skip
    elif mode == "certificate-pfx-wrapped":  # as `base64 cert.pfx` prints it: lines of 76 characters
        wrapped = "\n".join(textwrap.wrap(_pfx_base64(connector, b"pfx-pass"), 76))
        connector.set(O365_AUTH_MODE="certificate", O365_CLIENT_SECRET="", O365_CLIENT_CERTIFICATE=wrapped,
                      O365_CLIENT_CERTIFICATE_PASSWORD="pfx-pass")  # fmt: skip
    elif mode == "certificate-keyvault":  # Key Vault's PFX has no password, though the deployment passed one
        connector.set(O365_AUTH_MODE="certificate", O365_CLIENT_SECRET="",
                      O365_CLIENT_CERTIFICATE=_pfx_base64(connector, None),
                      O365_CLIENT_CERTIFICATE_PASSWORD="import-pass")  # fmt: skip
    elif mode == "certificate-keyvault-pem":  # a PEM-policy certificate: Key Vault gives it as PEM, key unencrypted
        connector.set(O365_AUTH_MODE="certificate", O365_CLIENT_SECRET="",
                      O365_CLIENT_CERTIFICATE=sim.certificate_path.read_text(),
                      O365_CLIENT_CERTIFICATE_PASSWORD="import-pass")  # fmt: skip
    elif mode == "certificate-chain-first":  # `cat ca.pem app.pem key.pem`: the chain's CA before the app's own
        chained = tmp_path / "chained.pem"
        chained.write_bytes(sim.ca_path.read_bytes() + sim.certificate_path.read_bytes())
        connector.set(O365_AUTH_MODE="certificate", O365_CLIENT_SECRET="", O365_CLIENT_CERTIFICATE_PATH=str(chained))
    else:
        connector.set(O365_AUTH_MODE="managed_identity", O365_CLIENT_SECRET="", O365_CLIENT_ID="")
    workload = _publish(connector, seed=16, records=400, blob_size=(400, 400))
    await connector.poll()
    await connector.drain()
    _assert_exactly_once(connector, workload)
    kind = "managed_identity" if mode == "managed_identity" else "client_certificate"
    assert sim.tokens.issued(kind) > 0


async def test_a_managed_identity_endpoint_that_drops_connections_is_retried_and_named(
    connector: ConnectorHarness,
) -> None:
    """The function app's identity endpoint closes connections (a restart of the host's token service): a failure
    to connect is no authentication error to azure-identity, and it reached the poller raw, neither retried
    within the call nor named ("unexpected ServiceRequestError", as for a bug of the connector's own). A short
    spell is now ridden out inside the call; a long one fails the run naming the endpoint, and the next run lists
    everything."""
    sim = connector.standins
    connector.set(O365_AUTH_MODE="managed_identity", O365_CLIENT_SECRET="", O365_CLIENT_ID="")
    workload = _publish(connector, seed=19, records=300, blob_size=(300, 300))
    sim.entra.add_fault("msi", "reset", count=1000)
    with pytest.raises(PollError) as failed:
        await connector.poll()
    assert "managed identity endpoint is unavailable" in str(failed.value)
    assert sim.management.count("list") == 0
    rt = await get_runtime(Settings.from_env())
    state = await rt.state.watermarks.get_state(sim.tenant_id, "Audit.General")
    assert "managed identity endpoint is unavailable" in state.last_error

    sim.entra.clear_faults()
    sim.entra.add_fault("msi", "reset", count=sim.entra.count("msi") // 6 + 1)  # more than one attempt's tries
    await connector.poll()
    await connector.drain()
    _assert_exactly_once(connector, workload)


@pytest.mark.parametrize(
    ("kind", "params"), [("status", {"status": 429}), ("status", {"status": 408}), ("malformed", {})]
)
async def test_a_throttled_or_garbled_openid_configuration_is_retried_not_called_an_unknown_tenant(
    connector: ConnectorHarness, kind: str, params: dict[str, Any]
) -> None:
    """msal reads the tenant's OpenID configuration before its first token and raises ValueError for any 4xx, a
    throttle too, and for a body that is not JSON (a proxy's page). Every one was reported at once as "no OpenID
    configuration for tenant ... check O365_TENANT_ID", not retried: a cold start during a throttle failed the
    invocation and sent the operator to a setting that was right."""
    sim = connector.standins
    workload = _publish(connector, seed=27, records=300, blob_size=(300, 300))
    sim.entra.add_fault("discovery", kind, **params)
    await connector.poll()
    assert sim.entra.count("discovery") == 2
    await connector.drain()
    _assert_exactly_once(connector, workload)


@pytest.mark.parametrize("other", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
async def test_the_ca_bundle_of_ssl_cert_file_is_trusted_by_every_client_whatever_else_is_set(
    connector: ConnectorHarness, other: str
) -> None:
    """README: a proxy's CA goes into SSL_CERT_FILE. requests (under msal) lets REQUESTS_CA_BUNDLE or
    CURL_CA_BUNDLE override the bundle its session was given, and build agents often preset one to the public
    roots: the token request then failed with "TLS certificate not trusted" while every other client trusted
    the file."""
    import certifi

    sim = connector.standins
    connector.monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    connector.set(SSL_CERT_FILE=str(sim.ca_path), **{other: certifi.where()})
    workload = _publish(connector, seed=29, records=300, blob_size=(300, 300))
    await connector.poll()
    await connector.drain()
    _assert_exactly_once(connector, workload)


async def test_an_identity_the_endpoint_does_not_know_is_named_not_taken_for_a_missing_api_grant(
    connector: ConnectorHarness,
) -> None:
    """The identity endpoint answers 400 "No managed identity found" (AZURE_CLIENT_ID names an identity not attached
    to the app). The error said to grant ActivityFeed.Read, which decides what the API accepts (AF10001), never
    whether a token is issued."""
    sim = connector.standins
    connector.set(O365_AUTH_MODE="managed_identity", O365_CLIENT_SECRET="", O365_CLIENT_ID="")
    body = {"statusCode": 400, "message": "No managed identity found for specified ClientId/ResourceId/PrincipalId."}
    sim.entra.add_fault("msi", "status", status=400, body=body, count=1000)
    with pytest.raises(PollError) as failed:
        await connector.poll()
    assert "No managed identity found" in str(failed.value) and "check AZURE_CLIENT_ID" in str(failed.value)
    assert "ActivityFeed.Read" not in str(failed.value)
    assert sim.management.count() == 0


async def test_entra_failing_three_times_is_ridden_out_inside_the_call_not_replayed_from_msal_s_cache(
    connector: ConnectorHarness,
) -> None:
    """msal keeps a 5xx or a 429 without Retry-After for 5 seconds and answers every request in that time with
    it. The retries came 1.5 s apart at first, so most of them got the replay, not Entra ID: three 502s in a row
    failed the poll though the call had tries left. Each retry now waits the replay out and reaches Entra ID."""
    sim = connector.standins
    workload = _publish(connector, seed=33, records=300, blob_size=(300, 300))
    sim.entra.add_fault("token", "status", status=502, count=3)
    await connector.poll()
    assert sim.entra.count("token") == 4
    await connector.drain()
    _assert_exactly_once(connector, workload)


async def test_state_tables_deleted_under_warm_instances_are_created_again(connector: ConnectorHarness) -> None:
    """Someone deletes the connector's tables while its instances are warm (a reset by hand). The writes that
    check an ETag (the poller's state, the request budget) and the failure and refusal records went to a table
    the process had created once and took for there: every poll and every download failed until the instances
    recycled. Tables, as their module promises, are created again; what was published since arrives."""
    from azure.data.tables.aio import TableServiceClient

    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    first = _publish(connector, seed=45, records=400, blob_size=(200, 200))
    await connector.poll()
    await connector.drain()
    _assert_exactly_once(connector, first)
    rt = await get_runtime(Settings.from_env())
    await rt.state.refusals.record(rt.settings.dcr_immutable_id, "Custom-Unused", 403, "", probe_after=5)
    prefix = connector.env["STATE_TABLE_PREFIX"]
    async with TableServiceClient.from_connection_string(connector.azurite.connection_string) as service:
        names = [t.name async for t in service.list_tables() if t.name.startswith(prefix)]
        assert f"{prefix}state" in names and f"{prefix}refusals" in names
        for name in names:
            await service.delete_table(name)

    second = _publish(connector, seed=46, records=400, blob_size=(200, 200),
                      start=datetime.now(UTC) - timedelta(minutes=20), span=timedelta(minutes=10))  # fmt: skip
    await connector.poll()
    await connector.drain()
    got = Counter(r["RecordId"] for r in connector.rows("Custom-IRMAlerts"))
    assert {got[record_id] for record_id in second.irm_alert_record_ids} == {1}
    # The first's keys went with the tables: listed again, its records may be sent again, but none is lost.
    assert all(got[record_id] >= 1 for record_id in first.irm_alert_record_ids)
    await rt.state.refusals.record(rt.settings.dcr_immutable_id, "Custom-Unused", 403, "", probe_after=5)


async def test_operator_errors_fail_the_run_with_what_to_do(connector: ConnectorHarness, caplog: pytest.LogCaptureFixture) -> None:
    sim = connector.standins
    sim.management.set_admin_disabled("Audit.General", True)
    with pytest.raises(Exception, match="AF20023"):
        await connector.poll()
    assert "administrator disabled the subscription" in caplog.text
    sim.management.set_admin_disabled("Audit.General", False)
    sim.management.revoke_permission(sim.client_id, True)
    with pytest.raises(Exception, match=r"ActivityFeed\.Read"):
        await connector.poll()
    # A refusal is not retried in a tight loop: one refresh of the token, then it stops.
    assert sim.management.count("list", status=401) <= 2


async def test_missing_setting_fails_at_once_naming_it(connector: ConnectorHarness, caplog: pytest.LogCaptureFixture) -> None:
    connector.monkeypatch.delenv("LOGS_DCR_IMMUTABLE_ID")
    with pytest.raises(SettingsError) as info:
        await connector.poll()
    assert info.value.setting == "LOGS_DCR_IMMUTABLE_ID"
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "LOGS_DCR_IMMUTABLE_ID" in errors[0].getMessage()
    assert connector.standins.management.count() == 0  # nothing was called


def test_function_app_indexes_on_a_bare_machine() -> None:
    """Importing function_app.py needs no settings and makes no connection (the host indexes it anywhere)."""
    env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8"}  # nothing of this machine's settings
    code = (
        # Any connection the import tried would fail loudly here, whatever library made it.
        "import socket\n"
        "def refused(*args, **kwargs):\n"
        "    raise AssertionError(f'importing function_app connected to {args[1:]}')\n"
        "socket.socket.connect = socket.socket.connect_ex = refused\n"
        "import function_app, json\n"
        "fs = function_app.app.get_functions()\n"
        "print(json.dumps({f.get_function_name(): f.get_raw_bindings() for f in fs}))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr
    bindings = {name: [json.loads(b) for b in raw] for name, raw in json.loads(out.stdout.splitlines()[-1]).items()}
    assert bindings["poller"][0]["schedule"] == "%POLL_SCHEDULE%"
    assert bindings["processor"][0]["queueName"] == "%CONTENT_QUEUE%"
    assert bindings["processor"][0]["connection"] == "AzureWebJobsStorage"


async def test_two_processors_on_the_same_duplicates_send_each_record_once(connector: ConnectorHarness) -> None:
    connector.set(LOGS_AUDIT_STREAM="Custom-O365Audit")
    workload = _publish(connector, seed=17, records=3000, blob_size=(300, 300), duplicate_share=0.3)
    await connector.poll()
    messages = []
    async with connector.queue_client() as q:
        messages = [m.content async for m in q.receive_messages(max_messages=32, messages_per_page=32)]
    await asyncio.gather(*(connector.process(m) for m in messages))
    got = Counter(r["RecordId"] for r in connector.rows("Custom-O365Audit"))
    assert got == Counter(workload.record_ids)


async def test_a_refused_body_is_what_an_upload_reports_when_a_sibling_body_runs_out_of_time(
    connector: ConnectorHarness,
) -> None:
    """The DCR refuses one body while another is still waiting when the invocation's time runs out: the upload
    must report the refusal, which the processor records and answers by rescheduling the message; a deadline
    reported instead would spend one of the message's five attempts and leave IngestionState saying ok."""
    sim = connector.standins
    rt = await get_runtime(Settings.from_env())
    rows = [Row(f"r{i}", "", orjson.dumps({"TimeGenerated": "2026-11-27T09:15:02Z", "RecordId": f"r{i}",
                                           "Name": "x" * 2000})) for i in range(1200)]  # fmt: skip
    assert len(pack_rows(rows)) >= 2
    sim.ingestion.add_fault("ingest", "delay", count=1, seconds=30)  # the first body outlasts the deadline
    sim.ingestion.add_fault("ingest", "status", count=100, status=403)
    sent: list[Row] = []

    async def on_sent(accepted: list[Row]) -> None:
        sent.extend(accepted)

    deadline = Deadline.for_invocation(5)
    with pytest.raises(IngestionRefusedError) as refused:
        await rt.ingestor.upload("Custom-IRMAlerts", rows, on_sent, deadline=deadline)
    assert refused.value.status == 403 and sent == []
    assert deadline.usable() < 1  # the delayed body did run out of time: both failures were there to choose from


async def test_an_upload_waiting_for_a_slot_ends_with_its_own_invocation(connector: ConnectorHarness) -> None:
    """Every upload slot of the worker is held by bodies the service answers slowly, each within its own (later)
    deadline. An invocation with a few seconds left fails by its deadline while they are still held, rather than
    waiting for a slot past it (past the function timeout, the host restarts the worker and kills the others)."""
    from irm_connector.errors import DeadlineError
    from irm_connector.ingestion import UPLOAD_CONCURRENCY

    sim = connector.standins
    rt = await get_runtime(Settings.from_env())

    def row(i: int) -> Row:
        return Row(f"r{i}", "", orjson.dumps({"TimeGenerated": "2026-11-27T09:15:02Z", "RecordId": f"r{i}"}))

    sim.ingestion.add_fault("ingest", "delay", count=UPLOAD_CONCURRENCY, seconds=8)
    holders = [asyncio.ensure_future(rt.ingestor.upload("Custom-IRMAlerts", [row(i)], deadline=Deadline.for_invocation(60)))
               for i in range(UPLOAD_CONCURRENCY)]  # fmt: skip
    await _faults_taken(sim.ingestion, "ingest")  # every slot held: each holder's request has reached the service
    with pytest.raises(DeadlineError, match="upload slot"):
        await rt.ingestor.upload("Custom-IRMAlerts", [row(99)], deadline=Deadline.for_invocation(2))
    assert not any(h.done() for h in holders)  # it did not wait for a slot to free
    assert await asyncio.gather(*holders) == [1] * UPLOAD_CONCURRENCY
    assert sorted(r["RecordId"] for r in sim.ingestion.rows("Custom-IRMAlerts")) == sorted(
        f"r{i}" for i in range(UPLOAD_CONCURRENCY)
    )


async def test_an_upload_waiting_for_the_thread_pool_ends_with_its_own_invocation(connector: ConnectorHarness) -> None:
    """Bodies are compressed in the event loop's thread pool, which the worker's invocations share with DNS lookups
    and msal's token requests. While those hold every thread (Entra answering slowly), an upload waited for one
    past its invocation's deadline, holding an upload slot the while; it now fails by its deadline, and the body
    goes once the pool frees."""
    from concurrent.futures import ThreadPoolExecutor

    from irm_connector.errors import DeadlineError

    sim = connector.standins
    rt = await get_runtime(Settings.from_env())
    row = Row("r1", "", orjson.dumps({"TimeGenerated": "2026-11-27T09:15:02Z", "RecordId": "r1"}))
    pool = ThreadPoolExecutor(1)  # this test's loop only; the one thread held for 6 s
    asyncio.get_running_loop().set_default_executor(pool)
    freed = threading.Event()
    busy = asyncio.get_running_loop().run_in_executor(None, freed.wait, 6)
    try:
        started = time.monotonic()
        with pytest.raises(DeadlineError, match="compressing a body for Custom-IRMAlerts"):
            await rt.ingestor.upload("Custom-IRMAlerts", [row], deadline=Deadline.for_invocation(2))
        assert time.monotonic() - started < 5  # by its deadline (2 s), not when the pool frees (6 s)
        freed.set()
        await busy
        assert await rt.ingestor.upload("Custom-IRMAlerts", [row], deadline=Deadline.for_invocation(60)) == 1
        assert [r["RecordId"] for r in sim.ingestion.rows("Custom-IRMAlerts")] == ["r1"]
    finally:
        freed.set()
        pool.shutdown(wait=False)


async def test_a_poller_whose_clock_runs_fast_loses_nothing(
    connector: ConnectorHarness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A run on a machine whose clock is 3 hours fast (a dual-boot laptop running the CLI, say) plans windows
    into the API's future. Its watermark stays at the API's time (the listing's ``Date``), so what is created
    and listed after that run still reaches Sentinel once the clock is right."""
    from irm_connector import poller

    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    real = datetime
    skew_local_clock(monkeypatch, timedelta(hours=3), package="irm_connector.poller")
    with caplog.at_level(logging.WARNING, logger="irm_connector.poller"):
        await connector.poll()
    [warning] = [r.getMessage() for r in caplog.records if "clock is" in r.getMessage()]
    assert "ahead of the Management API's" in warning and "NTP" in warning
    rt = await get_runtime(Settings.from_env())
    state = await rt.state.watermarks.get_state(sim.tenant_id, "Audit.General")
    assert state.watermark is not None and state.watermark <= real.now(UTC)

    monkeypatch.setattr(poller, "datetime", real)  # the clock set right
    workload = generate_workload(seed=19, total_records=400, blob_size=(100, 100), irm_share=0.1,
                                 tenant_id=sim.tenant_id, start=real.now(UTC) - timedelta(seconds=30),
                                 span=timedelta(seconds=20))  # fmt: skip
    workload.publish(sim.management)  # created before the fast run's "now", listed only after it
    await connector.poll()
    await connector.drain()
    _assert_exactly_once(connector, workload)


async def test_a_run_ends_at_the_first_window_the_api_s_time_cuts_short(connector: ConnectorHarness) -> None:
    """Windows planned past the Management API's time (a clock running fast, a catch-up of short windows): the
    first one's answer is dated inside it, so its watermark stays there. The run listed on: the next window starts
    a lead before the first one's end, past that watermark, and what the API created in between (after the first
    answer) fell in no window; each later answer, dated later, moved the watermark past it and its overlap, so no
    run ever listed it. The run now ends at such a window, and the next one lists from its watermark."""
    from irm_connector.state.watermarks import PollerState

    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    connector.set(LISTING_OVERLAP="0")
    rt = await get_runtime(Settings.from_env())
    mark = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    await rt.state.watermarks.upsert_state(
        PollerState(sim.tenant_id, "Audit.General", watermark=mark, window_seconds=60)
    )
    # The first window is [mark - 7 s, mark + 53 s), the next starts at mark + 46 s: the first answer is dated
    # mark + 10 s, as by an API whose time is there; the later answers carry the real time.
    sim.management.add_fault("list", "date", date=mark + timedelta(seconds=10))
    await connector.poll()
    # Created after the first answer by the API's time, before the next window's start, and listed from now on.
    workload = generate_workload(seed=29, total_records=100, blob_size=(100, 100), irm_share=0.2,
                                 tenant_id=sim.tenant_id, start=mark + timedelta(seconds=30),
                                 span=timedelta(seconds=1))  # fmt: skip
    workload.publish(sim.management)
    await connector.poll()
    assert await connector.queue_length() == len(workload.blobs)
    await connector.drain()
    _assert_exactly_once(connector, workload)


async def test_a_listing_that_spells_the_content_type_otherwise_still_delivers(connector: ConnectorHarness) -> None:
    """Messages name the content type as the API's documentation spells it, and the processor refuses any other. An
    entry listed as "audit.general" was queued as such, marked queued, and parked: its records never arrived."""
    workload = _publish(connector, seed=53, records=200, blob_size=(100, 100))
    for blob in connector.standins.management.blobs():
        blob.listed_content_type = "audit.general"
    await connector.poll()
    stats = await connector.drain()
    assert stats.poisoned == 0
    _assert_exactly_once(connector, workload)


async def test_a_listing_answered_without_a_date_does_not_keep_an_earlier_answer_s_time(
    connector: ConnectorHarness,
) -> None:
    """An answer dated 2 hours back (a proxy's clock) caps the watermark there. The next runs' answers carried no
    Date (a proxy that strips it), and the old one stayed the API's time for the life of the worker: every run
    capped the watermark at it, and once past 24 hours nothing after it was listed again."""
    from irm_connector.state.watermarks import PollerState

    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    rt = await get_runtime(Settings.from_env())
    now = datetime.now(UTC).replace(microsecond=0)
    await rt.state.watermarks.upsert_state(PollerState(sim.tenant_id, "Audit.General", watermark=now - timedelta(minutes=10)))
    sim.management.add_fault("list", "date", date=now - timedelta(hours=2), count=1)
    await connector.poll()
    state = await rt.state.watermarks.get_state(sim.tenant_id, "Audit.General")
    assert state.watermark is not None and state.watermark <= now - timedelta(hours=2) + timedelta(seconds=1)
    sim.management.add_fault("list", "date", date=None, count=1)
    await connector.poll()
    assert sim.management.count("list", fault="date") == 2
    state = await rt.state.watermarks.get_state(sim.tenant_id, "Audit.General")
    assert state.watermark is not None and state.watermark >= now - timedelta(minutes=1), state.watermark


async def test_a_watermark_written_ahead_is_brought_back_with_no_listing_overlap(connector: ConnectorHarness) -> None:
    """A watermark 2 hours ahead (a fast clock wrote it where the listing carried no Date, or a proxy's Date was
    ahead) and ``LISTING_OVERLAP=0``: the run plans no window before it (but the lead's minute before now), so
    unless it brings the watermark back to now, every run lists nothing until now passes it, and then starts there,
    past what was created meanwhile."""
    from irm_connector.state.watermarks import PollerState

    sim = connector.standins
    connector.set(LISTING_OVERLAP="0")
    rt = await get_runtime(Settings.from_env())
    await rt.state.watermarks.upsert_state(
        PollerState(sim.tenant_id, "Audit.General", watermark=datetime.now(UTC) + timedelta(hours=2))
    )
    await connector.poll()
    workload = _publish(connector, seed=20, records=200, blob_size=(100, 100), start=datetime.now(UTC),
                        span=timedelta(seconds=1))  # fmt: skip
    await asyncio.sleep(2)  # the blobs' creation time passed, by every clock
    await connector.poll()
    assert await connector.queue_length() == len(workload.blobs)
    await connector.drain()
    _assert_exactly_once(connector, workload)


async def test_a_processor_whose_clock_runs_fast_sends_a_blob_the_api_still_serves(
    connector: ConnectorHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob queued late in its 7 days (a backlog after an outage), processed on a machine 3 hours fast: by that
    clock it expired an hour after its last hour began, but the API serves it for another hour. Only the API's
    AF20051 says a blob has expired."""
    from irm_connector import processor  # loaded, so that its clock is the one skewed

    assert vars(processor)["datetime"] is datetime
    sim = connector.standins
    created = datetime.now(UTC) - timedelta(days=7) + timedelta(hours=1)
    workload = generate_workload(seed=23, total_records=200, blob_size=(100, 100), irm_share=0.1,
                                 tenant_id=sim.tenant_id, start=created, span=timedelta(seconds=1))  # fmt: skip
    workload.publish(sim.management)
    skew_local_clock(monkeypatch, timedelta(hours=3), package="irm_connector")
    for message in _messages_for(connector, workload):
        await connector.process(message)
    _assert_exactly_once(connector, workload)


async def test_a_catch_up_on_a_fast_clock_lists_back_to_the_apis_7_day_edge(
    connector: ConnectorHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poller 7 days behind, on a machine whose clock is 3 hours fast: the API still lists content created
    6 days and 22 hours ago, and it arrives; by this machine's clock it would be past the 7 days, given up."""
    import irm_connector.poller  # noqa: F401  # loaded before its clock is set ahead
    from irm_connector.state.watermarks import PollerState

    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    real = datetime
    created = real.now(UTC) - timedelta(days=7) + timedelta(hours=2)
    workload = generate_workload(seed=43, total_records=200, blob_size=(100, 100), irm_share=0.1,
                                 tenant_id=sim.tenant_id, start=created, span=timedelta(minutes=5))  # fmt: skip
    workload.publish(sim.management)
    rt = await get_runtime(Settings.from_env())
    await rt.state.watermarks.upsert_state(
        PollerState(sim.tenant_id, "Audit.General", watermark=created - timedelta(hours=1))
    )
    skew_local_clock(monkeypatch, timedelta(hours=3), package="irm_connector")
    await connector.poll()
    await connector.drain()
    _assert_exactly_once(connector, workload)


async def test_a_poller_over_7_days_behind_names_the_stretch_it_lost_and_lists_the_rest(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """Off for 8 days: what the API still keeps arrives, and one ERROR names the stretch that can no longer be
    listed, from the watermark to where the listing starts (inside the 7 days by the connector's margin)."""
    from irm_connector.state.watermarks import PollerState

    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    now = datetime.now(UTC)
    kept = now - timedelta(days=7) + timedelta(hours=1)
    workload = generate_workload(seed=61, total_records=200, blob_size=(100, 100), irm_share=0.1,
                                 tenant_id=sim.tenant_id, start=kept, span=timedelta(minutes=5))  # fmt: skip
    workload.publish(sim.management)
    watermark = (now - timedelta(days=8)).replace(microsecond=0)
    rt = await get_runtime(Settings.from_env())
    await rt.state.watermarks.upsert_state(PollerState(sim.tenant_id, "Audit.General", watermark=watermark))
    with caplog.at_level(logging.ERROR, logger="irm_connector"), pytest.raises(PollError) as failed:
        await connector.poll()  # it fails once, so the loss shows where an operator looks: not in a log line only
    [lost] = [r for r in caplog.records if "can no longer be listed" in r.getMessage()]
    [row] = [r for r in connector.rows("Custom-IRMConnectorHealth") if r["Errors"]]
    assert row["LastError"].startswith(f"content created in [{watermark:%Y-%m-%dT%H:%M:%S}, ")
    assert row["LastError"] in str(failed.value)
    status = await connector.cli("status")
    assert [p["code"] for p in status["problems"]] == ["last-error"]
    message = lost.getMessage()
    assert message.startswith(f"Content created in [{watermark:%Y-%m-%dT%H:%M:%S}, ")
    edge = datetime.strptime(message.split(", ")[1].split(")")[0], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    assert timedelta(minutes=14) < edge - (now - timedelta(days=7)) < timedelta(minutes=17)
    assert "lists from 15 minutes inside them" in message
    await connector.drain()
    _assert_exactly_once(connector, workload)
    await connector.poll()  # the next run has nothing lost to say: clean
    status = await connector.cli("status")
    assert status["problems"] == []


@pytest.mark.parametrize(
    ("status", "code", "then"),
    [(403, "AF20012", "unified audit logging"), (400, "AF20055", "the API refused the listing window")],
    ids=["operator-error", "refused-window"],
)
async def test_a_stretch_lost_stays_named_when_a_later_window_of_the_run_fails(
    connector: ConnectorHarness, status: int, code: str, then: str
) -> None:
    """Off for 8 days, the catch-up's first window listed and its second refused: the health row named the refusal
    alone, so the rule on lost content had nothing to fire on, and the next run, past the 7-day edge by then, had
    no loss to tell. The stretch lost is named first, then what failed."""
    from irm_connector.state.watermarks import PollerState

    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    now = datetime.now(UTC)
    watermark = (now - timedelta(days=8)).replace(microsecond=0)
    rt = await get_runtime(Settings.from_env())
    await rt.state.watermarks.upsert_state(PollerState(sim.tenant_id, "Audit.General", watermark=watermark))
    sim.management.add_fault("list", "delay", seconds=1)  # the first window's answer, held while the next is scripted
    _on_arrival(sim.management, "list", lambda: sim.management.add_fault("list", "status", status=status, code=code))
    with pytest.raises(PollError) as failed:
        await connector.poll()
    assert sim.management.count("list", error_code=code) == 1  # the second window's
    [row] = [r for r in connector.rows("Custom-IRMConnectorHealth") if r["Errors"]]
    assert row["LastError"].startswith(f"content created in [{watermark:%Y-%m-%dT%H:%M:%S}, ")
    assert then in row["LastError"].split("; then: ", 1)[1]
    assert row["LastError"] in str(failed.value)
    status_report = await connector.cli("status")
    [last_error] = [p["detail"] for p in status_report["problems"] if p["code"] == "last-error"]
    assert "can no longer be listed" in last_error


async def test_a_blob_created_on_the_second_one_window_ends_arrives_from_a_catch_up(
    connector: ConnectorHarness,
) -> None:
    """A catch-up lists 24-hour windows one after another. A blob created at the very second one ends (the next
    one's start) was left to an answer whose startTime was its exact contentCreated, which the API has been seen to
    leave it out of (the stand-in does, apis.md's worst case): lost, as no later run lists that stretch."""
    from irm_connector.state.watermarks import PollerState

    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    sim.management.exact_start_misses = True
    settings = Settings.from_env()
    watermark = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    boundary = watermark - settings.listing_overlap + timedelta(hours=24)  # where the run's second window began
    workload = generate_workload(seed=67, total_records=100, blob_size=(100, 100), irm_share=0.1,
                                 tenant_id=sim.tenant_id, start=boundary, span=timedelta(0))  # fmt: skip
    assert [blob.content_created for blob in workload.blobs] == [boundary]
    workload.publish(sim.management)
    rt = await get_runtime(settings)
    await rt.state.watermarks.upsert_state(PollerState(sim.tenant_id, "Audit.General", watermark=watermark))
    await connector.poll()
    await connector.drain()
    _assert_exactly_once(connector, workload)


async def test_a_poller_whose_clock_runs_slow_lists_up_to_the_services_time(
    connector: ConnectorHarness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On a machine 3 hours slow, content created in the last hour is listed by this run, not 3 hours later:
    the windows end at the storage service's time. The run says the clock is off, and the health row's lag is
    the real one, not a lag that reads 0 while everything waits."""
    import irm_connector.health
    import irm_connector.poller  # loaded before its clock is set back

    assert vars(irm_connector.health)["datetime"] is datetime
    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    recent = datetime.now(UTC) - timedelta(minutes=50)
    workload = _publish(connector, seed=57, records=200, blob_size=(100, 100), start=recent, span=timedelta(minutes=30))
    skew_local_clock(monkeypatch, -timedelta(hours=3), package="irm_connector")
    with caplog.at_level(logging.WARNING, logger="irm_connector"):
        await connector.poll()
    assert "clock is" in caplog.text and "behind the storage service's" in caplog.text
    assert await connector.queue_length() == len(workload.blobs)
    [row] = connector.rows("Custom-IRMConnectorHealth")
    assert 0 <= row["LagSeconds"] < 600
    await connector.drain()
    _assert_exactly_once(connector, workload)


async def test_a_listing_dated_a_week_ahead_gives_up_no_blob_and_is_forgotten_at_the_next_answer(
    connector: ConnectorHarness,
) -> None:
    """A proxy on the way stamps one listing answer with a Date a week ahead. By that Date every blob listed has
    expired; this machine's clock says they have not, so they are queued and arrive. The next run's answer
    carries the right Date again, and the health row's lag is read by it, not by the proxy's week."""
    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    workload = _publish(connector, seed=67, records=300, blob_size=(100, 100))
    sim.management.add_fault("list", "date", date=datetime.now(UTC) + timedelta(days=7, hours=1), count=1)
    await connector.poll()
    assert sim.management.count("list", fault="date") == 1
    assert await connector.queue_length() == len(workload.blobs)
    await connector.drain()
    _assert_exactly_once(connector, workload)

    await connector.poll()
    assert sim.management.count("list") >= 2 and sim.management.pending_faults() == 0
    last = connector.rows("Custom-IRMConnectorHealth")[-1]
    assert 0 <= last["LagSeconds"] < 600


async def test_a_first_poll_that_failed_keeps_its_start_for_the_next(
    connector: ConnectorHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first run's window is refused; the next run comes an hour later. It lists from where the first run's
    24-hour lookback started, so content created in that hour's stretch at the far end is not skipped."""
    from irm_connector.errors import PollError

    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    oldest = datetime.now(UTC) - timedelta(hours=23, minutes=50)
    workload = _publish(connector, seed=61, records=200, blob_size=(100, 100), start=oldest, span=timedelta(minutes=5))
    sim.management.add_fault("list", "status", status=400, code="AF20055", count=1)
    with pytest.raises(PollError, match="AF20055"):
        await connector.poll()
    skew_local_clock(monkeypatch, timedelta(hours=1), package="irm_connector")
    await connector.poll()
    assert await connector.queue_length() == len(workload.blobs)
    await connector.drain()
    _assert_exactly_once(connector, workload)


async def test_a_poll_cancelled_midway_keeps_the_last_runs_error(connector: ConnectorHarness) -> None:
    """A run fails (its error is kept for `status`); the next is cancelled while it lists (Ctrl-C, the host shutting
    down). The failed run's error and time stay: cleared, a setup failing every run would read healthy."""
    import contextlib

    from irm_connector.errors import PollError

    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    _publish(connector, seed=79, records=200, blob_size=(100, 100))
    sim.management.add_fault("list", "status", status=400, code="AF20055", count=1)
    with pytest.raises(PollError, match="AF20055"):
        await connector.poll()
    rt = await get_runtime(Settings.from_env())
    failed = await rt.state.watermarks.get_state(sim.tenant_id, "Audit.General")
    assert "AF20055" in failed.last_error and failed.last_run is not None

    sim.management.add_fault("list", "delay", seconds=30, count=1)
    polling = asyncio.ensure_future(connector.poll())
    await _faults_taken(sim.management, "list")
    polling.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await polling
    after = await rt.state.watermarks.get_state(sim.tenant_id, "Audit.General")
    assert (after.last_error, after.last_run, after.last_error_at) == (failed.last_error, failed.last_run,
                                                                      failed.last_error_at)  # fmt: skip
    assert not after.lease_owner  # released, all the same


async def test_a_lease_lost_while_a_listing_waits_for_its_token_sends_no_request(connector: ConnectorHarness) -> None:
    """The poller's lease is checked before each listing request; a token (or budget slot) that takes a while
    must not let a request out after the lease was lost meanwhile, when another poller may own the window."""
    from irm_connector.windows import Window

    class LeaseLost(Exception):
        pass

    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    rt = await get_runtime(Settings.from_env())
    lost = threading.Event()

    def guard() -> None:
        if lost.is_set():
            raise LeaseLost

    sim.entra.add_fault("token", "delay", seconds=1.0)
    _on_arrival(sim.entra, "token", lost.set)  # a thread: the token may be fetched without yielding the loop
    now = datetime.now(UTC).replace(microsecond=0)
    with pytest.raises(LeaseLost):
        async for _ in rt.management.list_content("Audit.General", Window(now - timedelta(hours=1), now), guard=guard):
            pass
    assert sim.entra.count("token", fault="delay") == 1  # the wait the lease was lost in
    assert sim.management.count("list") == 0


async def test_a_download_throttled_for_longer_than_a_call_waits_is_put_off_not_asked_again_early(
    connector: ConnectorHarness,
) -> None:
    """``Retry-After: 600``: the API is asked once, and the message comes back in 10 minutes as a new one (its
    dequeue count spared), instead of the call asking again after its own longest wait (120 s) and the host
    retrying it into the poison queue. When it comes back, its records arrive once."""
    sim = connector.standins
    workload = _publish(connector, seed=29, records=300, blob_size=(300, 300))
    [message] = _messages_for(connector, workload)
    sim.management.add_fault("content", "status", status=429, retry_after=600, count=1000)
    await asyncio.wait_for(connector.process(message), 60)  # completes: no exception for the host to retry
    assert sim.management.count("content") == 1
    assert await connector.queue_length() == 1 and await connector.messages() == []  # back, but not yet
    sim.management.clear_faults()
    await connector.let_the_api_wait_pass()
    await connector.process(message)  # as when it shows up again
    _assert_exactly_once(connector, workload)


async def test_a_retry_after_met_by_one_instance_holds_the_tenant_s_other_instances_back(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """The API throttles per tenant. A download answered ``Retry-After: 8`` waits 8 s before it asks again; another
    instance's download, started within those 8 s, asked at once, throttled again (on the real API) and counted
    against the tenant's quota. Every instance now keeps the wait: it is kept in the shared request budget, by
    the storage service's clock. Both blobs' records arrive once."""
    from irm_connector.content_queue import Delivery
    from irm_connector.processor import process_message
    from irm_connector.runtime import build_runtime

    sim = connector.standins
    workload = _publish(connector, seed=53, records=600, blob_size=(300, 300))
    first, second = _messages_for(connector, workload)
    sim.management.add_fault("content", "status", status=429, retry_after=8, count=1)
    with caplog.at_level(logging.WARNING, logger="irm_connector.management_api"):
        waiting = asyncio.create_task(connector.process(first))
        for _ in range(500):  # until this instance has met the throttle, and said it waits
            if any("retry 1/" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.02)
        [throttled] = sim.management.requests("content")
        other = await build_runtime(Settings.from_env())  # another instance: its own budget, clock and session
        try:
            result = await asyncio.wait_for(process_message(other, Delivery.decode(second.encode())), 60)
        finally:
            await other.close()
        await asyncio.wait_for(waiting, 60)
    assert result.outcome == "ingested"
    asked = [r.time - r.duration for r in sim.management.requests("content")]
    # 8 s from the throttled answer, less the two instances' readings of the storage clock (a second or so each).
    assert len(asked) == 3 and min(asked[1:]) >= throttled.time + 5, (throttled.time, asked)
    _assert_exactly_once(connector, workload)


async def test_a_subscription_start_inside_another_instance_s_short_wait_waits_it_out_and_starts(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A start is asked once (15 minutes apart, apis.md). Inside a wait of seconds another instance met, the start
    failed without a request, and the next was 15 minutes off; a wait its call can hold costs it no try."""
    from irm_connector.runtime import build_runtime
    from irm_connector.windows import Window

    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    sim.management.add_fault("list", "status", status=429, retry_after=6, count=1)
    rt = await get_runtime(Settings.from_env())
    other = await build_runtime(Settings.from_env())  # another instance, which meets the throttle
    now = datetime.now(UTC).replace(microsecond=0)
    try:
        with caplog.at_level(logging.WARNING, logger="irm_connector.management_api"):

            async def listing() -> None:
                async for _ in other.management.list_content("Audit.General", Window(now - timedelta(hours=1), now)):
                    pass

            listed = asyncio.create_task(listing())
            for _ in range(500):  # until it has met the throttle, and said it waits
                if any("retry 1/" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.02)
            [throttled] = sim.management.requests("list")
            assert await asyncio.wait_for(rt.management.start_subscription("Audit.Exchange"), 60) == "enabled"
            await listed
    finally:
        await other.close()
    [start] = sim.management.requests("start")
    assert start.time - start.duration >= throttled.time + 3  # the wait kept: 6 s, less the clocks' readings


async def test_calls_waiting_out_one_tenant_wait_tell_it_once(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """Three calls of one instance meet the wait another instance recorded: each waits it out, and the operator
    reads one warning for the wait, not one per call (a processor runs 16 downloads at once)."""
    from tests.harness import record_api_wait

    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    rt = await get_runtime(Settings.from_env())
    await rt.management.list_subscriptions()  # the budget's entity exists
    await record_api_wait(connector.azurite.connection_string, connector.env, 8)
    await connector.close()  # an instance that reads it afresh
    rt = await get_runtime(Settings.from_env())
    asked = sim.management.count("subscriptions")
    with caplog.at_level(logging.WARNING, logger="irm_connector"):
        await asyncio.gather(*(rt.management.list_subscriptions() for _ in range(3)))
    told = [r for r in caplog.records if "the API asked the tenant to wait" in r.getMessage()]
    assert len(told) == 1, [r.getMessage() for r in told]
    assert sim.management.count("subscriptions") == asked + 3


async def test_a_recorded_wait_beyond_the_longest_retry_after_holds_no_one(connector: ConnectorHarness) -> None:
    """A ``PausedUntil`` ten days ahead (edited by hand, or written on a clock gone wrong) held every instance's
    requests for as long, with nothing to end it: no Retry-After is honoured for more than an hour."""
    from azure.data.tables.aio import TableClient

    from irm_connector.errors import TransientApiError
    from tests.harness import record_api_wait

    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    rt = await get_runtime(Settings.from_env())
    await rt.management.list_subscriptions()  # the budget's entity exists
    table_name = f"{connector.env['STATE_TABLE_PREFIX'].lower()}budget"
    await record_api_wait(connector.azurite.connection_string, connector.env, timedelta(days=10).total_seconds())
    await connector.close()  # an instance that reads it afresh
    rt = await get_runtime(Settings.from_env())
    asked = sim.management.count("subscriptions")
    await asyncio.wait_for(rt.management.list_subscriptions(), 30)
    assert sim.management.count("subscriptions") == asked + 1
    # And the next write of the budget drops it: kept, it held every instance once it came within the hour.
    async with TableClient.from_connection_string(connector.azurite.connection_string, table_name) as table:
        [entity] = [e async for e in table.list_entities()]
        assert "PausedUntil" not in entity, entity
    # Nor does it hide a real one: a Retry-After met now is recorded over it, and kept by the next instance.
    sim.management.add_fault("subscriptions", "status", status=429, retry_after=600, count=1)
    with pytest.raises(TransientApiError, match="Retry-After 600 s"):
        await rt.management.list_subscriptions()
    await connector.close()
    rt = await get_runtime(Settings.from_env())
    with pytest.raises(TransientApiError, match="the API asked the tenant to wait") as kept:
        await rt.management.list_subscriptions()
    assert kept.value.retry_after is not None and 590 < kept.value.retry_after < 602  # two readings of its clock
    assert sim.management.count("subscriptions") == asked + 2


async def test_a_download_throttled_without_retry_after_past_a_call_s_retries_is_put_off_not_poisoned(
    connector: ConnectorHarness,
) -> None:
    """403 ``AF429`` without ``Retry-After`` (how the API throttles, apis.md), for longer than one call's retries:
    the message comes back in a minute, the span of the API's quota, as a new one. Raised to the host instead, it
    was retried every 30 s and went to the poison queue within 3 minutes of one throttled spell, its records then
    lost unless someone requeued them within 7 days.

    Within the call the API is asked three times, 2 s and then 4 s apart at least: the quota is counted per
    minute, and the six tries of a server fault's backoff (within about 15 s, some a fraction of a second apart)
    were throttled again and counted against it."""
    sim = connector.standins
    workload = _publish(connector, seed=37, records=300, blob_size=(300, 300))
    [message] = _messages_for(connector, workload)
    sim.management.add_fault("content", "status", status=403, code="AF429", count=1000)
    await asyncio.wait_for(connector.process(message), 60)  # completes: no exception for the host to retry
    asked = [r.time for r in sim.management.requests("content")]
    assert len(asked) == 3
    assert asked[1] - asked[0] >= 2 and asked[2] - asked[1] >= 4
    assert await connector.queue_length() == 1 and await connector.messages() == []  # back, but not yet
    sim.management.clear_faults()
    await connector.process(message)  # as when it shows up again
    _assert_exactly_once(connector, workload)


@pytest.mark.parametrize("service", ["management", "ingestion"])
async def test_a_throttle_that_names_no_wait_in_its_retry_after_is_put_off_a_minute(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture, service: str
) -> None:
    """``Retry-After: 0`` on every try, past a call's retries: the message was put back for 0 s, delivered again at
    once and throttled again, so its 30 put-offs were spent in about a minute and the host's retries took it into
    the poison queue, what putting off exists to spare it. A wait of none is no wait: it comes back in a minute,
    as when none is named."""
    sim = connector.standins
    workload = _publish(connector, seed=41, records=300, blob_size=(300, 300))
    [message] = _messages_for(connector, workload)
    route = "content" if service == "management" else "ingest"
    getattr(sim, service).add_fault(route, "status", status=429, retry_after=0, count=1000)
    with caplog.at_level(logging.WARNING, logger="irm_connector"):
        await asyncio.wait_for(connector.process(message), 60)  # completes: no exception for the host to retry
    assert await connector.queue_length() == 1 and await connector.messages() == []  # back, but not at once
    assert any(" put off for 60 s, " in r.getMessage() for r in caplog.records)
    if service == "management":
        # Within the call too: asked three times, 2 s and 4 s apart at least, as a throttle that names no wait;
        # taken at its word, the five retries went out at once, against the tenant's quota for the minute.
        asked = [r.time for r in sim.management.requests("content")]
        assert len(asked) == 3
        assert asked[1] - asked[0] >= 2 and asked[2] - asked[1] >= 4
    getattr(sim, service).clear_faults()
    await connector.process(message)  # as when it shows up again
    _assert_exactly_once(connector, workload)


async def test_a_download_refused_because_the_subscription_went_is_put_off_until_it_is_back(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """The subscription is stopped (or an administrator disables it) after its blobs were listed: the API serves
    no content then (AF20022). Failed to the host, the message was parked in the poison queue within minutes, to be
    requeued by hand; it is put off until the poller has had the time to start the subscription again."""
    sim = connector.standins
    workload = _publish(connector, seed=43, records=300, blob_size=(300, 300))
    [message] = _messages_for(connector, workload)
    sim.management.set_subscription("Audit.General", "disabled")
    with caplog.at_level(logging.WARNING, logger="irm_connector"):
        await asyncio.wait_for(connector.process(message), 60)  # completes: nothing for the host to retry
    assert any("put off for 1200 s, as its subscription is off until started again" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    assert await connector.queue_length() == 1 and await connector.messages() == []  # back in 20 minutes
    assert connector.rows("Custom-IRMAlerts") == []
    sim.management.set_subscription("Audit.General", "enabled")  # the poller started it again
    await connector.process(message)  # as when it shows up again
    _assert_exactly_once(connector, workload)


@pytest.mark.parametrize("retry_after", [None, 600], ids=["no-wait-named", "retry-after-600"])
async def test_a_download_throttled_for_half_an_hour_goes_the_host_s_way_to_the_poison_queue(
    connector: ConnectorHarness, retry_after: int | None
) -> None:
    """Put off 30 times already (half an hour of a throttle that names no wait, or longer of one that names
    one): the host's retries, then the poison queue and its alert, rather than putting it off until the blob
    expires and its records are lost with a warning. A named wait was put off without a count, up to 7 days."""
    from irm_connector.content_queue import ContentMessage
    from irm_connector.errors import TransientApiError

    sim = connector.standins
    workload = _publish(connector, seed=39, records=300, blob_size=(300, 300))
    [text] = _messages_for(connector, workload)
    message = replace(ContentMessage.decode(text.encode()), rescheduled=30, put_offs=30).encode()
    if retry_after is None:
        sim.management.add_fault("content", "status", status=403, code="AF429", count=1000)
    else:
        sim.management.add_fault("content", "status", status=429, retry_after=retry_after, count=1000)
    with pytest.raises(TransientApiError, match="throttled"):
        await asyncio.wait_for(connector.process(message), 60)
    assert await connector.queue_length() == 0  # not put back: the host retries this one


async def test_a_message_rescheduled_through_an_hour_of_a_refusing_dcr_is_still_put_off_for_a_throttle(
    connector: ConnectorHarness,
) -> None:
    """A DCR that refuses for an hour (a role assignment late after a deploy) reschedules each message about 31
    times, a quarter of the refusal's age each time. They counted as throttle put-offs: when the DCR accepted
    again and the catch-up was throttled, every such message went the host's way to the poison queue at once."""
    from irm_connector.content_queue import ContentMessage

    sim = connector.standins
    workload = _publish(connector, seed=49, records=300, blob_size=(300, 300))
    [text] = _messages_for(connector, workload)
    message = replace(ContentMessage.decode(text.encode()), rescheduled=31).encode()
    sim.management.add_fault("content", "status", status=403, code="AF429", count=1000)
    await asyncio.wait_for(connector.process(message), 60)
    assert await connector.queue_length() == 1 and await connector.messages() == []  # put off, back in a minute
    sim.management.clear_faults()
    await connector.process(message)  # as when it shows up again
    _assert_exactly_once(connector, workload)


async def test_an_upload_throttled_past_a_call_s_retries_is_put_off_not_poisoned(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """Logs Ingestion answering 429 for longer than an upload's retries (a catch-up spending the DCR's requests
    or bytes a minute): the message went to the host, whose retries 30 s apart parked it in the poison queue
    within about two minutes, its records lost unless someone requeued it within 7 days. It is put off a minute,
    as a throttled download is, and when it comes back its records arrive once."""
    sim = connector.standins
    workload = _publish(connector, seed=57, records=300, blob_size=(300, 300))
    [message] = _messages_for(connector, workload)
    sim.ingestion.add_fault("ingest", "status", status=429, count=1000)
    with caplog.at_level(logging.WARNING, logger="irm_connector.processor"):
        await asyncio.wait_for(connector.process(message), 60)  # completes: no exception for the host to retry
    assert any("put off for 60 s, Logs Ingestion still throttles" in r.getMessage() for r in caplog.records)
    assert await connector.queue_length() == 1 and await connector.messages() == []  # back, but not yet
    assert connector.rows() == []
    sim.ingestion.clear_faults()
    await connector.process(message)  # as when it shows up again
    _assert_exactly_once(connector, workload)


@pytest.mark.parametrize("retry_after", ["1e999", "inf", "soon"])
async def test_an_upload_throttled_with_a_retry_after_that_is_no_number_is_put_off(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture, retry_after: str
) -> None:
    """``Retry-After: 1e999`` on a 429 (a broken gateway's): azure-core reads it as an endless wait, the upload
    failed at once as throttled for it, and putting the message off for it raised OverflowError: a fault of the
    connector's own, retried by the host and parked. It is no wait, as the Management API client reads it: the
    upload's retries run, and the message is put off a minute."""
    sim = connector.standins
    workload = _publish(connector, seed=61, records=300, blob_size=(300, 300))
    [message] = _messages_for(connector, workload)
    sim.ingestion.add_fault("ingest", "status", status=429, retry_after=retry_after, count=1000)
    with caplog.at_level(logging.WARNING, logger="irm_connector.processor"):
        await asyncio.wait_for(connector.process(message), 60)  # completes: no exception for the host to retry
    assert any("put off for 60 s, Logs Ingestion still throttles" in r.getMessage() for r in caplog.records)
    assert await connector.queue_length() == 1 and connector.rows() == []
    sim.ingestion.clear_faults()
    await connector.process(message)  # as when it shows up again
    _assert_exactly_once(connector, workload)


@pytest.mark.parametrize("met_by", ["this delivery", "another instance"])
async def test_a_download_put_off_near_its_blob_s_expiry_on_a_slow_clock_comes_back_before_it(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, met_by: str
) -> None:
    """A blob 20 minutes from its expiry, by the API's clock, on a processor 10 minutes slow: put off by that
    machine's clock, it came back 5 minutes after the blob expired, to AF20051 and its records lost. The service's
    time counts when it is later: the Date of the throttled answer, or, for a wait another instance met and this one
    keeps without a request, the storage service's."""
    from irm_connector.errors import TransientApiError
    from irm_connector.runtime import build_runtime

    sim = connector.standins
    created = datetime.now(UTC) - timedelta(days=7) + timedelta(minutes=20)
    workload = _publish(connector, seed=73, records=200, blob_size=(200, 200), start=created, span=timedelta(seconds=1))
    [message] = _messages_for(connector, workload)
    skew_local_clock(monkeypatch, -timedelta(minutes=10), package="irm_connector.processor")
    sim.management.add_fault("content", "status", status=429, retry_after=3600, count=1)
    if met_by == "another instance":
        other = await build_runtime(Settings.from_env())
        try:
            with pytest.raises(TransientApiError, match="Retry-After 3600 s"):
                await other.management.get_content(sim.management.content_uri(workload.content_ids[0]),
                                                   content_type="Audit.General")  # fmt: skip
        finally:
            await other.close()
    with caplog.at_level(logging.WARNING, logger="irm_connector.processor"):
        await asyncio.wait_for(connector.process(message), 60)
    [line] = [r.getMessage() for r in caplog.records if "put off for" in r.getMessage()]
    delay = int(line.split("put off for ")[1].split(" s")[0])
    assert 15 * 60 - 10 <= delay <= 15 * 60  # 5 minutes before the blob expires, by the API's clock


@pytest.mark.parametrize(("expires_in", "most"), [(timedelta(days=6), 3600), (timedelta(minutes=20), 15 * 60)])
async def test_a_download_put_off_comes_back_within_an_hour_and_before_its_blob_expires(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture, expires_in: timedelta, most: int
) -> None:
    """``Retry-After`` of a day (a proxy's, or a date gone wrong): the message is put off for an hour at most, as
    the poller's runs are, and comes back 5 minutes before its blob expires when that is sooner; put off for the
    day, it would come back to an expired blob and its records would be lost."""
    sim = connector.standins
    created = datetime.now(UTC) - timedelta(days=7) + expires_in
    workload = _publish(connector, seed=71, records=200, blob_size=(200, 200), start=created, span=timedelta(seconds=1))
    [message] = _messages_for(connector, workload)
    sim.management.add_fault("content", "status", status=429, retry_after=86400, count=1)
    with caplog.at_level(logging.WARNING, logger="irm_connector.processor"):
        await asyncio.wait_for(connector.process(message), 60)
    [line] = [r.getMessage() for r in caplog.records if "put off for" in r.getMessage()]
    delay = int(line.split("put off for ")[1].split(" s")[0])
    assert most - 5 <= delay <= most
    assert await connector.queue_length() == 1 and await connector.messages() == []  # back, but not yet
    await connector.let_the_api_wait_pass()
    await connector.process(message)  # as when it shows up again
    _assert_exactly_once(connector, workload)


async def test_a_retry_after_met_for_one_content_type_holds_the_others_back_too(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """The API throttles per tenant, and the poller judged a Retry-After per content type: the next runs asked the
    other content types inside the wait, each throttled again on the tenant's count."""
    from irm_connector.errors import PollError

    sim = connector.standins
    connector.set(O365_CONTENT_TYPES="Audit.General,Audit.Exchange")
    for content_type in ("Audit.General", "Audit.Exchange"):
        sim.management.set_subscription(content_type, "enabled")
    sim.management.add_fault("list", "status", status=429, retry_after=600, count=1)
    with pytest.raises(PollError, match="Retry-After 600 s"):
        await connector.poll()
    listed = sim.management.count("list")
    with caplog.at_level(logging.INFO, logger="irm_connector.poller"):
        await connector.poll()
    assert sim.management.count("list") == listed  # neither asked
    skipped = sorted(r.getMessage().split(":")[0] for r in caplog.records if "no requests until" in r.getMessage())
    assert skipped == ["Skipping Audit.Exchange", "Skipping Audit.General"]


async def test_a_listing_throttled_for_longer_than_a_call_waits_is_not_asked_again_until_then(
    connector: ConnectorHarness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The poller's run for the content type ends at the first answer, saying how long the API asks to wait.
    The runs within those 10 minutes skip the content type without a request, by the storage service's clock
    (this machine's, an hour fast, would call the wait over); the first run after it lists the window."""
    from irm_connector import poller
    from irm_connector.errors import PollError

    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    workload = _publish(connector, seed=31, records=300, blob_size=(300, 300))
    sim.management.add_fault("list", "status", status=429, retry_after=600, count=1000)
    with pytest.raises(PollError, match="Retry-After 600 s"):
        await asyncio.wait_for(connector.poll(), 60)
    assert sim.management.count("list") == 1
    sim.management.clear_faults()

    real = datetime
    skew_local_clock(monkeypatch, timedelta(hours=1), package="irm_connector")
    with caplog.at_level(logging.INFO, logger="irm_connector.poller"):
        await connector.poll()
    monkeypatch.setattr(poller, "datetime", real)
    assert sim.management.count("list") == 1  # not asked again
    assert any("asked for no requests until" in r.getMessage() for r in caplog.records)
    rt = await get_runtime(Settings.from_env())
    watermarks = rt.state.watermarks
    state = await watermarks.get_state(sim.tenant_id, "Audit.General")
    assert state.throttled_until is not None and state.read_at is not None
    assert 540 < (state.throttled_until - state.read_at).total_seconds() <= 601  # Date: whole seconds
    assert "Retry-After 600 s" in state.last_error
    [row] = (await connector.cli("status"))["content_types"]  # what the operator sees meanwhile
    assert row["throttled_until"] and "Retry-After 600 s" in row["last_error"]

    # Ten minutes later, by the storage service's clock.
    await watermarks.upsert_state(replace(state, throttled_until=state.read_at - timedelta(seconds=1)))
    await connector.let_the_api_wait_pass()
    await connector.poll()
    await connector.drain()
    _assert_exactly_once(connector, workload)


async def test_a_retry_after_of_ages_is_held_to_an_hour_not_a_crash(connector: ConnectorHarness) -> None:
    """A Retry-After of 10^15 seconds (a broken proxy's) failed the poller with "unexpected OverflowError" in the
    health row, stored no wait, and the next tick asked again at once. It is honoured for an hour, the longest."""
    from irm_connector.errors import PollError

    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    sim.management.add_fault("list", "status", status=429, retry_after="1e15", count=1000)
    with pytest.raises(PollError, match="throttled"):
        await asyncio.wait_for(connector.poll(), 60)
    state = await (await get_runtime(Settings.from_env())).state.watermarks.get_state(sim.tenant_id, "Audit.General")
    assert state.throttled_until is not None and state.read_at is not None
    assert 3540 < (state.throttled_until - state.read_at).total_seconds() <= 3601
    assert "unexpected" not in state.last_error
    assert sim.management.count("list") == 1
    await connector.poll()  # the next tick leaves the API alone
    assert sim.management.count("list") == 1


async def test_a_blob_listed_twice_in_one_page_is_queued_once(connector: ConnectorHarness) -> None:
    """The API lists one blob twice in a page: it is queued once, and the run goes on (two writes of one
    entity in one batch would fail the run, and every run after it, on the same page)."""
    from standins.management import format_timestamp

    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    workload = _publish(connector, seed=37, records=200, blob_size=(100, 100))
    listed = [
        {"contentType": blob.content_type, "contentId": content_id, "contentUri": sim.management.content_uri(content_id),
         "contentCreated": format_timestamp(blob.content_created),
         "contentExpiration": format_timestamp(blob.content_created + timedelta(days=7))}
        for content_id, blob in zip(workload.content_ids, workload.blobs, strict=True)
    ]  # fmt: skip
    sim.management.add_fault("list", "status", status=200, body=[listed[0], *listed])
    await connector.poll()
    assert await connector.queue_length() == len(listed)
    await connector.drain()
    _assert_exactly_once(connector, workload)


async def test_a_subscription_still_missing_after_its_start_fails_each_run_until_it_is_there(
    connector: ConnectorHarness,
) -> None:
    """The connector starts a missing subscription, but the API keeps answering AF20022 for a while: nothing of
    the content type is listed, so each such run fails and its health row says why (Errors 1, LastError), also
    while the start is given time to take; once listing works, every record arrives."""
    from irm_connector.errors import PollError

    sim = connector.standins
    sim.management.set_subscription("Audit.General", None)
    sim.management.add_fault("list", "status", status=400, code="AF20022", count=3)
    for _ in range(2):  # started, and still missing; then waiting for the start to take, still missing
        with pytest.raises(PollError, match="AF20022"):
            await connector.poll()
    rows = connector.rows("Custom-IRMConnectorHealth")
    assert [(r["Errors"], "AF20022" in r["LastError"]) for r in rows] == [(1, True), (1, True)]
    assert sim.management.count("start") == 1  # not started again in a loop
    # Published since the start (what came before it is never available), before the next run's window ends.
    started = datetime.now(UTC)
    await asyncio.sleep(2)
    workload = _publish(connector, seed=41, records=300, blob_size=(300, 300), start=started,
                        span=timedelta(milliseconds=500))  # fmt: skip
    await connector.poll()
    await connector.drain()
    _assert_exactly_once(connector, workload)


async def test_a_backfill_reaching_7_days_back_plans_each_content_type_when_its_turn_comes(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A backfill of the whole 7 days over two content types, the first taking 20 minutes: the second one's
    windows are planned when its turn comes, inside the API's 7 days of that moment. Planned with the first,
    its first window had slipped past them: refused, and nothing of that content type was listed. (The 20 minutes
    pass for the API and for the storage service, whose time the backfill plans by.)"""
    from irm_connector.backfill import backfill
    from irm_connector.models import ContentTypeReport

    sim = connector.standins
    for content_type in ("Audit.General", "Audit.Exchange"):
        sim.management.set_subscription(content_type, "enabled")
    moved = False

    with StorageProxy(connector.azurite) as proxy:
        connector.set(AzureWebJobsStorage=proxy.connection_string)
        rt = await get_runtime(Settings.from_env())

        def twenty_minutes_later(report: ContentTypeReport, planned: int) -> None:
            nonlocal moved
            if report.windows_listed == planned and not moved:  # the first content type is done
                moved = True
                sim.management.clock.advance(timedelta(minutes=20))
                # The next read, of the second content type's state, answers with the service's time then.
                proxy.add_fault("table.read", "date", date=datetime.now(UTC) + timedelta(minutes=20))

        now = datetime.now(UTC)
        report = await backfill(rt, now - timedelta(days=7), now, content_types=("Audit.General", "Audit.Exchange"),
                                on_progress=twenty_minutes_later)  # fmt: skip
        assert proxy.pending_faults() == 0
    assert moved and report.errors == []
    assert [r.windows_listed for r in report.content_types] == [7, 7]  # 7 days less the margin, by 24 hours
    # The 20 minutes the second one lost at the range's start are said: the command's first line names the range.
    [said] = [r.getMessage() for r in caplog.records if "moved on while" in r.getMessage()]
    assert said.startswith("Backfill of Audit.Exchange lists from ")


async def test_a_retry_after_a_backfill_meets_late_holds_the_next_content_types_back(
    connector: ConnectorHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first content type lists for 6 minutes, then the API asks for 5 minutes without requests (throttling is
    counted per tenant). The wait was counted from when that content type began, so it had already passed: the next
    content type was asked at once, inside it, and throttled again. (The 6 minutes pass for this machine, the API
    and the storage service alike.)"""
    from irm_connector.backfill import backfill
    from irm_connector.models import ContentTypeReport

    sim = connector.standins
    for content_type in ("Audit.General", "Audit.Exchange"):
        sim.management.set_subscription(content_type, "enabled")
    from irm_connector import backfill as backfill_module

    ahead = [timedelta(0)]
    skew_local_clock(monkeypatch, ahead, package="irm_connector.backfill")
    real_monotonic = time.monotonic
    monkeypatch.setattr(backfill_module, "monotonic", lambda: real_monotonic() + ahead[0].total_seconds())

    with StorageProxy(connector.azurite) as proxy:
        connector.set(AzureWebJobsStorage=proxy.connection_string)
        rt = await get_runtime(Settings.from_env())

        def six_minutes_later(report: ContentTypeReport, planned: int) -> None:
            if report.windows_listed == 1 and not ahead[0]:  # the first window listed: the next one is throttled
                ahead[0] = timedelta(minutes=6)
                sim.management.clock.advance(ahead[0])
                sim.management.add_fault("list", "status", status=429, retry_after=300)
                # The next read, of the second content type's state, answers with the service's time then.
                proxy.add_fault("table.read", "date", date=datetime.now(UTC) + ahead[0])

        now = datetime.now(UTC)
        with pytest.raises(PollError) as info:
            await backfill(rt, now - timedelta(days=2), now, content_types=("Audit.General", "Audit.Exchange"),
                           on_progress=six_minutes_later)  # fmt: skip
        assert proxy.pending_faults() == 0
    general, exchange = info.value.report.content_types
    assert general.windows_listed == 1 and "Retry-After 300 s" in general.error, general
    assert "no requests from this tenant until" in exchange.error, exchange
    assert not [r for r in sim.management.requests("list") if "Audit.Exchange" in str(r.query)]


@pytest.mark.parametrize("skew", [timedelta(hours=-1), timedelta(hours=3)], ids=["slow", "fast"])
async def test_a_backfill_of_7_days_on_a_clock_off_reaches_the_apis_7_day_edge(
    connector: ConnectorHarness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, skew: timedelta
) -> None:
    """A 7-day backfill on a machine whose clock is off plans by the storage service's time, as the poller does.
    An hour slow, its oldest window started past the API's 7 days and was refused; 3 hours fast, `--start` 7 days
    back was refused as too old and `--since 7d` started 3 hours inside the edge, leaving the oldest content out
    without a word."""
    from irm_connector.backfill import backfill

    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    oldest = datetime.now(UTC) - timedelta(days=7) + timedelta(minutes=30)
    workload = _publish(connector, seed=59, records=200, blob_size=(100, 100), start=oldest, span=timedelta(hours=1))
    rt = await get_runtime(Settings.from_env())
    skew_local_clock(monkeypatch, skew, package="irm_connector")
    with caplog.at_level(logging.WARNING, logger="irm_connector"):
        report = await backfill(rt, oldest - timedelta(minutes=20), datetime.now(UTC))
    assert report.errors == []
    assert ("behind" if skew < timedelta(0) else "ahead of") + " the storage service's" in caplog.text
    assert report.blobs_queued == len(workload.blobs)
    await connector.drain()
    _assert_exactly_once(connector, workload)


async def test_a_queue_refusing_the_identity_is_named_with_its_code(connector: ConnectorHarness) -> None:
    """The identity lacks its queue role: the poller's failure (log, health row, `status`) says which refusal,
    not only "HttpResponseError"."""
    from irm_connector.errors import PollError

    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    _publish(connector, seed=47, records=200, blob_size=(100, 100))
    with StorageProxy(connector.azurite) as proxy:
        connector.set(AzureWebJobsStorage=proxy.connection_string)
        proxy.add_fault("queue.put", "status", status=403, code="AuthorizationPermissionMismatch", count=100)
        with pytest.raises(PollError) as failed:
            await connector.poll()
    assert "cannot write to queue" in str(failed.value)
    assert "HttpResponseError (AuthorizationPermissionMismatch)" in str(failed.value)
    [row] = connector.rows("Custom-IRMConnectorHealth")
    assert "(AuthorizationPermissionMismatch)" in row["LastError"]


async def test_blobs_queued_by_a_run_that_failed_part_way_are_not_queued_again(connector: ConnectorHarness) -> None:
    """One queue put of a run is refused: the run fails, and its watermark stays. The blobs it did queue are
    remembered, so the next run queues only the one that failed, not every blob of the window a second time (a
    second message per blob, each downloaded and parsed again before the dedupe drops its rows)."""
    from irm_connector.errors import PollError

    workload = _publish(connector, seed=48, records=1000, blob_size=(100, 100))
    with StorageProxy(connector.azurite) as proxy:
        connector.set(AzureWebJobsStorage=proxy.connection_string)
        proxy.add_fault("queue.put", "status", status=403, code="AuthorizationPermissionMismatch")
        with pytest.raises(PollError):
            await connector.poll()
        assert proxy.pending_faults() == 0
        await connector.poll()
        assert await connector.queue_length() == len(workload.blobs)
        stats = await connector.drain()
    assert stats.processed == len(workload.blobs)
    _assert_exactly_once(connector, workload)


async def _cancel_while_the_last_put_hangs(connector: ConnectorHarness, proxy: StorageProxy, blobs: int) -> None:
    """A poller run that queues ``blobs`` blobs, cancelled while the proxy holds the last queue put (never
    forwarded), after the others were answered."""
    hung = proxy.hold("queue.put", skip=blobs - 1)
    polling = asyncio.create_task(connector.poll())
    for _ in range(3000):
        if hung.arrived.is_set() and proxy.count("queue.put", status=201) == blobs - 1:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the last queue put never arrived")
    # The other puts' answers reach the poller (this loop) before it is cancelled. Nothing outside the poller
    # tells when (the proxy counts an answer sent, not read): time to spare on a machine under load.
    await asyncio.sleep(2.0)
    polling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await polling
    hung.release(forward=False)


async def test_blobs_queued_by_a_cancelled_run_are_not_queued_again(connector: ConnectorHarness) -> None:
    """A run cancelled (Ctrl-C, SIGTERM, a lost lease) while a queue put hangs: the blobs it had queued are
    remembered on the way out, as for a put that fails, so the next run queues only the one left, not a second
    message for each."""
    workload = _publish(connector, seed=49, records=500, blob_size=(100, 100))
    blobs = len(workload.blobs)
    with StorageProxy(connector.azurite) as proxy:
        connector.set(AzureWebJobsStorage=proxy.connection_string)
        await _cancel_while_the_last_put_hangs(connector, proxy, blobs)
        assert await connector.queue_length() == blobs - 1
        await connector.poll()
        assert await connector.queue_length() == blobs  # before: 2 * blobs - 1
        stats = await connector.drain()
    assert stats.processed == blobs
    _assert_exactly_once(connector, workload)


async def test_a_cancelled_run_that_cannot_mark_its_queued_blobs_says_so_and_is_still_cancelled(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """Cancelled while a queue put hangs, with the marks of the blobs it queued refused: the run ends cancelled (the
    marks' failure does not replace the cancel), and one warning says how many blobs the next run queues again."""
    blobs = len(_publish(connector, seed=51, records=500, blob_size=(100, 100)).blobs)
    with StorageProxy(connector.azurite) as proxy, caplog.at_level(logging.WARNING, logger="irm_connector"):
        connector.set(AzureWebJobsStorage=proxy.connection_string)
        proxy.add_fault("table.batch", "status", status=403, code="AuthorizationPermissionMismatch", count=100)
        await _cancel_while_the_last_put_hangs(connector, proxy, blobs)
    told = [r.getMessage() for r in caplog.records if "it queued are not marked" in r.getMessage()]
    assert len(told) == 1 and f"the {blobs - 1} blob(s)" in told[0] and "queues them again" in told[0], told
    assert "AuthorizationPermissionMismatch" in told[0]


async def test_a_run_cancelled_while_it_marks_its_queued_blobs_marks_them_all(connector: ConnectorHarness) -> None:
    """A cancel (a lost lease, SIGTERM) that came while the run wrote the marks of the blobs it had queued cut
    that batch: every blob was on the queue and none marked, and the next run queued each one again."""
    workload = _publish(connector, seed=50, records=500, blob_size=(100, 100))
    blobs = len(workload.blobs)
    with StorageProxy(connector.azurite) as proxy:
        connector.set(AzureWebJobsStorage=proxy.connection_string)
        marks = proxy.hold("table.batch")
        polling = asyncio.create_task(connector.poll())
        for _ in range(3000):
            if marks.arrived.is_set():
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the marks' batch never arrived")
        assert await connector.queue_length() == blobs
        polling.cancel()
        await asyncio.sleep(0.2)  # the cancel reaches the run while its batch is held
        marks.release(forward=True)
        with pytest.raises(asyncio.CancelledError):
            await polling
        await connector.poll()
        assert await connector.queue_length() == blobs  # before: 2 * blobs
        stats = await connector.drain()
    assert stats.processed == blobs
    _assert_exactly_once(connector, workload)


async def test_a_table_creation_and_an_upsert_batch_ride_out_a_connection_reset(connector: ConnectorHarness) -> None:
    """azure-core retries no POST that got no answer, whatever ``retry_connect`` says: a table's creation (every
    new day table, every cold start) and the batch that marks queued blobs failed at one reset, the creation
    failing the invocation, the batch a poll whose messages were already queued (the next run queued them again).
    Both may be sent twice, and are retried as any other call."""
    with StorageProxy(connector.azurite) as proxy:
        connector.set(AzureWebJobsStorage=proxy.connection_string)
        tables = (await get_runtime(Settings.from_env())).state.tables
        name = tables.name("resets")
        proxy.add_fault("table.write", "reset", count=2)  # POST /Tables: the creation
        await tables.table(name)
        proxy.add_fault("table.batch", "reset", count=2)
        await tables.write_batches(name, [("upsert", {"PartitionKey": "p", "RowKey": f"r{i}"}) for i in range(3)])
        assert proxy.pending_faults() == 0
    from azure.data.tables.aio import TableClient

    async with TableClient.from_connection_string(connector.azurite.connection_string, name) as table:
        assert sorted([e["RowKey"] async for e in table.list_entities()]) == ["r0", "r1", "r2"]


async def test_a_queue_being_deleted_is_not_taken_for_one_that_exists(connector: ConnectorHarness) -> None:
    """Azure answers a queue's creation 409 QueueBeingDeleted for about 40 s after its delete (Azurite deletes at
    once). Every 409 was taken for "it exists": the creation counted as done, and the write after it failed on a
    queue that was not there, saying nothing of why. The creation fails, saying so, and the next one creates it."""
    from irm_connector.content_queue import create_queue_if_missing
    from irm_connector.errors import StateError

    with StorageProxy(connector.azurite) as proxy:
        connector.set(AzureWebJobsStorage=proxy.connection_string)
        queue = (await get_runtime(Settings.from_env())).queue.main
        proxy.add_fault("queue.admin", "status", status=409, code="QueueBeingDeleted")
        with pytest.raises(StateError, match=r"QueueBeingDeleted.*about 40 s"):
            await create_queue_if_missing(queue)
        await create_queue_if_missing(queue)
    async with connector.queue_client() as created:
        await created.get_queue_properties()  # there: a missing queue raises ResourceNotFoundError


async def test_a_content_queue_deleted_under_a_warm_worker_is_created_again(connector: ConnectorHarness) -> None:
    """An operator deletes the content queue (to clear a backlog) while a worker runs: the worker's next poll
    creates it again and queues what is new, rather than failing every run until the worker restarts."""
    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    _publish(connector, seed=53, records=200, blob_size=(100, 100))
    await connector.poll()
    async with connector.queue_client() as queue:
        await queue.delete_queue()
    recent = datetime.now(UTC) - timedelta(minutes=50)
    later = _publish(connector, seed=54, records=200, blob_size=(100, 100), start=recent, span=timedelta(minutes=30))
    await connector.poll()
    assert await connector.queue_length() == len(later.blobs)
    await connector.drain()
    _assert_exactly_once(connector, later)


async def test_a_retry_after_that_is_no_number_of_seconds_is_ridden_out(connector: ConnectorHarness) -> None:
    """A Retry-After of "1e999" or "nan" (a broken proxy's) is no wait at all: the calls back off as without
    one, instead of the arithmetic on it failing the run."""
    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    workload = _publish(connector, seed=55, records=200, blob_size=(100, 100))
    sim.management.add_fault("list", "status", status=429, retry_after="1e999")
    sim.management.add_fault("content", "status", status=503, retry_after="nan")
    await connector.poll()
    stats = await connector.drain()
    assert stats.poisoned == 0 and stats.failed_attempts == 0
    assert sim.management.pending_faults() == 0
    _assert_exactly_once(connector, workload)


async def test_a_state_table_out_of_reach_leaves_the_lag_growing_in_the_health_row(connector: ConnectorHarness) -> None:
    """Storage refuses the state table: the run fails and cannot read the watermark, and its health row still
    carries the last one the worker knew, so Sentinel sees the lag grow instead of a blank."""
    from irm_connector.errors import PollError

    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    _publish(connector, seed=53, records=200, blob_size=(100, 100))
    with StorageProxy(connector.azurite) as proxy:
        connector.set(AzureWebJobsStorage=proxy.connection_string)
        await connector.poll()
        for route in ("table.read", "table.write", "table.batch"):
            proxy.add_fault(route, "status", status=403, code="AuthorizationPermissionMismatch", count=100)
        with pytest.raises(PollError):
            await connector.poll()
    first, second = connector.rows("Custom-IRMConnectorHealth")
    assert second["Errors"] == 1 and "AuthorizationPermissionMismatch" in second["LastError"]
    assert first["Watermark"] and second["Watermark"] == first["Watermark"]
    assert second["LagSeconds"] >= first["LagSeconds"]


async def test_a_token_request_entra_id_never_answers_gives_up_after_http_timeout(
    connector: ConnectorHarness,
) -> None:
    """Outside an invocation (the command line) nothing else bounds it: msal applies no timeout to the session
    it is given, so the session has one, and a silent Entra ID is reported as unreachable."""
    from irm_connector.auth import MsalTokenProvider
    from irm_connector.errors import AuthenticationError

    connector.set(HTTP_TIMEOUT="2s")
    connector.standins.entra.add_fault("token", "delay", seconds=30)
    tokens = MsalTokenProvider(Settings.from_env())
    with pytest.raises(AuthenticationError) as failed:
        await asyncio.wait_for(tokens.get_token(), 20)
    assert failed.value.transient and "(no answer (timed out))" in str(failed.value)


async def test_a_redirected_token_request_carries_no_netrc_login(
    connector: ConnectorHarness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A token request redirected to another host (a proxy's or gateway's doing; Entra ID itself does not): requests
    looks up ``.netrc`` for the new host as it follows a redirect, and sent that login with the app's own secret."""
    from urllib.parse import urlsplit, urlunsplit

    from irm_connector.auth import MsalTokenProvider

    sim = connector.standins
    token_url = urlsplit(sim.entra.token_endpoint(sim.tenant_id))
    other = "localhost" if token_url.hostname == "127.0.0.1" else "127.0.0.1"
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine {other} login operator password not-for-microsoft\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    moved = urlunsplit(token_url._replace(netloc=f"{other}:{token_url.port}"))
    sim.entra.add_fault("token", "status", status=307, location=moved)
    token = await MsalTokenProvider(Settings.from_env()).get_token()
    assert sim.tokens.validate(token, Settings.from_env().api_audience) is not None
    hosts = [(r.host.rsplit(":", 1)[0], r.status, r.auth_scheme) for r in sim.entra.requests() if r.route == "token"]
    assert hosts == [(token_url.hostname, 307, None), (other, 200, None)], hosts


class _ConnectProxy:
    """An explicit HTTPS proxy, as a corporate network has: it tunnels each CONNECT and remembers its target."""
    def __init__(self) -> None:
        self.targets: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method, target, _ = (await reader.readline()).decode().split()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        assert method == "CONNECT"
        self.targets.append(target)
        host, port = target.rsplit(":", 1)
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True)


@pytest.mark.parametrize("proxy_scheme", ["http", "https"])
async def test_an_explicit_https_proxy_carries_the_connectors_calls(
    connector: ConnectorHarness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, proxy_scheme: str
) -> None:
    """``HTTPS_PROXY`` set, as behind a corporate proxy, on a machine whose ``.netrc`` has a ``default`` login
    (for a package feed, say): the Management API and Logs Ingestion are reached through the proxy (the aiohttp
    sessions ignored it, while msal followed it), every alert arrives, and the ``.netrc`` login goes to no
    Microsoft service (aiohttp, trusting the environment, refused every request: it cannot send that login
    beside a bearer token; requests sent it to Entra ID with msal's token requests).

    A proxy spoken to over TLS (``https://``, its certificate from the CA bundle the connector trusts) carries
    every client's calls too: only msal's went through it, the rest went straight to the services, which a
    network that lets out only its proxy refuses."""
    from urllib.parse import urlsplit

    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    workload = _publish(connector, seed=53, records=300, blob_size=(300, 300))
    proxy = _ConnectProxy()
    tls = sim.ca.server_context() if proxy_scheme == "https" else None
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0, ssl=tls)
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("default login operator password not-for-microsoft\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    connector.set(HTTPS_PROXY=f"{proxy_scheme}://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        await connector.poll()
        await connector.drain()
    finally:
        await connector.close()  # the sessions' tunnels, before the proxy goes
        server.close()
    _assert_exactly_once(connector, workload)
    tunnelled = set(proxy.targets)
    assert urlsplit(sim.api_root).netloc in tunnelled
    assert urlsplit(connector.env["LOGS_INGESTION_ENDPOINT"]).netloc in tunnelled
    assert urlsplit(sim.authority_host).netloc in tunnelled
    schemes = {(name, r.auth_scheme) for name in ("entra", "management", "ingestion")
               for r in getattr(sim, name).requests()}  # fmt: skip
    assert not {found for found in schemes if found[1] == "Basic"}, schemes


async def test_a_certificate_file_gone_after_the_settings_were_read_is_named(
    connector: ConnectorHarness, tmp_path: Path
) -> None:
    """The settings check found a file at O365_CLIENT_CERTIFICATE_PATH; gone or unreadable when the credential is
    read (a rotation that removes it first), it was a bare OSError naming no setting."""
    pem = tmp_path / "connector.pem"
    pem.write_bytes(connector.standins.certificate_path.read_bytes())
    connector.set(O365_AUTH_MODE="certificate", O365_CLIENT_SECRET="", O365_CLIENT_CERTIFICATE_PATH=str(pem))
    from irm_connector.auth import MsalTokenProvider

    settings = Settings.from_env()
    pem.unlink()
    with pytest.raises(SettingsError) as info:
        MsalTokenProvider(settings)
    assert info.value.setting == "O365_CLIENT_CERTIFICATE_PATH" and "cannot be read" in str(info.value)


async def test_a_certificate_that_does_not_load_is_logged_by_both_triggers(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A certificate the settings check passes but that does not load (a wrong password, a rotated Key Vault
    certificate): each invocation failed with the setting's error, which only the host logged, and as deployed
    (OpenTelemetry on in the worker) the host sends Application Insights no line for a failed invocation: every
    message went to the poison queue with no reason anywhere. Each trigger logs it, naming the setting."""
    connector.set(O365_AUTH_MODE="certificate", O365_CLIENT_SECRET="",
                  O365_CLIENT_CERTIFICATE=base64.b64encode(b"not a certificate").decode())  # fmt: skip
    workload = _publish(connector, seed=17, records=200, blob_size=(200, 200))
    [message] = _messages_for(connector, workload)
    with caplog.at_level(logging.ERROR, logger="irm_connector"):
        with pytest.raises(SettingsError):
            await connector.poll()
        with pytest.raises(SettingsError):
            await connector.process(message)
    started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("The connector could not start")]
    assert len(started) == 2, caplog.text
    assert all("O365_CLIENT_CERTIFICATE" in line for line in started)


async def test_a_certificate_without_an_rsa_key_is_a_settings_error(connector: ConnectorHarness, tmp_path: Path) -> None:
    """Key Vault issues EC certificates too; Entra ID signs in with RSA ones only. msal failed at the first token
    with "Some algorithms requires pip install cryptography" and an unexpected InvalidKeyError, naming no setting."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from irm_connector.auth import MsalTokenProvider

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "irm-connector")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + timedelta(days=30)).sign(key, hashes.SHA256()))  # fmt: skip
    pem = tmp_path / "ec.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM))  # fmt: skip
    connector.set(O365_AUTH_MODE="certificate", O365_CLIENT_SECRET="", O365_CLIENT_CERTIFICATE_PATH=str(pem))
    with pytest.raises(SettingsError) as info:
        MsalTokenProvider(Settings.from_env())
    assert info.value.setting == "O365_CLIENT_CERTIFICATE_PATH"
    assert str(info.value).endswith("holds an EC key: Entra ID accepts certificates with an RSA key only (in Key Vault, "
                                    "key type RSA)")


async def test_a_certificate_file_without_its_key_s_certificate_is_a_settings_error(
    connector: ConnectorHarness, tmp_path: Path
) -> None:
    """A PEM whose certificates are all others' (the CA's, an old app's) beside the key: the first one's thumbprint
    was sent, and Entra ID refused every token as a certificate the app does not have, the setting unnamed."""
    from irm_connector.auth import MsalTokenProvider

    sim = connector.standins
    own = sim.certificate_path.read_bytes()
    key_only = own[: own.index(b"-----BEGIN CERTIFICATE")]
    pem = tmp_path / "mismatched.pem"
    pem.write_bytes(key_only + sim.ca_path.read_bytes())
    connector.set(O365_AUTH_MODE="certificate", O365_CLIENT_SECRET="", O365_CLIENT_CERTIFICATE_PATH=str(pem))
    with pytest.raises(SettingsError) as info:
        MsalTokenProvider(Settings.from_env())
    assert info.value.setting == "O365_CLIENT_CERTIFICATE_PATH"
    assert "holds no certificate of its private key" in str(info.value)


async def test_token_waiters_cut_short_while_entra_answers_slowly_share_one_request(connector: ConnectorHarness) -> None:
    """Entra ID answers a token request slowly. Each waiter is cut short by its own deadline, which freed the
    provider's lock but not the thread msal ran in: the next waiter started another request beside it, and every
    such thread held one of the loop's few, which DNS lookups and the bodies' compression wait for. The waiters
    now share the request under way; the next one after it gets its token."""
    from irm_connector.auth import MsalTokenProvider
    from irm_connector.deadline import within
    from irm_connector.errors import DeadlineError

    sim = connector.standins
    provider = MsalTokenProvider(Settings.from_env())
    sim.entra.add_fault("token", "delay", count=1, seconds=3)
    for _ in range(4):
        with pytest.raises(DeadlineError):
            await within("a token", provider.get_token(), deadline=Deadline(time.monotonic() + 0.5))
    assert await provider.get_token()
    assert sim.entra.count("token") == 1
    assert await provider.get_token(refresh=True)  # a refresh drops msal's cached token: a request of its own
    assert sim.entra.count("token") == 2


async def test_clients_that_cannot_be_built_leave_no_session_open(
    connector_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A setting azure-identity refuses (AZURE_TOKEN_CREDENTIALS with a misspelt credential) fails the build after
    its two connection pools exist: nothing closed them, and each failed invocation logged two "Unclosed client
    session" errors beside the one line that says what is wrong."""
    import gc

    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "managedidentity")  # ManagedIdentityCredential, misspelt
    for _ in range(2):
        with pytest.raises(ValueError, match="AZURE_TOKEN_CREDENTIALS"):
            await get_runtime(Settings.from_env())
        gc.collect()
        await asyncio.sleep(0)
    assert not [r for r in caplog.records if "Unclosed" in r.getMessage()], caplog.text
