"""Reading the Management Activity API's answers: the ``Retry-After`` header, the ``{"error":{"code","message"}}``
body, and JSON bodies. Kept apart from :mod:`.management_api`, which decides what to do with them."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import orjson
from multidict import CIMultiDictProxy

from .errors import TransientApiError

__all__ = ["error_fields", "json_body", "retry_after"]


def retry_after(headers: CIMultiDictProxy[str]) -> float | None:
    """Seconds the ``Retry-After`` header asks for (a number or an HTTP date); ``None`` without one."""
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            return (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None


def error_fields(body: bytes) -> tuple[str, str]:
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
    return (str(code) if code else "", str(message)[:300] if message else "")


def json_body(body: bytes, operation: str, content_type: str) -> Any:
    """The answer's JSON; a body that is not JSON is a transient fault (an error page from something on the way)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise TransientApiError(
            "the API answered with a body that is not JSON", operation=operation, content_type=content_type
        ) from None
