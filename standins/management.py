"""Office 365 Management Activity API stand-in.

Why: the poller's correctness lives in the listing rules (window limits, paging, late-listed
blobs, expired content, throttling codes), so the stand-in enforces the documented rules
(shared/reference/apis.md) and answers with the real ``{"error":{"code":"AFxxxxx"}}`` bodies.

Routes, under both ``/api/v1.0/{tenant}/activity/feed`` and ``/api/v1/{tenant}/activity/feed``
(fault-injection route name in brackets):

- ``POST /subscriptions/start?contentType=`` [``start``], ``POST /subscriptions/stop`` [``stop``]
- ``GET /subscriptions/list`` [``subscriptions``], ``GET /subscriptions/notifications``
  [``notifications``] (always empty: no webhooks here)
- ``GET /subscriptions/content?contentType=&startTime=&endTime=&nextPage=`` [``list``]
- ``GET /audit/{contentId}`` [``content``]
- any other path [``other``]: 404, logged (so a test sees a token sent where it should not go)

Time: listing and expiry follow :attr:`ManagementStandIn.clock` (settable) so tests can move
through days; token expiry stays on real time (msal and azure-identity cache on real time).
A blob is listed once ``clock.now() >= available_at``; ``available_at > content_created``
models a late-listed blob that shows up in a window the poller already listed.

Subscriptions: "content from while stopped is never available" (apis.md). A blob is listed only when it was
created while its content type's subscription was enabled: since a start through the API, or, for one a test
sets up as enabled with :meth:`ManagementStandIn.set_subscription`, since always (a tenant subscribed long ago).
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from standins.base import CLIENT_ID, ApiError, Clock, ServiceStandIn, json_response
from standins.tokens import TokenInfo, TokenRegistry

CONTENT_TYPES = ("Audit.AzureActiveDirectory", "Audit.Exchange", "Audit.SharePoint", "Audit.General", "DLP.All")
TIME_FORMATS = ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S")
MAX_WINDOW = timedelta(hours=24)
MAX_LOOKBACK = timedelta(days=7)
RETENTION = timedelta(days=7)
GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
CONTENT_ID_RE = re.compile(r"^\d{23}\$\d{23}\$[a-z_.]+\$[A-Za-z_.]+\$[a-z]+\d{4}$")


def format_timestamp(value: datetime) -> str:
    """``2026-06-29T20:03:19.123Z``: the shape of ``contentCreated`` / ``contentExpiration``."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass
class Blob:
    """One content blob: its records and the times that govern listing and retrieval."""

    tenant_id: str
    content_type: str
    content_id: str
    content_created: datetime
    available_at: datetime
    expiration: datetime
    records: list[dict[str, Any]]
    body: bytes
    #: extra response headers of the content GET (e.g. a Content-Encoding that lies)
    headers: dict[str, str] = field(default_factory=dict)
    #: a contentUri to list instead of the real one (hostile-listing tests)
    content_uri: str | None = None
    #: a contentType to list instead of the one asked for (a listing that spells it otherwise)
    listed_content_type: str | None = None

    def sort_key(self) -> tuple[datetime, str]:
        return (self.content_created, self.content_id)


@dataclass
class TenantState:
    tenant_id: str
    audit_enabled: bool = True
    subscriptions: dict[str, str] = field(default_factory=dict)  # contentType -> enabled|disabled
    admin_disabled: set[str] = field(default_factory=set)
    blobs: dict[str, Blob] = field(default_factory=dict)
    #: contentType -> the stretches it was enabled, [since, until) (until None: still enabled)
    enabled: dict[str, list[tuple[datetime, datetime | None]]] = field(default_factory=dict)

    def set_status(self, content_type: str, status: str | None, at: datetime) -> None:
        """The subscription's status from ``at`` on (``at`` = datetime.min: enabled since always)."""
        stretches = self.enabled.setdefault(content_type, [])
        running = bool(stretches) and stretches[-1][1] is None
        if status == "enabled" and not running:
            stretches.append((at, None))
        elif status != "enabled" and running:
            stretches[-1] = (stretches[-1][0], at)
        if status is None:
            self.subscriptions.pop(content_type, None)
        else:
            self.subscriptions[content_type] = status

    def available(self, blob: Blob) -> bool:
        """Whether ``blob`` was created while its content type was subscribed."""
        return any(since <= blob.content_created and (until is None or blob.content_created < until)
                   for since, until in self.enabled.get(blob.content_type, ()))  # fmt: skip


@dataclass(frozen=True)
class _Page:
    tenant_id: str
    content_type: str
    start: datetime
    end: datetime
    after: tuple[datetime, str]


def _af(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> ApiError:
    return ApiError(status, code, message, headers=headers)


class ManagementStandIn(ServiceStandIn):
    """The Management Activity API for one or more simulated tenants."""

    routes = frozenset({"start", "stop", "subscriptions", "notifications", "list", "content", "other"})

    def __init__(
        self,
        tokens: TokenRegistry,
        *,
        clock: Clock | None = None,
        page_size: int = 200,
        next_page_header: str = "NextPageUri",
        already_enabled_status: int = 200,
        strict_time_format: bool = True,
        region: str = "emea0026",
    ) -> None:
        super().__init__()
        self.tokens = tokens
        self.clock = clock or Clock()
        #: Items per listing page; a fuller result gets a NextPageUri header.
        self.page_size = page_size
        #: ``NextPageUri`` (most docs) or ``NextPageUrl`` (one page of the docs).
        self.next_page_header = next_page_header
        #: a NextPageUri to send instead of the real one (hostile-listing tests)
        self.next_page_override: str | None = None
        #: send NextPageUri as a path and query only, as a gateway rewriting it may
        self.next_page_relative = False
        #: answer a page asked for by its token with that same token as the next (a loop: hostile-listing tests)
        self.next_page_repeats = False
        #: apis.md, observed: a startTime that is a blob's exact contentCreated "can return a partial result". True
        #: leaves such a blob out of every answer (the worst case); the documented rule, start inclusive, is False.
        self.exact_start_misses = False
        #: Starting an enabled subscription: 200 (documented) or 400 AF20024 (observed).
        self.already_enabled_status = already_enabled_status
        #: Only the three documented time formats; False accepts any ISO-8601 (with zone).
        self.strict_time_format = strict_time_format
        self.region = region
        self._tenants: dict[str, TenantState] = {}
        self._default_tenant: str | None = None
        self._pages: dict[str, _Page] = {}
        self._revoked_clients: set[str] = set()
        self._seq = itertools.count()

    # ---- state (thread-safe; called from tests) ------------------------------------------
    @property
    def api_root(self) -> str:
        """The API root and token audience (the client asks ``{api_root}/.default``)."""
        return self.base_url

    def add_tenant(self, tenant_id: str, *, audit_enabled: bool = True) -> None:
        with self._lock:
            self._tenants.setdefault(tenant_id, TenantState(tenant_id)).audit_enabled = audit_enabled
            if self._default_tenant is None:
                self._default_tenant = tenant_id

    def set_audit_enabled(self, enabled: bool, tenant: str | None = None) -> None:
        """Unified audit logging off makes every call answer AF20011 (tenant does not exist)."""
        with self._lock:
            self._tenant(tenant).audit_enabled = enabled

    def set_subscription(self, content_type: str, status: str | None, tenant: str | None = None) -> None:
        """``"enabled"``, ``"disabled"`` or ``None`` (no subscription at all)."""
        with self._lock:
            # A test's setup: None is a tenant that never subscribed; a first "enabled" is a subscription from
            # always (content of any age is there); after that, changes take effect now, as the API's own start
            # and stop do.
            state = self._tenant(tenant)
            if status is None:
                state.enabled.pop(content_type, None)
            first = status == "enabled" and not state.enabled.get(content_type)
            state.set_status(content_type, status, datetime.min.replace(tzinfo=UTC) if first else self.clock.now())

    def subscription(self, content_type: str, tenant: str | None = None) -> str | None:
        with self._lock:
            return self._tenant(tenant).subscriptions.get(content_type)

    def set_admin_disabled(self, content_type: str, disabled: bool = True, tenant: str | None = None) -> None:
        """An admin disabled this content type: ``start`` answers AF20023 and listing AF20022."""
        with self._lock:
            state = self._tenant(tenant)
            if disabled:
                state.admin_disabled.add(content_type)
                if content_type in state.subscriptions:
                    state.set_status(content_type, "disabled", self.clock.now())
            else:
                state.admin_disabled.discard(content_type)

    def revoke_permission(self, client_id: str, revoked: bool = True) -> None:
        """The app lost ActivityFeed.Read: its calls answer 401 AF10001."""
        with self._lock:
            if revoked:
                self._revoked_clients.add(client_id)
            else:
                self._revoked_clients.discard(client_id)

    def add_blob(
        self,
        content_type: str,
        records: list[dict[str, Any]],
        *,
        content_created: datetime | None = None,
        available_at: datetime | None = None,
        expiration: datetime | None = None,
        tenant: str | None = None,
        content_id: str | None = None,
        raw_body: bytes | None = None,
        headers: dict[str, str] | None = None,
        content_uri: str | None = None,
    ) -> str:
        """Publish a blob; returns its contentId. Times default to "now" on :attr:`clock`.
        ``raw_body`` serves those bytes instead of the records (broken or hostile content)."""
        created = _aware(content_created) if content_created else self.clock.now()
        available = _aware(available_at) if available_at else created
        expires = _aware(expiration) if expiration else created + RETENTION
        with self._lock:
            state = self._tenant(tenant)
            if content_id is None:
                content_id = self._new_content_id(content_type, created)
            state.blobs[content_id] = Blob(
                tenant_id=state.tenant_id,
                content_type=content_type,
                content_id=content_id,
                content_created=created,
                available_at=available,
                expiration=expires,
                records=records,
                body=raw_body if raw_body is not None else json.dumps(records, separators=(",", ":")).encode(),
                headers=dict(headers or {}),
                content_uri=content_uri,
            )
        return content_id

    def remove_blob(self, content_id: str, tenant: str | None = None) -> None:
        with self._lock:
            self._tenant(tenant).blobs.pop(content_id, None)

    def blobs(self, content_type: str | None = None, tenant: str | None = None) -> list[Blob]:
        with self._lock:
            items = list(self._tenant(tenant).blobs.values())
        return sorted((b for b in items if content_type is None or b.content_type == content_type), key=Blob.sort_key)

    def content_uri(self, content_id: str, tenant: str | None = None) -> str:
        with self._lock:
            tenant_id = self._tenant(tenant).tenant_id
        return f"{self.api_root}/api/v1.0/{tenant_id}/activity/feed/audit/{content_id}"

    def publisher_identifiers(self, route: str | None = None) -> list[str | None]:
        """The PublisherIdentifier of each request (None where it was missing)."""
        return [r.publisher_identifier for r in self.requests(route)]

    def _tenant(self, tenant: str | None) -> TenantState:
        tenant = tenant or self._default_tenant
        if tenant is None or tenant not in self._tenants:
            raise KeyError(f"tenant {tenant!r} was not added to the management stand-in")
        return self._tenants[tenant]

    def _new_content_id(self, content_type: str, created: datetime) -> str:
        stamp = created.strftime("%Y%m%d%H%M%S") + f"{next(self._seq) % 10**9:09d}"
        lower = content_type.lower().replace(".", "_")
        return f"{stamp}${stamp}${lower}${content_type.replace('.', '_')}${self.region}"

    # ---- HTTP --------------------------------------------------------------------------
    def build_app(self) -> web.Application:
        app = web.Application()
        base = r"/api/{version:v1\.0|v1}/{tenant}/activity/feed"
        r = app.router
        r.add_post(f"{base}/subscriptions/start", self.routed("start", self._start))
        r.add_post(f"{base}/subscriptions/stop", self.routed("stop", self._stop))
        r.add_get(f"{base}/subscriptions/list", self.routed("subscriptions", self._list_subs))
        r.add_get(
            f"{base}/subscriptions/notifications",
            self.routed("notifications", self._notifications),
        )
        r.add_get(f"{base}/subscriptions/content", self.routed("list", self._content_list))
        r.add_get(f"{base}/audit/{{content_id}}", self.routed("content", self._content))
        # Any other path, logged as route "other": a test can see a request (and its token) that went
        # outside the API's routes, e.g. after the client normalized a hostile URL.
        r.add_route("*", "/{tail:.*}", self.routed("other", self._unknown))
        return app

    def default_fault_code(self, status: int) -> str:
        if status in (403, 429):
            return "AF429"
        if status >= 500:
            return "AF50000"
        return "AF20003"

    def _authorize(self, request: web.Request) -> TenantState:
        """Token, then tenant checks, in the order the service reports them."""
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        info: TokenInfo | None = self.tokens.validate(token, self.api_root) if token else None
        if info is None:
            known = self.tokens.lookup(token) if token else None
            reason = (
                "no bearer token"
                if not token
                else "the token is not for this audience"
                if known is not None and not known.expired()
                else "the token has expired"
                if known is not None
                else "the token is not valid"
            )
            raise _af(
                401,
                "AF10001",
                f"Authorization has been denied for this request ({reason}).",
                headers={"WWW-Authenticate": 'Bearer realm="manage.office.com", error="invalid_token"'},
            )
        request[CLIENT_ID] = info.client_id
        tenant = request.match_info["tenant"]
        with self._lock:
            revoked = info.client_id in self._revoked_clients
        if revoked:
            raise _af(
                401,
                "AF10001",
                "The permission set () sent in the request does not include the expected permission ActivityFeed.Read.",
            )
        if not GUID_RE.match(tenant):
            raise _af(400, "AF20013", f"Tenant ID '{tenant}' is not a valid GUID.")
        if info.tenant_id.lower() != tenant.lower():
            raise _af(
                401,
                "AF20010",
                f"The tenant ID passed in the URL ({tenant}) does not match the tenant ID "
                f"passed in the access token ({info.tenant_id}).",
            )
        with self._lock:
            state = self._tenants.get(tenant)
            if state is None or not state.audit_enabled:
                raise _af(400, "AF20011", f"Tenant {tenant} does not exist.")
            return state

    async def _unknown(self, request: web.Request) -> web.Response:
        raise _af(404, "", f"No route for {request.path}.")

    @staticmethod
    def _content_type(request: web.Request) -> str:
        value = request.query.get("contentType")
        if not value:
            raise _af(400, "AF20001", "The contentType parameter is required.")
        for known in CONTENT_TYPES:
            if known.lower() == value.lower():
                return known
        raise _af(400, "AF20020", f"The specified content type is not valid: {value}.")

    async def _start(self, request: web.Request) -> web.Response:
        state = self._authorize(request)
        content_type = self._content_type(request)
        with self._lock:
            if content_type in state.admin_disabled:
                raise _af(400, "AF20023", "The subscription was disabled by an administrator.")
            if state.subscriptions.get(content_type) == "enabled" and self.already_enabled_status != 200:
                raise _af(
                    self.already_enabled_status,
                    "AF20024",
                    "The subscription is already enabled. No property change.",
                )
            state.set_status(content_type, "enabled", self.clock.now())  # content from now on
        return json_response({"contentType": content_type, "status": "enabled", "webhook": None})

    async def _stop(self, request: web.Request) -> web.Response:
        state = self._authorize(request)
        content_type = self._content_type(request)
        with self._lock:
            if content_type not in state.subscriptions:
                raise _af(400, "AF20022", "No subscription found for the specified content type.")
            state.set_status(content_type, "disabled", self.clock.now())
        return web.Response(status=200)

    async def _list_subs(self, request: web.Request) -> web.Response:
        state = self._authorize(request)
        with self._lock:
            items = [
                {"contentType": ct, "status": status, "webhook": None}
                for ct, status in sorted(state.subscriptions.items())
            ]
        return json_response(items)

    async def _notifications(self, request: web.Request) -> web.Response:
        state = self._authorize(request)
        content_type = self._content_type(request)
        with self._lock:
            if state.subscriptions.get(content_type) != "enabled":
                raise _af(400, "AF20022", "No subscription found for the specified content type.")
        return json_response([])

    def _parse_time(self, name: str, value: str) -> datetime:
        if self.strict_time_format:
            for fmt in TIME_FORMATS:
                try:
                    return datetime.strptime(value, fmt).replace(tzinfo=UTC)
                except ValueError:
                    continue
        else:
            try:
                return _aware(datetime.fromisoformat(value.replace("Z", "+00:00")))
            except ValueError:
                pass
        raise _af(
            400,
            "AF20030",
            f"{name} '{value}' is not valid; use YYYY-MM-DD, YYYY-MM-DDTHH:MM or YYYY-MM-DDTHH:MM:SS (UTC).",
        )

    def _window(self, request: web.Request) -> tuple[datetime, datetime]:
        start_raw, end_raw = request.query.get("startTime"), request.query.get("endTime")
        now = self.clock.now()
        if not start_raw and not end_raw:
            return now - MAX_WINDOW, now
        if not start_raw or not end_raw:
            raise _af(400, "AF20030", "Start time and end time must both be specified (or both omitted).")
        start, end = self._parse_time("startTime", start_raw), self._parse_time("endTime", end_raw)
        if start >= end:
            raise _af(400, "AF20055", "Start time must be before end time.")
        if end - start > MAX_WINDOW:
            raise _af(
                400,
                "AF20030",
                "Start time and end time must both be specified (or both omitted) and must be less than "
                "or equal to 24 hours apart, with the start time no more than 7 days in the past.",
            )
        if start < now - MAX_LOOKBACK:
            raise _af(400, "AF20055", "Start time cannot be more than 7 days in the past.")
        return start, end

    async def _content_list(self, request: web.Request) -> web.Response:
        state = self._authorize(request)
        content_type = self._content_type(request)
        with self._lock:
            if state.subscriptions.get(content_type) != "enabled":
                raise _af(400, "AF20022", "No subscription found for the specified content type.")
        token = request.query.get("nextPage")
        if token:
            with self._lock:
                page = self._pages.get(token)
            if page is None or page.tenant_id != state.tenant_id or page.content_type != content_type:
                raise _af(400, "AF20031", "Invalid nextPage Input: " + token)
            start, end, after = page.start, page.end, page.after
        else:
            start, end = self._window(request)
            after = None
        now = self.clock.now()
        with self._lock:
            matching = sorted(
                (
                    b
                    for b in state.blobs.values()
                    if b.content_type == content_type
                    and (start < b.content_created or (start == b.content_created and not self.exact_start_misses))
                    and b.content_created < end
                    and b.available_at <= now
                    and state.available(b)
                    and (after is None or b.sort_key() >= after)
                ),
                key=Blob.sort_key,
            )
            page_items = matching[: self.page_size]
            headers: dict[str, str] = {}
            if len(matching) > self.page_size:
                next_token = token if token and self.next_page_repeats else secrets.token_hex(12)
                self._pages.setdefault(
                    next_token, _Page(state.tenant_id, content_type, start, end, matching[self.page_size].sort_key())
                )
                query = urlencode(
                    {
                        "contentType": content_type,
                        "startTime": start.strftime("%Y-%m-%dT%H:%M:%S"),
                        "endTime": end.strftime("%Y-%m-%dT%H:%M:%S"),
                        "nextPage": next_token,
                    }
                )
                path = f"/api/v1/{state.tenant_id}/activity/feed/subscriptions/content?{query}"
                headers[self.next_page_header] = self.next_page_override or (
                    path if self.next_page_relative else f"{self.api_root}{path}"
                )
        items = [
            {
                "contentType": b.listed_content_type or b.content_type,
                "contentId": b.content_id,
                "contentUri": b.content_uri
                or f"{self.api_root}/api/v1.0/{b.tenant_id}/activity/feed/audit/{b.content_id}",
                "contentCreated": format_timestamp(b.content_created),
                "contentExpiration": format_timestamp(b.expiration),
            }
            for b in page_items
        ]
        return json_response(items, headers=headers)

    def service_time(self) -> datetime:
        """Answers are dated by the clock the service keeps its 7 days and windows by, moved or not."""
        return self.clock.now()

    async def _content(self, request: web.Request) -> web.Response:
        state = self._authorize(request)
        content_id = request.match_info["content_id"]
        with self._lock:
            blob = state.blobs.get(content_id)
        if blob is None:
            if not CONTENT_ID_RE.match(content_id):
                raise _af(400, "AF20052", f"Content ID {content_id} in the URL is invalid.")
            raise _af(400, "AF20050", f"The specified content ({content_id}) does not exist.")
        with self._lock:
            # "When a subscription is stopped, ... you will not be able to retrieve available content."
            subscribed = state.subscriptions.get(blob.content_type) == "enabled"
        if not subscribed:
            raise _af(400, "AF20022", "No subscription found for the specified content type.")
        if self.clock.now() > blob.expiration:
            raise _af(
                400,
                "AF20051",
                f"Content requested with the key {content_id} has already expired. "
                "Content older than 7 days cannot be retrieved.",
            )
        return web.Response(body=blob.body, content_type="application/json", charset="utf-8", headers=blob.headers)
