"""The bare work: the CPU work no collector can avoid, with no I/O, in one process.

For every blob (the very bytes the Management API stand-in serves, read from a file before the clock
starts): parse it, normalize it, serialize the rows (``normalize_blob`` does both), pack them into
request bodies and gzip each at the level the connector sends — the same functions the connector uses.
"""

from __future__ import annotations

import json
import time
import zlib
from datetime import UTC, datetime
from typing import Any

from bench._child import cpu, entry, peak_rss_mb


def load_blobs(path: str) -> list[tuple[dict[str, Any], bytes]]:
    out = []
    with open(path, "rb") as handle:
        while True:
            line = handle.readline()
            if not line:
                break
            head = json.loads(line)
            out.append((head, handle.read(head["length"])))
    return out


@entry
def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Child entry point: ``cfg`` has blob_file, audit_stream ("" = alerts only)."""
    from irm_connector.blob_parse import parse_blob
    from irm_connector.ingestion import COMPRESS_LEVEL, PACK_LIMIT, pack_rows
    from irm_connector.normalize import ContentRef, Routing, normalize_blob

    blobs = load_blobs(cfg["blob_file"])
    routing = Routing("Custom-IRMAlerts", cfg.get("audit_stream", ""))
    records = rows = requests = raw_bytes = sent_bytes = 0
    # Per stream: the fewest requests that could carry each blob's rows (its bytes over the packing limit).
    fewest: dict[str, int] = {}
    phases = {"parse": 0.0, "normalize": 0.0, "pack": 0.0, "gzip": 0.0}
    clock = time.perf_counter
    cpu0, wall0 = cpu(), clock()
    for head, body in blobs:
        t0 = clock()
        parsed = parse_blob(body)
        t1 = clock()
        ref = ContentRef(head["content_id"], head["content_type"], datetime.fromisoformat(head["content_created"]))
        out = normalize_blob(parsed, ref, routing, sent_at=datetime.now(UTC))
        t2 = clock()
        records += out.records
        phases["parse"] += t1 - t0
        phases["normalize"] += t2 - t1
        for stream, stream_rows in out.rows.items():
            rows += len(stream_rows)
            t3 = clock()
            chunks = pack_rows(stream_rows)
            t4 = clock()
            fewest[stream] = fewest.get(stream, 0) + -(-sum(len(c.raw) for c in chunks) // PACK_LIMIT)
            for chunk in chunks:
                body_bytes = chunk.raw
                compressed = zlib.compress(body_bytes, COMPRESS_LEVEL, 31)
                requests += 1
                raw_bytes += len(body_bytes)
                sent_bytes += len(compressed)
            phases["pack"] += t4 - t3
            phases["gzip"] += clock() - t4
    seconds = clock() - wall0
    return {
        "records": records,
        "rows": rows,
        "requests": requests,
        "fewest_requests": fewest,
        "raw_bytes": raw_bytes,
        "sent_bytes": sent_bytes,
        "seconds": seconds,
        "cpu_seconds": cpu() - cpu0,
        "phases": phases,
        "peak_rss_mb": peak_rss_mb(),
    }
