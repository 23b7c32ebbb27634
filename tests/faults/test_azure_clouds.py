"""The Azure cloud of the workspace (``AZURE_CLOUD``) decides the audience of Logs Ingestion tokens and the
authority azure-identity signs in at, whatever the Microsoft 365 cloud (``O365_CLOUD``) is.

The ingestion stand-in is told to accept only the cloud's audience, as a workspace in that cloud does; the
tokens come from the Entra ID stand-in's managed identity endpoint, which issues them for whatever resource
is asked. For the authority, azure-identity signs in with a client secret (``AZURE_CLIENT_SECRET``) through
a connection pool whose resolver knows one host name only, the cloud's login host, and sends it to the Entra
ID stand-in: a token comes back only if the request went to that host."""

from __future__ import annotations

import socket
import ssl
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver

from irm_connector.auth import azure_credential
from irm_connector.clouds import AZURE_CLOUDS
from irm_connector.settings import Settings
from standins import StandIns
from standins.tls import TestCA
from standins.workload import generate_workload
from tests.faults import report
from tests.harness import ConnectorHarness

HEALTH = "Custom-IRMConnectorHealth"


@pytest.mark.reports_outcome
@pytest.mark.parametrize("cloud", list(AZURE_CLOUDS))
async def test_logs_ingestion_tokens_are_for_the_workspace_cloud(connector: ConnectorHarness, cloud: str) -> None:
    sim = connector.standins
    audience = AZURE_CLOUDS[cloud].monitor_audience
    sim.ingestion.accept_audience(audience)
    # A GCC tenant sending to this workspace: the Microsoft 365 cloud does not decide the audience.
    connector.set(AZURE_CLOUD=cloud, O365_CLOUD="GCC")
    sim.management.set_subscription("Audit.General", "enabled")
    workload = generate_workload(seed=61, total_records=400, blob_size=(200, 200), irm_share=0.05,
                                 tenant_id=sim.tenant_id)  # fmt: skip
    workload.publish(sim.management)

    await connector.poll()
    stats = await connector.drain()

    lost, duplicates = report.tally(connector, workload)
    refused = [s for s in sim.ingestion.stats() if s.status == 401]
    report.record(report.Outcome(
        "Faults", "Logs Ingestion in another Azure cloud", f"AZURE_CLOUD={cloud}, O365_CLOUD=GCC",
        f"tokens for {audience} (the workspace's cloud, not the tenant's); every alert and the health rows arrive",
        f"{len(refused)} uploads refused, {len(connector.rows(HEALTH))} health rows", lost, duplicates,
    ))  # fmt: skip
    assert refused == []
    assert lost == 0 and duplicates == 0 and stats.poisoned == 0
    assert len(connector.rows(HEALTH)) == 1


class _OneHost(AbstractResolver):
    """Resolves one name, to the Entra ID stand-in; every other name fails to resolve."""

    def __init__(self, name: str, port: int) -> None:
        self.name, self.port = name, port
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[Any]:
        self.asked.append(host)
        if host != self.name:
            raise OSError(f"{host} is not resolvable in this test")
        return [{"hostname": host, "host": "127.0.0.1", "port": self.port, "family": socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}]  # fmt: skip

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("cloud", list(AZURE_CLOUDS))
async def test_azure_identity_signs_in_at_the_workspace_cloud(
    test_ca: TestCA, connector_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, cloud: str
) -> None:
    login = AZURE_CLOUDS[cloud].authority_host
    # Stand-ins whose certificate names the login host: the client checks the name as it does in Azure.
    with StandIns(ca=test_ca, server_names=(login,)) as sim:
        # The function's identity as a service principal (azure-identity's EnvironmentCredential), not the
        # managed one.
        for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "AZURE_AUTHORITY_HOST"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AZURE_TENANT_ID", sim.tenant_id)
        monkeypatch.setenv("AZURE_CLIENT_ID", sim.client_id)
        monkeypatch.setenv("AZURE_CLIENT_SECRET", sim.client_secret)
        monkeypatch.setenv("AZURE_CLOUD", cloud)
        settings = Settings.from_env()

        resolver = _OneHost(login, int(sim.authority_host.rsplit(":", 1)[1]))
        context = ssl.create_default_context(cafile=str(sim.ca_path))
        assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
        connector = aiohttp.TCPConnector(resolver=resolver, ssl=context)
        async with aiohttp.ClientSession(connector=connector) as session:
            credential = azure_credential(settings, session=session)
            try:
                token = await credential.get_token(f"{AZURE_CLOUDS[cloud].monitor_audience}/.default")
            finally:
                await credential.close()
        assert login in resolver.asked
        assert sim.tokens.validate(token.token, AZURE_CLOUDS[cloud].monitor_audience) is not None
