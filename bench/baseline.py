"""The seed-style baseline: what the seed's Logic App does, written plainly.

List the content of the last 24 hours (following ``NextPageUri``), then for each blob, one after
another: GET it and POST its JSON array as it came to the ingestion stand-in (a raw stream modelled on
the HTTP Data Collector API the Logic App's "Send data" step uses: no columns, 30 MB a post, no gzip).
No dedupe, no normalization, no state. Tokens come from the Entra stand-in by client credentials.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

from bench._child import cpu, entry, peak_rss_mb

RAW_STREAM = "Custom-SeedRaw"


@entry
def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Child entry point; ``cfg['env']`` are the stand-ins' settings."""
    cpu0, wall0 = cpu(), time.perf_counter()
    result = asyncio.run(_run(cfg["env"]))
    result["seconds"] = time.perf_counter() - wall0
    result["cpu_seconds"] = cpu() - cpu0
    result["peak_rss_mb"] = peak_rss_mb()
    return result


async def _token(session: Any, env: dict[str, str], scope: str) -> str:
    url = f"{env['O365_AUTHORITY_HOST']}/{env['O365_TENANT_ID']}/oauth2/v2.0/token"
    form = {
        "grant_type": "client_credentials",
        "client_id": env["O365_CLIENT_ID"],
        "client_secret": env["O365_CLIENT_SECRET"],
        "scope": scope,
    }
    async with session.post(url, data=form) as response:
        response.raise_for_status()
        return str((await response.json())["access_token"])


async def _run(env: dict[str, str]) -> dict[str, Any]:
    import aiohttp

    context = ssl.create_default_context(cafile=env["SSL_CERT_FILE"])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        api_token = await _token(session, env, f"{env['O365_API_ROOT']}/.default")
        ingest_token = await _token(session, env, "https://monitor.azure.com/.default")
        api = {"Authorization": f"Bearer {api_token}", "Accept": "application/json"}
        feed = f"{env['O365_API_ROOT']}/api/v1.0/{env['O365_TENANT_ID']}/activity/feed"
        publisher = {"PublisherIdentifier": env["O365_TENANT_ID"]}
        blobs: list[dict[str, Any]] = []
        url: str | None = f"{feed}/subscriptions/content?contentType=Audit.General"
        requests = 0
        while url:
            async with session.get(url, headers=api, params=publisher) as response:
                response.raise_for_status()
                blobs.extend(await response.json())
                url = response.headers.get("NextPageUri")
            requests += 1
        post_url = (
            f"{env['LOGS_INGESTION_ENDPOINT']}/dataCollectionRules/{env['LOGS_DCR_IMMUTABLE_ID']}"
            f"/streams/{RAW_STREAM}?api-version=2023-01-01"
        )
        post_headers = {"Authorization": f"Bearer {ingest_token}", "Content-Type": "application/json"}
        sent = 0
        posts = 0
        for blob in blobs:
            async with session.get(blob["contentUri"], headers=api, params=publisher) as response:
                response.raise_for_status()
                body = await response.read()
            requests += 1
            async with session.post(post_url, data=body, headers=post_headers) as response:
                response.raise_for_status()
            posts += 1
            sent += len(body)
        return {"blobs": len(blobs), "management_requests": requests, "ingestion_requests": posts, "bytes": sent}
