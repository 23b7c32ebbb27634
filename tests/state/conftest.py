"""Claims and tables over the session's Azurite, one table prefix per test; a fault proxy where a test
needs to hold or fail a request."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta

import pytest
from azure.data.tables.aio import TableServiceClient

from irm_connector.state import CLAIM_TTL, Claims, Tables
from irm_connector.state.partitions import REPEATS
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


@pytest.fixture(params=["one-request", "listing-first"])
async def make_claims(azurite: Azurite, prefix: str, request: pytest.FixtureRequest) -> AsyncIterator[MakeClaims]:
    """``make_claims(ttl=..., via=proxy, retention_days=...)``: one processor's claims, with a tables client
    and a cache of its own. Every test runs with both ways a warm process reads a partition: in one request,
    and listing the shards first, then reading the keys of just those it has not seen (which a busy partition
    gets)."""
    opened: list[Tables] = []
    repeats = REPEATS if request.param == "one-request" else -1

    def make(*, ttl: timedelta = CLAIM_TTL, via: StorageProxy | None = None, retention_days: int = 10) -> Claims:
        connection = via.connection_string if via is not None else azurite.connection_string
        service = TableServiceClient.from_connection_string(connection)
        tables = Tables(service, prefix=prefix, retention_days=retention_days)
        opened.append(tables)
        return Claims(tables, claim_ttl=ttl, read_repeats=repeats)

    yield make
    for tables in opened:
        await tables.close()


@pytest.fixture
async def service(azurite: Azurite) -> AsyncIterator[TableServiceClient]:
    """The storage account as someone else sees it (another instance's poller, an operator)."""
    async with TableServiceClient.from_connection_string(azurite.connection_string) as client:
        yield client
