"""Reading the Management API's answers: ``Retry-After`` (Logs Ingestion's too), the ``{"error": {"code",
"message"}}`` body, and JSON bodies (a body that is not JSON is a transient fault: the API sometimes answers
with an HTML error page)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from .errors import CODE_LIMIT, UnreadableAnswerError, quoted_text

__all__ = ["MAX_RETRY_AFTER", "error_of", "finite_wait", "json_of", "retry_after_of"]

#: The longest ``Retry-After`` honoured beyond one call (the poller's runs skip the content type, a download is put
#: off): a longer one, or a wrong one (a proxy's, a date gone wrong), would stop listing or bring a message back
#: after its blob expired, and the API keeps content 7 days only. One request an hour costs nothing.
MAX_RETRY_AFTER = timedelta(hours=1)


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from delay-seconds or an HTTP date (RFC 9110); None when absent or not one of those. The
    headers are looked up case-insensitively, as aiohttp's and azure-core's are. A
    number that is not finite ("inf", "1e999", "nan": only a broken server or proxy sends one) is not a wait
    either, and would break the arithmetic of whoever waits on it; a finite one beyond :data:`MAX_RETRY_AFTER`
    (10^15 seconds would overflow a ``timedelta``) is held to it, as every caller holds it."""
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            # By the answer's own Date, as the server meant it: this machine's clock may be minutes off.
            said = parsedate_to_datetime(value)
            # "-0000" or no zone gives a naive time, UTC by RFC 5322: compared with the aware Date it raised, and the
            # wait was read as none (a throttle's quick tries, each counted against the tenant's quota).
            said = said if said.tzinfo is not None else said.replace(tzinfo=UTC)
            seconds = (said - (_date_of(headers) or datetime.now(UTC))).total_seconds()
        except (TypeError, ValueError):
            return None
    return finite_wait(seconds)


def finite_wait(seconds: float) -> float | None:
    """A wait as every caller holds it: none for a number that is not finite, a negative one nothing, a longer one
    :data:`MAX_RETRY_AFTER`."""
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER.total_seconds())


def _date_of(headers: Mapping[str, str]) -> datetime | None:
    try:
        said = parsedate_to_datetime(headers.get("Date", ""))
    except (TypeError, ValueError):
        return None
    return said if said.tzinfo is not None else said.replace(tzinfo=UTC)


def error_of(body: bytes) -> tuple[str, str]:
    """``(code, message)`` of an ``{"error":{"code","message"}}`` body; empty strings when absent."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "", ""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return "", ""
    code = error.get("code")
    message = error.get("message")
    return (quoted_text(code, CODE_LIMIT) if code else "", quoted_text(message, 300) if message else "")


def json_of(body: bytes, operation: str, content_type: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UnreadableAnswerError(
            "the API answered with a body that is not JSON", operation=operation, content_type=content_type
        ) from None
