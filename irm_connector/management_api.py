"""Talking to the Office 365 Management Activity API.

Every call goes through :meth:`ManagementActivityClient._request`, which holds the rules that matter:
the per-tenant request budget, retries with exponential backoff and jitter that honour ``Retry-After``,
dispatch on the body's ``AFxxxxx`` code as well as the status (throttling arrives as 429 *or* as 403 with
``AF429``), one token refresh on a 401, and a refusal to send the bearer token to any URL that is not
HTTPS under the configured API root and tenant (:meth:`ManagementActivityClient.check_url`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from ._network import network_cause
from ._tls import EnvProxy
from .api_answers import error_of, json_of, retry_after_of
from .auth import ManagementTokenProvider
from .body_budget import BodyReader
from .deadline import Deadline, current_deadline, within
from .errors import (
    ApiUnreachableError,
    AuthenticationError,
    DeadlineError,
    InvalidPageError,
    ManagementApiError,
    StateError,
    TransientApiError,
    UnreadableAnswerError,
    management_api_error,
)
from .feed_urls import FeedUrls
from .metrics import metrics
from .models import ContentBlob, parse_http_date
from .windows import Window

__all__ = ["ManagementActivityClient", "RequestGate", "RequestStats", "RetryPolicy", "next_page_url"]

log = logging.getLogger(__name__)

_TRANSIENT_STATUS = {408, 500, 502, 503, 504}
#: A response's body read whole; the processor reads blobs through its body budget instead (body_budget.py).
_READ: BodyReader = aiohttp.ClientResponse.read


class RequestGate(Protocol):
    """The tenant's request budget (request_budget.py)."""

    async def acquire(self) -> float:
        """Return 0 when one request may be sent now, or the seconds left of a wait the API asked of the tenant
        (nothing reserved then)."""
        ...

    async def pause(self, seconds: float) -> None:
        """Keep the tenant's requests back for ``seconds``, in every instance: the API asked it to wait."""
        ...

    def service_time(self) -> datetime | None:
        """The storage service's time, once an answer told it."""
        ...


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for throttled and transient calls: ``base * 2**attempt`` with full jitter, capped (a throttle
    that names no wait: fewer tries, further apart); ``Retry-After`` wins when the service sends it; a longer one
    than ``max_retry_after`` ends the call at once (:attr:`TransientApiError.retry_after`), so that the caller
    waits it out instead of asking again early."""

    attempts: int = 6
    base: float = 0.5
    cap: float = 30.0
    max_retry_after: float = 120.0
    timeout: float = 60.0
    #: A throttle that names no wait (403 ``AF429``, apis.md) is tried this often in one call, at least
    #: ``throttled_base * 2**attempt`` apart. The tenant's quota is counted per minute: the fault backoff's six
    #: tries within about 15 s were throttled again and counted against it. Past them the caller waits longer
    #: (a download is put off a minute, a listing waits for the next run).
    throttled_attempts: int = 3
    throttled_base: float = 2.0

    def _names_a_wait(self, retry_after: float | None, throttled: bool) -> bool:
        # A throttle's Retry-After of 0 (or a date past) is no wait: taken at its word, the retries went out at once,
        # against the quota of the minute that throttled them.
        return retry_after is not None and not (throttled and retry_after < self.throttled_base)

    def delay(self, attempt: int, retry_after: float | None, *, throttled: bool = False) -> float:
        if retry_after is not None and self._names_a_wait(retry_after, throttled):
            return min(max(retry_after, 0.0), self.max_retry_after)
        if throttled:
            # Jittered above a floor: full jitter's waits near zero would ask again within the same minute.
            least = min(self.cap, self.throttled_base * 2**attempt)
            return random.uniform(least, 2 * least)  # noqa: S311 - jitter, not crypto
        return random.uniform(0, min(self.cap, self.base * 2**attempt))  # noqa: S311 - jitter, not crypto

    def tries(self, error: TransientApiError, retry_after: float | None) -> int:
        """How many tries a call failing with ``error`` gets in all."""
        if error.throttled and not self._names_a_wait(retry_after, True):
            return min(self.throttled_attempts, self.attempts)
        return self.attempts


@dataclass
class RequestStats:
    """What the client did, for logs, metrics and the benchmark."""

    requests: int = 0
    throttled: int = 0
    retried: int = 0
    by_operation: dict[str, int] = field(default_factory=dict)


def next_page_url(request_url: str, next_page: str) -> str:
    """The URL a ``NextPageUri`` names: an absolute one as it is, a relative one (a path and query, as a proxy or
    a gateway may rewrite it) resolved against the URL of the request it answered. The result still goes through
    the token's URL check: a reference to another host resolves to that host, and is refused there."""
    try:
        return str(URL(request_url).join(URL(next_page)))
    except (ValueError, TypeError):
        return next_page  # refused by the check, naming the text as it came


class ManagementActivityClient:
    """An async client of one tenant's activity feed. Use it with ``async with``; it does not own the
    aiohttp session or the token provider it is given."""

    def __init__(
        self,
        *,
        api_root: str,
        tenant_id: str,
        publisher_id: str,
        tokens: ManagementTokenProvider,
        session: aiohttp.ClientSession,
        limiter: RequestGate,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self._root = api_root.rstrip("/")
        self._urls = FeedUrls(self._root, tenant_id)
        self._dims = {"tenant_id": tenant_id}
        self._base = f"{self._root}/api/v1.0/{tenant_id}/activity/feed"
        self._publisher = publisher_id
        self._tokens = tokens
        self._session = session
        self._proxy = EnvProxy()  # the session does not trust the environment: see EnvProxy
        self._limiter = limiter
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self.stats = RequestStats()
        #: The ``Date`` of each content type's latest listing answer (a refusal's too): see :meth:`answered_at`.
        self._answered: dict[str, datetime] = {}
        #: When the latest tenant wait this client told of ends (monotonic): each is told once, not once per call.
        self._told_until = 0.0

    async def __aenter__(self) -> ManagementActivityClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def answered_at(self, content_type: str) -> datetime | None:
        """The Management API's time (its ``Date``) at its latest listing answer for ``content_type``: its own
        clock, which the watermark must not pass and which places its 7-day edge. The latest answer's, not the
        latest time ever answered, and per content type: one wrong ``Date`` (a proxy's) lasts until that content
        type's next answer, not for the life of the process."""
        return self._answered.get(content_type)

    # -- public operations -------------------------------------------------------------------------

    async def start_subscription(self, content_type: str) -> str:
        """Start (or confirm) the subscription; returns its status. AF20024 "already enabled" is success."""
        try:
            body, _ = await self._request(
                "POST",
                f"{self._base}/subscriptions/start",
                operation="start",
                content_type=content_type,
                params={"contentType": content_type},
                # Asked once: apis.md wants 15 minutes between start requests, and retries seconds apart are
                # start requests too. The poller asks again 15 minutes on; the command line, when run again.
                attempts=1,
            )
        except ManagementApiError as exc:
            if exc.code == "AF20024":
                return "enabled"
            raise
        data = json_of(body, "start", content_type)
        return str(data.get("status", "enabled")) if isinstance(data, dict) else "enabled"

    async def stop_subscription(self, content_type: str) -> None:
        await self._request(
            "POST",
            f"{self._base}/subscriptions/stop",
            operation="stop",
            content_type=content_type,
            params={"contentType": content_type},
        )

    async def list_subscriptions(self) -> list[dict[str, Any]]:
        body, _ = await self._request("GET", f"{self._base}/subscriptions/list", operation="subscriptions")
        data = json_of(body, "subscriptions", "")
        if not isinstance(data, list):
            raise UnreadableAnswerError("subscription list is not a JSON array", operation="subscriptions")
        return [d for d in data if isinstance(d, dict)]

    async def list_content(
        self,
        content_type: str,
        window: Window,
        *,
        guard: Callable[[], None] | None = None,
        deadline: Deadline | None = None,
    ) -> AsyncGenerator[list[ContentBlob], None]:
        """Yield the listing of ``window`` page by page, following ``NextPageUri`` to the end. ``guard`` runs
        before every request, retries included, and again once its token and budget slot are in hand, and may
        raise to stop (the poller's lease check)."""
        url: str | None = f"{self._base}/subscriptions/content"
        params: dict[str, str] | None = {"contentType": content_type, **window.params()}
        followed: set[str] = set()
        while url is not None:
            body, headers = await self._request(
                "GET", url, operation="list", content_type=content_type, params=params, guard=guard, deadline=deadline
            )
            data = json_of(body, "list", content_type)
            if not isinstance(data, list):
                raise UnreadableAnswerError(
                    "content listing is not a JSON array", operation="list", content_type=content_type
                )
            page: list[ContentBlob] = []
            for item in data:
                try:
                    # The type asked for, as its messages must name it (one the queue does not know is refused
                    # there): an entry spelling it otherwise ("audit.general") would be queued, marked, and parked.
                    page.append(ContentBlob.from_api({**item, "contentType": content_type}))
                except (KeyError, TypeError, ValueError, AttributeError):
                    raise UnreadableAnswerError(
                        "content listing has an entry without a readable contentId, contentUri, contentCreated or "
                        "contentExpiration",
                        operation="list",
                        content_type=content_type,
                    ) from None
            yield page
            next_url = (headers.get("NextPageUri") or headers.get("NextPageUrl") or "").strip()
            url, params = (next_page_url(url, next_url), None) if next_url else (None, None)
            if url is not None:
                if url in followed:
                    # A loop (a gateway's cache, a fault of the service): followed, the listing would never end.
                    raise InvalidPageError(
                        "the NextPageUri names a page already listed in this window",
                        operation="list", content_type=content_type,
                    )  # fmt: skip
                followed.add(url)

    async def get_content(
        self, content_uri: str, *, content_type: str = "", read: BodyReader = _READ, deadline: Deadline | None = None
    ) -> bytes:
        """Download one content blob: the raw JSON array, as ``read`` reads it, retrying within ``deadline``."""
        body, _ = await self._request(
            "GET", content_uri, operation="content", content_type=content_type, read=read, deadline=deadline
        )
        return body

    def check_url(self, url: str, what: str = "URL") -> URL:
        """``url`` as the request will be made, if it may carry the token (see :class:`FeedUrls`); raises
        :class:`UntrustedUrlError` otherwise."""
        return self._urls.check(url, what)

    # -- the one place that talks HTTP ---------------------------------------------------------------

    async def _request(
        self,
        method: str,
        url: str,
        *,
        operation: str,
        content_type: str = "",
        params: dict[str, str] | None = None,
        guard: Callable[[], None] | None = None,
        read: BodyReader = _READ,
        deadline: Deadline | None = None,
        attempts: int | None = None,
    ) -> tuple[bytes, CIMultiDictProxy[str]]:
        target = self.check_url(url, {"content": "contentUri", "list": "NextPageUri"}.get(operation, "URL"))
        # A call not handed a deadline (starting a subscription) keeps the invocation's, if it runs in one.
        deadline = deadline if deadline is not None else current_deadline()
        query = dict(params or {})
        if not any(name.lower() == "publisheridentifier" for name in target.query):
            query["PublisherIdentifier"] = self._publisher
        call = _Call(method, target, query, operation, content_type, read, deadline, guard)
        policy = self._retry if attempts is None else replace(self._retry, attempts=attempts)
        refresh_used = False
        for attempt in range(policy.attempts):
            call.check_guard()
            if deadline is not None:
                deadline.check(f"Management API {operation}")
            outcome = await self._attempt(call, refresh=False)
            if isinstance(outcome, _Unauthorized) and not refresh_used:
                # An expired or revoked token looks like any refusal (the API may even say AF10001):
                # one fresh token, then it is a real refusal.
                refresh_used = True
                outcome = await self._attempt(call, refresh=True)
            if isinstance(outcome, _Unauthorized):
                raise outcome.error
            if isinstance(outcome, tuple):
                return outcome
            if outcome.retry_after is not None and outcome.retry_after > policy.max_retry_after:
                # Honoured, not cut short: a request before the time the API named would be throttled again.
                raise outcome.handed_over(outcome.retry_after)
            tries = policy.tries(outcome.error, outcome.retry_after)
            if attempt + 1 >= tries:
                # Out of tries with a wait named: the caller keeps to it (puts the work off for it).
                raise outcome.handed_over(outcome.retry_after)
            self.stats.retried += 1
            metrics.requests_retried.add(1, self._dims)
            delay = policy.delay(attempt, outcome.retry_after, throttled=outcome.error.throttled)
            if outcome.error.operation == "token":
                # A token provider may answer from a cache for a while after a failure (msal does): wait that out.
                delay = max(delay, self._tokens.failure_replay)
            if deadline is not None and not deadline.allows(delay):
                if outcome.retry_after is not None or outcome.error.throttled:
                    # A throttle's wait is the API's: the caller puts the work off for it (the processor its
                    # message, the poller its content type), as for a Retry-After longer than a call waits. Failed
                    # to the host instead, its retries 30 s apart met the same throttle and parked the message.
                    raise outcome.handed_over(delay)
                # Any other wait the invocation cannot hold would end in the host killing the worker: fail now.
                raise deadline.expire(f"Management API {operation} ({outcome.error})", delay) from outcome.error
            log.warning(
                "Management API %s retry %d/%d in %.1fs: %s",
                operation, attempt + 1, tries - 1, delay, outcome.error,
                extra={"content_type": content_type, "operation": operation},
            )  # fmt: skip
            await self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _pause_tenant(self, wait: float, call: _Call) -> None:
        """Every instance keeps the API's wait: it throttles per tenant, and counts what it throttles."""
        try:
            await within("recording the API's Retry-After for the tenant", self._limiter.pause(wait),
                         deadline=call.deadline)  # fmt: skip
        except (StateError, DeadlineError) as exc:
            # This call keeps the wait all the same; the others learn of it from their own throttled answer.
            log.warning("Could not record the Management API's Retry-After for the other instances: %s", exc,
                        extra={"content_type": call.content_type, "operation": call.operation})  # fmt: skip

    def _tell_wait(self, paused: float, call: _Call) -> None:
        # A warning, as a retry is: at INFO the command line (`status`, `subscriptions`) sat silent through it.
        until = time.monotonic() + paused
        if until <= self._told_until + 1.0:  # the same wait, met by another call of this client
            return
        self._told_until = until
        log.warning("Management API requests wait %.0f s: the API asked the tenant to wait (Retry-After)", paused,
                    extra={"content_type": call.content_type, "operation": call.operation})  # fmt: skip

    async def _attempt(
        self, call: _Call, *, refresh: bool
    ) -> tuple[bytes, CIMultiDictProxy[str]] | _Retry | _Unauthorized:
        """One try: the answer, a retryable failure, or a 401; any other refusal raises."""
        try:
            # Entra ID or the identity endpoint hanging must not hold the invocation past its deadline either.
            token = await within("getting a token for the Management API", self._tokens.get_token(refresh=refresh),
                                 deadline=call.deadline)  # fmt: skip
        except AuthenticationError as exc:
            if not exc.transient:
                raise
            return _Retry(TransientApiError(str(exc), operation="token", content_type=call.content_type))
        # After the token: the budget's slot must still be running when the request goes out.
        while paused := await within("waiting for the tenant's request budget (O365_MAX_REQUESTS_PER_MINUTE)",
                                     self._limiter.acquire(), deadline=call.deadline):  # fmt: skip
            # Another call met a Retry-After, in this instance or another: asked now, the API throttles again. A wait
            # this call can hold costs it no try (a subscription start has one); a longer one is the caller's to keep.
            # Held, the wait leaves the request its timeout: a wait that used the invocation up failed it to the host.
            held = paused + self._retry.timeout
            if paused > self._retry.max_retry_after or (call.deadline is not None and not call.deadline.allows(held)):
                kept = TransientApiError(f"throttled (the API asked the tenant to wait {paused:.0f} s more)",
                                         code="AF429", operation=call.operation, content_type=call.content_type,
                                         answered_at=self._limiter.service_time())  # fmt: skip
                return _Retry(kept, paused)
            self._tell_wait(paused, call)
            await self._sleep(paused)
            call.check_guard()
        # The wait for a token or a budget slot can be long: a lease lost meanwhile stops the request here.
        call.check_guard()
        self.stats.requests += 1
        self.stats.by_operation[call.operation] = self.stats.by_operation.get(call.operation, 0) + 1
        try:
            async with self._session.request(
                call.method,
                call.url,
                params=call.query,
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=call.timeout(self._retry.timeout)),
                allow_redirects=False,
                **self._proxy.for_url(call.url),
            ) as response:
                body = await call.read(response)
                status, headers = response.status, response.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The cause named, and kept: "check service health" would send whoever reads it the wrong way when the
            # proxy's CA is not trusted or the host does not resolve.
            unreachable = ApiUnreachableError(
                f"cannot reach the Management API at {call.url.host} ({network_cause(exc)})",
                operation=call.operation, content_type=call.content_type,
            )  # fmt: skip
            unreachable.__cause__ = exc
            return _Retry(unreachable)
        if call.operation == "list":
            # A refusal's Date counts too: the poller's next windows end at the API's time, not at a fast clock's.
            answered = parse_http_date(headers.get("Date"))
            if answered is not None:
                self._answered[call.content_type] = answered
            else:  # none to read (a proxy that strips it): an earlier answer's, kept, capped every later watermark
                self._answered.pop(call.content_type, None)
        if 200 <= status < 300:
            return body, headers
        code, message = error_of(body)
        where: dict[str, Any] = {"status": status, "operation": call.operation, "content_type": call.content_type}
        when = parse_http_date(headers.get("Date"))
        if status == 429 or code == "AF429":
            self.stats.throttled += 1
            metrics.requests_throttled.add(1, self._dims)
            wait = retry_after_of(headers)
            said = "" if wait is None else f" (Retry-After {wait:.0f} s)"
            if wait is not None and wait > 0:
                await self._pause_tenant(wait, call)
            return _Retry(TransientApiError("throttled" + said, code=code or "AF429", answered_at=when, **where), wait)
        if status in _TRANSIENT_STATUS or code.startswith("AF5"):
            fault = TransientApiError(f"server fault: {message}", code=code, answered_at=when, **where)
            return _Retry(fault, retry_after_of(headers))
        error = management_api_error(status, code, message, call.operation, call.content_type)
        error.answered_at = when  # a subscription that went puts its download off by the API's clock too
        if status == 401:
            return _Unauthorized(error)
        raise error


@dataclass(frozen=True)
class _Call:
    method: str
    url: URL
    query: dict[str, str]
    operation: str
    content_type: str
    read: BodyReader
    deadline: Deadline | None = None
    guard: Callable[[], None] | None = None

    def check_guard(self) -> None:
        if self.guard is not None:
            self.guard()

    def timeout(self, http_timeout: float) -> float:
        """One attempt's timeout: HTTP_TIMEOUT, or what the invocation has left when that is less."""
        return http_timeout if self.deadline is None else max(self.deadline.cap(http_timeout), 0.001)


@dataclass(frozen=True)
class _Retry:
    error: TransientApiError
    retry_after: float | None = None

    def handed_over(self, wait: float | None) -> TransientApiError:
        """The error to raise to the caller, carrying the wait it is to keep (none: the host's retries decide)."""
        if wait is not None:
            self.error.retry_after = wait
        return self.error


@dataclass(frozen=True)
class _Unauthorized:
    error: ManagementApiError
