"""Health that shows what the lag does not (issue 13, contract 5), as a reliability case: Logs Ingestion
refuses the alerts stream (404: the stream removed from the DCR) while the poller keeps running, then the
health stream too. The health rows must show the refusal and the backlog while the lag looks fine; once
the health stream is refused, the same facts must reach the log at error level (Application Insights)."""

from __future__ import annotations

import logging

import pytest

from standins.workload import generate_workload
from tests.faults import report
from tests.harness import ConnectorHarness

ALERTS = "Custom-IRMAlerts"
HEALTH = "Custom-IRMConnectorHealth"


@pytest.mark.reports_outcome
async def test_health_shows_a_refused_stream_and_the_log_carries_a_refused_health_row(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture
) -> None:
    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    workload = generate_workload(seed=85, total_records=300, blob_size=(100, 100), irm_share=0.1,
                                 tenant_id=sim.tenant_id)  # fmt: skip
    workload.publish(sim.management)
    sim.ingestion.refuse_stream(ALERTS, 404)
    await connector.poll()
    await connector.drain(max_messages=len(workload.blobs))  # each delivery is rescheduled
    await connector.poll()
    row = connector.rows(HEALTH)[-1]

    sim.ingestion.refuse_stream(HEALTH, 403)
    before = len(connector.rows(HEALTH))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="irm_connector"):
        await connector.poll()
    logged = [r for r in caplog.records if r.name == "irm_connector.health" and r.levelno == logging.ERROR]
    rows_while_refused = len(connector.rows(HEALTH)) - before

    sim.ingestion.refuse_stream(ALERTS, None)
    sim.ingestion.refuse_stream(HEALTH, None)
    await connector.drain()
    await connector.poll()
    after = connector.rows(HEALTH)[-1]
    lost, duplicates = report.tally(connector, workload)
    report.record(report.Outcome(
        "Faults", "Logs Ingestion", "404 for the alerts stream while the poller runs, then 403 for the health "
        "stream too",
        "the health rows read IngestionState `refused: 404 since <time>` with the backlog (QueueDepth, "
        "OldestQueuedSeconds) and PoisonDepth while the lag looks fine; a refused health row goes to the log at "
        "error level with the same facts; afterwards `ok` and every alert arrives once",
        f"health row: IngestionState '{row['IngestionState'].split(' since')[0]}', QueueDepth {row['QueueDepth']}, "
        f"PoisonDepth {row['PoisonDepth']}, LagSeconds {row['LagSeconds']}; health refused: {len(logged)} error "
        f"line(s), {rows_while_refused} rows arrived; after: '{after['IngestionState']}', QueueDepth "
        f"{after['QueueDepth']}", lost, duplicates))  # fmt: skip
    assert row["IngestionState"].startswith("refused: 404 since ")
    assert (row["QueueDepth"], row["PoisonDepth"]) == (len(workload.blobs), 0)
    assert rows_while_refused == 0
    assert len(logged) == 1 and "IngestionState=refused: 404 since " in logged[0].getMessage()
    assert f"QueueDepth={len(workload.blobs)}" in logged[0].getMessage()
    assert (after["IngestionState"], after["QueueDepth"], after["PoisonDepth"]) == ("ok", 0, 0)
    assert (lost, duplicates) == (0, 0)
