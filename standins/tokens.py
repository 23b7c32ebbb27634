"""The tokens Entra ID issues, shared in-process with the services that check them.

Real access tokens are JWTs the services validate by signature; the stand-ins only need
"was this issued, for which audience, tenant and client, and is it still valid", so tokens
are opaque random strings looked up here. A short ``lifetime`` lets tests watch msal and
azure-identity refresh (msal never reuses a cached token with under 5 minutes left).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass


def normalize_audience(value: str) -> str:
    """``https://host/.default`` or ``https://host/`` → ``https://host`` (how audiences compare).

    azure-monitor-ingestion asks for ``https://monitor.azure.com//.default`` in some versions and
    azure-identity turns a scope into a resource by cutting ``/.default``; all of these must
    name the same audience.
    """
    value = value.strip()
    if value.endswith("/.default"):
        value = value[: -len("/.default")]
    return value.rstrip("/")


@dataclass(frozen=True)
class TokenInfo:
    """What a service learns from a valid bearer token."""

    token: str
    audience: str
    tenant_id: str
    client_id: str
    object_id: str
    kind: str  # "client_secret", "client_certificate" or "managed_identity"
    issued_at: float
    expires_at: float

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at


class TokenRegistry:
    """Thread-safe store of issued tokens (the servers run in a background thread)."""

    def __init__(self, lifetime: float = 3599.0) -> None:
        self.lifetime = lifetime
        self._lock = threading.Lock()
        self._tokens: dict[str, TokenInfo] = {}
        self._issued: Counter[str] = Counter()

    def issue(
        self,
        *,
        audience: str,
        tenant_id: str,
        client_id: str,
        kind: str,
        object_id: str | None = None,
        lifetime: float | None = None,
    ) -> TokenInfo:
        now = time.time()
        info = TokenInfo(
            token=secrets.token_urlsafe(32),
            audience=normalize_audience(audience),
            tenant_id=tenant_id,
            client_id=client_id,
            object_id=object_id or client_id,
            kind=kind,
            issued_at=now,
            expires_at=now + (self.lifetime if lifetime is None else lifetime),
        )
        with self._lock:
            self._tokens[info.token] = info
            self._issued[kind] += 1
        return info

    def validate(self, token: str, audience: str) -> TokenInfo | None:
        """The token's info if it was issued, has not expired and is for ``audience``."""
        with self._lock:
            info = self._tokens.get(token)
        if info is None or info.expired() or info.audience != normalize_audience(audience):
            return None
        return info

    def lookup(self, token: str) -> TokenInfo | None:
        """The token's info whatever its state (to tell "expired" from "unknown")."""
        with self._lock:
            return self._tokens.get(token)

    def revoke_all(self) -> None:
        """Forget every token, as if keys rolled: clients must fetch new ones."""
        with self._lock:
            self._tokens.clear()

    def issued(self, kind: str | None = None) -> int:
        """How many tokens were issued (of one kind, or in all)."""
        with self._lock:
            return self._issued[kind] if kind else sum(self._issued.values())

    def audiences(self) -> set[str]:
        """The audiences of the tokens issued and not forgotten."""
        with self._lock:
            return {info.audience for info in self._tokens.values()}

    def issued_by_kind(self) -> dict[str, int]:
        with self._lock:
            return dict(self._issued)
