"""The stand-ins (Entra ID, Management Activity API, Logs Ingestion) in a process of their own.

Why a process: the stand-ins serve from a thread, and in the measured process their work (TLS, the
ingestion stand-in's JSON parsing and column checks) would share the GIL and the CPU figures with the
connector. Here they run in a child the orchestrator drives through a pipe; it also holds the workload
and its ground truth, so it checks "every record exactly once" itself.
"""

from __future__ import annotations

import json
import traceback
from collections import Counter
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench._child import cpu
from standins.workload import RECORD_LEAD

ALERTS_STREAM = "Custom-IRMAlerts"
AUDIT_STREAM = "Custom-O365Audit"
#: Where the seed-style baseline posts raw blobs (a stream without column checks; see accept_raw).
RAW_STREAM = "Custom-SeedRaw"
REQUEST_LIMIT = 1024 * 1024


#: How long the simulated tenant's blobs were being created.
SPAN = timedelta(hours=9)


def one_day_start(now: datetime) -> datetime:
    """When the simulated tenant's blobs start: their records all fall on one UTC day, inside the connector's
    first listing (``INITIAL_LOOKBACK``, 24 hours) and the baseline's, and at least an hour old.

    A record's partition is its stream and ``CreationTime`` day, so a blob whose records span two days costs a
    claim per day. With a span across midnight the figures followed the hour of the run: 4.4 table requests
    per blob at 23:09Z, 5.8 at 03:25Z, where records duplicated across blobs came from the other day. The
    records fit between now - 23 h and now - 1 h; a midnight splits those 22 hours in two, the larger part at
    least 11 hours, which holds the span and the records' lead."""
    earliest, latest = now - timedelta(hours=23), now - timedelta(hours=1)
    midnight = latest.replace(hour=0, minute=0, second=0)
    if latest - max(midnight, earliest) >= SPAN + RECORD_LEAD:
        return latest - SPAN  # after the last midnight
    return midnight - timedelta(minutes=1) - SPAN  # before it: the earlier part is the larger


def serve(conn: Connection, params: dict[str, Any]) -> None:
    """Child entry point: start the stand-ins, publish the workload, then answer commands."""
    try:
        _serve(conn, params)
    except BaseException:
        conn.send({"error": traceback.format_exc()})
        raise


def _serve(conn: Connection, params: dict[str, Any]) -> None:
    from standins.services import StandIns
    from standins.workload import generate_workload

    workdir = Path(params["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    with StandIns(directory=workdir / "ca", page_size=200) as sim:
        sim.ingestion.accept_raw(RAW_STREAM)
        sim.management.set_subscription("Audit.General", "enabled")
        start = one_day_start(datetime.now(UTC).replace(microsecond=0))
        workload = generate_workload(
            seed=params.get("seed", 2026),
            total_records=params["records"],
            blob_size=tuple(params.get("blob_size", (200, 5000))),
            irm_share=params.get("irm_share", 0.01),
            duplicate_share=params.get("duplicate_share", 0.02),
            tenant_id=sim.tenant_id,
            start=start,
            span=SPAN,
        )
        workload.publish(sim.management)
        blobs = sim.management.blobs()
        blob_file = workdir / "blobs.bin"
        with blob_file.open("wb") as out:  # for the bare work: the very bytes the Management API serves
            for blob in blobs:
                head = {
                    "content_id": blob.content_id,
                    "content_type": blob.content_type,
                    "content_created": blob.content_created.isoformat(),
                    "content_uri": sim.management.content_uri(blob.content_id),
                    "length": len(blob.body),
                }
                out.write(json.dumps(head).encode() + b"\n")
                out.write(blob.body)
        truths = {"main": _Truth.of(workload)}
        info = {
            "env": sim.settings_env(),
            "tenant_id": sim.tenant_id,
            "blob_file": str(blob_file),
            "workload": {
                "unique_records": len(workload.record_ids),
                "records": workload.total_appearances,
                "duplicate_appearances": workload.duplicate_appearances,
                "irm_alerts": len(workload.irm_alert_record_ids),
                "blobs": len(blobs),
                "bytes": sum(len(b.body) for b in blobs),
                "largest_blob_records": max(len(b.records) for b in blobs),
                "smallest_blob_records": min(len(b.records) for b in blobs),
            },
        }
        del workload
        conn.send(info)
        cpu_mark = cpu()
        while True:
            command, args = conn.recv()
            if command == "stop":
                conn.send({"ok": True})
                return
            try:
                if command == "latency":
                    management, ingestion = args
                    sim.management.set_latency(management)
                    sim.ingestion.set_latency(ingestion)
                    reply: dict[str, Any] = {"ok": True}
                elif command == "reset":
                    sim.ingestion.clear_rows()
                    sim.ingestion.clear_log()
                    with sim.ingestion._lock:
                        sim.ingestion._stats.clear()
                    sim.management.clear_log()
                    cpu_mark = cpu()
                    reply = {"ok": True}
                elif command == "collect":
                    # Read before the check below: its digests of every row are the benchmark's work, not the
                    # stand-ins' (about a quarter of their CPU in the audit runs).
                    served = cpu() - cpu_mark
                    reply = _collect(sim, truths[args.get("truth", "main")], args)
                    reply["standins_cpu_seconds"] = served
                elif command == "big_blob":
                    reply = _big_blob(sim, args, truths)
                elif command == "burst":
                    reply = _burst(sim, args, truths)
                else:
                    reply = {"error": f"unknown command {command}"}
            except Exception:
                reply = {"error": traceback.format_exc()}
            conn.send(reply)


def _digest(value: dict[str, Any]) -> bytes:
    import hashlib

    import orjson

    return hashlib.blake2b(orjson.dumps(value, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


class _Truth:
    """The ground truth of the records published, built record by record (a record repeated across blobs counts
    once): how often each record id should arrive per stream, each record's bytes, and a digest of what each row
    should hold (the whole record for an audit row, the alert's values for an alert row), so that rows are checked
    by value: a row that kept its id and lost its content counts as wrong."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {"audit": Counter(), "alerts": Counter(), "bytes": {}, "audit_digest": {},
                                     "alerts_digest": {}}  # fmt: skip

    def add(self, record: dict[str, Any], *, alert: bool) -> None:
        import orjson

        from standins.stored import expected_alert_values

        rid, data = record["Id"], self.data
        data["audit"][rid] = 1
        data["bytes"][rid] = len(orjson.dumps(record))
        data["audit_digest"][rid] = _digest(record)
        if alert:
            data["alerts"][rid] = 1
            data["alerts_digest"][rid] = _digest(expected_alert_values(record))

    @classmethod
    def of(cls, workload: Any) -> dict[str, Any]:
        truth, alerts = cls(), set(workload.irm_alert_record_ids)
        for blob in workload.blobs:
            for record in blob.records:
                truth.add(record, alert=record["Id"] in alerts)
        return truth.data


def _collect(sim: Any, truth: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
    """What arrived: exactly-once checks against the ground truth, the bytes stored, and the ingestion
    requests."""

    out: dict[str, Any] = {"streams": {}, "requests": {}}
    expected_streams = args.get("expect", ())
    for stream, key in ((ALERTS_STREAM, "alerts"), (AUDIT_STREAM, "audit")):
        rows = sim.ingestion.rows(stream)
        if rows or key in expected_streams:
            out["streams"][stream] = check_stream(rows, truth, key, expected=key in expected_streams)
    raw_rows = sim.ingestion.rows(RAW_STREAM)
    if raw_rows:
        out["streams"][RAW_STREAM] = {"rows": len(raw_rows)}
    stats = sim.ingestion.stats()
    for stream in sorted({s.stream for s in stats}):
        mine = [s for s in stats if s.stream == stream]
        ok = [s for s in mine if s.status < 300]
        out["requests"][stream] = {
            "requests": len(mine),
            "accepted": len(ok),
            "rejected": len(mine) - len(ok),
            "rows": sum(s.rows for s in ok),
            "gzip": all(s.gzip for s in mine),
            "wire_bytes": sum(s.compressed_bytes for s in ok),
            "json_bytes": sum(s.uncompressed_bytes for s in ok),
            "max_wire_bytes": max((s.compressed_bytes for s in mine), default=0),
            "max_json_bytes": max((s.uncompressed_bytes for s in mine), default=0),
            "over_limit": sum(
                1 for s in mine if s.compressed_bytes > REQUEST_LIMIT or s.uncompressed_bytes > REQUEST_LIMIT
            ),
        }
    management = sim.management.requests()
    out["management_requests"] = dict(Counter(r.route for r in management))
    return out


def check_stream(rows: list[dict[str, Any]], truth: dict[str, Any], key: str, *, expected: bool) -> dict[str, Any]:
    """One stream's rows against the ground truth (``key``: "alerts" or "audit"): every record once, each row
    holding its record's values, and the bytes stored. A stream not ``expected`` should have no row at all."""
    import orjson

    from standins.stored import alert_values, o365audit_record

    seen = Counter(r.get("RecordId") for r in rows)
    want = truth[key] if expected else Counter()
    digests = truth[f"{key}_digest"]
    values = o365audit_record if key == "audit" else alert_values
    # By value too: a row that kept its id and lost or changed its content is not the record.
    wrong = sum(1 for r in rows if digests.get(r.get("RecordId")) != _digest(values(r)))
    return {
        "rows": len(rows),
        "expected": sum(want.values()),
        "duplicates": sum(n - 1 for n in seen.values() if n > 1),
        "missing": sum(1 for rid in want if rid not in seen),
        "unexpected": sum(1 for rid in seen if rid not in want),
        "wrong_values": wrong,
        "exactly_once": seen == want and not wrong,
        # What a table stores, approximated by the rows' compact JSON (an upper bound: Azure Monitor bills the
        # columns' values, not the JSON's field names), against the API's records.
        "stored_bytes": sum(len(orjson.dumps(r)) for r in rows),
        "api_record_bytes": sum(truth["bytes"].get(rid, 0) for rid in seen),
    }


def _big_blob(sim: Any, args: dict[str, Any], truths: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Publish one blob of about ``args['mb']`` MB and return a queue message for it."""
    from standins.workload import generate_workload

    target = int(args["mb"] * 1_000_000)
    probe = generate_workload(seed=99, total_records=2000, blob_size=(2000, 2000), tenant_id=sim.tenant_id)
    per_record = len(json.dumps(probe.blobs[0].records, separators=(",", ":"))) / 2000
    count = max(1, int(target / per_record))
    created = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    workload = generate_workload(
        seed=args.get("seed", 4242),
        total_records=count,
        blob_size=(count, count),
        irm_share=0.01,
        duplicate_share=0.0,
        tenant_id=sim.tenant_id,
        start=created,
        span=timedelta(seconds=1),
    )
    blob = workload.blobs[0]
    truths["big"] = _Truth.of(workload)
    content_id = sim.management.add_blob(blob.content_type, blob.records, content_created=blob.content_created)
    served = next(b for b in sim.management.blobs() if b.content_id == content_id)
    return {
        "content_id": content_id,
        "content_type": blob.content_type,
        "content_uri": sim.management.content_uri(content_id),
        "content_created": served.content_created.isoformat(),
        "content_expiration": served.expiration.isoformat(),
        "records": len(blob.records),
        "bytes": len(served.body),
    }


def _burst(sim: Any, args: dict[str, Any], truths: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Publish ``args['blobs']`` blobs of about ``args['mb']`` MB each and return a queue message for each.

    One set of records is generated and served ``blobs`` times, each time under other record Ids (so every
    blob's rows are its own, as in a catch-up burst); the stand-in keeps only the bodies."""
    import uuid

    from standins.workload import generate_workload

    target = int(args["mb"] * 1_000_000)
    probe = generate_workload(seed=98, total_records=2000, blob_size=(2000, 2000), tenant_id=sim.tenant_id)
    count = max(1, int(target / (len(json.dumps(probe.blobs[0].records, separators=(",", ":"))) / 2000)))
    created = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    workload = generate_workload(
        seed=args.get("seed", 4343), total_records=count, blob_size=(count, count), irm_share=0.01,
        duplicate_share=0.0, tenant_id=sim.tenant_id, start=created, span=timedelta(seconds=1),
    )  # fmt: skip
    records = workload.blobs[0].records
    originals = [r["Id"] for r in records]
    irm = set(workload.irm_alert_record_ids)
    truth = _Truth()
    messages = []
    for number in range(args["blobs"]):
        for record, original in zip(records, originals, strict=True):
            record["Id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"burst/{number}/{original}"))
            truth.add(record, alert=original in irm)
        body = json.dumps(records, separators=(",", ":")).encode()
        content_id = sim.management.add_blob(
            "Audit.General", [], content_created=created + timedelta(seconds=number), raw_body=body
        )
        served = next(b for b in sim.management.blobs() if b.content_id == content_id)
        messages.append({
            "content_id": content_id,
            "content_type": "Audit.General",
            "content_uri": sim.management.content_uri(content_id),
            "content_created": served.content_created.isoformat(),
            "content_expiration": served.expiration.isoformat(),
            "records": len(records),
            "bytes": len(body),
        })  # fmt: skip
    truths["burst"] = truth.data
    return {"messages": messages}
