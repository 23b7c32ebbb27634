"""The workload generator: deterministic, realistic shares, and a truthful ground truth."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from standins import generate_workload
from tests.standins.clients import Mgmt


def test_same_seed_same_workload() -> None:
    start = datetime(2026, 6, 29, 8, 0, tzinfo=UTC)  # the default start follows the wall clock
    a = generate_workload(7, total_records=3000, start=start)
    b = generate_workload(7, total_records=3000, start=start)
    c = generate_workload(8, total_records=3000, start=start)

    assert [blob.records for blob in a.blobs] == [blob.records for blob in b.blobs]
    assert a.record_ids == b.record_ids
    assert a.record_ids != c.record_ids


def test_shares_sizes_and_truth() -> None:
    wl = generate_workload(1, total_records=20_000, blob_size=(200, 5000), duplicate_share=0.02)
    appearances = Counter(r["Id"] for blob in wl.blobs for r in blob.records)

    assert len(wl.record_ids) == 20_000
    assert wl.total_appearances == 20_000 + wl.duplicate_appearances
    assert 350 <= wl.duplicate_appearances <= 400
    assert sum(n - 1 for n in appearances.values()) == wl.duplicate_appearances
    assert all(len(blob.records) >= 200 for blob in wl.blobs[:-1])
    assert 150 <= len(wl.irm_alert_record_ids) <= 200  # ~1 %
    assert wl.irm_alert_record_ids < wl.alert_record_ids
    for blob in wl.blobs:  # a duplicate never repeats inside one blob
        ids = [r["Id"] for r in blob.records]
        assert len(ids) == len(set(ids))


def test_alert_records_look_real_and_match_the_truth() -> None:
    wl = generate_workload(3, total_records=10_000)
    records = {r["Id"]: r for blob in wl.blobs for r in blob.records}
    irm = [records[i] for i in wl.irm_alert_record_ids]
    keysets = set()

    for record in irm:
        assert record["RecordType"] == 40
        assert record["Category"] == "InsiderRiskManagement"
        assert record["AlertType"] == "Custom"
        assert record["UserId"] == record["UserKey"] == "SecurityComplianceAlerts"
        assert record["Workload"] == "SecurityComplianceCenter"
        assert len(record["CreationTime"]) == 19  # no zone, no fraction
        data = json.loads(record["Data"])
        keysets.add(frozenset(data) & {"upn", "f3u", "userPrincipalName"})
        truth = wl.alerts[record["Id"]]
        assert truth["AlertId"] == record["AlertId"]
        assert truth["UserPrincipalName"] == (data.get("userPrincipalName") or data.get("upn") or data.get("f3u") or "")
    updates = [r for r in irm if r["Operation"] == "AlertUpdated"]
    assert updates
    assert all(r["Comments"] == "Alert Updated" for r in updates)
    assert {r["AlertId"] for r in updates} <= {r["AlertId"] for r in irm if r["Operation"] == "AlertTriggered"}
    assert len(keysets) >= 4  # the Data keys vary
    categories = {row["Category"] for row in wl.alerts.values()}
    assert {"InsiderRiskManagement", "ThreatManagement"} <= categories
    assert set(wl.expected_alerts()) == wl.irm_alert_record_ids


def test_late_blobs_and_multiple_content_types() -> None:
    wl = generate_workload(
        5, total_records=5000, blob_size=(200, 400), late_share=0.3, content_types=("Audit.General", "Audit.Exchange")
    )
    exchange = [b for b in wl.blobs if b.content_type == "Audit.Exchange"]

    assert exchange
    assert all(r["RecordType"] == 2 for b in exchange for r in b.records)
    assert 0 < sum(b.late for b in wl.blobs) < len(wl.blobs)
    assert all(b.available_at - b.content_created == timedelta(hours=2) for b in wl.blobs if b.late)


async def test_published_workload_lists_and_downloads_completely(mgmt: Mgmt) -> None:
    wl = generate_workload(11, total_records=4000, blob_size=(200, 600))
    mgmt.services.management.page_size = 5
    await mgmt.start()
    content_ids = wl.publish(mgmt.services.management)

    listed: list[dict[str, Any]] = []
    status, headers, body = await mgmt.call("GET", "subscriptions/content", contentType="Audit.General")
    listed += body
    while "NextPageUri" in headers:
        status, headers, body = await mgmt.call("GET", headers["NextPageUri"])
        listed += body
    seen: set[str] = set()
    for item in listed:
        status, _, records = await mgmt.call("GET", item["contentUri"])
        assert status == 200
        seen.update(r["Id"] for r in records)

    assert sorted(i["contentId"] for i in listed) == sorted(content_ids)
    assert seen == wl.record_ids
