"""The health rows: one per poller run and content type, sent to Sentinel through the same Logs Ingestion
path as the alerts, so Sentinel itself can tell when the connector goes quiet or falls behind, and what the
lag does not show: the backlog on the queue and its age, the poison queue, and a refusing DCR. When the DCR
refuses the health stream itself, the row goes to the log at error level (Application Insights) instead.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson

from . import __version__, refusals
from .errors import DeadlineError, IngestionError, IngestionRefusedError, StateError
from .models import ContentTypeReport, Row, utc_text

if TYPE_CHECKING:
    from .deadline import Deadline
    from .runtime import Runtime

__all__ = ["write_health"]

log = logging.getLogger(__name__)


def _subscription_status(report: ContentTypeReport) -> str:
    """What the run saw of the subscription; never "enabled" on no evidence (the poller does not list them)."""
    if report.subscription:  # started by this run, waiting for one started lately, or disabled (AF20023)
        return report.subscription
    if report.skipped:
        return "skipped"
    # A listing answers only while it is on: a page counts, though its window was stopped before its end.
    return "enabled" if report.windows_listed or report.blobs_listed else "unknown"


async def write_health(rt: Runtime, report: ContentTypeReport, *, deadline: Deadline | None = None) -> None:
    """One health row per run and content type, through the same ingestion path, so Sentinel itself can
    tell when the connector goes quiet. A failure here never fails the run."""
    settings = rt.settings
    if not settings.health_stream:
        return
    # The API's time of its last answer, when this machine's clock runs behind it: the lag never reads less than it is.
    now = max(datetime.now(UTC), rt.management.answered_at(report.content_type) or datetime.min.replace(tzinfo=UTC))
    lost = await _lost_blobs(rt, report.content_type)
    row = {
        "TimeGenerated": utc_text(now),
        "O365TenantId": settings.tenant_id,
        "ContentType": report.content_type,
        "Watermark": utc_text(report.watermark) if report.watermark else None,
        "LagSeconds": int((now - report.watermark).total_seconds()) if report.watermark else None,
        "BlobsListed": report.blobs_listed,
        "BlobsQueued": report.blobs_queued,
        "BlobsExpired": report.blobs_expired + len(lost),
        "BlobsRefused": report.blobs_refused,
        "Errors": 1 if report.error else 0,
        "LastError": report.error[:1000],
        "SubscriptionStatus": _subscription_status(report),
        "ConnectorVersion": __version__,
        **await _queue_facts(rt),
    }
    try:
        await rt.ingestor.upload(settings.health_stream, [Row("", "", orjson.dumps(row))], deadline=deadline)
    except IngestionRefusedError as exc:
        try:
            refusal = await refusals.refused(rt, exc)
            row["IngestionState"] = refusals.ingestion_state([refusal, *await _refused_streams(rt)])
        except StateError as error:
            log.warning("Could not record the refusal of %s: %s", settings.health_stream, error)
        facts = " ".join(f"{k}={v}" for k, v in row.items() if k not in ("TimeGenerated", "LastError"))
        log.error(
            "The health row for %s was refused by Logs Ingestion (HTTP %d); it reads: %s",
            report.content_type, exc.status, facts,
            extra={"content_type": report.content_type, **{f"health_{k}": v for k, v in row.items()}},
        )  # fmt: skip
    except (IngestionError, DeadlineError) as exc:
        log.warning("Could not write the health row for %s: %s", report.content_type, exc)
    else:
        await refusals.accepted(rt, settings.health_stream)
        try:
            await rt.state.lost_blobs.forget_lost(report.content_type, lost)
        except StateError as exc:  # the next row counts them again: a loss twice rather than never
            log.warning("Could not clear the lost blobs the health row counted for %s: %s", report.content_type, exc)


async def _lost_blobs(rt: Runtime, content_type: str) -> list[str]:
    """The blobs the processor found gone since the last health row; none when they cannot be read."""
    try:
        return await rt.state.lost_blobs.list_lost(content_type)
    except StateError as exc:
        log.warning("Could not read the lost blobs for the health row of %s: %s", content_type, exc)
        return []


async def _queue_facts(rt: Runtime) -> dict[str, object]:
    """The backlog, the poison queue and whether the DCR accepts the rows; what cannot be read stays empty."""
    facts: dict[str, object] = {}
    try:
        depth, oldest, poison = await rt.queue.backlog()
        facts |= {"QueueDepth": depth, "OldestQueuedSeconds": oldest, "PoisonDepth": poison}
    except StateError as exc:
        log.warning("Could not read the queue lengths for the health row: %s", exc)
    try:
        facts["IngestionState"] = refusals.ingestion_state(await _refused_streams(rt))
    except StateError as exc:
        log.warning("Could not read the refusal state for the health row: %s", exc)
    return facts


async def _refused_streams(rt: Runtime) -> list[refusals.Refusal]:
    """The refused streams but the health stream's own: a health row that arrives shows it is accepted."""
    return [r for r in (await refusals.standing(rt)).values() if r.stream != rt.settings.health_stream]
