"""What a handler on the root logger receives, and so what Application Insights stores (and bills) as traces.

The Python worker sets the root logger to INFO (DEBUG with ``PYTHON_ENABLE_DEBUG_LOGGING``) and forwards
every record to the host; the Azure Monitor distro's handler, on the root logger too, sends each to Application
Insights. These tests put a handler there, at the same level, before the first invocation, and run a poll and
its blobs through the function entry points.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import pytest

from standins.azurite import ACCOUNT_KEY
from standins.workload import generate_workload
from tests.harness import ConnectorHarness

#: Where azure-core logs each request and response of the Azure SDK clients.
SDK_REQUESTS = "azure.core.pipeline.policies.http_logging_policy"


class _ToTheHost(logging.Handler):
    """Each record as the worker's handler formats it for the host."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.name, self.format(record)))

    def from_logger(self, name: str) -> list[str]:
        return [text for logger, text in self.lines if logger == name]


def _worker_logging(level: int) -> Iterator[_ToTheHost]:
    root = logging.getLogger()
    logging.getLogger(SDK_REQUESTS)  # created, so that it is among those reset below
    # As in a new worker process, no Azure logger has a level of its own yet (the CLI's tests set some).
    azure = {name: logging.getLogger(name) for name in logging.root.manager.loggerDict if name.startswith("azure")}
    saved = root.level, {name: logger.level for name, logger in azure.items()}
    for logger in azure.values():
        logger.setLevel(logging.NOTSET)
    handler = _ToTheHost()
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        for name, logger_level in saved[1].items():
            azure[name].setLevel(logger_level)


@pytest.fixture
def worker_at_info() -> Iterator[_ToTheHost]:
    yield from _worker_logging(logging.INFO)


@pytest.fixture
def worker_at_debug(monkeypatch: pytest.MonkeyPatch) -> Iterator[_ToTheHost]:
    monkeypatch.setenv("PYTHON_ENABLE_DEBUG_LOGGING", "1")
    yield from _worker_logging(logging.DEBUG)


async def _run_a_day(connector: ConnectorHarness, *, records: int) -> int:
    """Poll and process a simulated tenant's blobs, alerts and audit, and check every row arrived once."""
    sim = connector.standins
    workload = generate_workload(
        seed=21, total_records=records, blob_size=(200, 600), irm_share=0.02, tenant_id=sim.tenant_id,
        span=timedelta(hours=6), duplicate_share=0.0,  # no blob waits for another's records: a line each
    )  # fmt: skip
    workload.publish(sim.management)
    connector.set(LOGS_AUDIT_STREAM="Custom-O365Audit")
    await connector.poll()
    stats = await connector.drain()
    assert stats.processed == len(workload.blobs) and stats.poisoned == 0
    assert Counter(r["RecordId"] for r in connector.rows("Custom-O365Audit")) == Counter(workload.record_ids)
    return len(workload.blobs)


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["secret", "managed_identity"])
async def test_the_host_gets_the_connectors_lines_not_a_line_per_sdk_request(
    connector: ConnectorHarness, worker_at_info: _ToTheHost, mode: str
) -> None:
    if mode == "managed_identity":  # the default on Azure: azure-identity is asked for each Management API call
        connector.set(O365_AUTH_MODE="managed_identity", O365_CLIENT_SECRET="", O365_CLIENT_ID="")
    blobs = await _run_a_day(connector, records=3000)
    assert not worker_at_info.from_logger(SDK_REQUESTS)
    # What is left is the connector's own: a line per blob and stream, and a few at start-up (sign-in, the
    # poll). Before, azure-core added two per storage or ingestion request, about 45 lines and 22 kB per blob.
    size = sum(len(text) for _, text in worker_at_info.lines)
    assert len(worker_at_info.lines) <= 2 * blobs + 10, Counter(name for name, _ in worker_at_info.lines)
    assert size <= 1000 * blobs, size


@pytest.mark.asyncio
async def test_the_workers_debug_switch_shows_each_sdk_request_without_its_secrets(
    connector: ConnectorHarness, worker_at_debug: _ToTheHost
) -> None:
    await _run_a_day(connector, records=600)
    requests = worker_at_debug.from_logger(SDK_REQUESTS)
    assert any(text.startswith("Request URL:") for text in requests)
    assert any(text.startswith("Response status:") for text in requests)
    tokens = list(connector.standins.tokens._tokens)  # every token the stand-ins issued in this test
    logged = "\n".join(text for _, text in worker_at_debug.lines)
    assert ACCOUNT_KEY not in logged and connector.standins.client_secret not in logged
    assert tokens and not [t for t in tokens if t in logged]
