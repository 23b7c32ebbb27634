"""The Entra ID stand-in against the real msal and azure-identity."""

from __future__ import annotations

import time

import aiohttp
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError
from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential
from msal.exceptions import MsalServiceError

from standins import StandIns
from tests.standins.clients import msal_app

MONITOR_SCOPE = "https://monitor.azure.com/.default"


def test_msal_client_secret_gets_token_for_management_audience(ca_env: StandIns) -> None:
    result = msal_app(ca_env).acquire_token_for_client([ca_env.management_scope])

    assert result["token_type"] == "Bearer"
    info = ca_env.tokens.validate(result["access_token"], ca_env.api_root)
    assert info is not None
    assert (info.tenant_id, info.client_id, info.kind) == (ca_env.tenant_id, ca_env.client_id, "client_secret")


def test_msal_certificate_with_sha1_thumbprint(ca_env: StandIns) -> None:
    credential = ca_env.client_certificate.msal_credential()  # RS256 + x5t
    result = msal_app(ca_env, credential).acquire_token_for_client([ca_env.management_scope])

    assert "access_token" in result, result
    info = ca_env.tokens.validate(result["access_token"], ca_env.api_root)
    assert info is not None
    assert info.kind == "client_certificate"


def test_msal_certificate_with_public_certificate_uses_ps256(ca_env: StandIns) -> None:
    cert = ca_env.client_certificate
    credential = {"private_key": cert.private_key_pem, "public_certificate": cert.certificate_pem}
    result = msal_app(ca_env, credential).acquire_token_for_client([ca_env.management_scope])

    assert "access_token" in result, result


def test_certificate_from_another_ca_is_rejected(ca_env: StandIns) -> None:
    from standins import TestCA

    other = TestCA().issue_client_certificate("intruder")
    result = msal_app(ca_env, other.msal_credential()).acquire_token_for_client([ca_env.management_scope])

    assert result["error"] == "invalid_client"
    assert "AADSTS700027" in result["error_description"]


def test_wrong_secret_is_invalid_client(ca_env: StandIns) -> None:
    result = msal_app(ca_env, "not-the-secret").acquire_token_for_client([ca_env.management_scope])

    assert result["error"] == "invalid_client"
    assert result["error_description"].startswith("AADSTS7000215: Invalid client secret provided.")
    assert ca_env.tokens.issued() == 0


def test_unknown_tenant_fails_discovery_and_token(ca_env: StandIns) -> None:
    ca_env.entra.add_tenant("11111111-1111-4111-8111-111111111111")  # discovery passes for this one
    resp = requests.post(
        f"{ca_env.authority_host}/22222222-2222-4222-8222-222222222222/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": ca_env.client_id, "scope": "x/.default"},
        timeout=10,
    )
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_request"
    assert "AADSTS90002" in resp.json()["error_description"]

    app_error = None
    try:
        msal_app(ca_env).__class__(
            ca_env.client_id,
            client_credential=ca_env.client_secret,
            authority=f"{ca_env.authority_host}/33333333-3333-4333-8333-333333333333",
            instance_discovery=False,
            http_client=requests.Session(),
        ).acquire_token_for_client([ca_env.management_scope])
    except ValueError as exc:
        app_error = exc
    assert app_error is not None


def test_unknown_client_and_bad_scope(ca_env: StandIns) -> None:
    url = f"{ca_env.authority}/oauth2/v2.0/token"
    unknown = requests.post(
        url,
        data={
            "grant_type": "client_credentials",
            "client_id": "00000000-0000-0000-0000-000000000000",
            "client_secret": "x",
            "scope": "https://a/.default",
        },
        timeout=10,
    )
    bad_scope = requests.post(
        url,
        data={
            "grant_type": "client_credentials",
            "client_id": ca_env.client_id,
            "client_secret": ca_env.client_secret,
            "scope": "https://a/read",
        },
        timeout=10,
    )
    assert (unknown.status_code, unknown.json()["error"]) == (401, "invalid_client")
    assert (bad_scope.status_code, bad_scope.json()["error"]) == (400, "invalid_scope")


def test_short_lifetime_makes_msal_fetch_again(ca_env: StandIns) -> None:
    ca_env.tokens.lifetime = 1
    app = msal_app(ca_env)
    first = app.acquire_token_for_client([ca_env.management_scope])
    second = app.acquire_token_for_client([ca_env.management_scope])

    assert first["access_token"] != second["access_token"]  # msal never reuses < 5 min
    assert first["expires_in"] == 1
    time.sleep(1.1)
    assert ca_env.tokens.validate(first["access_token"], ca_env.api_root) is None


def test_msal_raises_on_5xx_and_caches_it_for_retry_after(ca_env: StandIns) -> None:
    """msal raises MsalServiceError on a 5xx token answer (a 4xx comes back as an error dict) and
    replays a 429/5xx from its own cache for Retry-After seconds (5 s without the header), a
    plain 400 for 60 s: retrying acquire_token_for_client at once does not reach Entra."""
    ca_env.entra.add_fault("token", "status", status=503, retry_after=1)
    app = msal_app(ca_env)
    with pytest.raises(MsalServiceError):
        app.acquire_token_for_client([ca_env.management_scope])
    with pytest.raises(MsalServiceError):
        app.acquire_token_for_client([ca_env.management_scope])
    time.sleep(1.1)
    recovered = app.acquire_token_for_client([ca_env.management_scope])

    assert "access_token" in recovered
    assert ca_env.entra.count("token") == 2
    assert ca_env.entra.count("token", fault="status") == 1


def test_msal_returns_429_as_error_dict(ca_env: StandIns) -> None:
    ca_env.entra.add_fault("token", "status", status=429, retry_after=1)
    result = msal_app(ca_env).acquire_token_for_client([ca_env.management_scope])

    assert result["error"] == "temporarily_unavailable"


@pytest.fixture
def msi_env(stand_ins: StandIns, monkeypatch: pytest.MonkeyPatch) -> StandIns:
    for name in ("MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", stand_ins.identity_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", stand_ins.identity_header)
    return stand_ins


async def test_managed_identity_credential(msi_env: StandIns) -> None:
    async with ManagedIdentityCredential(connection_verify=str(msi_env.ca_path)) as credential:
        token = await credential.get_token(MONITOR_SCOPE)

    info = msi_env.tokens.validate(token.token, "https://monitor.azure.com")
    assert info is not None
    assert info.kind == "managed_identity"
    assert abs(token.expires_on - info.expires_at) <= 1


async def test_default_azure_credential_uses_app_service_identity(msi_env: StandIns) -> None:
    async with DefaultAzureCredential(connection_verify=str(msi_env.ca_path)) as credential:
        token = await credential.get_token(MONITOR_SCOPE)

    assert msi_env.tokens.validate(token.token, "https://monitor.azure.com") is not None


async def test_managed_identity_wrong_header_fails(msi_env: StandIns, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDENTITY_HEADER", "wrong")
    async with ManagedIdentityCredential(connection_verify=str(msi_env.ca_path)) as credential:
        with pytest.raises(ClientAuthenticationError):
            await credential.get_token(MONITOR_SCOPE)
    assert msi_env.entra.count("msi", status=401) >= 1


async def test_msi_endpoint_protocol(stand_ins: StandIns, http: aiohttp.ClientSession) -> None:
    params = {"api-version": "2019-08-01", "resource": "https://monitor.azure.com"}
    async with http.get(stand_ins.identity_endpoint, params=params) as missing:
        assert missing.status == 400
    headers = {"X-IDENTITY-HEADER": stand_ins.identity_header}
    async with http.get(stand_ins.identity_endpoint, params=params, headers=headers) as ok:
        body = await ok.json()
    assert ok.status == 200
    assert body["resource"] == "https://monitor.azure.com"
    assert body["token_type"] == "Bearer"
    assert isinstance(body["expires_on"], str)
    assert int(body["expires_on"]) > time.time()
    unknown = {**params, "client_id": "99999999-9999-4999-8999-999999999999"}
    async with http.get(stand_ins.identity_endpoint, params=unknown, headers=headers) as bad:
        assert bad.status == 400
