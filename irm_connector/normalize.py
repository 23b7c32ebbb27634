"""Turning a content blob into output rows: pure, no I/O.

A blob is a JSON array of audit records. Each record becomes at most one row per stream: the alerts
stream for RecordType 40 alerts of the configured categories, and, when it is on, the audit stream for
every record. Rows are serialized here, once, so the ingestion step only packs bytes.

Nothing in a blob stops the rest of it: a record that is not an object is counted and skipped; a record
without ``Id`` gets a stable synthetic one; an unreadable ``CreationTime`` falls back to the blob's
``contentCreated``; a value too large for Azure Monitor is cut to fit and counted. The counts come back
in :class:`BlobRows` so the caller can log one line per blob, without record content.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from .schema import stream_schema

__all__ = [
    "FIELD_LIMIT",
    "REQUEST_LIMIT",
    "ROW_LIMIT",
    "BadContentError",
    "BlobRows",
    "ContentRef",
    "Routing",
    "Row",
    "extract_upn",
    "iter_blob",
    "normalize_blob",
    "parse_blob",
]

#: Azure Monitor truncates a value above 64 KB; cap below it, leaving room for JSON escaping.
FIELD_LIMIT = 64 * 1024 - 256
#: The Logs Ingestion API refuses a request body above 1 MiB (compressed or not).
REQUEST_LIMIT = 1024 * 1024
#: A row must fit in one request with room for the array around it.
ROW_LIMIT = REQUEST_LIMIT - 8192

UPN_KEYS = ("userPrincipalName", "UserPrincipalName", "upn", "Upn", "UPN", "f3u")
ALERT_RECORD_TYPE = 40
_SYNTHETIC_ID_NAMESPACE = uuid.UUID("5b1f0c3e-1d0e-4f7e-9a57-3c6a2a8d9f10")
_CREATION = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d{1,7})?(Z|[+-]00:00)?")

# Fields copied as they are, straight from columns.json so a column added there is filled here.
_ALERT_TEXT = stream_schema("alerts").copied("string")
_AUDIT_TEXT = stream_schema("audit").copied("string")
_AUDIT_INTS = tuple(n for n in stream_schema("audit").copied("int") if n != "RecordType")


class BadContentError(ValueError):
    """The blob as a whole is not a JSON array of records."""


@dataclass(frozen=True)
class ContentRef:
    """The blob the records came from."""

    content_id: str
    content_type: str
    content_created: datetime


@dataclass(frozen=True)
class Routing:
    """Where records go: the alerts stream, and the audit stream when it is on (empty = off)."""

    alerts_stream: str
    audit_stream: str = ""
    alert_categories: frozenset[str] = frozenset({"InsiderRiskManagement"})

    def is_alert(self, record: dict[str, Any], record_type: int | None) -> bool:
        if record_type != ALERT_RECORD_TYPE:
            return False
        return "*" in self.alert_categories or record.get("Category") in self.alert_categories


@dataclass(slots=True)
class Row:
    """One serialized output row and the keys its dedupe marker lives under."""

    record_id: str
    #: ``YYYYMMDDHH`` of the record's CreationTime: duplicates of a record share it.
    hour: str
    body: bytes


@dataclass
class BlobRows:
    """The rows of one blob per stream name, and what was noticed on the way."""

    rows: dict[str, list[Row]] = field(default_factory=dict)
    records: int = 0
    alerts: int = 0
    duplicates_in_blob: int = 0
    #: problem -> count, e.g. ``{"missing Id": 2, "value cut to 64 KB": 1}``.
    problems: Counter[str] = field(default_factory=Counter)

    def total_rows(self) -> int:
        return sum(len(r) for r in self.rows.values())


def parse_blob(body: bytes | bytearray) -> list[Any]:
    """Parse a blob body; raises :class:`BadContentError` when it is not a JSON array."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson refuses unpaired surrogates that the service can emit inside \\u escapes;
        # the standard library reads them and the writer below replaces them.
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise BadContentError(f"content is not JSON ({type(exc).__name__} at byte {_pos(exc)})") from None
    if not isinstance(data, list):
        raise BadContentError(f"content is JSON but not an array (a {type(data).__name__})")
    return data


#: A blob larger than twice this is parsed a segment of about this size at a time (see :func:`iter_blob`).
SEGMENT_BYTES = 4 * 1024 * 1024
#: Where one record may end and the next begin: ``}`` ``,`` ``{`` at the array's top level (or not: see below).
_BOUNDARY = re.compile(rb"\}\s*,\s*\{")
_MAX_TRIES = 16


def iter_blob(body: bytes | bytearray) -> Iterator[Any]:
    """The records of a blob, parsed a segment at a time so a large blob's records never all exist at once
    (a 50 MB blob is about 120,000 records: some 300 MB as Python objects). Same result and errors as
    :func:`parse_blob`, which small blobs go straight to; an error may surface after earlier records.

    A segment runs from the start of one record to a ``},{`` about :data:`SEGMENT_BYTES` further on. Such a
    place can also lie inside a string or a nested array; then ``[`` + segment + ``]`` is not valid JSON
    (an open string, or brackets left open), so the parse fails and the next candidate is tried. A segment
    that parses ends exactly where a top-level record does."""
    if len(body) <= 2 * SEGMENT_BYTES:
        yield from parse_blob(body)
        return
    start = len(body) - len(body.lstrip())
    if body[start : start + 1] != b"[":
        yield from parse_blob(body)  # raises with the usual message
        return
    pos = start + 1
    while len(body) - pos > 2 * SEGMENT_BYTES:
        search_from = pos + SEGMENT_BYTES
        parsed: list[Any] | None = None
        for _ in range(_MAX_TRIES):
            match = _BOUNDARY.search(body, search_from)
            if match is None:
                break
            try:
                parsed = orjson.loads(b"[" + body[pos : match.start() + 1] + b"]")
            except orjson.JSONDecodeError:
                search_from = match.start() + 1
                continue
            pos = match.end() - 1  # the next record's "{"
            break
        if parsed is None:
            break  # no boundary that parses (or text orjson refuses): the rest in one piece
        yield from parsed
        del parsed
    yield from parse_blob(b"[" + body[pos:])


def _pos(exc: BaseException) -> int:
    return int(getattr(exc, "pos", -1) or -1)


def normalize_blob(records: Iterable[Any], ref: ContentRef, routing: Routing) -> BlobRows:
    """Build the rows of every stream from the parsed records of one blob."""
    out = BlobRows()
    alerts: list[Row] = []
    audit: list[Row] = []
    seen: set[str] = set()
    fallback_time = ref.content_created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    fallback_hour = ref.content_created.astimezone(UTC).strftime("%Y%m%d%H")
    problems = out.problems
    audit_on = bool(routing.audit_stream)
    for record in records:
        out.records += 1
        if not isinstance(record, dict):
            problems["record is not a JSON object"] += 1
            continue
        record_id = record.get("Id")
        if not isinstance(record_id, str) or not record_id:
            record_id = _synthetic_id(record)
            problems["record without Id (synthetic Id used)"] += 1
        if record_id in seen:
            out.duplicates_in_blob += 1
            continue
        seen.add(record_id)

        raw_type = record.get("RecordType")
        record_type = raw_type if type(raw_type) is int and -(2**31) <= raw_type < 2**31 else _as_int(raw_type)
        if record_type is None and raw_type is not None:
            problems["RecordType is not a whole number"] += 1
        elif record_type is not None and type(raw_type) is not int:
            problems["RecordType given as text (read as a number)"] += 1
        is_alert = routing.is_alert(record, record_type)
        if not is_alert and not audit_on:
            continue  # alerts only: a record that is not one costs no more than this

        time_text, hour = _creation_time(record.get("CreationTime"))
        if time_text is None:
            time_text, hour = fallback_time, fallback_hour
            problems["missing or unreadable CreationTime (contentCreated used)"] += 1

        if is_alert:
            out.alerts += 1
            alerts.append(Row(record_id, hour, _alert_row(record, record_id, record_type, time_text, ref, problems)))
        if audit_on:
            audit.append(Row(record_id, hour, _audit_row(record, record_id, record_type, time_text, ref, problems)))

    if alerts:
        out.rows[routing.alerts_stream] = alerts
    if audit:
        out.rows[routing.audit_stream] = audit
    return out


def extract_upn(data: Any) -> str:
    """The user principal name inside an alert's parsed ``Data``; empty when absent."""
    if isinstance(data, dict):
        for key in UPN_KEYS:
            value = data.get(key)
            if isinstance(value, str) and value:
                return value
    return ""


def _synthetic_id(record: dict[str, Any]) -> str:
    # Stable across blobs, so a duplicated record without Id still dedupes.
    return str(uuid.uuid5(_SYNTHETIC_ID_NAMESPACE, _dumps(record, sort=True).decode()))


#: ``YYYY-MM-DDTHH`` -> ``YYYYMMDDHH`` for the hours already checked to be real dates (a blob's records
#: share a few hours: the regex and the date check then run once per hour, not once per record).
_HOURS: dict[str, str] = {}


def _creation_time(value: Any) -> tuple[str | None, str]:
    """``(TimeGenerated text, YYYYMMDDHH)``; ``(None, "")`` when unreadable. The API's times carry no
    zone and are UTC."""
    if not isinstance(value, str):
        return None, ""
    # The API's own shape, ``2026-06-29T20:03:19``: check the hour once, minutes and seconds here.
    if len(value) == 19 and value[13] == ":" and value[16] == ":":
        hour_key = _HOURS.get(value[:13])
        minute, second = value[14:16], value[17:19]
        if hour_key is not None and minute.isdigit() and second.isdigit() and minute < "60" and second < "60":
            return value + "Z", hour_key
    match = _CREATION.fullmatch(value.strip())
    if match is None:
        return None, ""
    year, month, day, hour, minute, second, fraction, _ = match.groups()
    try:
        datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    except ValueError:
        return None, ""
    text = f"{year}-{month}-{day}T{hour}:{minute}:{second}{fraction or ''}Z"
    hour_key = f"{year}{month}{day}{hour}"
    if len(_HOURS) > 4096:
        _HOURS.clear()
    _HOURS[f"{year}-{month}-{day}T{hour}"] = hour_key
    return text, hour_key


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -(2**31) <= value < 2**31 else None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return _as_int(int(value))
    if isinstance(value, float) and value.is_integer():
        return _as_int(int(value))
    return None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    return _dumps(value).decode("utf-8")


def _parse_data(value: Any, problems: Counter[str]) -> Any:
    """``Data`` is documented as a JSON string; parse it, keep the raw string when it does not parse."""
    if not isinstance(value, str) or not value:
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        problems["Data is not JSON (kept as text)"] += 1
        return value


def _alert_row(
    record: dict[str, Any],
    record_id: str,
    record_type: int | None,
    time_text: str,
    ref: ContentRef,
    problems: Counter[str],
) -> bytes:
    row: dict[str, Any] = {"TimeGenerated": time_text, "CreationTime": time_text, "RecordId": record_id}
    for name in _ALERT_TEXT:
        value = _text(record.get(name))
        if value is not None:
            row[name] = value
    row["RecordType"] = record_type
    data = _parse_data(record.get("Data"), problems)
    row["UserPrincipalName"] = extract_upn(data)
    if data is not None:
        row["Data"] = data
    row["ContentId"] = ref.content_id
    row["ContentType"] = ref.content_type
    return _serialize(row, problems)


def _audit_row(
    record: dict[str, Any],
    record_id: str,
    record_type: int | None,
    time_text: str,
    ref: ContentRef,
    problems: Counter[str],
) -> bytes:
    row: dict[str, Any] = {
        "TimeGenerated": time_text,
        "CreationTime": time_text,
        "RecordId": record_id,
        "RecordType": record_type,
    }
    for name in _AUDIT_INTS:
        number = record.get(name)
        row[name] = number if type(number) is int and -(2**31) <= number < 2**31 else _as_int(number)
    for name in _AUDIT_TEXT:
        value = record.get(name)
        if value is None:
            continue
        row[name] = value if type(value) is str else _text(value)
    row["ContentType"] = ref.content_type
    row["ContentId"] = ref.content_id
    row["Record"] = record
    return _serialize(row, problems)


def _dumps(value: Any, *, sort: bool = False) -> bytes:
    option = orjson.OPT_SORT_KEYS if sort else 0
    try:
        return orjson.dumps(value, option=option)
    except (TypeError, orjson.JSONEncodeError):
        # Unpaired surrogates (orjson refuses them) or nesting beyond orjson's limit.
        return json.dumps(_clean(value), sort_keys=sort, ensure_ascii=False).encode("utf-8", "replace")


def _clean(value: Any, depth: int = 0) -> Any:
    """What orjson refused, made writable: unpaired surrogates replaced; NaN, infinities and integers
    beyond 64 bits (which the standard library's reader lets through) written as strings."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)
    if depth > 200:
        return _dumps_flat(value)
    if isinstance(value, dict):
        return {_clean(k, depth + 1): _clean(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v, depth + 1) for v in value]
    return value


def _dumps_flat(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=True)
    except RecursionError:
        text = repr(type(value))
    return text.encode("utf-8", "replace").decode("utf-8")


def _cut(text: str, limit: int) -> str:
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


def _serialize(row: dict[str, Any], problems: Counter[str]) -> bytes:
    try:
        body = orjson.dumps(row)
    except (TypeError, orjson.JSONEncodeError):
        problems["text that is not valid Unicode, or nesting too deep, rewritten"] += 1
        body = _dumps(row)
    if len(body) <= FIELD_LIMIT:
        # No field of a row this small can pass the per-value limit: the common, fast path. The copy is
        # exactly the row's size: orjson's own bytes object keeps the block it grew into (~8 KB for a 1 KB
        # row), so kept as is, a 50 MB blob's 120,000 audit rows held about 1 GB instead of 120 MB.
        return memoryview(body).tobytes()
    changed = False
    sizes: dict[str, int] = {}
    for name, value in row.items():
        size = len(_dumps(value))
        if size > FIELD_LIMIT:
            row[name] = _cut(value if isinstance(value, str) else _dumps(value).decode("utf-8"), FIELD_LIMIT)
            size = FIELD_LIMIT
            changed = True
            problems["value over 64 KB cut to fit (column " + name + ")"] += 1
        sizes[name] = size
    body = _dumps(row) if changed else body
    while len(body) > ROW_LIMIT:
        name = max(sizes, key=lambda n: sizes[n])
        keep = max(0, sizes[name] - (len(body) - ROW_LIMIT) - 64)
        value = row[name]
        row[name] = _cut(value if isinstance(value, str) else _dumps(value).decode("utf-8"), keep)
        sizes[name] = keep
        problems["row over 1 MB cut to fit (column " + name + ")"] += 1
        body = _dumps(row)
    return body
