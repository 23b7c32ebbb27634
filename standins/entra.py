"""Entra ID stand-in: OIDC discovery, the v2 client-credentials token endpoint, and the
App Service managed identity endpoint.

Why it exists: the connector gets Management API tokens through msal (client secret or
certificate) and Logs Ingestion tokens through azure-identity's managed identity; both must
run their real code paths (discovery, assertion signing, caching, refresh) in tests.

Routes (fault-injection route names in brackets):

- ``GET /{tenant}/v2.0/.well-known/openid-configuration`` [``discovery``]
- ``POST /{tenant}/oauth2/v2.0/token`` [``token``]: ``client_secret`` or a ``client_assertion``
  JWT signed RS256 (``x5t``) or PS256 (``x5t#S256``) by a registered certificate.
- ``GET /msi/token?api-version=2019-08-01&resource=...`` with ``X-IDENTITY-HEADER`` [``msi``]

Using it with msal::

    app = msal.ConfidentialClientApplication(
        client_id, client_credential=secret, authority=f"{authority_host}/{tenant}",
        instance_discovery=False, http_client=requests.Session())

``requests`` (msal's HTTP client) ignores ``SSL_CERT_FILE`` and lets the ``REQUESTS_CA_BUNDLE``
/ ``CURL_CA_BUNDLE`` environment variables override ``session.verify``; these are preset on the
build machines, so a test must set ``REQUESTS_CA_BUNDLE`` to the test CA (``monkeypatch.setenv``)
— ``session.verify = ca_path`` alone is silently ignored.

With azure-identity (async): ``IDENTITY_ENDPOINT={authority_host}/msi/token`` and
``IDENTITY_HEADER=...`` select the App Service source; TLS trust comes from
``connection_verify=ca_path`` (see standins/README.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from standins.base import CLIENT_ID, ApiError, ServiceStandIn, json_response
from standins.tokens import TokenRegistry, normalize_audience

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MSI_API_VERSION = "2019-08-01"
#: Who Cloud Shell's tokens stand for: the operator signed in to the portal, not an app.
CLOUD_SHELL_USER = "cloud-shell-operator"


@dataclass
class AppRegistration:
    """An app registration (service principal) in one tenant."""

    tenant_id: str
    client_id: str
    object_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    secrets: set[str] = field(default_factory=set)
    certificates: list[x509.Certificate] = field(default_factory=list)


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _aad_error(status: int, error: str, code: int, description: str) -> ApiError:
    """Entra's OAuth error body (``error``, ``error_description`` starting ``AADSTSnnn:``)."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    trace = str(uuid.uuid4())
    message = f"AADSTS{code}: {description} Trace ID: {trace} Timestamp: {now}"
    body: dict[str, Any] = {
        "error": error,
        "error_description": message,
        "error_codes": [code],
        "timestamp": now,
        "trace_id": trace,
        "correlation_id": str(uuid.uuid4()),
    }
    return ApiError(status, error, message, body=body)


class EntraStandIn(ServiceStandIn):
    """Issues opaque tokens into a shared :class:`TokenRegistry`."""

    routes = frozenset({"discovery", "token", "msi"})

    def __init__(
        self,
        tokens: TokenRegistry,
        *,
        identity_header: str | None = None,
        managed_identity_tenant: str | None = None,
        managed_identity_client_id: str | None = None,
    ) -> None:
        super().__init__()
        self.tokens = tokens
        self.identity_header = identity_header or secrets.token_hex(16)
        self.managed_identity_tenant = managed_identity_tenant or str(uuid.uuid4())
        self.managed_identity_client_id = managed_identity_client_id or str(uuid.uuid4())
        self._user_assigned: set[str] = set()
        self._tenants: set[str] = set()
        self._apps: dict[tuple[str, str], AppRegistration] = {}
        self._apps_lock = threading.Lock()

    # ---- directory ---------------------------------------------------------------------
    def add_tenant(self, tenant_id: str) -> None:
        with self._apps_lock:
            self._tenants.add(tenant_id)

    def register_app(
        self,
        tenant_id: str,
        client_id: str,
        *,
        secret: str | None = None,
        certificate: x509.Certificate | str | None = None,
    ) -> AppRegistration:
        """Register (or extend) an app with a secret and/or a certificate (object or PEM)."""
        if isinstance(certificate, str):
            certificate = x509.load_pem_x509_certificate(certificate.encode())
        with self._apps_lock:
            self._tenants.add(tenant_id)
            app = self._apps.setdefault((tenant_id, client_id), AppRegistration(tenant_id, client_id))
            if secret is not None:
                app.secrets.add(secret)
            if certificate is not None:
                app.certificates.append(certificate)
            return app

    def remove_secrets(self, tenant_id: str, client_id: str) -> None:
        """Forget an app's secrets (secret rotated or expired in the portal)."""
        with self._apps_lock:
            app = self._apps.get((tenant_id, client_id))
            if app is not None:
                app.secrets.clear()

    def add_user_assigned_identity(self, client_id: str) -> None:
        with self._apps_lock:
            self._user_assigned.add(client_id)

    def _app(self, tenant_id: str, client_id: str) -> AppRegistration | None:
        with self._apps_lock:
            return self._apps.get((tenant_id, client_id))

    def _has_tenant(self, tenant_id: str) -> bool:
        with self._apps_lock:
            return tenant_id in self._tenants

    def token_endpoint(self, tenant_id: str) -> str:
        return f"{self.base_url}/{tenant_id}/oauth2/v2.0/token"

    @property
    def identity_endpoint(self) -> str:
        return f"{self.base_url}/msi/token"

    @property
    def cloud_shell_endpoint(self) -> str:
        """Azure Cloud Shell's MSI_ENDPOINT: tokens of the signed-in operator (:data:`CLOUD_SHELL_USER`)."""
        return f"{self.base_url}/cloudshell/token"

    # ---- HTTP --------------------------------------------------------------------------
    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            self.routed("discovery", self._discovery),
        )
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self.routed("token", self._token))
        app.router.add_get("/msi/token", self.routed("msi", self._msi))
        app.router.add_post("/cloudshell/token", self.routed("cloudshell", self._cloud_shell))
        return app

    def error_body(self, error: ApiError) -> Any:
        return {"error": error.code, "error_description": error.message}

    def default_fault_code(self, status: int) -> str:
        return "temporarily_unavailable" if status >= 500 or status == 429 else "invalid_request"

    def _unknown_tenant(self, tenant: str) -> ApiError:
        return _aad_error(
            400,
            "invalid_request",
            90002,
            f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
            "signing into the correct cloud.",
        )

    async def _discovery(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        if not self._has_tenant(tenant):
            raise self._unknown_tenant(tenant)
        base = f"{self.base_url}/{tenant}"
        return json_response(
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{self.base_url}/{tenant}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{base}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "tenant_region_scope": "EU",
                "cloud_instance_name": "127.0.0.1",
            }
        )

    async def _token(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        form = await request.post()
        fields = {k: str(v) for k, v in form.items()}
        client_id = fields.get("client_id", "")
        request[CLIENT_ID] = client_id or None
        if not self._has_tenant(tenant):
            raise self._unknown_tenant(tenant)
        if fields.get("grant_type") != "client_credentials":
            raise _aad_error(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{fields.get('grant_type')}'.",
            )
        scope = fields.get("scope", "").split()
        if len(scope) != 1 or not scope[0].endswith("/.default"):
            raise _aad_error(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {' '.join(scope)} is not valid. Client credential flows "
                "must have a scope value with /.default suffixed to the resource identifier "
                "(application ID URI).",
            )
        app = self._app(tenant, client_id)
        if app is None:
            raise _aad_error(
                401,
                "invalid_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory '{tenant}'.",
            )
        if "client_assertion" in fields or "client_assertion_type" in fields:
            kind = "client_certificate"
            self._check_assertion(app, tenant, fields)
        else:
            kind = "client_secret"
            if fields.get("client_secret") not in app.secrets:
                raise _aad_error(
                    401,
                    "invalid_client",
                    7000215,
                    f"Invalid client secret provided. Ensure the secret being sent in the request is the "
                    f"client secret value, not the client secret ID, for a secret added to app "
                    f"'{client_id}'.",
                )
        info = self.tokens.issue(
            audience=normalize_audience(scope[0]),
            tenant_id=tenant,
            client_id=client_id,
            object_id=app.object_id,
            kind=kind,
        )
        lifetime = round(info.expires_at - info.issued_at)
        return json_response(
            {
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": info.token,
            }
        )

    def _check_assertion(self, app: AppRegistration, tenant: str, fields: dict[str, str]) -> None:
        """Verify a client assertion the way Entra does: type, signature, thumbprint, claims."""
        if fields.get("client_assertion_type") != ASSERTION_TYPE:
            raise _aad_error(400, "invalid_request", 50027, "Invalid client_assertion_type; expected jwt-bearer.")

        def fail(code: int, text: str) -> ApiError:
            return _aad_error(401, "invalid_client", code, text)

        assertion = fields.get("client_assertion", "")
        try:
            head_b64, payload_b64, sig_b64 = assertion.split(".")
            header = json.loads(_b64url_decode(head_b64))
            claims = json.loads(_b64url_decode(payload_b64))
            signature = _b64url_decode(sig_b64)
        except (ValueError, binascii.Error) as exc:
            raise fail(50027, f"JWT token is invalid or malformed: {exc}.") from exc
        alg = header.get("alg")
        cert = self._find_certificate(app, header)
        if cert is None:
            raise fail(
                700027,
                "Client assertion failed signature validation. The key was not found: the certificate "
                "with the thumbprint in the assertion is not registered on the application.",
            )
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise fail(700027, "Client assertion failed signature validation: the key is not RSA.")
        signed = f"{head_b64}.{payload_b64}".encode()
        try:
            if alg == "RS256":
                key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
            elif alg == "PS256":
                key.verify(
                    signature,
                    signed,
                    padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO),
                    hashes.SHA256(),
                )
            else:
                raise fail(700027, f"Client assertion uses the unsupported algorithm {alg!r}.")
        except InvalidSignature as exc:
            raise fail(700027, "Client assertion failed signature validation.") from exc
        now = time.time()
        accepted_audiences = {
            self.token_endpoint(tenant),
            f"{self.base_url}/{tenant}/oauth2/token",
            f"{self.base_url}/{tenant}/v2.0",
        }
        if claims.get("aud") not in accepted_audiences:
            raise fail(
                700212,
                f"No matching federated identity record found for presented assertion audience '{claims.get('aud')}'.",
            )
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            raise fail(700021, "Client assertion application identifier doesn't match 'client_id' parameter.")
        if not isinstance(claims.get("exp"), int | float) or claims["exp"] < now - 300:
            raise fail(700024, "Client assertion is not within its valid time range.")
        if isinstance(claims.get("nbf"), int | float) and claims["nbf"] > now + 300:
            raise fail(700024, "Client assertion is not within its valid time range.")

    @staticmethod
    def _find_certificate(app: AppRegistration, header: dict[str, Any]) -> x509.Certificate | None:
        # msal keeps the base64 padding on x5t; RFC 7515 says base64url without it: accept both.
        x5t = str(header.get("x5t", "")).rstrip("=")
        x5t256 = str(header.get("x5t#S256", "")).rstrip("=")
        for cert in app.certificates:
            der = cert.public_bytes(Encoding.DER)
            if x5t256 and x5t256 == _b64url(hashlib.sha256(der).digest()):
                return cert
            if x5t and x5t == _b64url(hashlib.sha1(der).digest()):
                return cert
        return None

    async def _cloud_shell(self, request: web.Request) -> web.Response:
        """Cloud Shell's identity endpoint: a form POST of ``resource`` with ``Metadata: true``; the token is
        the signed-in user's, and it knows no client ids (azure-identity refuses to send one)."""
        if request.headers.get("Metadata") != "true":
            raise ApiError(400, "invalid_request", "Required metadata header not specified")
        form = await request.post()
        resource = str(form.get("resource") or "")
        if not resource or set(form) != {"resource"}:
            raise ApiError(400, "invalid_request", "Only the resource parameter is accepted")
        info = self.tokens.issue(
            audience=resource, tenant_id=self.managed_identity_tenant, client_id=CLOUD_SHELL_USER, kind="cloud_shell"
        )
        return json_response(
            {
                "access_token": info.token,
                "expires_in": str(int(info.expires_at - time.time())),
                "expires_on": str(int(info.expires_at)),
                "resource": resource,
                "token_type": "Bearer",
            }
        )

    async def _msi(self, request: web.Request) -> web.Response:
        """App Service managed identity (api-version 2019-08-01)."""
        secret = request.headers.get("X-IDENTITY-HEADER")
        if secret is None:
            raise ApiError(
                400,
                "invalid_request",
                "Required header X-IDENTITY-HEADER is missing.",
                body={"statusCode": 400, "message": "Required header X-IDENTITY-HEADER is missing."},
            )
        if secret != self.identity_header:
            raise ApiError(
                401,
                "unauthorized",
                "The X-IDENTITY-HEADER value is not valid.",
                body={"statusCode": 401, "message": "The X-IDENTITY-HEADER value is not valid."},
            )
        query = request.query
        if query.get("api-version") != MSI_API_VERSION:
            raise ApiError(
                400,
                "invalid_request",
                f"api-version '{query.get('api-version')}' is not supported.",
                body={"statusCode": 400, "message": "Unsupported api-version."},
            )
        resource = query.get("resource")
        if not resource:
            raise ApiError(
                400,
                "invalid_request",
                "The resource parameter is required.",
                body={"statusCode": 400, "message": "The resource parameter is required."},
            )
        client_id = query.get("client_id") or self.managed_identity_client_id
        request[CLIENT_ID] = client_id
        with self._apps_lock:
            known = client_id == self.managed_identity_client_id or client_id in self._user_assigned
        if not known:
            raise ApiError(
                400,
                "invalid_request",
                "No managed identity found for the specified client_id.",
                body={"statusCode": 400, "message": "No managed identity found for specified ClientId"},
            )
        info = self.tokens.issue(
            audience=resource,
            tenant_id=self.managed_identity_tenant,
            client_id=client_id,
            kind="managed_identity",
        )
        return json_response(
            {
                "access_token": info.token,
                "expires_on": str(int(info.expires_at)),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": client_id,
            }
        )
