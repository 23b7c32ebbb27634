"""The processor: one queue message, one content blob, rows in Sentinel exactly once.

Order matters: download, normalize, claim the records (dropping those already sent), upload, mark each
accepted body's records sent; then wait for the records another delivery was sending, and send those it
gave up. Anything transient raises so the host
retries the message (and after ``maxDequeueCount`` moves it to ``<queue>-poison``); anything that no
retry can fix completes the message after one clear log line, or, when someone must look at it (a refused
message, a blob whose body is whole but not a JSON array), parks it in the poison queue at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime

from . import refusals
from .api_answers import MAX_RETRY_AFTER
from .blob_parse import iter_blob
from .body_budget import BodyHold, body_digest
from .content_queue import ContentMessage, Delivery
from .deadline import Deadline, carried_after, carried_through, cleaning_up
from .errors import (
    BadContentError,
    BadMessageError,
    BlobBusyError,
    ContentUnavailableError,
    IngestionRefusedError,
    IngestionThrottledError,
    OperatorActionError,
    StateError,
    SubscriptionMissingError,
    TransientApiError,
    UntrustedUrlError,
)
from .metrics import metrics
from .models import ContentBlob, Outcome, ProcessResult, Row
from .normalize import ContentRef, Routing, blob_ref, normalize_blob
from .runtime import Runtime
from .state import Claim

__all__ = ["process_message"]

log = logging.getLogger(__name__)


async def process_message(
    rt: Runtime, delivery: Delivery, *, dequeue_count: int = 1, message_id: str = "", deadline: Deadline | None = None
) -> ProcessResult:
    """Process one content message; raises to make the host retry. Nothing in it waits past ``deadline``
    (by default the function timeout from now), less the margin to clean up."""
    deadline = deadline or Deadline.for_invocation()
    with deadline.applied():
        return await _process(rt, delivery, dequeue_count, message_id, deadline)


async def _process(
    rt: Runtime, delivery: Delivery, dequeue_count: int, message_id: str, deadline: Deadline
) -> ProcessResult:
    settings = rt.settings
    text = delivery.text
    try:
        message = delivery.message
        if message is None:
            raise delivery.problem or BadMessageError("message is not a content notification")
        if message.tenant_id.lower() != settings.tenant_id.lower():
            raise BadMessageError("message is for another tenant than O365_TENANT_ID")
        rt.management.check_url(message.blob.content_uri, "contentUri")
    except (BadMessageError, UntrustedUrlError) as exc:
        outcome: Outcome = "untrusted-url" if isinstance(exc, UntrustedUrlError) else "bad-message"
        # Not its text: a message written by hand may hold a record, whose content stays out of the logs.
        log.error(
            "Content message refused and moved to %s: %s (message %s, %d characters; `irm-connector poison list` "
            "shows it)",
            settings.poison_queue,
            exc,
            message_id or "without an id",
            len(text),
            extra={"outcome": outcome},
        )
        await rt.queue.put_poison(text)
        return ProcessResult(outcome=outcome, detail=f"{type(exc).__name__}: {exc}")

    blob = message.blob
    dims = {
        "content_type": blob.content_type,
        "content_id": blob.content_id,
        # what the audit rows carry instead of the content id (O365Audit_CL.BlobRef): the way back to the blob
        "blob_ref": blob_ref(blob.content_type, blob.content_id),
        "tenant_id": settings.tenant_id,
    }
    result = ProcessResult(content_id=blob.content_id)
    # Whether the blob has expired is the API's to say (AF20051), not this machine's clock: one running fast
    # would skip a blob the API still serves.

    # The body and the rows made from it live until the delivery ends, and so does its room in the budget.
    hold = rt.bodies.hold()
    try:
        return await _download_and_send(rt, hold, text, blob, dims, result, dequeue_count, message_id, deadline)
    except IngestionRefusedError as exc:
        return await _reschedule(rt, message, exc, result, dims)
    except IngestionThrottledError as exc:
        # Its rows accepted so far are marked sent and the rest released: the put-off delivery sends the rest.
        return await _put_off(rt, message, exc, result, dims, service="Logs Ingestion")
    except TransientApiError as exc:
        if exc.retry_after is None and not exc.throttled:
            raise  # not throttled, with no wait named: the host's retries, then the poison queue
        return await _put_off(rt, message, exc, result, dims, service="the Management API")
    except BlobBusyError as exc:
        # Failed to the host, each wait spent one of the message's tries: with functionTimeout shortened, five
        # waits ended before a crashed delivery's claim did (CLAIM_TTL), and the message was parked.
        return await _put_off(rt, message, exc, result, dims, wait=HELD_PUT_OFF,
                              why="as another delivery still holds some of its records")  # fmt: skip
    except (SubscriptionMissingError, OperatorActionError) as exc:
        # The subscription went (stopped, or disabled by an administrator) after the blob was listed: its content
        # cannot be fetched until the poller, or the administrator, starts it again. Failed to the host, the message
        # was parked within minutes; put off, it comes back after the poller's next start.
        if isinstance(exc, OperatorActionError) and exc.code != "AF20023":
            raise
        return await _put_off(rt, message, exc, result, dims, wait=SUBSCRIPTION_PUT_OFF,
                              why="as its subscription is off until started again")  # fmt: skip
    finally:
        hold.release()


async def _reschedule(
    rt: Runtime, message: ContentMessage, error: IngestionRefusedError, result: ProcessResult, dims: dict[str, str]
) -> ProcessResult:
    """The DCR refuses a stream: the message comes back later as a new one (its dequeue count spared), unless
    the refusal has lasted past :data:`refusals.PATIENCE`. It says it was rescheduled, so that its success
    clears the failure reason recorded now."""
    refusal = (await rt.state.refusals.current(rt.settings.dcr_immutable_id)).get(error.stream)
    if refusal is None:  # accepted again meanwhile (another instance's probe): the host retries at once
        raise error
    now = rt.state.refusals.now()  # the refusal's times are the storage service's
    if now - refusal.since > refusals.PATIENCE:
        log.error("Logs Ingestion has refused %s for more than %s; the message is retried by the host and goes "
                  "to the poison queue after maxDequeueCount: %s", error.stream, refusals.PATIENCE, error,
                  extra=dims)  # fmt: skip
        raise error
    delay = refusals.reschedule_delay(refusal, now)
    await _put_back(rt, message, delay, error, result)
    log.info("Content %s rescheduled in %d s: %s", dims["content_id"], delay, error, extra=dims)
    return result


async def _put_off(
    rt: Runtime,
    message: ContentMessage,
    error: TransientApiError | IngestionThrottledError | SubscriptionMissingError | OperatorActionError | BlobBusyError,
    result: ProcessResult,
    dims: dict[str, str],
    *,
    service: str = "",
    wait: int | None = None,
    why: str | None = None,
) -> ProcessResult:
    """The Management API asked for a wait longer than a call waits (``Retry-After``), or it or Logs Ingestion
    throttled past a call's retries: the message comes back when the wait ends (a minute, the span of the quotas,
    when unnamed), as a new one (its dequeue count spared), rather than being retried early by the host into the
    poison queue (the host's retries, 30 s apart, spend five attempts in two minutes of a catch-up's throttling).
    At most :data:`~.api_answers.MAX_RETRY_AFTER`, and back before its blob expires: a longer wait (a proxy's, a
    date gone wrong) would bring it back to an answer of AF20051, its records lost. ``wait`` and ``why``: another
    reason to come back later (a subscription that is off, records another delivery holds), and how long;
    ``service``, the one that throttled, is named only when ``why`` is not.

    Put off :data:`THROTTLED_PUT_OFFS` times already, ``error`` is raised instead: the host's retries, then the
    poison queue (a PoisonDepth alert, and `poison requeue` once it is over), rather than putting it off until its
    blob expires and its records are lost with a warning."""
    if message.put_offs >= THROTTLED_PUT_OFFS:
        raise error
    # By the later of this machine's clock and the API's (its Date, when it answered): the blob expires by the API's,
    # and a machine minutes slow put it off past its expiry, to an answer of AF20051 and its records lost.
    now = datetime.now(UTC)
    answered = getattr(error, "answered_at", None)
    now = max(now, answered) if answered is not None else now
    before_expiry = (message.blob.content_expiration - now).total_seconds() - PUT_OFF_EXPIRY_MARGIN
    longest = int(MAX_RETRY_AFTER.total_seconds())
    named = getattr(error, "retry_after", None)
    if named is not None and named <= 0:
        named = None  # "Retry-After: 0" (or a date already past): no wait at all, which would bring it back at once
    if wait is None:
        wait = THROTTLED_PUT_OFF if named is None else math.ceil(named)
    delay = min(wait, longest, max(math.floor(before_expiry), PUT_OFF_LEAST))
    await _put_back(rt, replace(message, put_offs=message.put_offs + 1), delay, error, result)
    if why is None:
        why = f"as {service} asks" if named is not None else f"{service} still throttles"
    log.warning("Content %s put off for %d s, %s: %s", dims["content_id"], delay, why, error, extra=dims)
    return result


async def _put_back(rt: Runtime, message: ContentMessage, delay: int, error: Exception, result: ProcessResult) -> None:
    """The message back on the queue in ``delay`` seconds, as a new one that counts its reschedules; the result
    says why, so that the message's later success clears the failure reason recorded now. May use the
    invocation's margin, as releasing the claims before it may have: failed to the host, the message would spend
    a dequeue count on an answer that asked it to wait."""
    with cleaning_up():
        await rt.queue.reschedule(replace(message, rescheduled=message.rescheduled + 1).encode(), delay)
    result.outcome = "rescheduled"
    result.detail = f"{type(error).__name__}: {error}"


async def _download_and_send(
    rt: Runtime,
    hold: BodyHold,
    text: str,
    blob: ContentBlob,
    dims: dict[str, str],
    result: ProcessResult,
    dequeue_count: int,
    message_id: str,
    deadline: Deadline,
) -> ProcessResult:
    settings = rt.settings
    try:
        raw = await hold.fetch(
            lambda read: rt.management.get_content(
                blob.content_uri, content_type=blob.content_type, read=read, deadline=deadline
            )
        )
    except ContentUnavailableError as exc:
        # Its records are lost: an error, which the log's alerts see, not a warning among the retries'.
        if exc.expired:
            log.error("Content %s expired at %s before it was processed; its records can no longer be fetched",
                      blob.content_id, blob.content_expiration.isoformat(), extra=dims)  # fmt: skip
            result.outcome = "expired"
        else:
            log.error("Content %s skipped: %s", blob.content_id, exc, extra=dims)
            result.outcome = "unavailable"
        try:
            await rt.state.lost_blobs.add_lost(blob, f"{result.outcome}: {exc}")
        except StateError as error:
            # The message completes all the same: retried, the loss would only be found again.
            log.warning("Could not record the loss of content %s for the health row: %s", blob.content_id, error,
                        extra=dims)  # fmt: skip
        return result
    except TransientApiError as exc:
        if exc.retry_after is None and not exc.throttled:  # else the message is put off, which says so
            log.warning("Content %s could not be downloaded (attempt %d): %s", blob.content_id, dequeue_count, exc,
                        extra=dims)  # fmt: skip
        raise

    ref = ContentRef(blob.content_id, blob.content_type, blob.content_created)
    routing = Routing(settings.alerts_stream, settings.audit_stream, settings.alert_categories)
    parser_repairs: Counter[str] = Counter()
    try:
        # A large blob is parsed a segment at a time while it is normalized: its records never all exist.
        rows = normalize_blob(iter_blob(raw, parser_repairs), ref, routing, sent_at=datetime.now(UTC))
    except BadContentError as exc:
        if not exc.cut:
            return await _refuse_content(rt, text, blob, raw, exc, deadline)
        # Cut short: another download may bring it whole; a blob that stays cut ends in the poison queue.
        raise BadContentError(
            f"content {blob.content_id} ({len(raw)} bytes): {exc}; the message is retried", cut=True
        ) from None
    del raw
    rows.problems.update(parser_repairs)
    result.records, result.alerts = rows.records, rows.alerts
    result.duplicates_dropped = rows.duplicates_in_blob
    result.problems = dict(rows.problems)
    if rows.problems:
        log.warning(
            "Content %s had records that needed repair: %s",
            blob.content_id,
            "; ".join(f"{k}: {v}" for k, v in sorted(rows.problems.items())),
            extra=dims,
        )

    # Every stream finishes (and commits what it sent) before a failure goes back to the host: a retry
    # that starts while a sibling stream is still committing would send that stream's rows again. Records
    # another delivery holds are raised after any other failure: put off a minute for them, the message would
    # spend no try on that failure, nor wait a throttle's Retry-After. A refusal is raised last: the delivery is
    # then rescheduled, which a sibling's failure must not hide.
    finished = await asyncio.gather(
        *(
            _send_stream(rt, stream, stream_rows, blob.content_id, message_id, result, deadline)
            for stream, stream_rows in rows.rows.items()
        ),
        return_exceptions=True,
    )
    failures = [f for f in finished if isinstance(f, BaseException)]
    if failures:
        raise min(failures, key=lambda f: (isinstance(f, IngestionRefusedError), isinstance(f, BlobBusyError)))
    result.content_lag_seconds = time.time() - blob.content_created.timestamp()
    log.info(
        "Content %s (BlobRef %s): %d records, %d alerts, rows sent %s, %d duplicates dropped (attempt %d)",
        blob.content_id,
        dims["blob_ref"],
        result.records,
        result.alerts,
        result.rows_sent or "{}",
        result.duplicates_dropped,
        dequeue_count,
        extra={**dims, "records": result.records, "alerts": result.alerts},
    )
    return result


async def _refuse_content(
    rt: Runtime, text: str, blob: ContentBlob, raw: bytes, problem: BadContentError, deadline: Deadline
) -> ProcessResult:
    """A body that arrived whole but is not a JSON array: the API serves the same bytes every time, so no retry
    can help and the message is parked at once. A second download checks that first: a one-off answer from
    something on the way (an error page) is retried instead. Only its digest is kept, not a second body."""
    again = await rt.management.get_content(
        blob.content_uri, content_type=blob.content_type, read=body_digest, deadline=deadline
    )
    if again != hashlib.sha256(raw).digest():
        raise TransientApiError(
            "two downloads of the content gave different bodies; the message is retried",
            operation="content",
            content_type=blob.content_type,
        )
    reason = f"content {blob.content_id} ({len(raw)} bytes, the same in two downloads): {problem}"
    log.error(
        "Content message refused and moved to %s: %s",
        rt.settings.poison_queue,
        reason,
        extra={"outcome": "bad-content", "content_type": blob.content_type, "content_id": blob.content_id},
    )
    await rt.queue.put_poison(text)
    return ProcessResult(outcome="bad-content", content_id=blob.content_id, detail=f"BadContentError: {reason}")


async def _send_stream(
    rt: Runtime,
    stream: str,
    rows: list[Row],
    content_id: str,
    message_id: str,
    result: ProcessResult,
    deadline: Deadline,
) -> None:
    async with refusals.admitted(rt, stream):
        claims = rt.state.claims
        claim = await claims.claim_records(stream, rows, content_id, message_id)
        waited, pause = 0.0, HELD_FIRST_PAUSE
        while True:
            if claim.mine:
                await _upload(rt, stream, claim, result, deadline)
            if not claim.held:
                break
            # Another delivery holds some of these records. It may yet fail, so this message completes only
            # once they are sent (by it) or given up and sent from here.
            if waited >= HELD_WAIT or not deadline.allows(pause):
                raise BlobBusyError(
                    f"{len(claim.held)} records of content {content_id} are still claimed by another delivery "
                    f"after {waited:.0f}s"
                )
            if not waited:
                # A probe this delivery won ends here, with or without an answer: the deliveries beside it must
                # not wait for another delivery's records too.
                refusals.end_probe(rt, stream)
                log.info("Content %s: %d records are being sent by another delivery; waiting",
                         content_id, len(claim.held))  # fmt: skip
            await asyncio.sleep(pause)
            waited, pause = waited + pause, min(pause * 2, 8.0)
            await claims.claim_held(claim)
        result.duplicates_dropped += claim.already_sent
        result.claimed_elsewhere += claim.claimed_elsewhere


async def _upload(rt: Runtime, stream: str, claim: Claim, result: ProcessResult, deadline: Deadline) -> None:
    sent: list[Row] = []

    async def accepted(chunk: list[Row]) -> None:
        sent.extend(chunk)

    started = time.perf_counter()
    try:
        await rt.ingestor.upload(stream, claim.mine, on_sent=accepted, deadline=deadline)
    except BaseException as exc:
        # A cancel too (the command line's second Ctrl-C): left, the claim kept the rows that arrived
        # unmarked, and the message's next delivery, finding its own claim, sent them again.
        await carried_after(_settle_failed_upload(rt, stream, claim, sent, exc), lost=_UNSETTLED)
        refusals.end_probe(rt, stream)  # here: the cleanup ran as a task of its own, which holds no probe
        raise
    metrics.upload_duration.record(time.perf_counter() - started, {"stream": stream})
    try:
        # The rows arrived: committing them comes first (a crash after it sends nothing twice).
        await carried_through(rt.state.claims.mark_sent(claim), lost=_UNCOMMITTED)
    finally:
        # The stream took rows, whatever became of the commit: a refusal has ended, the deliveries waiting may go.
        with cleaning_up():
            await refusals.accepted(rt, stream)
        refusals.end_probe(rt, stream)
    result.rows_sent[stream] = result.rows_sent.get(stream, 0) + len(sent)


#: What a cleanup that failed leaves behind: after a whole upload, and after a failed or cancelled one (whose
#: storage failures are told before, by :func:`_settle_failed_upload`; what reaches this is anything else).
_UNCOMMITTED = "the rows that arrived are not marked sent: the message's next delivery sends them again"
_UNSETTLED = "rows that arrived may be left unmarked (sent again) and the claim held until it expires"


async def _settle_failed_upload(rt: Runtime, stream: str, claim: Claim, sent: list[Row], exc: BaseException) -> None:
    """Keep what did arrive from being sent again, and free the rest for the host's retry (both may use the
    invocation's margin, and so may recording the refusal). The upload's failure is the one raised, as it decides
    what becomes of the message (put off, rescheduled, retried); storage failing here as well costs the rows it
    could not mark, sent again."""
    if sent:
        try:
            await rt.state.claims.mark_sent(claim, sent)
        except StateError as unmarked:
            log.warning("Could not mark %d rows of %s sent after the upload failed; they are sent again: %s",
                        len(sent), stream, unmarked)  # fmt: skip
    await rt.state.claims.release(claim)
    if isinstance(exc, IngestionRefusedError):
        try:
            await refusals.refused(rt, exc)
        except StateError as unrecorded:
            log.warning("Could not record the refusal of %s (the next delivery refused does): %s", stream,
                        unrecorded)  # fmt: skip


#: A put-off message comes back this many seconds before its blob expires, and is put off at least
#: :data:`PUT_OFF_LEAST` seconds (so close to the end, asking early is its one chance).
PUT_OFF_EXPIRY_MARGIN = 300
PUT_OFF_LEAST = 60
#: A download or upload still throttled after a call's retries, with no wait named, comes back after the quota's
#: span; put off (for that, or for a wait named), up to this many times.
THROTTLED_PUT_OFF = 60
THROTTLED_PUT_OFFS = 30
#: A download refused because the content type's subscription is off comes back after this long: the poller starts
#: a missing subscription at most every 15 minutes (apis.md), on its next run.
SUBSCRIPTION_PUT_OFF = 20 * 60
#: How long a delivery waits for records another delivery holds before the message is put off for
#: :data:`HELD_PUT_OFF` (its tries spared): over its put-offs that outlasts any claim (CLAIM_TTL).
HELD_WAIT = 240.0
HELD_PUT_OFF = 60
#: The first pause; it doubles up to 8 s. Short, because the other delivery has usually finished by the time
#: this one's own rows are uploaded: a look costs a read per partition with held records, a pause only time.
HELD_FIRST_PAUSE = 0.25
