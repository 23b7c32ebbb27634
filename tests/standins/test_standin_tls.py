"""Which CA knob reaches which client: the facts standins/README.md states, kept true by tests."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import textwrap

import aiohttp
import pytest
import requests
from azure.core.pipeline.transport import AioHttpTransport
from azure.identity.aio import ManagedIdentityCredential

from standins import StandIns

# azure-core's aiohttp transport (what every async Azure client and credential uses), no retries.
TRANSPORT_PROBE = textwrap.dedent(
    """
    import asyncio, os, sys
    if sys.argv[1] == "before":
        os.environ["SSL_CERT_FILE"] = os.environ["PROBE_CA"]
    from azure.core.pipeline.transport import AioHttpTransport
    from azure.core.rest import HttpRequest
    if sys.argv[1] == "after":
        os.environ["SSL_CERT_FILE"] = os.environ["PROBE_CA"]

    async def main():
        async with AioHttpTransport() as transport:
            response = await transport.send(HttpRequest("GET", os.environ["PROBE_URL"]))
            return response.status_code

    try:
        print("OK", asyncio.run(main()))
    except Exception as exc:
        print("FAIL", type(exc).__name__)
    """
)


@pytest.fixture
def msi_env(stand_ins: StandIns, monkeypatch: pytest.MonkeyPatch) -> StandIns:
    for name in ("MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", stand_ins.identity_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", stand_ins.identity_header)
    return stand_ins


@pytest.mark.parametrize(("when", "outcome"), [("before", "OK"), ("after", "FAIL")])
def test_ssl_cert_file_reaches_azure_core_only_if_set_before_aiohttp_import(
    msi_env: StandIns, when: str, outcome: str
) -> None:
    url = f"{msi_env.authority}/v2.0/.well-known/openid-configuration"
    env = {**os.environ, "PROBE_CA": str(msi_env.ca_path), "PROBE_URL": url}
    done = subprocess.run(
        [sys.executable, "-c", TRANSPORT_PROBE, when], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.split()[0] == outcome, done.stdout + done.stderr


async def test_create_default_context_reads_ssl_cert_file_at_call_time(
    stand_ins: StandIns, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(stand_ins.ca_path))
    connector = aiohttp.TCPConnector(ssl=ssl.create_default_context())
    url = f"{stand_ins.authority}/v2.0/.well-known/openid-configuration"
    async with aiohttp.ClientSession(connector=connector) as session, session.get(url) as resp:
        assert resp.status == 200

    async with aiohttp.ClientSession() as default_session:  # aiohttp's import-time context
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await default_session.get(url)


async def test_azure_core_transport_with_own_session(msi_env: StandIns, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(msi_env.ca_path))
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl.create_default_context()))
    transport = AioHttpTransport(session=session, session_owner=True)
    async with ManagedIdentityCredential(transport=transport) as credential:
        token = await credential.get_token("https://monitor.azure.com/.default")
    assert msi_env.tokens.validate(token.token, "https://monitor.azure.com") is not None


def test_requests_ca_bundle_overrides_session_verify(stand_ins: StandIns, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"{stand_ins.authority}/v2.0/.well-known/openid-configuration"
    import certifi

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())  # a real bundle without the test CA, on any machine
    session = requests.Session()
    session.verify = str(stand_ins.ca_path)
    with pytest.raises(requests.exceptions.SSLError):
        session.get(url, timeout=10)

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(stand_ins.ca_path))
    assert requests.Session().get(url, timeout=10).status_code == 200
