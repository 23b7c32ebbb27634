"""Fault-matrix fixtures: a storage proxy in front of Azurite, short timeouts, and the report."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from standins import Azurite, StandIns
from standins.storage_proxy import StorageProxy
from tests.faults import report
from tests.harness import ConnectorHarness

_REPORTED = "reports_outcome"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{_REPORTED}: the test adds one row to docs/reliability.md")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    reported = [item for item in items if item.get_closest_marker(_REPORTED)]
    session.stash[_COUNT] = len(reported)
    session.stash[_WHOLE] = {item.path.resolve() for item in reported} == _reporting_files()


_COUNT = pytest.StashKey[int]()
_WHOLE = pytest.StashKey[bool]()


def _reporting_files() -> set[Path]:
    """The fault suite's files with a reported case."""
    here = Path(__file__).resolve().parent
    return {path for path in here.glob("test_*.py") if _REPORTED in path.read_text(encoding="utf-8")}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus != 0:
        return
    problem = report.finish(session.stash.get(_COUNT, -1), whole=session.stash.get(_WHOLE, False))
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
