"""Exception text that leaves by a path the logging filter does not see is redacted too: what a function
raises to the Functions host (which logs its text and traceback), what a span records, the failure reason
``poison list`` shows, and the last error a poller run writes to the health row and the state table.

The leak is scripted where it happens in life: Entra ID refuses the client secret and its error text echoes
the secret (and a bearer token) back, so the connector's own AuthenticationError carries them."""

from __future__ import annotations

import contextlib
import json
import logging
import traceback
from datetime import UTC, datetime, timedelta

import pytest
from azure.core.exceptions import ResourceExistsError
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from irm_connector.errors import AuthenticationError, PollError
from irm_connector.redaction import install_redaction, redact_exception
from standins.workload import generate_workload
from tests.harness import ConnectorHarness

LEAKED_TOKEN = "eyJleaked0token.eyJwYXlsb2FkIn0.c2lnbmF0dXJl"
PERSISTENT = 1000


def _refuse_and_echo(connector: ConnectorHarness) -> str:
    """Entra ID refuses every token request with an error description that repeats the secret and a token."""
    secret = connector.standins.client_secret
    description = (
        f"AADSTS7000215: Invalid client secret provided: '{secret}'. Request: Authorization: Bearer {LEAKED_TOKEN}"
    )
    connector.standins.entra.add_fault(
        "token", "status", count=PERSISTENT, status=401,
        body={"error": "invalid_client", "error_description": description},
    )  # fmt: skip
    return secret


def _leaks(text: str, secret: str) -> list[str]:
    return [what for what in (secret, LEAKED_TOKEN) if what in text]


async def test_what_the_processor_raises_records_and_keeps_is_redacted(
    connector: ConnectorHarness, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    workload = generate_workload(seed=61, total_records=50, blob_size=(50, 50), tenant_id=sim.tenant_id)
    (content_id,) = workload.publish(sim.management)
    now = datetime.now(UTC)
    message = json.dumps({
        "v": 1, "tenantId": sim.tenant_id, "contentType": "Audit.General", "contentId": content_id,
        "contentUri": sim.management.content_uri(content_id), "contentCreated": (now - timedelta(hours=1)).isoformat(),
        "contentExpiration": (now + timedelta(days=1)).isoformat(),
    })  # fmt: skip
    secret = _refuse_and_echo(connector)

    # What the host gets: the exception, which it logs with its traceback (and every exception it chains).
    with pytest.raises(AuthenticationError) as raised:
        await connector.process(message)
    host_log = "".join(traceback.format_exception(raised.value))
    assert "invalid_client" in host_log and "Bearer ***" in host_log  # still says what went wrong
    assert _leaks(host_log, secret) == []

    # What the span recorded: the exception event (message and stack trace) and the status.
    (span,) = [s for s in spans.get_finished_spans() if s.name == "irm.process_blob"]
    recorded = json.dumps([dict(e.attributes or {}) for e in span.events]) + (span.status.description or "")
    assert "invalid_client" in recorded
    assert _leaks(recorded, secret) == []

    # What `poison list` shows once the message has failed for good.
    async with connector.queue_client() as queue:
        with contextlib.suppress(ResourceExistsError):
            await queue.create_queue()
        await queue.send_message(message)
    stats = await connector.drain(max_dequeue_count=1)
    listed = await connector.cli("poison", "list")
    assert stats.poisoned == 1 and len(listed["messages"]) == 1
    reason = listed["messages"][0]["reason"]
    assert reason.startswith("AuthenticationError:") and "invalid_client" in reason
    assert _leaks(reason, secret) == []
    assert _leaks(caplog.text, secret) == []


async def test_what_the_poller_raises_and_writes_is_redacted(connector: ConnectorHarness) -> None:
    sim = connector.standins
    sim.management.set_subscription("Audit.General", "enabled")
    secret = _refuse_and_echo(connector)

    with pytest.raises(PollError) as raised:
        await connector.poll()
    host_log = "".join(traceback.format_exception(raised.value))
    assert "invalid_client" in host_log
    assert _leaks(host_log, secret) == []

    (health,) = connector.rows("Custom-IRMConnectorHealth")  # in Sentinel
    assert health["Errors"] == 1 and "invalid_client" in health["LastError"]
    assert _leaks(health["LastError"], secret) == []
    status = await connector.cli("status")
    (state,) = status["content_types"]  # the state table's last error, as `status` shows it
    assert "invalid_client" in state["last_error"]
    # ... and status's own live call, refused the same way, shown among its problems
    assert any("invalid_client" in p["detail"] for p in status["problems"] if p["code"].startswith("api-"))
    assert _leaks(json.dumps(status), secret) == []


class _AddressError(OSError):
    """Like aiohttp's connection errors: ``str()`` is built from attributes, not from the arguments."""

    def __init__(self, address: str) -> None:
        super().__init__(111, "refused")
        self.address = address

    def __str__(self) -> str:
        return f"cannot connect to {self.address}"


def test_an_exception_chain_is_redacted_link_by_link() -> None:
    secret = "chain-secret-4f9a1c"
    install_redaction({"O365_CLIENT_SECRET": secret})
    try:
        try:
            try:
                raise _AddressError(f"https://user:{secret}@proxy.example")
            except OSError as low:
                raise ValueError(f"token request failed: access_token={secret}") from low
        except ValueError:
            raise AuthenticationError("https://manage.office.com", f"secret {secret} refused") from None
    except AuthenticationError as exc:
        top = exc
    assert top.__context__ is not None and top.__suppress_context__
    cleaned = redact_exception(top)
    assert cleaned is top and isinstance(cleaned, AuthenticationError)  # redacted in place: the class stays
    text = "".join(traceback.format_exception(cleaned)) + "".join(
        traceback.format_exception(cleaned.__context__)  # suppressed, but still reachable: redacted too
    )
    assert secret not in text and "access_token=***" in text
    assert "_AddressError: cannot connect to https://***@proxy.example" in text  # a stand-in says the same
    assert cleaned.__suppress_context__  # what the raise said about its chain is kept


def test_a_command_line_error_is_masked_before_it_is_shortened(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line shortens an error's text to 400 characters; masked after the cut, a secret that straddled
    it was no longer the configured value, and its first characters were printed in clear."""
    from irm_connector.cli._failures import describe
    from irm_connector.errors import ConnectorError

    secret = "straddling-secret-8d2e7b51c0"
    monkeypatch.setenv("O365_CLIENT_SECRET", secret)
    failure = describe(ConnectorError("y" * 385 + secret))
    assert failure.message.startswith("y" * 385) and secret[:8] not in failure.line(), failure.line()


def test_a_failure_leaving_the_poller_s_queue_span_is_recorded_redacted(spans: InMemorySpanExporter) -> None:
    """The poller's span around a queue put let OpenTelemetry record what left it, chain and all, as it was: a
    storage timeout's URL, with a SAS connection string's sig=, went to Application Insights in its stack trace."""
    from irm_connector.errors import StateError
    from irm_connector.telemetry import producer_span

    url = "https://st.queue.core.windows.net/q/messages?sv=2024-08-04&sig=s3cr3tSASsignature"

    def put() -> None:
        with producer_span("irm.queue_blob", {"content_type": "Audit.General"}):
            try:
                raise OSError(f"Connection timeout to host {url}")
            except OSError as exc:
                raise StateError("cannot write to queue q: timed out") from exc

    with pytest.raises(StateError):
        put()
    (span,) = [s for s in spans.get_finished_spans() if s.name == "irm.queue_blob"]
    recorded = json.dumps([dict(e.attributes or {}) for e in span.events]) + (span.status.description or "")
    assert "StateError" in recorded and "cannot write to queue q" in recorded
    assert "s3cr3tSASsignature" not in recorded
