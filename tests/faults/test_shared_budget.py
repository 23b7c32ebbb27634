"""One request budget for every instance of a tenant: four worker processes with more work than budget.

The Management API stand-in logs when each request arrived; every sliding 60-second window of that log
must hold at most ``O365_MAX_REQUESTS_PER_MINUTE`` requests, and every record must still arrive once.
Storage goes through the proxy, which counts what the budget costs in table requests.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from standins.storage_proxy import StorageProxy
from standins.workload import generate_workload
from tests.faults import report
from tests.harness import ConnectorHarness

ROOT = Path(__file__).resolve().parents[2]
AUDIT = "Custom-O365Audit"
BUDGET = 20
WORKERS = 4
#: Twice the budget in downloads, and the listing: demand beyond the budget for about two minutes.
BLOBS = 2 * BUDGET


def busiest_window(arrivals: list[float]) -> int:
    """The most requests in any 60-second window (the busiest one starts at some arrival)."""
    arrivals = sorted(arrivals)
    most, last = 0, 0
    for first, start in enumerate(arrivals):
        while last < len(arrivals) and arrivals[last] < start + 60:
            last += 1
        most = max(most, last - first)
    return most


def _budget_transactions(proxy: StorageProxy, table: str) -> int:
    return sum(
        1
        for route in ("table.read", "table.write")
        for r in proxy.forwarder(route).requests(route)
        if f"/{table}" in r.path
    )


@pytest.mark.reports_outcome
async def test_four_workers_share_one_budget(connector: ConnectorHarness, proxy: StorageProxy) -> None:
    sim = connector.standins
    connector.set(
        AzureWebJobsStorage=proxy.connection_string, LOGS_AUDIT_STREAM=AUDIT,
        O365_MAX_REQUESTS_PER_MINUTE=str(BUDGET),
    )  # fmt: skip
    workload = generate_workload(seed=51, total_records=BLOBS * 20, blob_size=(20, 20), irm_share=0.05,
                                 duplicate_share=0.0, tenant_id=sim.tenant_id)  # fmt: skip
    sim.management.set_subscription("Audit.General", "enabled")
    workload.publish(sim.management)
    started = time.monotonic()
    await connector.poll()  # this process lists under the same budget
    assert await connector.queue_length() == BLOBS

    env = {**os.environ, **connector.env, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "tests.faults.child", "work", "600", "5"]
    workers = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(WORKERS)
    ]
    try:
        codes = await asyncio.wait_for(asyncio.gather(*(asyncio.to_thread(w.wait) for w in workers)), 420)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=10)
    minutes = (time.monotonic() - started) / 60
    arrivals = [r.time - r.duration for r in sim.management.requests()]
    most = busiest_window(arrivals)
    table = f"{connector.env['STATE_TABLE_PREFIX'].lower()}budget"
    per_instance_minute = _budget_transactions(proxy, table) / ((WORKERS + 1) * minutes)
    audit = Counter(r["RecordId"] for r in connector.rows(AUDIT))
    lost, duplicates = len(workload.record_ids - set(audit)), sum(audit.values()) - len(audit)
    report.record(report.Outcome(
        "Load", "Management API budget", f"{WORKERS} worker processes, {BLOBS} blobs, budget {BUDGET}/min",
        "every sliding 60 s window at the API holds at most the budget, for all instances together; every "
        "record once",
        f"busiest 60 s window {most} of {BUDGET} over {len(arrivals)} requests in {minutes:.1f} min; "
        f"budget storage requests {per_instance_minute:.1f} per instance-minute", lost, duplicates))  # fmt: skip
    assert codes == [0] * WORKERS
    assert len(arrivals) >= BLOBS + 1
    assert most <= BUDGET
    assert (lost, duplicates) == (0, 0)
