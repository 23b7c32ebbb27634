"""The connector's metrics: the OpenTelemetry instruments and what one poller run or one processed blob adds
to them.

The instruments are no-ops until :func:`irm_connector.telemetry.configure` installs a meter provider (with
``APPLICATIONINSIGHTS_CONNECTION_STRING``), so recording costs next to nothing when telemetry is off. The
clients add to the counters where things happen (a retry, a throttled call); the two ``record_`` functions
add what a whole run or blob amounted to.
"""

from __future__ import annotations

from datetime import UTC, datetime

from opentelemetry import metrics as otel_metrics

from . import __version__
from .models import PollReport, ProcessResult

__all__ = ["Metrics", "metrics", "record_failure", "record_poll", "record_process"]

_METER = "irm_connector"


class Metrics:
    """The connector's instruments (see README, Operations, for what each means)."""

    def __init__(self, meter: otel_metrics.Meter | None = None) -> None:
        meter = meter or otel_metrics.get_meter(_METER, __version__)
        self.blobs_listed = meter.create_counter("irm.blobs.listed", "{blob}", "Content blobs listed by the poller")
        self.blobs_queued = meter.create_counter("irm.blobs.queued", "{blob}", "Content blobs queued by the poller")
        self.blobs_processed = meter.create_counter(
            "irm.blobs.processed", "{blob}", "Content messages completed by the processor, by outcome"
        )
        self.blobs_expired = meter.create_counter(
            "irm.blobs.expired", "{blob}", "Content blobs that expired before they were queued or processed"
        )
        self.records_received = meter.create_counter(
            "irm.records.received", "{record}", "Audit records downloaded by the processor"
        )
        self.rows_ingested = meter.create_counter(
            "irm.rows.ingested", "{row}", "Rows accepted by the Logs Ingestion API, by stream"
        )
        self.duplicates_dropped = meter.create_counter(
            "irm.duplicates.dropped", "{record}", "Records not sent again because they were already sent or claimed"
        )
        self.requests_throttled = meter.create_counter(
            "irm.requests.throttled", "{request}", "Management API requests answered with throttling"
        )
        self.requests_retried = meter.create_counter(
            "irm.requests.retried", "{request}", "Management API requests retried"
        )
        self.upload_duration = meter.create_histogram(
            "irm.upload.duration", "s", "Time to upload one blob's rows of one stream to Logs Ingestion"
        )
        self.content_lag = meter.create_histogram(
            "irm.content.lag", "s", "Processing time minus contentCreated, per blob"
        )
        self.poller_lag = meter.create_histogram(
            "irm.poller.lag", "s", "Now minus the watermark after a poller run, per content type"
        )
        self.failures = meter.create_counter(
            "irm.processor.failures", "{attempt}", "Processor attempts that raised (the host retries them)"
        )


metrics = Metrics()


def record_poll(report: PollReport, tenant_id: str) -> None:
    """What one poller run listed, queued and lost to expiry, and how far behind each content type is."""
    now = datetime.now(UTC)
    for ct in report.content_types:
        dims = {"content_type": ct.content_type, "tenant_id": tenant_id}
        metrics.blobs_listed.add(ct.blobs_listed, dims)
        metrics.blobs_queued.add(ct.blobs_queued, dims)
        if ct.blobs_expired:
            metrics.blobs_expired.add(ct.blobs_expired, {**dims, "stage": "poller"})
        if ct.watermark is not None:
            metrics.poller_lag.record(max(0.0, (now - ct.watermark).total_seconds()), dims)


def _series(dims: dict[str, str]) -> dict[str, str]:
    """A metric's dimensions: the span's, without the content id (one series per blob, kept by the SDK for as
    long as the worker lives)."""
    return {k: v for k, v in dims.items() if k != "content_id"}


def record_failure(dims: dict[str, str]) -> None:
    """A message whose processing failed (the host retries it)."""
    metrics.failures.add(1, _series(dims))


def record_process(result: ProcessResult, dims: dict[str, str]) -> None:
    """What one completed message amounted to."""
    base = _series(dims)
    metrics.blobs_processed.add(1, {**base, "outcome": result.outcome})
    if result.outcome == "expired":
        metrics.blobs_expired.add(1, {**base, "stage": "processor"})
    if result.records:
        metrics.records_received.add(result.records, base)
    for stream, rows in result.rows_sent.items():
        metrics.rows_ingested.add(rows, {**base, "stream": stream})
    dropped = result.duplicates_dropped + result.claimed_elsewhere
    if dropped:
        metrics.duplicates_dropped.add(dropped, base)
    if result.outcome == "ingested":
        metrics.content_lag.record(result.content_lag_seconds, base)
