"""Azure Monitor Logs Ingestion API stand-in.

Why: the processor's upload path (gzip, 1 MiB limits, the declared columns, retries on
429/503) must meet the rules the real endpoint enforces, and tests must see exactly which
rows arrived. ``POST /dataCollectionRules/{dcrImmutableId}/streams/{stream}?api-version=2023-01-01``
[fault-injection route ``ingest``] answers 204 and keeps the rows.

Limits: aiohttp's server would inflate a gzip body by itself and check its ``client_max_size``
on the inflated size, so the app is built with ``auto_decompress=False`` and a large
``client_max_size``; this module inflates (capped) and enforces both limits itself: the body as
sent (compressed) and the inflated JSON must each be at most 1,048,576 bytes, else 413
``ContentLengthLimitExceeded``.

Validation is stricter than the real service (which drops unknown columns and coerces values)
on purpose: an undeclared column or a mistyped value is a connector bug a test should see.

Stored as the service stores them (apis.md): a ``TimeGenerated`` more than 2 days old or 1 day ahead becomes
the time the row was received, and a field value above 64 KB is cut to 64 KB (a ``dynamic`` one to the first
64 KB of its JSON text, which is then a string, no longer an object).
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from standins.base import ARRIVED, CLIENT_ID, ApiError, ServiceStandIn
from standins.server import CLIENT_MAX_SIZE
from standins.tokens import TokenRegistry

MAX_BODY = 1_048_576
API_VERSIONS = frozenset({"2023-01-01", "2021-11-01-preview"})
COLUMN_TYPES = frozenset({"string", "int", "long", "real", "boolean", "dynamic", "datetime"})
DEFAULT_COLUMNS_PATH = Path(__file__).resolve().parent.parent / "irm_connector" / "columns.json"
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Column:
    name: str
    type: str


@dataclass(frozen=True)
class IngestStat:
    """One upload request as received."""

    stream: str
    status: int
    gzip: bool
    compressed_bytes: int  # bytes on the wire (== uncompressed_bytes without gzip)
    uncompressed_bytes: int  # -1 when the body could not be inflated
    rows: int
    error_code: str | None
    client_id: str | None
    #: when it arrived and was answered (``time.time()``), and the blobs its rows name (``ContentId`` or
    #: ``BlobRef``): when each delivery sent its rows, seen from outside the connector
    arrived: float = 0.0
    answered: float = 0.0
    blobs: frozenset[str] = frozenset()


def load_streams(columns_path: Path | str = DEFAULT_COLUMNS_PATH) -> dict[str, list[Column]]:
    """Stream name → declared columns, read from the connector's ``columns.json``."""
    data = json.loads(Path(columns_path).read_text(encoding="utf-8"))
    streams: dict[str, list[Column]] = {}
    for spec in data["streams"].values():
        columns = [Column(c["name"], c["type"]) for c in spec["columns"]]
        unknown = [c.type for c in columns if c.type not in COLUMN_TYPES]
        if unknown:
            raise ValueError(f"{spec['stream']}: unknown column types {unknown}")
        streams[spec["stream"]] = columns
    return streams


def _datetime_of(value: Any) -> datetime | None:
    """``value`` as a datetime column reads it (UTC when it names no zone); None when it is not one."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    # Python < 3.11 could not parse 7-digit fractions; Azure sends them. Trim to 6.
    if "." in text:
        head, _, tail = text.partition(".")
        digits = len(tail) - len(tail.lstrip("0123456789"))
        tail = tail[: min(digits, 6)] + tail[digits:]
        text = f"{head}.{tail}" if digits else head + tail
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def check_value(column_type: str, value: Any) -> bool:
    """Does ``value`` (decoded JSON) fit a column of ``column_type``? ``null`` fits any."""
    if value is None or column_type == "dynamic":
        return True
    if column_type == "string":
        return isinstance(value, str)
    if column_type in ("int", "long"):
        low, high = INT32 if column_type == "int" else INT64
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    if column_type == "real":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if column_type == "boolean":
        return isinstance(value, bool)
    if column_type == "datetime":
        return _datetime_of(value) is not None
    return False


#: A field value above this many bytes is cut to it.
FIELD_LIMIT = 64 * 1024
#: A TimeGenerated further back or ahead than these is replaced by the time the row was received.
KEPT_BACK, KEPT_AHEAD = timedelta(days=2), timedelta(days=1)


def _as_stored(row: dict[str, Any], received: datetime) -> dict[str, Any]:
    stored = dict(row)
    when = _datetime_of(row.get("TimeGenerated"))
    if when is not None and not received - KEPT_BACK <= when <= received + KEPT_AHEAD:
        stored["TimeGenerated"] = received.isoformat().replace("+00:00", "Z")
    for key, value in row.items():
        text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, dict | list) else None
        if text is not None and len(text.encode("utf-8")) > FIELD_LIMIT:
            stored[key] = text.encode("utf-8")[:FIELD_LIMIT].decode("utf-8", "ignore")
    return stored


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


def _rows_of(body: bytes) -> list[dict[str, Any]]:
    """The rows of a body as a strict reader takes them: UTF-8 (``json.loads`` on bytes guessed UTF-16 too), no
    ``NaN`` or ``Infinity`` (Python's extension, not JSON), no lone surrogate (no UTF-8 for it: the rows could not
    be stored)."""
    try:
        text = body.decode("utf-8")
        rows = json.loads(text, parse_constant=_not_json)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError among them
        raise ApiError(400, "InvalidContent", f"The request body is not valid JSON: {exc}.") from exc
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ApiError(400, "InvalidContent", "The request body must be a JSON array of objects.")
    if "\\ud" in text.lower():  # a surrogate escape: rare, so the walk is paid only then
        try:
            json.dumps(rows, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ApiError(400, "InvalidContent", "The request body holds an unpaired surrogate.") from exc
    return rows


def _too_large(what: str, size: int) -> ApiError:
    return ApiError(
        413,
        "ContentLengthLimitExceeded",
        f"Maximum allowed content length: {MAX_BODY} bytes ({MAX_BODY // 1024} KiB). "
        f"Provided {what} content length: {size} bytes.",
    )


class IngestionStandIn(ServiceStandIn):
    """A data collection rule (one immutable id) with the connector's streams."""

    routes = frozenset({"ingest"})

    def __init__(
        self,
        tokens: TokenRegistry,
        *,
        dcr_immutable_id: str = "dcr-00000000000000000000000000000000",
        streams: dict[str, list[Column]] | None = None,
        audience: str = "https://monitor.azure.com",
        rows_dir: Path | str | None = None,
    ) -> None:
        super().__init__()
        self.tokens = tokens
        self.dcr_immutable_id = dcr_immutable_id
        self.streams = streams if streams is not None else load_streams()
        self.audience = audience
        #: When set, accepted rows are also appended to ``{rows_dir}/{stream}.jsonl``.
        self.rows_dir = Path(rows_dir) if rows_dir else None
        self._rows: dict[str, list[dict[str, Any]]] = {name: [] for name in self.streams}
        self._stats: list[IngestStat] = []
        self._denied: set[str] = set()
        self._deny_all = False
        self._refused_streams: dict[str, int] = {}
        #: Streams that take any JSON array of objects up to their own body limit (see accept_raw).
        self._raw_streams: dict[str, int] = {}
        self._file_lock = threading.Lock()

    # ---- knobs and results -------------------------------------------------------------
    def accept_audience(self, audience: str) -> None:
        """Accept tokens for ``audience`` only, as a workspace in another Azure cloud does (e.g.
        ``https://monitor.azure.us`` in Azure Government); every other token gets 401."""
        with self._lock:
            self.audience = audience

    def accept_raw(self, stream: str, max_body: int = 30 * 1024 * 1024) -> None:
        """Declare ``stream`` as raw: any JSON array of objects up to ``max_body`` bytes, no column
        checks, no gzip needed; the HTTP Data Collector API the seed's Logic App posts to (30 MB a post).
        The benchmark's seed-style baseline sends blobs here as they come."""
        with self._lock:
            self._raw_streams[stream] = max_body
            self._rows.setdefault(stream, [])

    def deny_role(self, client_id: str | None = None, denied: bool = True) -> None:
        """Without "Monitoring Metrics Publisher" (one client, or everyone): 403."""
        with self._lock:
            if client_id is None:
                self._deny_all = denied
            elif denied:
                self._denied.add(client_id)
            else:
                self._denied.discard(client_id)

    def refuse_stream(self, stream: str, status: int | None = 403) -> None:
        """Refuse every upload to ``stream`` with ``status`` (403: the role, as :meth:`deny_role` answers; 404:
        a stream the rule does not have), or accept it again (``None``)."""
        with self._lock:
            if status is None:
                self._refused_streams.pop(stream, None)
            else:
                self._refused_streams[stream] = status

    def rows(self, stream: str) -> list[dict[str, Any]]:
        """Rows accepted so far for ``stream`` (a copy of the list)."""
        with self._lock:
            return list(self._rows.get(stream, []))

    def all_rows(self) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            return {name: list(rows) for name, rows in self._rows.items()}

    def clear_rows(self) -> None:
        with self._lock:
            for rows in self._rows.values():
                rows.clear()

    def stats(self) -> list[IngestStat]:
        with self._lock:
            return list(self._stats)

    def rejected(self) -> list[IngestStat]:
        return [s for s in self.stats() if s.status >= 300]

    def rows_file(self, stream: str) -> Path | None:
        return self.rows_dir / f"{stream}.jsonl" if self.rows_dir else None

    # ---- HTTP --------------------------------------------------------------------------
    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=CLIENT_MAX_SIZE, handler_args={"auto_decompress": False})
        app.router.add_post("/dataCollectionRules/{dcr}/streams/{stream}", self.routed("ingest", self._ingest))
        return app

    def default_fault_code(self, status: int) -> str:
        return {429: "TooManyRequests", 503: "ServiceUnavailable", 500: "InternalServerError"}.get(
            status, f"Http{status}"
        )

    def _authorize(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        with self._lock:
            audience = self.audience
        info = self.tokens.validate(token, audience) if token else None
        if info is None:
            raise ApiError(
                401,
                "InvalidToken",
                f"The authentication token is missing, expired or not issued for audience {audience}.",
                headers={"WWW-Authenticate": f'Bearer authorization_uri="", resource="{audience}"'},
            )
        request[CLIENT_ID] = info.client_id
        with self._lock:
            denied = self._deny_all or info.client_id in self._denied
        if denied:
            raise ApiError(
                403,
                "OperationFailed",
                "The authentication token provided does not have access to ingest data for the data "
                f"collection rule with immutable Id '{self.dcr_immutable_id}'.",
            )

    async def _ingest(self, request: web.Request) -> web.Response:
        raw = await request.read()
        gzipped = "gzip" in request.headers.get("Content-Encoding", "").lower()
        stat: dict[str, Any] = {
            "stream": request.match_info["stream"],
            "gzip": gzipped,
            "compressed_bytes": len(raw),
            "uncompressed_bytes": -1 if gzipped else len(raw),
            "rows": 0,
        }
        try:
            rows = self._accept(request, raw, gzipped, stat)
        except ApiError as err:
            self._add_stat(stat, err.status, err.code, request)
            raise
        self._store(stat["stream"], rows)
        stat["blobs"] = frozenset(str(r.get("ContentId") or r.get("BlobRef") or "") for r in rows)
        self._add_stat(stat, 204, None, request)
        return web.Response(status=204)

    def _add_stat(self, stat: dict[str, Any], status: int, code: str | None, request: web.Request) -> None:
        with self._lock:
            self._stats.append(IngestStat(status=status, error_code=code, client_id=self.client_of(request),
                                          arrived=ARRIVED.get(), answered=time.time(), **stat))  # fmt: skip

    def _accept(self, request: web.Request, raw: bytes, gzipped: bool, stat: dict[str, Any]) -> list[dict[str, Any]]:
        self._authorize(request)
        if request.match_info["dcr"] != self.dcr_immutable_id:
            raise ApiError(
                404,
                "NotFound",
                f"Data collection rule with immutable Id '{request.match_info['dcr']}' not found.",
            )
        if request.query.get("api-version") not in API_VERSIONS:
            raise ApiError(
                400,
                "InvalidApiVersion",
                f"The api-version '{request.query.get('api-version')}' is not supported.",
            )
        stream = stat["stream"]
        with self._lock:
            refused = self._refused_streams.get(stream)
        if refused == 403:
            raise ApiError(
                403,
                "OperationFailed",
                "The authentication token provided does not have access to ingest data for the data collection "
                f"rule with immutable Id '{self.dcr_immutable_id}'.",
            )
        if refused is not None:
            raise ApiError(refused, "NotFound", f"Stream '{stream}' not found in the data collection rule.")
        columns = self.streams.get(stream)
        with self._lock:
            raw_limit = self._raw_streams.get(stream)
        if columns is None and raw_limit is not None:
            return self._accept_raw(raw, gzipped, raw_limit, stat)
        if columns is None:
            raise ApiError(
                400,
                "InvalidStream",
                f"Stream '{stream}' is not declared in data collection rule '{self.dcr_immutable_id}'.",
            )
        if request.content_type != "application/json":
            raise ApiError(415, "UnsupportedMediaType", "Content-Type must be application/json.")
        if len(raw) > MAX_BODY:
            raise _too_large("compressed" if gzipped else "", len(raw))
        body = self._inflate(raw) if gzipped else raw
        stat["uncompressed_bytes"] = len(body)
        if len(body) > MAX_BODY:
            raise _too_large("uncompressed", len(body))
        rows = _rows_of(body)
        stat["rows"] = len(rows)
        self._validate(stream, columns, rows)
        return rows

    def _accept_raw(self, raw: bytes, gzipped: bool, limit: int, stat: dict[str, Any]) -> list[dict[str, Any]]:
        body = self._inflate(raw, limit) if gzipped else raw
        stat["uncompressed_bytes"] = len(body)
        if len(body) > limit:
            raise ApiError(413, "ContentLengthLimitExceeded", f"Maximum allowed content length: {limit} bytes.")
        rows = _rows_of(body)
        stat["rows"] = len(rows)
        return rows

    @staticmethod
    def _inflate(raw: bytes, limit: int = MAX_BODY) -> bytes:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(raw, limit + 1)
        except zlib.error as exc:
            raise ApiError(400, "InvalidContent", f"The gzip body could not be decompressed: {exc}.") from exc
        if len(body) > limit:
            # Keep going (capped) only to report a size; a zip bomb stops at 64 MiB.
            rest = inflater.decompress(inflater.unconsumed_tail, CLIENT_MAX_SIZE)
            body += rest
        elif not inflater.eof:  # cut short (no CRC and length trailer): what arrived is not all that was sent
            raise ApiError(400, "InvalidContent", "The gzip body ended before its end of stream.")
        return body

    @staticmethod
    def _validate(stream: str, columns: list[Column], rows: list[dict[str, Any]]) -> None:
        types = {c.name: c.type for c in columns}
        for index, row in enumerate(rows):
            if row.get("TimeGenerated") is None:
                raise ApiError(
                    400,
                    "InvalidContent",
                    f"Row {index} of stream '{stream}' has no TimeGenerated; it is required.",
                )
            for key, value in row.items():
                column_type = types.get(key)
                if column_type is None:
                    raise ApiError(
                        400,
                        "InvalidContent",
                        f"Row {index}: column '{key}' is not declared in stream '{stream}'.",
                    )
                if not check_value(column_type, value):
                    raise ApiError(
                        400,
                        "InvalidContent",
                        f"Row {index}: column '{key}' is declared {column_type} but got "
                        f"{type(value).__name__} {json.dumps(value)[:80]}.",
                    )

    def _store(self, stream: str, rows: list[dict[str, Any]]) -> None:
        received = datetime.now(UTC)
        rows = [_as_stored(row, received) for row in rows]
        with self._lock:
            self._rows.setdefault(stream, []).extend(rows)
        path = self.rows_file(stream)
        if path is not None and rows:
            with self._file_lock:
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a", encoding="utf-8") as handle:
                    handle.writelines(json.dumps(row) + "\n" for row in rows)
