"""Which blobs are on the queue already: one marker per queued blob in ``{prefix}blobsYYYYMMDD`` (by the
blob's ``contentCreated`` day), partitioned by content type and hour, so the listing overlap of every run
never queues a blob twice and one read covers the hour a page needs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from irm_connector.models import ContentBlob

from .tables import Tables, table_key

__all__ = ["QueuedBlobs", "SeenPartitions"]

#: The partitions read during one poller run: (day, partition key) -> the row keys of the queued blobs.
SeenPartitions = dict[tuple[str, str], set[str]]


class QueuedBlobs:
    """The ``{prefix}blobsYYYYMMDD`` day tables."""

    KIND = "blobs"

    def __init__(self, tables: Tables) -> None:
        self._tables = tables

    @staticmethod
    def _slot(content_type: str, created: datetime) -> tuple[str, str]:
        created = created.astimezone(UTC)
        return created.strftime("%Y%m%d"), f"{table_key(content_type)}_{created:%H}"

    async def is_queued(self, content_type: str, blob: ContentBlob, seen: SeenPartitions) -> bool:
        """Whether ``blob`` was queued before; ``seen`` keeps the partitions read in this run."""
        slot = self._slot(content_type, blob.content_created)
        if slot not in seen:
            table = self._tables.name(self.KIND, slot[0])
            entities = await self._tables.read_partition(table, slot[1], select=["RowKey"])
            seen[slot] = {str(e["RowKey"]) for e in entities}
        return table_key(blob.content_id) in seen[slot]

    async def mark_queued(self, content_type: str, blobs: Iterable[ContentBlob], seen: SeenPartitions) -> None:
        groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for blob in blobs:
            slot = self._slot(content_type, blob.content_created)
            groups[slot].append({"PartitionKey": slot[1], "RowKey": table_key(blob.content_id)})
        for (day, pk), entities in groups.items():
            await self._tables.write_batches(self._tables.name(self.KIND, day), [("upsert", e) for e in entities])
            seen.setdefault((day, pk), set()).update(e["RowKey"] for e in entities)
