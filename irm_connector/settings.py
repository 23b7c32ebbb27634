"""Settings: read once per invocation from the environment (app settings in Azure, local.settings.json
locally), validated up front so a bad value fails with one message naming the setting.

That message says what is wrong and never shows the value: it is logged, and a secret pasted into the wrong
setting (the client id's field sits next to the secret's) must not reach the logs with it."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal
from urllib.parse import SplitResult, urlsplit

from .errors import SettingsError
from .windows import RETENTION

__all__ = ["CLOUDS", "Cloud", "Settings", "StorageSettings", "parse_duration"]

AuthMode = Literal["secret", "certificate", "managed_identity"]


@dataclass(frozen=True)
class Cloud:
    """Where a Microsoft 365 cloud's Management API and login live."""

    api_host: str
    authority_host: str


CLOUDS: dict[str, Cloud] = {
    "Commercial": Cloud("manage.office.com", "login.microsoftonline.com"),
    "GCC": Cloud("manage-gcc.office.com", "login.microsoftonline.com"),
    "GCCHigh": Cloud("manage.office365.us", "login.microsoftonline.us"),
    "DoD": Cloud("manage.protection.apps.mil", "login.microsoftonline.us"),
}

KNOWN_CONTENT_TYPES = (
    "Audit.AzureActiveDirectory",
    "Audit.Exchange",
    "Audit.SharePoint",
    "Audit.General",
    "DLP.All",
)

_DURATION = re.compile(r"(\d+)\s*([dhms])", re.IGNORECASE)
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_STREAM = re.compile(r"^Custom-[A-Za-z][A-Za-z0-9_]{0,59}$")
_QUEUE = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,55}[a-z0-9]$")


def parse_duration(text: str, *, setting: str) -> timedelta:
    """``"24h"``, ``"90m"``, ``"1h30m"``, ``"7d"`` or a number of seconds."""
    raw = text.strip()
    if raw.isdigit():
        return timedelta(seconds=int(raw))
    pos = 0
    seconds = 0
    for match in _DURATION.finditer(raw):
        if raw[pos : match.start()].strip():
            break
        seconds += int(match.group(1)) * _UNITS[match.group(2).lower()]
        pos = match.end()
    if not raw or pos != len(raw) or raw[pos:].strip():
        raise SettingsError(setting, "is not a duration; write e.g. 24h, 90m, 1h30m or 7d")
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class StorageSettings:
    """How to reach the storage account: a connection string, or identity-based service URIs."""

    connection_string: str | None = None
    queue_service_uri: str | None = None
    table_service_uri: str | None = None
    #: ``managedidentity`` to use the function's identity only, else DefaultAzureCredential.
    credential_kind: str | None = None
    client_id: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], prefix: str = "AzureWebJobsStorage") -> StorageSettings:
        conn = env.get(prefix, "").strip()
        if conn:
            if conn != "UseDevelopmentStorage=true" and "=" not in conn:
                raise SettingsError(prefix, "is not a storage connection string")
            return cls(connection_string=conn)
        account = env.get(f"{prefix}__accountName", "").strip()
        queue_uri = env.get(f"{prefix}__queueServiceUri", "").strip()
        table_uri = env.get(f"{prefix}__tableServiceUri", "").strip()
        if account:
            queue_uri = queue_uri or f"https://{account}.queue.core.windows.net"
            table_uri = table_uri or f"https://{account}.table.core.windows.net"
        if not (queue_uri and table_uri):
            raise SettingsError(
                prefix,
                "is required: set a connection string, or the identity-based "
                f"{prefix}__accountName (or {prefix}__queueServiceUri and {prefix}__tableServiceUri)",
            )
        for name, uri in ((f"{prefix}__queueServiceUri", queue_uri), (f"{prefix}__tableServiceUri", table_uri)):
            if _split_url(uri, name).scheme != "https":
                raise SettingsError(name, "must be an https:// URL")
        return cls(
            queue_service_uri=queue_uri,
            table_service_uri=table_uri,
            credential_kind=env.get(f"{prefix}__credential", "").strip().lower() or None,
            client_id=env.get(f"{prefix}__clientId", "").strip() or None,
        )


@dataclass(frozen=True)
class Settings:
    """Everything the poller and the processor need, validated."""

    tenant_id: str
    auth_mode: AuthMode
    api_root: str
    authority_host: str
    authority_overridden: bool
    content_types: tuple[str, ...]
    publisher_id: str
    ingestion_endpoint: str
    dcr_immutable_id: str
    storage: StorageSettings
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    certificate_path: str = ""
    certificate_data: str = field(default="", repr=False)
    certificate_password: str = field(default="", repr=False)
    cloud: str = "Commercial"
    initial_lookback: timedelta = timedelta(hours=24)
    listing_overlap: timedelta = timedelta(hours=1)
    poll_time_budget: timedelta = timedelta(minutes=4)
    content_queue: str = "irm-content"
    alert_categories: frozenset[str] = frozenset({"InsiderRiskManagement"})
    alerts_stream: str = "Custom-IRMAlerts"
    audit_stream: str = ""
    health_stream: str = "Custom-IRMConnectorHealth"
    max_requests_per_minute: int = 1000
    dedupe_retention_days: int = 10
    table_prefix: str = "irm"
    http_timeout: timedelta = timedelta(seconds=60)

    @property
    def api_audience(self) -> str:
        """The token audience of the Management API: its root URL."""
        return self.api_root

    @property
    def poison_queue(self) -> str:
        return f"{self.content_queue}-poison"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the settings; raises :class:`SettingsError` naming the first bad one."""
        env = os.environ if env is None else env

        def get(name: str, default: str = "") -> str:
            return env.get(name, default).strip() or default

        tenant_id = _guid(get("O365_TENANT_ID"), "O365_TENANT_ID")

        cloud_name = get("O365_CLOUD", "Commercial")
        cloud = {k.lower(): k for k in CLOUDS}.get(cloud_name.lower())
        if cloud is None:
            raise SettingsError("O365_CLOUD", f"is not one of {', '.join(CLOUDS)}")
        api_root = _https_root(get("O365_API_ROOT", f"https://{CLOUDS[cloud].api_host}"), "O365_API_ROOT")
        authority_override = get("O365_AUTHORITY_HOST")
        authority_host = _https_root(
            authority_override or f"https://{CLOUDS[cloud].authority_host}", "O365_AUTHORITY_HOST"
        )

        client_id = get("O365_CLIENT_ID")
        secret = get("O365_CLIENT_SECRET")
        cert_path = get("O365_CLIENT_CERTIFICATE_PATH")
        cert_data = get("O365_CLIENT_CERTIFICATE")
        mode_raw = get("O365_AUTH_MODE") or ("certificate" if cert_path or cert_data else "secret")
        mode = mode_raw.lower().replace("-", "_")
        if mode not in ("secret", "certificate", "managed_identity"):
            raise SettingsError("O365_AUTH_MODE", "is not secret, certificate or managed_identity")
        if mode in ("secret", "certificate"):
            _guid(client_id, "O365_CLIENT_ID")
        if mode == "secret" and not secret:
            raise SettingsError(
                "O365_CLIENT_SECRET",
                "is required when O365_AUTH_MODE is secret (or set O365_CLIENT_CERTIFICATE_PATH for a certificate)",
            )
        if mode == "certificate":
            if not (cert_path or cert_data):
                raise SettingsError(
                    "O365_CLIENT_CERTIFICATE_PATH",
                    "is required when O365_AUTH_MODE is certificate (or O365_CLIENT_CERTIFICATE with the "
                    "PEM text or base64 PFX, e.g. a Key Vault reference)",
                )
            if cert_path and not os.path.isfile(cert_path):
                raise SettingsError(
                    "O365_CLIENT_CERTIFICATE_PATH",
                    "names no file (a path; the PEM text or base64 PFX itself goes in O365_CLIENT_CERTIFICATE)",
                )

        content_types = tuple(dict.fromkeys(t.strip() for t in get("O365_CONTENT_TYPES", "Audit.General").split(",")))
        content_types = tuple(t for t in content_types if t)
        by_lower = {t.lower(): t for t in KNOWN_CONTENT_TYPES}
        normalized: list[str] = []
        for number, ct in enumerate(content_types, 1):
            if ct.lower() not in by_lower:
                raise SettingsError(
                    "O365_CONTENT_TYPES",
                    f"entry {number} of {len(content_types)} is not one of {', '.join(KNOWN_CONTENT_TYPES)}",
                )
            normalized.append(by_lower[ct.lower()])
        if not normalized:
            raise SettingsError("O365_CONTENT_TYPES", "names no content type")

        publisher = _guid(get("O365_PUBLISHER_ID", tenant_id), "O365_PUBLISHER_ID")

        lookback = parse_duration(get("INITIAL_LOOKBACK", "24h"), setting="INITIAL_LOOKBACK")
        if lookback > RETENTION or lookback <= timedelta(0):
            raise SettingsError("INITIAL_LOOKBACK", "must be more than 0 and at most 7d (the API's limit)")
        overlap = parse_duration(get("LISTING_OVERLAP", "1h"), setting="LISTING_OVERLAP")
        if overlap > timedelta(hours=24):
            raise SettingsError("LISTING_OVERLAP", "must be at most 24h")
        budget = parse_duration(get("POLL_TIME_BUDGET", "4m"), setting="POLL_TIME_BUDGET")
        if budget < timedelta(seconds=10):
            raise SettingsError("POLL_TIME_BUDGET", "must be at least 10s")

        queue = get("CONTENT_QUEUE", "irm-content")
        if not _QUEUE.match(queue) or len(queue) > 56:
            raise SettingsError(
                "CONTENT_QUEUE",
                "is not a valid queue name (3-56 lowercase letters, digits and single hyphens; "
                "the poison queue adds -poison)",
            )

        categories = frozenset(c.strip() for c in get("ALERT_CATEGORIES", "InsiderRiskManagement").split(","))
        categories = frozenset(c for c in categories if c)
        if not categories:
            raise SettingsError("ALERT_CATEGORIES", "names no category; use * for all")

        endpoint = get("LOGS_INGESTION_ENDPOINT")
        if not endpoint:
            raise SettingsError("LOGS_INGESTION_ENDPOINT", "is required: the DCR's logs ingestion endpoint")
        endpoint = _https_root(endpoint, "LOGS_INGESTION_ENDPOINT")
        dcr = get("LOGS_DCR_IMMUTABLE_ID")
        if not re.fullmatch(r"dcr-[0-9a-fA-F]{32}", dcr):
            raise SettingsError(
                "LOGS_DCR_IMMUTABLE_ID",
                "is required: the DCR's immutable id, 'dcr-' and 32 hex digits"
                if not dcr
                else "is not the DCR's immutable id, 'dcr-' and 32 hex digits",
            )

        alerts_stream = _stream(get("LOGS_ALERTS_STREAM", "Custom-IRMAlerts"), "LOGS_ALERTS_STREAM")
        audit_stream = get("LOGS_AUDIT_STREAM")
        if audit_stream:
            _stream(audit_stream, "LOGS_AUDIT_STREAM")
        health_stream = get("LOGS_HEALTH_STREAM", "Custom-IRMConnectorHealth")
        if health_stream.lower() in ("off", "none", "-"):
            health_stream = ""
        if health_stream:
            _stream(health_stream, "LOGS_HEALTH_STREAM")

        http_timeout = parse_duration(get("HTTP_TIMEOUT", "60s"), setting="HTTP_TIMEOUT")
        if not timedelta(seconds=1) <= http_timeout <= timedelta(minutes=10):
            raise SettingsError("HTTP_TIMEOUT", "must be between 1s and 10m")
        prefix = get("STATE_TABLE_PREFIX", "irm")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{0,29}", prefix):
            raise SettingsError("STATE_TABLE_PREFIX", "must be 1-30 letters and digits, starting with a letter")
        rpm = _int(get("O365_MAX_REQUESTS_PER_MINUTE", "1000"), "O365_MAX_REQUESTS_PER_MINUTE", 1, 60000)
        retention = _int(get("DEDUPE_RETENTION_DAYS", "10"), "DEDUPE_RETENTION_DAYS", 8, 90)

        return cls(
            tenant_id=tenant_id,
            auth_mode=mode,  # type: ignore[arg-type]
            api_root=api_root,
            authority_host=authority_host,
            authority_overridden=bool(authority_override),
            content_types=tuple(normalized),
            publisher_id=publisher,
            ingestion_endpoint=endpoint,
            dcr_immutable_id=dcr,
            storage=StorageSettings.from_env(env),
            client_id=client_id,
            client_secret=secret,
            certificate_path=cert_path,
            certificate_data=cert_data,
            certificate_password=env.get("O365_CLIENT_CERTIFICATE_PASSWORD", ""),
            cloud=cloud,
            initial_lookback=lookback,
            listing_overlap=overlap,
            poll_time_budget=budget,
            content_queue=queue,
            alert_categories=categories,
            alerts_stream=alerts_stream,
            audit_stream=audit_stream,
            health_stream=health_stream,
            max_requests_per_minute=rpm,
            dedupe_retention_days=retention,
            table_prefix=prefix.lower(),
            http_timeout=http_timeout,
        )


def _guid(value: str, setting: str) -> str:
    if not value:
        raise SettingsError(setting, "is required (a GUID)")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise SettingsError(
            setting, f"is not a GUID (36 characters like 00000000-0000-0000-0000-000000000000; it has {len(value)})"
        ) from None


def _https_root(value: str, setting: str) -> str:
    parts = _split_url(value, setting)
    if parts.scheme != "https" or not parts.netloc:
        raise SettingsError(setting, "must be an https:// URL")
    if parts.query or parts.fragment or parts.path.strip("/"):
        raise SettingsError(setting, "must be a root URL (https://host) without path or query")
    return f"https://{parts.netloc.lower()}"


def _split_url(value: str, setting: str) -> SplitResult:
    try:
        return urlsplit(value)
    except ValueError:  # "https://[" and the like
        raise SettingsError(setting, "is not a URL") from None


def _stream(value: str, setting: str) -> str:
    if not _STREAM.match(value):
        raise SettingsError(setting, "is not a stream name (Custom- followed by letters, digits, _)")
    return value


def _int(value: str, setting: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise SettingsError(setting, "is not a whole number") from None
    if not low <= number <= high:
        raise SettingsError(setting, f"must be between {low} and {high}")
    return number
