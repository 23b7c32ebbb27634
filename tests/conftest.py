"""Shared fixtures: one Azurite and one test CA per session; stand-ins and a connector per test.

Everything here is real: Azurite is the storage, the stand-ins are HTTPS servers, and the connector
runs through the function entry points of ``function_app.py`` as the Functions host calls them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import HealthCheck, settings

from standins import Azurite, StandIns, loopback
from standins.environment import foreign_settings
from standins.tls import TestCA
from tests.harness import ConnectorHarness

# Hypothesis fails an example slower than 200 ms: on a shared machine a pause of the OS or the collector would
# fail a property test for its speed, which the benchmark measures and no test asserts. Nor does it keep an
# example database in the checkout: every run draws afresh.
settings.register_profile(
    "suite", deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("suite")


@pytest.fixture(scope="session", autouse=True)
def no_proxy_for_loopback() -> Iterator[None]:
    """Every test talks to the loopback directly, whatever proxy the machine names (see standins.loopback)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in loopback.no_proxy_for_loopback(dict(os.environ)).items():
            patch.setenv(name, value)
        yield


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCA]:
    ca = TestCA(tmp_path_factory.mktemp("ca"))
    yield ca
    ca.cleanup()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    with Azurite(location=tmp_path_factory.mktemp("azurite")) as server:
        yield server


@pytest.fixture
def standins(test_ca: TestCA) -> Iterator[StandIns]:
    with StandIns(ca=test_ca) as services:
        yield services


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """This test's environment without the machine's settings that would point the connector elsewhere
    (:mod:`standins.environment`; they come back after it)."""
    for name in foreign_settings(list(os.environ)):
        monkeypatch.delenv(name)


@pytest.fixture
def connector_env(
    clean_environment: None, standins: StandIns, azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The connector's settings, set in this test's environment: the stand-ins, Azurite, and a queue and
    tables of this test's own. The connector and the CLI fixtures share it."""
    suffix = uuid.uuid4().hex[:10]
    env = {
        **standins.settings_env(),
        "AzureWebJobsStorage": azurite.connection_string,
        "CONTENT_QUEUE": f"irm-{suffix}",
        "STATE_TABLE_PREFIX": f"t{suffix}",
        "POLL_SCHEDULE": "0 */5 * * * *",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
async def connector(
    standins: StandIns, azurite: Azurite, connector_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ConnectorHarness]:
    harness = ConnectorHarness(standins=standins, azurite=azurite, env=connector_env, monkeypatch=monkeypatch)
    try:
        yield harness
    finally:
        await harness.close()
