"""Bounded memory per worker: however many deliveries run at once, the bytes of blob bodies one worker process
holds stay within ``MAX_BLOB_MB_IN_FLIGHT``, and a blob larger than the bound is processed alone, never
dropped. Seen from outside the connector: a delivery certainly holds its body from its first upload's arrival to
its last upload's answer (reserved before the body is read, kept until the delivery ends), times the Logs
Ingestion stand-in records, and the bodies of the deliveries seen so together never add up to more than the
bound. (The benchmark measures the process's RSS: ``bench/``, twelve 25 MB blobs at once.)"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections import Counter
from typing import Any

import pytest

from irm_connector.runtime import get_runtime
from irm_connector.settings import Settings
from standins.workload import generate_workload
from tests.faults import report
from tests.harness import ConnectorHarness

AUDIT = "Custom-O365Audit"
ALERTS = "Custom-IRMAlerts"
MIB = 2**20


@pytest.mark.reports_outcome
@pytest.mark.parametrize("wire", ["as is", "gzip"])
async def test_deliveries_at_once_hold_no_more_body_bytes_than_the_bound(connector: ConnectorHarness, wire: str) -> None:
    """``as is``: the answer's Content-Length is the body's size, reserved before the body is read. ``gzip``:
    compressed on the wire, the body's size is known only as it arrives; the reservation grows with it."""
    sim = connector.standins
    connector.set(MAX_BLOB_MB_IN_FLIGHT="1", LOGS_AUDIT_STREAM=AUDIT)
    sim.management.set_subscription("Audit.General", "enabled")
    # Each upload takes a while: deliveries that held their bodies together would be seen uploading together.
    sim.ingestion.set_latency(0.3)
    # Six blobs of about 0.4 MB and one of about 1.2 MB: more than three times the bound together, and one
    # larger than the bound on its own.
    small = generate_workload(seed=71, total_records=6000, blob_size=(1000, 1000), irm_share=0.02,
                              duplicate_share=0.0, tenant_id=sim.tenant_id)  # fmt: skip
    large = generate_workload(seed=72, total_records=3000, blob_size=(3000, 3000), irm_share=0.02,
                              duplicate_share=0.0, tenant_id=sim.tenant_id)  # fmt: skip
    size_of: dict[str, int] = {}  # content id -> the body's size
    for blob in small.blobs + large.blobs:
        body = json.dumps(blob.records, separators=(",", ":")).encode()
        compressed: dict[str, Any] = {"raw_body": gzip.compress(body), "headers": {"Content-Encoding": "gzip"}} if wire == "gzip" else {}
        content_id = sim.management.add_blob(blob.content_type, blob.records, content_created=blob.content_created,
                                             **compressed)  # fmt: skip
        size_of[content_id] = len(body)
    sizes = sorted(size_of.values())
    assert sum(sizes) > 3 * MIB and sizes[-1] > MIB > sizes[-2]

    await connector.poll()
    async with connector.queue_client() as queue:
        messages = [m.content async for m in queue.receive_messages(max_messages=32, messages_per_page=32)]
    assert len(messages) == len(sizes)
    # Every delivery at once, through the processor entry point, as a worker running them side by side.
    await asyncio.gather(*(connector.process(text) for text in messages))

    budget = (await get_runtime(Settings.from_env())).bodies
    held = _held(sim, size_of)
    # A body over the bound counts as the bound: it is processed alone, the one exception the bound allows.
    most = max(sum(min(size, MIB) for start, end, size in held if start <= moment < end) for moment, _, _ in held)
    [(large_start, large_end, _)] = [h for h in held if h[2] > MIB]
    alongside = [h for h in held if h[2] <= MIB and h[0] < large_end and large_start < h[1]]
    audit = Counter(r["RecordId"] for r in connector.rows(AUDIT))
    alerts = Counter(r["RecordId"] for r in connector.rows(ALERTS))
    want = small.record_ids | large.record_ids
    lost = len(want - set(audit)) + len((small.irm_alert_record_ids | large.irm_alert_record_ids) - set(alerts))
    duplicates = sum(audit.values()) - len(audit) + sum(alerts.values()) - len(alerts)
    report.record(report.Outcome(
        "Load", "worker memory",
        f"{len(sizes)} deliveries at once, {sum(sizes) / MIB:.1f} MiB of bodies (one of {sizes[-1] / MIB:.1f} MiB), "
        f"MAX_BLOB_MB_IN_FLIGHT=1, bodies {'gzip on the wire (size unknown until read)' if wire == 'gzip' else 'as is'}",
        "the body bytes held at once never pass the bound; the blob larger than the bound is processed alone; "
        "every record arrives exactly once",
        f"at most {most / MIB:.2f} MiB held ({budget.peak / MIB:.2f} MiB reserved); {budget.whole} delivery held the "
        "whole bound", lost, duplicates,
    ))  # fmt: skip
    assert lost == 0 and duplicates == 0
    assert set(audit) == want
    assert most <= MIB  # what the deliveries held at once, from the stand-ins' records
    assert alongside == []  # the large blob, alone
    assert budget.whole == 1  # its reservation was the whole bound
    assert budget.in_use == 0  # every delivery gave its room back


def _held(sim: Any, size_of: dict[str, int]) -> list[tuple[float, float, int]]:
    """Per blob, from its first upload's arrival to its last upload's answer, and its body's size: a stretch its
    delivery certainly held the body (reserved before it was read, kept until the delivery ends)."""
    from irm_connector.normalize import blob_ref

    uploads = [stat for stat in sim.ingestion.stats() if stat.status == 204]
    held = []
    for content_id, size in size_of.items():
        names = {content_id, blob_ref("Audit.General", content_id)}
        mine = [stat for stat in uploads if stat.blobs & names]
        held.append((min(stat.arrived for stat in mine), max(stat.answered for stat in mine), size))
    return held
