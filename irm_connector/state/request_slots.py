"""The ``{prefix}budget`` table: per tenant, the Management API requests every instance reserved, by slot.

One entity per tenant holds a ring of the recent slots (``S{i}``: the slot's number, ``U{i}``: requests
reserved in it), so a reservation is one ETag-checked write of one entity whatever the number of
instances, and nothing piles up to clean. ``PausedUntil`` (seconds since the epoch, storage clock) is the end
of the latest wait the API asked of the tenant (``Retry-After``), which every instance keeps.
Every answer also carries the storage service's ``Date``, which the budget uses as its clock (see
:mod:`irm_connector.request_budget`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from azure.core.exceptions import (
    AzureError,
    ResourceNotFoundError,
)

from irm_connector.errors import StateError
from irm_connector.models import parse_http_date

from .tables import Tables, reason, table_key

__all__ = ["RING", "Observed", "RequestSlots", "SlotRing", "SlotsChangedError"]

#: Slots kept in the ring: two budget windows' worth, more than any reservation looks at.
RING = 16
_ROW = "requests"
_PAUSED = "PausedUntil"


class SlotsChangedError(StateError):
    """Another instance wrote the slots since they were read: read again."""


@dataclass(frozen=True)
class Observed:
    """When a storage request was sent and its answer came (monotonic clock), and the answer's ``Date``."""

    sent: float
    received: float
    date: datetime | None


@dataclass(frozen=True)
class SlotRing:
    """Requests reserved per slot number, as last read or written, with the entity's ETag."""

    tenant_id: str
    used: dict[int, int] = field(default_factory=dict)
    etag: str | None = None
    #: When the wait the API asked of the tenant ends, by the storage service's clock (epoch seconds).
    paused_until: float | None = None

    def adding(self, slot: int, count: int) -> SlotRing | None:
        """The ring with ``count`` more in ``slot``; None when a later slot already holds its place."""
        place = [s for s in self.used if s % RING == slot % RING and s != slot]
        if any(s > slot for s in place):
            return None
        used = {s: n for s, n in self.used.items() if s not in place}
        used[slot] = used.get(slot, 0) + count
        return replace(self, used=used)

    def pausing(self, until: float) -> SlotRing:
        """The ring with the tenant's wait ending at ``until``."""
        return replace(self, paused_until=until)

    def entity(self) -> dict[str, Any]:
        entity: dict[str, Any] = {"PartitionKey": table_key(self.tenant_id), "RowKey": _ROW}
        for slot, count in self.used.items():
            entity[f"S{slot % RING}"] = slot
            entity[f"U{slot % RING}"] = count
        if self.paused_until is not None:
            entity[_PAUSED] = float(self.paused_until)
        return entity

    @classmethod
    def from_entity(cls, tenant_id: str, entity: Any, etag: str | None) -> SlotRing:
        used: dict[int, int] = {}
        for place in range(RING):
            slot, count = entity.get(f"S{place}"), entity.get(f"U{place}")
            if isinstance(slot, int) and isinstance(count, int):
                used[slot] = count
        paused = entity.get(_PAUSED)
        # bool is an int: a hand-edited True is no time
        until = float(paused) if isinstance(paused, (int, float)) and not isinstance(paused, bool) else None
        return cls(tenant_id, used, etag, until if until is not None and math.isfinite(until) else None)


class RequestSlots:
    """Reads and ETag-checked writes of the slot ring of one tenant."""

    KIND = "budget"

    def __init__(self, tables: Tables) -> None:
        self._tables = tables
        self._name = tables.name(self.KIND)

    async def read(self, tenant_id: str) -> tuple[SlotRing, Observed]:
        table = await self._tables.table(self._name)
        self._tables.stats.reads += 1
        seen: dict[str, datetime | None] = {}

        def date_of(response: Any) -> None:
            seen["date"] = parse_http_date(response.http_response.headers.get("Date"))

        sent = time.monotonic()
        try:
            entity = await table.get_entity(table_key(tenant_id), _ROW, raw_response_hook=date_of)
        except ResourceNotFoundError:
            return SlotRing(tenant_id), Observed(sent, time.monotonic(), seen.get("date"))
        except AzureError as exc:
            raise StateError(f"cannot read the request budget: {reason(exc)}") from exc
        ring = SlotRing.from_entity(tenant_id, entity, entity.metadata.get("etag"))
        return ring, Observed(sent, time.monotonic(), seen.get("date"))

    async def write(self, ring: SlotRing) -> tuple[SlotRing, Observed]:
        """Write ``ring`` if nobody wrote since it was read; raises :class:`SlotsChangedError` otherwise."""
        await self._tables.table(self._name)  # created first, so the clock reading spans the write alone
        sent = time.monotonic()
        result = await self._tables.write_unless_changed(
            self._name, ring.entity(), ring.etag, what="the request budget", gone_is_change=True
        )  # gone (deleted by hand): read again, as for another instance's write
        if result is None:
            raise SlotsChangedError("another instance reserved requests at the same time")
        date = result.get("date")
        observed = Observed(sent, time.monotonic(), date if isinstance(date, datetime) else None)
        return replace(ring, used=dict(ring.used), etag=result.get("etag")), observed

