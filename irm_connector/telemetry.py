"""Telemetry: Application Insights through the Azure Monitor OpenTelemetry distro, metrics, traces and
a log filter that keeps secrets out of every formatted record.

Nothing here does network or credential work at import. :func:`configure` is called by the handlers on
their first invocation (and by the CLI); it does nothing unless ``APPLICATIONINSIGHTS_CONNECTION_STRING``
is set. Until then (and without the distro installed) the OpenTelemetry API is a no-op: the metric and
span calls below cost next to nothing and send nothing.

With ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING=ClientId=<uami client id>;Authorization=AAD`` (what the
Bicep sets), telemetry is sent with the managed identity's Entra token, as an Application Insights
resource with local authentication disabled requires.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import __version__

__all__ = [
    "LOGGER_NAME",
    "RedactingFilter",
    "configure",
    "consumer_span",
    "install_redaction",
    "is_configured",
    "metrics_facade",
    "producer_span",
    "traceparent",
]

log = logging.getLogger(__name__)

LOGGER_NAME = "irm_connector"
_CONNECTION_STRING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
_AUTHENTICATION_STRING = "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"
#: App settings whose values must never appear in a log line.
SECRET_SETTINGS = (
    "O365_CLIENT_SECRET",
    "O365_CLIENT_CERTIFICATE",
    "O365_CLIENT_CERTIFICATE_PASSWORD",
    "AZURE_CLIENT_SECRET",
    "AzureWebJobsStorage",
    "IDENTITY_HEADER",
    "MSI_SECRET",
)

_lock = threading.Lock()
_configured = False


# -- configuration -------------------------------------------------------------------------------------


def is_configured() -> bool:
    """Whether :func:`configure` set up the Azure Monitor exporters in this process."""
    return _configured


def configure(env: Mapping[str, str] | None = None) -> bool:
    """Send traces, logs and metrics to Application Insights when the connection string is set.

    Idempotent and safe: returns whether telemetry is on; never raises (a telemetry problem must not stop
    the connector), and installs the secret-redacting log filter either way.
    """
    global _configured
    env = os.environ if env is None else env
    install_redaction(env)
    if _configured:
        return True
    connection_string = env.get(_CONNECTION_STRING, "").strip()
    if not connection_string:
        return False
    with _lock:
        if is_configured():  # another thread got here first
            return True
        try:
            from azure.monitor.opentelemetry import configure_azure_monitor
            from opentelemetry.sdk.resources import Resource
        except ImportError:
            log.warning(
                "%s is set but azure-monitor-opentelemetry is not installed; no telemetry is sent", _CONNECTION_STRING
            )
            return False
        kwargs: dict[str, Any] = {
            "connection_string": connection_string,
            "logger_name": LOGGER_NAME,
            "resource": Resource.create(
                {"service.name": env.get("WEBSITE_SITE_NAME", "") or "irm-connector", "service.version": __version__}
            ),
            # Only what this app uses: the Azure SDK spans (storage, ingestion) and requests (msal).
            "instrumentation_options": {
                name: {"enabled": False} for name in ("django", "fastapi", "flask", "psycopg2", "urllib")
            },
        }
        if not env.get("OTEL_TRACES_SAMPLER"):
            # Every blob's trace (a few per minute): the distro's default rate limiter drops the first ones.
            kwargs["sampling_ratio"] = 1.0
        credential = _credential(env.get(_AUTHENTICATION_STRING, ""))
        if credential is not None:
            kwargs["credential"] = credential
        try:
            configure_azure_monitor(**kwargs)
        except Exception as exc:
            log.warning("Could not configure Application Insights telemetry (%s); continuing without it", exc)
            return False
        _configured = True
        # The distro's handler hangs on the irm_connector logger: give it the redaction too.
        install_redaction(env)
        log.info("Application Insights telemetry configured")
        return True


def _credential(auth_string: str) -> Any:
    """The managed identity named by ``ClientId=...;Authorization=AAD``, or None."""
    if not auth_string.strip():
        return None
    parts: dict[str, str] = {}
    for item in auth_string.split(";"):
        key, sep, value = item.partition("=")
        if sep:
            parts[key.strip().lower()] = value.strip()
    if parts.get("authorization", "").upper() != "AAD":
        return None
    from azure.identity import ManagedIdentityCredential

    return ManagedIdentityCredential(client_id=parts.get("clientid") or None)


# -- redaction -----------------------------------------------------------------------------------------

_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*")
_TOKEN_FIELD = re.compile(
    r"(?i)([\"']?(?:access_token|refresh_token|id_token|client_secret|client_assertion|sig|accountkey|"
    r"sharedaccesssignature)[\"']?\s*[:=]\s*[\"']?)([^\"'&;,\s]+)"
)


class RedactingFilter(logging.Filter):
    """Replaces known secret values, bearer tokens and token fields in every formatted record."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        super().__init__("")
        self.secrets = [s for s in (secrets or []) if len(s) >= 6]

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        text = _BEARER.sub(r"\1 ***", text)
        return _TOKEN_FIELD.sub(r"\1***", text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler to report
            return True
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = str(exc)
            if self.redact(text) != text:
                record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        return True


_filter = RedactingFilter()


def _secrets(env: Mapping[str, str]) -> list[str]:
    values = [env.get(name, "").strip() for name in SECRET_SETTINGS]
    # A storage connection string: its AccountKey, not the whole string.
    for value in list(values):
        match = re.search(r"AccountKey=([^;]+)", value)
        if match:
            values.append(match.group(1))
    return [v for v in values if v and v != "UseDevelopmentStorage=true"]


def install_redaction(env: Mapping[str, str] | None = None, *, handlers: list[logging.Handler] | None = None) -> None:
    """Attach the redacting filter to the handlers of the root and ``irm_connector`` loggers (and to
    ``handlers``), learning the secret values from ``env``. Safe to call again."""
    env = os.environ if env is None else env
    for secret in _secrets(env):
        if len(secret) >= 6 and secret not in _filter.secrets:
            _filter.secrets.append(secret)
    targets = [*logging.getLogger().handlers, *logging.getLogger(LOGGER_NAME).handlers, *(handlers or [])]
    for handler in targets:
        if _filter not in handler.filters:
            handler.addFilter(_filter)


# -- traces ---------------------------------------------------------------------------------------------

_tracer = trace.get_tracer(LOGGER_NAME, __version__)
_propagator = TraceContextTextMapPropagator()


@contextmanager
def producer_span(name: str, attributes: Mapping[str, Any]) -> Iterator[Span]:
    """A span for work that hands a message on (the poller queuing a blob)."""
    with _tracer.start_as_current_span(name, kind=SpanKind.PRODUCER, attributes=dict(attributes)) as span:
        yield span


def traceparent() -> str:
    """The W3C ``traceparent`` of the current span; empty when no span is recorded (telemetry off)."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent", "")


@contextmanager
def consumer_span(name: str, parent: str, attributes: Mapping[str, Any]) -> Iterator[Span]:
    """A span for work that takes a message (the processor), a child of the ``traceparent`` it carried."""
    ctx = _propagator.extract({"traceparent": parent}) if parent else otel_context.get_current()
    with _tracer.start_as_current_span(name, context=ctx, kind=SpanKind.CONSUMER, attributes=dict(attributes)) as span:
        yield span


# -- metrics --------------------------------------------------------------------------------------------


class Metrics:
    """The connector's metrics (OpenTelemetry instruments; no-ops until a meter provider is configured)."""

    def __init__(self) -> None:
        meter = metrics.get_meter(LOGGER_NAME, __version__)
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
        self._last: dict[tuple[int, str], int] = {}

    def delta(self, source: object, name: str, value: int) -> int:
        """How much the running total ``value`` of ``source`` grew since the last call (shared stats objects)."""
        key = (id(source), name)
        previous = self._last.get(key, 0)
        self._last[key] = value
        return max(0, value - previous) if value >= previous else value


metrics_facade = Metrics()
