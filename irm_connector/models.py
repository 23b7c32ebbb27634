"""The data types every layer shares, and the one way to read and write the times they carry.

Nothing here talks to a service: the Management API client, the queue, the state tables, the
normalizer and the ingestor all build on these types instead of on each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

__all__ = [
    "ALERT_CATEGORY_NAMES",
    "CONTENT_ID",
    "KNOWN_CONTENT_TYPES",
    "LOST_OUTCOMES",
    "ContentBlob",
    "ContentTypeReport",
    "Outcome",
    "PollReport",
    "ProcessResult",
    "Row",
    "alert_category",
    "parse_api_time",
    "parse_http_date",
    "parse_utc",
    "utc_text",
]

#: The Management API's content types, as it spells them.
KNOWN_CONTENT_TYPES = (
    "Audit.AzureActiveDirectory",
    "Audit.Exchange",
    "Audit.SharePoint",
    "Audit.General",
    "DLP.All",
)
#: A content id as the API's look (``20260629…$…$audit_general$Audit_General$na0034``), with room to spare.
CONTENT_ID = re.compile(r"[\x21-\x7e]{1,512}")
#: The ``Category`` values of RecordType 40 alerts, as the records spell them.
ALERT_CATEGORY_NAMES = (
    "AccessGovernance", "DataGovernance", "DataLossPrevention", "InsiderRiskManagement", "MailFlow",
    "ThreatManagement", "Other",
)  # fmt: skip
_CATEGORY_BY_KEY = {name.lower(): name for name in ALERT_CATEGORY_NAMES}
_CATEGORY_NOISE = re.compile(r"[\s_-]+")


def alert_category(text: str) -> str | None:
    """The known alert category ``text`` names, in any case and with or without spaces, ``_`` or ``-``
    (``insider risk management`` is the portal's wording): ``ALERT_CATEGORIES`` and the records are read
    alike. None for no known one."""
    return _CATEGORY_BY_KEY.get(_CATEGORY_NOISE.sub("", text).lower())


def parse_api_time(text: str) -> datetime:
    """The API's timestamps (``2026-06-29T20:03:19.123Z``, or without the zone): UTC.

    Raises :class:`ValueError` for text that is not an ISO time."""
    # "z" too, as the command line reads it: fromisoformat takes only "Z", and one lowercase time in a listing made
    # its whole window unreadable, run after run.
    value = datetime.fromisoformat(re.sub(r"[zZ]$", "+00:00", text.strip()))
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-01:00: a date, but its UTC instant is past the calendar's end
        raise ValueError("a time whose UTC instant is outside the calendar") from None


def parse_http_date(text: str | None) -> datetime | None:
    """An HTTP ``Date`` header (``Tue, 01 Dec 2026 10:00:00 GMT``: a service's clock, to the second), UTC;
    ``None`` for a missing or unreadable one."""
    if not text:
        return None
    try:
        value = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def parse_utc(text: Any) -> datetime | None:
    """A time this connector wrote (or any ISO time), UTC; ``None`` for anything unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return parse_api_time(text)
    except ValueError:
        return None


def utc_text(moment: datetime, *, timespec: str = "auto") -> str:
    """ISO 8601 in UTC with a ``Z``: what the queue messages, the state and the output rows carry."""
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


@dataclass(frozen=True)
class ContentBlob:
    """One content blob as the API lists it."""

    content_type: str
    content_id: str
    content_uri: str
    content_created: datetime
    content_expiration: datetime

    @classmethod
    def from_api(cls, item: Any) -> ContentBlob:
        """From the API's camelCase object (a listing entry or a queue message).

        Raises :class:`KeyError`, :class:`TypeError` or :class:`ValueError`; callers turn those into
        their own error."""
        content_id = str(item["contentId"])
        if not CONTENT_ID.fullmatch(content_id):
            # Quoted in log lines, spans and exceptions from here on: 30,000 characters, or a line break, made every
            # one of them the sender's (a gateway's, a forger's). Not quoted here either.
            raise ValueError("a contentId is one word of at most 512 printable ASCII characters")
        return cls(
            content_type=str(item["contentType"]),
            content_id=content_id,
            content_uri=str(item["contentUri"]),
            content_created=parse_api_time(str(item["contentCreated"])),
            content_expiration=parse_api_time(str(item["contentExpiration"])),
        )

    def to_api(self) -> dict[str, str]:
        """The API's camelCase object again (what a queue message carries)."""
        return {
            "contentType": self.content_type,
            "contentId": self.content_id,
            "contentUri": self.content_uri,
            "contentCreated": utc_text(self.content_created),
            "contentExpiration": utc_text(self.content_expiration),
        }


@dataclass(slots=True)
class Row:
    """One serialized output row and the keys its dedupe marker lives under."""

    record_id: str
    #: ``YYYYMMDDHH`` of the record's CreationTime, empty without a readable one: duplicates of a record share it.
    hour: str
    body: bytes


@dataclass
class ContentTypeReport:
    """What one poller run (or backfill) did for one content type."""

    content_type: str
    windows_listed: int = 0
    blobs_listed: int = 0
    blobs_queued: int = 0
    blobs_already_queued: int = 0
    blobs_expired: int = 0
    blobs_refused: int = 0
    watermark: datetime | None = None
    skipped: str = ""
    error: str = ""
    subscription: str = ""
    finished: bool = False


@dataclass
class PollReport:
    """What one poller run (or backfill) did, per content type."""

    content_types: list[ContentTypeReport] = field(default_factory=list)

    @property
    def blobs_queued(self) -> int:
        return sum(r.blobs_queued for r in self.content_types)

    @property
    def errors(self) -> list[str]:
        return [f"{r.content_type}: {r.error}" for r in self.content_types if r.error]


#: ingested: every row is in Sentinel (or was already); expired/unavailable: the API no longer has the blob;
#: bad-message/untrusted-url: the message was refused and parked in the poison queue; bad-content: so was a
#: message whose blob arrived whole but is not a JSON array; rescheduled: Logs Ingestion refuses a stream (see
#: :mod:`.refusals`), or the Management API asked for a long wait, so the message was put back with a delay.
Outcome = Literal["ingested", "expired", "unavailable", "bad-message", "untrusted-url", "bad-content", "rescheduled"]
#: The outcomes whose blob left the API before it was processed: its records are lost.
LOST_OUTCOMES: tuple[Outcome, ...] = ("expired", "unavailable")
#: The outcomes whose message the processor itself moved to the poison queue (no retry could help).
PARKED_OUTCOMES: tuple[Outcome, ...] = ("bad-message", "untrusted-url", "bad-content")


@dataclass
class ProcessResult:
    """What one message led to."""

    outcome: Outcome = "ingested"
    content_id: str = ""
    records: int = 0
    alerts: int = 0
    rows_sent: dict[str, int] = field(default_factory=dict)
    duplicates_dropped: int = 0
    claimed_elsewhere: int = 0
    problems: dict[str, int] = field(default_factory=dict)
    content_lag_seconds: float = 0.0
    #: why a message was refused (bad-message, untrusted-url, bad-content)
    detail: str = ""

    @property
    def parked(self) -> bool:
        """Whether the processor itself moved the message to the poison queue (no retry could help)."""
        return self.outcome in PARKED_OUTCOMES
