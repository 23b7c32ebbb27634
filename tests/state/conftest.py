"""Claims and tables over the session's Azurite, one table prefix per test; a fault proxy where a test
needs to hold or fail a request."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta

import pytest
from azure.data.tables.aio import TableServiceClient

from irm_connector.state import CLAIM_TTL, Claims, Tables
from standins import Azurite
from standins.storage_proxy import StorageProxy


@pytest.fixture
def proxy(azurite: Azurite) -> Iterator[StorageProxy]:
    with StorageProxy(azurite) as running:
        yield running


@pytest.fixture
def prefix() -> str:
    return f"c{uuid.uuid4().hex[:10]}"


MakeClaims = Callable[..., Claims]


@pytest.fixture
async def make_claims(azurite: Azurite, prefix: str) -> AsyncIterator[MakeClaims]:
    """``make_claims(ttl=..., via=proxy, retention_days=...)``: one processor's claims, with a tables client
    and a cache of its own."""
    opened: list[Tables] = []

    def make(*, ttl: timedelta = CLAIM_TTL, via: StorageProxy | None = None, retention_days: int = 10) -> Claims:
        connection = via.connection_string if via is not None else azurite.connection_string
        service = TableServiceClient.from_connection_string(connection)
        tables = Tables(service, prefix=prefix, retention_days=retention_days)
        opened.append(tables)
        return Claims(tables, claim_ttl=ttl)

    yield make
    for tables in opened:
        await tables.close()


@pytest.fixture
async def service(azurite: Azurite) -> AsyncIterator[TableServiceClient]:
    """The storage account as someone else sees it (another instance's poller, an operator)."""
    async with TableServiceClient.from_connection_string(azurite.connection_string) as client:
        yield client
