"""Uploading rows: azure-monitor-ingestion's own ``upload`` against the connector's way.

The SDK (1.1.0) takes a list of dicts, serializes each record with the standard library, sizes chunks by
the sum of ``json.dumps`` lengths, gzips and sends them one after another. The connector sends rows it
serialized once (orjson), packed below the real limit, gzipped in threads and sent concurrently through
the same client (:class:`irm_connector.ingestion.SentinelIngestor`). Same rows, same stand-in, same
client; run in a fresh process so the CPU figures are this upload's alone.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from typing import Any

from bench._child import cpu, entry


@entry
def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Child entry point: ``cfg`` has env, blob_file, blobs (how many), way ("sdk" or "connector")."""
    return asyncio.run(_run(cfg))


async def _run(cfg: dict[str, Any]) -> dict[str, Any]:
    import orjson
    from azure.identity.aio import ClientSecretCredential
    from azure.monitor.ingestion.aio import LogsIngestionClient

    from bench.bare import load_blobs
    from irm_connector.blob_parse import parse_blob
    from irm_connector.ingestion import SentinelIngestor
    from irm_connector.normalize import ContentRef, Routing, normalize_blob

    env = cfg["env"]
    os.environ.update(env)
    stream = "Custom-O365Audit"
    rows = []
    for head, body in load_blobs(cfg["blob_file"])[: cfg["blobs"]]:
        ref = ContentRef(head["content_id"], head["content_type"], datetime.fromisoformat(head["content_created"]))
        out = normalize_blob(parse_blob(body), ref, Routing("Custom-IRMAlerts", stream), sent_at=datetime.now(UTC))
        rows.extend(out.rows[stream])
    credential = ClientSecretCredential(
        env["O365_TENANT_ID"],
        env["O365_CLIENT_ID"],
        env["O365_CLIENT_SECRET"],
        authority=env["O365_AUTHORITY_HOST"],
        connection_verify=env["SSL_CERT_FILE"],
    )
    client = LogsIngestionClient(env["LOGS_INGESTION_ENDPOINT"], credential, connection_verify=env["SSL_CERT_FILE"])
    failed: list[int] = []
    async with credential, client:
        await credential.get_token("https://monitor.azure.com/.default")  # the token is not what is timed
        if cfg["way"] == "sdk":
            logs = [orjson.loads(r.body) for r in rows]  # what a caller of the SDK has: dicts

            async def on_error(error: Any) -> None:
                failed.append(len(error.failed_logs))

            cpu0, wall0 = cpu(), time.perf_counter()
            await client.upload(rule_id=env["LOGS_DCR_IMMUTABLE_ID"], stream_name=stream, logs=logs, on_error=on_error)
        else:
            ingestor = SentinelIngestor(client, env["LOGS_DCR_IMMUTABLE_ID"], endpoint=env["LOGS_INGESTION_ENDPOINT"])
            cpu0, wall0 = cpu(), time.perf_counter()
            await ingestor.upload(stream, rows)
        seconds, cpu_seconds = time.perf_counter() - wall0, cpu() - cpu0
    return {"way": cfg["way"], "rows": len(rows), "seconds": seconds, "cpu_seconds": cpu_seconds,
            "failed_chunks": len(failed), "failed_rows": sum(failed)}
