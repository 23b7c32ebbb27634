"""The lost-blob notes against the real Azurite: what no health row counts does not stay for ever."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from azure.data.tables.aio import TableServiceClient

from irm_connector.models import ContentBlob
from irm_connector.state import StateStore
from standins import Azurite

TENANT = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


def _blob(content_id: str) -> ContentBlob:
    now = datetime.now(UTC)
    return ContentBlob(
        content_type="Audit.General",
        content_id=content_id,
        content_uri=f"https://manage.office.com/api/v1.0/{TENANT}/activity/feed/audit/{content_id}",
        content_created=now - timedelta(days=7),
        content_expiration=now,
    )


async def test_lost_blobs_no_health_row_counts_are_purged_after_the_retention(azurite: Azurite, prefix: str) -> None:
    """With the health stream off nothing reads or clears ``{prefix}lost``: the retention cleanup the poller runs
    first removes what was noted a retention ago, and keeps what is younger."""
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    async with StateStore(service, tenant_id=TENANT, prefix=prefix, retention_days=10) as state:
        assert await state.drop_expired_tables(datetime.now(UTC)) == []  # no table yet: nothing to purge, no error
        await state.lost_blobs.add_lost(_blob("expired-1"), "expired: AF20051")
        await state.lost_blobs.add_lost(_blob("gone-2"), "missing: AF20052")
        await state.drop_expired_tables(datetime.now(UTC))
        assert sorted(await state.lost_blobs.list_lost("Audit.General")) == ["expired-1", "gone-2"]
    # Another process (the cleanup runs once a day per process), eleven days on.
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    async with StateStore(service, tenant_id=TENANT, prefix=prefix, retention_days=10) as later:
        await later.drop_expired_tables(datetime.now(UTC) + timedelta(days=11))
        assert await later.lost_blobs.list_lost("Audit.General") == []
