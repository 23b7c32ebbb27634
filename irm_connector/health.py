"""The health rows: one per poller run and content type, sent to Sentinel through the same Logs Ingestion
path as the alerts, so Sentinel itself can tell when the connector goes quiet or falls behind.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson

from . import __version__
from .errors import IngestionError
from .models import ContentTypeReport, Row, utc_text

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["write_health"]

log = logging.getLogger(__name__)


async def write_health(rt: Runtime, report: ContentTypeReport) -> None:
    """One health row per run and content type, through the same ingestion path, so Sentinel itself can
    tell when the connector goes quiet. A failure here never fails the run."""
    settings = rt.settings
    if not settings.health_stream:
        return
    now = datetime.now(UTC)
    row = {
        "TimeGenerated": utc_text(now),
        "O365TenantId": settings.tenant_id,
        "ContentType": report.content_type,
        "Watermark": utc_text(report.watermark) if report.watermark else None,
        "LagSeconds": int((now - report.watermark).total_seconds()) if report.watermark else None,
        "BlobsListed": report.blobs_listed,
        "BlobsQueued": report.blobs_queued,
        "BlobsExpired": report.blobs_expired,
        "BlobsRefused": report.blobs_refused,
        "Errors": 1 if report.error else 0,
        "LastError": report.error[:1000],
        "SubscriptionStatus": report.subscription or ("skipped" if report.skipped else "enabled"),
        "ConnectorVersion": __version__,
    }
    try:
        await rt.ingestor.upload(settings.health_stream, [Row("", "", orjson.dumps(row))])
    except IngestionError as exc:
        log.warning("Could not write the health row for %s: %s", report.content_type, exc)
