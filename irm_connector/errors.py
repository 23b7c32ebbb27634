"""Exceptions raised by the connector.

The hierarchy, drawn once so that a reader sees at a glance what can go wrong::

    ConnectorError
    ├── SettingsError                 a setting is missing or malformed
    ├── AuthenticationError           no token could be obtained for a service
    ├── ManagementApiError            the Management Activity API answered with an error
    │   ├── OperatorActionRequired    only a person can fix it (permission, tenant, disabled subscription)
    │   ├── SubscriptionMissing       AF20022: the content type has no subscription yet
    │   ├── InvalidWindow             AF20030 / AF20055: the listing window was refused
    │   ├── InvalidPage               AF20031: a NextPageUri token was refused
    │   ├── ContentUnavailable        AF20050 / AF20051 / AF20052 / 404: the blob is gone
    │   └── TransientApiError         throttling or a server fault that outlived the retries
    ├── UntrustedUrlError             a URL outside the configured API root and tenant
    ├── BadMessageError               a queue message that is not a content notification
    ├── IngestionError                the Logs Ingestion API refused rows
    └── StateError                    Table Storage or the queue failed

Every error's message names what was wrong and what to do; none carries a token, a secret or
record content, so they can be logged as they are.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BadMessageError",
    "ConnectorError",
    "ContentUnavailable",
    "IngestionError",
    "InvalidPage",
    "InvalidWindow",
    "ManagementApiError",
    "OperatorActionRequired",
    "SettingsError",
    "StateError",
    "SubscriptionMissing",
    "TransientApiError",
    "UntrustedUrlError",
]


class ConnectorError(Exception):
    """Base class of every error the connector raises on purpose."""


class SettingsError(ConnectorError):
    """A setting is missing or malformed; ``setting`` names it."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"setting {setting}: {problem}")
        self.setting = setting
        self.problem = problem


class AuthenticationError(ConnectorError):
    """A token for ``audience`` could not be obtained (wrong secret, missing consent, no identity).

    ``transient`` is true when Entra ID itself failed (network, throttling, 5xx): a retry may cure it.
    """

    def __init__(self, audience: str, detail: str, *, transient: bool = False) -> None:
        super().__init__(f"could not get a token for {audience}: {detail}")
        self.audience = audience
        self.detail = detail
        self.transient = transient


class ManagementApiError(ConnectorError):
    """The Management Activity API answered with an error.

    ``status`` is the HTTP status (0 when no response came), ``code`` the ``AFxxxxx`` code of the
    body when there was one, ``operation`` what the connector was doing (``list``, ``content``,
    ``start``...), ``content_type`` the content type concerned.
    """

    hint = "see the README's troubleshooting table"

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str = "",
        operation: str = "",
        content_type: str = "",
    ) -> None:
        detail = ", ".join(
            part
            for part in (
                f"HTTP {status}" if status else "",
                code,
                f"operation {operation}" if operation else "",
                f"content type {content_type}" if content_type else "",
            )
            if part
        )
        super().__init__(f"{message} ({detail}); {self.hint}" if detail else f"{message}; {self.hint}")
        self.status = status
        self.code = code
        self.operation = operation
        self.content_type = content_type


class OperatorActionRequired(ManagementApiError):
    """Only a person can fix this: grant ActivityFeed.Read, fix the tenant id, turn on auditing,
    re-enable a subscription an admin disabled. Retrying in a loop would not help."""

    hint = "an administrator must act; the README's troubleshooting table says what to do for this code"


class SubscriptionMissing(ManagementApiError):
    """AF20022: the content type has no subscription; the poller starts one and tries again later."""

    hint = "the poller starts the subscription itself (at most once per 15 minutes)"


class InvalidWindow(ManagementApiError):
    """AF20030 / AF20055: the listing window was refused (clock skew or the 7-day limit)."""

    hint = "the poller re-plans the window on its next run; check the machine clock if this repeats"


class InvalidPage(ManagementApiError):
    """AF20031: a NextPageUri was refused; the poller lists the whole window again."""

    hint = "the window is listed again from its start"


class ContentUnavailable(ManagementApiError):
    """The content blob is gone (expired after 7 days, missing, or a bad id); it is skipped and counted."""

    hint = "the blob cannot be fetched any more; its records are lost to the API"


class TransientApiError(ManagementApiError):
    """Throttling, timeouts or server faults that outlived the connector's retries; the host retries
    the invocation later."""

    hint = "the host retries the invocation; if this persists check service health and the request budget"


class UntrustedUrlError(ConnectorError):
    """A ``contentUri`` or ``NextPageUri`` that is not HTTPS under the configured API root and tenant.

    The connector never sends its bearer token to such a URL.
    """

    def __init__(self, what: str, url: str) -> None:
        shown = url if len(url) <= 200 else url[:200] + "..."
        super().__init__(
            f"refused {what} {shown!r}: it is not HTTPS under the configured O365_API_ROOT and tenant; "
            "the message may be forged or the API root misconfigured"
        )
        self.url = url


class BadMessageError(ConnectorError):
    """A queue message that is not a content notification; it is moved to the poison queue."""


class IngestionError(ConnectorError):
    """The Logs Ingestion API refused rows (``status``, ``code`` of its error body, ``stream``)."""

    def __init__(self, message: str, *, status: int = 0, code: str = "", stream: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.stream = stream


class StateError(ConnectorError):
    """Table Storage or the storage queue failed; the invocation fails and the host retries it."""
