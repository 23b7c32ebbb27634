"""How each setting is written, and the checks that refuse a bad one: without the value in the message
(it is logged, and a secret pasted into the wrong setting must not reach the logs with it) and without
stopping at the first (:class:`Reader` keeps every problem, so one run names every setting to fix)."""

from __future__ import annotations

import functools
import os
import re
import ssl
import stat
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, TypeVar
from urllib.parse import SplitResult, urlsplit

from yarl import URL

from .deadline import FUNCTION_TIMEOUT, TIMEOUT_SETTING, parse_timespan
from .errors import SettingsError
from .models import ALERT_CATEGORY_NAMES, KNOWN_CONTENT_TYPES, alert_category

__all__ = [
    "CLOUDS",
    "DURATION_FORMS",
    "KNOWN_CONTENT_TYPES",
    "AuthMode",
    "Cloud",
    "Reader",
    "alert_categories",
    "auth_mode",
    "bounded_duration",
    "ca_bundle",
    "cloud_name",
    "content_types",
    "dcr_id",
    "guid",
    "https_root",
    "https_url",
    "identity_cloud",
    "ingestion_endpoint",
    "parse_duration",
    "queue_name",
    "split_url",
    "storage_account_name",
    "stream_name",
    "table_prefix",
    "whole_number",
]

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

_DURATION = re.compile(r"(\d+)\s*([dhms])", re.IGNORECASE)
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_STREAM = re.compile(r"^Custom-[A-Za-z][A-Za-z0-9_]{0,59}$")
_QUEUE = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,55}[a-z0-9]$")
_PLACEHOLDER = re.compile(r"<[A-Za-z][^<>]*>")
T = TypeVar("T")


#: How a duration is written, for the messages that refuse one.
DURATION_FORMS = "a number and a unit: 45s, 90m, 24h, 7d, or combined like 1h30m"


def parse_duration(text: str, *, setting: str) -> timedelta:
    """``"45s"``, ``"90m"``, ``"24h"``, ``"7d"``, ``"1h30m"``. A bare number is refused: ``INITIAL_LOOKBACK=24``
    meant 24 hours, not 24 seconds, and a guess either way would be silently wrong. Zero, which no unit
    changes, is read without one (``LISTING_OVERLAP=0``)."""
    raw = text.strip()
    if raw.isdigit() and not raw.strip("0"):
        return timedelta(0)
    if raw.isdigit():
        raise SettingsError(setting, f"has no unit; write {DURATION_FORMS}")
    pos = 0
    seconds = 0
    for match in _DURATION.finditer(raw):
        if raw[pos : match.start()].strip():
            break
        if len(match.group(1).lstrip("0")) > 15:  # past any timedelta, and past int()'s 4,300 digits: a bare ValueError
            raise SettingsError(setting, "is longer than any duration the connector can use")
        seconds += int(match.group(1)) * _UNITS[match.group(2).lower()]
        pos = match.end()
    if not raw or pos != len(raw) or raw[pos:].strip():
        raise SettingsError(setting, f"is not a duration; write {DURATION_FORMS}")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise SettingsError(setting, "is longer than any duration the connector can use") from None


def is_key_vault_reference(value: str) -> bool:
    return value.strip().lower().startswith("@microsoft.keyvault(")


UNRESOLVED_REFERENCE = (
    "is a Key Vault reference, which only the Function App resolves: on the command line, set the value itself "
    "(docs/operations.md, \"The deployed app's settings\"); in the app, it could not resolve it: check that the "
    "secret or certificate exists in the vault, that the app's identity has Key Vault Secrets User on it, and the "
    "vault's network rules (the portal shows the reference's error under the app's Environment variables); once "
    "fixed, have App Service read it again: az rest --method post --url "
    "\"<FUNCTION_APP_ID>/config/configreferences/appsettings/refresh?api-version=2022-03-01\" (else it does so "
    "within a day, or when a setting changes; a restart is not enough)"
)


class Reader:
    """The settings of ``env``, read with every problem kept (:meth:`check`) rather than stopping at the first,
    so one run names every setting to fix."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[SettingsError] = []

    def get(self, name: str, default: str = "", *, placeholder_check: bool = True) -> str:
        value = self.raw(name, default).strip() or default
        # The sample file's "<your-dcr>"-style placeholders. Not checked in secrets, whose characters are free.
        if placeholder_check and _PLACEHOLDER.search(value):
            self.problems.append(
                SettingsError(name, "still holds a placeholder of the sample settings (<...>): put in the real value")
            )
            return default
        return value

    def raw(self, name: str, default: str = "") -> str:
        """The value as it is (a password's spaces kept), or ``default`` when it is a Key Vault reference that App
        Service left unresolved: it passes the reference's own text to the app then, which would otherwise be
        taken for a malformed certificate or a wrong secret."""
        value = self.env.get(name, default)
        if is_key_vault_reference(value):
            self.problems.append(SettingsError(name, UNRESOLVED_REFERENCE))
            return default
        return value

    def named(self) -> set[str]:
        """The settings found wrong so far."""
        return {name for problem in self.problems for name, _ in problem.problems}

    def check(self, parse: Callable[[], T], fallback: T) -> T:
        """``parse()``, or ``fallback`` with its problems kept (one per setting: a placeholder that
        :meth:`get` refused is not reported again as a missing value)."""
        try:
            return parse()
        except SettingsError as exc:
            reported = self.named()
            fresh = [(name, text) for name, text in exc.problems if name not in reported]
            if fresh:
                self.problems.append(SettingsError(*fresh[0], more=fresh[1:]))
            return fallback


def guid(value: str, setting: str) -> str:
    if not value:
        raise SettingsError(setting, "is required (a GUID)")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise SettingsError(
            setting, f"is not a GUID (36 characters, hex digits in groups of 8-4-4-4-12; it has {len(value)})"
        ) from None
    if parsed.int == 0:
        raise SettingsError(setting, "is the all-zero GUID of the sample settings: put in the real one")
    return str(parsed)


def cloud_name(name: str) -> str:
    cloud = {k.lower(): k for k in CLOUDS}.get(name.lower())
    if cloud is None:
        raise SettingsError("O365_CLOUD", f"is not one of {', '.join(CLOUDS)}")
    return cloud


def auth_mode(raw: str, client_id: str, secret: str, cert_path: str, cert_data: str) -> AuthMode:
    mode = (raw or ("certificate" if cert_path or cert_data else "secret")).lower().replace("-", "_")
    problems: list[SettingsError] = []
    if mode not in ("secret", "certificate", "managed_identity"):
        raise SettingsError("O365_AUTH_MODE", "is not secret, certificate or managed_identity")
    if mode in ("secret", "certificate"):
        try:
            guid(client_id, "O365_CLIENT_ID")
        except SettingsError as exc:
            problems.append(exc)
    if mode == "secret" and not secret:
        problems.append(
            SettingsError(
                "O365_CLIENT_SECRET",
                "is required when O365_AUTH_MODE is secret (or set O365_CLIENT_CERTIFICATE_PATH for a certificate)",
            )
        )
    if mode == "certificate" and not (cert_path or cert_data):
        problems.append(
            SettingsError(
                "O365_CLIENT_CERTIFICATE_PATH",
                "is required when O365_AUTH_MODE is certificate (or O365_CLIENT_CERTIFICATE with the "
                "PEM text or base64 PFX, e.g. a Key Vault reference)",
            )
        )
    if mode == "certificate" and cert_path and not os.path.isfile(cert_path):
        problems.append(
            SettingsError(
                "O365_CLIENT_CERTIFICATE_PATH",
                "names no file (a path; the PEM text or base64 PFX itself goes in O365_CLIENT_CERTIFICATE)",
            )
        )
    if problems:
        raise SettingsError.combine(problems)
    return mode  # type: ignore[return-value]


def content_types(value: str) -> tuple[str, ...]:
    listed = [t for t in dict.fromkeys(t.strip() for t in value.split(",")) if t]
    by_lower = {t.lower(): t for t in KNOWN_CONTENT_TYPES}
    for number, ct in enumerate(listed, 1):
        if ct.lower() not in by_lower:
            raise SettingsError(
                "O365_CONTENT_TYPES", f"entry {number} of {len(listed)} is not one of {', '.join(KNOWN_CONTENT_TYPES)}"
            )
    if not listed:
        raise SettingsError("O365_CONTENT_TYPES", "names no content type")
    # Once each, however spelled: a content type polled twice in one run would race for its own lease.
    return tuple(dict.fromkeys(by_lower[ct.lower()] for ct in listed))


def bounded_duration(text: str, setting: str, least: timedelta, most: timedelta | None) -> timedelta:
    value = parse_duration(text, setting=setting)
    if value < least or (most is not None and value > most):
        within = f"at least {_short(least)}" if most is None else f"between {_short(least)} and {_short(most)}"
        raise SettingsError(setting, f"must be {within}")
    return value


def _short(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def queue_name(name: str) -> str:
    if not _QUEUE.match(name) or len(name) > 56:
        raise SettingsError(
            "CONTENT_QUEUE",
            "is not a valid queue name (3-56 lowercase letters, digits and single hyphens; the poison queue adds "
            "-poison)",
        )
    return name


def alert_categories(value: str) -> frozenset[str]:
    """The categories named, spelt as the records spell them: ``insider risk management`` is the portal's
    wording, and a name no record carries would route nothing, silently."""
    categories: set[str] = set()
    for place, given in enumerate((c.strip() for c in value.split(",")), 1):
        if not given:
            continue
        if given == "*":
            categories.add(given)
            continue
        name = alert_category(given)
        if name is None:
            raise SettingsError(
                "ALERT_CATEGORIES",
                f"name {place} is a category no alert carries (the value is not shown): use "
                f"{', '.join(ALERT_CATEGORY_NAMES)} (any case), or * for all",
            )
        categories.add(name)
    if not categories:
        raise SettingsError("ALERT_CATEGORIES", "names no category; use * for all")
    return frozenset(categories)


def ingestion_endpoint(value: str) -> str:
    if not value:
        raise SettingsError("LOGS_INGESTION_ENDPOINT", "is required: the DCR's logs ingestion endpoint")
    return https_root(value, "LOGS_INGESTION_ENDPOINT")


def dcr_id(value: str) -> str:
    if not re.fullmatch(r"dcr-[0-9a-fA-F]{32}", value):
        raise SettingsError(
            "LOGS_DCR_IMMUTABLE_ID",
            "is required: the DCR's immutable id, 'dcr-' and 32 hex digits"
            if not value
            else "is not the DCR's immutable id, 'dcr-' and 32 hex digits",
        )
    if not value[4:].strip("0"):
        raise SettingsError("LOGS_DCR_IMMUTABLE_ID", "is the all-zero id of the sample settings: put in the real one")
    return value


def table_prefix(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{0,29}", value):
        raise SettingsError("STATE_TABLE_PREFIX", "must be 1-30 letters and digits, starting with a letter")
    return value


#: A host name as DNS spells it (underscores allowed, as some private zones have them), or an IPv6 address.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?|[0-9a-f:.]*:[0-9a-f:.]*")


def https_root(value: str, setting: str) -> str:
    """``https://host[:port]``, lower case; the default port left out, since it would become part of the
    token's audience (``https://manage.office.com:443/.default``), which Entra ID knows without it."""
    parts = https_url(value, setting)
    if parts.query or parts.fragment or parts.path.strip("/"):
        raise SettingsError(setting, "must be a root URL (https://host) without path or query")
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    return f"https://{netloc}" + (f":{parts.port}" if parts.port not in (None, 443) else "")


def identity_cloud(cloud: str, azure_cloud: str, azure_authority: str) -> None:
    """A managed identity gets tokens from its own Azure cloud's Entra ID only: a public-cloud identity none for
    GCC High or DoD (Azure Government's directory), and the reverse. Said as anything else, the refusal named
    AZURE_CLIENT_ID or the tenant."""
    if CLOUDS[cloud].authority_host != azure_authority:
        raise SettingsError(
            "O365_CLOUD",
            f"is {cloud}, whose Entra ID is {CLOUDS[cloud].authority_host}, and the app's managed identity is of "
            f"{azure_cloud} (AZURE_CLOUD), which signs in at {azure_authority}: it gets no token for this API. Run "
            "the app in the matching Azure cloud, or use O365_AUTH_MODE=secret or certificate with an app "
            "registration of the Microsoft 365 tenant",
        )


def https_url(value: str, setting: str) -> SplitResult:
    """An https:// URL naming a host (a path may follow). ``https://`` alone (a script's empty variable),
    ``https://:8443`` or a host with a space was accepted, and the clients' start or first request failed with a
    bare "Invalid URL" naming no setting."""
    parts = split_url(value, setting)
    if parts.scheme != "https":
        raise SettingsError(setting, "must be an https:// URL")
    if not _HOST.fullmatch(parts.hostname or ""):
        raise SettingsError(setting, "names no host name (must be https://host[:port])")
    return parts


def split_url(value: str, setting: str) -> SplitResult:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  # read for its check: "host:abc" fails at the first request otherwise
    except ValueError:  # "https://[", a port that is no number, and the like
        raise SettingsError(setting, "is not a URL (or its port is not a number)") from None
    if parts.username is not None or parts.password is not None:
        # It would travel in every audience and message: no secret belongs in these URLs.
        raise SettingsError(setting, "must not carry a user name or password")
    return parts


def proxy_of(named: str) -> URL:
    """The proxy an environment variable names, as the clients read it: ``proxy.corp:8080`` is an http:// one, as
    curl and requests (msal's token requests) take it. Raises ValueError for a port that is not a number."""
    return URL(named if "://" in named or not named else f"http://{named}")


def proxy_url(value: str, setting: str) -> None:
    """A proxy as the clients read it (:func:`proxy_of`): a bad one failed every request as an unexpected
    ValueError naming no setting. Its text is not shown: it may hold a password."""
    if value != value.strip():
        # The settings check and aiohttp read it stripped; requests (msal's token requests, the telemetry) as it is,
        # and refused every token as a tenant with no OpenID configuration.
        raise SettingsError(setting, "has spaces or tabs around it: remove them")
    try:
        url = proxy_of(value)
    except (ValueError, TypeError):  # a port that is not a number, or out of range
        url = None
    if url is None or not url.host or " " in url.host:
        raise SettingsError(setting, "is not a proxy URL: give http://host:port (with credentials, "
                                     "http://user:password@host:port)")  # fmt: skip
    if url.scheme not in ("http", "https"):
        raise SettingsError(setting, f"names a {url.scheme} proxy: give an http:// or https:// proxy URL")


def ca_bundle(value: str, setting: str) -> None:
    """A CA bundle the TLS stack loads: a wrong path would otherwise fail every connection, naming no setting."""
    try:
        found = os.stat(value)
    except OSError:
        found = None
    if found is None or not stat.S_ISREG(found.st_mode):
        raise SettingsError(
            setting,
            "names no file: the path of a PEM file of the CA certificates to trust (unset, the system's are used)",
        )
    problem = _ca_bundle_problem(value, found.st_mtime_ns, found.st_size)
    if problem:
        raise SettingsError(setting, problem)


@functools.lru_cache(maxsize=8)  # read on every invocation; a file is loaded again only when it changes
def _ca_bundle_problem(path: str, _mtime_ns: int, _size: int) -> str | None:
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError:
        return "holds no PEM CA certificate: name a PEM file of the CA certificates to trust"
    except (OSError, ValueError):
        return "cannot be read by this process: check the file's permissions"
    return None


def storage_account_name(value: str, setting: str) -> str:
    if not re.fullmatch(r"[a-z0-9]{3,24}", value):
        raise SettingsError(setting, "is not a storage account name (3-24 lowercase letters and digits, not a URL)")
    return value


def stream_name(value: str, setting: str) -> str:
    if not _STREAM.match(value):
        raise SettingsError(setting, "is not a stream name (Custom- followed by letters, digits, _)")
    return value


def distinct_streams(streams: dict[str, str]) -> None:
    """Each stream feeds a table of its own: two settings naming one stream would put two shapes of row in
    one table (``streams``: setting -> stream name, empty when off)."""
    first: dict[str, str] = {}
    for setting, stream in streams.items():
        if not stream:
            continue
        other = first.setdefault(stream.lower(), setting)
        if other != setting:
            raise SettingsError(setting, f"names the same stream as {other}: each needs a stream of its own")


def function_timeout_override(value: str) -> None:
    """The app setting over host.json's ``functionTimeout`` may shorten it, not lengthen it: a claim on records
    lives that timeout plus a margin, so a longer invocation could have its claim taken over mid-upload."""
    try:
        seconds = parse_timespan(value)
    except ValueError:
        if value.strip() == "-1":  # the host's "unlimited"
            seconds = float("inf")
        else:
            raise SettingsError(TIMEOUT_SETTING, "is not a timespan (hh:mm:ss or hh:mm)") from None
    if seconds < 1:  # "0" (a bare number is days), taken for "unlimited": no invocation could do anything
        raise SettingsError(TIMEOUT_SETTING, "must be at least 00:00:01")
    if seconds > FUNCTION_TIMEOUT.total_seconds():
        raise SettingsError(
            TIMEOUT_SETTING,
            f"may not be longer than host.json's functionTimeout ({FUNCTION_TIMEOUT}): a claim on records lives that "
            "long plus 2 minutes, and a longer invocation could find its claim taken over and its rows sent twice",
        )


def whole_number(value: str, setting: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise SettingsError(setting, "is not a whole number") from None
    if not low <= number <= high:
        raise SettingsError(setting, f"must be between {low} and {high}")
    return number
