"""Turning a blob's records into output rows: pure, no I/O.

Each record becomes at most one row per stream: the alerts stream for RecordType 40 alerts of the
configured categories, and, when it is on, the audit stream for every record. The row values come from
``columns.json``; :mod:`.row_writer` serializes them, once, so the ingestion step only packs bytes.

Nothing in a blob stops the rest of it: a record that is not an object is counted and skipped; a record
without ``Id`` gets a stable synthetic one; an unreadable ``CreationTime`` falls back to the blob's
``contentCreated`` for the row (not for its dedupe key); a value too large for Azure Monitor is cut to fit
and counted. The counts come back in :class:`BlobRows` so the caller can log one line per blob, without
record content.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from .blob_parse import std_loads
from .models import ALERT_CATEGORY_NAMES, Row, alert_category
from .row_writer import dumps, serialize_row
from .schema import stream_schema

__all__ = ["TIME_GENERATED_KEPT", "BlobRows", "ContentRef", "Routing", "blob_ref", "extract_upn", "normalize_blob"]

#: Azure Monitor replaces a TimeGenerated more than 2 days old or 1 day ahead with the receive time; inside
#: this narrower stretch (before, after the time of sending) an audit row's TimeGenerated is the record's
#: CreationTime for sure, so Record need not repeat it.
TIME_GENERATED_KEPT = (timedelta(hours=36), timedelta(hours=12))
_CONTENT_TYPE_LETTER = {
    "Audit.AzureActiveDirectory": "A",
    "Audit.Exchange": "E",
    "Audit.SharePoint": "S",
    "Audit.General": "G",
    "DLP.All": "D",
}

UPN_KEYS = ("userPrincipalName", "UserPrincipalName", "upn", "Upn", "UPN", "f3u")
ALERT_RECORD_TYPE = 40
_KNOWN_CATEGORIES = frozenset(ALERT_CATEGORY_NAMES)
_SYNTHETIC_ID_NAMESPACE = uuid.UUID("5b1f0c3e-1d0e-4f7e-9a57-3c6a2a8d9f10")
# ASCII digits only: ``\d`` would take other scripts' digits, which no reader of TimeGenerated parses.
# Besides the API's own shape, the ISO 8601 / RFC 3339 forms a re-published or hand-made record may carry (a
# space or lower-case separator, ``+HHMM``, a fraction finer than the 100 ns Kusto keeps): a time all the same.
_CREATION = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(\.\d+)?([Zz]|[+-]\d\d:?\d\d)?", re.ASCII
)
#: Digits of a second's fraction Kusto's datetime keeps (100 ns ticks); finer ones are cut, not rounded.
_FRACTION_DIGITS = 7

# Fields copied as they are, straight from columns.json so a column added there is filled here.
_ALERT_TEXT = stream_schema("alerts").copied("string")
_AUDIT_TEXT = stream_schema("audit").copied("string")
_AUDIT_INTS = tuple(n for n in stream_schema("audit").copied("int") if n != "RecordType")


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

    def is_alert(self, record: dict[str, Any], record_type: int | None) -> tuple[bool, str]:
        """Whether the record goes to the alerts stream, and the problem to count for it ("" for none)."""
        if record_type != ALERT_RECORD_TYPE:
            return False, ""
        category = record.get("Category")  # a list or an object here must not stop the blob (unhashable)
        if type(category) is str and category in _KNOWN_CATEGORIES:
            return "*" in self.alert_categories or category in self.alert_categories, ""
        # Dropped unseen, an alert whose Category the API spelt otherwise (or a new one) was missing from the
        # alerts table with no trace: matched as the settings match names, and counted either way.
        known = alert_category(category) if isinstance(category, str) else None
        if known is None:
            return "*" in self.alert_categories, _UNKNOWN_CATEGORY
        routed = "*" in self.alert_categories or known in self.alert_categories
        return routed, _SPELT_OTHERWISE if routed else ""


_UNKNOWN_CATEGORY = "alert with no known Category (sent as an alert only with ALERT_CATEGORIES=*)"
_SPELT_OTHERWISE = "alert Category spelt otherwise (the known name written)"


@dataclass
class BlobRows:
    """The rows of one blob per stream name, and what was noticed on the way."""

    rows: dict[str, list[Row]] = field(default_factory=dict)
    records: int = 0
    alerts: int = 0
    duplicates_in_blob: int = 0
    #: problem -> count, e.g. ``{"missing Id": 2, "value cut to 64 KB": 1}``.
    problems: Counter[str] = field(default_factory=Counter)


def normalize_blob(records: Iterable[Any], ref: ContentRef, routing: Routing, *, sent_at: datetime) -> BlobRows:
    """Build the rows of every stream from the parsed records of one blob, to be sent about ``sent_at``
    (which decides whether an audit row's ``TimeGenerated`` survives as the record's time: see
    :func:`_audit_row`)."""
    out = BlobRows()
    alerts: list[Row] = []
    audit: list[Row] = []
    seen: set[str] = set()
    fallback_time = ref.content_created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    problems = out.problems
    audit_on = bool(routing.audit_stream)
    audit_context = _AuditContext.of(ref, sent_at) if audit_on else None
    for record in records:
        out.records += 1
        if not isinstance(record, dict):
            problems["record is not a JSON object"] += 1
            continue
        raw_type = record.get("RecordType")
        record_type = raw_type if type(raw_type) is int and -(2**31) <= raw_type < 2**31 else _as_int(raw_type)
        is_alert, note = routing.is_alert(record, record_type)
        if not is_alert and not audit_on:
            # Alerts only: a record that is not one costs no more than this, and is not counted as a duplicate or
            # a problem (the log's "duplicates dropped" counted records that were never to be sent), but for an
            # alert left out for a category the connector does not know, counted once however often it repeats.
            if note:
                record_id = record.get("Id")
                key = record_id if isinstance(record_id, str) and record_id else _synthetic_id(record)
                if key not in seen:
                    seen.add(key)
                    problems[note] += 1
            continue
        if record_type is None and raw_type is not None:
            problems["RecordType is not a whole number"] += 1
        elif record_type is not None and type(raw_type) is not int:
            problems["RecordType given as text (read as a number)" if isinstance(raw_type, str)
                     else "RecordType given as a decimal (read as a whole number)"] += 1  # fmt: skip

        record_id = record.get("Id")
        if not isinstance(record_id, str) or not record_id:
            record_id = _synthetic_id(record)
            problems["record without Id (synthetic Id used)"] += 1
        if record_id in seen:
            out.duplicates_in_blob += 1
            continue
        seen.add(record_id)
        if note:
            problems[note] += 1

        time_text, hour = _creation_time(record.get("CreationTime"))
        if time_text is None:
            # The row shows the blob's time; the dedupe key gets no hour (""), so its place does not depend
            # on which blob brought the record.
            time_text = fallback_time
            problems["missing or unreadable CreationTime (contentCreated used)"] += 1

        if is_alert:
            out.alerts += 1
            alerts.append(Row(record_id, hour, _alert_row(record, record_id, record_type, time_text, ref, problems)))
        if audit_context is not None:
            body = _audit_row(record, record_id, record_type, time_text, audit_context, problems)
            audit.append(Row(record_id, hour, body))

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
    return str(uuid.uuid5(_SYNTHETIC_ID_NAMESPACE, dumps(record, sort=True).decode()))


#: ``YYYY-MM-DDTHH`` -> ``YYYYMMDDHH`` for the hours already checked to be real dates (a blob's records
#: share a few hours: the regex and the date check then run once per hour, not once per record).
_HOURS: dict[str, str] = {}


def _creation_time(value: Any) -> tuple[str | None, str]:
    """``(TimeGenerated text, YYYYMMDDHH)``; ``(None, "")`` when unreadable. The API's times carry no
    zone and are UTC."""
    if not isinstance(value, str):
        return None, ""
    # The API's own shape, ``2026-06-29T20:03:19``: check the hour once, minutes and seconds here.
    if len(value) == 19 and value[13] == ":" and value[16] == ":" and value.isascii():
        hour_key = _HOURS.get(value[:13])
        minute, second = value[14:16], value[17:19]
        if hour_key is not None and minute.isdigit() and second.isdigit() and minute < "60" and second < "60":
            return value + "Z", hour_key
    match = _CREATION.fullmatch(value.strip())
    if match is None:
        return None, ""
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
        offset_hours, offset_minutes = (int(zone[1:3]), int(zone[-2:])) if zone and len(zone) > 1 else (0, 0)
        if offset_hours or offset_minutes:
            # Not the API's shape, but a time all the same: read as UTC, not replaced by the blob's.
            offset = timedelta(hours=offset_hours, minutes=offset_minutes)
            if offset >= timedelta(days=1) or offset_minutes > 59:
                return None, ""
            moment = moment - offset if zone[0] == "+" else moment + offset
            year, month, day = f"{moment.year:04d}", f"{moment.month:02d}", f"{moment.day:02d}"
            hour, minute, second = f"{moment.hour:02d}", f"{moment.minute:02d}", f"{moment.second:02d}"
    except (ValueError, OverflowError):
        return None, ""
    text = f"{year}-{month}-{day}T{hour}:{minute}:{second}{(fraction or '')[: 1 + _FRACTION_DIGITS]}Z"
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
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text.startswith(("-", "+")) else text
        # ASCII digits only: int() refuses superscripts, which str.isdigit() accepts; and few of them, since no
        # 32-bit value needs more and int() refuses a text of over 4,300 digits (the whole blob would fail).
        ok = digits.isascii() and digits.isdigit() and len(digits) <= 20
        return _as_int(int(text)) if ok else None
    if isinstance(value, float) and value.is_integer():
        return _as_int(int(value))
    return None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    return dumps(value).decode("utf-8")


def _parse_data(value: Any, problems: Counter[str]) -> Any:
    """``Data`` is documented as a JSON string of an object; parse it, keep the raw string when it does not
    parse, or parses to a scalar (``"null"`` would leave the column empty, ``"123"`` would become a number)."""
    if isinstance(value, bool | int | float):
        # A number or true/false where the API puts a JSON string: its text, as for a string that parses to one. The
        # column holds an object, an array or text; a bare `false` read as neither in the workbook and the rules.
        return _text(value)
    if not isinstance(value, str) or not value:
        return value
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        try:
            # JSON that orjson refuses and the standard library reads: a lone surrogate's escape (the service
            # writes them, see blob_parse), a number beyond a double. Kept as text, the alert would lose its user.
            parsed = std_loads(value)
        except (ValueError, RecursionError):
            problems["Data is not JSON (kept as text)"] += 1
            return value
    return parsed if isinstance(parsed, dict | list) else value


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
    category = row.get("Category")
    if category is not None and category not in _KNOWN_CATEGORIES:
        # spelt otherwise (counted by Routing.is_alert): the name the workbook and analytics rules filter on
        row["Category"] = alert_category(category) or category
    row["RecordType"] = record_type
    data = _parse_data(record.get("Data"), problems)
    row["UserPrincipalName"] = extract_upn(data)
    if data is not None:
        row["Data"] = data
    row["ContentId"] = ref.content_id
    row["ContentType"] = ref.content_type
    return serialize_row(row, problems)


@dataclass(frozen=True)
class _AuditContext:
    """What every audit row of one blob shares: its compact blob reference, and the stretch of CreationTime
    that Azure Monitor keeps as TimeGenerated when the rows are sent (``YYYY-MM-DDTHH:MM:SS`` bounds)."""

    blob_ref: str
    kept_from: str
    kept_until: str

    @classmethod
    def of(cls, ref: ContentRef, sent_at: datetime) -> _AuditContext:
        sent = sent_at.astimezone(UTC)
        return cls(
            blob_ref=blob_ref(ref.content_type, ref.content_id),
            kept_from=(sent - TIME_GENERATED_KEPT[0]).strftime("%Y-%m-%dT%H:%M:%S"),
            kept_until=(sent + TIME_GENERATED_KEPT[1]).strftime("%Y-%m-%dT%H:%M:%S"),
        )


def blob_ref(content_type: str, content_id: str) -> str:
    """The audit rows' compact reference to their blob: a letter for the content type and 12 characters of a
    hash of the content id (the processor logs it beside the content id). 13 bytes instead of ~120."""
    digest = hashlib.blake2b(content_id.encode("utf-8", "replace"), digest_size=9).digest()
    return _CONTENT_TYPE_LETTER.get(content_type, "X") + base64.urlsafe_b64encode(digest).decode()


def _audit_row(
    record: dict[str, Any],
    record_id: str,
    record_type: int | None,
    time_text: str,
    context: _AuditContext,
    problems: Counter[str],
) -> bytes:
    """The promoted columns, and ``Record`` with only what they do not hold: each byte of the record is
    stored once (the KQL function ``O365Audit`` puts the whole record together again). A field leaves
    ``Record`` only when its column holds exactly its value; anything a column had to change stays. A text over
    64 KB leaves it too: its column keeps it cut (and marked so), and ``Record``, cut to 64 KB itself, could keep
    no more of it."""
    rest = dict(record)
    row: dict[str, Any] = {"TimeGenerated": time_text, "RecordId": record_id, "RecordType": record_type}
    if rest.get("Id") == record_id:
        del rest["Id"]
    creation = rest.get("CreationTime")
    if (
        type(creation) is str
        and len(creation) == 19  # the API's own shape: KQL's format_datetime gives it back exactly
        and time_text == creation + "Z"
        and context.kept_from <= creation <= context.kept_until
    ):
        del rest["CreationTime"]  # TimeGenerated holds it, and Azure Monitor will keep it
    if type(rest.get("RecordType")) is int and rest["RecordType"] == record_type:
        del rest["RecordType"]
    for name in ("Id", "CreationTime"):
        if name not in record:
            # O365Audit fills what Record lacks from the columns, which hold a synthetic id and the blob's time
            # here: an empty value in Record says the record had none, instead of passing those off as its own.
            rest[name] = ""
    for name in _AUDIT_INTS:
        number = rest.get(name)
        if type(number) is int and -(2**31) <= number < 2**31:
            row[name] = number
            del rest[name]
        else:
            row[name] = _as_int(number)
    for name in _AUDIT_TEXT:
        value = rest.get(name)
        if value is None:
            continue
        if type(value) is str:
            row[name] = value
            if value:  # an empty column reads as absent in KQL: an empty value stays in Record
                del rest[name]
        else:
            row[name] = _text(value)
    row["BlobRef"] = context.blob_ref
    row["Record"] = rest
    return serialize_row(row, problems)


