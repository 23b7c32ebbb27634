"""The poller's state per (tenant, content type): the watermark, the lease, when a subscription was last
started and how the last run went.

One entity per content type in ``{prefix}state``, written with ETags: a poller that lost its lease (another
wrote since it read) cannot move the watermark, it gets :class:`LeaseLostError` instead.

A lease is held for ``LeaseSeconds`` after the entity's last write, judged by the storage service's clock
(the entity's ``Timestamp`` against the ``Date`` of the read), so clock skew between instances does not
matter. ``LeaseUntil`` (the holder's clock) is for people reading the table, and for entities written
before ``LeaseSeconds`` existed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import (
    AzureError,
    ResourceNotFoundError,
)

from irm_connector.errors import LeaseLostError, StateError
from irm_connector.models import parse_http_date, parse_utc, utc_text

from .tables import Tables, reason, table_key

__all__ = ["PollerState", "Watermarks"]


def _text(moment: datetime | None) -> str:
    return utc_text(moment) if moment else ""


@dataclass(frozen=True)
class PollerState:
    """The state entity of one (tenant, content type)."""

    tenant_id: str
    content_type: str
    watermark: datetime | None = None
    #: where the first run's windows started, kept until one is listed to its end: the initial lookback
    #: counts from the first run, not from the first run that succeeds
    first_start: datetime | None = None
    lease_owner: str = ""
    lease_until: datetime | None = None
    #: when the poller last asked to start the subscription, whatever the answer (apis.md: 15 minutes apart)
    subscription_started: datetime | None = None
    #: the code of a start an administrator's setting refused (AF20023): no start is asked again until a
    #: listing succeeds (a person re-enabled the subscription)
    subscription_refused: str = ""
    last_error: str = ""
    last_error_at: datetime | None = None
    last_run: datetime | None = None
    #: by the storage service's clock: no Management API request for this content type before it (a
    #: ``Retry-After`` longer than one call waits)
    throttled_until: datetime | None = None
    #: the longest window to list (seconds; 0: the API's 24 hours), shorter after one would outlast an invocation
    window_seconds: int = 0
    #: how long the lease lasts after the entity's last write
    lease_seconds: int = 0
    etag: str | None = None
    #: the entity's ``Timestamp``: the storage service's time of the last write
    written_at: datetime | None = None
    #: the storage service's time when this state was read (the response's ``Date``)
    read_at: datetime | None = None

    def leased_by_other(self, owner: str) -> bool:
        """Whether another poller holds the lease, by the storage service's clock."""
        if not self.lease_owner or self.lease_owner == owner:
            return False
        if self.lease_seconds and self.written_at is not None and self.read_at is not None:
            return self.read_at < self.written_at + timedelta(seconds=self.lease_seconds)
        # Written by a version without LeaseSeconds: its own clock's LeaseUntil is all there is.
        now = self.read_at or datetime.now(UTC)
        return (self.lease_until or now) > now

    def lease_expires(self) -> datetime | None:
        """When the lease runs out, by the storage service's clock (None: no lease, or an old entity)."""
        if not self.lease_owner or not self.lease_seconds or self.written_at is None:
            return self.lease_until if self.lease_owner else None
        return self.written_at + timedelta(seconds=self.lease_seconds)

    def throttled(self) -> datetime | None:
        """Until when the Management API asked to be left alone, if that is still ahead of the storage
        service's time of this state's last read or write (no machine's own clock decides it)."""
        seen = self.read_at or self.written_at
        if self.throttled_until is None or seen is None or seen >= self.throttled_until:
            return None
        return self.throttled_until

    def entity(self) -> dict[str, Any]:
        return {
            "PartitionKey": table_key(self.tenant_id),
            "RowKey": table_key(self.content_type),
            "Watermark": _text(self.watermark),
            "FirstStart": _text(self.first_start),
            "LeaseOwner": self.lease_owner,
            "LeaseUntil": _text(self.lease_until),
            "SubscriptionStarted": _text(self.subscription_started),
            "SubscriptionRefused": self.subscription_refused,
            "LastError": self.last_error[:2000],
            "LastErrorAt": _text(self.last_error_at),
            "LastRun": _text(self.last_run),
            "ThrottledUntil": _text(self.throttled_until),
            "WindowSeconds": self.window_seconds,
            "LeaseSeconds": self.lease_seconds,
        }

    @classmethod
    def from_entity(cls, tenant_id: str, content_type: str, entity: Any, etag: str | None) -> PollerState:
        return cls(
            tenant_id=tenant_id,
            content_type=content_type,
            watermark=parse_utc(entity.get("Watermark")),
            first_start=parse_utc(entity.get("FirstStart")),
            lease_owner=str(entity.get("LeaseOwner") or ""),
            lease_until=parse_utc(entity.get("LeaseUntil")),
            subscription_started=parse_utc(entity.get("SubscriptionStarted")),
            subscription_refused=str(entity.get("SubscriptionRefused") or ""),
            last_error=str(entity.get("LastError") or ""),
            last_error_at=parse_utc(entity.get("LastErrorAt")),
            last_run=parse_utc(entity.get("LastRun")),
            throttled_until=parse_utc(entity.get("ThrottledUntil")),
            window_seconds=_int(entity.get("WindowSeconds")),
            lease_seconds=_int(entity.get("LeaseSeconds")),
            etag=etag,
            written_at=_timestamp(entity),
        )


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _timestamp(entity: Any) -> datetime | None:
    stamp = getattr(entity, "metadata", {}).get("timestamp")
    return stamp if isinstance(stamp, datetime) else None


class Watermarks:
    """The ``{prefix}state`` table."""

    def __init__(self, tables: Tables) -> None:
        self._tables = tables
        self._name = tables.name("state")
        self._known: dict[tuple[str, str], datetime] = {}

    def known_watermark(self, tenant_id: str, content_type: str) -> datetime | None:
        """The last watermark this process read or wrote: what a health row shows when storage does not answer
        (the lag keeps growing in Sentinel instead of going blank)."""
        return self._known.get((tenant_id, content_type))

    def _remember(self, state: PollerState) -> PollerState:
        if state.watermark is not None:
            self._known[(state.tenant_id, state.content_type)] = state.watermark
        return state

    async def get_state(self, tenant_id: str, content_type: str) -> PollerState:
        table = await self._tables.table(self._name)
        self._tables.stats.reads += 1
        seen: dict[str, datetime | None] = {}

        def date_of(response: Any) -> None:
            seen["date"] = parse_http_date(response.http_response.headers.get("Date"))

        try:
            entity = await table.get_entity(table_key(tenant_id), table_key(content_type), raw_response_hook=date_of)
        except ResourceNotFoundError:
            return PollerState(tenant_id, content_type, read_at=seen.get("date"))
        except AzureError as exc:
            raise StateError(f"cannot read the poller state: {reason(exc)}") from exc
        state = PollerState.from_entity(tenant_id, content_type, entity, entity.metadata.get("etag"))
        return self._remember(replace(state, read_at=seen.get("date")))

    async def upsert_state(self, state: PollerState) -> PollerState:
        """Write ``state`` if nobody wrote since it was read (ETag); raises :class:`LeaseLostError` otherwise."""
        result = await self._tables.write_unless_changed(
            self._name, state.entity(), state.etag, what="the poller state"
        )
        if result is None:
            raise LeaseLostError(f"another poller changed the state of {state.content_type}")
        return self._remember(replace(state, etag=result.get("etag"), written_at=result.get("date"), read_at=None))

    async def list_states(self, tenant_id: str) -> list[PollerState]:
        table = await self._tables.table(self._name)
        self._tables.stats.reads += 1
        out = []
        try:
            async for entity in table.query_entities("PartitionKey eq @pk", parameters={"pk": table_key(tenant_id)}):
                etag = entity.metadata.get("etag")
                out.append(PollerState.from_entity(tenant_id, str(entity["RowKey"]), entity, etag))
        except AzureError as exc:
            raise StateError(f"cannot read the poller state: {reason(exc)}") from exc
        return out
