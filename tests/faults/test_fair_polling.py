"""Fair polling: a content type catching up over days does not starve Audit.General, which carries the
alerts. Audit.SharePoint is configured first with almost 7 days of backlog whose every window takes longer
to list than the whole ``POLL_TIME_BUDGET``; every run must still list Audit.General."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from standins.workload import generate_workload
from tests.faults import report
from tests.harness import ConnectorHarness

ALERTS = "Custom-IRMAlerts"
RUNS = 3


def _listings(connector: ConnectorHarness, content_type: str) -> int:
    return sum(1 for r in connector.standins.management.requests("list") if r.query.get("contentType") == content_type)


async def _watermark(content_type: str) -> datetime | None:
    from irm_connector.runtime import get_runtime
    from irm_connector.settings import Settings

    settings = Settings.from_env()
    rt = await get_runtime(settings)
    return (await rt.state.watermarks.get_state(settings.tenant_id, content_type)).watermark


@pytest.mark.reports_outcome
async def test_a_long_catch_up_does_not_starve_audit_general(connector: ConnectorHarness) -> None:
    sim = connector.standins
    for content_type in ("Audit.SharePoint", "Audit.General"):
        sim.management.set_subscription(content_type, "enabled")
    connector.set(O365_CONTENT_TYPES="Audit.General")
    await connector.poll()  # Audit.General is up to date; Audit.SharePoint is added later with 7 days to go
    now = datetime.now(UTC)
    backlog = generate_workload(seed=61, total_records=60 * 10, blob_size=(10, 10), content_types=("Audit.SharePoint",),
                                span=timedelta(days=6, hours=12), tenant_id=sim.tenant_id)  # fmt: skip
    alerts = [
        generate_workload(seed=62 + run, total_records=100, blob_size=(50, 50), irm_share=0.1,
                          start=now - timedelta(minutes=10), span=timedelta(minutes=5), tenant_id=sim.tenant_id)
        for run in range(RUNS)
    ]  # fmt: skip
    backlog.publish(sim.management)
    sim.management.page_size = 2
    sim.management.set_latency(2.0, route="list")  # a SharePoint window: 5 pages, 10 s, the whole budget
    connector.set(O365_CONTENT_TYPES="Audit.SharePoint,Audit.General", INITIAL_LOOKBACK="7d", POLL_TIME_BUDGET="10s")

    general_runs, sharepoint_marks = 0, []
    for run in range(RUNS):
        alerts[run].publish(sim.management)  # new alerts before every run
        before = _listings(connector, "Audit.General")
        await connector.poll()
        general_runs += _listings(connector, "Audit.General") > before
        sharepoint_marks.append(await _watermark("Audit.SharePoint"))
    sim.management.set_latency(0.0, route="list")
    await connector.drain()

    arrived = Counter(r["RecordId"] for r in connector.rows(ALERTS))
    expected = set().union(*(w.irm_alert_record_ids for w in alerts))
    lost = len(expected - set(arrived))
    duplicates = sum(arrived.values()) - len(arrived)
    behind = (now - sharepoint_marks[-1]) if sharepoint_marks[-1] else timedelta(days=7)
    report.record(report.Outcome(
        "Load", "poller", "Audit.SharePoint configured first with 6.5 days to catch up, 10 s budget",
        "every run lists Audit.General as well (content types polled side by side, each with the whole "
        "POLL_TIME_BUDGET); every alert once",
        f"Audit.General listed in {general_runs} of {RUNS} runs; Audit.SharePoint still {behind.days} days "
        "behind after them", lost, duplicates))  # fmt: skip
    assert general_runs == RUNS
    # The catch-up was real: each run moved Audit.SharePoint on, and it is still behind after all of them.
    assert None not in sharepoint_marks and sorted(cast("set[datetime]", set(sharepoint_marks))) == sharepoint_marks
    assert len(set(sharepoint_marks)) == RUNS and behind > timedelta(days=2)
    assert (lost, duplicates) == (0, 0)
