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


#: Settings of the machine running the tests that would point the connector elsewhere: azure-identity
#: reads the first six, the connector AZURE_CLOUD, and a connection string would send the connector's
#: telemetry to Azure. Host settings (``AzureFunctionsJobHost__…``) would change how the tests' queue worker
#: retries.
FOREIGN_SETTINGS = (
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_AUTHORITY_HOST",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "AZURE_CLOUD",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    # the worker's debug switch (telemetry.py keeps the SDK's lines then) and the OpenTelemetry sampler it honours
    "PYTHON_ENABLE_DEBUG_LOGGING",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
)


#: The connector's own settings, azure-identity's and the identity endpoint's: an operator who exported the
#: app's settings into this shell (docs/operations.md) must get the same results as CI.
CONNECTOR_SETTING_PREFIXES = ("o365_", "logs_", "azure_", "azurewebjobs", "azurefunctionsjobhost__", "identity_",
                              "msi_")  # fmt: skip
CONNECTOR_SETTINGS = ("INITIAL_LOOKBACK", "LISTING_OVERLAP", "POLL_TIME_BUDGET", "POLL_SCHEDULE", "HTTP_TIMEOUT",
                      "CONTENT_QUEUE", "ALERT_CATEGORIES", "STATE_TABLE_PREFIX", "DEDUPE_RETENTION_DAYS",
                      "MAX_BLOB_MB_IN_FLIGHT")  # fmt: skip


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """This test's environment without :data:`FOREIGN_SETTINGS` and the connector's settings (they come back
    after it)."""
    for name in FOREIGN_SETTINGS + CONNECTOR_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name in [n for n in os.environ if n.lower().startswith(CONNECTOR_SETTING_PREFIXES)]:
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
