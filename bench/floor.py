"""The I/O floor: the bare work plus the requests a blob needs, and nothing else, in a fresh process.

The bare work has no I/O, which no connector can match: each blob must be queued, downloaded, claimed
and uploaded. This run makes just those requests, with the connector's own clients (the same transports,
TLS, authentication and retries), as many blobs side by side as the host runs: per blob, its queue message
and its download; per stream and ``CreationTime`` day of its rows, a read of the partition, a write of the
rows' keys, a read back, the upload, and the sent mark. It keeps no cache, waits for nobody and never reads
keys back (the reads list the entities only), so it is a lower bound: it does not dedupe, and the rows it
uploads are not checked. What the connector costs above it is its own logic: the claim rules, the caches,
the host's part, telemetry and the rest.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench._child import cpu, entry, peak_rss_mb, use_connector_settings
from bench.connector_proc import RequestCounter, requests_by_service
from irm_connector.blob_parse import iter_blob
from irm_connector.content_queue import ContentMessage
from irm_connector.models import ContentBlob, Row
from irm_connector.normalize import ContentRef, Routing, normalize_blob
from irm_connector.runtime import Runtime, close_runtimes, get_runtime
from irm_connector.settings import Settings
from irm_connector.state.shards import SENT, digest, shard_entity
from irm_connector.state.slots import Slots


@entry
def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Child entry point: ``cfg`` has env (the connector's settings), blob_file, concurrency."""
    use_connector_settings(cfg["env"])  # the modules it uses were imported with it, before the clock starts
    heads = _heads(cfg["blob_file"])
    counter = RequestCounter()
    counter.install()
    cpu0, wall0 = cpu(), time.perf_counter()
    out = asyncio.run(_all(heads, int(cfg["concurrency"])))
    out["seconds"] = time.perf_counter() - wall0
    out["cpu_seconds"] = cpu() - cpu0
    out["peak_rss_mb"] = peak_rss_mb()
    out["http_requests"] = requests_by_service(counter.counts, cfg["env"])
    return out


def _heads(path: str) -> list[dict[str, Any]]:
    """What the blob file says of each blob (the bodies are downloaded, as the connector does)."""
    out = []
    with open(path, "rb") as handle:
        while line := handle.readline():
            head = json.loads(line)
            handle.seek(head["length"], os.SEEK_CUR)
            out.append(head)
    return out


async def _all(heads: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    rt = await get_runtime(Settings.from_env())
    gate = asyncio.Semaphore(concurrency)
    totals = {"records": 0, "rows": 0, "slots": 0}

    async def one(head: dict[str, Any]) -> None:
        async with gate:
            records, rows, slots = await _blob(rt, head)
        totals["records"] += records
        totals["rows"] += rows
        totals["slots"] += slots

    try:
        await asyncio.gather(*(one(head) for head in heads))
    finally:
        await close_runtimes()
    return {**totals, "blobs": len(heads)}


async def _blob(rt: Runtime, head: dict[str, Any]) -> tuple[int, int, int]:
    created = datetime.fromisoformat(head["content_created"])
    blob = ContentBlob(
        content_type=head["content_type"],
        content_id=head["content_id"],
        content_uri=head["content_uri"],
        content_created=created,
        content_expiration=created + timedelta(days=7),
    )
    settings = rt.settings
    await rt.queue.put(ContentMessage(tenant_id=settings.tenant_id, blob=blob))
    raw = await rt.management.get_content(blob.content_uri, content_type=blob.content_type)
    routing = Routing(settings.alerts_stream, settings.audit_stream, settings.alert_categories)
    ref = ContentRef(blob.content_id, blob.content_type, created)
    out = normalize_blob(iter_blob(raw), ref, routing, sent_at=datetime.now(UTC))
    tables = rt.state.tables
    slots = Slots(tables)
    rules = slots.rules(datetime.now(UTC))
    owner = blob.content_id[-24:]
    listing = ["RowKey", "S", "K", "Timestamp"]
    count = 0

    async def stream(name: str, rows: list[Row]) -> None:
        nonlocal count
        marks = []
        for slot, group in slots.group(name, rows, rules).items():
            part = slot.primary
            since: dict[str, str | datetime] = {"pk": part.pk, "since": datetime.now(UTC) - timedelta(seconds=2)}
            query = "PartitionKey eq @pk and Timestamp ge @since"
            await tables.query_plain(part.table, query, since, select=listing)
            key = f"{owner}.{count}"
            count += 1
            digests = [digest(row.record_id) for row in group]
            entity = shard_entity(part.pk, key, owner=owner, blob=owner, digests=digests, sent=False, first=None)
            etag = await tables.upsert(part.table, entity)
            await tables.query_plain(part.table, query, since, select=listing)
            marks.append((part, key, etag))
        await rt.ingestor.upload(name, rows)
        for part, key, etag in marks:
            sent = {"PartitionKey": part.pk, "RowKey": key, "S": SENT}
            await tables.merge_unless_changed(part.table, sent, etag or "*")

    await asyncio.gather(*(stream(name, rows) for name, rows in out.rows.items()))
    return out.records, sum(len(rows) for rows in out.rows.values()), count
