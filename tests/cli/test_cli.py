"""Every command of ``irm-connector`` against Azurite and the stand-ins: output and exit code."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pty
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from irm_connector.cli import _progress
from standins.azurite import Azurite
from standins.storage_proxy import StorageProxy
from standins.workload import generate_workload
from tests.cli.conftest import REPO, Cli
from tests.harness import let_the_api_wait_pass, record_api_wait

COMMANDS = [
    ["status"],
    ["poll"],
    ["process"],
    ["run"],
    ["backfill"],
    ["poison"],
    ["poison", "list"],
    ["poison", "requeue"],
    ["poison", "purge"],
    ["subscriptions"],
    ["subscriptions", "list"],
    ["subscriptions", "start"],
    ["subscriptions", "stop"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(cli: Cli, command: list[str]) -> None:
    code, out, _ = cli.run(*command, "--help")
    assert code == 0
    assert out.startswith("usage: irm-connector " + " ".join(command))
    if command not in (["poison"], ["subscriptions"]):
        assert "exit codes:" in out and "130  interrupted" in out  # every code README and operations.md list


def test_top_level_help_lists_the_commands(cli: Cli) -> None:
    code, out, _ = cli.run("--help")
    assert code == 0
    for name in ("status", "poll", "process", "run", "backfill", "poison", "subscriptions"):
        assert f"    {name}" in out
    code, _, err = cli.run("no-such-command")
    assert code == 2 and "invalid choice" in err


def test_settings_error_names_the_setting_and_exits_2(cli: Cli) -> None:
    cli.monkeypatch.delenv("LOGS_DCR_IMMUTABLE_ID")
    code, out, err = cli.run("status")
    assert code == 2
    assert out == ""
    assert "LOGS_DCR_IMMUTABLE_ID" in err and "Traceback" not in err


def test_every_bad_setting_a_command_reads_is_named_in_one_run(cli: Cli) -> None:
    """The connector's settings, the host's queue overrides and `run`'s POLL_SCHEDULE were checked one group at a
    time: an operator fixing them met HTTP_TIMEOUT, then POLL_SCHEDULE, then batchSize, one run each."""
    cli.set(HTTP_TIMEOUT="soon", POLL_SCHEDULE="every five minutes",
            AzureFunctionsJobHost__extensions__queues__batchSize="0")  # fmt: skip
    code, doc = cli.json("run")
    assert code == 2, doc
    named = {problem["setting"] for problem in doc["error"]["settings"]}
    assert named == {"HTTP_TIMEOUT", "POLL_SCHEDULE", "AzureFunctionsJobHost__extensions__queues__batchSize"}
    code, doc = cli.json("process")  # no POLL_SCHEDULE there: `process` does not read it
    assert code == 2 and {p["setting"] for p in doc["error"]["settings"]} == named - {"POLL_SCHEDULE"}


def test_a_malformed_storage_connection_string_is_a_settings_error_not_an_internal_one(cli: Cli) -> None:
    """The storage SDKs refuse it at the first call, which read as "unexpected ValueError ... report it"."""
    cli.set(AzureWebJobsStorage="AccountName=devstoreaccount1;QueueEndpoint=http://127.0.0.1:1/devstoreaccount1")
    code, out, err = cli.run("status")
    assert code == 2 and out == ""
    assert err.startswith("settings error: setting AzureWebJobsStorage:") and "report it" not in err


def test_poll_process_status_round_trip(cli: Cli) -> None:
    sim = cli.standins
    workload = generate_workload(
        seed=11, total_records=1200, blob_size=(200, 400), irm_share=0.05, tenant_id=sim.tenant_id
    )
    workload.publish(sim.management)

    # Never polled: unhealthy, and says why.
    code, doc = cli.json("status")
    assert code == 1 and doc["healthy"] is False
    assert {p["code"] for p in doc["problems"]} == {"never-polled"}

    code, doc = cli.json("poll")
    assert code == 0, doc
    assert doc["ok"] is True and doc["blobs_queued"] == len(workload.blobs)
    assert cli.depth() == len(workload.blobs)

    code, doc = cli.json("status")
    assert code == 0, doc["problems"]
    assert doc["healthy"] is True and doc["problems"] == []
    (row,) = doc["content_types"]
    assert row["content_type"] == "Audit.General" and row["subscription"] == "enabled"
    assert row["lag_seconds"] < 120 and row["watermark"].endswith("Z")
    assert doc["queue"]["name"] == cli.queue and doc["queue"]["depth"] == len(workload.blobs)
    assert doc["queue"]["oldest_seconds"] < 120
    assert doc["poison_queue"]["depth"] == 0

    code, doc = cli.json("process", "--max", "1")
    assert code == 0 and doc["processed"] == 1 and doc["remaining"] == len(workload.blobs) - 1

    code, out, _ = cli.run("process")
    assert code == 0
    assert f"{len(workload.blobs) - 1} message(s) processed" in out and "0 left on the queue" in out
    assert sorted(r["RecordId"] for r in cli.rows()) == sorted(set(workload.irm_alert_record_ids))

    code, out, _ = cli.run("status")
    assert code == 0
    assert "HEALTHY" in out and "UNHEALTHY" not in out and "Audit.General" in out

    # A subscription an admin disabled, and a watermark older than --max-lag: unhealthy, exit 1. The lag is by the
    # storage service's Date, in whole seconds: within the second of the poll's watermark it is 0, not lagging.
    time.sleep(1.1)
    sim.management.set_subscription("Audit.General", "disabled")
    code, doc = cli.json("status", "--max-lag", "0s")
    assert code == 1
    assert {p["code"] for p in doc["problems"]} == {"subscription-not-enabled", "lagging"}
    code, out, _ = cli.run("status", "--max-lag", "0s")
    assert code == 1 and "UNHEALTHY" in out and "[lagging]" in out and "[subscription-not-enabled]" in out


def test_status_reports_the_last_error_and_an_unreachable_api(cli: Cli) -> None:
    cli.standins.management.set_subscription("Audit.General", "enabled")
    cli.standins.management.set_audit_enabled(False)  # every call: AF20011, an operator must act
    code, doc = cli.json("poll")
    assert code == 1 and doc["ok"] is False
    assert "AF20011" in doc["content_types"][0]["error"]
    code, doc = cli.json("status")
    assert code == 1
    assert {p["code"] for p in doc["problems"]} == {"never-polled", "last-error", "api-error"}
    assert "AF20011" in doc["content_types"][0]["last_error"]

    # The Management API not answering at all: exit 3.
    cli.standins.management.set_audit_enabled(True)
    cli.set(O365_API_ROOT="https://127.0.0.1:1")
    code, doc = cli.json("status")
    assert code == 3
    assert "api-unreachable" in {p["code"] for p in doc["problems"]}
    assert doc["content_types"][0]["subscription"] == "unknown"


def test_poll_and_backfill_exit_3_when_the_api_only_answers_with_faults(cli: Cli) -> None:
    """The Management API answers 503 to every listing: a dependency not reached, as `status` and `subscriptions`
    report it (exit 3: run it again later), not the work failing for a reason to fix (exit 1)."""
    cli.standins.management.set_subscription("Audit.General", "enabled")
    cli.standins.management.add_fault("list", "status", status=503, count=1000)
    code, doc = cli.json("poll")
    assert code == 3 and doc["ok"] is False
    assert "server fault" in doc["content_types"][0]["error"]
    assert "on the command line, run it again" in doc["content_types"][0]["error"]  # no host retries a CLI run
    code, doc = cli.json("backfill", "--since", "1h", "--no-process")
    assert code == 3 and doc["ok"] is False


def test_storage_unreachable_exits_3(cli: Cli) -> None:
    cli.set(
        AzureWebJobsStorage="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "QueueEndpoint=http://127.0.0.1:1/devstoreaccount1;TableEndpoint=http://127.0.0.1:1/devstoreaccount1;"
    )
    code, out, err = cli.run("status")
    assert code == 3, err
    assert out == "" and err.startswith("error:") and "Traceback" not in err


def test_a_backfill_range_wrong_by_itself_is_a_usage_error_before_any_call(cli: Cli) -> None:
    """An empty range or one clearly past the API's 7 days was told only after the storage and token checks: with
    storage out of reach, the operator heard about storage (exit 3), not about the range they typed."""
    cli.set(
        AzureWebJobsStorage="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "QueueEndpoint=http://127.0.0.1:1/devstoreaccount1;TableEndpoint=http://127.0.0.1:1/devstoreaccount1;"
    )
    for argv, says in (
        (("--start", "2026-06-01T00:00:00Z", "--end", "2026-05-01T00:00:00Z"), "the range is empty"),
        (("--since", "0s"), "--since 0s is an empty range"),
        (("--start", "2020-01-01T00:00:00Z"), "is more than 7 days back"),
        (("--start", "2099-01-01T00:00:00Z"), "the range starts in the future (2099-01-01T00:00:00Z"),
    ):
        code, doc = cli.json("backfill", *argv)
        assert code == 2 and doc["error"]["code"] == "usage" and says in doc["error"]["message"], doc
    assert cli.standins.management.count() == 0


def test_process_says_in_text_how_many_blobs_were_lost(cli: Cli) -> None:
    """A blob gone from the API before it was processed (expired, or vanished): its records are lost. The JSON
    document counted it among the outcomes, but the text summary said only "3 message(s) processed" and the rows
    sent, as if every blob had arrived."""
    sim = cli.standins
    workload = cli.publish(seed=47, records=300, blob_size=(100, 100))
    assert cli.run("poll")[0] == 0
    gone = workload.blobs[0]
    [content_id] = [b.content_id for b in sim.management.blobs("Audit.General") if b.records == gone.records]
    sim.management.remove_blob(content_id)
    code, out, _ = cli.run("process")
    assert code == 0, out  # nothing to retry: the loss is told, not failed on
    assert "1 blob(s) lost: gone from the Management API before they were processed" in out, out
    assert "3 message(s) processed" in out


def test_status_is_unhealthy_while_logs_ingestion_refuses_a_stream(cli: Cli) -> None:
    """The DCR refuses the alerts stream (the role removed): the poller runs clean, the messages are rescheduled
    rather than poisoned for 2 hours, and `status` said HEALTHY (exit 0) while no row reached Sentinel."""
    sim = cli.standins
    cli.publish(seed=41, records=400, blob_size=(200, 200))
    sim.ingestion.add_fault("ingest", "status", status=403, count=10_000)
    assert cli.run("poll")[0] == 0
    assert cli.run("process")[0] == 1  # put back for later, and stopped
    code, doc = cli.json("status")
    assert code == 1 and doc["healthy"] is False
    refused = [p["detail"] for p in doc["problems"] if p["code"] == "ingestion-refused"]
    assert any("Custom-IRMAlerts" in detail and "HTTP 403" in detail for detail in refused), refused
    assert cli.rows() == []


def test_status_is_unhealthy_while_the_processor_does_not_keep_up(cli: Cli) -> None:
    """The poller lists on and moves the watermark while nothing works the queue (the processor stopped, too few
    instances, throttling put-offs): `status` said HEALTHY (exit 0) with a day-old backlog, while the analytics
    rule on the health row's OldestQueuedSeconds fired."""
    workload = cli.publish(seed=43, records=300, blob_size=(100, 100))
    assert cli.run("poll")[0] == 0
    code, doc = cli.json("status")
    assert code == 0, doc["problems"]  # just queued
    assert cli.age_messages(timedelta(days=1)) == 3
    assert cli.run("poll")[0] == 0  # the poller keeps up: the watermark is fresh
    code, out, _ = cli.run("status")
    assert code == 1 and "UNHEALTHY" in out
    assert "[backlog]" in out and "queued 1d0h ago (more than 2h)" in out, out
    code, doc = cli.json("status")
    assert [p["code"] for p in doc["problems"]] == ["backlog"] and doc["queue"]["oldest_seconds"] >= 86400
    # Worked off, it is healthy again, every alert in Sentinel.
    assert cli.run("process")[0] == 0
    code, doc = cli.json("status")
    assert code == 0 and doc["queue"] == {"name": cli.queue, "depth": 0, "oldest_seconds": 0}, doc
    assert sorted(r["RecordId"] for r in cli.rows()) == sorted(set(workload.irm_alert_record_ids))


def test_status_says_when_no_queued_message_is_visible(cli: Cli) -> None:
    """Every message on the queue invisible (put off for a throttle or a refusing DCR, or held by processors):
    `status` read the oldest as queued 0 s ago, a backlog that looked just queued. It says none is visible."""
    from azure.storage.queue import QueueClient

    cli.publish(seed=44, records=300, blob_size=(100, 100))
    assert cli.run("poll")[0] == 0
    with QueueClient.from_connection_string(cli.azurite.connection_string, cli.queue) as queue:
        held = list(queue.receive_messages(max_messages=32, visibility_timeout=300))
    assert len(held) == 3
    _, out, _ = cli.run("status")
    assert f"queue {cli.queue}: 3 message(s), none visible now (put off for later, or being processed)" in out, out
    _, doc = cli.json("status")
    assert doc["queue"] == {"name": cli.queue, "depth": 3, "oldest_seconds": None}, doc["queue"]


def test_a_requeued_message_counts_as_queued_when_it_was_requeued(cli: Cli) -> None:
    """`poison requeue` kept each message's queuedAt: right after sending back a message parked days ago, `status`
    reported a backlog of days (exit 1), and the analytics rule on OldestQueuedSeconds fired, for a message the
    operator had queued a minute before. Its age in the queue starts again when it is sent back."""
    workload = cli.publish(seed=53, records=200, blob_size=(200, 200), irm_share=0.1)
    assert cli.run("poll")[0] == 0
    assert cli.age_messages(timedelta(days=5)) == 1
    assert cli.park() == 1
    code, doc = cli.json("poison", "requeue", "--all")
    assert code == 0 and len(doc["requeued"]) == 1
    code, doc = cli.json("status")
    assert code == 0, doc["problems"]
    assert doc["queue"]["depth"] == 1 and doc["queue"]["oldest_seconds"] < 600, doc["queue"]
    assert cli.run("process")[0] == 0
    assert sorted(r["RecordId"] for r in cli.rows()) == sorted(set(workload.irm_alert_record_ids))


def test_status_judges_the_lag_by_the_storage_service_s_clock(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """The poller moves the watermark by the services' time; `status` measured the lag on this machine's clock:
    three hours fast, a watermark just moved read "lagging 3h" (exit 1); slow, a real lag hid behind it."""
    from tests.clock import skew_local_clock

    cli.standins.management.set_subscription("Audit.General", "enabled")
    assert cli.run("poll")[0] == 0
    skew_local_clock(monkeypatch, timedelta(hours=3), package="irm_connector")
    code, doc = cli.json("status")
    assert code == 0, doc["problems"]
    assert doc["content_types"][0]["lag_seconds"] < 15 * 60


def test_status_judges_a_held_lease_by_the_storage_service_s_clock(cli: Cli) -> None:
    """A poller whose clock is 3 hours fast writes its LeaseUntil 3 hours ahead. The lease runs out 60 s after its
    last write by the storage service's clock, as every poller judges it; `status` said it was held for 3 hours."""
    from irm_connector.runtime import close_runtimes, get_runtime
    from irm_connector.settings import Settings

    cli.standins.management.set_subscription("Audit.General", "enabled")
    assert cli.run("poll")[0] == 0

    async def held_by_a_fast_clock() -> None:
        rt = await get_runtime(Settings.from_env())
        try:
            watermarks = rt.state.watermarks
            state = await watermarks.get_state(rt.settings.tenant_id, "Audit.General")
            await watermarks.upsert_state(replace(state, lease_owner="elsewhere", lease_seconds=60,
                                                  lease_until=datetime.now(UTC) + timedelta(hours=3)))  # fmt: skip
        finally:
            await close_runtimes()

    asyncio.run(held_by_a_fast_clock())
    held = cli.json("status")[1]["content_types"][0]["lease_until"]
    assert held is not None
    assert datetime.fromisoformat(held.replace("Z", "+00:00")) - datetime.now(UTC) <= timedelta(seconds=61)


def test_status_while_the_api_asks_the_tenant_to_wait_says_until_when_and_asks_nothing(cli: Cli) -> None:
    """A Retry-After of 15 minutes, met by the poller: every instance keeps it. `status` asked for the subscriptions
    all the same, to an error it called the API unreachable (exit 3); it says until when the connector waits."""
    sim = cli.standins
    sim.management.set_subscription("Audit.General", "enabled")
    sim.management.add_fault("list", "status", status=429, retry_after=900, count=1)
    assert cli.json("poll")[0] == 3
    asked = sim.management.count("subscriptions")
    code, doc = cli.json("status")
    assert sim.management.count("subscriptions") == asked
    waits = datetime.fromisoformat(doc["api_waits_until"].replace("Z", "+00:00")) - datetime.now(UTC)
    assert timedelta(minutes=13) < waits <= timedelta(minutes=15)
    assert doc["content_types"][0]["subscription"] == "unknown"
    assert [p["code"] for p in doc["problems"]] == ["never-polled", "last-error"], doc["problems"]  # no API fault
    assert code == 1
    _, out, _ = cli.run("status")
    assert "the Management API asked the tenant to wait (Retry-After): no request to it until" in out, out


def test_a_command_waiting_out_a_short_tenant_wait_says_so(cli: Cli) -> None:
    """Another instance met a Retry-After, recorded for the tenant, 10 s of it left. `subscriptions` waits it out
    before asking, and says so once: it sat silent through it (told at INFO, which the command line does not
    show)."""
    sim = cli.standins
    sim.management.set_subscription("Audit.General", "enabled")
    assert cli.run("subscriptions", "list")[0] == 0  # the budget's entity exists
    asyncio.run(record_api_wait(cli.azurite.connection_string, cli.env, 10))  # waits of 3 s or less go untold
    asked = sim.management.count("subscriptions")
    code, _, err = cli.run("subscriptions", "list")
    told = [line for line in err.splitlines() if "the API asked the tenant to wait" in line]
    assert code == 0 and len(told) == 1 and " WARNING " in told[0], err
    assert sim.management.count("subscriptions") == asked + 1


def test_status_as_a_subprocess(cli: Cli) -> None:
    cli.standins.management.set_subscription("Audit.General", "enabled")
    done = cli.subprocess("poll")
    assert done.returncode == 0, done.stderr
    done = cli.subprocess("status", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["healthy"] is True and doc["tenant_id"] == cli.standins.tenant_id


def test_a_requeued_message_is_put_off_again_while_the_api_throttles(cli: Cli) -> None:
    """README: a download throttled for 30 put-offs goes to the poison queue; lower the rate, then `poison requeue
    --all`. The message went back with its 30 put-offs counted: throttled once more, it skipped the put-offs and
    was in the poison queue again after the host's five attempts."""
    sim = cli.standins
    cli.publish(seed=47, records=200, blob_size=(200, 200), irm_share=0.1)
    assert cli.run("poll")[0] == 0
    assert cli.park(rescheduled=30, putOffs=30) == 1  # where 30 put-offs and the host's five attempts leave it
    code, doc = cli.json("poison", "requeue", "--all")
    assert code == 0 and len(doc["requeued"]) == 1
    [requeued] = cli.messages()
    assert json.loads(requeued).get("putOffs") is None and json.loads(requeued)["rescheduled"] == 30
    sim.management.add_fault("content", "status", status=403, code="AF429", count=10_000)
    code, doc = cli.json("process", "--retry-delay", "0", "--max", "1")
    assert doc["poisoned"] == 0 and doc["rescheduled"] == 1, doc
    assert cli.depth(cli.poison) == 0 and cli.depth() == 1  # put off: back in a minute


def test_process_max_fails_while_a_failed_message_waits_for_its_retry(cli: Cli) -> None:
    """``process --max 1`` on a message whose delivery failed: it was put back for a retry the run did not wait for,
    and the run exited 0, so a script took the message for done. It exits 1 and counts it; once the retry
    succeeds, the run after exits 0."""
    sim = cli.standins
    workload = cli.publish(seed=49, records=100, blob_size=(100, 100))
    assert cli.run("poll")[0] == 0
    sim.management.add_fault("content", "truncated", count=1)
    code, doc = cli.json("process", "--max", "1", "--retry-delay", "0")
    assert code == 1, doc
    assert doc["failed_attempts"] == 1 and doc["awaiting_retry"] == 1 and doc["processed"] == 0
    code, out, _ = cli.run("process", "--max", "1", "--retry-delay", "0")
    assert code == 0, out
    assert "failed and wait" not in out
    assert {r["RecordId"] for r in cli.rows()} == workload.irm_alert_record_ids
    code, out, _ = cli.run("process", "--max", "1")
    assert code == 0 and "0 message(s) processed" in out


def test_poison_list_requeue_and_purge(cli: Cli) -> None:
    sim = cli.standins
    sim.management.set_subscription("Audit.General", "enabled")
    workload = generate_workload(
        seed=5, total_records=300, blob_size=(300, 300), irm_share=0.1, tenant_id=sim.tenant_id
    )
    (content_id,) = workload.publish(sim.management)
    code, doc = cli.json("poll")
    assert code == 0 and doc["blobs_queued"] == 1

    # The blob answers with a body cut short, five times: the fifth failure poisons the message.
    sim.management.add_fault("content", "truncated", count=5)
    code, doc = cli.json("process", "--retry-delay", "0")
    assert code == 1
    assert doc["poisoned"] == 1 and doc["failed_attempts"] == 5 and doc["max_dequeue_count"] == 5
    assert cli.depth() == 0 and cli.depth(cli.poison) == 1

    code, doc = cli.json("status")
    assert code == 1 and "poison-messages" in {p["code"] for p in doc["problems"]}

    code, doc = cli.json("poison", "list")
    assert code == 0 and doc["depth"] == 1
    (item,) = doc["messages"]
    assert item["content_id"] == content_id and item["content_type"] == "Audit.General"
    assert item["reason"].startswith("BadContentError:") and item["attempts"] == 5
    code, out, _ = cli.run("poison", "list")
    assert code == 0 and content_id in out and "BadContentError" in out and "5 attempt(s)" in out

    code, out, err = cli.run("poison", "requeue")
    assert code == 2 and "--all" in err
    code, doc = cli.json("poison", "requeue", "no-such-id")
    assert code == 1 and doc["not_found"] == ["no-such-id"] and doc["requeued"] == []
    assert cli.depth(cli.poison) == 1  # what was not asked for stays

    code, doc = cli.json("poison", "requeue", item["id"])
    assert code == 0 and [r["content_id"] for r in doc["requeued"]] == [content_id]
    assert cli.depth(cli.poison) == 0 and cli.depth() == 1
    assert json.loads(cli.messages()[0])["contentId"] == content_id  # base64 on the wire, readable again

    code, doc = cli.json("process")
    assert code == 0 and doc["processed"] == 1 and doc["poisoned"] == 0
    assert sorted(r["RecordId"] for r in cli.rows()) == sorted(set(workload.irm_alert_record_ids))

    # A message that is not a content notification is parked at once, with the reason; like any message
    # moved to the poison queue, it makes `process` exit 1.
    cli.put("this is not a content message")
    code, doc = cli.json("process")
    assert code == 1 and doc["poisoned"] == 1 and cli.depth(cli.poison) == 1
    code, doc = cli.json("poison", "list")
    assert doc["messages"][0]["reason"] == "BadMessageError: message is not JSON"
    # Requeued, it would only be parked again: it stays, and the result says why.
    code, doc = cli.json("poison", "requeue", "--all")
    assert code == 0 and doc["requeued"] == [] and len(doc["not_content"]) == 1
    [doc_id] = doc["not_content"]
    assert cli.depth(cli.poison) == 1 and cli.depth() == 0
    code, doc = cli.json("poison", "requeue", doc_id)
    assert code == 1 and doc["not_content"] == [doc_id] and doc["not_found"] == []

    code, out, err = cli.run("poison", "purge")  # no terminal under pytest: refused without --yes
    assert code == 2 and "--yes" in err and cli.depth(cli.poison) == 1
    # A purge whose delete is refused leaves the message, and with it why it failed (it was forgotten first).
    with StorageProxy(cli.azurite) as proxy:
        proxy.add_fault("queue.delete", "status", count=100, status=403, code="AuthorizationPermissionMismatch")
        cli.set(AzureWebJobsStorage=proxy.connection_string)
        code, doc = cli.json("poison", "purge", "--yes")
    cli.set(AzureWebJobsStorage=cli.azurite.connection_string)
    assert code == 1 and doc["not_deleted"] == [doc_id] and cli.depth(cli.poison) == 1
    code, doc = cli.json("poison", "list")
    assert doc["messages"][0]["reason"] == "BadMessageError: message is not JSON"
    code, doc = cli.json("poison", "purge", "--yes")
    assert code == 0 and doc["purged"] == 1 and cli.depth(cli.poison) == 0


def test_a_message_copied_to_the_poison_queue_but_not_removed_counts_as_parked(cli: Cli) -> None:
    """Its copy went to the poison queue, then the content queue refused the delete: the line said "could not move
    it", the run counted nothing parked, and the message came back to be parked a second time."""
    cli.publish(seed=29, records=100, blob_size=(100, 100))
    assert cli.json("poll")[0] == 0
    cli.set(AzureFunctionsJobHost__extensions__queues__maxDequeueCount="1")
    cli.standins.management.add_fault("content", "truncated", count=5)
    with StorageProxy(cli.azurite) as proxy:
        cli.set(AzureWebJobsStorage=proxy.connection_string)
        proxy.add_fault("queue.delete", "status", status=403, count=1)
        code, out, err = cli.run("process", "--max", "1", "--json")
    cli.set(AzureWebJobsStorage=cli.azurite.connection_string)
    doc = json.loads(out)
    assert code == 1 and doc["poisoned"] == 1 and doc["awaiting_retry"] == 0, doc
    assert f"copied to {cli.poison}, but removing it from {cli.queue} failed" in err, err
    assert cli.depth(cli.poison) == 1 and cli.depth() == 1  # the content queue's copy comes back, to be removed


def test_process_follows_the_host_settings_that_override_host_json(cli: Cli) -> None:
    sim = cli.standins
    sim.management.set_subscription("Audit.General", "enabled")
    workload = generate_workload(seed=6, total_records=200, blob_size=(200, 200), tenant_id=sim.tenant_id)
    workload.publish(sim.management)
    assert cli.json("poll")[0] == 0

    cli.set(AzureFunctionsJobHost__extensions__queues__maxDequeueCount="2")
    sim.management.add_fault("content", "truncated", count=2)
    code, doc = cli.json("process", "--retry-delay", "0")
    assert code == 1
    assert doc["max_dequeue_count"] == 2 and doc["failed_attempts"] == 2 and doc["poisoned"] == 1
    assert cli.depth(cli.poison) == 1

    cli.set(AzureFunctionsJobHost__extensions__queues__batchSize="many")
    tokens = sim.entra.count("token")
    code, out, err = cli.run("process")
    assert code == 2 and out == ""
    assert sim.entra.count("token") == tokens  # refused before it called anything
    assert err.startswith("settings error:") and "AzureFunctionsJobHost__extensions__queues__batchSize" in err
    assert "many" not in err  # a settings error never shows the value
    # backfill says so before it lists and queues anything (exit 2: nothing was done)
    listed = sim.management.count("list")
    code, out, err = cli.run("backfill", "--since", "1h")
    assert code == 2 and err.startswith("settings error:") and sim.management.count("list") == listed


@pytest.mark.parametrize("off", [timedelta(minutes=-30), timedelta(minutes=30)], ids=["slow", "fast"])
def test_backfill_since_7d_is_placed_by_the_storage_service_s_time_whatever_this_clock_says(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, off: timedelta
) -> None:
    """`--since 7d` was read on this machine's clock. Half an hour slow, its start lay past the 7 days by the
    storage service's clock and backfill stopped with "unexpected ValueError" (exit 1); half an hour fast, the
    oldest half hour the API still serves was left out. Both now list from the service's 7-day edge."""
    from irm_connector.windows import RETENTION, RETENTION_MARGIN
    from tests.clock import skew_local_clock

    cli.standins.management.set_subscription("Audit.General", "enabled")
    for module in ("irm_connector.cli.backfill", "irm_connector.backfill"):  # not the JSON output's
        skew_local_clock(monkeypatch, off, package=module)
    code, doc = cli.json("backfill", "--since", "7d", "--no-process")
    assert code == 0, doc
    edge = datetime.now(UTC) - RETENTION + RETENTION_MARGIN  # this process's true clock is Azurite's
    assert abs(datetime.fromisoformat(doc["range"]["start"].replace("Z", "+00:00")) - edge) < timedelta(minutes=2)


def test_a_backfill_of_the_last_minutes_on_a_slow_clock_is_not_refused_as_in_the_future(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--start` five minutes ago, on a machine ten minutes slow: the check made before any call read it on this
    machine's clock and refused it as "in the future", though the storage service's clock, which plans the range,
    places it in the past."""
    from tests.clock import skew_local_clock

    cli.standins.management.set_subscription("Audit.General", "enabled")
    start = datetime.now(UTC) - timedelta(minutes=5)
    for module in ("irm_connector.cli.backfill", "irm_connector.backfill"):  # not the JSON output's
        skew_local_clock(monkeypatch, -timedelta(minutes=10), package=module)
    code, doc = cli.json("backfill", "--start", start.strftime("%Y-%m-%dT%H:%M:%SZ"), "--no-process")
    assert code == 0, doc
    listed_from = datetime.fromisoformat(doc["range"]["start"].replace("Z", "+00:00"))
    assert timedelta(0) < start.replace(microsecond=0) - listed_from <= timedelta(minutes=1)  # from a minute before


def test_backfill_and_process_show_their_progress_in_a_log_without_a_terminal(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a terminal (a build agent's log, a pipe) tqdm's bar was off, and a backfill of a week said nothing
    until it ended. There each now writes a plain line at intervals (every 30 s; here at every step), no bar."""
    monkeypatch.setattr(_progress, "LINE_EVERY", 0.0)
    workload = cli.publish(seed=27, records=300, blob_size=(100, 100))
    code, out, err = cli.run("backfill", "--since", "1d")
    assert code == 0, (out, err)
    assert "\r" not in err, err
    listed = [line for line in err.splitlines() if line.startswith("windows listed: ")]
    assert listed and re.fullmatch(r"windows listed: \d+ of \d+ window\(s\), queued \d+, listed \d+", listed[-1]), err
    blobs = len(workload.blobs)
    assert f"processed: {blobs} of {blobs} blob(s)" in err.splitlines(), err


def test_backfill_relists_a_past_range_without_moving_the_watermark(cli: Cli) -> None:
    sim = cli.standins
    sim.management.set_subscription("Audit.General", "enabled")
    now = datetime.now(UTC)
    old = generate_workload(
        seed=9,
        total_records=900,
        blob_size=(300, 300),
        irm_share=0.05,
        tenant_id=sim.tenant_id,
        start=now - timedelta(days=3),
        span=timedelta(hours=30),
    )
    old.publish(sim.management)
    cli.set(INITIAL_LOOKBACK="1h")
    code, doc = cli.json("poll")
    assert code == 0 and doc["blobs_queued"] == 0
    _, before = cli.json("status")
    watermark = before["content_types"][0]["watermark"]

    # A content type in any case, as O365_CONTENT_TYPES takes it.
    code, doc = cli.json("backfill", "--since", "4d", "--content-type", "audit.general")
    assert code == 0, doc
    # Four days in 24-hour windows, each after the first starting a minute early (windows.WINDOW_LEAD): a fifth
    # window holds the last three minutes.
    assert doc["windows"] == 5 and doc["blobs_queued"] == len(old.blobs)
    assert doc["processing"]["processed"] == len(old.blobs) and doc["processing"]["poisoned"] == 0
    assert sorted(r["RecordId"] for r in cli.rows()) == sorted(set(old.irm_alert_record_ids))
    _, after = cli.json("status")
    assert after["content_types"][0]["watermark"] == watermark

    # Again ("z" in lower case is UTC too): every blob is already queued; nothing is sent twice.
    code, out, _ = cli.run("backfill", "--start", (now - timedelta(days=4)).strftime("%Y-%m-%dT%H:%Mz"), "--no-process")
    assert code == 0
    assert "the live watermark was not moved" in out and f"{len(old.blobs)} already queued" in out
    assert cli.depth() == 0

    for bad in (["--since", "8d"], ["--start", "2026-01-02", "--end", "2026-01-01"], ["--since", "soon"], []):
        code, _, err = cli.run("backfill", *bad)
        assert code == 2, (bad, err)
        assert err.startswith("usage error:") and "irm-connector backfill --help" in err


def test_backfill_brings_back_the_records_of_purged_messages_and_works_what_an_earlier_run_left(cli: Cli) -> None:
    """Purged from the poison queue, a blob's records could not come back: every backfill found it queued
    before, said so and exited 0 with nothing sent. A rerun after `--no-process` queued nothing new and so did
    not work the queue either, leaving its messages to a function app that may not run."""
    sim = cli.standins
    sim.management.set_subscription("Audit.General", "enabled")
    old = generate_workload(seed=11, total_records=600, blob_size=(200, 200), irm_share=0.05,
                            tenant_id=sim.tenant_id, start=datetime.now(UTC) - timedelta(days=2), span=timedelta(hours=3))  # fmt: skip
    old.publish(sim.management)
    alerts = sorted(set(old.irm_alert_record_ids))
    code, doc = cli.json("backfill", "--since", "3d", "--no-process")
    assert code == 0 and doc["blobs_queued"] == len(old.blobs), doc
    assert cli.park() == len(old.blobs)  # every delivery failed (say, a DCR deleted by mistake) ...
    code, out, _ = cli.run("poison", "purge", "--yes")  # ... and the dead messages were purged
    assert code == 0 and cli.depth(cli.poison) == 0

    code, out, _ = cli.run("backfill", "--since", "3d")
    assert code == 0 and f"{len(old.blobs)} already queued" in out and "--include-queued" in out
    assert cli.rows() == []

    code, doc = cli.json("backfill", "--since", "3d", "--include-queued", "--no-process")
    assert code == 0 and doc["blobs_queued"] == len(old.blobs) and cli.depth() == len(old.blobs)
    code, doc = cli.json("backfill", "--since", "3d", "--content-type", "Audit.General", "--content-type", "audit.general")
    assert code == 0 and doc["ok"] and doc["blobs_queued"] == 0 and len(doc["content_types"]) == 1
    assert doc["processing"]["processed"] == len(old.blobs) and cli.depth() == 0
    assert sorted(r["RecordId"] for r in cli.rows()) == alerts

    # Every blob again, each record still once; the text shows the listing, then the processing.
    code, out, _ = cli.run("backfill", "--since", "3d", "--include-queued")
    assert code == 0 and f"{len(old.blobs)} queued, 0 already queued, 0 expired; ok" in out
    assert out.index("already queued") < out.index("message(s) processed")
    assert sorted(r["RecordId"] for r in cli.rows()) == alerts


def test_a_blob_in_the_minute_two_windows_share_is_queued_and_counted_once(cli: Cli) -> None:
    """A backfill's windows overlap by a minute: a blob created in it is listed by both. With --include-queued it
    was queued twice (two downloads and parses of one blob), and without it counted twice as "queued before"."""
    sim = cli.standins
    sim.management.set_subscription("Audit.General", "enabled")
    workload = generate_workload(seed=13, total_records=1, blob_size=(1, 1), irm_share=1.0, tenant_id=sim.tenant_id)
    [blob] = workload.blobs
    sim.management.add_blob("Audit.General", blob.records, content_created=datetime.now(UTC) - timedelta(days=1, seconds=30))
    code, doc = cli.json("backfill", "--since", "2d", "--no-process", "--include-queued")
    assert code == 0 and doc["windows"] >= 2, doc
    assert (doc["content_types"][0]["blobs_listed"], doc["blobs_queued"], cli.depth()) == (1, 1, 1), doc
    code, doc = cli.json("backfill", "--since", "2d", "--no-process")
    assert code == 0 and (doc["blobs_queued"], doc["content_types"][0]["blobs_already_queued"]) == (0, 1), doc
    code, out, _ = cli.run("backfill", "--since", "2d", "--no-process")
    assert "1 blob(s) were queued before and not again" in out, out


def test_a_backfill_from_a_blob_s_exact_contentcreated_brings_that_blob(cli: Cli) -> None:
    """`poison list` shows a blob's contentCreated and the purge tells the operator to backfill "over their time":
    a --start at that very second asked the API with it as startTime, which the API has been seen to leave the
    blob out of (the stand-in does, apis.md's worst case). The backfill lists from a minute earlier."""
    sim = cli.standins
    sim.management.set_subscription("Audit.General", "enabled")
    sim.management.exact_start_misses = True
    workload = generate_workload(seed=15, total_records=20, blob_size=(20, 20), irm_share=1.0, tenant_id=sim.tenant_id)
    created = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    [blob] = workload.blobs
    sim.management.add_blob("Audit.General", blob.records, content_created=created)
    at = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    code, doc = cli.json("backfill", "--start", at, "--end", (created + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert code == 0 and doc["blobs_queued"] == 1, doc
    assert sorted(r["RecordId"] for r in cli.rows()) == sorted(set(workload.irm_alert_record_ids))
    # A minute before, as the output says (not two: the command and the backfill each added the lead).
    lead = (created - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")
    assert doc["range"]["start"].startswith(lead), doc
    assert [r.query["startTime"] for r in sim.management.requests("list")] == [lead]


def test_backfill_leaves_the_api_alone_while_it_asked_for_no_requests(cli: Cli) -> None:
    """A Retry-After of 15 minutes: the poller records it and asks nothing before then; a backfill listed on, and
    asked the next content types at once, though the API counts throttling per tenant."""
    sim = cli.standins
    cli.set(O365_CONTENT_TYPES="Audit.General,Audit.Exchange")
    for content_type in ("Audit.General", "Audit.Exchange"):
        sim.management.set_subscription(content_type, "enabled")
    sim.management.add_fault("list", "status", status=429, retry_after=900, count=1)
    listed = sim.management.count("list")
    code, doc = cli.json("backfill", "--since", "3d", "--no-process")
    assert code == 3, doc
    assert sim.management.count("list") == listed + 1  # the throttled request alone: Audit.Exchange not asked
    exchange = doc["content_types"][1]
    assert exchange["content_type"] == "Audit.Exchange" and "no requests from this tenant until" in exchange["error"]

    # Recorded by the poller: the backfill asks nothing until then either.
    asyncio.run(let_the_api_wait_pass(cli.azurite.connection_string, cli.env))  # the backfill's wait is over
    cli.set(O365_CONTENT_TYPES="Audit.General")
    sim.management.add_fault("list", "status", status=429, retry_after=900, count=1)
    code, doc = cli.json("poll")
    assert code == 3 and doc["content_types"][0]["error"], doc
    assert sim.management.pending_faults("list") == 0  # the poller met the throttle itself
    listed = sim.management.count("list")
    code, out, err = cli.run("backfill", "--since", "3d", "--no-process")
    assert code == 3 and sim.management.count("list") == listed, out + err
    assert "no requests from this tenant until" in out + err and "run the backfill again then" in out + err
    # Counted per tenant: the poller's wait, recorded for Audit.General, holds a backfill of another type back too.
    cli.set(O365_CONTENT_TYPES="Audit.General,Audit.Exchange")
    code, out, err = cli.run("backfill", "--since", "3d", "--no-process", "--content-type", "Audit.Exchange")
    assert code == 3 and sim.management.count("list") == listed, out + err
    assert "no requests from this tenant until" in out + err


def test_a_backfill_stopped_while_it_lists_says_what_it_queued_and_a_rerun_queues_the_rest(cli: Cli) -> None:
    """SIGTERM after the first of a backfill's windows was queued: the command said only "interrupted", and a rerun
    counts those blobs as queued before, so what the stopped run had queued was said nowhere."""
    sim = cli.standins
    sim.management.set_subscription("Audit.General", "enabled")
    now = datetime.now(UTC)
    older, newer = (
        generate_workload(
            seed=seed, total_records=200, blob_size=(50, 50), irm_share=0.1, tenant_id=sim.tenant_id,
            start=now - ago, span=timedelta(hours=1),
        )
        for seed, ago in ((14, timedelta(days=2, hours=12)), (15, timedelta(hours=12)))
    )
    for workload in (older, newer):
        workload.publish(sim.management)
    sim.management.set_latency(3.0, "list")  # one window a request: the first window's blobs go well before the rest
    cli.set(O365_CONTENT_TYPES="Audit.General,Audit.Exchange")
    with cli.spawn("backfill", "--since", "3d", "--no-process", "--json") as process:
        cli.wait_for(process, lambda: cli.depth() >= len(older.blobs))
        out, err = cli.stop(process)
    assert process.returncode == 130, err
    doc = json.loads(out)
    assert doc["error"]["code"] == "interrupted" and doc["done"]["interrupted"] is True, doc
    assert doc["done"]["blobs_queued"] == len(older.blobs) == cli.depth(), doc
    unfinished, unreached = doc["done"]["content_types"]
    assert unfinished["blobs_queued"] == len(older.blobs) and unfinished["error"] == "interrupted while listing", doc
    assert (unreached["content_type"], unreached["skipped"]) == ("Audit.Exchange", "interrupted before it was listed")
    cli.set(O365_CONTENT_TYPES="Audit.General")

    with cli.spawn("backfill", "--since", "3d", "--no-process") as process:
        listed = sim.management.count("list")
        cli.wait_for(process, lambda: sim.management.count("list") != listed)
        out, err = cli.stop(process)
    assert process.returncode == 130 and "error: interrupted" in err, err
    assert "interrupted while listing" in out and "the live watermark was not moved" in out, out
    assert "Audit.General: " in out and "; ok" not in out, out  # not read as a whole listing

    sim.management.set_latency(0.0, "list")
    code, doc = cli.json("backfill", "--since", "3d", "--no-process")
    [report] = doc["content_types"]
    assert code == 0 and (report["blobs_already_queued"], report["blobs_queued"]) == (len(older.blobs), len(newer.blobs))
    assert cli.depth() == len(older.blobs) + len(newer.blobs)


def test_backfill_json_says_what_it_queued_when_processing_fails_after(cli: Cli) -> None:
    """The text mode prints the listing before it works the queue; with --json, a failure while processing printed
    the error document alone, and a rerun finds the blobs queued: what this run queued was said nowhere."""
    sim = cli.standins
    sim.management.set_subscription("Audit.General", "enabled")
    old = generate_workload(seed=12, total_records=400, blob_size=(200, 200), irm_share=0.05,
                            tenant_id=sim.tenant_id, start=datetime.now(UTC) - timedelta(days=1), span=timedelta(hours=2))  # fmt: skip
    old.publish(sim.management)
    with StorageProxy(cli.azurite) as proxy:
        # Storage starts refusing this address once the listing is done (a firewall rule applied meanwhile).
        proxy.add_fault("queue.get", "status", count=100, status=403, code="AuthorizationFailure")
        cli.set(AzureWebJobsStorage=proxy.connection_string)
        code, doc = cli.json("backfill", "--since", "2d")
    cli.set(AzureWebJobsStorage=cli.azurite.connection_string)
    assert code == 3 and doc["error"]["code"] == "storage-refused", doc
    done = doc["done"]
    assert done["blobs_queued"] == len(old.blobs) and "ok" not in done and "processing" not in done
    assert done["content_types"][0]["content_type"] == "Audit.General" and cli.depth() == len(old.blobs)
    # An error of the next command in the same process carries nothing of this one.
    code, doc = cli.json("backfill", "--since", "0")
    assert code == 2 and set(doc) == {"error"}


def test_subscriptions_list_start_stop(cli: Cli) -> None:
    sim = cli.standins
    sim.management.set_subscription("Audit.General", None)  # a tenant that never subscribed
    code, doc = cli.json("subscriptions", "list")
    assert code == 0
    assert doc["subscriptions"] == [{"content_type": "Audit.General", "status": "none", "configured": True}]

    code, doc = cli.json("subscriptions", "start")
    assert code == 0 and doc["subscriptions"] == [{"content_type": "Audit.General", "status": "enabled"}]
    assert sim.management.subscription("Audit.General") == "enabled"
    code, out, _ = cli.run("subscriptions", "list")
    assert code == 0 and "Audit.General" in out and "enabled" in out

    # Polled, a stopped subscription was started again by the next poller run, which logged the gap as lost
    # content: it is taken out of O365_CONTENT_TYPES first.
    code, _, err = cli.run("subscriptions", "stop", "audit.general", "--yes")
    assert code == 2 and "Take it out of O365_CONTENT_TYPES" in err
    assert sim.management.subscription("Audit.General") == "enabled"
    cli.set(O365_CONTENT_TYPES="Audit.Exchange")
    code, _, err = cli.run("subscriptions", "stop", "Audit.General")
    assert code == 2 and "--yes" in err
    assert sim.management.subscription("Audit.General") == "enabled"
    code, out, _ = cli.run("subscriptions", "stop", "Audit.General", "--yes")
    assert code == 0 and "Audit.General: disabled" in out
    assert sim.management.subscription("Audit.General") == "disabled"
    code, out, _ = cli.run("subscriptions", "stop", "DLP.All", "--yes")  # never started: nothing to stop
    assert code == 0 and "DLP.All: none" in out
    cli.set(O365_CONTENT_TYPES="Audit.General")

    sim.management.set_admin_disabled("Audit.General")
    code, _, err = cli.run("subscriptions", "start")
    assert code == 1 and "AF20023" in err

    # Two named, the second refused: the result says the first was started, and why the second was not.
    code, doc = cli.json("subscriptions", "start", "Audit.Exchange", "Audit.General")
    assert code == 1
    started, refused = doc["subscriptions"]
    assert started == {"content_type": "Audit.Exchange", "status": "enabled"}
    assert refused["content_type"] == "Audit.General" and refused["status"] == "failed" and "AF20023" in refused["error"]
    assert sim.management.subscription("Audit.Exchange") == "enabled"

    # The first refused: the second is asked all the same (the command stopped at the first, and whether a content
    # type was started depended on its place in the list).
    code, doc = cli.json("subscriptions", "start", "Audit.General", "Audit.SharePoint")
    assert code == 1
    refused, started = doc["subscriptions"]
    assert refused["content_type"] == "Audit.General" and "AF20023" in refused["error"]
    assert started == {"content_type": "Audit.SharePoint", "status": "enabled"}
    assert sim.management.subscription("Audit.SharePoint") == "enabled"

    # Started again when it is on: the API has been seen to answer 400 AF20024 (apis.md), which is success.
    sim.management.already_enabled_status = 400
    code, doc = cli.json("subscriptions", "start", "Audit.SharePoint")
    assert code == 0 and doc["subscriptions"] == [{"content_type": "Audit.SharePoint", "status": "enabled"}], doc
    sim.management.already_enabled_status = 200

    starts = sim.management.count("start")
    code, _, err = cli.run("subscriptions", "start", "Audit.Genral")  # a typo: a usage error, the API not asked
    assert code == 2 and "Audit.Genral: not a content type" in err
    assert sim.management.count("start") == starts


def test_every_bad_setting_is_named_at_once_one_line_each(cli: Cli) -> None:
    cli.set(O365_TENANT_ID="00000000-0000-0000-0000-000000000000", INITIAL_LOOKBACK="24")
    cli.set(LOGS_INGESTION_ENDPOINT="https://<your-dcr>.<region>-1.ingest.monitor.azure.com")
    cli.set(O365_AUTH_MODE="secret", O365_CLIENT_SECRET="")
    code, out, err = cli.run("status")
    assert code == 2 and out == ""
    # The secret's setting is named like any other: the net that masks token fields ("client_secret: ...")
    # must not take its name for one.
    assert err.strip().splitlines() == [
        "settings error: setting O365_TENANT_ID: is the all-zero GUID of the sample settings: put in the real one",
        "settings error: setting O365_CLIENT_SECRET: is required when O365_AUTH_MODE is secret (or set "
        "O365_CLIENT_CERTIFICATE_PATH for a certificate)",
        "settings error: setting INITIAL_LOOKBACK: has no unit; write a number and a unit: 45s, 90m, 24h, 7d, or "
        "combined like 1h30m",
        "settings error: setting LOGS_INGESTION_ENDPOINT: still holds a placeholder of the sample settings (<...>): "
        "put in the real value",
    ]
    code, doc = cli.json("poll")
    assert code == 2
    assert doc["error"]["code"] == "settings" and doc["error"]["message"].startswith("4 settings are not usable")
    assert "O365_CLIENT_SECRET: is required" in doc["error"]["message"]
    assert [s["setting"] for s in doc["error"]["settings"]] == [
        "O365_TENANT_ID", "O365_CLIENT_SECRET", "INITIAL_LOOKBACK", "LOGS_INGESTION_ENDPOINT",
    ]  # fmt: skip


def test_a_secret_pasted_into_a_setting_is_not_echoed(cli: Cli) -> None:
    pasted = "Qx8~sEcReT.vaLue_9f3kD2-aB7cE~p0"
    cli.set(O365_CLIENT_ID=pasted, O365_PUBLISHER_ID=pasted)
    code, out, err = cli.run("status", "--json")
    assert code == 2
    assert pasted not in out + err and "is not a GUID" in err
    assert {s["setting"] for s in json.loads(out)["error"]["settings"]} == {"O365_CLIENT_ID", "O365_PUBLISHER_ID"}


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["status", "--max-lag", "2"], "--max-lag '2' has no unit; write a number and a unit: 45s"),
        (["status", "--max-lag", "2 hours"], "--max-lag '2 hours' is not a duration; write a number and a unit"),
        # a duration, only too long for Python's: "not a duration" sent the operator looking for a typo
        (["status", "--max-lag", "99999999999d"], "--max-lag '99999999999d' is longer than any duration"),
        (["backfill", "--since", "soon"], "--since 'soon' is not a duration"),
        (["backfill"], "give --since (e.g. 3d) or --start"),
        (["backfill", "--since", "1d", "--start", "2026-01-01"], "not both"),
        (["backfill", "--since", "1000000d"], "more than 7 days back"),  # before year 1 from now
        (["backfill", "--start", "9999-12-31T23:59:59-01:00"], "outside the times the connector can use"),
        (["backfill", "--start", "2026-01-01", "--end", "0001-01-01T00:00+01:00"], "--end '0001-01-01T00:00+01:00'"),
        # given on the command line, so not a setting to fix where the settings live
        (["run", "--schedule", "bad cron"], "--schedule is not an NCRONTAB expression"),
    ],
)
def test_command_line_mistakes_are_usage_errors(cli: Cli, argv: list[str], needle: str) -> None:
    code, out, err = cli.run(*argv)
    assert code == 2 and out == ""
    assert err.startswith("usage error: ") and needle in err and "settings error" not in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        # Storage refuses such a visibility timeout: the message would stay invisible, with nothing said.
        (["process", "--retry-delay", "-5"], "between 0 and 604800 seconds"),
        (["process", "--retry-delay", "soon"], "is not a number of seconds"),
        # A queue peek shows at most 32; 500 showed 32 with nothing said, 0 showed one.
        (["poison", "list", "--limit", "500"], "--limit: 500 is not between 1 and 32"),
        (["poison", "list", "--limit", "0"], "--limit: 0 is not between 1 and 32"),
        (["poison", "list", "--limit", "all"], "--limit: 'all' is not a whole number"),
        # An abbreviation made a JSON result but a text error: only whole options are taken.
        (["--js", "status"], "unrecognized arguments: --js"),
    ],
)
def test_options_argparse_refuses(cli: Cli, argv: list[str], needle: str) -> None:
    code, out, err = cli.run(*argv)
    assert code == 2 and out == "" and needle in err


def test_a_prompt_goes_to_the_terminal_never_into_the_json_on_stdout(cli: Cli) -> None:
    """`--json poison purge | jq .` at a terminal: the question is asked on stderr, the answer read from the
    terminal, and stdout stays one JSON document."""
    cli.put('{"not": "a content message"}', cli.poison)
    controller, terminal = pty.openpty()
    try:
        os.write(controller, b"y\n")
        done = subprocess.run(
            [sys.executable, "-m", "irm_connector", "--json", "poison", "purge"], env=cli.process_env(), cwd=REPO,
            stdin=terminal, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.close(terminal)
        os.close(controller)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["purged"] == 1
    assert "[y/N]" in done.stderr
    assert cli.depth(cli.poison) == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_at_the_prompt_ends_the_command_without_an_answer(cli: Cli, sig: signal.Signals) -> None:
    """Ctrl-C at `poison purge`'s question: the prompt read the terminal on the command's event loop, so the signal
    waited for Enter (and then the command went on with whatever was typed). It ends the command at once, exit
    130, nothing deleted."""
    cli.put('{"not": "a content message"}', cli.poison)
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "irm_connector", "poison", "purge"], env=cli.process_env(), cwd=REPO,
            stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            asked = ""
            while "[y/N]" not in asked:
                assert process.stderr is not None
                char = process.stderr.read(1)
                assert char, f"ended without asking (exit {process.wait()}): {asked}"
                asked += char
            time.sleep(0.5)  # reading the answer by now
            process.send_signal(sig)
            out, err = process.communicate(timeout=60)  # no Enter is ever typed
            assert out == ""
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    finally:
        os.close(terminal)
        os.close(controller)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert cli.depth(cli.poison) == 1


def test_process_stops_when_logs_ingestion_refuses_and_sends_once_it_accepts(cli: Cli) -> None:
    """A refusing DCR reschedules the messages (they come back later): `process` says so and stops rather than
    wait for the queue to empty; once the DCR accepts, `process` sends everything, once."""
    sim = cli.standins
    workload = cli.publish(seed=7, records=400, blob_size=(100, 100), irm_share=0.1)
    assert cli.json("poll")[0] == 0
    sim.ingestion.refuse_stream("Custom-IRMAlerts", 403)
    code, out, err = cli.run("process")
    assert code == 1
    assert "put back for later and stopped: Logs Ingestion refuses the rows" in out
    assert "Monitoring Metrics Publisher" in err and cli.depth(cli.poison) == 0
    assert cli.depth() == len(workload.blobs)  # rescheduled, not lost

    sim.ingestion.refuse_stream("Custom-IRMAlerts", None)
    code, doc = cli.json("process")
    assert code == 0, doc
    assert sorted(r["RecordId"] for r in cli.rows()) == sorted(set(workload.irm_alert_record_ids))


def test_process_does_not_wait_for_messages_it_cannot_see(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """A message put off for ten minutes (by the function app, or a run that was killed holding it) is invisible:
    `process` works the others, then stops and says how many it left, rather than sit silent until it is back."""
    from irm_connector.cli import queue_trigger

    monkeypatch.setattr(queue_trigger, "_INVISIBLE_GRACE", 2.0)  # the minute it waits, shortened
    workload = cli.publish(seed=9, records=300, blob_size=(100, 100), irm_share=0.1)
    assert cli.json("poll")[0] == 0
    held = cli.hold_one_message(seconds=600)
    code, doc = cli.json("process")
    assert code == 0, doc
    assert doc["processed"] == len(workload.blobs) - 1 and doc["remaining"] == 1 and doc["not_visible"] == 1
    _, out, _ = cli.run("process")
    assert "1 message(s) left are not visible yet" in out
    sent = Counter(r["RecordId"] for r in cli.rows())
    waiting = {r["Id"] for r in workload.blobs[workload.content_ids.index(held)].records}
    assert set(workload.irm_alert_record_ids) - waiting <= set(sent) <= set(workload.irm_alert_record_ids)
    assert set(sent.values()) == {1}


def test_a_reader_that_goes_away_is_not_a_service_that_could_not_be_reached(cli: Cli) -> None:
    """`irm-connector --json poison list | true`: the pipe is closed before the result is written. Nothing to
    report and nowhere to report it: no "a service could not be reached" (exit 3), no traceback at exit."""
    cli.put('{"not": "a content message"}', cli.poison)
    done = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m irm_connector --json poison list | (sleep 0; exec 0<&-)"],
        env=cli.process_env(), cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.stderr == "", done.stderr


@contextlib.asynccontextmanager
async def _host_queues(
    connection_string: str, name: str, **options: Any
) -> AsyncIterator[tuple[QueueClient, QueueClient]]:
    """A content queue and its poison queue as the Functions host reaches them (base64 messages)."""
    def client(queue: str) -> QueueClient:
        return QueueClient.from_connection_string(
            connection_string, queue, **options,
            message_encode_policy=TextBase64EncodePolicy(), message_decode_policy=TextBase64DecodePolicy(),
        )  # fmt: skip

    async with client(name) as queue, client(name + "-poison") as poison:
        yield queue, poison


async def test_a_retry_storage_will_not_put_back_is_said_and_the_message_comes_back(
    azurite: Azurite, caplog: pytest.LogCaptureFixture
) -> None:
    """The first delivery fails and Storage refuses to put the message back for its retry: one warning says so
    (it used to vanish with the task), and the message comes back when its lock ends and goes through."""
    import uuid

    from irm_connector.cli.queue_trigger import HostQueueOptions, QueueWorker
    from standins.storage_proxy import StorageProxy

    name = f"q{uuid.uuid4().hex[:12]}"
    attempts = 0

    async def handler(message: object) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("the first attempt fails")

    with StorageProxy(azurite) as proxy:

        async with _host_queues(proxy.connection_string, name, retry_total=0) as (queue, poison):
            await queue.create_queue()
            await queue.send_message("a message")
            proxy.add_fault("queue.update", "status", status=503, count=1)
            worker = QueueWorker(queue, poison, handler, HostQueueOptions(visibility_timeout=0), lock_seconds=2)
            with caplog.at_level(logging.WARNING, logger="irm_connector.cli.queue_trigger"):
                stats = await asyncio.wait_for(worker.run(), 60)
            assert proxy.count("queue.update", fault="status") == 1
            assert (await queue.get_queue_properties()).approximate_message_count == 0
    assert (attempts, stats.processed, stats.failed_attempts, stats.poisoned) == (2, 1, 1, 0)
    assert any("Could not retry message" in r.getMessage() for r in caplog.records)


async def test_a_message_whose_last_delivery_ended_without_an_answer_is_parked_without_running(
    azurite: Azurite, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker crashed (or was stopped) in a message's last allowed delivery: it comes back with a dequeue count
    past maxDequeueCount. The host parks it without running the function again; the stand-in of the host ran it a
    sixth time, so what `poison list` shows after a crash in the last delivery was never seen in the tests."""
    import uuid

    from irm_connector.cli.queue_trigger import HostQueueOptions, QueueWorker

    name = f"q{uuid.uuid4().hex[:12]}"
    ran: list[object] = []

    async def handler(message: object) -> None:
        ran.append(message)

    options = HostQueueOptions(visibility_timeout=0)
    async with _host_queues(azurite.connection_string, name) as (queue, poison):
        await queue.create_queue()
        await poison.create_queue()
        await queue.send_message("crashed in every delivery")
        for _ in range(options.max_dequeue_count):  # five deliveries, each ended by a crash: taken, never answered
            [taken] = [m async for m in queue.receive_messages(max_messages=1, visibility_timeout=30)]
            await queue.update_message(taken, visibility_timeout=0)  # its lock ends (at once, here)
        worker = QueueWorker(queue, poison, handler, options, lock_seconds=2)
        with caplog.at_level(logging.ERROR, logger="irm_connector.cli.queue_trigger"):
            stats = await asyncio.wait_for(worker.run(), 60)
        parked = [m.content async for m in poison.receive_messages()]
        assert (await queue.get_queue_properties()).approximate_message_count == 0
    assert ran == [] and stats.poisoned == 1 and parked == ["crashed in every delivery"]
    assert any("the last ending without an answer" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("operation", "what"),
    [("queue.admin", "cannot create queue"), ("queue.put", "HttpResponseError"), ("queue.delete", "copied to")],
)
async def test_a_message_that_cannot_be_parked_is_said_so_and_parked_when_it_comes_back(
    azurite: Azurite, caplog: pytest.LogCaptureFixture, operation: str, what: str
) -> None:
    """Storage refuses to create the poison queue, or to put the message on it, as the last attempt fails. The
    line said "moved to ...-poison" before it was tried, a failure to create the queue escaped as "Task exception
    was never retrieved", and the message coming back was said to have crashed its last delivery. Now one line
    says it could not be moved and why; when it comes back it is parked, and said to be.

    Or the copy went to the poison queue and the content queue refused the delete: it was said not moved, and
    when it came back it was parked again, the poison queue holding it twice (two `requeue`s of one blob)."""
    import uuid

    from irm_connector.cli.queue_trigger import HostQueueOptions, QueueWorker
    from standins.storage_proxy import StorageProxy

    name = f"q{uuid.uuid4().hex[:12]}"

    async def handler(message: object) -> None:
        raise RuntimeError("every attempt fails")

    with StorageProxy(azurite) as proxy:

        async with _host_queues(proxy.connection_string, name, retry_total=0) as (queue, poison):
            await queue.create_queue()
            await queue.send_message("a message")
            proxy.add_fault(operation, "status", status=503, count=1)
            options = HostQueueOptions(visibility_timeout=0, max_dequeue_count=1)
            worker = QueueWorker(queue, poison, handler, options, lock_seconds=2)
            with caplog.at_level(logging.WARNING):
                stats = await asyncio.wait_for(worker.run(), 60)
            parked = [m.content async for m in poison.receive_messages()]
            assert (await queue.get_queue_properties()).approximate_message_count == 0
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert parked == ["a message"] and stats.poisoned == 1
    assert len(lines) == 2, lines
    assert lines[0].startswith("Message ") and "failed 1 times: every attempt fails; " in lines[0] and what in lines[0]
    if operation == "queue.delete":
        assert f"copied to {name}-poison, but removing it from {name} failed" in lines[0]
    else:
        assert f"could not move it to {name}-poison (" in lines[0]
        assert lines[0].endswith("it comes back in 2 s, when its lock ends")
    assert lines[1].endswith(f"was delivered 2 times, its parking failed, and is not run again; moved to {name}-poison")


def test_a_poison_message_without_a_recorded_failure_says_where_to_look(cli: Cli) -> None:
    """The host parks some messages without the connector's word (a text it cannot decode, a last attempt cut
    off). The reason sent the operator to the host's log for the id `poison list` shows, which the log never
    holds: a parked message is a new message with a new id. It names the time to look at instead."""
    cli.put("written by another tool", cli.poison)
    code, doc = cli.json("poison", "list")
    assert code == 0
    [item] = doc["messages"]
    assert item["reason"].startswith("unknown: no failure was recorded for this message")
    assert f"look in the app's log (Application Insights) at {item['inserted']}, where the message had the id it " \
        "had on the content queue, not this one" in item["reason"]
    # As deployed the host logs no failed invocation: with broken settings or clients, the connector's own lines
    # are the ones that say why.
    assert "'Configuration error: …' or 'The connector could not start: …' say why" in item["reason"]
