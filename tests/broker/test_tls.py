"""The TLS listener: a test CA made with the openssl CLI, and clients we did not write that verify it."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import Callable
from pathlib import Path

from broker.auth import set_password
from fleet.mqtt import v5
from tests.conftest import BrokerFactory
from tests.pki import Pki, needs_openssl
from tests.procs import (
    MOSQUITTO_PUB,
    MOSQUITTO_SUB,
    SUB_WAIT,
    TIMEOUT,
    FleetBroker,
    Paho,
    Proc,
    connect_packet,
    mosquitto,
    needs_mosquitto_clients,
    run,
)
from tests.rawmqtt import RawClient
from tests.rawmqtt5 import Raw5

pytestmark = needs_openssl


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


@needs_mosquitto_clients
def test_client_certificate_cn_is_the_acl_user_name_for_mosquitto_pub(
    start_fleet_broker: Callable[..., FleetBroker], pki: Pki, tmp_path: Path
) -> None:
    """With --require-certificate --use-identity-as-username, a client certificate's CN is `%u` for ACLs."""
    acl = tmp_path / "acl"
    acl.write_text("pattern readwrite devices/%u/#\n")
    broker = start_fleet_broker(
        "--tls-cert", pki.cert, "--tls-key", pki.key, "--tls-port", 0, "--port", 0, "--ws-port", 0,
        "--cafile", pki.ca, "--require-certificate", "--use-identity-as-username", "--acl-file", acl,
        schemes=("mqtt", "mqtts"),
    )  # fmt: skip
    tls = broker.ports["mqtts"]

    def as_device(tool: str | None, name: str, *args: str | int) -> list[str]:
        cert, key = pki.client(name)
        return mosquitto(tool, tls, "--cafile", pki.ca, "--cert", cert, "--key", key, *args)

    # cert-1 may retain under its own name; its publish under cert-2's is dropped by the ACL.
    for topic in ("devices/cert-1/a", "devices/cert-2/a"):
        done = run(as_device(MOSQUITTO_PUB, "cert-1", "-t", topic, "-r", "-q", 1, "-m", "from cert-1"))
        assert done.returncode == 0, done.stderr
    done = run(as_device(MOSQUITTO_PUB, "cert-2", "-t", "devices/cert-2/m", "-r", "-q", 1, "-m", "marker"))
    assert done.returncode == 0, done.stderr
    sub = Proc(as_device(MOSQUITTO_SUB, "cert-2", "-t", "devices/#", "-v", "-C", 2, "-W", SUB_WAIT))
    try:
        sub.stdout.wait_for("devices/cert-2/m marker")
        done = run(as_device(MOSQUITTO_PUB, "cert-2", "-t", "devices/cert-2/b", "-q", 1, "-m", "own"))
        assert done.returncode == 0, done.stderr
        assert sub.wait(TIMEOUT + 5) == 0, sub.describe()
    finally:
        sub.stop()
    # cert-2 reads neither cert-1's retained message nor the one cert-1 tried to put under cert-2.
    assert sub.stdout.lines == ["devices/cert-2/m marker", "devices/cert-2/b own"]

    # Without a certificate the handshake fails; on the plain port a claimed user name is refused.
    done = run(mosquitto(MOSQUITTO_PUB, tls, "--cafile", pki.ca, "-t", "devices/x/a", "-m", "no cert"))
    assert done.returncode != 0
    done = run(mosquitto(MOSQUITTO_PUB, broker.port, "-u", "cert-2", "-t", "devices/cert-2/a", "-m", "spoof"))
    assert done.returncode != 0
    assert "bad user name or password" in done.stderr.lower()


async def test_a_reload_keeps_clients_whose_identity_is_their_certificate(
    broker_factory: BrokerFactory, pki: Pki, tmp_path: Path
) -> None:
    """With --use-identity-as-username, a reloaded password file (SIGHUP) does not disconnect a client
    that logged in with its certificate and no password: CONNECT's rule is applied again."""
    passwords = tmp_path / "passwd"
    set_password(passwords, "operator", "s3cret")
    settings = {
        "tls_cert": pki.cert, "tls_key": pki.key, "cafile": pki.ca, "require_certificate": True,
        "use_identity_as_username": True, "password_file": passwords,
    }  # fmt: skip
    async with broker_factory(**settings) as broker:
        assert broker.tls_port is not None
        context = _client_context(pki)
        context.load_cert_chain(*pki.client("cert-1"))
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.tls_port, ssl=context)
        device = RawClient(reader, writer)
        # The user name it claims is ignored: the certificate's CN is its identity, no password needed.
        assert (await device.connect("cert-1", username="claimed")) == (False, 0)
        broker.reload()
        device.pingreq()
        assert type(await device.read()).__name__ == "PingRespPacket"
        await device.close()
