"""What each trigger does: read the settings, get the process's clients, run the poller or the processor.

``function_app.py`` binds these to the Functions triggers; the CLI, the demo and the tests call the
same code.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import azure.functions as func

from . import telemetry
from .content_queue import Delivery
from .deadline import Deadline, cleaning_up
from .errors import ConnectorError, PollError, SettingsError, StateError
from .metrics import record_failure, record_poll, record_process
from .models import PollReport, ProcessResult
from .poller import run_poller
from .processor import process_message
from .redaction import redact, redact_exception
from .runtime import Runtime, get_runtime
from .settings import Settings
from .state import describe, message_key

__all__ = ["poll", "process"]

log = logging.getLogger("irm_connector")

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _for_the_host(handler: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
    """What a handler raises goes to the Functions host, which logs its text and traceback where the logging
    filter does not reach: redact it, and every exception it chains, first."""

    @functools.wraps(handler)
    async def run(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await handler(*args, **kwargs)
        except Exception as exc:
            failure = redact_exception(exc)
        # Raised outside the except block, so Python does not chain the unredacted original to a stand-in.
        raise failure

    return run


async def _runtime(settings: Settings) -> Runtime:
    """The process's clients. A failure to build them fails every invocation, and as deployed (OpenTelemetry on
    in the worker) the host sends Application Insights no line of its own for a failed one: it is logged here."""
    try:
        return await get_runtime(settings)
    except ConnectorError as exc:  # a certificate that does not load, a storage setting the SDK refuses
        log.error("The connector could not start: %s", exc)
        raise
    except Exception:
        log.exception("The connector could not start")
        raise


def _settings() -> Settings:
    telemetry.configure()  # first invocation only; a no-op without APPLICATIONINSIGHTS_CONNECTION_STRING
    try:
        return Settings.from_env()
    except SettingsError as exc:
        log.error("Configuration error: %s", exc)
        raise


@_for_the_host
async def poll(timer: func.TimerRequest) -> PollReport:
    """Timer trigger: one poller run."""
    settings = _settings()
    if timer.past_due:
        log.info("Poller timer is past due; the watermark catches up whatever was missed")
    rt = await _runtime(settings)
    try:
        report = await run_poller(rt)
    except PollError as exc:
        record_poll(exc.report, settings.tenant_id)
        raise
    record_poll(report, settings.tenant_id)
    log.info(
        "Poller run: %d blobs queued (%s)",
        report.blobs_queued,
        ", ".join(f"{r.content_type}: {r.blobs_queued} queued, watermark {r.watermark}" for r in report.content_types),
    )
    return report


@_for_the_host
async def process(message: func.QueueMessage) -> ProcessResult:
    """Queue trigger: one content blob."""
    deadline = Deadline.for_invocation()  # the host's clock for the timeout starts about now
    with deadline.applied():  # recording the failure too ends before the timeout
        return await _process(message, deadline)


async def _process(message: func.QueueMessage, deadline: Deadline) -> ProcessResult:
    dequeue_count = message.dequeue_count or 1
    delivery = Delivery.decode(message.get_body())
    dims: dict[str, str] = {}
    if delivery.message is not None:
        blob = delivery.message.blob
        dims |= {"content_type": blob.content_type, "content_id": blob.content_id}
    try:
        settings = _settings()
        rt = await _runtime(settings)
    except Exception:
        # Settings or a credential that cannot load fail every message: the failures chart must show it.
        record_failure(dims)
        raise
    dims = {"tenant_id": settings.tenant_id, **dims}
    # The poller's span for this blob is the parent: one trace from listing to ingestion.
    parent = delivery.message.traceparent if delivery.message is not None else ""
    failure: BaseException | None = None
    with telemetry.consumer_span("irm.process_blob", parent, dims) as span:
        try:
            result = await process_message(
                rt, delivery, dequeue_count=dequeue_count, message_id=message.id or "", deadline=deadline
            )
        except Exception as exc:
            failure = redact_exception(exc)
            record_failure(dims)
            telemetry.record_failure(span, failure)
            await _record_failure(rt, delivery, describe(failure), dequeue_count)
        else:
            span.set_attribute("outcome", result.outcome)
    if failure is not None:
        raise failure  # outside the span, which would record it again, and outside the except block
    record_process(result, dims)
    if result.parked or result.outcome == "rescheduled":
        await _record_failure(rt, delivery, result.detail, dequeue_count)
    elif dequeue_count > 1 or (delivery.message is not None and delivery.message.rescheduled):
        await _forget_failure(rt, delivery)  # an earlier attempt failed (or was rescheduled); this one did not
    return result


async def _record_failure(rt: Runtime, delivery: Delivery, reason: str, attempts: int) -> None:
    """Remember why the message failed, for ``irm-connector poison list``; never fails the invocation."""
    try:
        with cleaning_up():
            await rt.state.failures.upsert_failure(delivery, redact(reason), attempts=attempts)
    except StateError as error:
        log.warning("Could not record the failure reason: %s", error)


async def _forget_failure(rt: Runtime, delivery: Delivery) -> None:
    try:
        with cleaning_up():
            await rt.state.failures.delete_failure(message_key(delivery))
    except StateError as error:
        log.debug("Could not forget the failure reason: %s", error)
