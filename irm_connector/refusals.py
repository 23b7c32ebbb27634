"""A Data Collection Rule that refuses a stream (401, 403, 404) is waited out, not retried into the poison queue.

After a deployment the function's role assignment on the DCR can take 30 minutes to apply; a DCR or stream
removed answers alike. Retrying such a message at once only spends its dequeue count: after five it would be
in the poison queue, with the whole first day of alerts behind it. So a delivery that meets a refusal puts
the message back on the queue with a delay (a new message: the count starts again) and completes; the
refusal goes to the shared state (:mod:`.state.refusals`) so every instance stops sending that stream, and
one delivery at a time, at most every :data:`PROBE_LEAST` seconds, probes with its own rows. The first
accepted probe ends the refusal for all. A refusal older than :data:`PATIENCE` is no longer waited out: its
messages fail as any other and reach the poison queue, where ``poison requeue`` brings them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from .auth import identity_endpoint_known
from .deadline import within
from .errors import IngestionRefusedError, StateError
from .models import utc_text
from .state import Refusal

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = [
    "PATIENCE",
    "PROBE_LEAST",
    "Refusal",
    "accepted",
    "admit",
    "admitted",
    "end_probe",
    "fix_text",
    "ingestion_state",
    "refused",
    "reschedule_delay",
]

log = logging.getLogger(__name__)

#: Seconds between two probes of a refused stream, all instances together.
PROBE_LEAST = 5.0
#: How long a refusal is waited out before its messages fail as any other (and reach the poison queue).
PATIENCE = timedelta(hours=2)
#: A rescheduled message comes back after a quarter of the refusal's age so far, within these bounds (s):
#: soon while a role assignment propagates, seldom once it has lasted.
RESCHEDULE_LEAST = 5
RESCHEDULE_MOST = 300

#: The refusals this process has told the operator about: (DCR, stream, since).
_told: set[tuple[str, str, datetime]] = set()


async def standing(rt: Runtime) -> dict[str, Refusal]:
    """The refusals of the streams this setup sends to, by stream, read fresh. One of a stream turned off is left
    out: nothing sends to it again, so nothing would ever clear it."""
    known = await rt.state.refusals.current(rt.settings.dcr_immutable_id, fresh=True)
    return {stream: refusal for stream, refusal in known.items() if stream in rt.settings.streams}


def ingestion_state(refusals: Iterable[Refusal]) -> str:
    """The health row's ``IngestionState``: ``ok``, or ``refused: <status> since <time>`` of the oldest."""
    oldest = min(refusals, key=lambda r: r.since, default=None)
    if oldest is None:
        return "ok"
    return f"refused: {oldest.status} since {utc_text(oldest.since, timespec='seconds')}"


def fix_text(dcr: str, stream: str, status: int, code: str, since: datetime) -> str:
    """What the operator reads: the refusal and the fix, with no token, secret or row content."""
    answer = f"HTTP {status}{', ' + code if code else ''}"
    if status == 401:
        fix = ("the token was refused: check AZURE_CLIENT_ID (the function app's identity) and that AZURE_CLOUD is "
               "the workspace's cloud")  # fmt: skip
    elif status == 404:
        fix = (f"no such rule or stream: check LOGS_DCR_IMMUTABLE_ID and LOGS_INGESTION_ENDPOINT, and that the "
               f"rule declares the stream {stream} (redeploy infra/)")  # fmt: skip
    else:
        # Off Azure (the command line on a laptop) the rows went as the operator's own identity, not the app's.
        who = "the function app's identity" if identity_endpoint_known() else (
            "the identity this runs as (`az login`; the function app's identity needs it too)")
        fix = (f'give {who} the "Monitoring Metrics Publisher" role on the data collection rule {dcr} (a new role '
               f"assignment takes up to 30 minutes to apply)")  # fmt: skip
    return (
        f"Logs Ingestion refuses stream {stream} of data collection rule {dcr} ({answer}) since "
        f"{utc_text(since, timespec='seconds')}. Fix: {fix}. Messages are rescheduled, not moved to the poison "
        f"queue, for up to {PATIENCE.total_seconds() / 3600:.0f} hours."
    )


async def admit(rt: Runtime, stream: str) -> Refusal | None:
    """None when rows may go to ``stream``: it is not refused, or this delivery won its next probe (then
    :func:`end_probe` must follow), or this process's probe just ended it; else the refusal that holds
    them back."""
    store, dcr = rt.state.refusals, rt.settings.dcr_immutable_id
    refusal = (await store.current(dcr)).get(stream)
    if refusal is None:
        return None
    running = store.probes.get(stream)
    if running is not None:
        # This process probes the stream now: its answer decides for the deliveries beside it too. The probe
        # lasts as long as its delivery's work, which this invocation's deadline does not bound.
        await within(f"waiting for this process's probe of {stream}", running[1].wait())
        return (await store.current(dcr)).get(stream)
    if refusal.probe_at > store.now():
        return refusal
    # Known as this process's probe before the claim is written: the deliveries beside it wait for its answer.
    store.probes[stream] = (asyncio.current_task(), asyncio.Event())
    won = False
    try:
        won = await store.take_probe(dcr, refusal, probe_after=PROBE_LEAST)
    finally:
        if not won:
            end_probe(rt, stream)
    if won:
        log.info("Logs Ingestion refused %s since %s; probing with this delivery's rows", stream,
                 utc_text(refusal.since, timespec="seconds"))  # fmt: skip
        return None
    # Another instance probed first, or ended the refusal: what the state says now decides.
    return (await store.current(dcr)).get(stream)


@contextlib.asynccontextmanager
async def admitted(rt: Runtime, stream: str) -> AsyncIterator[None]:
    """Rows of this delivery may go to ``stream`` inside (see :func:`admit`); a probe it won ends on the way out.
    Raises :class:`IngestionRefusedError` when the refusal holds them back: nothing is claimed or sent, and the
    delivery is rescheduled."""
    refusal = await admit(rt, stream)
    if refusal is not None:
        raise IngestionRefusedError(
            f"Logs Ingestion refuses {stream} (HTTP {refusal.status}) since {refusal.since:%Y-%m-%dT%H:%M:%SZ}; "
            "not sent, the message is rescheduled",
            status=refusal.status, code=refusal.code, stream=stream,
        )  # fmt: skip
    try:
        yield
    finally:
        end_probe(rt, stream)


def end_probe(rt: Runtime, stream: str) -> None:
    """The probe of ``stream`` that the calling task runs (if it runs one) has its answer."""
    running = rt.state.refusals.probes.get(stream)
    if running is not None and running[0] is asyncio.current_task():
        del rt.state.refusals.probes[stream]
        running[1].set()


async def refused(rt: Runtime, error: IngestionRefusedError) -> Refusal:
    """Record a refusing answer in the shared state and tell the operator, once per refusal and process."""
    dcr = rt.settings.dcr_immutable_id
    refusal = await rt.state.refusals.record(dcr, error.stream, error.status, error.code, probe_after=PROBE_LEAST)
    if (dcr, refusal.stream, refusal.since) not in _told:
        _told.add((dcr, refusal.stream, refusal.since))
        log.error(fix_text(dcr, refusal.stream, refusal.status, refusal.code, refusal.since),
                  extra={"stream": refusal.stream, "status": refusal.status})  # fmt: skip
    return refusal


async def accepted(rt: Runtime, stream: str) -> None:
    """Rows reached ``stream``: a refusal this process knew of has ended, for every instance."""
    try:
        ended = await rt.state.refusals.clear(rt.settings.dcr_immutable_id, stream)
    except StateError as exc:
        log.warning("Could not clear the refusal of %s (the next probe does): %s", stream, exc)
        return
    if ended is not None:
        lasted = (rt.state.refusals.now() - ended.since).total_seconds()
        log.warning("Logs Ingestion accepts %s again, after refusing it for %.0f s", stream, lasted,
                    extra={"stream": stream})  # fmt: skip


def reschedule_delay(refusal: Refusal, now: datetime | None = None) -> int:
    """Seconds a message held back by ``refusal`` stays invisible before it comes back."""
    age = ((now or datetime.now(UTC)) - refusal.since).total_seconds()
    return int(min(max(age / 4, RESCHEDULE_LEAST), RESCHEDULE_MOST))
