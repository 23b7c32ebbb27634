"""State in Table Storage: the poller's watermarks, which blobs are queued, which records are sent, and why
messages failed. Each kind lives in a module of its own, all over one :class:`Tables`:

- :mod:`.watermarks`: ``irmstate``, the watermark and lease per (tenant, content type);
- :mod:`.queued_blobs`: ``irmblobsYYYYMMDD``, a marker per queued blob, by ``contentCreated`` day;
- :mod:`.claims`: ``irmrecYYYYMMDD``, the claim protocol over the record keys, by ``CreationTime`` day
  (:mod:`.slots` places them, :mod:`.shards` encodes them, :mod:`.partitions` reads and caches them);
  ``irmrecother`` for the records whose day has no table inside the retention (no ``CreationTime``, or
  one far off);
- :mod:`.failures`: ``irmfailures``, the last failure of each message, for ``poison list``;
- :mod:`.lost_blobs`: ``irmlost``, the blobs the processor found gone, until a health row counted them;
- :mod:`.request_slots`: ``irmbudget``, the Management API requests reserved per slot, per tenant;
- :mod:`.refusals`: ``irmrefusals``, the streams the Data Collection Rule refuses, since when.

(``irm`` is ``STATE_TABLE_PREFIX``.) Day tables older than the retention are dropped whole: one request a day;
``irmrecother``'s keys are purged a retention after their last write.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from azure.data.tables.aio import TableServiceClient

from irm_connector.settings import Settings

from .claims import CLAIM_MARGIN, CLAIM_TTL, FUNCTION_TIMEOUT, Claim, Claims
from .failures import Failure, FailureStore, describe, message_key
from .lost_blobs import LostBlobs
from .queued_blobs import QueuedBlobs, SeenPartitions
from .refusals import Refusal, RefusalStore
from .request_slots import RequestSlots
from .tables import StoreStats, Tables, table_key
from .watermarks import PollerState, Watermarks

__all__ = [
    "CLAIM_MARGIN",
    "CLAIM_TTL",
    "FUNCTION_TIMEOUT",
    "Claim",
    "Claims",
    "Failure",
    "FailureStore",
    "LostBlobs",
    "PollerState",
    "QueuedBlobs",
    "Refusal",
    "RefusalStore",
    "RequestSlots",
    "SeenPartitions",
    "StateStore",
    "StoreStats",
    "Tables",
    "Watermarks",
    "describe",
    "message_key",
    "table_key",
]


class StateStore:
    """The connector's tables. Use with ``async with`` (or :meth:`close`); it owns the service client."""

    def __init__(
        self,
        service: TableServiceClient,
        *,
        tenant_id: str,
        prefix: str = "irm",
        retention_days: int = 10,
        claim_ttl: timedelta = CLAIM_TTL,
    ) -> None:
        self.tables = Tables(service, prefix=prefix, retention_days=retention_days)
        self.watermarks = Watermarks(self.tables)
        self.queued_blobs = QueuedBlobs(self.tables)
        self.claims = Claims(self.tables, claim_ttl=claim_ttl)
        self.failures = FailureStore(self.tables, tenant_id=tenant_id)
        self.lost_blobs = LostBlobs(self.tables, tenant_id=tenant_id)
        self.refusals = RefusalStore(self.tables)

    @classmethod
    def from_settings(cls, service: TableServiceClient, settings: Settings) -> StateStore:
        """The tables of the connector that ``settings`` describe (prefix, tenant, retention)."""
        return cls(
            service,
            tenant_id=settings.tenant_id,
            prefix=settings.table_prefix,
            retention_days=settings.dedupe_retention_days,
        )

    @property
    def stats(self) -> StoreStats:
        return self.tables.stats

    async def drop_expired_tables(self, now: datetime) -> list[str]:
        """Drop the day tables (queued blobs, record keys) older than the retention, and purge the record
        keys kept outside day tables and the lost-blob entries no health row counted that are as old."""
        dropped = await self.tables.drop_expired_tables(now, (QueuedBlobs.KIND, Claims.KIND))
        await self.claims.purge_expired(now)
        await self.lost_blobs.purge_expired(now)
        return dropped

    async def __aenter__(self) -> StateStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.tables.close()
