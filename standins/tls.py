"""A throw-away certificate authority for the HTTPS stand-ins.

Why real TLS: msal, azure-identity, aiohttp and the Azure SDKs refuse plain ``http://`` for
token endpoints (or behave differently with it), so the stand-ins serve HTTPS with
certificates from this CA, and the clients are pointed at :attr:`TestCA.ca_path`.

trustme issues EC keys by default; msal's certificate credential signs its client assertion
with RS256/PS256 and needs an RSA key, so both the CA and every leaf use RSA.
"""

from __future__ import annotations

import hashlib
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

SERVER_IDENTITIES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class ClientCertificate:
    """An RSA client certificate for msal's certificate credential.

    ``pem_path`` holds the private key followed by the certificate (the layout the connector
    reads); ``thumbprint`` is the SHA-1 hex digest of the DER certificate, the value Entra ID
    shows and msal's ``{"private_key", "thumbprint"}`` credential expects.
    """

    pem_path: Path
    private_key_pem: str
    certificate_pem: str
    thumbprint: str
    thumbprint_sha256: str

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.certificate_pem.encode())

    def msal_credential(self) -> dict[str, str]:
        """The ``client_credential`` dict for ``msal.ConfidentialClientApplication``."""
        return {"private_key": self.private_key_pem, "thumbprint": self.thumbprint}


class TestCA:
    """The CA, its PEM file on disk, and the server context for 127.0.0.1/localhost."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, directory: Path | str | None = None) -> None:
        if directory is None:
            self._tmp: tempfile.TemporaryDirectory[str] | None = tempfile.TemporaryDirectory(prefix="standins-ca-")
            directory = self._tmp.name
        else:
            self._tmp = None
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._ca = trustme.CA(key_type=trustme.KeyType.RSA, organization_name="IRM connector stand-ins")
        self.ca_path = self.directory / "standins-ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_path))
        self._server_cert = self._ca.issue_cert(*SERVER_IDENTITIES, key_type=trustme.KeyType.RSA)

    @property
    def ca_pem(self) -> bytes:
        return self._ca.cert_pem.bytes()

    def server_context(self, *names: str) -> ssl.SSLContext:
        """A server-side context presenting the 127.0.0.1/localhost certificate, or one that also names
        ``names`` (a stand-in answering as a Microsoft host, reached through a test's resolver)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert = self._ca.issue_cert(*SERVER_IDENTITIES, *names, key_type=trustme.KeyType.RSA) if names else None
        (cert or self._server_cert).configure_cert(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A client-side context trusting only this CA (for aiohttp sessions in tests)."""
        return ssl.create_default_context(cafile=str(self.ca_path))

    def issue_client_certificate(self, name: str = "irm-connector") -> ClientCertificate:
        """Issue an RSA certificate for an app registration's certificate credential."""
        leaf = self._ca.issue_cert(f"{name}.client.invalid", common_name=name, key_type=trustme.KeyType.RSA)
        key_pem = leaf.private_key_pem.bytes().decode()
        cert_pem = leaf.cert_chain_pems[0].bytes().decode()
        der = x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(Encoding.DER)
        path = self.directory / f"{name}.pem"
        path.write_text(key_pem + cert_pem)
        path.chmod(0o600)
        return ClientCertificate(
            pem_path=path,
            private_key_pem=key_pem,
            certificate_pem=cert_pem,
            thumbprint=hashlib.sha1(der).hexdigest().upper(),
            thumbprint_sha256=hashlib.sha256(der).hexdigest().upper(),
        )

    def cleanup(self) -> None:
        """Remove the temporary directory (if this CA created it)."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
