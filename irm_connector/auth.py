"""Tokens for the Management Activity API: msal for a client secret or certificate, azure-identity for
the function's managed identity. Tokens for Azure resources (Logs Ingestion, identity-based storage)
come from :func:`azure_credential`."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import contextvars
import json
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import aiohttp
import msal
import requests
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError, ServiceResponseError
from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from msal.exceptions import MsalError

from ._network import exception_chain, network_cause
from ._tls import IDENTITY_ENDPOINT_VARIABLES, azure_client_kwargs, ca_file
from .clouds import identity_authority
from .errors import CODE_LIMIT, AuthenticationError, NotInAzureError, SettingsError, quoted_text
from .settings import Settings

T = TypeVar("T")

__all__ = [
    "IDENTITY_ENVIRONMENT",
    "IdentityTokenProvider",
    "ManagementTokenProvider",
    "MsalTokenProvider",
    "azure_credential",
    "identity_endpoint_known",
    "in_cloud_shell",
]

#: OAuth errors only a person can fix (RFC 6749 §5.2, and Entra's invalid_resource). Anything else —
#: temporarily_unavailable, server_error, throttling, a 5xx page that is not OAuth at all — is retried.
_PERMANENT_ERRORS = {
    "invalid_client", "unauthorized_client", "invalid_request", "invalid_grant", "invalid_scope",
    "unsupported_grant_type", "access_denied", "invalid_resource",
}  # fmt: skip


class ManagementTokenProvider(Protocol):
    """Gives bearer tokens for the Management Activity API. ``failure_replay``: for how many seconds after a
    failed answer a new request may get that answer again instead of asking (a retry waits at least that)."""

    failure_replay: float

    async def get_token(self, *, refresh: bool = False) -> str: ...

    async def close(self) -> None: ...


class MsalTokenProvider:
    """Client credentials through msal (secret or certificate). msal caches the token in the application
    object, so one provider is kept per process.

    The msal application is built on the first token request, not here: msal reads the tenant's OpenID
    configuration from Entra ID when it is built, and that network call belongs where its failure is
    reported (an :class:`AuthenticationError` naming the host), not in building the runtime. The credential
    itself is read here, so a certificate that does not load is a settings error before any call."""

    #: msal (a confidential client) answers a token request with a 5xx or a 429 it got in the last 5 seconds (the
    #: Retry-After, when one came): a retry sooner gets that replay, not Entra ID.
    failure_replay = 6.0

    def __init__(self, settings: Settings) -> None:
        self._scope = f"{settings.api_audience}/.default"
        self._settings = settings
        self._credential = _client_credential(settings)
        self._app: msal.ConfidentialClientApplication | None = None
        self._lock = asyncio.Lock()
        #: msal's request in its thread, and whether it drops the cached token first: shared by every waiter
        self._asking: asyncio.Future[dict[str, Any]] | None = None
        self._asking_refresh = False

    @property
    def _audience(self) -> str:
        return self._scope.removesuffix("/.default")

    def _build(self) -> msal.ConfidentialClientApplication:
        settings = self._settings
        session = _TimedSession(settings.http_timeout.total_seconds())
        cafile = ca_file()
        if cafile:
            session.verify = cafile
        return msal.ConfidentialClientApplication(
            settings.client_id,
            client_credential=self._credential,
            authority=f"{settings.authority_host}/{settings.tenant_id}",
            # A custom authority host (sovereign proxy, tests) is not in Microsoft's instance list.
            instance_discovery=not settings.authority_overridden,
            http_client=session,  # msal applies no timeout to a session it is given: the session has its own
        )

    async def get_token(self, *, refresh: bool = False) -> str:
        async with self._lock:
            result = await asyncio.shield(await self._request(refresh))
        token = result.get("access_token")
        if isinstance(token, str) and token:
            return token
        # Entra's words, or a proxy's on the token path: bounded, as the Management API's are.
        error = quoted_text(result.get("error", "unknown_error"), CODE_LIMIT)
        description = [quoted_text(line, 300) for line in str(result.get("error_description", "")).splitlines()[:1]]
        if error == "unreachable":
            raise AuthenticationError(self._audience, description[0], transient=True)
        if error == "no_tenant":
            raise AuthenticationError(self._audience, description[0])
        if error not in _PERMANENT_ERRORS:
            raise AuthenticationError(
                self._audience, f"Entra ID is unavailable or throttling ({error}); retried", transient=True
            )
        raise AuthenticationError(
            self._audience,
            f"{error}: {description[0] if description else 'no description'} - check O365_CLIENT_ID, the "
            "secret or certificate, and that ActivityFeed.Read is granted with admin consent",
        )

    async def _request(self, refresh: bool) -> asyncio.Future[dict[str, Any]]:
        """msal's request for a token: the one under way, or a new one. A waiter cut short by its deadline frees the
        lock but not the thread msal runs in: the next waiter shares that request rather than starting another
        beside it (while Entra answers slowly, each would hold one of the loop's threads, which DNS lookups and the
        bodies' compression wait for)."""
        asking = self._asking
        if asking is not None and not asking.done() and refresh and not self._asking_refresh:
            # msal's token is dropped only by a request that asks to: this one waits for the request under way.
            await asyncio.wait([asking])
        asking = self._asking
        if asking is None or asking.done():
            asking = self._asking = _in_a_daemon_thread(self._acquire, refresh)
            asking.add_done_callback(_retrieved)  # its waiters may all have been cut short
            self._asking_refresh = refresh
        return asking

    def _acquire(self, refresh: bool) -> dict[str, Any]:
        host = urlsplit(self._settings.authority_host).netloc
        try:
            if self._app is None:
                self._app = self._build()
            if refresh:
                # msal serves from its cache; a token the API refused must be replaced.
                self._app.remove_tokens_for_client()
            result = self._app.acquire_token_for_client(scopes=[self._scope])
        except (requests.ConnectionError, requests.Timeout) as exc:
            return {
                "error": "unreachable",
                "error_description": f"cannot reach Entra ID at {host} ({network_cause(exc)}): check "
                "O365_AUTHORITY_HOST (or O365_CLOUD) and the network",
            }
        except ValueError as exc:
            if self._app is None and (passing := _passing_discovery_fault(exc)):
                return {"error": "unreachable", "error_description": f"Entra ID at {host} {passing}; retried"}
            if self._app is None:
                # msal could not read the tenant's OpenID configuration: Entra answered, without the tenant.
                return {
                    "error": "no_tenant",
                    "error_description": f"Entra ID at {host} has no OpenID configuration for tenant "
                    f"{self._settings.tenant_id} ({type(exc).__name__}): check O365_TENANT_ID, "
                    "O365_AUTHORITY_HOST and O365_CLOUD",
                }
            return {"error": "temporarily_unavailable", "error_description": type(exc).__name__}
        except (requests.RequestException, MsalError) as exc:
            # Entra's 5xx answers (msal raises MsalServiceError for those) and other HTTP faults: worth
            # another try.
            return {"error": "temporarily_unavailable", "error_description": type(exc).__name__}
        return dict(result)

    async def close(self) -> None:
        return None


#: Where Azure gives code a managed identity, it says so in the environment: App Service and Functions
#: (IDENTITY_ENDPOINT), Azure ML (MSI_ENDPOINT with MSI_SECRET), AKS workload identity
#: (AZURE_FEDERATED_TOKEN_FILE). Without one of these only an Azure VM's instance metadata service (IMDS) can
#: give a token. Cloud Shell sets MSI_ENDPOINT alone, and its tokens are the signed-in user's: see
#: :func:`in_cloud_shell`.
IDENTITY_ENVIRONMENT = (*IDENTITY_ENDPOINT_VARIABLES, "AZURE_FEDERATED_TOKEN_FILE")

NOT_IN_AZURE = (
    "not running in Azure: O365_AUTH_MODE=managed_identity needs the function app's identity, which exists only "
    "in Azure (no IDENTITY_ENDPOINT here, Cloud Shell's identity is your own, and no Azure instance metadata "
    "service gave a token)"
)
NOT_IN_AZURE_HINT = "off Azure, use an app registration's credential (O365_AUTH_MODE=secret or certificate)"


def _set(name: str) -> bool:
    return bool(os.environ.get(name, "").strip())


def in_cloud_shell() -> bool:
    """Azure Cloud Shell: its MSI_ENDPOINT (without MSI_SECRET) gives the signed-in user's tokens, not an app's,
    and azure-identity refuses a ``client_id`` there (the app's settings carry one)."""
    return _set("MSI_ENDPOINT") and not _set("MSI_SECRET") and not _set("IDENTITY_ENDPOINT")


def identity_endpoint_known() -> bool:
    """Whether the environment names an endpoint of a managed identity of its own (see
    :data:`IDENTITY_ENVIRONMENT`); Cloud Shell's is the operator's, as off Azure."""
    return any(_set(name) for name in IDENTITY_ENVIRONMENT) and not in_cloud_shell()


class _TimedSession(requests.Session):
    """A session whose requests give up after ``timeout`` seconds unless told otherwise (msal sends through the
    session it is given without one, so an Entra ID that never answers would hold its thread for ever), and
    verify with its own CA bundle, when it has one, whatever the environment says. It follows the environment's
    proxy, but sends no ``.netrc`` login: requests would add the file's login for Entra ID's host (or its
    ``default`` one) to every token request as basic credentials beside the app's own, and the new host's to a
    redirected one."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout
        self.auth = _as_it_is  # a session with auth of its own never looks in .netrc

    def request(self, method: str, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        if kwargs.get("verify") is None and isinstance(self.verify, str):
            # Given per request: requests lets REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE override the session's bundle,
            # and the bundle every other client trusts (SSL_CERT_FILE first, see ca_file) must hold here too.
            kwargs["verify"] = self.verify
        return super().request(method, url, *args, **kwargs)

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        # requests' own, less its lookup of .netrc for the redirect's host: the Authorization header is dropped on
        # the way to another host, and nothing takes its place.
        headers, old, new = prepared_request.headers, response.request.url or "", prepared_request.url or ""
        if "Authorization" in headers and self.should_strip_auth(old, new):
            del headers["Authorization"]


def _as_it_is(request: requests.PreparedRequest) -> requests.PreparedRequest:
    return request


class IdentityTokenProvider:
    """The function's managed identity (``AZURE_CLIENT_ID`` picks a user-assigned one)."""

    failure_replay = 0.0  # azure-identity asks the endpoint again at once

    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self._scope = f"{settings.api_audience}/.default"
        client_id = os.environ.get("AZURE_CLIENT_ID") or None
        self._imds_only = not identity_endpoint_known()
        kwargs = azure_client_kwargs(settings, session)
        if self._imds_only:
            # An Azure VM's metadata service answers at once; elsewhere nothing does, and the SDK's retries
            # of 169.254.169.254 take 25-40 s to say so.
            kwargs = {**azure_client_kwargs(settings, session, connection_timeout=2.0), "retry_total": 0}
        # In Cloud Shell azure-identity would take its endpoint, the operator's own, and refuse the client id.
        self._credential = None if in_cloud_shell() else ManagedIdentityCredential(client_id=client_id, **kwargs)

    async def get_token(self, *, refresh: bool = False) -> str:
        audience = self._scope.removesuffix("/.default")
        if self._credential is None:
            raise NotInAzureError(audience, NOT_IN_AZURE, NOT_IN_AZURE_HINT)
        try:
            token = await self._credential.get_token(self._scope)
        except ClientAuthenticationError as exc:
            if self._imds_only:
                raise NotInAzureError(audience, NOT_IN_AZURE, NOT_IN_AZURE_HINT) from exc
            if exc.status_code is None or exc.status_code >= 500 or exc.status_code == 429:
                raise AuthenticationError(
                    audience, "the managed identity endpoint is unavailable; retried", transient=True
                ) from exc
            # The endpoint issues a token whatever the identity may do with it (the API's ActivityFeed.Read grant
            # shows as AF10001 there): a refusal here is about which identity, or whether one is attached.
            detail = _safe(exc.message or type(exc).__name__).removeprefix("(None) ")
            raise AuthenticationError(
                audience,
                f"managed identity failed ({detail}); check AZURE_CLIENT_ID: it names the user-assigned identity "
                "attached to the function app",
            ) from exc
        except (ServiceRequestError, ServiceResponseError) as exc:
            # No answer at all (a connection refused or dropped, a timeout): azure-identity raises these as they
            # came, not as an authentication error, and the endpoint is back after the host's token service is.
            raise AuthenticationError(
                audience, f"the managed identity endpoint is unavailable ({network_cause(exc)}); retried",
                transient=True,
            ) from exc
        return str(token.token)

    async def close(self) -> None:
        if self._credential is not None:
            await self._credential.close()


def azure_credential(
    settings: Settings,
    client_id: str | None = None,
    *,
    managed_identity_only: bool = False,
    session: aiohttp.ClientSession,
) -> AsyncTokenCredential:
    """The credential for Azure resources: in Azure, the function's managed identity; elsewhere whoever
    ``DefaultAzureCredential`` finds (``az login``, environment variables).

    ``managed_identity_only`` (``AzureWebJobsStorage__credential=managedidentity``) holds only where a
    managed identity endpoint exists: an operator who runs the CLI off Azure with the app's settings
    reaches storage with their own identity instead of failing on an identity that is not there."""
    kwargs = azure_client_kwargs(settings, session)
    if managed_identity_only and identity_endpoint_known():
        return ManagedIdentityCredential(client_id=client_id or os.environ.get("AZURE_CLIENT_ID") or None, **kwargs)
    # In Cloud Shell the app's identity is not there, and a client id would reach Cloud Shell's endpoint.
    mi_client_id = None if in_cloud_shell() else client_id or os.environ.get("AZURE_CLIENT_ID") or None
    return DefaultAzureCredential(
        managed_identity_client_id=mi_client_id,
        exclude_interactive_browser_credential=True,
        **kwargs,
        **identity_authority(settings.azure_cloud),  # a managed identity has no authority; the others do
    )


#: msal's words for an OpenID configuration answered 4xx: "... HTTP status: 404, Error: ...".
_DISCOVERY_STATUS = re.compile(r"HTTP status: (\d{3})\b")


def _in_a_daemon_thread(call: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``call(*args)`` in a thread of its own, its result a future of the running loop. Not the loop's pool
    (``to_thread``): a stopped process waits for that pool's threads at exit, and msal's request, which no cancel
    reaches, held a stopped command until Entra ID answered or HTTP_TIMEOUT ran out. A daemon thread is left to
    the process's end."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def settle(outcome: Callable[[Any], None], value: Any) -> None:
        def deliver() -> None:
            if not future.done():  # cancelled meanwhile
                outcome(value)

        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits for the outcome
            loop.call_soon_threadsafe(deliver)

    def run() -> None:
        try:
            result = context.run(call, *args)
        except BaseException as exc:  # handed to the future, as to_thread would
            settle(future.set_exception, exc)
        else:
            settle(future.set_result, result)

    threading.Thread(target=run, name="irm-msal-token", daemon=True).start()
    return future


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _passing_discovery_fault(exc: ValueError) -> str:
    """What went wrong reading the tenant's OpenID configuration, when a later try may pass; ``""`` when Entra
    answered that it has no such tenant (400, 404). msal raises ValueError for any 4xx and for a body that is not
    JSON alike, and raises its own over it (the one it caught is its context)."""
    for error in exception_chain(exc):
        if isinstance(error, json.JSONDecodeError):
            return "answered the tenant's OpenID configuration with a body that is not JSON (a proxy's page?)"
        found = _DISCOVERY_STATUS.search(str(error))
        if found and found.group(1) in ("408", "429"):
            return f"throttled or timed out reading the tenant's OpenID configuration (HTTP {found.group(1)})"
    return ""


def _safe(text: str) -> str:
    """First line only, bounded: SDK messages can echo request details."""
    line = text.splitlines()[0] if text else ""
    return line[:300]


def _client_credential(settings: Settings) -> str | dict[str, str]:
    if settings.auth_mode == "secret":
        return settings.client_secret
    setting = "O365_CLIENT_CERTIFICATE_PATH" if settings.certificate_path else "O365_CLIENT_CERTIFICATE"
    try:
        raw = Path(settings.certificate_path).read_bytes() if settings.certificate_path else _cert_bytes(settings)
    except OSError as exc:  # checked a file when the settings were read; unreadable to this process
        raise SettingsError(setting, f"cannot be read ({exc.strerror or type(exc).__name__}): give this process "
                                     "read access to the file") from None
    password = settings.certificate_password.encode() or None
    try:
        if b"-----BEGIN" in raw:
            key: Any = _pem_key(raw, password)
            certs = x509.load_pem_x509_certificates(raw)
        else:
            key, certs = _pfx(raw, password)
    except (ValueError, TypeError) as exc:
        raise SettingsError(
            setting,
            f"is not a PEM file with the private key and certificate, nor a PFX that "
            f"O365_CLIENT_CERTIFICATE_PASSWORD opens ({type(exc).__name__})",
        ) from None
    if key is None or not certs:
        raise SettingsError(setting, "holds no private key or no certificate")
    # A file may hold the chain too, in any order (`cat ca.pem app.pem key.pem`): the first certificate's thumbprint
    # would be sent, one the app registration does not have, and Entra ID refuse every token (AADSTS700027).
    own = _public_key_der(key)
    cert = next((c for c in certs if _public_key_der(c) == own), None)
    if cert is None:
        raise SettingsError(setting, "holds no certificate of its private key (only others': a CA's, another app's); "
                                     "put the app's own certificate beside its key")  # fmt: skip
    if not isinstance(key, rsa.RSAPrivateKey):
        # msal would fail at the first token, blaming a missing package ("pip install cryptography").
        kind = type(key).__name__.removeprefix("_").removesuffix("PrivateKey") or "another"
        raise SettingsError(setting, f"holds an {kind} key: Entra ID accepts certificates with an RSA key only "
                                     "(in Key Vault, key type RSA)")  # fmt: skip
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "private_key": key_pem,
        "thumbprint": cert.fingerprint(hashes.SHA1()).hex(),  # noqa: S303 - the x5t thumbprint Entra asks for
        "public_certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
    }


def _pem_key(raw: bytes, password: bytes | None) -> Any:
    try:
        return serialization.load_pem_private_key(raw, password=password)
    except TypeError:
        if password is None:
            raise
        # "Password was given but private key is not encrypted": Key Vault gives a PEM-policy certificate that
        # way, whatever password the deployment passed beside it (as a PFX, below).
        return serialization.load_pem_private_key(raw, password=None)


def _pfx(raw: bytes, password: bytes | None) -> tuple[Any, list[x509.Certificate]]:
    try:
        key, cert, others = pkcs12.load_key_and_certificates(raw, password)
    except ValueError:
        if password is None:
            raise
        # Key Vault gives a certificate it holds as a PFX without a password, whatever it was imported with: a
        # password set beside that (o365ClientCertificatePassword) must not make it unreadable.
        key, cert, others = pkcs12.load_key_and_certificates(raw, None)
    return key, ([cert] if cert is not None else []) + list(others)


def _public_key_der(holder: Any) -> bytes:
    """The SubjectPublicKeyInfo of a private key or a certificate, to tell which certificate is the key's."""
    try:
        public = holder.public_key()
    except (ValueError, TypeError):  # a certificate whose key type this cryptography does not know
        return b""
    return bytes(public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def _cert_bytes(settings: Settings) -> bytes:
    text = settings.certificate_data
    if "-----BEGIN" in text:
        return text.encode()
    try:
        # Line breaks included: `base64 cert.pfx` wraps at 76 columns.
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise SettingsError("O365_CLIENT_CERTIFICATE", "is neither PEM text nor base64 (a PFX)") from None
