"""The claims' plain partition reads (``Tables.query_plain``) against the real Azurite: what they send is a URL
the storage service reads as the SDK's own query, whatever characters its values hold."""

from __future__ import annotations

from azure.data.tables.aio import TableServiceClient

from irm_connector.state import Tables
from standins import Azurite

#: Characters a URL's query gives a meaning to, in a partition key (where the table service allows them) and
#: in row keys whose continuation tokens hold a ``+`` (base64 of ``~~>`` is ``fn4+``).
ODD_PK = "a&b+c%20d=e's"
ROWS = [f"~~>{i:04d}" for i in range(1_203)]


async def _write(service: TableServiceClient, table: str) -> None:
    client = service.get_table_client(table)
    await client.create_table()
    for start in range(0, len(ROWS), 100):
        batch = [("create", {"PartitionKey": ODD_PK, "RowKey": rk, "S": "p"}) for rk in ROWS[start : start + 100]]
        await client.submit_transaction(batch)
    await client.close()


async def test_a_partition_read_with_reserved_characters_in_its_values_brings_every_entity(
    azurite: Azurite, prefix: str
) -> None:
    """The filter and the continuation tokens go into the URL's query: unencoded, ``&`` cut the filter short,
    ``+`` read as a space, and ``%`` began an escape. More than a page (1,000 entities) takes a continuation."""
    async with TableServiceClient.from_connection_string(azurite.connection_string) as service:
        tables = Tables(service, prefix=prefix)
        name = tables.name("rec", "20260101")
        await _write(service, name)
        read = await tables.query_plain(name, "PartitionKey eq @pk", {"pk": ODD_PK}, create=False)
        assert sorted(str(e["RowKey"]) for e in read.entities) == ROWS
        assert {e["PartitionKey"] for e in read.entities} == {ODD_PK}
        # The SDK's own query, for comparison: the same entities.
        via_sdk = [e async for e in service.get_table_client(name).query_entities("PartitionKey eq @pk",
                                                                                   parameters={"pk": ODD_PK})]  # fmt: skip
        assert len(via_sdk) == len(ROWS)
