"""``StandIns``: Entra ID, the Management Activity API and Logs Ingestion, ready to use.

Why one object: the tests, the demo and the benchmark all need the same wiring — one
test CA, one token registry shared by the issuer and the checkers, a registered app with a
secret and a certificate, a tenant known to every service — and the connector settings that
point at it all (:meth:`StandIns.settings_env`). The three HTTPS servers run in one background
thread with its own event loop, so any caller (sync, async, any loop) can use them.
"""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path
from types import TracebackType

from standins.base import Clock
from standins.entra import EntraStandIn
from standins.ingestion import DEFAULT_COLUMNS_PATH, IngestionStandIn, load_streams
from standins.management import ManagementStandIn
from standins.server import ServerThread
from standins.tls import TestCA
from standins.tokens import TokenRegistry


class StandIns:
    """Starts and owns the stand-in services; see the module docstring."""

    def __init__(
        self,
        *,
        tenant_id: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        token_lifetime: float = 3599.0,
        page_size: int = 200,
        rows_dir: Path | str | None = None,
        columns_path: Path | str = DEFAULT_COLUMNS_PATH,
        directory: Path | str | None = None,
        dcr_immutable_id: str | None = None,
        ca: TestCA | None = None,
        subscribed: tuple[str, ...] = ("Audit.General",),
        server_names: tuple[str, ...] = (),
    ) -> None:
        """``ca``: share one test CA between instances (RSA key generation is the slow part of
        setting up); the caller then owns it. ``directory``: where a CA of our own keeps its files.
        ``subscribed``: the content types whose subscription has been enabled since always (a tenant that
        has been exporting; content of any age is listed); ``()`` for a tenant that never subscribed, where
        only what is created after a start is (apis.md). ``server_names``: host names the servers' certificate
        names besides 127.0.0.1 and localhost, for a test whose resolver sends a Microsoft host here."""
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.client_id = client_id or str(uuid.uuid4())
        self.client_secret = client_secret or secrets.token_urlsafe(30)
        self.dcr_immutable_id = dcr_immutable_id or f"dcr-{uuid.uuid4().hex}"
        self._owns_ca = ca is None
        self.ca = ca or TestCA(directory)
        self.ca_path = self.ca.ca_path
        self.client_certificate = self.ca.issue_client_certificate(f"app-{self.client_id[:8]}")
        self.certificate_path = self.client_certificate.pem_path
        self.certificate_thumbprint = self.client_certificate.thumbprint
        self.tokens = TokenRegistry(token_lifetime)
        self.clock = Clock()
        self.entra = EntraStandIn(self.tokens, managed_identity_tenant=self.tenant_id)
        self.entra.register_app(
            self.tenant_id,
            self.client_id,
            secret=self.client_secret,
            certificate=self.client_certificate.certificate,
        )
        self.management = ManagementStandIn(self.tokens, clock=self.clock, page_size=page_size)
        self.management.add_tenant(self.tenant_id)
        for content_type in subscribed:
            self.management.set_subscription(content_type, "enabled")
        self.ingestion = IngestionStandIn(
            self.tokens,
            dcr_immutable_id=self.dcr_immutable_id,
            streams=load_streams(columns_path),
            rows_dir=rows_dir,
        )
        self._server_names = server_names
        self._servers: ServerThread | None = None

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> StandIns:
        if self._servers is None:
            servers = ServerThread(self.ca.server_context(*self._server_names))
            servers.start([self.entra, self.management, self.ingestion])
            self._servers = servers
        return self

    def stop(self) -> None:
        """Stop the servers (the CA files stay until :meth:`close`)."""
        if self._servers is not None:
            self._servers.stop()
            self._servers = None

    def close(self) -> None:
        self.stop()
        if self._owns_ca:
            self.ca.cleanup()

    def __enter__(self) -> StandIns:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def reset(self) -> None:
        """Between tests: no faults, latency, logs or accepted rows; real-time clock."""
        for service in (self.entra, self.management, self.ingestion):
            service.clear_faults()
            service.clear_log()
            service.set_latency(0.0)
        self.ingestion.clear_rows()
        self.clock.resume()

    # ---- where things are ------------------------------------------------------------------
    @property
    def authority_host(self) -> str:
        """``https://127.0.0.1:P``; msal's authority is ``{authority_host}/{tenant_id}``."""
        return self.entra.base_url

    @property
    def authority(self) -> str:
        return f"{self.authority_host}/{self.tenant_id}"

    @property
    def api_root(self) -> str:
        """The Management API root, also the token audience (scope ``{api_root}/.default``)."""
        return self.management.base_url

    @property
    def management_scope(self) -> str:
        return f"{self.api_root}/.default"

    @property
    def ingestion_endpoint(self) -> str:
        return self.ingestion.base_url

    @property
    def identity_endpoint(self) -> str:
        return self.entra.identity_endpoint

    @property
    def identity_header(self) -> str:
        return self.entra.identity_header

    def settings_env(self) -> dict[str, str]:
        """The connector's settings pointing at these stand-ins (plus the CA variables)."""
        ca = str(self.ca_path)
        return {
            "O365_TENANT_ID": self.tenant_id,
            "O365_CLIENT_ID": self.client_id,
            "O365_CLIENT_SECRET": self.client_secret,
            "O365_API_ROOT": self.api_root,
            "O365_AUTHORITY_HOST": self.authority_host,
            "LOGS_INGESTION_ENDPOINT": self.ingestion_endpoint,
            "LOGS_DCR_IMMUTABLE_ID": self.dcr_immutable_id,
            "IDENTITY_ENDPOINT": self.identity_endpoint,
            "IDENTITY_HEADER": self.identity_header,
            "SSL_CERT_FILE": ca,
            "REQUESTS_CA_BUNDLE": ca,
        }
