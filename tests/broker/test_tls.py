"""The TLS listener: a test CA made with the openssl CLI, and clients we did not write that verify it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet.mqtt import v5
from tests.conftest import BrokerFactory
from tests.procs import (
    MOSQUITTO_PUB,
    MOSQUITTO_SUB,
    SUB_WAIT,
    TIMEOUT,
    FleetBroker,
    Paho,
    connect_packet,
    mosquitto,
    needs_mosquitto_clients,
    run,
)
from tests.rawmqtt import RawClient
from tests.rawmqtt5 import Raw5

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")

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
"""


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path


def _openssl(directory: Path, *args: str) -> None:
    assert OPENSSL is not None
    done = subprocess.run(
        [OPENSSL, *args], cwd=directory, capture_output=True, text=True, timeout=60, check=False
    )  # fmt: skip
    assert done.returncode == 0, f"openssl {' '.join(args)} failed:\n{done.stderr}"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A self-signed test CA and a server certificate it signed for DNS:localhost and IP:127.0.0.1."""
    directory = tmp_path_factory.mktemp("tls")
    (directory / "openssl.cnf").write_text(OPENSSL_CONFIG)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        directory, "req", "-x509", "-config", "openssl.cnf", "-extensions", "ca", *ec,
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=mqtt-fleet test CA",
    )  # fmt: skip
    _openssl(
        directory, "req", "-new", "-config", "openssl.cnf", *ec,
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
    )  # fmt: skip
    _openssl(
        directory, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-set_serial", "2", "-days", "2", "-extfile", "openssl.cnf", "-extensions", "server",
        "-out", "server.pem",
    )  # fmt: skip
    return Pki(ca=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server.key")


def _client_context(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=pki.ca)


async def _tls_client(port: int, pki: Pki, server_hostname: str | None = None) -> RawClient:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=_client_context(pki), server_hostname=server_hostname
    )
    return RawClient(reader, writer)


async def test_broker_exposes_tls_listener(broker_factory: BrokerFactory, pki: Pki) -> None:
    """With tls_cert/tls_key the broker listens for TLS on its own port and lists an mqtts:// URL."""
    async with broker_factory(tls_cert=pki.cert, tls_key=pki.key, tls_port=0) as broker:
        assert broker.tls_port is not None
        assert broker.tls_port not in (0, broker.port)
        assert f"mqtts://127.0.0.1:{broker.tls_port}" in broker.urls
        assert f"mqtt://127.0.0.1:{broker.port}" in broker.urls


@needs_mosquitto_clients
async def test_mosquitto_pub_over_tls_reaches_tls_subscriber(broker_factory: BrokerFactory, pki: Pki) -> None:
    """mosquitto_pub --cafile publishes over TLS (verifying IP 127.0.0.1) to a subscriber also on TLS."""
    async with broker_factory(tls_cert=pki.cert, tls_key=pki.key, tls_port=0) as broker:
        assert broker.tls_port is not None
        # This subscriber verifies the certificate by its DNS name, localhost.
        subscriber = await _tls_client(broker.tls_port, pki, server_hostname="localhost")
        try:
            assert await subscriber.connect("tls-sub") == (False, 0)
            assert await subscriber.subscribe(("tls/#", 1)) == [1]
            argv = mosquitto(
                MOSQUITTO_PUB, broker.tls_port, "--cafile", pki.ca, "-t", "tls/hello", "-q", 1, "-m", "secret"
            )  # fmt: skip
            done = await asyncio.to_thread(run, argv)
            assert done.returncode == 0, done.stderr
            received = await subscriber.read_publish()
            assert (received.topic, received.payload, received.qos) == ("tls/hello", b"secret", 1)
            assert received.packet_id is not None
            subscriber.puback(received.packet_id)
            await subscriber.disconnect()
        finally:
            await subscriber.close()


async def test_paho_subscribes_over_tls(
    broker_factory: BrokerFactory, pki: Pki, paho_client: Callable[..., Paho]
) -> None:
    """paho-mqtt with tls_set(ca_certs=...) connects, subscribes and receives over TLS."""
    async with broker_factory(tls_cert=pki.cert, tls_key=pki.key, tls_port=0) as broker:
        assert broker.tls_port is not None
        paho = paho_client("paho-tls")
        paho.client.tls_set(ca_certs=str(pki.ca))
        try:
            # paho blocks its caller while it waits; the broker runs on this event loop, so wait in a thread.
            assert await asyncio.to_thread(paho.connect, broker.tls_port) is False
            assert await asyncio.to_thread(paho.subscribe, "tls/paho", 2) == [2]
            publisher = await _tls_client(broker.tls_port, pki)
            try:
                assert await publisher.connect("tls-pub") == (False, 0)
                publisher.publish("tls/paho", b"over tls", qos=0)
                await publisher.disconnect()
            finally:
                await publisher.close()
            message = await asyncio.to_thread(paho.message)
            assert (message.topic, message.payload, message.qos) == ("tls/paho", b"over tls", 0)
        finally:
            await asyncio.to_thread(paho.close)


async def test_plain_mqtt_on_tls_port_gets_no_connack(broker_factory: BrokerFactory, pki: Pki) -> None:
    """A plain-TCP CONNECT to the TLS port gets no CONNACK: the broker closes it, and TLS still works."""
    async with broker_factory(tls_cert=pki.cert, tls_key=pki.key, tls_port=0) as broker:
        assert broker.tls_port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.tls_port)
        try:
            writer.write(connect_packet("plain-on-tls"))
            received = b""
            async with asyncio.timeout(TIMEOUT):
                try:
                    while chunk := await reader.read(65536):
                        received += chunk
                except ConnectionResetError:
                    pass
            # At most a TLS alert record (content type 21) may come back; never an MQTT CONNACK (0x20).
            assert received == b"" or received[0] == 21, received
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

        client = await _tls_client(broker.tls_port, pki)
        try:
            assert await client.connect("after-plain") == (False, 0)
            await client.disconnect()
        finally:
            await client.close()


@needs_mosquitto_clients
def test_fleet_broker_cli_prints_mqtts_url_and_serves_tls(
    start_fleet_broker: Callable[..., FleetBroker], pki: Pki
) -> None:
    """`fleet broker --tls-cert C --tls-key K --tls-port 0` prints an mqtts:// URL that serves TLS."""
    broker = start_fleet_broker(
        "--tls-cert", pki.cert, "--tls-key", pki.key, "--tls-port", 0, "--port", 0, "--ws-port", 0,
        schemes=("mqtt", "mqtts"),
    )  # fmt: skip
    assert broker.urls["mqtts"] == f"mqtts://127.0.0.1:{broker.ports['mqtts']}"
    assert broker.ports["mqtts"] != broker.port

    topic = f"tls/cli/{uuid.uuid4().hex[:8]}"
    tls = broker.ports["mqtts"]
    done = run(mosquitto(MOSQUITTO_PUB, tls, "--cafile", pki.ca, "-t", topic, "-r", "-q", 1, "-m", "kept"))
    assert done.returncode == 0, done.stderr
    sub_argv = mosquitto(MOSQUITTO_SUB, broker.port, "-t", topic, "-C", 1, "-W", SUB_WAIT)
    got = run(sub_argv, timeout=TIMEOUT + 5)
    assert (got.returncode, got.stdout) == (0, "kept\n"), got.stderr


@needs_mosquitto_clients
async def test_mqtt5_clients_over_tls(broker_factory: BrokerFactory, pki: Pki) -> None:
    """An MQTT 5 client on the TLS listener gets CONNACK properties and what mosquitto_pub -V mqttv5 sends
    over TLS, user properties included."""
    async with broker_factory(tls_cert=pki.cert, tls_key=pki.key, tls_port=0) as broker:
        assert broker.tls_port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.tls_port, ssl=_client_context(pki))
        subscriber = Raw5(reader, writer)
        try:
            assert (await subscriber.connect("tls5-sub")).properties.receive_maximum == 20
            assert await subscriber.subscribe(v5.Subscription("tls5/#", 1)) == (1,)
            argv = [
                MOSQUITTO_PUB, "-V", "mqttv5", "-h", "127.0.0.1", "-p", str(broker.tls_port),
                "--cafile", str(pki.ca), "-t", "tls5/hello", "-q", "1", "-m", "secret",
                "-D", "publish", "user-property", "k", "v",
            ]  # fmt: skip
            done = await asyncio.to_thread(run, [str(arg) for arg in argv])
            assert done.returncode == 0, done.stderr
            received = await subscriber.read_publish()
            assert (received.topic, received.payload) == ("tls5/hello", b"secret")
            assert received.properties.user_properties == (("k", "v"),)
        finally:
            await subscriber.close()
