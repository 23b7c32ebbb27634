"""Telemetry: configured only with a connection string (and then it really sends), secrets never logged,
one trace from the poller to the processor, and the health row of each poller run."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypedDict, cast

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from irm_connector import __version__, telemetry
from irm_connector.errors import PollError, SettingsError
from irm_connector.redaction import RedactingFilter
from standins import StandIns
from standins.tls import TestCA
from standins.workload import generate_workload
from tests.harness import ConnectorHarness
from tests.telemetry.conftest import AppInsightsStandIn

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Configures telemetry in a fresh process (the distro sets process-wide providers), uses it, flushes, reports.
_SCRIPT = textwrap.dedent(
    """
    import json, logging, os
    from irm_connector import telemetry
    from irm_connector.metrics import metrics as irm_metrics
    to_the_host = []  # below WARNING, what the Python worker would forward to the host: its root logger is at INFO
    class ToTheHost(logging.Handler):
        def emit(self, record):
            if record.levelno < logging.WARNING:
                to_the_host.append(record.name)
    logging.getLogger().addHandler(ToTheHost())
    logging.getLogger().setLevel(logging.INFO)
    configured = telemetry.configure()
    from opentelemetry import metrics, trace
    from opentelemetry._logs import get_logger_provider
    log = logging.getLogger("irm_connector.poller")
    with telemetry.producer_span("irm.queue_blob", {"content_type": "Audit.General", "content_id": "blob-1"}):
        parent = telemetry.traceparent()
        log.warning("queued blob %s (and, by mistake, the secret %s)", "blob-1", os.environ["O365_CLIENT_SECRET"],
                    extra={"content_type": "Audit.General", "content_id": "blob-1", "tenant_id": "t-1"})
    try:  # an error logged with its exception, whose text carries the secret (an echo of a refused request)
        raise ValueError("token request refused: client_secret=" + os.environ["O365_CLIENT_SECRET"])
    except ValueError:
        log.error("a failure, logged with its exception", exc_info=True)
    # Lines of other loggers: an Azure SDK's warning, and the Python worker's own (its platform log's, never the app's).
    logging.getLogger("azure.core.pipeline.policies._retry").warning("retrying a storage request (%s)", "sdk-line-1")
    logging.getLogger("azure_functions_worker").info("Received FunctionInvocationRequest (%s)", "worker-line-1")
    irm_metrics.blobs_queued.add(3, {"content_type": "Audit.General"})
    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider(), get_logger_provider()):
        if hasattr(provider, "force_flush"):
            provider.force_flush()
    print(json.dumps({
        "configured": configured,
        "again": telemetry.configure(),
        "tracer_provider": type(trace.get_tracer_provider()).__name__,
        "meter_provider": type(metrics.get_meter_provider()).__name__,
        "handlers": [type(h).__name__ for name in ("", "irm_connector") for h in logging.getLogger(name).handlers],
        "traceparent": parent,
        "to_the_host": sorted(set(to_the_host)),
    }), flush=True)  # os._exit skips the interpreter's flush: without this a piped stdout arrives empty
    os._exit(0)  # skip the exporters' exit-time retries against endpoints that do not exist here
    """
)


class _Report(TypedDict):
    """What _SCRIPT prints."""

    configured: bool
    again: bool
    tracer_provider: str
    meter_provider: str
    handlers: list[str]
    traceparent: str
    to_the_host: list[str]


def _run_script(env: dict[str, str]) -> _Report:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return cast("_Report", json.loads(done.stdout.strip().splitlines()[-1]))


def _base_env(secret: str) -> dict[str, str]:
    # What the machine may have set that the telemetry reads (a sampler that samples nothing, the debug switch).
    foreign = ("APPLICATIONINSIGHTS_", "OTEL_", "PYTHON_ENABLE_DEBUG_LOGGING")
    env = {k: v for k, v in os.environ.items() if not k.startswith(foreign)}
    env.update({"PYTHONPATH": REPO, "O365_CLIENT_SECRET": secret, "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true"})
    return env


def test_without_a_connection_string_nothing_is_configured() -> None:
    report = _run_script(_base_env("s3cr3t-value-not-sent"))
    assert report["configured"] is False and report["again"] is False
    assert report["tracer_provider"] == "ProxyTracerProvider"
    assert report["meter_provider"] == "_ProxyMeterProvider"
    assert report["traceparent"] == ""  # no trace context is written into queue messages either
    assert "LoggingHandler" not in report["handlers"]


@pytest.mark.parametrize("ca_settings", [("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"), ("SSL_CERT_FILE",)])
def test_with_a_connection_string_traces_logs_and_metrics_reach_application_insights(
    appinsights: AppInsightsStandIn, test_ca: TestCA, tmp_path: Path, ca_settings: tuple[str, ...]
) -> None:
    """A proxy's CA in ``SSL_CERT_FILE`` alone, as the connector's other clients take it (README): the exporters
    send through requests, which reads only ``REQUESTS_CA_BUNDLE``, and not one envelope arrived."""
    secret = "s3cr3t-" + os.urandom(8).hex()
    env = _base_env(secret)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        env.pop(name, None)
    env.update(
        {
            "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-0000-4000-8000-000000000001;"
            f"IngestionEndpoint={appinsights.base_url};LiveEndpoint={appinsights.base_url}",
            **{name: str(test_ca.ca_path) for name in ca_settings},
            # The exporters keep unsent telemetry in a directory of the temp dir named per application
            # directory, one per clone of the repository: here it goes with the test's own files.
            "TMPDIR": str(tmp_path),
        }
    )
    report = _run_script(env)
    assert report["configured"] is True and report["again"] is True
    assert report["tracer_provider"] == "TracerProvider" and report["meter_provider"] == "MeterProvider"
    assert "LoggingHandler" in report["handlers"]
    assert str(report["traceparent"]).startswith("00-")

    envelopes = appinsights.envelopes()
    kinds = {e.get("data", {}).get("baseType") for e in envelopes}
    assert {"RemoteDependencyData", "MessageData", "MetricData"} <= kinds, kinds
    (message,) = [
        e for e in envelopes if e["data"]["baseType"] == "MessageData" and "blob-1" in e["data"]["baseData"]["message"]
    ]
    # In Azure the host drops what the worker forwards once the worker says it exports telemetry itself
    # (PYTHON_ENABLE_OPENTELEMETRY): a line reaches Application Insights only through the app's own handler.
    texts = [e["data"]["baseData"]["message"] for e in envelopes if e["data"]["baseType"] == "MessageData"]
    assert [t for t in texts if "sdk-line-1" in t] and not [t for t in texts if "worker-line-1" in t], texts
    dims = message["data"]["baseData"]["properties"]
    assert dims["content_type"] == "Audit.General" and dims["content_id"] == "blob-1" and dims["tenant_id"] == "t-1"
    assert "***" in message["data"]["baseData"]["message"]
    metrics = [
        m["name"] for e in envelopes if e["data"]["baseType"] == "MetricData" for m in e["data"]["baseData"]["metrics"]
    ]
    assert "irm.blobs.queued" in metrics
    assert any(
        e["data"]["baseData"].get("name") == "irm.queue_blob"
        for e in envelopes
        if e["data"]["baseType"] == "RemoteDependencyData"
    )
    (failure,) = [e for e in envelopes if e["data"]["baseType"] == "ExceptionData"]
    assert "client_secret=***" in json.dumps(failure)  # the exception reached it, redacted
    assert secret not in appinsights.raw()
    # The exporters' own lines ("Transmission succeeded" every few seconds) stay out of the host's logs.
    assert report["to_the_host"] and not [name for name in report["to_the_host"] if name.startswith("azure.")]


def test_authentication_string_signs_in_as_the_identity_it_names(standins: StandIns, connector_env: dict[str, str]) -> None:
    """APPLICATIONINSIGHTS_AUTHENTICATION_STRING names the user-assigned identity the deployment gives the telemetry
    (Application Insights with local auth off takes no other): its tokens must be that identity's, not the app's
    system identity's or another's."""
    named = str(uuid.uuid4())
    standins.entra.add_user_assigned_identity(named)
    credential = telemetry._credential(f"ClientId={named};Authorization=AAD")
    token = credential.get_token("https://monitor.azure.com/.default")
    info = standins.tokens.validate(token.token, "https://monitor.azure.com")
    assert info is not None and (info.kind, info.client_id) == ("managed_identity", named)
    assert telemetry._credential("") is None and telemetry._credential("Authorization=Key") is None


def test_redacting_filter() -> None:
    f = RedactingFilter(["my-very-secret"])
    record = logging.LogRecord(
        "irm_connector",
        logging.INFO,
        __file__,
        1,
        "auth %s then %s",
        ("my-very-secret", "Bearer eyJ0eXAi.abc.def"),
        None,
    )
    assert f.filter(record)
    assert record.getMessage() == "auth *** then Bearer ***"
    assert (
        f.redact('{"access_token": "eyJabc", "client_secret": "x1"}')
        == '{"access_token": "***", "client_secret": "***"}'
    )
    assert f.redact("POST /token client_id=a&client_secret=x1&scope=b") == "POST /token client_id=a&client_secret=***&scope=b"
    # Tokens and passwords in the forms SDKs and proxies print them.
    jwt = "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJodHRwczovL21hbmFnZS5vZmZpY2UuY29tIn0.c2lnbmF0dXJl"
    assert f.redact(f"AccessToken(token='{jwt}', expires_on=1)") == "AccessToken(token='***', expires_on=1)"
    assert f.redact(f'{{"accessToken": "{jwt[:20]}"}}') == '{"accessToken": "***"}'
    assert f.redact(f"got {jwt}.") == "got ***."
    assert f.redact("via https://user:hunter2pass@proxy.corp:8080 refused") == "via https://***@proxy.corp:8080 refused"
    assert f.redact("Authorization: Basic dXNlcjpwYXNz") == "Authorization: Basic ***"
    kept = "O365Audit_CL on the Basic plan: https://manage.office.com:443/api/v1.0 at 12:00"
    assert f.redact(kept) == kept
    # A name that merely ends in a field's name is not the field: the settings error stays readable.
    kept = "setting O365_CLIENT_SECRET: is required; design: kept"
    assert f.redact(kept) == kept
    kept = "the API refused the token: ask again; AccessToken expired"
    assert f.redact(kept) == kept


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        # camelCase fields, as JavaScript-minded services and msal's own dicts spell them
        ('{"clientSecret": "x1y2z3", "refreshToken": "r-1", "idToken": "i-1"}',
         '{"clientSecret": "***", "refreshToken": "***", "idToken": "***"}'),
        ("clientAssertion=abc.def&password=hunter22", "clientAssertion=***&password=***"),
        # JSON inside a string (an answer body kept in a JSON document): its quotes come escaped
        (json.dumps({"body": json.dumps({"access_token": "opaque-1", "client_secret": "x1"})}),
         json.dumps({"body": json.dumps({"access_token": "***", "client_secret": "***"})})),
        # an azure-core AccessToken whose token is no JWT (a managed identity endpoint's opaque one)
        ("AccessToken(token='opaque.token-value', expires_on=1)", "AccessToken(token='***', expires_on=1)"),
        ('AccessTokenInfo(token="opaque", expires_on=1)', 'AccessTokenInfo(token="***", expires_on=1)'),
        # a URL with a user name only: the name may be the token (https://<token>@host)
        ("proxy https://ghp_abcdef123456@proxy.corp:8080 down", "proxy https://***@proxy.corp:8080 down"),
        # a backslash in a value, escaped as JSON writes it, once or twice over: the mask stopped at it, and the
        # rest of the value showed
        (json.dumps({"password": "ab\\cd-rest"}), json.dumps({"password": "***"})),
        (json.dumps({"body": json.dumps({"client_secret": "ab\\cd-rest", "n": 1})}),
         json.dumps({"body": json.dumps({"client_secret": "***", "n": 1})})),
        # a quoted value runs to its closing quote: the mask stopped at a comma, semicolon, ampersand, space or an
        # escaped quote, and the rest of the value showed
        (json.dumps({"password": 'p,a;s&s w"o-rest', "n": 1}), json.dumps({"password": "***", "n": 1})),
        (json.dumps({"body": json.dumps({"client_secret": 'a,b"c d-rest', "n": 1})}),
         json.dumps({"body": json.dumps({"client_secret": "***", "n": 1})})),
        (repr({"password": "x y,z-rest", "user": "u"}), repr({"password": "***", "user": "u"})),
        ("refused: password='two words-rest' for u", "refused: password='***' for u"),
        # a quote escaped at the value's depth, followed by what ends a value (JSON inside JSON: \\\" in \")
        (json.dumps({"body": json.dumps({"client_secret": 'ab" cd-rest', "n": 1})}),
         json.dumps({"body": json.dumps({"client_secret": "***", "n": 1})})),
        (json.dumps({"body": json.dumps({"client_secret": 'ab",rest\\', "n": 1})}),
         json.dumps({"body": json.dumps({"client_secret": "***", "n": 1})})),
        # a value longer than is looked into for its quote: masked to the line's end
        (json.dumps({"password": "a" * 5000 + ",rest"}) + "\nnext line", '{"password": "***\nnext line'),
        # a quote never closed on its line (a line cut short): masked to the line's end, the next lines kept
        ('{"password": "abc-rest', '{"password": "***'),
        ('password="\nTraceback:\n  File "x.py", line 1', 'password="***\nTraceback:\n  File "x.py", line 1'),
    ],
)  # fmt: skip
def test_redaction_masks_the_other_spellings_of_a_secret(text: str, clean: str) -> None:
    assert RedactingFilter().redact(text) == clean


@pytest.mark.asyncio
async def test_the_secret_never_appears_in_logs(
    connector: ConnectorHarness, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    sim = connector.standins
    secret = sim.client_secret
    assert os.environ["O365_CLIENT_SECRET"] == secret
    workload = generate_workload(
        seed=8, total_records=600, blob_size=(200, 300), irm_share=0.05, tenant_id=sim.tenant_id
    )
    workload.publish(sim.management)
    # Failures on the way, so the error paths log too: a refused token, throttling, a refused upload.
    sim.entra.add_fault("token", "status", count=1, status=401, code="invalid_client")
    with pytest.raises(PollError, match="invalid_client"):
        await connector.poll()
    sim.management.add_fault("list", "status", count=1, status=429, retry_after=0)
    sim.ingestion.add_fault("ingest", "status", count=1, status=500)
    await connector.poll()
    stats = await connector.drain()
    assert stats.processed == len(workload.blobs)
    assert len(connector.rows()) == len(set(workload.irm_alert_record_ids))
    out, err = capsys.readouterr()
    captured = caplog.text + out + err
    assert "Management API list retry" in captured  # the logs were captured at all
    assert secret not in captured
    tokens = list(sim.tokens._tokens)  # every token the stand-ins issued in this test
    assert tokens and not [t for t in tokens if t in captured]


@pytest.mark.asyncio
async def test_one_trace_follows_a_blob_from_poller_to_processor(
    connector: ConnectorHarness, spans: InMemorySpanExporter
) -> None:
    sim = connector.standins
    workload = generate_workload(
        seed=12, total_records=600, blob_size=(200, 200), irm_share=0.05, tenant_id=sim.tenant_id
    )
    workload.publish(sim.management)
    await connector.poll()
    messages = [json.loads(m) for m in await connector.messages()]
    assert len(messages) == len(workload.blobs) and all(m["traceparent"].startswith("00-") for m in messages)
    await connector.drain()

    finished = spans.get_finished_spans()
    queued = {s.context.span_id: s for s in finished if s.name == "irm.queue_blob"}
    processed = [s for s in finished if s.name == "irm.process_blob"]
    assert len(queued) == len(processed) == len(workload.blobs)
    for span in processed:
        assert span.parent is not None and span.attributes is not None
        parent = queued[span.parent.span_id]
        assert parent.attributes is not None
        assert span.context.trace_id == parent.context.trace_id
        assert span.attributes["content_id"] == parent.attributes["content_id"]
        assert span.attributes["outcome"] == "ingested"
    assert len({s.context.trace_id for s in processed}) == len(workload.blobs)  # one trace per blob


@pytest.mark.asyncio
async def test_failed_attempts_are_one_metric_series_not_one_per_blob(
    connector: ConnectorHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK keeps every series for as long as the worker lives, and Application Insights bills each: a
    content id among a metric's dimensions made one per failing blob."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

    from irm_connector import metrics as metrics_module

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    monkeypatch.setattr(metrics_module, "metrics", metrics_module.Metrics(provider.get_meter("test")))
    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    workload = generate_workload(seed=14, total_records=600, blob_size=(200, 200), tenant_id=sim.tenant_id)
    workload.publish(sim.management)
    await connector.poll()
    sim.management.add_fault("content", "truncated", count=1000)  # an answer cut off: the attempt fails
    messages = await connector.messages()
    assert len(messages) == len(workload.blobs) == 3
    for text in messages:
        with pytest.raises(Exception):  # the host retries it, whatever it is
            await connector.process(text)
    data = reader.get_metrics_data()
    assert data is not None
    points = [point for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
              if m.name == "irm.processor.failures" for point in m.data.data_points]  # fmt: skip
    [point] = points
    assert isinstance(point, NumberDataPoint) and point.value == 3
    assert point.attributes is not None and "content_id" not in point.attributes

    # A setting broken by a deployment fails every message before any work: those attempts count too (the chart
    # of failures stayed flat through the outage), in a series without the tenant, which the settings would give.
    connector.monkeypatch.delenv("LOGS_DCR_IMMUTABLE_ID")
    with pytest.raises(SettingsError):
        await connector.process(messages[0])
    data = reader.get_metrics_data()
    assert data is not None
    failed = {tuple(sorted((point.attributes or {}).items())): point.value
              for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
              if m.name == "irm.processor.failures" for point in m.data.data_points
              if isinstance(point, NumberDataPoint)}  # fmt: skip
    assert failed[(("content_type", "Audit.General"),)] == 1
    provider.shutdown()


@pytest.mark.asyncio
async def test_each_poll_writes_a_health_row(connector: ConnectorHarness) -> None:
    sim: StandIns = connector.standins
    workload = generate_workload(seed=13, total_records=400, blob_size=(200, 200), tenant_id=sim.tenant_id)
    workload.publish(sim.management)
    before = datetime.now(UTC)
    await connector.poll()
    (row,) = connector.rows("Custom-IRMConnectorHealth")
    assert row["O365TenantId"] == sim.tenant_id and row["ContentType"] == "Audit.General"
    assert row["BlobsListed"] == row["BlobsQueued"] == len(workload.blobs)
    assert row["BlobsExpired"] == 0 and row["Errors"] == 0 and row["LastError"] == ""
    assert row["ConnectorVersion"] == __version__
    watermark = datetime.fromisoformat(row["Watermark"].replace("Z", "+00:00"))
    assert before - timedelta(seconds=5) <= watermark <= datetime.now(UTC)
    assert 0 <= row["LagSeconds"] < 60

    # A failing run writes its row too, with the error.
    sim.management.set_audit_enabled(False)
    with pytest.raises(Exception, match="AF20011"):
        await connector.poll()
    rows = connector.rows("Custom-IRMConnectorHealth")
    assert len(rows) == 2
    assert rows[1]["Errors"] == 1 and "AF20011" in rows[1]["LastError"] and rows[1]["BlobsQueued"] == 0


def test_a_connection_string_it_cannot_use_is_named_and_the_connector_runs_on(tmp_path: Path) -> None:
    """The one line that says no telemetry will be sent names the setting to fix, not only the SDK's complaint."""
    env = _base_env("s3cr3t-value-not-sent")
    env.update({"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=not-a-guid;IngestionEndpoint=https://x",
                "TMPDIR": str(tmp_path)})  # fmt: skip
    code = (
        "import logging, os\n"
        "logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')\n"
        "from irm_connector import telemetry\n"
        "print('configured', telemetry.configure(), flush=True)\n"
        "os._exit(0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "configured False" in done.stdout, done.stderr
    [warning] = [line for line in done.stderr.splitlines() if "Could not configure Application Insights" in line]
    assert warning.startswith("WARNING") and "check APPLICATIONINSIGHTS_CONNECTION_STRING" in warning
    assert "the connector runs on" in warning
