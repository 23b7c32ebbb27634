"""Blobs whose records the processor could not fetch: expired on the queue (AF20051), or gone (AF20050,
AF20052). The poller's next health row counts them in ``BlobsExpired``, beside those that expired before they
were queued, so that the loss shows in Sentinel and not only in the log.

Table ``{prefix}lost``: PartitionKey the tenant and content type, RowKey the content id, with the reason and
when. Written only when a blob is lost; the poller reads its content type's partition (usually empty, and the
table absent) once per run, and deletes what it counted once its health row was accepted. What no health row
counts (the health stream off, or refused for longer than the retention) is purged a retention after it was noted.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from irm_connector.models import ContentBlob, utc_text

from .tables import Tables, table_key

__all__ = ["LostBlobs"]

_MAX_REASON = 500

log = logging.getLogger(__name__)


class LostBlobs:
    """The ``{prefix}lost`` table of one tenant."""

    KIND = "lost"

    def __init__(self, tables: Tables, *, tenant_id: str) -> None:
        self._tables = tables
        self._name = tables.name(self.KIND)
        self._tenant = tenant_id

    def _partition(self, content_type: str) -> str:
        return table_key(f"{self._tenant} {content_type}")

    async def add_lost(self, blob: ContentBlob, why: str) -> None:
        """Note that ``blob``'s records are lost (a blob lost twice, by two deliveries, counts once)."""
        entity = {
            "PartitionKey": self._partition(blob.content_type),
            "RowKey": table_key(blob.content_id),
            "Reason": why[:_MAX_REASON],
            "LostAt": utc_text(datetime.now(UTC)),
        }
        await self._tables.upsert(self._name, entity)

    async def list_lost(self, content_type: str) -> list[str]:
        """The keys of the blobs of ``content_type`` lost since they were last forgotten."""
        read = await self._tables.query(
            self._name, "PartitionKey eq @pk", {"pk": self._partition(content_type)}, select=["RowKey"], create=False
        )
        return [str(entity["RowKey"]) for entity in read.entities]

    async def forget_lost(self, content_type: str, keys: list[str]) -> None:
        """Delete the entries ``keys`` of ``content_type``, once counted."""
        partition = self._partition(content_type)
        for key in keys:
            await self._tables.delete(self._name, partition, key)

    async def purge_expired(self, now: datetime) -> int:
        """Remove the entries noted a retention ago and never counted. Once a day per process, as the record keys
        outside day tables are purged (:meth:`Tables.purge_expired`); a missing table has none."""
        removed = await self._tables.purge_expired(self._name, now)
        if removed:
            log.info("Removed %d lost-blob entries no health row counted within the retention", removed)
        return removed
