"""Which streams the Data Collection Rule refuses, shared by every instance: one refusing answer teaches them
all to stop sending and reschedule, and one probe at a time (claimed by ETag) finds out when it ends.

Table ``{prefix}refusals``: PartitionKey the DCR's immutable id, RowKey the stream, with the HTTP status and
error code of the refusal, since when (``Since``, kept while it lasts) and when the next probe may go
(``ProbeAt``), both by the storage service's clock: written by each machine's own, an instance an hour fast (the
command line on a laptop) held every instance's probes back for that hour. A row exists only while the stream
is refused; the normal path reads the partition (a few rows, usually none) once per :data:`CACHE_SECONDS` per
process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from irm_connector.models import parse_utc, utc_text

from .tables import Tables, table_key

__all__ = ["CACHE_SECONDS", "Refusal", "RefusalStore"]

#: How long a process trusts what it read: another instance's refusal reaches it this late at most (it
#: learns at once from its own refused upload).
CACHE_SECONDS = 10.0


@dataclass(frozen=True)
class Refusal:
    """A stream the DCR refuses: since when, with which answer, and when the next probe may go."""

    stream: str
    status: int
    code: str
    since: datetime
    probe_at: datetime
    etag: str | None = None


class RefusalStore:
    """The ``{prefix}refusals`` table."""

    KIND = "refusals"

    def __init__(self, tables: Tables) -> None:
        self._tables = tables
        self._name = tables.name(self.KIND)
        self._cache: dict[str, tuple[float, dict[str, Refusal]]] = {}
        #: Counts this process's writes, each before and after: a read sent before one and answered after it is not
        #: cached (see :meth:`current`).
        self._writes = 0
        #: The storage service's time at the latest read's answer (its ``Date``), and this process's monotonic then.
        self._clock: tuple[datetime, float] | None = None
        #: The probes this process runs, by stream: the probing task, and the event its end sets.
        self.probes: dict[str, tuple[asyncio.Task[Any] | None, asyncio.Event]] = {}

    async def current(self, dcr: str, *, fresh: bool = False) -> dict[str, Refusal]:
        """The refused streams of ``dcr``, by stream; read again when older than :data:`CACHE_SECONDS`."""
        cached = self._cache.get(dcr)
        if cached is not None and not fresh and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        writes = self._writes
        read = await self._tables.query(self._name, "PartitionKey eq @pk", {"pk": table_key(dcr)}, create=False)
        if read.server_time is not None:
            self._clock = (read.server_time, time.monotonic())
        refusals: dict[str, Refusal] = {}
        for entity in read.entities:
            refusal = _refusal(dict(entity), entity.metadata.get("etag"))
            refusals[refusal.stream] = refusal
        if writes == self._writes:
            # Older than a write of this process's that overlapped it (a refusal recorded, a probe taken, a refusal
            # cleared), the answer went uncached: kept, it undid that write here for CACHE_SECONDS, sending rows
            # to a refused stream or holding them from one accepted again.
            self._cache[dcr] = (time.monotonic(), refusals)
        return refusals

    @contextlib.asynccontextmanager
    async def _writing(self, dcr: str) -> AsyncIterator[None]:
        self._writes += 1
        try:
            yield
        finally:
            self._writes += 1
            self._cache.pop(dcr, None)

    def now(self) -> datetime:
        """The storage service's time, as the latest read's ``Date`` and this process's clock since tell it (this
        machine's clock before any read): what a refusal's times are written in and judged by."""
        if self._clock is None:
            return datetime.now(UTC)
        answered, at = self._clock
        return answered + timedelta(seconds=time.monotonic() - at)

    async def record(self, dcr: str, stream: str, status: int, code: str, *, probe_after: float) -> Refusal:
        """Note that ``stream`` was refused just now; the refusal keeps its first ``Since``."""
        for _ in range(3):
            known = (await self.current(dcr, fresh=True)).get(stream)
            now = self.now()
            since = known.since if known is not None else now
            entity = _entity(dcr, Refusal(stream, status, code, since, now + timedelta(seconds=probe_after)))
            # Only over the row read: cleared meanwhile (accepted again), its Since dated the new refusal from
            # before the clear, and the patience it is given (refusals.PATIENCE) ended early. Another instance
            # writing first (its own refusal, a probe) is read again; after three, the refusal is on record anyway.
            etag = known.etag if known is not None else None
            async with self._writing(dcr):
                written = await self._tables.write_unless_changed(
                    self._name, entity, etag, what=f"to table {self._name}", gone_is_change=True
                )
            if written is not None:
                break
        return (await self.current(dcr, fresh=True)).get(stream) or _refusal(entity, None)

    async def take_probe(self, dcr: str, refusal: Refusal, *, probe_after: float) -> bool:
        """Claim the next probe of a refused stream: one instance wins (ETag), the others wait for the next."""
        if refusal.etag is None:
            return False
        now = self.now()
        entity = _entity(dcr, Refusal(refusal.stream, refusal.status, refusal.code, refusal.since,
                                      now + timedelta(seconds=probe_after)))  # fmt: skip
        # Whoever won, the cache is read again: another instance probed, or the refusal ended, or this one's ETag.
        async with self._writing(dcr):
            written = await self._tables.write_unless_changed(
                self._name, entity, refusal.etag, what=f"to table {self._name}", gone_is_change=True
            )
        return written is not None

    async def clear(self, dcr: str, stream: str) -> Refusal | None:
        """The stream is accepted again: forget its refusal; returns the refusal this process knew of."""
        known = (await self.current(dcr)).get(stream)
        if known is None:
            return None
        async with self._writing(dcr):
            await self._tables.delete(self._name, table_key(dcr), table_key(stream))
        return known


def _entity(dcr: str, refusal: Refusal) -> dict[str, Any]:
    return {
        "PartitionKey": table_key(dcr),
        "RowKey": table_key(refusal.stream),
        "Stream": refusal.stream,
        "Status": refusal.status,
        "Code": refusal.code[:200],
        "Since": utc_text(refusal.since),
        "ProbeAt": utc_text(refusal.probe_at),
    }


def _refusal(entity: dict[str, Any], etag: str | None) -> Refusal:
    now = datetime.now(UTC)
    return Refusal(
        stream=str(entity.get("Stream") or entity.get("RowKey") or ""),
        status=int(entity.get("Status") or 0),
        code=str(entity.get("Code") or ""),
        since=parse_utc(entity.get("Since")) or now,
        probe_at=parse_utc(entity.get("ProbeAt")) or now,
        etag=etag,
    )
