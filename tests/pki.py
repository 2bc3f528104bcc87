"""Test certificates made with the openssl CLI: a CA, a server certificate, and client certificates."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")

OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = unused

[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True)
class Pki:
    """A CA (`ca`, with its key in the same folder) and the server certificate it signed."""

    ca: Path
    cert: Path
    key: Path

    def client(self, name: str) -> tuple[Path, Path]:
        """A client certificate with CN=`name` signed by this CA, and its key: (cert, key)."""
        directory = self.ca.parent
        cert, key = directory / f"{name}.pem", directory / f"{name}.key"
        if not cert.exists():
            _signed(directory, name, "client", serial=abs(hash(name)) % 10**9 + 10)
        return cert, key


def _openssl(directory: Path, *args: str) -> None:
    assert OPENSSL is not None
    done = subprocess.run(
        [OPENSSL, *args], cwd=directory, capture_output=True, text=True, timeout=60, check=False
    )  # fmt: skip
    assert done.returncode == 0, f"openssl {' '.join(args)} failed:\n{done.stderr}"


def _signed(directory: Path, name: str, extensions: str, *, serial: int) -> None:
    _openssl(
        directory, "req", "-new", "-config", "openssl.cnf", *_EC,
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        directory, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-set_serial", str(serial), "-days", "2", "-extfile", "openssl.cnf", "-extensions", extensions,
        "-out", f"{name}.pem",
    )  # fmt: skip


def make_pki(directory: Path, ca_name: str = "mqtt-fleet test CA") -> Pki:
    """A self-signed test CA in `directory`, and a server certificate for DNS:localhost and IP:127.0.0.1."""
    (directory / "openssl.cnf").write_text(OPENSSL_CONFIG)
    _openssl(
        directory, "req", "-x509", "-config", "openssl.cnf", "-extensions", "ca", *_EC,
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", f"/CN={ca_name}",
    )  # fmt: skip
    # The server's CN is 'localhost'; its file is named apart from any client's.
    _openssl(
        directory, "req", "-new", "-config", "openssl.cnf", *_EC,
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
    )  # fmt: skip
    _openssl(
        directory, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-set_serial", "2", "-days", "2", "-extfile", "openssl.cnf", "-extensions", "server",
        "-out", "server.pem",
    )  # fmt: skip
    return Pki(ca=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server.key")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A self-signed test CA, a server certificate it signed for localhost and 127.0.0.1, and client ones."""
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed")
    return make_pki(tmp_path_factory.mktemp("tls"))
