"""Telemetry: Application Insights through the Azure Monitor OpenTelemetry distro, and the spans that
follow one blob from the poller to the processor (the metrics are in :mod:`.metrics`, the log redaction
in :mod:`.redaction`).

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
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import __version__
from ._tls import ca_file
from .redaction import LOGGER_NAME, install_redaction, redact_exception

__all__ = [
    "configure",
    "consumer_span",
    "is_configured",
    "producer_span",
    "record_failure",
    "traceparent",
]

log = logging.getLogger(__name__)

_CONNECTION_STRING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
_AUTHENTICATION_STRING = "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"
#: The Python worker's own switch for debug logs (its root logger at DEBUG instead of INFO).
_DEBUG_LOGGING = "PYTHON_ENABLE_DEBUG_LOGGING"
#: What the worker reads as on (``is_true_like`` in azure-functions-python-worker).
_TRUE = frozenset({"1", "true", "t", "yes", "y"})
#: Loggers that write a line at INFO for each request, or each export, of a busy app: azure-core's
#: ``HttpLoggingPolicy`` (every request and response of every Azure SDK client) and the Azure Monitor
#: exporters ("Transmission succeeded" every few seconds, the live metrics' state); and azure-identity, which
#: logs two lines at INFO each time a credential gives a token, cached or not (in ``managed_identity`` mode,
#: every Management API call). Their failures are warnings, and stay.
_CHATTY_LOGGERS = (
    "azure.core.pipeline.policies.http_logging_policy", "azure.monitor.opentelemetry", "azure.identity",
)  # fmt: skip
#: The Python worker's own loggers (``is_system_log_category`` in azure-functions-python-worker): it sends their
#: lines to the platform's logs, never to the app's Application Insights.
_WORKER_LOGGERS = ("azure_functions_worker", "azure.functions")
_lock = threading.Lock()
_configured = False


# -- configuration -------------------------------------------------------------------------------------


def is_configured() -> bool:
    """Whether :func:`configure` set up the Azure Monitor exporters in this process."""
    return _configured


def configure(env: Mapping[str, str] | None = None) -> bool:
    """Send traces, logs and metrics to Application Insights when the connection string is set.

    Idempotent and safe: returns whether telemetry is on; never raises (a telemetry problem must not stop
    the connector). Either way it installs the secret-redacting log filter and quiets the Azure SDKs'
    per-request log lines.
    """
    global _configured
    env = os.environ if env is None else env
    install_redaction(env)
    _quiet_chatty_loggers(env)
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
            # Every logger's lines, the Azure SDKs' warnings too: with PYTHON_ENABLE_OPENTELEMETRY the host drops
            # what the worker forwards to it, so this handler is their one way to Application Insights.
            "logger_name": "",
            "resource": Resource.create(
                {"service.name": env.get("WEBSITE_SITE_NAME", "") or "irm-connector", "service.version": __version__}
            ),
            # Only what this app uses: the Azure SDK spans (storage, ingestion) and requests (msal).
            "instrumentation_options": {
                name: {"enabled": False} for name in ("django", "fastapi", "flask", "psycopg2", "urllib")
            },
        }
        cafile = ca_file()
        if cafile is not None:
            # The exporters send through requests, which reads REQUESTS_CA_BUNDLE and never SSL_CERT_FILE: with a
            # proxy's CA given there alone, as the connector's other clients take it, not one line arrived.
            kwargs["connection_verify"] = cafile
        if not env.get("OTEL_TRACES_SAMPLER"):
            # Every blob's trace (a few per minute): the distro's default rate limiter drops the first ones.
            kwargs["sampling_ratio"] = 1.0
        credential = _credential(env.get(_AUTHENTICATION_STRING, ""))
        if credential is not None:
            kwargs["credential"] = credential
        root = logging.getLogger()
        before = list(root.handlers)
        try:
            configure_azure_monitor(**kwargs)
        except Exception as exc:
            log.warning(
                "Could not configure Application Insights telemetry (%s): check %s (copy it from the Application "
                "Insights resource) and %s; no telemetry is sent, the connector runs on",
                exc, _CONNECTION_STRING, _AUTHENTICATION_STRING,
            )  # fmt: skip
            return False
        _configured = True
        for handler in root.handlers:
            if handler not in before:
                handler.addFilter(_not_the_workers_own)
        # The distro's handler hangs on the root logger: give it the redaction too.
        install_redaction(env)
        log.info("Application Insights telemetry configured")
        return True


def _not_the_workers_own(record: logging.LogRecord) -> bool:
    return not record.name.startswith(_WORKER_LOGGERS)


def _quiet_chatty_loggers(env: Mapping[str, str]) -> None:
    """Keep the Azure SDKs' per-request lines out of the logs, unless the worker's debug logging is on.

    The Python worker sets the root logger to INFO and forwards every record to the host, and the distro's
    handler on the root logger sends each to Application Insights (``traces``). At INFO, azure-core logs each
    request and each response of every Azure SDK client, headers included: about 45 records and 22 kB per blob,
    against the connector's one or two, billed by the GB; the exporters add a line per export.
    ``PYTHON_ENABLE_DEBUG_LOGGING=1``, the worker's switch for debug logs, lets them through; so does a level
    someone set on those loggers before the first invocation.
    """
    if env.get(_DEBUG_LOGGING, "").strip().lower() in _TRUE:
        return
    for name in _CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


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


# -- traces ---------------------------------------------------------------------------------------------

_tracer = trace.get_tracer(LOGGER_NAME, __version__)
_propagator = TraceContextTextMapPropagator()


@contextmanager
def producer_span(name: str, attributes: Mapping[str, Any]) -> Iterator[Span]:
    """A span for work that hands a message on (the poller queuing a blob). A failure that leaves it is recorded
    redacted (:func:`record_failure`): recorded by OpenTelemetry itself, its whole chain went to Application
    Insights as it was, a storage URL's ``sig=`` among it."""
    with _tracer.start_as_current_span(
        name, kind=SpanKind.PRODUCER, attributes=dict(attributes), record_exception=False,
        set_status_on_exception=False,
    ) as span:  # fmt: skip
        try:
            yield span
        except Exception as exc:
            record_failure(span, exc)
            raise


def traceparent() -> str:
    """The W3C ``traceparent`` of the current span; empty when no span is recorded (telemetry off)."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent", "")


def record_failure(span: Span, exc: BaseException) -> None:
    """Mark ``span`` failed with ``exc``, its text redacted: what a span records bypasses the logging filter."""
    exc = redact_exception(exc)
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


@contextmanager
def consumer_span(name: str, parent: str, attributes: Mapping[str, Any]) -> Iterator[Span]:
    """A span for work that takes a message (the processor), a child of the ``traceparent`` it carried."""
    ctx = _propagator.extract({"traceparent": parent}) if parent else otel_context.get_current()
    # Its failures are recorded by the caller, redacted (:func:`record_failure`), and raised outside it: nothing that
    # leaves it is for OpenTelemetry to record as it is.
    with _tracer.start_as_current_span(
        name, context=ctx, kind=SpanKind.CONSUMER, attributes=dict(attributes), record_exception=False,
        set_status_on_exception=False,
    ) as span:  # fmt: skip
        yield span
