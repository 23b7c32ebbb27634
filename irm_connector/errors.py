"""Every exception the connector raises, and what the Management API's error codes mean.

The hierarchy, drawn once so that a reader sees at a glance what can go wrong::

    ConnectorError
    ├── SettingsError                 a setting is missing or malformed
    ├── UsageError                    a command line that cannot be carried out (the CLI)
    ├── AuthenticationError           no token could be obtained for a service
    │   └── NotInAzureError           managed identity asked for where there is none (not in Azure)
    ├── ManagementApiError            the Management Activity API answered with an error
    │   ├── OperatorActionError       only a person can fix it (permission, tenant, disabled subscription)
    │   ├── SubscriptionMissingError  AF20022: the content type has no subscription yet
    │   ├── InvalidWindowError        AF20030 / AF20055: the listing window was refused
    │   ├── InvalidPageError          AF20031: a NextPageUri token was refused, or it names a page listed already
    │   ├── ContentUnavailableError   AF20050 / AF20051 / AF20052: the blob is gone
    │   └── TransientApiError         throttling or a server fault that outlived the retries
    │       ├── ApiUnreachableError   no answer: the connection, its TLS or the name failed, or it timed out
    │       └── UnreadableAnswerError an answer not of the API's shape (not JSON...): a proxy's page, most often
    ├── UntrustedUrlError             a URL outside the configured API root and tenant
    ├── RefusedListingError           listed blobs with such a contentUri: their content type's run fails
    ├── BadMessageError               a queue message that is not a content notification
    ├── BadContentError               a content blob that is not a JSON array of records
    ├── BodyRoomError                 a blob body found no room within MAX_BLOB_MB_IN_FLIGHT after its downloads
    ├── IngestionError                the Logs Ingestion API refused rows, or could not be reached
    │   ├── IngestionThrottledError   429 past a call's retries: the message is put off
    │   └── IngestionRefusedError     401/403/404: the DCR refuses the stream (role, DCR or stream missing)
    ├── DeadlineError                 a wait or retry that the invocation's time left cannot hold
    ├── StateError                    Table Storage or the queue failed
    │   ├── StorageDeadlineError      a storage call cut short at the invocation's deadline (a DeadlineError too)
    │   ├── LeaseLostError            another poller took the content type's lease
    │   └── BlobBusyError             another delivery still holds claims on this blob's records
    ├── PollError                     a poller run or backfill in which a content type failed
    └── RedactedError                 stands in for an exception whose text had to be redacted

Every name ends in ``Error``. Every error's message names what was wrong and what to do; none carries
a token, a secret or record content, so they can be logged as they are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from .models import PollReport

__all__ = [
    "ApiUnreachableError",
    "AuthenticationError",
    "BadContentError",
    "BadMessageError",
    "BlobBusyError",
    "BodyRoomError",
    "ConnectorError",
    "ContentUnavailableError",
    "DeadlineError",
    "IngestionError",
    "IngestionRefusedError",
    "IngestionThrottledError",
    "InvalidPageError",
    "InvalidWindowError",
    "LeaseLostError",
    "ManagementApiError",
    "NotInAzureError",
    "OperatorActionError",
    "PollError",
    "RedactedError",
    "RefusedListingError",
    "SettingsError",
    "StateError",
    "StorageDeadlineError",
    "SubscriptionMissingError",
    "TransientApiError",
    "UnreadableAnswerError",
    "UntrustedUrlError",
    "UsageError",
    "management_api_error",
    "storage_error_code",
    "storage_reason",
]


class ConnectorError(Exception):
    """Base class of every error the connector raises on purpose."""


class SettingsError(ConnectorError):
    """A setting is missing or malformed; ``setting`` names it. When several are (settings are checked all at
    once), ``problems`` holds each ``(setting, problem)``; ``setting`` and ``problem`` are the first."""

    def __init__(self, setting: str, problem: str, *, more: Sequence[tuple[str, str]] = ()) -> None:
        self.problems = [(setting, problem), *more]
        super().__init__("; ".join(f"setting {name}: {text}" for name, text in self.problems))
        self.setting = setting
        self.problem = problem

    @classmethod
    def combine(cls, errors: Sequence[SettingsError]) -> SettingsError:
        """One error for every problem of ``errors`` (at least one), in order."""
        problems = [problem for error in errors for problem in error.problems]
        return cls(*problems[0], more=problems[1:])


class UsageError(ConnectorError):
    """A command line that cannot be carried out (the CLI exits 2)."""


class AuthenticationError(ConnectorError):
    """A token for ``audience`` could not be obtained (wrong secret, missing consent, no identity).

    ``transient`` is true when Entra ID itself failed (network, throttling, 5xx): a retry may cure it.
    """

    def __init__(self, audience: str, detail: str, *, transient: bool = False) -> None:
        super().__init__(f"could not get a token for {audience}: {detail}")
        self.audience = audience
        self.detail = detail
        self.transient = transient


class NotInAzureError(AuthenticationError):
    """Managed identity was asked for, but no managed identity endpoint exists here: the process does not
    run in Azure (a laptop, a build agent). Retrying cannot help; ``hint`` says what works instead."""

    def __init__(self, audience: str, detail: str, hint: str) -> None:
        super().__init__(audience, f"{detail}; {hint}")
        self.detail = detail
        self.hint = hint


class ManagementApiError(ConnectorError):
    """The Management Activity API answered with an error.

    ``status`` is the HTTP status (0 when no response came), ``code`` the ``AFxxxxx`` code of the
    body when there was one, ``operation`` what the connector was doing (``list``, ``content``,
    ``start``...), ``content_type`` the content type concerned, ``answered_at`` the service's time when the
    answer came (the API's ``Date``, or the storage clock for a wait kept without a request), if known: the clock
    the API's blobs expire by.
    """

    hint = "see the README's table \"Failures and what to do\""

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str = "",
        operation: str = "",
        content_type: str = "",
        answered_at: datetime | None = None,
    ) -> None:
        detail = ", ".join(
            part
            for part in (
                f"HTTP {status}" if status else "",
                code,
                f"operation {operation}" if operation else "",
                f"content type {content_type}" if content_type else "",
            )
            if part
        )
        super().__init__(f"{message} ({detail}); {self.hint}" if detail else f"{message}; {self.hint}")
        self.status = status
        self.code = code
        self.operation = operation
        self.content_type = content_type
        self.answered_at = answered_at


class OperatorActionError(ManagementApiError):
    """Only a person can fix this: grant ActivityFeed.Read, fix the tenant id, turn on auditing,
    re-enable a subscription an admin disabled. Retrying in a loop would not help."""

    hint = "an administrator must act; the README's table \"Failures and what to do\" says what to do for this code"


class SubscriptionMissingError(ManagementApiError):
    """AF20022: the content type has no subscription; the poller starts one and tries again later."""

    hint = "the poller starts the subscription itself (at most once per 15 minutes)"


class InvalidWindowError(ManagementApiError):
    """AF20030 / AF20055: the listing window was refused (clock skew or the 7-day limit)."""

    hint = (
        "the poller re-plans the window on its next run (a backfill: run it again); check the machine clock if "
        "this repeats"
    )


class InvalidPageError(ManagementApiError):
    """AF20031: a NextPageUri was refused, or it named a page already listed (a loop); the poller lists the whole
    window again, once."""

    hint = "the window is listed again from its start"


class ContentUnavailableError(ManagementApiError):
    """The content blob is gone (expired after 7 days, missing, or a bad id); it is skipped and counted."""

    hint = "the blob cannot be fetched any more; its records are lost to the API"

    @property
    def expired(self) -> bool:
        """The blob outlived the API's 7 days (AF20051), rather than being missing or a bad id."""
        return self.code == "AF20051"


_LATER_TRY = "a later try may pass (the Function host retries; on the command line, run it again)"


class TransientApiError(ManagementApiError):
    """Throttling, timeouts or server faults that outlived the connector's retries; the host retries
    the invocation later.

    ``retry_after`` is set when the API named a wait (``Retry-After``) longer than the connector waits within
    one call, or a throttle's wait outlasts what the invocation has left: the call gives up at once, and the
    caller puts the work off for that long instead.
    """

    hint = f"{_LATER_TRY}; if this persists check service health and the request budget"

    def __init__(self, message: str, *, retry_after: float | None = None, **where: Any) -> None:
        super().__init__(message, **where)
        self.retry_after = retry_after

    @property
    def throttled(self) -> bool:
        """The API throttled the call (429, or 403 ``AF429``), whether or not it named a wait."""
        return self.status == 429 or self.code == "AF429"


class ApiUnreachableError(TransientApiError):
    """No answer from the Management API: the connection, its TLS or the name failed, or the call timed out."""

    hint = (
        f"{_LATER_TRY}; if this persists check O365_API_ROOT (or O365_CLOUD), the network and proxy, and a proxy's "
        "CA (SSL_CERT_FILE)"
    )


class UnreadableAnswerError(TransientApiError):
    """An answer that is not of the API's shape: not JSON, not the array a listing is, an entry without its fields.
    Most often a page of something on the way (a proxy's block or login page, a captive portal) answering in the
    API's place; now and then a fault of the API's own, which the next run gets past."""

    #: what to check when it persists (the command line gives it as its hint)
    advice = "check the proxy on the way (its pages answer in the API's place) and O365_API_ROOT (or O365_CLOUD)"
    hint = f"{_LATER_TRY}; if this persists {advice}"


class BodyRoomError(ConnectorError):
    """A blob body found no room among the worker's blob bodies (``MAX_BLOB_MB_IN_FLIGHT``) after its downloads; the
    host retries the message."""


class UntrustedUrlError(ConnectorError):
    """A ``contentUri`` or ``NextPageUri`` that is not HTTPS under the configured API root and tenant.

    The connector never sends its bearer token to such a URL. Its text names the URL's origin and what is wrong
    with it, never its path or query: a message written by hand may hold anything there (``poison list`` shows it).
    """

    def __init__(self, what: str, url: str, reason: str, *, origin: str = "") -> None:
        where = f" on {origin}" if origin else ""
        super().__init__(
            f"refused {what}{where}: {reason}; the message may be forged or O365_API_ROOT misconfigured"
        )
        self.url = url
        self.reason = reason
        self.origin = origin


class RefusedListingError(ConnectorError):
    """The listing named blobs whose ``contentUri`` the URL check refuses. Usually every blob: the API lists
    them on its own host, and ``O365_API_ROOT`` or ``O365_CLOUD`` names another. The content type's run fails
    so the watermark stays and no blob is skipped in silence."""

    def __init__(self, content_type: str, refused: int, first: UntrustedUrlError) -> None:
        super().__init__(
            f"{refused} listed {content_type} blob(s) refused, not fetched (the first"
            f"{f', on {first.origin}' if first.origin else ''}: {first.reason}): the contentUri must be HTTPS under "
            "O365_API_ROOT and this tenant's feed. Check O365_API_ROOT and O365_CLOUD "
            "(the API lists blobs on its own host); the watermark stays until they can be fetched",
        )
        self.url = first.url
        self.refused = refused


class BadMessageError(ConnectorError):
    """A queue message that is not a content notification; it is moved to the poison queue."""


class BadContentError(ConnectorError):
    """The blob as a whole is not a JSON array of records.

    ``cut`` is true when the body stops before its array is complete, as a transfer cut short does: another
    download may bring it whole. Otherwise the body is whole but wrong, and the API serves the same bytes
    every time. ``problem`` says what is wrong, and ``byte`` or ``record`` (counted from 1) where in the body,
    when known."""

    def __init__(
        self, problem: str, *, cut: bool = False, byte: int | None = None, record: int | None = None
    ) -> None:
        self.problem, self.cut, self.byte, self.record = problem, cut, byte, record
        place = f" at byte {byte}" if byte is not None else f" in record {record}" if record is not None else ""
        super().__init__(problem + place)

    def moved(self, *, bytes_before: int, records_before: int) -> BadContentError:
        """This error, its place counted from a blob's start for one found in a piece of it (its text from
        ``bytes_before`` on, after ``records_before`` records)."""
        return BadContentError(
            self.problem,
            cut=self.cut,
            byte=None if self.byte is None else self.byte + bytes_before,
            record=None if self.record is None else self.record + records_before,
        )


class IngestionError(ConnectorError):
    """The Logs Ingestion API refused rows (``status``, ``code`` of its error body, ``stream``), or gave no
    answer (``status`` 0)."""

    def __init__(self, message: str, *, status: int = 0, code: str = "", stream: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.stream = stream


class IngestionThrottledError(IngestionError):
    """Logs Ingestion still throttled (429) after a call's retries: the DCR's limits (requests or bytes a
    minute) are spent, typically by a catch-up. ``retry_after``: the wait its last answer named, if any. The
    message is put off, as a throttled download is, rather than retried by the host into the poison queue."""

    def __init__(self, message: str, *, retry_after: float | None = None, **where: Any) -> None:
        super().__init__(message, **where)
        self.retry_after = retry_after


class IngestionRefusedError(IngestionError):
    """Logs Ingestion refuses a stream itself (401, 403, 404): the identity's role on the DCR is missing or still
    propagating, or the DCR or stream is gone. Retrying at once cannot help; the message is rescheduled."""


class DeadlineError(ConnectorError):
    """A wait or retry did not fit the invocation's time left: it fails before its function timeout, its claims
    released, and the host retries the message."""


class StateError(ConnectorError):
    """Table Storage or the storage queue failed; the invocation fails and the host retries it."""


class StorageDeadlineError(StateError, DeadlineError):
    """A Table Storage or queue call (a try, or a retry wait) did not fit the invocation's time left: cut short,
    it fails as any storage failure does, before the function timeout."""


class LeaseLostError(StateError):
    """Another poller took this content type's lease; this run stops for it."""


class BlobBusyError(StateError):
    """Another delivery (of this blob or another) still holds claims on records of this blob after the wait;
    the message is put off until they are sent, given up, or expired."""


class PollError(ConnectorError):
    """A poller run (or backfill) in which a content type failed; ``report`` holds what every content type
    did."""

    def __init__(self, message: str, report: PollReport, causes: Mapping[str, BaseException] | None = None) -> None:
        super().__init__(message)
        self.report = report
        #: per content type, the exception that failed it (where one did: a refused window has none)
        self.causes = dict(causes or {})


class RedactedError(ConnectorError):
    """Stands in for an exception whose text held a secret and could not be redacted in place (its ``str()``
    does not come from its arguments): the original's class name and its text, redacted."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(f"{kind}: {text}")
        self.kind = kind


# -- what the Management API's error codes mean ----------------------------------------------------------

_OPERATOR_CODES = {
    "AF10001": "the app lacks ActivityFeed.Read (or admin consent): grant it in Entra ID and consent",
    "AF20010": "the token's tenant is not O365_TENANT_ID: check O365_TENANT_ID and the app registration",
    "AF20011": "the tenant is unknown to the API: check O365_TENANT_ID and that unified audit logging is on",
    "AF20012": "the tenant is not set up for the API: turn on unified audit logging in Microsoft Purview",
    "AF20013": "O365_TENANT_ID is not a valid tenant GUID",
    "AF20020": "the content type is not valid: check O365_CONTENT_TYPES",
    "AF20021": "the webhook is not validated",
    "AF20023": "an administrator disabled the subscription for this content type: the poller asks to start it "
    "once an hour, and content flows again once that is allowed (irm-connector subscriptions start asks at once)",
}
_CONTENT_GONE = {"AF20050", "AF20051", "AF20052"}


#: The longest error code quoted: the services' own are a few dozen characters at most.
CODE_LIMIT = 64


def quoted_text(value: object, limit: int) -> str:
    """A service's words as a log line, ``LastError`` or an exception may quote them: one line of printable text,
    at most ``limit`` characters. A proxy's or gateway's answer (or a forged one) could otherwise start a line that
    reads like the connector's, or fill one with tens of kilobytes."""
    text = " ".join("".join(c if c.isprintable() else " " for c in str(value)).split())
    return text[:limit]


def storage_error_code(exc: BaseException) -> str:
    """:func:`_storage_error_code`, bounded (:func:`quoted_text`): a proxy's header could be anything."""
    return quoted_text(_storage_error_code(exc), CODE_LIMIT)


def _storage_error_code(exc: BaseException) -> str:
    """The storage service's error code of a failed call (``""`` when it sent none); the queue SDK gives it as an
    enum, whose ``str()`` is its Python name, not the code. The tables SDK leaves it out of some errors (an entity
    written to a table that is gone): then it is the answer's ``x-ms-error-code``, or its OData error body's."""
    code = getattr(exc, "error_code", None)
    if code:
        return str(getattr(code, "value", code))
    response = getattr(exc, "response", None)
    if response is None:
        return ""
    header = response.headers.get("x-ms-error-code")
    if header:
        return str(header)
    try:
        body = json.loads(response.text())
        return str(body["odata.error"]["code"])
    except Exception:  # no body, not JSON, another shape: no code to give
        return ""


def storage_reason(exc: BaseException) -> str:
    """What went wrong with a storage call, without anything of the request: the class and the service's code,
    else the HTTP status."""
    code = storage_error_code(exc) or getattr(exc, "status_code", None)
    return f"{type(exc).__name__}{f' ({code})' if code else ''}"


def management_api_error(status: int, code: str, message: str, operation: str, content_type: str) -> ManagementApiError:
    """The error an answer that is neither success nor retryable means (see ``apis.md``'s code table)."""
    kwargs: dict[str, Any] = {"status": status, "code": code, "operation": operation, "content_type": content_type}
    if code in _OPERATOR_CODES:
        return OperatorActionError(_OPERATOR_CODES[code], **kwargs)
    if code == "AF20022":
        return SubscriptionMissingError("no subscription for the content type", **kwargs)
    if code in ("AF20030", "AF20055"):
        return InvalidWindowError(f"the API refused the listing window: {message}", **kwargs)
    if code == "AF20031":
        return InvalidPageError("the API refused the NextPageUri", **kwargs)
    # Gone only by the API's word: a bare 404 (a gateway's, a proxy's) taken for it lost records the API still keeps.
    if code in _CONTENT_GONE:
        return ContentUnavailableError(f"content is not available: {message or 'not found'}", **kwargs)
    if status in (401, 403):
        return OperatorActionError(
            "the API refused the token: check ActivityFeed.Read, admin consent, and O365_TENANT_ID", **kwargs
        )
    return ManagementApiError(f"unexpected answer: {message or 'no error body'}", **kwargs)
