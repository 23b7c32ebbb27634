"""What each trigger does: read the settings, get the process's clients, run the poller or the processor.

``function_app.py`` binds these to the Functions triggers; the CLI, the demo and the tests call the
same code.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import azure.functions as func

from . import telemetry
from .content_queue import ContentMessage
from .errors import BadMessageError, SettingsError, StateError
from .failures import message_key
from .poller import PollFailed, PollReport, run_poller
from .processor import ProcessResult, process_message
from .runtime import Runtime, get_runtime
from .settings import Settings

__all__ = ["poll", "process"]

log = logging.getLogger("irm_connector")


def _settings() -> Settings:
    telemetry.configure()  # first invocation only; a no-op without APPLICATIONINSIGHTS_CONNECTION_STRING
    try:
        return Settings.from_env()
    except SettingsError as exc:
        log.error("Configuration error: %s", exc)
        raise


async def poll(timer: func.TimerRequest) -> PollReport:
    """Timer trigger: one poller run."""
    settings = _settings()
    if timer.past_due:
        log.info("Poller timer is past due; the watermark catches up whatever was missed")
    rt = await get_runtime(settings)
    try:
        report = await run_poller(rt)
    except PollFailed as exc:
        record_poll_metrics(rt, exc.report)
        raise
    record_poll_metrics(rt, report)
    log.info(
        "Poller run: %d blobs queued (%s)",
        report.blobs_queued,
        ", ".join(f"{r.content_type}: {r.blobs_queued} queued, watermark {r.watermark}" for r in report.content_types),
    )
    return report


async def process(message: func.QueueMessage) -> ProcessResult:
    """Queue trigger: one content blob."""
    settings = _settings()
    dequeue_count = message.dequeue_count or 1
    rt = await get_runtime(settings)
    body = message.get_body()
    try:
        parsed: ContentMessage | None = ContentMessage.decode(body)
    except BadMessageError:
        parsed = None  # process_message says why and parks it
    dims = {"tenant_id": settings.tenant_id}
    if parsed is not None:
        dims |= {"content_type": parsed.blob.content_type, "content_id": parsed.blob.content_id}
    # The poller's span for this blob is the parent: one trace from listing to ingestion.
    with telemetry.consumer_span("irm.process_blob", parsed.traceparent if parsed else "", dims) as span:
        try:
            result = await process_message(
                rt, body, dequeue_count=dequeue_count, message_id=message.id or "", decoded=parsed
            )
        except Exception as exc:
            telemetry.metrics_facade.failures.add(1, dims)
            record_request_metrics(rt)
            span.record_exception(exc)
            await _record_failure(rt, body, exc, dequeue_count)
            raise
        span.set_attribute("outcome", result.outcome)
    record_process_metrics(rt, result, dims)
    if result.outcome in ("bad-message", "untrusted-url"):
        await _record_failure(rt, body, None, dequeue_count, reason=result.detail)
    elif dequeue_count > 1:
        await _forget_failure(rt, body)  # an earlier attempt failed; this one did not
    return result


async def _record_failure(
    rt: Runtime, body: bytes | str, exc: BaseException | None, attempts: int, *, reason: str = ""
) -> None:
    """Remember why the message failed, for ``irm-connector poison list``; never fails the invocation."""
    try:
        await rt.failures.record(body, exc or RuntimeError(reason), attempts=attempts, reason=reason)
    except StateError as error:
        log.warning("Could not record the failure reason: %s", error)


async def _forget_failure(rt: Runtime, body: bytes | str) -> None:
    try:
        await rt.failures.forget(message_key(body)[0])
    except StateError as error:
        log.debug("Could not forget the failure reason: %s", error)


# -- metrics -----------------------------------------------------------------------------------------


def record_request_metrics(rt: Runtime) -> None:
    """Throttled and retried Management API requests since the last call (the client keeps running totals)."""
    m = telemetry.metrics_facade
    stats = rt.management.stats
    dims = {"tenant_id": rt.settings.tenant_id}
    throttled = m.delta(stats, "throttled", stats.throttled)
    retried = m.delta(stats, "retried", stats.retried)
    if throttled:
        m.requests_throttled.add(throttled, dims)
    if retried:
        m.requests_retried.add(retried, dims)


def record_poll_metrics(rt: Runtime, report: PollReport) -> None:
    m = telemetry.metrics_facade
    now = datetime.now(UTC)
    for ct in report.content_types:
        dims = {"content_type": ct.content_type, "tenant_id": rt.settings.tenant_id}
        m.blobs_listed.add(ct.blobs_listed, dims)
        m.blobs_queued.add(ct.blobs_queued, dims)
        if ct.blobs_expired:
            m.blobs_expired.add(ct.blobs_expired, {**dims, "stage": "poller"})
        if ct.watermark is not None:
            m.poller_lag.record(max(0.0, (now - ct.watermark).total_seconds()), dims)
    record_request_metrics(rt)


def record_process_metrics(rt: Runtime, result: ProcessResult, dims: dict[str, str]) -> None:
    m = telemetry.metrics_facade
    base = {k: v for k, v in dims.items() if k != "content_id"}  # content ids would explode the cardinality
    m.blobs_processed.add(1, {**base, "outcome": result.outcome})
    if result.outcome == "expired":
        m.blobs_expired.add(1, {**base, "stage": "processor"})
    if result.records:
        m.records_received.add(result.records, base)
    for stream, rows in result.rows_sent.items():
        m.rows_ingested.add(rows, {**base, "stream": stream})
    dropped = result.duplicates_dropped + result.claimed_elsewhere
    if dropped:
        m.duplicates_dropped.add(dropped, base)
    if result.outcome == "ingested":
        m.content_lag.record(result.content_lag_seconds, base)
    record_request_metrics(rt)
