"""Fixtures for the stand-in tests: a started StandIns per test, clients that trust its CA."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from standins import StandIns, TestCA
from tests.standins.clients import Mgmt, msal_app


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def stand_ins(tmp_path: Path, test_ca: TestCA) -> Iterator[StandIns]:
    with StandIns(ca=test_ca, rows_dir=tmp_path / "rows") as services:
        yield services


@pytest.fixture
def ca_env(stand_ins: StandIns, monkeypatch: pytest.MonkeyPatch) -> StandIns:
    """requests (msal) only trusts the test CA through REQUESTS_CA_BUNDLE on these machines."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(stand_ins.ca_path))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(stand_ins.ca_path))
    return stand_ins


@pytest.fixture
def mgmt_token(ca_env: StandIns) -> str:
    result = msal_app(ca_env).acquire_token_for_client([ca_env.management_scope])
    assert "access_token" in result, result
    return str(result["access_token"])


@pytest.fixture
async def http(stand_ins: StandIns) -> AsyncIterator[aiohttp.ClientSession]:
    ctx = ssl.create_default_context(cafile=str(stand_ins.ca_path))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        yield session


@pytest.fixture
def mgmt(stand_ins: StandIns, http: aiohttp.ClientSession, mgmt_token: str) -> Mgmt:
    return Mgmt(stand_ins, http, mgmt_token)
