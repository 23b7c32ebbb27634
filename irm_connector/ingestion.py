"""Sending rows to Sentinel through the Logs Ingestion API.

azure-monitor-ingestion's ``upload`` serializes with the standard library and sends its chunks one
after another. The rows here are already serialized (see :mod:`.row_writer`), so this module packs them
into bodies as close to the 1 MiB limit as they fit, gzips each in a worker thread (zlib releases the
GIL), and sends the prepared bodies concurrently through the same client, which then only adds the
headers, its retry policy and the token. A body's bytes are joined only when its turn to be sent comes,
so a large blob holds its rows once, not twice. Each body's rows are reported sent through a callback as soon
as that body is accepted, so a failure later in the blob never loses or re-marks earlier rows.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline import PipelineResponse
from azure.core.pipeline.policies import AsyncRetryPolicy
from azure.core.rest import AsyncHttpResponse, HttpRequest
from azure.monitor.ingestion.aio import LogsIngestionClient

from ._network import network_cause
from .api_answers import finite_wait, retry_after_of
from .auth import identity_endpoint_known
from .deadline import Deadline, current_deadline, within
from .errors import (
    CODE_LIMIT,
    DeadlineError,
    IngestionError,
    IngestionRefusedError,
    IngestionThrottledError,
    quoted_text,
)
from .models import Row

__all__ = [
    "PACK_LIMIT",
    "REFUSED_STATUS",
    "REQUEST_LIMIT",
    "RETRY_BACKOFF_MAX",
    "RETRY_TOTAL",
    "UPLOAD_CONCURRENCY",
    "Chunk",
    "SentinelIngestor",
    "UploadRetryPolicy",
    "UploadStats",
    "pack_rows",
]

log = logging.getLogger(__name__)

#: The Logs Ingestion API refuses a request body above 1 MiB (compressed or not).
REQUEST_LIMIT = 1024 * 1024

#: Bodies are packed to this many bytes before compression; the API's limit is REQUEST_LIMIT.
PACK_LIMIT = REQUEST_LIMIT - 4096
#: Level 3 compresses audit JSON about 8:1 at several times the speed of the default level 6.
COMPRESS_LEVEL = 3
#: Bodies in flight per process (one gate for every message the worker runs). With 50 ms a request, 4
#: left the benchmark's audit run waiting on uploads (287 requests: 3.6 s of queueing); 16 overlaps the
#: waits and holds at most 16 bodies (about 16 MiB before compression) at once.
UPLOAD_CONCURRENCY = 16
#: azure-core's retry policy of the LogsIngestionClient, bounded: its defaults (10 retries, backoff up to
#: 120 s) outlast a function timeout. Each call's retries are bounded by the invocation's time left too.
RETRY_TOTAL = 3
RETRY_BACKOFF_MAX = 30.0
#: What Logs Ingestion answers when the DCR refuses the stream itself, not the rows (see :mod:`.refusals`).
REFUSED_STATUS = (401, 403, 404)
#: Transient answers azure-core does not retry on a POST unless they carry ``Retry-After``.
_TRANSIENT_POST_STATUS = (408, 429, 502)


class UploadRetryPolicy(AsyncRetryPolicy[HttpRequest, AsyncHttpResponse]):
    """azure-core's retry policy (``RETRY_TOTAL`` retries, backoff up to ``RETRY_BACKOFF_MAX``), which also
    retries a POST answered 408, 429 without ``Retry-After`` or 502, or whose connection failed before an answer
    could start (refused, reset). azure-core leaves those to the caller; here that is the host, whose retries come
    30 s apart and end in the poison queue after five: a gateway's blip of a couple of minutes would park every
    message in flight. Sending a body again adds no duplicate that the host's retry would not: rows are marked
    sent only once accepted (a connection dropped after the service took the body, before its answer began, looks
    like one refused before it: that body's rows arrive twice, as the host's retry would send them). An answer lost
    after it started (cut short, or slower than ``HTTP_TIMEOUT``) is left to the host, as azure-core leaves it: the
    body was likely accepted, and each resend within the call would add its rows once more, seconds apart."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("retry_total", RETRY_TOTAL)
        kwargs.setdefault("retry_read", 0)
        kwargs.setdefault("retry_backoff_max", RETRY_BACKOFF_MAX)
        super().__init__(**kwargs)

    def is_retry(self, settings: dict[str, Any], response: PipelineResponse[Any, Any]) -> bool:
        if super().is_retry(settings, response):
            return True
        return bool(settings["total"]) and response.http_response.status_code in _TRANSIENT_POST_STATUS

    def _is_method_retryable(self, settings: dict[str, Any], request: Any, response: Any = None) -> bool:
        # Asked without a response only when none came (azure-core's one place for a POST's network error); one
        # whose answer had started is stopped by ``retry_read`` (0) instead.
        return response is None or bool(super()._is_method_retryable(settings, request, response))

    def get_retry_after(self, response: PipelineResponse[Any, Any]) -> float | None:
        # azure-core reads "inf" or "1e999" (a broken gateway's) as a wait: slept, it never ended; put off for, the
        # message's delay overflowed. No wait, as the Management API client reads one (api_answers.finite_wait),
        # and so is a text that is neither a number nor a date.
        try:
            wait = super().get_retry_after(response)
        except ValueError:  # neither a number nor a date ("soon"): azure-core raises, failing the whole upload
            return None
        return None if wait is None else finite_wait(float(wait))

    async def sleep(
        self, settings: dict[str, Any], transport: Any, response: PipelineResponse[Any, Any] | None = None
    ) -> None:
        # azure-core sleeps a Retry-After whole: one the invocation cannot hold would keep it (an upload slot, its
        # blob's room) to its timeout, for a failure that says nothing of the wait. It fails now, naming it.
        wait = self.get_retry_after(response) if response is not None else None
        deadline = current_deadline()
        if response is not None and wait is not None and deadline is not None and not deadline.allows(wait):
            stream = str(response.http_request.url).split("/streams/", 1)[-1].split("?", 1)[0]
            status = response.http_response.status_code
            if status == 429:
                # Throttled: the message is put off for the wait named. Failed to the host instead, it was asked
                # again 30 s later, throttled again, and parked in the poison queue after five.
                raise _throttled(stream, "", wait)
            raise deadline.expire(f"upload to {stream}: Logs Ingestion answered {status} with Retry-After", wait)
        await super().sleep(settings, transport, response)


@dataclass(slots=True)
class Chunk:
    """The rows of one request body; ``size`` is the body's length in bytes."""

    rows: list[Row]
    size: int

    @property
    def raw(self) -> bytes:
        """The body: the rows as one JSON array (joined on demand)."""
        return b"[" + b",".join(r.body for r in self.rows) + b"]"


@dataclass
class UploadStats:
    requests: int = 0
    rows: int = 0
    raw_bytes: int = 0
    sent_bytes: int = 0
    splits: int = 0
    seconds: float = 0.0
    rows_by_stream: dict[str, int] = field(default_factory=dict)


def pack_rows(rows: Sequence[Row], limit: int = PACK_LIMIT) -> list[Chunk]:
    """Pack serialized rows into JSON arrays of at most ``limit`` bytes, in order."""
    chunks: list[Chunk] = []
    current: list[Row] = []
    size = 2  # the brackets
    for row in rows:
        extra = len(row.body) + (1 if current else 0)
        if current and size + extra > limit:
            chunks.append(Chunk(current, size))
            current, size = [], 2
            extra = len(row.body)
        if 2 + len(row.body) > limit:
            raise ValueError(f"a row of {len(row.body)} bytes cannot fit a request")  # normalize caps rows first
        current.append(row)
        size += extra
    if current:
        chunks.append(Chunk(current, size))
    return chunks


def _chunk(rows: list[Row]) -> Chunk:
    return Chunk(rows, 1 + sum(len(r.body) + 1 for r in rows))


class SentinelIngestor:
    """Uploads rows of one stream at a time; shares one :class:`LogsIngestionClient`."""

    def __init__(
        self,
        client: LogsIngestionClient,
        dcr_immutable_id: str,
        *,
        endpoint: str,
        concurrency: int = UPLOAD_CONCURRENCY,
    ) -> None:
        self._client = client
        self._dcr = dcr_immutable_id
        self._host = urlsplit(endpoint).netloc or endpoint  # for errors: the client keeps it private
        self._gate = asyncio.Semaphore(concurrency)
        self.stats = UploadStats()

    async def close(self) -> None:
        await self._client.close()

    async def upload(
        self,
        stream: str,
        rows: Sequence[Row],
        on_sent: Callable[[list[Row]], Awaitable[None]] | None = None,
        *,
        deadline: Deadline | None = None,
    ) -> int:
        """Send ``rows``; ``on_sent`` runs for each accepted body. Raises :class:`IngestionError` after every
        body was tried if any was refused: the rows of the accepted ones are already reported. With
        ``deadline``, no attempt or retry wait outlasts it (:class:`DeadlineError`)."""
        chunks = pack_rows(rows)
        results = await asyncio.gather(
            *(self._send(stream, c, on_sent, deadline) for c in chunks), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        for error in errors:
            if not isinstance(error, Exception):
                raise error  # cancellation and the like are not ours to translate
        if errors:
            # A refusal first: it reschedules the message and is recorded, which a sibling's deadline must not hide.
            first = next(
                (e for kind in (IngestionRefusedError, DeadlineError) for e in errors if isinstance(e, kind)), errors[0]
            )
            if isinstance(first, IngestionError | DeadlineError):
                raise first
            raise IngestionError(f"upload to {stream} failed: {type(first).__name__}", stream=stream) from first
        return len(rows)

    async def _send(
        self,
        stream: str,
        chunk: Chunk,
        on_sent: Callable[[list[Row]], Awaitable[None]] | None,
        deadline: Deadline | None,
    ) -> None:
        # The slots are the worker's, and a holder keeps one up to its own deadline, later than this one's: the
        # wait for a slot is this invocation's to bound, or it would run past the function timeout.
        await within(f"waiting for an upload slot ({stream})", self._gate.acquire(), deadline=deadline)
        try:
            raw = chunk.raw
            # The loop's thread pool is shared (DNS lookups, msal's token requests): bounded like any other wait.
            body = await within(
                f"compressing a body for {stream}", asyncio.to_thread(zlib.compress, raw, COMPRESS_LEVEL, 31),
                deadline=deadline,
            )  # fmt: skip
            del raw
            started = time.perf_counter()
            try:
                await self._post_with_fresh_token(stream, body, deadline)
            except ClientAuthenticationError as exc:
                if exc.status_code and _answered_by_ingestion(exc):
                    raise _ingestion_error(stream, exc) from None  # see below
                # No answer from Logs Ingestion at all: the credential gave no token. It is an HttpResponseError
                # without a status (which would read as "refused rows (HTTP 0)"), or, once a token was had, with
                # the identity endpoint's own (a 404 read as the rule missing, and recorded as a refusal).
                raise IngestionError(
                    f"could not get a token for Logs Ingestion ({stream}): "
                    f"{(exc.message or type(exc).__name__).splitlines()[0][:200].rstrip('.')}; {_token_hint()}",
                    stream=stream,
                ) from exc
            except HttpResponseError as exc:
                if exc.status_code == 413 and len(chunk.rows) > 1:
                    self.stats.splits += 1
                    half = len(chunk.rows) // 2
                    pieces = [_chunk(chunk.rows[:half]), _chunk(chunk.rows[half:])]
                else:
                    # Not chained: the service's message may quote the rows' values (a 400 names the column and
                    # what it got), and a chained exception's text goes wherever its traceback goes (the host,
                    # Application Insights). Its status and code are kept.
                    raise _ingestion_error(stream, exc) from None
            except (ServiceRequestError, ServiceResponseError) as exc:
                # No answer, after UploadRetryPolicy's retries: the host, the network or TLS, not the rows.
                failed = "cannot reach" if isinstance(exc, ServiceRequestError) else "no answer from"
                raise IngestionError(
                    f"{failed} Logs Ingestion at {self._host} ({network_cause(exc)}) for {stream}: check "
                    "LOGS_INGESTION_ENDPOINT (the DCE's logs ingestion URL) and the network to it",
                    stream=stream,
                ) from exc
            except AzureError as exc:
                raise IngestionError(f"upload to {stream} failed: {type(exc).__name__}", stream=stream) from exc
            else:
                self.stats.seconds += time.perf_counter() - started
                self.stats.requests += 1
                self.stats.rows += len(chunk.rows)
                self.stats.raw_bytes += chunk.size
                self.stats.sent_bytes += len(body)
                self.stats.rows_by_stream[stream] = self.stats.rows_by_stream.get(stream, 0) + len(chunk.rows)
                if on_sent is not None:
                    await on_sent(chunk.rows)
                return
        finally:
            self._gate.release()
        for piece in pieces:  # outside the gate: each piece takes its own place
            await self._send(stream, piece, on_sent, deadline)

    async def _post_with_fresh_token(self, stream: str, body: bytes, deadline: Deadline | None) -> None:
        try:
            await self._post(stream, body, deadline)
        except ClientAuthenticationError as exc:
            if exc.status_code != 401:
                raise
            # A token can expire on the way (a slow request, a clock a little ahead of this one). Taken for a
            # refusal, it would put off every delivery of the stream on every instance until a probe got through.
            # azure-core's policy dropped its token on the 401, so this carries a new one; a second 401 is a
            # refusal.
            log.info("Logs Ingestion refused the token for %s once; sending again with a new one", stream)
            await self._post(stream, body, deadline)

    async def _post(self, stream: str, body: bytes, deadline: Deadline | None) -> None:
        if deadline is None:
            await self._client.upload(rule_id=self._dcr, stream_name=stream, logs=io.BytesIO(body))
            return
        deadline.check(f"upload to {stream}")
        usable = deadline.usable()
        try:
            # The retry policy fails a Retry-After the deadline (in the context) cannot hold; the outer bound holds
            # the rest; azure-core's timeout only spares it an attempt that cannot finish.
            with deadline.applied():
                async with asyncio.timeout(usable):
                    await self._client.upload(
                        rule_id=self._dcr, stream_name=stream, logs=io.BytesIO(body), timeout=usable
                    )
        except TimeoutError as exc:
            raise deadline.expire(f"upload to {stream}") from exc
        except (ServiceRequestTimeoutError, ServiceResponseTimeoutError) as exc:
            if deadline.usable() > 1:
                raise
            raise deadline.expire(f"upload to {stream}") from exc


def _answered_by_ingestion(exc: HttpResponseError) -> bool:
    """Whether the answer that raised ``exc`` came from Logs Ingestion (a stream's URL), not a token endpoint."""
    request = getattr(exc.response, "request", None)
    return "/dataCollectionRules/" in str(getattr(request, "url", ""))


def _token_hint() -> str:
    if identity_endpoint_known():
        return "check AZURE_CLIENT_ID (the function app's identity); the message is retried"
    return "off Azure this is your own identity: sign in with `az login` (DefaultAzureCredential)"


def _ingestion_error(stream: str, exc: HttpResponseError) -> IngestionError:
    code = ""
    if exc.error is not None and getattr(exc.error, "code", None):
        code = quoted_text(exc.error.code, CODE_LIMIT)
    status = exc.status_code or 0
    hints = {
        401: "the identity's token was refused: check AZURE_CLIENT_ID and the identity, and that AZURE_CLOUD is "
        "the workspace's cloud",
        403: "the identity lacks Monitoring Metrics Publisher on the DCR (new role assignments take up to 30 minutes)",
        404: "check LOGS_DCR_IMMUTABLE_ID and LOGS_INGESTION_ENDPOINT",
        400: f"the DCR does not accept these rows: check that {stream} is declared with the columns of "
        "irm_connector/columns.json (redeploy infra/)",
    }
    hint = hints.get(status, "the message is retried")
    # A fault on the way (a gateway, throttling, a timeout) is not the DCR refusing the rows, which README's
    # troubleshooting ties to a column or the DCR.
    what = "failed for" if status >= 500 or status in _TRANSIENT_POST_STATUS else "refused rows for"
    if status == 429:
        return _throttled(stream, code, retry_after_of(getattr(exc.response, "headers", None) or {}))
    kind = IngestionRefusedError if status in REFUSED_STATUS else IngestionError
    message = f"Logs Ingestion {what} {stream} (HTTP {status}{', ' + code if code else ''}): {hint}"
    return kind(message, status=status, code=code, stream=stream)


def _throttled(stream: str, code: str, retry_after: float | None) -> IngestionThrottledError:
    waited = "" if retry_after is None else f", Retry-After {retry_after:.0f} s"
    return IngestionThrottledError(
        f"Logs Ingestion throttled {stream} (HTTP 429{', ' + code if code else ''}{waited}): the DCR's limits a "
        "minute (requests, bytes) are spent, as in a catch-up",
        retry_after=retry_after, status=429, code=code, stream=stream,
    )  # fmt: skip
