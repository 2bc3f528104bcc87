"""The device transport against real brokers: the embedded broker and Mosquitto, over `Link` (TCP and
WebSocket) and the aiomqtt reference transport; a scripted fake broker only for what a real one
will not do on demand (protocol violations, missing PINGRESP, a repeated QoS 2 PUBLISH)."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from broker.auth import set_password
from broker.server import Broker
from fleet.aiomqtt_link import AiomqttLink
from fleet.errors import ConnectionLost, ConnectRefused, ProtocolError, TransportError, UnsupportedOperation
from fleet.packets import (
    Connect,
    Disconnect,
    FrameReader,
    PacketId,
    Pingreq,
    Publish,
    Subscribe,
    Will,
    connack,
    decode_client_packet,
    encode_publish,
    pingresp,
    puback,
    suback,
)
from fleet.transport import ClientSession, Endpoint, Link, make_connect
from tests.conftest import BrokerFactory
from tests.procs import Proc, free_port

TIMEOUT = 10.0
MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
OPENSSL = shutil.which("openssl")

AnyLink = Link | AiomqttLink
LOST = b'{"online": false, "reason": "lost"}'
CLEAN = b'{"online": false, "reason": "clean"}'


# Brokers


@dataclass(frozen=True)
class Target:
    """A running broker: its MQTT/TCP and MQTT/WebSocket endpoints."""

    name: str
    tcp: Endpoint
    ws: Endpoint

    def endpoint(self, transport: str) -> Endpoint:
        return self.ws if transport == "link-ws" else self.tcp


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """Mosquitto on free loopback ports (TCP and WebSocket), anonymous; stopped by PID at teardown."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    directory = tmp_path_factory.mktemp("mosquitto")
    # A port free a moment ago may be taken before Mosquitto binds it: then try other ports.
    for _attempt in range(3):
        tcp_port, ws_port = free_port(), free_port()
        conf = directory / "mosquitto.conf"
        conf.write_text(
            f"listener {tcp_port} 127.0.0.1\n"
            f"listener {ws_port} 127.0.0.1\nprotocol websockets\n"
            "allow_anonymous true\nlog_dest stderr\n"
        )
        proc = Proc([MOSQUITTO, "-c", str(conf)])
        try:
            # stderr: Mosquitto's stdout is block-buffered in a pipe.
            line = proc.stderr.lines[proc.stderr.wait_for(lambda text: " running" in text or "Error" in text)]
            if " running" in line:
                yield Target(
                    "mosquitto", Endpoint("mqtt", "127.0.0.1", tcp_port), Endpoint("ws", "127.0.0.1", ws_port)
                )
                return
        finally:
            proc.stop()
    raise AssertionError(f"Mosquitto did not start:\n{proc.describe()}")


@pytest.fixture(params=["embedded", "mosquitto"])
async def target(request: pytest.FixtureRequest, broker_factory: BrokerFactory) -> AsyncIterator[Target]:
    """Each real broker in turn."""
    if request.param == "mosquitto":
        yield request.getfixturevalue("mosquitto")
        return
    async with broker_factory(ws_port=0) as broker:
        assert broker.ws_port is not None
        yield Target(
            "embedded",
            Endpoint("mqtt", "127.0.0.1", broker.port),
            Endpoint("ws", "127.0.0.1", broker.ws_port),
        )


# Devices


class Inbox:
    """Collects what a link receives; `wait_for` awaits a count with a timeout."""

    def __init__(self) -> None:
        self.messages: list[Publish] = []
        self._arrived = asyncio.Event()

    def __call__(self, message: Publish) -> None:
        self.messages.append(message)
        self._arrived.set()

    async def wait_for(self, count: int, timeout: float = TIMEOUT) -> list[Publish]:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.messages

    @property
    def payloads(self) -> list[bytes]:
        return [message.payload for message in self.messages]


@dataclass
class Device:
    link: AnyLink
    present: bool
    inbox: Inbox
    session: ClientSession = field(repr=False)


Opener = Callable[..., Awaitable[Device]]


@pytest.fixture
async def open_device() -> AsyncIterator[Opener]:
    """Open device links (`transport` is link, link-ws or aiomqtt); all are aborted at teardown."""
    opened: list[AnyLink] = []

    async def open_(
        endpoint: Endpoint,
        client_id: str,
        *,
        transport: str = "link",
        session: ClientSession | None = None,
        ssl: ssl.SSLContext | None = None,
        **connect: Any,
    ) -> Device:
        inbox = Inbox()
        session = ClientSession() if session is None else session
        cls = AiomqttLink if transport == "aiomqtt" else Link
        link, present = await cls.open(
            endpoint, make_connect(client_id, **connect), session=session, on_message=inbox, ssl=ssl
        )
        opened.append(link)
        return Device(link, present, inbox, session)

    yield open_
    for link in opened:
        link.abort()
        async with asyncio.timeout(TIMEOUT):
            await link.closed


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def settle(future: Awaitable[Any] | None, timeout: float = TIMEOUT) -> Any:
    assert future is not None
    async with asyncio.timeout(timeout):
        return await future


BEHAVIOUR = pytest.mark.parametrize("transport", ["link", "link-ws", "aiomqtt"])


# Endpoint


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://localhost", Endpoint("mqtt", "localhost", 1883)),
        ("mqtts://broker.example:9000", Endpoint("mqtts", "broker.example", 9000)),
        ("ws://127.0.0.1", Endpoint("ws", "127.0.0.1", 8083, "/mqtt")),
        ("wss://h.example/custom", Endpoint("wss", "h.example", 443, "/custom")),
        ("MQTT://[::1]:1884/", Endpoint("mqtt", "::1", 1884)),
    ],
)
def test_endpoint_parses_urls_with_default_ports(url: str, expected: Endpoint) -> None:
    """Endpoint.parse fills in the default port per scheme and the /mqtt path for WebSocket."""
    assert Endpoint.parse(url) == expected


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://h", "scheme must be mqtt"),
        ("h:1883", r"has no scheme; did you mean mqtt://h:1883\?"),
        ("tcp://h:1883", r"MQTT over TCP is mqtt://; did you mean mqtt://h:1883\?"),
        ("ssl://h:8883", r"MQTT over TLS is mqtts://; did you mean mqtts://h:8883\?"),
        ("mqtt://", "has no host"),
        ("mqtt://h:99999", "port must be a number"),
        ("mqtt://h:0", "port must be a number"),
        ("mqtt://h:x", "port must be a number"),
        ("mqtt://u:p@h", "credentials"),
        ("mqtt://h/path", "has no path"),
        ("ws://h/mqtt?x=1", "query"),
    ],
)
def test_endpoint_rejects_bad_urls_clearly(url: str, complaint: str) -> None:
    """A bad broker URL is a ValueError that says what is wrong with it."""
    with pytest.raises(ValueError, match=complaint):
        Endpoint.parse(url)


# Publish, subscribe, receive


@BEHAVIOUR
async def test_publish_qos_0_1_2_reaches_subscriber(
    target: Target, transport: str, open_device: Opener
) -> None:
    """Publishes at QoS 0, 1 and 2 reach a subscriber at their QoS; the QoS 1/2 futures resolve on ack."""
    endpoint = target.endpoint(transport)
    base = unique("t")
    subscriber = await open_device(endpoint, unique("sub"), transport=transport)
    assert subscriber.present is False
    assert await subscriber.link.subscribe([(f"{base}/#", 2)]) == (2,)
    publisher = await open_device(endpoint, unique("pub"), transport=transport)

    assert publisher.link.publish(f"{base}/0", b"zero") is None
    await settle(publisher.link.publish(f"{base}/1", b"one", qos=1))
    await settle(publisher.link.publish(f"{base}/2", b"two", qos=2))
    assert not publisher.session.inflight

    received = await subscriber.inbox.wait_for(3)
    assert sorted((m.topic, m.payload, m.qos) for m in received) == [
        (f"{base}/0", b"zero", 0),
        (f"{base}/1", b"one", 1),
        (f"{base}/2", b"two", 2),
    ]


async def test_subscribe_returns_each_filters_granted_qos(target: Target, open_device: Opener) -> None:
    """subscribe() returns SUBACK's codes, one per filter, and unsubscribe() waits for UNSUBACK."""
    device = await open_device(target.tcp, unique("dev"))
    base = unique("s")
    link = device.link
    assert isinstance(link, Link)
    assert await link.subscribe([(f"{base}/a", 0), (f"{base}/b", 1), (f"{base}/+/c", 2)]) == (0, 1, 2)
    await link.unsubscribe([f"{base}/a"])
    link.publish(f"{base}/a", b"gone")
    link.publish(f"{base}/b", b"kept", qos=1)
    received = await device.inbox.wait_for(1)
    assert [(m.topic, m.payload) for m in received] == [(f"{base}/b", b"kept")]


# Wills


def _will(topic: str) -> Will:
    return Will(topic, LOST, 1, False)


async def _watch(open_device: Opener, target: Target, topic: str) -> Device:
    watcher = await open_device(target.tcp, unique("watch"))
    assert await watcher.link.subscribe([(topic, 1)]) == (1,)
    return watcher


@BEHAVIOUR
async def test_will_fires_after_abort(target: Target, transport: str, open_device: Opener) -> None:
    """abort() ends the connection without DISCONNECT, so the broker publishes the will."""
    status = f"fleet/{unique('d')}/status"
    watcher = await _watch(open_device, target, status)
    device = await open_device(
        target.endpoint(transport), unique("dev"), transport=transport, will=_will(status)
    )

    device.link.abort()

    received = await watcher.inbox.wait_for(1, timeout=5)
    assert [(m.topic, m.payload) for m in received] == [(status, LOST)]
    assert isinstance(await settle(device.link.closed), ConnectionLost)


async def test_will_fires_after_go_silent(target: Target, open_device: Opener) -> None:
    """go_silent() stops every write, PINGREQ too: with keepalive 1 the broker drops us and the will fires."""
    # One device per Link transport (TCP, WebSocket), silenced together: Mosquitto 2.0.11 sweeps for
    # expired keepalives only every ~6 s, so its wills come 1.5-7.5 s after the silence starts.
    devices: dict[str, tuple[str, Device]] = {}
    watcher = await open_device(target.tcp, unique("watch"))
    for transport in ("link", "link-ws"):
        status = f"fleet/{unique('d')}/status"
        assert await watcher.link.subscribe([(status, 1)]) == (1,)
        device = await open_device(
            target.endpoint(transport), unique("dev"), transport=transport, will=_will(status), keepalive=1
        )
        devices[transport] = (status, device)

    for _, device in devices.values():
        device.link.go_silent()
        assert device.link.publish("fleet/x/telemetry", b"never sent") is None

    received = await watcher.inbox.wait_for(2, timeout=10 if target.name == "mosquitto" else 5)
    assert sorted((m.topic, m.payload) for m in received) == sorted((s, LOST) for s, _ in devices.values())
    for _, device in devices.values():
        assert isinstance(await settle(device.link.closed), ConnectionLost)


async def test_aiomqtt_go_silent_is_unsupported(target: Target, open_device: Opener) -> None:
    """AiomqttLink.go_silent() raises UnsupportedOperation rather than pretending."""
    device = await open_device(target.tcp, unique("dev"), transport="aiomqtt")
    with pytest.raises(UnsupportedOperation, match="use Link"):
        device.link.go_silent()


@BEHAVIOUR
async def test_no_will_after_disconnect(target: Target, transport: str, open_device: Opener) -> None:
    """After disconnect() the status topic carries the clean message, then a later marker, and no will."""
    status = f"fleet/{unique('d')}/status"
    watcher = await _watch(open_device, target, status)
    device = await open_device(
        target.endpoint(transport), unique("dev"), transport=transport, will=_will(status)
    )

    await settle(device.link.publish(status, CLEAN, qos=1))
    await device.link.disconnect()
    assert await settle(device.link.closed) is None
    # Link.disconnect() returns once the broker has closed the connection, so it has processed the
    # DISCONNECT: a will, if it wrongly fired, would be routed before this marker. (paho, under
    # aiomqtt, closes its side right after writing DISCONNECT, so there this relies on loopback order.)
    await settle(watcher.link.publish(status, b"marker", qos=1))

    await watcher.inbox.wait_for(2)
    assert watcher.inbox.payloads == [CLEAN, b"marker"]


@pytest.mark.parametrize("transport", ["link", "aiomqtt"])
async def test_cancelling_a_wait_on_closed_leaves_it_intact(
    broker: Broker, transport: str, open_device: Opener
) -> None:
    """A cancelled `await link.closed` cancels only that view: later ones still see how the link ended."""
    device = await open_device(Endpoint("mqtt", "127.0.0.1", broker.port), unique("dev"), transport=transport)
    assert device.link.closed is device.link.closed  # One view, not a new future per access.
    view = device.link.closed
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0):
            await view
    assert view.cancelled()
    assert not device.link.closed.done()
    device.link.abort()
    assert isinstance(await settle(device.link.closed), ConnectionLost)


# Sessions


@BEHAVIOUR
async def test_persistent_session_receives_what_was_queued_offline(
    target: Target, transport: str, open_device: Opener
) -> None:
    """QoS 1 messages sent while a CleanSession=0 device was away arrive when it is back, session present."""
    endpoint = target.endpoint(transport)
    client_id = unique("dev")
    cmd = f"fleet/{client_id}/cmd"
    session = ClientSession()
    device = await open_device(endpoint, client_id, transport=transport, clean_session=False, session=session)
    assert device.present is False
    assert await device.link.subscribe([(cmd, 1)]) == (1,)
    await device.link.disconnect()

    sender = await open_device(target.tcp, unique("sender"))
    for index in range(3):
        await settle(sender.link.publish(cmd, f"c{index}".encode(), qos=1))

    again = await open_device(endpoint, client_id, transport=transport, clean_session=False, session=session)
    assert again.present is True
    assert again.inbox.messages == []  # Never before open() has returned the link.
    received = await again.inbox.wait_for(3)
    assert [(m.topic, m.payload, m.qos) for m in received] == [
        (cmd, b"c0", 1),
        (cmd, b"c1", 1),
        (cmd, b"c2", 1),
    ]


@pytest.mark.parametrize("qos", [1, 2])
async def test_unacknowledged_publish_is_resent_after_reconnect(
    target: Target, qos: int, open_device: Opener
) -> None:
    """A publish cut off by abort() stays in the session; the reconnect re-sends it and its future resolves"""
    topic = f"fleet/{unique('d')}/telemetry"
    watcher = await open_device(target.tcp, unique("watch"))
    assert await watcher.link.subscribe([(topic, qos)]) == (qos,)
    client_id = unique("dev")
    session = ClientSession()
    device = await open_device(target.tcp, client_id, clean_session=False, session=session)

    # The write happens now, but no ack can be read before abort() in the same tick: whether or not
    # the broker got the message, only the re-sent copy can be acknowledged.
    future = device.link.publish(topic, b"reading", qos=qos)
    device.link.abort()
    assert isinstance(await settle(device.link.closed), ConnectionLost)
    assert future is not None
    assert not future.done()
    assert [(m.topic, m.qos) for m in session.inflight.values()] == [(topic, qos)]

    again = await open_device(target.tcp, client_id, clean_session=False, session=session)
    assert again.present is True
    await settle(future)
    assert not session.inflight

    received = await watcher.inbox.wait_for(1)
    assert {(m.topic, m.payload) for m in received} == {(topic, b"reading")}
    if qos == 2:
        assert len(received) == 1  # QoS 2: exactly once, re-sent or not.


async def test_clean_session_discards_unacknowledged_messages(
    broker_factory: BrokerFactory, open_device: Opener
) -> None:
    """Pending QoS 1 futures fail with ConnectionLost when a clean link ends or a clean connect drops them."""
    async with broker_factory() as broker:
        endpoint = Endpoint("mqtt", "127.0.0.1", broker.port)
        clean = await open_device(endpoint, unique("dev"))
        lost = clean.link.publish("fleet/x/telemetry", b"1", qos=1)
        clean.link.abort()
        with pytest.raises(ConnectionLost, match="clean-session link ended"):
            await settle(lost)

        client_id = unique("dev")
        session = ClientSession()
        persistent = await open_device(endpoint, client_id, clean_session=False, session=session)
        kept = persistent.link.publish("fleet/x/telemetry", b"2", qos=1)
        persistent.link.abort()
        await settle(persistent.link.closed)
        assert kept is not None
        assert not kept.done()
        await open_device(endpoint, client_id, clean_session=True, session=session)
        with pytest.raises(ConnectionLost, match="connected with a clean session"):
            await settle(kept)
        assert not session.inflight


# Failures to connect


@pytest.mark.parametrize("transport", ["link", "aiomqtt"])
async def test_connect_refused_codes(
    broker_factory: BrokerFactory, tmp_path: Path, transport: str, open_device: Opener
) -> None:
    """Against a broker with a password file: no credentials is code 5, a wrong password code 4."""
    passwords = tmp_path / "passwd"
    set_password(passwords, "alice", "s3cret")
    async with broker_factory(password_file=passwords, allow_anonymous=False) as broker:
        endpoint = Endpoint("mqtt", "127.0.0.1", broker.port)
        with pytest.raises(ConnectRefused, match="not authorized") as refused:
            await open_device(endpoint, unique("anon"), transport=transport)
        assert refused.value.return_code == 5
        with pytest.raises(ConnectRefused, match="bad user name or password") as refused:
            await open_device(
                endpoint, unique("dev"), transport=transport, username="alice", password=b"nope"
            )
        assert refused.value.return_code == 4
        device = await open_device(
            endpoint, unique("dev"), transport=transport, username="alice", password=b"s3cret"
        )
        assert device.link.connected


@pytest.mark.parametrize("transport", ["link", "link-ws", "aiomqtt"])
async def test_transport_error_when_nothing_listens(transport: str, open_device: Opener) -> None:
    """Connecting to a port where nothing listens raises TransportError naming the endpoint."""
    port = free_port()
    endpoint = Endpoint("ws" if transport == "link-ws" else "mqtt", "127.0.0.1", port)
    with pytest.raises(TransportError, match=f"127.0.0.1:{port}"):
        await open_device(endpoint, unique("dev"), transport=transport)


async def test_tls_context_only_for_tls_endpoints() -> None:
    """An SSL context for a plain mqtt:// endpoint is a mistake, reported before any I/O."""
    with pytest.raises(ValueError, match="not a TLS endpoint"):
        await Link.open(
            Endpoint("mqtt", "127.0.0.1", 1),
            make_connect("x"),
            session=ClientSession(),
            on_message=Inbox(),
            ssl=ssl.create_default_context(),
        )


# TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key."""
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed")
    directory = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "key.pem", "-out", "cert.pem", "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        cwd=directory, capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    return directory / "cert.pem", directory / "key.pem"


@pytest.mark.parametrize("transport", ["link", "aiomqtt"])
async def test_mqtts_verifies_and_carries_messages(
    broker_factory: BrokerFactory, certificate: tuple[Path, Path], transport: str, open_device: Opener
) -> None:
    """mqtts:// verifies the broker's certificate against the given CA and carries a QoS 1 round trip."""
    cert, key = certificate
    async with broker_factory(tls_cert=cert, tls_key=key, tls_port=0) as broker:
        assert broker.tls_port is not None
        endpoint = Endpoint("mqtts", "127.0.0.1", broker.tls_port)
        context = ssl.create_default_context(cafile=cert)
        device = await open_device(endpoint, unique("dev"), transport=transport, ssl=context)
        topic = f"fleet/{unique('d')}/cmd"
        assert await device.link.subscribe([(topic, 1)]) == (1,)
        await settle(device.link.publish(topic, b"over tls", qos=1))
        assert [m.payload for m in await device.inbox.wait_for(1)] == [b"over tls"]


@pytest.mark.parametrize(
    "transport",
    [
        "link",
        # paho 2.2 leaves the socket of a failed TLS handshake unclosed (Client._ssl_wrap_socket).
        pytest.param(
            "aiomqtt", marks=pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
        ),
    ],
)
async def test_mqtts_refuses_an_untrusted_certificate(
    broker_factory: BrokerFactory, certificate: tuple[Path, Path], transport: str, open_device: Opener
) -> None:
    """mqtts:// with the default trust store refuses a self-signed broker certificate: TransportError."""
    cert, key = certificate
    async with broker_factory(tls_cert=cert, tls_key=key, tls_port=0) as broker:
        assert broker.tls_port is not None
        endpoint = Endpoint("mqtts", "127.0.0.1", broker.tls_port)
        with pytest.raises(TransportError, match="certificate verify failed"):
            await open_device(endpoint, unique("dev"), transport=transport)


# A scripted broker for what real ones will not do on demand


class Peer:
    """The server side of one connection to the fake broker."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._frames = FrameReader(1 << 20)
        self._pending: list[tuple[int, int, bytes]] = []

    async def read(self, timeout: float = TIMEOUT) -> object:
        async with asyncio.timeout(timeout):
            while not self._pending:
                data = await self.reader.read(4096)
                assert data, "the client closed the connection"
                self._pending.extend(self._frames.feed(data))
        return decode_client_packet(*self._pending.pop(0))

    async def accept(self, session_present: bool = False) -> Connect:
        packet = await self.read()
        assert isinstance(packet, Connect)
        self.writer.write(connack(session_present, 0))
        return packet


@pytest.fixture
async def fake_broker() -> AsyncIterator[tuple[Endpoint, asyncio.Queue[Peer]]]:
    """A TCP server on a free port; each connection is queued as a Peer for the test to script."""
    peers: asyncio.Queue[Peer] = asyncio.Queue()
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await peers.put(Peer(reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Endpoint("mqtt", "127.0.0.1", port), peers
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def _connect_fake(
    fake_broker: tuple[Endpoint, asyncio.Queue[Peer]], inbox: Inbox, keepalive: int = 60
) -> tuple[Link, Peer]:
    endpoint, peers = fake_broker
    opening = asyncio.ensure_future(
        Link.open(
            endpoint,
            make_connect(unique("dev"), keepalive=keepalive),
            session=ClientSession(),
            on_message=inbox,
        )
    )
    async with asyncio.timeout(TIMEOUT):
        peer = await peers.get()
    await peer.accept()
    link, _ = await settle(opening)
    return link, peer


@pytest.mark.parametrize(
    ("packet", "rule"),
    [
        (b"\x36\x05\x00\x01t\x00\x01", "QoS 3"),
        (connack(False, 0), "second CONNACK"),
        (suback(1, [0, 1]), None),
    ],
)
async def test_protocol_violation_closes_link(
    fake_broker: tuple[Endpoint, asyncio.Queue[Peer]], packet: bytes, rule: str | None
) -> None:
    """A broker that breaks the protocol gets its connection closed; `closed` holds the ProtocolError."""
    link, peer = await _connect_fake(fake_broker, Inbox())
    if rule is None:
        # A SUBACK with two codes for one filter.
        subscribing = asyncio.ensure_future(link.subscribe([("a/b", 1)]))
        assert await peer.read() == Subscribe(1, (("a/b", 1),))
        peer.writer.write(packet)
        with pytest.raises(ConnectionLost):
            await settle(subscribing)
        rule = "2 return codes for 1 filters"
    else:
        peer.writer.write(packet)
    reason = await settle(link.closed)
    assert isinstance(reason, ProtocolError)
    assert rule in str(reason)


async def test_protocol_violation_before_connack_fails_open(
    fake_broker: tuple[Endpoint, asyncio.Queue[Peer]],
) -> None:
    """A broker that answers CONNECT with anything but CONNACK makes open() raise ProtocolError."""
    endpoint, peers = fake_broker
    opening = asyncio.ensure_future(
        Link.open(endpoint, make_connect("dev"), session=ClientSession(), on_message=Inbox())
    )
    async with asyncio.timeout(TIMEOUT):
        peer = await peers.get()
    assert isinstance(await peer.read(), Connect)
    peer.writer.write(puback(1))
    with pytest.raises(ProtocolError, match="before CONNACK"):
        await settle(opening)


async def test_open_cancelled_after_connect_sends_disconnect(
    fake_broker: tuple[Endpoint, asyncio.Queue[Peer]],
) -> None:
    """A connect cancelled while it waits for CONNACK sends DISCONNECT, so the broker fires no will."""
    endpoint, peers = fake_broker
    will = Will("fleet/dev/status", b"lost", 1, True)
    opening = asyncio.ensure_future(
        Link.open(endpoint, make_connect("dev", will=will), session=ClientSession(), on_message=Inbox())
    )
    async with asyncio.timeout(TIMEOUT):
        peer = await peers.get()
    assert isinstance(await peer.read(), Connect)
    opening.cancel()
    assert isinstance(await peer.read(), Disconnect)
    peer.writer.close()  # as a broker does after DISCONNECT
    with pytest.raises(asyncio.CancelledError):
        await settle(opening)


async def test_open_times_out_without_connack(fake_broker: tuple[Endpoint, asyncio.Queue[Peer]]) -> None:
    """A server that never sends CONNACK makes open() raise TransportError after its timeout."""
    endpoint, _ = fake_broker
    with pytest.raises(TransportError, match=r"no CONNACK within 0\.2s"):
        await Link.open(
            endpoint, make_connect("dev"), session=ClientSession(), on_message=Inbox(), timeout=0.2
        )


async def test_open_timed_out_after_connect_sends_disconnect(
    fake_broker: tuple[Endpoint, asyncio.Queue[Peer]],
) -> None:
    """A connect that times out waiting for CONNACK sends DISCONNECT before it closes, so a broker that
    accepts the CONNECT late fires no will for a device that counts the connect as failed."""
    endpoint, peers = fake_broker
    will = Will("fleet/dev/status", b"lost", 1, True)
    with pytest.raises(TransportError, match=r"no CONNACK within 0\.2s"):
        await Link.open(
            endpoint, make_connect("dev", will=will), session=ClientSession(), on_message=Inbox(), timeout=0.2
        )
    async with asyncio.timeout(TIMEOUT):
        peer = await peers.get()
    assert isinstance(await peer.read(), Connect)
    assert isinstance(await peer.read(), Disconnect)


async def test_keepalive_sends_pingreq_when_idle(fake_broker: tuple[Endpoint, asyncio.Queue[Peer]]) -> None:
    """An idle link sends PINGREQ after `keepalive` seconds, and stays up when PINGRESP comes back."""
    link, peer = await _connect_fake(fake_broker, Inbox(), keepalive=1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert isinstance(await peer.read(timeout=3), Pingreq)
    assert 0.9 <= loop.time() - started < 2
    peer.writer.write(pingresp())
    assert isinstance(await peer.read(timeout=3), Pingreq)
    assert link.connected


async def test_keepalive_closes_link_without_pingresp(
    fake_broker: tuple[Endpoint, asyncio.Queue[Peer]],
) -> None:
    """A PINGREQ left unanswered for a keepalive period closes the link with ConnectionLost."""
    link, peer = await _connect_fake(fake_broker, Inbox(), keepalive=1)
    assert isinstance(await peer.read(timeout=3), Pingreq)
    reason = await settle(link.closed, 3)
    assert isinstance(reason, ConnectionLost)
    assert "no PINGRESP" in str(reason)


async def test_keepalive_finds_a_half_open_connection_while_publishing(
    fake_broker: tuple[Endpoint, asyncio.Queue[Peer]],
) -> None:
    """A link that keeps publishing QoS 1 into a silent broker sends PINGREQ, then closes without PINGRESP."""
    link, peer = await _connect_fake(fake_broker, Inbox(), keepalive=1)
    publishing = asyncio.Event()

    async def publish() -> None:
        for _ in range(50):  # 5 s at most; the link closes after about 2 s
            if not link.connected:
                return
            link.publish("a/b", b"x", qos=1)
            publishing.set()
            await asyncio.sleep(0.1)

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(publish())
        await asyncio.wait_for(publishing.wait(), TIMEOUT)
        async with asyncio.timeout(3):
            while not isinstance(await peer.read(timeout=3), Pingreq):
                pass
        reason = await settle(link.closed, 3)
    assert isinstance(reason, ConnectionLost)
    assert "no PINGRESP" in str(reason)


async def test_incoming_qos2_is_delivered_exactly_once(
    fake_broker: tuple[Endpoint, asyncio.Queue[Peer]],
) -> None:
    """A QoS 2 PUBLISH repeated (DUP) before PUBREL reaches on_message once; PUBREC to each, PUBCOMP last."""
    inbox = Inbox()
    link, peer = await _connect_fake(fake_broker, inbox)
    peer.writer.write(encode_publish(b"a/b", b"once", 2, packet_id=7))
    peer.writer.write(encode_publish(b"a/b", b"once", 2, dup=True, packet_id=7))
    assert await peer.read() == PacketId(5, 7)
    assert await peer.read() == PacketId(5, 7)
    peer.writer.write(b"\x62\x02\x00\x07")
    assert await peer.read() == PacketId(7, 7)
    assert inbox.payloads == [b"once"]
    assert not link.session.received


async def test_messages_that_come_with_connack_wait_for_open_to_return(
    fake_broker: tuple[Endpoint, asyncio.Queue[Peer]],
) -> None:
    """A PUBLISH in the same segment as CONNACK reaches on_message only after open() returns; then PUBACK."""
    endpoint, peers = fake_broker

    async def script() -> Peer:
        peer = await peers.get()
        assert isinstance(await peer.read(), Connect)
        peer.writer.write(connack(True, 0) + encode_publish(b"fleet/dev/cmd", b"queued", 1, packet_id=3))
        return peer

    serving = asyncio.ensure_future(script())
    inbox = Inbox()
    link, present = await Link.open(
        endpoint, make_connect("dev", clean_session=False), session=ClientSession(), on_message=inbox
    )
    assert present is True
    assert inbox.messages == []
    assert [m.payload for m in await inbox.wait_for(1)] == [b"queued"]
    peer = await settle(serving)
    assert await peer.read() == PacketId(4, 3)
    assert link.connected
