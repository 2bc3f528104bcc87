"""TLS for the bridges' listeners: HTTPS and WSS through uvicorn's SSL options, gRPC through server
credentials, and optional client certificates (mTLS) on both."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from fleet.errors import ConfigError

__all__ = ["TlsFiles"]


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The server's certificate chain and key (PEM), and the CA that client certificates must be
    signed by (None: no client certificates asked for)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @classmethod
    def of(cls, cert: Path | None, key: Path | None, client_ca: Path | None = None) -> TlsFiles | None:
        """The files, checked by loading them once (ConfigError names the file and why); None without a
        certificate."""
        if cert is None or key is None:
            return None
        files = cls(cert, key, client_ca)
        files.server_context()
        return files

    def server_context(self) -> ssl.SSLContext:
        """What uvicorn will build from `uvicorn_options`, built here to name a bad file."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{self.cert}, {self.key}", f"cannot load the certificate and key: {exc}"
            ) from None
        if self.client_ca is not None:
            try:
                context.load_verify_locations(self.client_ca)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(str(self.client_ca), f"cannot load the client CA: {exc}") from None
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def uvicorn_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key)}
        if self.client_ca is not None:
            options.update(ssl_ca_certs=str(self.client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
        return options

    def grpc_credentials(self) -> grpc.ServerCredentials:
        try:
            chain = self.cert.read_bytes()
            key = self.key.read_bytes()
            roots = self.client_ca.read_bytes() if self.client_ca is not None else None
        except OSError as exc:
            raise ConfigError(str(exc.filename), f"cannot read: {exc.strerror}") from None
        return grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=roots, require_client_auth=roots is not None
        )
