"""``run`` as a subprocess: the stand-ins serve from this process over HTTPS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from subprocess import Popen

import pytest

from irm_connector.cli.run import Schedule
from irm_connector.errors import SettingsError
from standins.storage_proxy import StorageProxy
from standins.workload import generate_workload
from tests.cli.conftest import Cli


def test_run_polls_processes_and_stops_cleanly_on_sigterm(cli: Cli) -> None:
    sim = cli.standins
    sim.management.set_subscription("Audit.General", "enabled")
    workload = generate_workload(
        seed=21, total_records=800, blob_size=(200, 200), irm_share=0.05, tenant_id=sim.tenant_id
    )
    workload.publish(sim.management)
    expected = sorted(set(workload.irm_alert_record_ids))

    with cli.spawn("run", "--schedule", "*/2 * * * * *", "--json") as process:
        cli.wait_for(process, lambda: sorted(r["RecordId"] for r in cli.rows()) == expected, seconds=90, every=0.5)
        # One more scheduled poll (every 2 seconds) after every alert arrived, to its end (its health row): it
        # lists, and queues nothing again. (A stop ends a poll in flight, uncounted.)
        listed = sim.management.count("list")
        health = len(cli.rows("Custom-IRMConnectorHealth"))
        cli.wait_for(process, lambda: sim.management.count("list") > listed
                     and len(cli.rows("Custom-IRMConnectorHealth")) > health, every=0.2)  # fmt: skip
        out, err = cli.stop(process)
    assert process.returncode == 0, err
    doc = json.loads(out[out.index("{") :])
    assert doc["stopped"] is True and doc["polls"] >= 2 and doc["poll_errors"] == 0
    assert doc["queued"] == len(workload.blobs) and doc["processed"] == len(workload.blobs)
    assert cli.depth() == 0
    assert sorted(r["RecordId"] for r in cli.rows()) == expected  # nothing twice


def test_run_counts_what_a_failing_poll_queued_and_what_the_processor_parked(cli: Cli) -> None:
    """One content type disabled by an administrator fails every poll (AF20023): what the others queued was left
    out, and the stop said "0 blob(s) queued" of a run that queued and sent them. A message that is not a content
    notification, parked by the processor, counted as processed and not as poisoned."""
    sim = cli.standins
    cli.set(O365_CONTENT_TYPES="Audit.General,Audit.Exchange")
    sim.management.set_admin_disabled("Audit.Exchange")
    workload = cli.publish(seed=27, records=200, blob_size=(100, 100))
    cli.put("this is not a content notification")
    expected = sorted(workload.irm_alert_record_ids)
    with cli.spawn("run", "--poll-now", "--schedule", "0 0 0 1 1 *", "--json") as process:
        cli.wait_for(process, lambda: sorted(r["RecordId"] for r in cli.rows()) == expected
                     and cli.depth(cli.poison) == 1 and cli.depth() == 0, every=0.2)  # fmt: skip
        out, err = cli.stop(process)
    assert process.returncode == 0, err
    doc = json.loads(out[out.index("{") :])
    assert (doc["polls"], doc["poll_errors"], doc["queued"]) == (1, 1, len(workload.blobs)), doc
    assert doc["poisoned"] == 1 and doc["outcomes"] == {"ingested": len(workload.blobs), "bad-message": 1}, doc


def test_run_says_how_often_a_refused_stream_put_messages_off(cli: Cli) -> None:
    """Logs Ingestion refuses the alerts stream (a role removed): every delivery is put back for later, and the stop
    counted them as processed and said nothing else, as if they had been sent."""
    sim = cli.standins
    workload = cli.publish(seed=28, records=200, blob_size=(200, 200), irm_share=0.2)
    sim.ingestion.add_fault("ingest", "status", status=403, count=10_000)

    def refused() -> int:
        return sum("Custom-IRMAlerts" in r.path for r in sim.ingestion.requests("ingest"))

    with cli.spawn("run", "--poll-now", "--schedule", "0 0 0 1 1 *", "--json") as process:
        cli.wait_for(process, lambda: refused() >= 1, every=0.1)
        out, err = cli.stop(process)  # the messages in flight finish: put back for later
    assert process.returncode == 0, err
    doc = json.loads(out[out.index("{") :])
    assert doc["rescheduled"] >= 1 and doc["outcomes"].get("rescheduled") == doc["rescheduled"], doc
    assert "ingested" not in doc["outcomes"] and cli.rows() == [], doc
    assert 1 <= cli.depth() <= len(workload.blobs)


def test_run_stopped_while_a_failed_message_waits_for_its_retry_says_so(cli: Cli) -> None:
    """A delivery failed and its retry was not yet due when `run` stopped: the stop said "0 processed, 0 poisoned"
    and nothing of the message left waiting, so an operator took a run that sent nothing for one with nothing to
    send."""
    cli.publish(seed=26, records=100, blob_size=(100, 100))
    cli.standins.management.add_fault("content", "truncated", count=1)
    with StorageProxy(cli.azurite) as proxy:
        cli.set(AzureWebJobsStorage=proxy.connection_string)
        with cli.spawn("run", "--poll-now", "--retry-delay", "600") as process:
            # The failed message put back, for 10 minutes.
            cli.wait_for(process, lambda: proxy.count("queue.update") > 0)
            out, err = cli.stop(process)
    cli.set(AzureWebJobsStorage=cli.azurite.connection_string)
    assert process.returncode == 0, err
    assert "0 message(s) processed" in out and "1 message(s) failed and wait on the queue for a retry" in out, out
    assert cli.depth() == 1 and cli.rows() == []  # on the queue, hidden until its retry is due


def test_run_stopped_during_a_slow_poll_ends_it_and_leaves_the_next_run_its_lease(cli: Cli) -> None:
    """SIGTERM while the Management API holds a listing: `run` waited for the poll (up to POLL_TIME_BUDGET, more
    with retries), past any supervisor's grace period; its SIGKILL then left no result and the lease held. The poll
    in flight is now ended as `poll` ends on SIGTERM: `run` exits 0 with its document, and a poll right after runs."""
    sim = cli.standins
    workload = cli.publish(seed=26, records=200, blob_size=(100, 100))
    sim.management.add_fault("list", "delay", seconds=600, count=1)  # an answer that never comes in this test
    with cli.spawn("run", "--poll-now", "--schedule", "0 0 0 1 1 *", "--json") as process:
        cli.wait_for(process, lambda: not sim.management.pending_faults("list"))
        out, err = cli.stop(process)  # within communicate's 60 s, or the test fails: the listing is still held
    assert process.returncode == 0, err
    doc = json.loads(out)
    assert doc["stopped"] is True and doc["polls"] == 0 and doc["queued"] == 0
    code, doc = cli.json("poll")
    assert code == 0 and doc["blobs_queued"] == len(workload.blobs), doc  # not "another poller holds the lease"


#: ``irm-connector run`` whose first poll meets a fault of the connector's own (a KeyError), as a bug would raise
#: in the middle of listing a content type.
_FIRST_POLL_FAILS = """
import sys
from irm_connector import poller
from irm_connector.cli import main

real = poller._poll_content_type
calls = []


async def failing_once(*args, **kwargs):
    calls.append(1)
    if len(calls) == 1:
        raise KeyError("a bug")
    return await real(*args, **kwargs)


poller._poll_content_type = failing_once
sys.exit(main(sys.argv[1:]))
"""


def test_run_keeps_polling_and_processing_after_a_poll_fails_unexpectedly(cli: Cli) -> None:
    """The Functions host logs a failed timer invocation and runs the next on schedule. `run` caught only the
    connector's own errors: any other stopped the whole process at once, the messages in flight abandoned and
    their claims left for 12 minutes."""
    import subprocess
    import sys

    from tests.cli.conftest import REPO

    sim = cli.standins
    sim.management.set_subscription("Audit.General", "enabled")
    workload = generate_workload(seed=25, total_records=400, blob_size=(200, 200), irm_share=0.05,
                                 tenant_id=sim.tenant_id)  # fmt: skip
    workload.publish(sim.management)
    argv = ["run", "--poll-now", "--schedule", "*/2 * * * * *", "--json"]
    with subprocess.Popen([sys.executable, "-c", _FIRST_POLL_FAILS, *argv], env=cli.process_env(), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:  # fmt: skip
        expected = sorted(set(workload.irm_alert_record_ids))
        cli.wait_for(process, lambda: sorted(r["RecordId"] for r in cli.rows()) == expected, seconds=90, every=0.5)
        out, err = cli.stop(process)
    assert process.returncode == 0, err
    doc = json.loads(out[out.index("{") :])
    assert doc["poll_errors"] == 1 and doc["polls"] >= 2
    assert sorted(r["RecordId"] for r in cli.rows()) == expected
    # The fault of the connector's own, with where it happened, told once: `run` logged the poller's traceback
    # a second time, which read as a second fault.
    assert err.count("Traceback") == 1 and "KeyError: 'a bug'" in err, err
    assert "Poll failed unexpectedly with KeyError (the next one is on schedule)" in err


def test_schedule_is_ncrontab_with_seconds() -> None:
    from datetime import UTC, datetime

    start = datetime(2026, 6, 1, 12, 0, 1, tzinfo=UTC)
    assert Schedule("0 */5 * * * *").next_after(start) == datetime(2026, 6, 1, 12, 5, 0, tzinfo=UTC)
    assert Schedule("*/10 * * * * *").next_after(start) == datetime(2026, 6, 1, 12, 0, 10, tzinfo=UTC)
    assert Schedule("*/5 * * * *").next_after(start) == datetime(2026, 6, 1, 12, 5, 0, tzinfo=UTC)
    with pytest.raises(SettingsError, match="POLL_SCHEDULE"):
        Schedule("every five minutes")
    # Day of month and day of week both, as the host's NCrontab reads them: the first Monday of the month. Cron's
    # default (either) fired on 2 June, the 1st being a Monday.
    assert Schedule("0 0 6 1-7 * 1").next_after(start) == datetime(2026, 7, 6, 6, 0, 0, tzinfo=UTC)
    # Fields each valid, naming no date: a settings error, not a crash of `run` at its first wait.
    with pytest.raises(SettingsError, match="POLL_SCHEDULE"):
        Schedule("0 0 0 30 2 *")


def test_run_with_a_bad_schedule_exits_2(cli: Cli) -> None:
    cli.set(POLL_SCHEDULE="not a schedule")
    code, _, err = cli.run("run")
    assert code == 2 and "POLL_SCHEDULE" in err


@contextlib.contextmanager
def _processing_with_uploads_in_flight(cli: Cli, *, latency: float) -> Iterator[Popen[str]]:
    """`process --json` as a process of its own, handed over once Logs Ingestion, answering after ``latency``
    seconds, has answered its first upload: the next ones are in flight then."""
    sim = cli.standins
    sim.ingestion.set_latency(latency)
    before = sim.ingestion.count("ingest")  # answered requests: the poll's health rows
    try:
        with cli.spawn("process", "--json") as process:
            cli.wait_for(process, lambda: sim.ingestion.count("ingest") != before)
            yield process
    finally:
        sim.ingestion.set_latency(0.0)


def test_process_interrupted_finishes_what_is_in_flight_and_the_next_run_sends_the_rest(cli: Cli) -> None:
    """Ctrl-C during `process`: no new message is taken, those in flight finish (rows sent and marked), exit 130;
    the next `process` sends the rest, and every alert arrives once."""
    workload = cli.publish(seed=23, records=3000, blob_size=(100, 100))
    assert cli.run("poll")[0] == 0
    with _processing_with_uploads_in_flight(cli, latency=1.0) as process:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "stopping: no new message is taken" in err
    first = json.loads(out)
    assert first["interrupted"] is True and 0 < first["processed"] < len(workload.blobs)
    assert first["poisoned"] == 0 and first["failed_attempts"] == 0

    code, second = cli.json("process")
    assert code == 0, second
    assert second["processed"] == len(workload.blobs) - first["processed"]
    assert Counter(r["RecordId"] for r in cli.rows()) == Counter(set(workload.irm_alert_record_ids))


def test_a_second_sigterm_abandons_the_work_in_flight_and_says_so_with_130(cli: Cli) -> None:
    """A supervisor that asks twice (SIGTERM, then SIGTERM again): the second abandons what is in flight, as a second
    Ctrl-C does, and the command still ends with its one JSON document and 130; it ended with 143 and nothing."""
    cli.publish(seed=24, records=3000, blob_size=(100, 100))
    assert cli.run("poll")[0] == 0
    # 5 s an upload; signalled half a second after the first answers, the messages taken after them are uploading.
    with _processing_with_uploads_in_flight(cli, latency=5.0) as process:
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert process.poll() is None  # finishing what is in flight: the second signal finds it still running
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "stopping: no new message is taken" in err
    assert json.loads(out)["error"]["code"] == "interrupted"


def test_poll_ended_by_sigterm_exits_130_and_leaves_the_next_run_its_lease(cli: Cli) -> None:
    """SIGTERM (a build agent's timeout) during `poll`: the command says it was interrupted, exit 130, as for
    Ctrl-C; its lease is released on the way out, so a poll right after runs at once instead of skipping."""
    sim = cli.standins
    sim.management.set_subscription("Audit.General", "enabled")
    workload = generate_workload(seed=25, total_records=200, blob_size=(100, 100), irm_share=0.1,
                                 tenant_id=sim.tenant_id)  # fmt: skip
    workload.publish(sim.management)
    sim.management.add_fault("list", "delay", seconds=30, count=1)
    with cli.spawn("poll", "--json") as process:
        cli.wait_for(process, lambda: not sim.management.pending_faults("list"))
        out, err = cli.stop(process)
    assert process.returncode == 130, err
    doc = json.loads(out)
    assert doc.get("interrupted") is True or doc.get("error", {}).get("code") == "interrupted", doc
    assert "Traceback" not in err, err
    code, doc = cli.json("poll")
    assert code == 0 and doc["blobs_queued"] == len(workload.blobs), doc  # not "another poller holds the lease"


def test_a_stop_while_entra_id_holds_the_token_request_ends_the_command_at_once(cli: Cli) -> None:
    """msal's token request runs in a thread no cancel reaches: the stopped command waited for it to give up (up to
    HTTP_TIMEOUT, longer on a host with several addresses) before it could exit, past a supervisor's grace period,
    whose SIGKILL then lost the "interrupted" result."""
    cli.set(HTTP_TIMEOUT="300s")
    cli.standins.entra.add_fault("token", "delay", seconds=600, count=1)  # an answer that never comes in this test
    with cli.spawn("poll", "--json") as process:
        cli.wait_for(process, lambda: not cli.standins.entra.pending_faults("token"))
        out, err = cli.stop(process)  # within communicate's 60 s, or the test fails: the request is still held
    assert process.returncode == 130, err
    assert json.loads(out)["error"]["code"] == "interrupted"


def test_a_sigterm_after_the_graceful_stop_ends_still_reaches_the_command_s_own_handler() -> None:
    """`process` and `run` put a gentler stop in place of the command's own SIGTERM handler while they work. Taking
    it away set SIGTERM's default back, not the command's handler: a SIGTERM during the last queue count or the
    clients' shutdown ended the process with 143, no JSON document and no word."""
    from irm_connector.cli._common import GracefulStop, signal_handler

    async def scenario() -> list[str]:
        heard: list[str] = []
        done = asyncio.Event()

        def outer() -> None:
            heard.append("command")
            done.set()

        with signal_handler(signal.SIGTERM, outer):
            with GracefulStop(asyncio.Event()).installed() as stop:
                os.kill(os.getpid(), signal.SIGTERM)
                await asyncio.sleep(0.2)
                heard.append(f"graceful stop signalled: {stop.signalled}")
            os.kill(os.getpid(), signal.SIGTERM)  # after the work: the command's own handler
            await asyncio.wait_for(done.wait(), 10)
        return heard

    assert asyncio.run(scenario()) == ["graceful stop signalled: True", "command"]


def test_a_second_ctrl_c_leaves_sigint_to_the_next_asyncio_run() -> None:
    """A second Ctrl-C abandons the work by taking the loop's SIGINT handler away itself. The handler from before
    the command's, put back as the command ended, was then asyncio.run's own for its closed runner: the next
    asyncio.run in the process (the tests run commands in-process) found SIGINT taken and installed none."""
    from irm_connector.cli._common import GracefulStop

    async def scenario() -> None:
        with GracefulStop(asyncio.Event()).installed():
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.sleep(0.2)
            os.kill(os.getpid(), signal.SIGINT)  # the second: abandoned
            await asyncio.sleep(10)

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(scenario())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
