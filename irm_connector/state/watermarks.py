"""The poller's state per (tenant, content type): the watermark, the lease, when a subscription was last
started and how the last run went.

One entity per content type in ``{prefix}state``, written with ETags: a poller that lost its lease (another
wrote since it read) cannot move the watermark, it gets :class:`LeaseLostError` instead.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import UpdateMode

from irm_connector.errors import LeaseLostError, StateError
from irm_connector.models import parse_utc, utc_text

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
    lease_owner: str = ""
    lease_until: datetime | None = None
    subscription_started: datetime | None = None
    last_error: str = ""
    last_error_at: datetime | None = None
    last_run: datetime | None = None
    etag: str | None = None

    def leased_by_other(self, owner: str, now: datetime) -> bool:
        return bool(self.lease_owner) and self.lease_owner != owner and (self.lease_until or now) > now

    def entity(self) -> dict[str, Any]:
        return {
            "PartitionKey": table_key(self.tenant_id),
            "RowKey": table_key(self.content_type),
            "Watermark": _text(self.watermark),
            "LeaseOwner": self.lease_owner,
            "LeaseUntil": _text(self.lease_until),
            "SubscriptionStarted": _text(self.subscription_started),
            "LastError": self.last_error[:2000],
            "LastErrorAt": _text(self.last_error_at),
            "LastRun": _text(self.last_run),
        }

    @classmethod
    def from_entity(cls, tenant_id: str, content_type: str, entity: dict[str, Any], etag: str | None) -> PollerState:
        return cls(
            tenant_id=tenant_id,
            content_type=content_type,
            watermark=parse_utc(entity.get("Watermark")),
            lease_owner=str(entity.get("LeaseOwner") or ""),
            lease_until=parse_utc(entity.get("LeaseUntil")),
            subscription_started=parse_utc(entity.get("SubscriptionStarted")),
            last_error=str(entity.get("LastError") or ""),
            last_error_at=parse_utc(entity.get("LastErrorAt")),
            last_run=parse_utc(entity.get("LastRun")),
            etag=etag,
        )


class Watermarks:
    """The ``{prefix}state`` table."""

    def __init__(self, tables: Tables) -> None:
        self._tables = tables
        self._name = tables.name("state")

    async def get_state(self, tenant_id: str, content_type: str) -> PollerState:
        table = await self._tables.table(self._name)
        self._tables.stats.reads += 1
        try:
            entity = await table.get_entity(table_key(tenant_id), table_key(content_type))
        except ResourceNotFoundError:
            return PollerState(tenant_id, content_type)
        except AzureError as exc:
            raise StateError(f"cannot read the poller state: {reason(exc)}") from exc
        return PollerState.from_entity(tenant_id, content_type, dict(entity), entity.metadata.get("etag"))

    async def upsert_state(self, state: PollerState) -> PollerState:
        """Write ``state`` if nobody wrote since it was read (ETag); raises :class:`LeaseLostError` otherwise."""
        table = await self._tables.table(self._name)
        self._tables.stats.writes += 1
        lost = f"another poller changed the state of {state.content_type}"
        try:
            if state.etag is None:
                result = await table.create_entity(state.entity())
            else:
                result = await table.update_entity(
                    state.entity(),
                    mode=UpdateMode.REPLACE,
                    etag=state.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
        except (ResourceExistsError, ResourceModifiedError) as exc:
            raise LeaseLostError(lost) from exc
        except HttpResponseError as exc:
            if exc.status_code == 412:
                raise LeaseLostError(lost) from exc
            raise StateError(f"cannot write the poller state: {reason(exc)}") from exc
        except AzureError as exc:
            raise StateError(f"cannot write the poller state: {reason(exc)}") from exc
        return replace(state, etag=result.get("etag"))

    async def list_states(self, tenant_id: str) -> list[PollerState]:
        table = await self._tables.table(self._name)
        self._tables.stats.reads += 1
        out = []
        try:
            async for entity in table.query_entities("PartitionKey eq @pk", parameters={"pk": table_key(tenant_id)}):
                out.append(
                    PollerState.from_entity(tenant_id, str(entity["RowKey"]), dict(entity), entity.metadata.get("etag"))
                )
        except AzureError as exc:
            raise StateError(f"cannot read the poller state: {reason(exc)}") from exc
        return out
