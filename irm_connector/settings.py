"""Settings: read once per invocation from the environment (app settings in Azure, local.settings.json
locally), validated up front so bad values fail with one message naming every bad setting.

That message says what is wrong and never shows the value: it is logged, and a secret pasted into the wrong
setting (the client id's field sits next to the secret's) must not reach the logs with it. How each setting is
written and checked is in :mod:`.setting_forms`."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from . import setting_forms as forms
from .clouds import AZURE_CLOUDS, AzureCloud, azure_cloud
from .deadline import timeout_override
from .errors import SettingsError
from .setting_forms import CLOUDS, DURATION_FORMS, KNOWN_CONTENT_TYPES, AuthMode, Cloud, parse_duration
from .windows import RETENTION

__all__ = [
    "CLOUDS",
    "DURATION_FORMS",
    "KNOWN_CONTENT_TYPES",
    "Cloud",
    "Settings",
    "StorageSettings",
    "parse_duration",
]


@functools.lru_cache(maxsize=8)  # settings are read on every invocation; a good string is checked once
def _check_connection_string(name: str, conn: str) -> None:
    """What the storage SDKs would refuse at the first call, refused here, naming the setting (never its value:
    it holds the account key)."""
    import base64
    import binascii

    from azure.data.tables import TableServiceClient
    from azure.storage.queue import QueueServiceClient

    if forms.is_key_vault_reference(conn):
        raise SettingsError(name, forms.UNRESOLVED_REFERENCE)
    try:
        for client in (QueueServiceClient, TableServiceClient):
            client.from_connection_string(conn).close()
    except ValueError as exc:  # the SDKs' words name what is missing, not the value
        raise SettingsError(name, f"is not a storage connection string the SDKs accept: {exc}") from None
    parts = {key.strip().lower(): value.strip() for key, _, value in (p.partition("=") for p in conn.split(";") if p)}
    _refuse_cleartext_to_azure(name, parts)
    key = parts.get("accountkey")
    if key is not None:
        try:
            base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            raise SettingsError(name, "has an AccountKey that is not base64: copy the key again") from None


#: Where an account of an Azure cloud answers (Public, US Government, China).
_AZURE_STORAGE_SUFFIXES = tuple(sorted({f".{cloud.storage_suffix}" for cloud in AZURE_CLOUDS.values()}))


def _refuse_cleartext_to_azure(name: str, parts: Mapping[str, str]) -> None:
    """``http`` reaches a local emulator (Azurite) fine, but to an Azure account it would carry every queue
    message and state entity, and the requests' signatures, in clear text."""
    endpoints = [parts.get(f"{service}endpoint", "") for service in ("queue", "table")]
    if parts.get("defaultendpointsprotocol", "").lower() == "http" and not all(endpoints):
        # The SDKs build the missing endpoints from AccountName and EndpointSuffix: an Azure host.
        suffix = parts.get("endpointsuffix") or "core.windows.net"
        endpoints.append(f"http://{parts.get('accountname', '')}.queue.{suffix}")
    for endpoint in endpoints:
        parsed = forms.split_url(endpoint, name) if endpoint else None
        host = (parsed.hostname or "") if parsed else ""
        if parsed and parsed.scheme == "http" and host.endswith(_AZURE_STORAGE_SUFFIXES):
            raise SettingsError(name, "reaches an Azure storage account over http: use DefaultEndpointsProtocol=https")


@dataclass(frozen=True)
class StorageSettings:
    """How to reach the storage account: a connection string, or identity-based service URIs."""

    connection_string: str | None = field(default=None, repr=False)  # it holds the account key
    queue_service_uri: str | None = None
    table_service_uri: str | None = None
    #: ``managedidentity`` to use the function's identity only, else DefaultAzureCredential.
    credential_kind: str | None = None
    client_id: str | None = None

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], prefix: str = "AzureWebJobsStorage", *, suffix: str = "core.windows.net"
    ) -> StorageSettings:
        """``suffix``: the storage DNS suffix of the account's cloud, for an account given by name only."""
        conn = env.get(prefix, "").strip()
        if conn:
            if conn != "UseDevelopmentStorage=true":
                _check_connection_string(prefix, conn)
            return cls(connection_string=conn)
        account = env.get(f"{prefix}__accountName", "").strip()
        if account:
            forms.storage_account_name(account, f"{prefix}__accountName")
        # The deployment gives the account's primaryEndpoints, which end in "/".
        queue_uri = env.get(f"{prefix}__queueServiceUri", "").strip().rstrip("/")
        table_uri = env.get(f"{prefix}__tableServiceUri", "").strip().rstrip("/")
        if account:
            queue_uri = queue_uri or f"https://{account}.queue.{suffix}"
            table_uri = table_uri or f"https://{account}.table.{suffix}"
        if not (queue_uri and table_uri):
            raise SettingsError(
                prefix,
                "is required: set a connection string, or the identity-based "
                f"{prefix}__accountName (or {prefix}__queueServiceUri and {prefix}__tableServiceUri)",
            )
        for name, uri in ((f"{prefix}__queueServiceUri", queue_uri), (f"{prefix}__tableServiceUri", table_uri)):
            forms.https_url(uri, name)
        return cls(
            queue_service_uri=queue_uri,
            table_service_uri=table_uri,
            credential_kind=env.get(f"{prefix}__credential", "").strip().lower() or None,
            client_id=_optional_guid(env.get(f"{prefix}__clientId", "").strip(), f"{prefix}__clientId"),
        )


def _optional_guid(value: str, setting: str) -> str | None:
    return forms.guid(value, setting) if value else None


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
    azure_cloud: AzureCloud = AZURE_CLOUDS["AzurePublic"]
    max_blob_bytes_in_flight: int = 128 * 2**20

    @property
    def api_audience(self) -> str:
        """The token audience of the Management API: its root URL."""
        return self.api_root

    @property
    def poison_queue(self) -> str:
        return f"{self.content_queue}-poison"

    @property
    def streams(self) -> tuple[str, ...]:
        """The streams rows are sent to: the alerts stream, and the audit and health streams when they are on."""
        return tuple(stream for stream in (self.alerts_stream, self.audit_stream, self.health_stream) if stream)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the settings; raises one :class:`SettingsError` naming every bad one."""
        env = os.environ if env is None else env
        r = forms.Reader(env)
        get, check = r.get, r.check

        def duration(name: str, default: str, least: timedelta, most: timedelta | None) -> timedelta:
            return check(lambda: forms.bounded_duration(get(name, default), name, least, most), least)

        def number(name: str, default: str, low: int, high: int) -> int:
            return check(lambda: forms.whole_number(get(name, default), name, low, high), low)

        tenant_id = check(lambda: forms.guid(get("O365_TENANT_ID"), "O365_TENANT_ID"), "")
        cloud = check(lambda: forms.cloud_name(get("O365_CLOUD", "Commercial")), "Commercial")
        api_default = f"https://{CLOUDS[cloud].api_host}"
        api_root = check(lambda: forms.https_root(get("O365_API_ROOT", api_default), "O365_API_ROOT"), "")
        authority_override = get("O365_AUTHORITY_HOST")
        authority = authority_override or f"https://{CLOUDS[cloud].authority_host}"
        authority_host = check(lambda: forms.https_root(authority, "O365_AUTHORITY_HOST"), "")
        client_id = get("O365_CLIENT_ID")
        if client_id:  # as Entra ID writes it: {braces}, urn:uuid: and bare hex reach msal in the canonical form
            client_id = check(lambda: forms.guid(client_id, "O365_CLIENT_ID"), client_id)
        secret = get("O365_CLIENT_SECRET", placeholder_check=False)
        cert_path = get("O365_CLIENT_CERTIFICATE_PATH")
        cert_data = get("O365_CLIENT_CERTIFICATE", placeholder_check=False)
        mode: AuthMode = check(
            lambda: forms.auth_mode(get("O365_AUTH_MODE"), client_id, secret, cert_path, cert_data), "secret"
        )
        types: tuple[str, ...] = check(
            lambda: forms.content_types(get("O365_CONTENT_TYPES", "Audit.General")), ("Audit.General",)
        )
        # The publisher id defaults to the tenant id: a bad tenant id is reported once, as itself.
        publisher_raw = get("O365_PUBLISHER_ID")
        publisher = check(lambda: forms.guid(publisher_raw, "O365_PUBLISHER_ID"), "") if publisher_raw else tenant_id
        lookback = duration("INITIAL_LOOKBACK", "24h", timedelta(seconds=1), RETENTION)
        overlap = duration("LISTING_OVERLAP", "1h", timedelta(0), timedelta(hours=24))
        budget = duration("POLL_TIME_BUDGET", "4m", timedelta(seconds=10), None)
        http_timeout = duration("HTTP_TIMEOUT", "60s", timedelta(seconds=1), timedelta(minutes=10))
        queue = check(lambda: forms.queue_name(get("CONTENT_QUEUE", "irm-content")), "irm-content")
        categories: frozenset[str] = check(
            lambda: forms.alert_categories(get("ALERT_CATEGORIES", "InsiderRiskManagement")), frozenset()
        )
        endpoint = check(lambda: forms.ingestion_endpoint(get("LOGS_INGESTION_ENDPOINT")), "")
        dcr = check(lambda: forms.dcr_id(get("LOGS_DCR_IMMUTABLE_ID")), "")
        alerts_stream = get("LOGS_ALERTS_STREAM", "Custom-IRMAlerts")
        check(lambda: forms.stream_name(alerts_stream, "LOGS_ALERTS_STREAM"), "")
        audit_stream = get("LOGS_AUDIT_STREAM")
        if audit_stream:
            check(lambda: forms.stream_name(audit_stream, "LOGS_AUDIT_STREAM"), "")
        health_stream = get("LOGS_HEALTH_STREAM", "Custom-IRMConnectorHealth")
        if health_stream.lower() in ("off", "none", "-"):
            health_stream = ""
        if health_stream:
            check(lambda: forms.stream_name(health_stream, "LOGS_HEALTH_STREAM"), "")
        check(lambda: forms.distinct_streams({"LOGS_ALERTS_STREAM": alerts_stream, "LOGS_AUDIT_STREAM": audit_stream,
                                              "LOGS_HEALTH_STREAM": health_stream}), None)  # fmt: skip
        prefix = check(lambda: forms.table_prefix(get("STATE_TABLE_PREFIX", "irm")), "irm")
        rpm = number("O365_MAX_REQUESTS_PER_MINUTE", "1000", 1, 60000)
        retention = number("DEDUPE_RETENTION_DAYS", "10", 8, 90)
        workspace_cloud = check(lambda: azure_cloud(get("AZURE_CLOUD", "AzurePublic")), AZURE_CLOUDS["AzurePublic"])
        if mode == "managed_identity" and not {"O365_CLOUD", "AZURE_CLOUD", "O365_AUTH_MODE"} & r.named():
            check(lambda: forms.identity_cloud(cloud, workspace_cloud.name, workspace_cloud.authority_host), None)
        storage = check(lambda: StorageSettings.from_env(env, suffix=workspace_cloud.storage_suffix), StorageSettings())
        blob_mb_in_flight = number("MAX_BLOB_MB_IN_FLIGHT", "128", 1, 65536)
        if override := timeout_override(env):
            check(lambda: forms.function_timeout_override(override), None)
        for ca_setting in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
            if ca_path := get(ca_setting):
                check(functools.partial(forms.ca_bundle, ca_path, ca_setting), None)
        # Every client reads them, in either case; the same value under both is one variable (Windows ignores case).
        for upper in ("HTTPS_PROXY", "HTTP_PROXY"):
            upper_value, lower_value = r.raw(upper), r.raw(upper.lower())
            if upper_value:
                check(functools.partial(forms.proxy_url, upper_value, upper), None)
            if lower_value and lower_value != upper_value:
                check(functools.partial(forms.proxy_url, lower_value, upper.lower()), None)
        password = r.raw("O365_CLIENT_CERTIFICATE_PASSWORD")
        if r.problems:
            raise SettingsError.combine(r.problems)
        return cls(
            tenant_id=tenant_id,
            auth_mode=mode,
            api_root=api_root,
            authority_host=authority_host,
            authority_overridden=bool(authority_override),
            content_types=types,
            publisher_id=publisher,
            ingestion_endpoint=endpoint,
            dcr_immutable_id=dcr,
            storage=storage,
            client_id=client_id,
            client_secret=secret,
            certificate_path=cert_path,
            certificate_data=cert_data,
            certificate_password=password,
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
            azure_cloud=workspace_cloud,
            max_blob_bytes_in_flight=blob_mb_in_flight << 20,
        )
