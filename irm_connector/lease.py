"""The poller's lease on one content type: short, kept alive by a heartbeat while the run works.

A poller that dies (kill -9, a recycled instance, a deployment) stops writing, and its lease runs out
:data:`LEASE` after its last write, judged by the storage service's clock (the entity's ``Timestamp``
against the ``Date`` of the reader's response), so clock skew between instances does not matter. The
first tick that starts 60 s or more after the death therefore finds the lease free.

The heartbeat and the run's own writes (watermark, subscription start, release) go through one lock and
write the same ETag-checked entity, so each write carries the ETag of the one before. The holder also
keeps its own deadline: :data:`LEASE` less :data:`MARGIN` after the *sending* of its last successful write
(by the monotonic clock). The service's ``Timestamp`` of that write is later than its sending, so the holder
gives up before anybody else may take over. Once the deadline passes, the holder writes nothing more (it
cannot move the watermark) and its run is cancelled, in-flight requests and retry waits included; every
listing page is also gated on the deadline, for a process that was frozen and resumes.

A write that has not answered within a heartbeat is cut and sent again on a fresh connection, until the
holder's deadline: one connection that never answers (a storage front end that stalls, a dropped NAT port)
would otherwise hold every renewal behind the lock for the whole HTTP timeout, longer than the lease. A cut
write may still have landed, and so may a try the SDK retried by itself; the write sent after it then meets
an ETag that changed. So a refused write reads the state back: when it holds exactly what one of the holder's
own unanswered writes carried (each has an instant of its own: its ``LeaseUntil``, or a release's ``LastRun``),
that write landed, and the holder carries on from its ETag. Anything else was written by somebody else, and the
lease is lost. Taking the lease goes the same way (its read too): a take that lands unanswered is the taker's,
and a stalled connection does not cost the tick.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from .deadline import Deadline, cleaning_up, within
from .errors import DeadlineError, LeaseLostError, StateError
from .state import PollerState, Watermarks

__all__ = ["HEARTBEAT", "LEASE", "MARGIN", "LeaseTiming", "PollerLease"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a lease lasts after its holder's last write. Well under 60 s: the service's Date has whole
#: seconds and the takeover must happen on the first tick 60 s after a death.
LEASE = timedelta(seconds=40)
#: How often the holder renews while it works: several renewals fit in a lease, so a slow or failed
#: storage write or two does not lose it.
HEARTBEAT = timedelta(seconds=8)
#: The holder gives up this much before the lease could run out for the others.
MARGIN = timedelta(seconds=5)


@dataclass(frozen=True)
class LeaseTiming:
    """How long a lease lasts after a write, how often its holder renews it (and how long one write may go
    unanswered before it is sent again), and how much before the lease runs out the holder gives up."""

    lease: timedelta = LEASE
    heartbeat: timedelta = HEARTBEAT
    margin: timedelta = MARGIN


_TIMING = LeaseTiming()


class _Unanswered(DeadlineError):
    """A state write or read cut short by the lease: it may be sent again. Never leaves this module."""


class PollerLease:
    """A held lease; build it with :meth:`take`. Write the state only through :meth:`write`."""

    def __init__(
        self, watermarks: Watermarks, state: PollerState, sent_at: float, dims: dict[str, str], timing: LeaseTiming
    ) -> None:
        self._watermarks = watermarks
        self._state = state
        self._renewed = sent_at
        self._lock = asyncio.Lock()
        self._lost = ""
        self._dims = dims
        self._timing = timing
        #: The writes sent since the last one known to have landed, with their sending times: any of them
        #: may have landed unanswered.
        self._unanswered: list[tuple[float, dict[str, Any]]] = []

    @classmethod
    async def take(
        cls,
        watermarks: Watermarks,
        tenant_id: str,
        content_type: str,
        owner: str,
        *,
        timing: LeaseTiming = _TIMING,
    ) -> PollerLease | str:
        """The lease, or why it could not be had (another poller holds it or took it first). The read and the
        write are cut and sent again as a holder's writes are, and may take as long as a holder may go without a
        write; storage that answers neither in that time raises :class:`StateError`."""
        dims = {"content_type": content_type, "tenant_id": tenant_id}
        lease = cls(watermarks, PollerState(tenant_id, content_type), time.monotonic(), dims, timing)
        try:
            state = await lease._read_state()
            if state.leased_by_other(owner):
                return f"another poller holds the lease until {state.lease_expires()}"
            lease._state = state
            await lease.write(lease_owner=owner)
        except LeaseLostError as exc:
            if lease._lost:  # refused, and not by a write of this taker's own
                return "another poller took the lease first"
            raise StateError(
                f"cannot take the lease of {content_type}: the poller state had no answer in "
                f"{(timing.lease - timing.margin).total_seconds():.0f} s"
            ) from exc
        return lease

    @property
    def state(self) -> PollerState:
        return self._state

    @property
    def lost(self) -> bool:
        return bool(self._lost) or time.monotonic() >= self._deadline()

    def check(self) -> None:
        """Raise :class:`LeaseLostError` once the lease may have run out: nothing more may be listed."""
        if self.lost:
            raise self._lost_error()

    def _lost_error(self) -> LeaseLostError:
        return LeaseLostError(
            f"lost the lease of {self._state.content_type} ({self._lost or 'not renewed in time'}); another "
            "poller continues from the watermark. If this repeats, check the storage account's availability "
            "and latency"
        )

    async def write(self, **changes: Any) -> PollerState:
        """Write the state with ``changes``, renewing the lease; refused once the lease may have run out."""
        async with self._lock:
            wanted = _lease_of(replace(self._state, **changes), self._timing.lease)
            while True:
                self.check()
                sent = time.monotonic()
                self._unanswered.append((sent, wanted.entity()))
                try:
                    written = await self._cut_short("write", self._watermarks.upsert_state(wanted))
                except _Unanswered:
                    continue
                except LeaseLostError as exc:
                    landed = await self._landed(exc)
                    if landed.entity() != wanted.entity():
                        # An earlier write landed unanswered (or failed after landing): this one's changes go on
                        # top of it. Built on the state from before it, it would undo it: a watermark moved back.
                        wanted = _lease_of(replace(landed, **changes), self._timing.lease)  # with landed's ETag
                        continue
                    written = replace(wanted, etag=landed.etag, written_at=landed.written_at, read_at=None)
                else:
                    self._renewed = sent
                self._unanswered.clear()
                self._state = written
                return written

    async def _landed(self, refusal: LeaseLostError) -> PollerState:
        """After a refused write: the state as it is, if one of this holder's unanswered writes put it there
        (the lease then counts from that write's sending); else the lease is lost, and this raises."""
        current = await self._read_state()
        sent = [at for at, entity in self._unanswered if entity == current.entity()]
        if not sent:
            self._lost = str(refusal)
            raise self._lost_error() from refusal
        log.info("A write of the poller state of %s that went unanswered had landed; carrying on from it",
                 self._state.content_type, extra=self._dims)  # fmt: skip
        self._renewed = min(sent)
        self._unanswered.clear()
        return current

    async def _read_state(self) -> PollerState:
        """The state as stored, read again on a new connection while a read goes unanswered."""
        while True:
            self.check()
            try:
                return await self._cut_short(
                    "read", self._watermarks.get_state(self._state.tenant_id, self._state.content_type)
                )
            except _Unanswered:
                continue

    async def _cut_short(self, what: str, call: Coroutine[Any, Any, T]) -> T:
        """``call``, cut when it has not answered within a heartbeat (:class:`_Unanswered`), or by the holder's
        deadline (the lease is then lost)."""
        now = time.monotonic()
        cut = Deadline(min(now + self._timing.heartbeat.total_seconds(), self._deadline()))
        try:
            return await within(what, call, deadline=cut, error=_Unanswered)
        except _Unanswered:
            self.check()  # cut by the holder's deadline: nothing more is sent
            log.warning("A %s of the poller state of %s had no answer in %.0f s; trying again on a new connection",
                        what, self._state.content_type, cut.end - now, extra=self._dims)  # fmt: skip
            raise

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` while a heartbeat renews the lease; if the lease is lost, ``work`` is cancelled and
        :class:`LeaseLostError` raised."""
        task = asyncio.ensure_future(work)
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            await asyncio.wait({task, heartbeat}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                task.cancel()
                # Its cancel and whatever it raises on the way out are the work's; a cancel of this caller's own
                # (a stop while the work cleans up) still ends it here, not as a lost lease.
                await asyncio.gather(task, return_exceptions=True)
                failure = heartbeat.exception()
                if failure is not None:
                    raise failure
                self._lost = self._lost or "not renewed in time"
                self.check()
            return task.result()
        finally:
            for pending in (task, heartbeat):
                pending.cancel()
            await asyncio.gather(task, heartbeat, return_exceptions=True)

    async def release(self, **changes: Any) -> None:
        """Give the lease up with a last write of ``changes``; a lost lease is left to run out."""
        if self.lost:
            # The run's failure says so; the state belongs to whoever holds the lease now.
            log.info("Not releasing the lease of %s: it was lost", self._state.content_type, extra=self._dims)
            return
        try:
            with cleaning_up():  # the run's last write: it may use the time kept back for the way out
                await self.write(lease_owner="", lease_until=None, lease_seconds=0, **changes)
        except StateError as exc:
            log.warning("Could not release the lease of %s (it runs out by itself): %s",
                        self._state.content_type, exc, extra=self._dims)  # fmt: skip

    def _deadline(self) -> float:
        return self._renewed + (self._timing.lease - self._timing.margin).total_seconds()

    async def _heartbeat(self) -> None:
        """Renew every :data:`HEARTBEAT`; return when the lease is lost (the run is then cancelled)."""
        while True:
            wait = min(self._timing.heartbeat.total_seconds(), self._deadline() - time.monotonic())
            await asyncio.sleep(max(wait, 0.0))
            try:
                await self.write()
            except LeaseLostError:
                # The run is cancelled next; its failure is the one line that reports this.
                self._lost = self._lost or "not renewed in time"
                return
            except StateError as exc:
                # Storage hiccup: try again until the deadline; the next write may go through.
                log.warning("Could not renew the lease of %s: %s", self._state.content_type, exc, extra=self._dims)


def _lease_of(state: PollerState, lease: timedelta) -> PollerState:
    """``state`` held by its owner for ``lease`` from this write; a release (no owner) as it is."""
    if not state.lease_owner:
        return state
    # LeaseUntil by this instance's clock: for people and for older versions; the lease is LeaseSeconds.
    return replace(state, lease_until=datetime.now(UTC) + lease, lease_seconds=int(lease.total_seconds()))
