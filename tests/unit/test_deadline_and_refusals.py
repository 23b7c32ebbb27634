"""The invocation's deadline (issue 13, contract 3) and the refusal state's arithmetic (contract 4)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from irm_connector._bounded import BoundedTransport, within
from irm_connector.content_queue import ContentMessage
from irm_connector.deadline import (
    TIMEOUT_SETTING,
    Deadline,
    carried_after,
    carried_through,
    cleaning_up,
    current_deadline,
    function_timeout,
)
from irm_connector.errors import DeadlineError, StateError, StorageDeadlineError
from irm_connector.models import ContentBlob
from irm_connector.refusals import PATIENCE, fix_text, ingestion_state, reschedule_delay
from irm_connector.state import FUNCTION_TIMEOUT, Refusal


def test_the_function_timeout_is_host_json_s_unless_the_app_setting_overrides_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(TIMEOUT_SETTING, raising=False)
    assert function_timeout() == FUNCTION_TIMEOUT.total_seconds()
    monkeypatch.setenv(TIMEOUT_SETTING, "00:00:30")
    assert function_timeout() == 30


def test_the_function_timeout_override_is_read_as_the_host_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's configuration matches a setting's name in any case and reads ``hh:mm`` as a timespan: under
    the one spelling the invocations' deadlines kept host.json's 10 minutes while the host stopped them at 2, and
    ``00:05`` failed every invocation as no timespan."""
    monkeypatch.delenv(TIMEOUT_SETTING, raising=False)
    monkeypatch.setenv("AzureFunctionsJobHost__FunctionTimeout", "00:02:00")
    assert function_timeout() == 120
    monkeypatch.setenv("AzureFunctionsJobHost__FunctionTimeout", "00:05")
    assert function_timeout() == 300


def test_a_deadline_keeps_a_margin_and_refuses_waits_it_cannot_hold() -> None:
    deadline = Deadline.for_invocation(600)
    assert deadline.margin == 60  # a tenth, at most 60 s
    assert 539 < deadline.usable() <= 540
    assert deadline.allows(120) and not deadline.allows(600)
    assert deadline.cap(60) == 60
    assert Deadline.for_invocation(30).margin == 3
    spent = Deadline.for_invocation(0)
    with pytest.raises(DeadlineError, match="time is up"):
        spent.check("upload")


async def test_a_storage_call_ends_at_the_deadline_and_cleaning_up_may_use_the_margin() -> None:
    deadline = Deadline(time.monotonic() + 1.0, margin=0.5)
    with deadline.applied():
        with pytest.raises(StorageDeadlineError, match="a read: cut short") as cut:
            await within("a read", asyncio.sleep(30))
        assert time.monotonic() < deadline.end  # it ended before the timeout, with the margin left
        assert isinstance(cut.value, StateError) and isinstance(cut.value, DeadlineError)
        with pytest.raises(StorageDeadlineError):
            await within("another read", asyncio.sleep(0))  # no time is usable any more: not even started
        with cleaning_up():  # releasing claims, committing what was sent: inside the margin
            assert await within("a release", asyncio.sleep(0.05, "released")) == "released"
    assert current_deadline() is None
    assert await within("outside an invocation", asyncio.sleep(0, "unbounded")) == "unbounded"


async def test_a_storage_retry_wait_the_time_left_cannot_hold_is_not_started() -> None:
    transport = BoundedTransport()
    try:
        with Deadline.for_invocation(3).applied():  # 2.7 s usable
            with pytest.raises(StorageDeadlineError, match=r"retrying storage call .*waiting 5 s more does not fit"):
                await transport.sleep(5)
            await transport.sleep(0.01)
    finally:
        await transport.close()


def _refusal(status: int, age: timedelta, now: datetime) -> Refusal:
    return Refusal("Custom-IRMAlerts", status, "", now - age, now)


def test_ingestion_state_names_the_oldest_refusal() -> None:
    now = datetime(2026, 7, 1, 12, 0, 0, tzinfo=UTC)
    assert ingestion_state([]) == "ok"
    refusals = [_refusal(404, timedelta(minutes=1), now), _refusal(403, timedelta(minutes=5), now)]
    assert ingestion_state(refusals) == "refused: 403 since 2026-07-01T11:55:00Z"


def test_rescheduled_messages_come_back_soon_at_first_and_seldom_later() -> None:
    now = datetime.now(UTC)
    assert reschedule_delay(_refusal(403, timedelta(0), now), now) == 5
    assert reschedule_delay(_refusal(403, timedelta(minutes=2), now), now) == 30
    assert reschedule_delay(_refusal(403, PATIENCE, now), now) == 300


@pytest.mark.parametrize(("written", "read"), [(None, 0), (2, 2), ("2", 0), (True, 0), (-1, 0), (1.5, 0)])
@pytest.mark.parametrize(("key", "field"), [("rescheduled", "rescheduled"), ("putOffs", "put_offs")])
def test_a_rescheduled_message_says_so_and_anything_else_there_reads_as_never(
    written: object, read: int, key: str, field: str
) -> None:
    """The processor forgets a message's failure reason once a rescheduled copy of it goes through, and counts
    its put-offs for throttling; a value written by hand must not make the message unreadable."""
    now = datetime.now(UTC)
    blob = ContentBlob("Audit.General", "c1", "https://manage.office.com/c1", now, now + timedelta(days=7))
    data = orjson.loads(ContentMessage("tenant", blob, rescheduled=2, put_offs=2).encode())
    assert data[key] == 2
    del data[key]
    if written is not None:
        data[key] = written
    message = ContentMessage.decode(orjson.dumps(data))
    assert getattr(message, field) == read and message.blob == blob


@pytest.mark.parametrize(
    ("status", "fix", "wrong"),
    [
        (401, "the token was refused: check AZURE_CLIENT_ID (the function app's identity) and that AZURE_CLOUD",
         "Metrics Publisher"),
        (403, 'give the function app\'s identity the "Monitoring Metrics Publisher" role on', "AZURE_CLOUD"),
        (404, "no such rule or stream: check LOGS_DCR_IMMUTABLE_ID and LOGS_INGESTION_ENDPOINT", "Metrics Publisher"),
    ],
)
def test_the_refusal_line_gives_the_fix_its_status_calls_for(
    status: int, fix: str, wrong: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error line operators alert on: a role does not mend a refused token (401) or a rule that is not
    there (404)."""
    monkeypatch.setenv("IDENTITY_ENDPOINT", "http://localhost:42356/msi/token")  # in the function app
    line = fix_text("dcr-1", "Custom-IRMAlerts", status, "", datetime(2026, 12, 3, tzinfo=UTC))
    assert f"(HTTP {status}) since 2026-12-03T00:00:00Z. Fix: {fix}" in line and wrong not in line


def test_off_azure_the_missing_role_is_the_operators_own(clean_environment: None) -> None:
    """`process` from a laptop sends as the operator's `az login` identity: that one lacks the role. (Off Azure:
    no identity endpoint in the environment, as a build agent on Azure or AKS would have.)"""
    line = fix_text("dcr-1", "Custom-IRMAlerts", 403, "", datetime(2026, 12, 3, tzinfo=UTC))
    assert 'Fix: give the identity this runs as (`az login`; the function app\'s identity needs it too) the ' in line


async def _cleanup(done: list[str], *, fail: BaseException | None = None, seconds: float = 0.05) -> str:
    # What a cleanup sees of the deadline: the margin (cleaning_up), not the work's.
    deadline = current_deadline()
    done.append("in the margin" if deadline is not None and deadline.cleanup else "not in the margin")
    await asyncio.sleep(seconds)
    if fail is not None:
        raise fail
    done.append("finished")
    return "marked"


async def test_a_cleanup_carried_through_a_cancel_finishes_in_the_margin_and_the_cancel_follows() -> None:
    """The command line's second Ctrl-C while rows are marked sent: cut, the marks were lost and the rows sent
    again. The cleanup finishes, with the margin the invocation kept for it, and the cancel is raised after it."""
    done: list[str] = []
    with Deadline(time.monotonic() + 60, margin=6).applied():
        task = asyncio.ensure_future(carried_through(_cleanup(done, seconds=0.3), lost="rows sent again"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert done == ["in the margin", "finished"]
    assert await carried_through(_cleanup([]), lost="rows sent again") == "marked"  # no cancel: its result


async def test_a_cleanup_that_fails_after_a_cancel_is_one_warning_and_the_cancel_is_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing = StateError("writing to irmrec20261208 failed: HttpResponseError (AuthorizationPermissionMismatch)")
    task = asyncio.ensure_future(carried_through(_cleanup([], fail=failing, seconds=0.3), lost="rows sent again"))
    await asyncio.sleep(0.05)
    task.cancel()
    with caplog.at_level(logging.WARNING, logger="irm_connector"), pytest.raises(asyncio.CancelledError):
        await task
    [told] = caplog.records
    assert told.levelno == logging.WARNING and "(StateError: writing to irmrec20261208" in told.getMessage()
    assert told.getMessage().endswith(": rows sent again")
    with pytest.raises(StateError):  # with no cancel, the failure is the caller's
        await carried_through(_cleanup([], fail=failing), lost="rows sent again")


async def test_a_cleanup_after_a_failure_never_replaces_it_and_a_fault_of_the_code_keeps_its_stack(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a throttled upload, what decides the message's fate is the throttle: a cleanup's storage failure is a
    warning, and a fault of the code an error with its stack, where it used to be raised in the throttle's place."""
    with caplog.at_level(logging.WARNING, logger="irm_connector"):
        await carried_after(_cleanup([], fail=StateError("the table is gone")), lost="rows sent again")
        await carried_after(_cleanup([], fail=KeyError("Id")), lost="rows sent again")
        done: list[str] = []
        await carried_after(_cleanup(done), lost="rows sent again")
    storage, fault = caplog.records
    assert storage.levelno == logging.WARNING and "StateError: the table is gone" in storage.getMessage()
    assert fault.levelno == logging.ERROR and fault.exc_info is not None and fault.exc_info[0] is KeyError
    assert done == ["not in the margin", "finished"]  # outside any deadline, cleaning_up is a no-op
    # A second cancel while it runs: carried through, told once, and the cancel goes on.
    task = asyncio.ensure_future(carried_after(_cleanup([], fail=StateError("gone"), seconds=0.3), lost="x"))
    await asyncio.sleep(0.05)
    task.cancel()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="irm_connector"), pytest.raises(asyncio.CancelledError):
        await task
    assert len(caplog.records) == 1
