"""Fault-matrix fixtures: a storage proxy in front of Azurite, short timeouts, and the report."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from standins import Azurite, StandIns
from standins.storage_proxy import StorageProxy
from tests.faults import report
from tests.harness import ConnectorHarness

_REPORTED = "reports_outcome"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{_REPORTED}: the test adds one row to docs/reliability.md")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    session.stash[_COUNT] = sum(1 for item in items if item.get_closest_marker(_REPORTED))


_COUNT = pytest.StashKey[int]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus != 0:
        return
    problem = report.finish(session.stash.get(_COUNT, -1))
    if problem:
        session.config.get_terminal_writer().line(f"\nERROR: {problem}", red=True)
        session.exitstatus = 1


@pytest.fixture
def proxy(azurite: Azurite) -> Iterator[StorageProxy]:
    with StorageProxy(azurite) as running:
        yield running


@pytest.fixture
async def faulty(connector: ConnectorHarness, proxy: StorageProxy) -> ConnectorHarness:
    """The connector with its storage behind the proxy and timeouts short enough to test."""
    connector.set(AzureWebJobsStorage=proxy.connection_string, HTTP_TIMEOUT="3s")
    connector.proxy = proxy  # type: ignore[attr-defined]
    return connector


@pytest.fixture
def sim(standins: StandIns) -> StandIns:
    return standins
