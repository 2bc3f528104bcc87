"""The device transport: one lean MQTT client connection (3.1.1 or 5) per simulated device.

A fleet runs thousands of these in one event loop, so a `Link` is an `asyncio.Protocol` with
`__slots__`: no task per connection, no timeout or Event per publish. Keepalive is one
`loop.call_later` handle per link that re-arms itself, and only QoS 1/2 publishes get a future.

    session = ClientSession()
    link, present = await Link.open(Endpoint.parse("mqtt://127.0.0.1:1883"), make_connect("dev-1"),
                                    session=session, on_message=print)
    link.publish("fleet/dev-1/telemetry", b"{}")          # QoS 0: written, returns None
    await link.publish("fleet/dev-1/status", b"{}", qos=1)  # QoS 1: resolves on PUBACK
    await link.disconnect()

A `fleet.mqtt.v5.Connect` opens an MQTT 5 link: `on_message` then gets `fleet.mqtt.v5.Publish`
values with their properties, `publish()` takes encoded properties (from
`fleet.mqtt.properties.encode_property_body`) and may alias the topic (`alias=True`: the first
publish on a topic sets a Topic Alias, later ones send only the alias, within the broker's Topic
Alias Maximum). CONNACK's properties are `link.properties`,
an Assigned Client Identifier is `link.client_id`, and a broker's DISCONNECT ends the link with
ServerDisconnected, its reason code.

Ways a link ends, as the broker sees them: `disconnect()` sends DISCONNECT (the will is discarded);
`abort()` closes the socket without it (the will fires); `go_silent()` stops writing while the
socket stays open, so the broker drops the link after 1.5 x keepalive (the will fires).

`fleet.websocket_link` carries a link over ws:// and wss://; `fleet.aiomqtt_link.AiomqttLink` offers
the same API on aiomqtt, as the reference the lean transport is checked and benchmarked against.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
import struct
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any, overload

from fleet.endpoint import Endpoint
from fleet.errors import (
    ConnectionLost,
    ConnectRefused,
    ProtocolError,
    PublishRefused,
    ServerDisconnected,
    TransportError,
)
from fleet.mqtt import v5
from fleet.mqtt.properties import EMPTY, Properties, encode_variable_int
from fleet.packets import (
    PUBACK,
    PUBCOMP,
    PUBREC,
    PUBREL,
    Connack,
    Connect,
    FrameReader,
    PacketId,
    Pingresp,
    Publish,
    Suback,
    Unsuback,
    Will,
    decode_server_packet,
    disconnect,
    encode_connect,
    encode_publish,
    encode_subscribe,
    encode_unsubscribe,
    pingreq,
    puback,
    pubcomp,
    pubrec,
    pubrel,
)
from fleet.topics import validate_filter, validate_topic

__all__ = [
    "ClientSession",
    "Endpoint",
    "InFlight",
    "Link",
    "make_connect",
    "tls_context",
    "validated_filters",
]

log = logging.getLogger("fleet.transport")

# Incoming packets larger than this close the link (the embedded broker's default limit, too).
MAX_PACKET_SIZE = 1 << 20
# A connection is congested when more than this is waiting in its write buffer.
WRITE_HIGH_WATER = 64 * 1024
# A connect cancelled after CONNECT waits this long for the broker to close after its DISCONNECT.
_LEAVE_TIMEOUT = 5.0
_U16 = struct.Struct("!H")
_TOPIC_ALIAS = 0x23  # the property identifier


def make_connect(
    client_id: str,
    *,
    keepalive: int = 60,
    clean_session: bool = True,
    will: Will | None = None,
    username: str | None = None,
    password: bytes | None = None,
) -> Connect:
    """An MQTT 3.1.1 CONNECT for a device."""
    if not 0 <= keepalive <= 65535:
        raise ValueError(f"keepalive must be 0-65535 seconds, got {keepalive}")
    if password is not None and username is None:
        raise ValueError("a password needs a user name [MQTT-3.1.2-22]")
    return Connect("MQTT", 4, clean_session, keepalive, client_id, will, username, password)


@dataclass(slots=True)
class InFlight:
    """An outgoing QoS 1/2 message not yet acknowledged; `released` once PUBREC came and PUBREL went."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    released: bool
    future: asyncio.Future[None]
    properties: bytes = b""  # MQTT 5: encoded, without a Topic Alias
    waiting: bool = False  # waits for a place under the broker's Receive Maximum
    sent: bool = True  # written at least once: a re-send sets DUP


class ClientSession:
    """Client-side session state that survives the reconnects of a persistent session.

    It holds the outgoing QoS 1/2 messages not yet acknowledged (`inflight`: packet id -> `InFlight`),
    the ids of incoming QoS 2 messages delivered but not yet released (`received`), and the packet id
    counter. When a link connects with CleanSession=0 it re-sends what is in flight, PUBLISH with
    DUP=1 or PUBREL, with the original ids [MQTT-4.4.0-1]. A CleanSession=1 connect, or the loss of
    a clean-session link, discards the session, and the futures of its messages fail with
    ConnectionLost. One session serves one link at a time.
    """

    __slots__ = ("_next_id", "inflight", "received", "waiting")

    def __init__(self) -> None:
        self.inflight: dict[int, InFlight] = {}
        self.received: set[int] = set()
        self.waiting = 0  # of the in-flight messages: those waiting for a place (InFlight.waiting)
        self._next_id = 0

    def next_packet_id(self, busy: Container[int] = ()) -> int:
        """A packet id (1-65535) that is neither in flight nor in `busy` [MQTT-2.3.1-2]."""
        inflight = self.inflight
        packet_id = self._next_id
        for _ in range(65535):
            packet_id = packet_id % 65535 + 1
            if packet_id not in inflight and packet_id not in busy:
                self._next_id = packet_id
                return packet_id
        raise TransportError("all 65535 packet identifiers are in use")

    def discard(self, reason: str = "the session was discarded") -> None:
        """Forget everything; each in-flight message's future fails with ConnectionLost(reason)."""
        inflight = self.inflight
        self.inflight = {}
        self.received = set()
        self.waiting = 0
        for packet_id, message in inflight.items():
            future = message.future
            if not future.done():
                future.set_exception(ConnectionLost(f"{reason}: QoS {message.qos} message {packet_id} lost"))
                future.exception()  # Not logged if nobody awaits it; awaiting it still raises.

    def __repr__(self) -> str:
        return f"<ClientSession inflight={len(self.inflight)} received={len(self.received)}>"


def tls_context(endpoint: Endpoint, context: ssl_module.SSLContext | None) -> ssl_module.SSLContext | None:
    if endpoint.tls:
        return context if context is not None else ssl_module.create_default_context()
    if context is not None:
        raise ValueError(f"an SSL context was given for {endpoint}, which is not a TLS endpoint")
    return None


def validated_filters(topics: list[tuple[str, int]]) -> None:
    if not topics:
        raise ValueError("subscribe needs at least one topic filter [MQTT-3.8.3-3]")
    for topic_filter, qos in topics:
        validate_filter(topic_filter)
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS must be 0, 1 or 2, got {qos} for {topic_filter!r}")


class Link(asyncio.Protocol):
    """One device connection: MQTT 3.1.1 or 5 over TCP, TLS or WebSocket.

    Open it with `Link.open()`. Incoming PUBLISH packets go to `on_message`, exactly once for QoS 2;
    QoS 1 is acknowledged after `on_message` returns. A protocol violation by the broker closes
    the link, and `closed` resolves with the ProtocolError.
    """

    __slots__ = (
        "_aborted",
        "_ack_delay",
        "_ack_timer",
        "_acks",
        "_alias_max",
        "_aliases",
        "_clean",
        "_clean_close",
        "_closed",
        "_closed_view",
        "_closing",
        "_connack",
        "_error",
        "_frames",
        "_held",
        "_keepalive",
        "_last_received",
        "_last_sent",
        "_loop",
        "_on_message",
        "_outstanding",
        "_paused",
        "_ping_sent",
        "_quota",
        "_requests",
        "_session",
        "_silent",
        "_timer",
        "_topics",
        "_transport",
        "_v5",
        "alias_saved",
        "client_id",
        "disconnect_reason",
        "inflight_peak",
        "properties",
    )

    def __init__(
        self,
        session: ClientSession,
        on_message: Callable[[Any], None],
        *,
        max_packet_size: int = MAX_PACKET_SIZE,
        ack_delay: float = 0.0,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._session = session
        self._on_message = on_message
        self._frames = FrameReader(max_packet_size)
        self._transport: asyncio.WriteTransport | None = None
        self._closed: asyncio.Future[Exception | None] = self._loop.create_future()
        self._closed_view: asyncio.Future[Exception | None] | None = None
        self._connack: asyncio.Future[bool] | None = None
        # SUBSCRIBE and UNSUBSCRIBE waiting for their ack: packet id -> (future, topic count or 0).
        self._requests: dict[int, tuple[asyncio.Future[tuple[int, ...]], int]] = {}
        # Topic names already validated, and their UTF-8 form.
        self._topics: dict[str, bytes] = {}
        self._error: Exception | None = None
        # Messages that arrive while open() is returning wait here, so that on_message never runs
        # before the caller holds the link (a persistent session's queue comes right after CONNACK).
        self._held: list[Publish | v5.Publish] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._keepalive = 0
        self._last_sent = 0.0
        self._last_received = 0.0
        self._ping_sent = 0.0
        self._clean = True
        self._closing = False
        self._clean_close = False
        self._aborted = False
        self._silent = False
        self._paused = False
        self._v5 = False
        self._aliases: dict[str, int] = {}
        self._alias_max = 0
        # Bytes of topic names left out by Topic Aliases, less the 3 bytes of each alias property.
        self.alias_saved = 0
        self.client_id = ""
        # The reason code of the broker's DISCONNECT (MQTT 5), None without one.
        self.disconnect_reason: int | None = None
        # CONNACK's properties (MQTT 5).
        self.properties: Properties = EMPTY
        # Deferred acknowledgements (`ack_delay`): the PUBACKs and PUBRECs not yet written.
        self._ack_delay = ack_delay
        self._acks: list[bytes] = []
        self._ack_timer: asyncio.TimerHandle | None = None
        # The most incoming QoS 1/2 deliveries unacknowledged at once (QoS 2 until PUBCOMP).
        self.inflight_peak = 0
        # Outgoing QoS 1/2: the broker's Receive Maximum (MQTT 5), and how many are sent and unacknowledged.
        self._quota = 1 << 30
        self._outstanding = 0

    @overload
    @classmethod
    async def open(
        cls,
        endpoint: Endpoint,
        connect: Connect,
        *,
        session: ClientSession,
        on_message: Callable[[Publish], None],
        ssl: ssl_module.SSLContext | None = None,
        timeout: float = 10.0,
        max_packet_size: int = MAX_PACKET_SIZE,
        ack_delay: float = 0.0,
    ) -> tuple[Link, bool]: ...

    @overload
    @classmethod
    async def open(
        cls,
        endpoint: Endpoint,
        connect: v5.Connect,
        *,
        session: ClientSession,
        on_message: Callable[[v5.Publish], None],
        ssl: ssl_module.SSLContext | None = None,
        timeout: float = 10.0,
        max_packet_size: int = MAX_PACKET_SIZE,
        ack_delay: float = 0.0,
    ) -> tuple[Link, bool]: ...

    @overload
    @classmethod
    async def open(
        cls,
        endpoint: Endpoint,
        connect: Connect | v5.Connect,
        *,
        session: ClientSession,
        on_message: Callable[[Publish | v5.Publish], None],
        ssl: ssl_module.SSLContext | None = None,
        timeout: float = 10.0,
        max_packet_size: int = MAX_PACKET_SIZE,
        ack_delay: float = 0.0,
    ) -> tuple[Link, bool]: ...

    @classmethod
    async def open(
        cls,
        endpoint: Endpoint,
        connect: Connect | v5.Connect,
        *,
        session: ClientSession,
        on_message: Callable[[Any], None],
        ssl: ssl_module.SSLContext | None = None,
        timeout: float = 10.0,
        max_packet_size: int = MAX_PACKET_SIZE,
        ack_delay: float = 0.0,
    ) -> tuple[Link, bool]:
        """Connect, send CONNECT and wait for CONNACK, all within `timeout` seconds.

        Returns the link and CONNACK's session-present flag. With CleanSession=1 the `session` is
        discarded first; with CleanSession=0 its in-flight messages are re-sent right after CONNACK.
        `on_message` is never called before this returns: messages that come with the CONNACK (a
        persistent session's queue) are delivered, and acknowledged, once the caller next yields.
        Raises ConnectRefused for a refusal, TransportError if the connection fails or times out,
        and ProtocolError if the broker answers with something other than CONNACK. Cancelled or timed
        out once CONNECT is sent, it sends DISCONNECT before it closes: the broker may have accepted
        the CONNECT (or accept it late), and a connect given up is a shutdown or a failed connect, not
        a loss, so no will fires.

        With `ack_delay` (seconds), incoming QoS 1/2 deliveries are acknowledged together that long
        after the first unacknowledged one, so that the broker's window of deliveries in flight fills
        and `inflight_peak` measures it (an observer checking the broker honours its Receive Maximum).
        """
        link = cls(session, on_message, max_packet_size=max_packet_size, ack_delay=ack_delay)
        present = await link._open(endpoint, connect, tls_context(endpoint, ssl), timeout)
        return link, present

    async def _open(
        self,
        endpoint: Endpoint,
        connect: Connect | v5.Connect,
        context: ssl_module.SSLContext | None,
        timeout: float,
    ) -> bool:
        if isinstance(connect, v5.Connect):
            self._v5 = True
            clean = connect.clean_start
            packet = v5.encode_connect(connect)
        else:
            clean = connect.clean_session
            packet = encode_connect(connect)
        if clean:
            self._session.discard(f"{connect.client_id!r} connected with a clean session")
        self._clean = clean
        self._keepalive = connect.keepalive
        self.client_id = connect.client_id
        connack: asyncio.Future[bool] = self._loop.create_future()
        self._connack = connack
        stage = "connect"
        try:
            async with asyncio.timeout(timeout):
                if endpoint.websocket:
                    from fleet.websocket_link import WebSocketTransport

                    await WebSocketTransport.open(self, endpoint, context, connect.client_id)
                else:
                    await self._loop.create_connection(
                        lambda: self, endpoint.host, endpoint.port, ssl=context
                    )
                stage = "connack"
                self._write(packet)
                present = await connack
        except TimeoutError:
            if stage == "connack" and self._transport is not None:
                # The broker may yet accept the CONNECT (a busy one, minutes late): DISCONNECT behind
                # it, so that no will fires for a connect that this device counts as failed.
                self._leave(self._transport)
                self._transport.close()
            else:
                self.abort()
            what = "no CONNACK" if stage == "connack" else "could not connect"
            raise TransportError(f"{endpoint}: {what} within {timeout}s") from None
        except OSError as exc:
            self.abort()
            raise TransportError(f"cannot connect to {endpoint}: {exc.strerror or exc}") from exc
        except asyncio.CancelledError:
            if stage == "connack":  # MQTT lets a client send packets before its CONNACK comes
                await self.disconnect(_LEAVE_TIMEOUT)
            else:
                self.abort()
            raise
        except BaseException:  # a refusal or a protocol error: no half-open socket
            self.abort()
            raise
        finally:
            self._connack = None
        if self._held:
            self._loop.call_soon(self._release)
        else:
            self._held = None
        return present

    def _release(self) -> None:
        held = self._held
        self._held = None
        for packet in held or ():
            self._on_publish(packet)

    # State

    @property
    def closed(self) -> asyncio.Future[Exception | None]:
        """Resolves when the connection is gone: None after a clean `disconnect()`, else the reason.

        The reason is ConnectionLost (the broker closed, the network failed, or `abort()`), or the
        ProtocolError the broker committed. It is a shielded view of the link's own future, so a
        timeout around `await link.closed` cancels only the view; the next access gives a fresh one.
        """
        view = self._closed_view
        if view is None or view.cancelled():
            view = self._closed_view = asyncio.shield(self._closed)
        return view

    @property
    def connected(self) -> bool:
        """True from CONNACK until the link is closed, closing, or lost."""
        return self._transport is not None and not self._closing and self._connack is None

    @property
    def silent(self) -> bool:
        return self._silent

    @property
    def version(self) -> int:
        """The protocol level: 4 (MQTT 3.1.1) or 5."""
        return 5 if self._v5 else 4

    @property
    def congested(self) -> bool:
        """True while the socket's write buffer is over its high-water mark."""
        return self._paused

    @property
    def session(self) -> ClientSession:
        return self._session

    # Sending

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or self._closing:
            raise ConnectionLost("the link is closed")
        if not self._silent:
            transport.write(data)
            self._last_sent = self._loop.time()

    def _topic(self, topic: str) -> bytes:
        encoded = self._topics.get(topic)
        if encoded is None:
            encoded = validate_topic(topic).encode("utf-8")
            if len(self._topics) >= 64:
                self._topics.clear()
            self._topics[topic] = encoded
        return encoded

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: bytes = b"",
        alias: bool = False,
    ) -> asyncio.Future[None] | None:
        """Publish. QoS 0: write it and return None. QoS 1/2: keep it in the session, write it, and
        return a future that resolves on PUBACK/PUBCOMP (or fails with TransportError when an MQTT 5
        broker answers with an error reason code).

        MQTT 5 only: `properties` from `encode_property_body()`; `alias` sends a Topic Alias instead of
        the topic name once the topic has one (none when the broker allows no aliases).

        The future stays pending across reconnects of a persistent session, where the re-sent
        message's ack resolves it; it fails with ConnectionLost only when the session is discarded.
        After `go_silent()` nothing is written: QoS 0 is dropped, QoS 1/2 waits in the session.
        Raises ConnectionLost if the link is closed, TopicError for an invalid topic name.
        """
        encoded = self._topics.get(topic)
        if encoded is None:
            encoded = self._topic(topic)
        transport = self._transport
        if transport is None or self._closing:
            raise ConnectionLost("the link is closed")
        if (properties or alias) and not self._v5:
            raise ValueError("properties and topic aliases need an MQTT 5 link")
        if qos == 0:
            if not self._silent:
                if self._v5:
                    transport.write(self._publish5(topic, encoded, payload, 0, retain, 0, properties, alias))
                else:
                    transport.write(encode_publish(encoded, payload, 0, retain=retain))
                self._last_sent = self._loop.time()
            return None
        if qos not in (1, 2):
            raise ValueError(f"QoS must be 0, 1 or 2, got {qos}")
        session = self._session
        packet_id = session.next_packet_id(self._requests)
        future: asyncio.Future[None] = self._loop.create_future()
        waiting = self._outstanding >= self._quota
        session.inflight[packet_id] = InFlight(
            topic, payload, qos, retain, False, future, properties, waiting, not waiting
        )
        if waiting:  # sent when an acknowledgement frees a place [MQTT-4.9.0-2]
            session.waiting += 1
            return future
        self._outstanding += 1
        if not self._silent:
            if self._v5:
                data = self._publish5(topic, encoded, payload, qos, retain, packet_id, properties, alias)
            else:
                data = encode_publish(encoded, payload, qos, retain=retain, packet_id=packet_id)
            transport.write(data)
            self._last_sent = self._loop.time()
        return future

    def _publish5(
        self,
        topic: str,
        encoded: bytes,
        payload: bytes,
        qos: int,
        retain: bool,
        packet_id: int,
        properties: bytes,
        alias: bool,
        dup: bool = False,
    ) -> bytes:
        if alias and self._alias_max:
            number = self._aliases.get(topic)
            if number is not None:
                properties += bytes((_TOPIC_ALIAS,)) + _U16.pack(number)
                self.alias_saved += len(encoded) - 3
                encoded = b""
            elif len(self._aliases) < self._alias_max:
                number = self._aliases[topic] = len(self._aliases) + 1
                properties += bytes((_TOPIC_ALIAS,)) + _U16.pack(number)
                self.alias_saved -= 3
        return v5.encode_publish(
            encoded,
            payload,
            qos,
            retain=retain,
            dup=dup,
            packet_id=packet_id,
            properties=encode_variable_int(len(properties)) + properties,
        )

    async def subscribe(
        self, topics: list[tuple[str, int]], timeout: float = 10.0, *, properties: Properties = EMPTY
    ) -> tuple[int, ...]:
        """Subscribe to (filter, QoS) pairs; return SUBACK's return codes (granted QoS, or 0x80).

        MQTT 5 only: `properties`, for example a Subscription Identifier."""
        validated_filters(topics)
        if properties is not EMPTY and not self._v5:
            raise ValueError("subscribe properties need an MQTT 5 link")
        packet_id = self._session.next_packet_id(self._requests)
        if self._v5:
            subscriptions = [v5.Subscription(topic_filter, qos) for topic_filter, qos in topics]
            packet = v5.encode_subscribe(packet_id, subscriptions, properties)
        else:
            packet = encode_subscribe(packet_id, topics)
        return await self._request(packet_id, packet, len(topics), timeout)

    async def unsubscribe(self, filters: list[str], timeout: float = 10.0) -> None:
        """Unsubscribe from topic filters and wait for UNSUBACK."""
        if not filters:
            raise ValueError("unsubscribe needs at least one topic filter [MQTT-3.10.3-2]")
        for topic_filter in filters:
            validate_filter(topic_filter)
        packet_id = self._session.next_packet_id(self._requests)
        if self._v5:
            packet = v5.encode_unsubscribe(packet_id, filters)
        else:
            packet = encode_unsubscribe(packet_id, filters)
        await self._request(packet_id, packet, 0, timeout)

    async def _request(self, packet_id: int, packet: bytes, count: int, timeout: float) -> tuple[int, ...]:
        if self._silent:
            raise TransportError("the link is silent: it sends nothing")
        future: asyncio.Future[tuple[int, ...]] = self._loop.create_future()
        self._write(packet)
        self._requests[packet_id] = (future, count)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            what = "SUBACK" if count else "UNSUBACK"
            raise TransportError(f"no {what} within {timeout}s") from None
        finally:
            self._requests.pop(packet_id, None)

    # Ending

    async def disconnect(self, timeout: float = 10.0) -> None:
        """Clean shutdown: send DISCONNECT (the broker discards the will), then wait for the broker
        to close the connection, so that it has processed the DISCONNECT when this returns.

        After `timeout` seconds the link closes its side anyway. On a silent link nothing can be
        sent: this is then the same as `abort()`.
        """
        transport = self._transport
        if transport is None:
            return
        if not self._closing:
            if self._silent:
                self.abort()
            else:
                self._leave(transport)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._closed)
        except TimeoutError:
            log.info("the broker did not close the connection within %ss of DISCONNECT", timeout)
            transport.close()
            await asyncio.shield(self._closed)

    def _leave(self, transport: asyncio.WriteTransport) -> None:
        """Send DISCONNECT (the broker discards the will) and end our side of the stream."""
        self._closing = True
        self._clean_close = True
        self._cancel_timer()
        try:
            transport.write(disconnect())
            if transport.can_write_eof():
                transport.write_eof()
        except OSError:  # the broker is already gone (ENOTCONN): nothing left to leave cleanly
            self.abort()

    def abort(self) -> None:
        """Abrupt loss: close the socket at once, without DISCONNECT, so the broker publishes the will."""
        transport = self._transport
        if transport is None:
            return
        if not self._clean_close:
            self._aborted = True
        self._closing = True
        self._cancel_timer()
        transport.abort()

    def go_silent(self) -> None:
        """Stop writing anything (no PINGREQ, no acks, no publishes) while the socket stays open and
        incoming packets are still read: the broker drops the link after 1.5 x keepalive."""
        self._silent = True
        self._cancel_timer()

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None

    # Keepalive: one timer per link, armed for when the link will have been quiet for `keepalive`.

    def _start_keepalive(self) -> None:
        if self._keepalive and not self._silent:
            self._timer = self._loop.call_later(self._keepalive, self._keepalive_due)

    def _keepalive_due(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or self._closing or self._silent:
            return
        keepalive = self._keepalive
        now = self._loop.time()
        if self._ping_sent and now - self._ping_sent >= keepalive:
            # A client should close the connection when a PINGRESP does not come [MQTT-3.1.2-24].
            self._fail(ConnectionLost(f"no PINGRESP within the keepalive of {keepalive}s"))
            return
        # Quiet in either direction calls for a PINGREQ, as Paho does: a link that keeps publishing
        # into a half-open connection hears nothing back, and only the unanswered PINGREQ tells.
        delay = keepalive - (now - min(self._last_sent, self._last_received))
        if delay <= 0.001:
            transport.write(pingreq())
            self._last_sent = now
            if not self._ping_sent:
                self._ping_sent = now
            delay = keepalive
        if self._ping_sent:
            delay = min(delay, self._ping_sent + keepalive - now)
        self._timer = self._loop.call_later(delay, self._keepalive_due)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self._transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    def data_received(self, data: bytes) -> None:
        if self._transport is None or (self._closing and not self._clean_close):
            return
        self._last_received = self._loop.time()
        try:
            for kind, flags, body in self._frames.feed(data):
                if kind == PUBACK and not flags and len(body) == 2 and self._connack is None:
                    # The hot path of QoS 1: skip building a packet value.
                    self._acknowledged(PUBACK, (body[0] << 8) | body[1])
                    continue
                if self._v5:
                    self._dispatch5(v5.decode_server_packet(kind, flags, body))
                else:
                    self._dispatch(decode_server_packet(kind, flags, body))
                if self._transport is None or (self._closing and not self._clean_close):
                    return
        except ProtocolError as exc:
            log.warning("closing the link: the broker broke the protocol: %s", exc)
            self._fail(exc)

    def eof_received(self) -> bool | None:
        return None  # Close our side too; connection_lost follows.

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._closing = True
        self._cancel_timer()
        result: Exception | None
        if self._clean_close:
            result = None
        elif self._error is not None:
            result = self._error
        elif self._aborted:
            result = ConnectionLost("the link was aborted")
        elif exc is not None:
            result = ConnectionLost(f"the connection failed: {exc}")
            result.__cause__ = exc
        else:
            result = ConnectionLost("the broker closed the connection")
        connack = self._connack
        if connack is not None and not connack.done():
            connack.set_exception(result or ConnectionLost("the connection closed before CONNACK"))
        requests = self._requests
        self._requests = {}
        for future, _ in requests.values():
            if not future.done():
                future.set_exception(ConnectionLost("the link closed before the broker acknowledged"))
        if self._clean and connack is None:
            self._session.discard("a clean-session link ended")
        if not self._closed.done():
            self._closed.set_result(result)

    # Incoming packets

    def _dispatch(self, packet: object) -> None:
        connack = self._connack
        if connack is not None:
            if not isinstance(packet, Connack):
                raise ProtocolError(f"the broker sent {type(packet).__name__} before CONNACK [MQTT-3.2.0-1]")
            self._on_connack(connack, packet)
        elif isinstance(packet, Publish):
            self._on_publish(packet)
        elif isinstance(packet, PacketId):
            kind = packet.kind
            if kind == PUBREL:
                self._session.received.discard(packet.packet_id)
                self._send(pubcomp(packet.packet_id))
            else:
                self._acknowledged(kind, packet.packet_id)
        elif isinstance(packet, Pingresp):
            self._ping_sent = 0.0
        elif isinstance(packet, Suback):
            self._on_ack(packet.packet_id, packet.return_codes, "SUBACK")
        elif isinstance(packet, Unsuback):
            self._on_ack(packet.packet_id, (), "UNSUBACK")
        else:
            raise ProtocolError("a second CONNACK on one connection [MQTT-3.2.0-1]")

    def _dispatch5(self, packet: v5.ServerPacket) -> None:
        # PUBACK, PUBREC, PUBREL, PUBCOMP in their short form, PINGREQ and DISCONNECT are the same
        # bytes in both versions, so only these packets need their own handling.
        connack = self._connack
        if connack is not None:
            if not isinstance(packet, v5.Connack):
                raise ProtocolError(f"the broker sent {type(packet).__name__} before CONNACK [MQTT-3.2.0-1]")
            self._on_connack5(connack, packet)
        elif isinstance(packet, v5.Publish):
            if not packet.topic:
                # We allow no Topic Alias from the broker (no Topic Alias Maximum in CONNECT).
                raise ProtocolError(
                    "the broker sent a Topic Alias the client did not allow [MQTT-3.3.2-9]", 0x94
                )
            self._on_publish(packet)
        elif isinstance(packet, v5.Ack):
            if packet.kind == PUBREL:
                self._session.received.discard(packet.packet_id)
                self._send(pubcomp(packet.packet_id))
            elif packet.reason >= 0x80:
                self._refused(packet.packet_id, packet.reason)
            else:
                self._acknowledged(packet.kind, packet.packet_id)
        elif isinstance(packet, v5.Pingresp):
            self._ping_sent = 0.0
        elif isinstance(packet, v5.Suback):
            self._on_ack(packet.packet_id, packet.reasons, "SUBACK")
        elif isinstance(packet, v5.Unsuback):
            self._on_ack(packet.packet_id, (), "UNSUBACK")
        elif isinstance(packet, v5.Disconnect):
            self.disconnect_reason = packet.reason
            self._fail(ServerDisconnected(packet.reason, packet.properties.reason_string))
        elif isinstance(packet, v5.Auth):
            raise ProtocolError("AUTH without an Authentication Method in CONNECT [MQTT-4.12.0-6]")
        else:
            raise ProtocolError("a second CONNACK on one connection [MQTT-3.2.0-1]")

    def _refused(self, packet_id: int, reason: int) -> None:
        """An MQTT 5 PUBACK or PUBREC with an error reason: the broker took no responsibility."""
        message = self._session.inflight.pop(packet_id, None)
        if message is not None:
            self._freed()
        if message is not None and not message.future.done():
            message.future.set_exception(
                PublishRefused(
                    f"the broker refused QoS {message.qos} message {packet_id}: reason {reason:#04x}", reason
                )
            )
            message.future.exception()

    def _send(self, data: bytes) -> None:
        """Write a packet the protocol requires (an ack); dropped once closing or silent."""
        transport = self._transport
        if transport is not None and not self._closing and not self._silent:
            transport.write(data)
            self._last_sent = self._loop.time()

    def _on_connack(self, connack: asyncio.Future[bool], packet: Connack) -> None:
        if packet.return_code:
            error = ConnectRefused(packet.return_code)
            self._error = error
            if not connack.done():
                connack.set_exception(error)
            self.abort()
            return
        self._connack = None
        if not self._clean:
            # Re-send what is in flight, in order, with the original ids [MQTT-4.4.0-1], as much as
            # the broker's Receive Maximum allows; the rest waits for acknowledgements.
            session = self._session
            for packet_id, message in session.inflight.items():
                if self._outstanding >= self._quota:
                    if not message.waiting:
                        message.waiting = True
                        session.waiting += 1
                    continue
                self._outstanding += 1
                if message.waiting:
                    message.waiting = False
                    session.waiting -= 1
                if message.released:
                    self._send(pubrel(packet_id))
                    continue
                dup, message.sent = message.sent, True
                topic, payload, qos, retain = message.topic, message.payload, message.qos, message.retain
                if self._v5:
                    data = self._publish5(
                        topic,
                        self._topic(topic),
                        payload,
                        qos,
                        retain,
                        packet_id,
                        message.properties,
                        False,
                        dup,
                    )
                else:
                    data = encode_publish(
                        self._topic(topic), payload, qos, retain=retain, dup=dup, packet_id=packet_id
                    )
                self._send(data)
        self._held = []
        self._start_keepalive()
        if not connack.done():
            connack.set_result(packet.session_present)

    def _on_connack5(self, connack: asyncio.Future[bool], packet: v5.Connack) -> None:
        if packet.reason:
            error = ConnectRefused(packet.reason, 5)
            self._error = error
            if not connack.done():
                connack.set_exception(error)
            self.abort()
            return
        properties = self.properties = packet.properties
        if properties.assigned_client_identifier is not None:
            self.client_id = properties.assigned_client_identifier
        if properties.server_keep_alive is not None:
            self._keepalive = properties.server_keep_alive  # the broker's keep alive wins [MQTT-3.2.2-22]
        self._alias_max = properties.topic_alias_maximum or 0
        self._quota = properties.receive_maximum or 65535
        if not self._clean and not packet.session_present:
            # The broker has no session: neither may the client keep one [MQTT-3.2.2-5].
            self._session.discard("the broker had no session")
        self._on_connack(connack, Connack(packet.session_present, 0))

    def _on_publish(self, packet: Publish | v5.Publish) -> None:
        held = self._held
        if held is not None:
            held.append(packet)
            return
        qos = packet.qos
        if qos == 2:
            packet_id = packet.packet_id
            assert packet_id is not None
            received = self._session.received
            if packet_id not in received:
                received.add(packet_id)
                self._deliver(packet)
            self._ack(pubrec(packet_id))
            return
        self._deliver(packet)
        if qos:
            assert packet.packet_id is not None
            self._ack(puback(packet.packet_id))

    def _ack(self, data: bytes) -> None:
        if not self._ack_delay:
            self._send(data)
            return
        acks = self._acks
        acks.append(data)
        pending = sum(1 for ack in acks if ack[0] >> 4 == PUBACK) + len(self._session.received)
        self.inflight_peak = max(self.inflight_peak, pending)
        if self._ack_timer is None:
            self._ack_timer = self._loop.call_later(self._ack_delay, self._flush_acks)

    def _flush_acks(self) -> None:
        self._ack_timer = None
        acks, self._acks = self._acks, []
        if acks:
            self._send(b"".join(acks))

    def _deliver(self, packet: Publish | v5.Publish) -> None:
        try:
            self._on_message(packet)
        except Exception:
            log.exception("on_message failed for a message on %s", packet.topic)

    def _acknowledged(self, kind: int, packet_id: int) -> None:
        inflight = self._session.inflight
        message = inflight.get(packet_id)
        if message is None:
            if kind == PUBREC:
                # Not ours any more (already completed): let the broker finish its side.
                self._send(pubrel(packet_id))
            return
        expected = PUBACK if message.qos == 1 else (PUBCOMP if message.released else PUBREC)
        if kind != expected:
            if message.qos == 2 and kind == PUBREC:
                self._send(pubrel(packet_id))  # A repeated PUBREC: repeat PUBREL.
                return
            raise ProtocolError(
                f"packet type {kind} for QoS {message.qos} message {packet_id} [MQTT-4.3.{message.qos + 1}]"
            )
        if kind == PUBREC:
            message.released = True
            self._send(pubrel(packet_id))
            return
        del inflight[packet_id]
        self._freed()
        future = message.future
        if not future.done():
            future.set_result(None)

    def _freed(self) -> None:
        """An outgoing QoS 1/2 message is done: send the first one waiting for a place, if any."""
        self._outstanding -= 1
        session = self._session
        if (
            not session.waiting
            or self._outstanding >= self._quota
            or self._closing
            or self._transport is None
        ):
            return
        for packet_id, message in session.inflight.items():
            if message.waiting:
                message.waiting = False
                session.waiting -= 1
                self._outstanding += 1
                topic = message.topic
                if self._v5:
                    data = self._publish5(
                        topic,
                        self._topic(topic),
                        message.payload,
                        message.qos,
                        message.retain,
                        packet_id,
                        message.properties,
                        False,
                        message.sent,
                    )
                else:
                    data = encode_publish(
                        self._topic(topic),
                        message.payload,
                        message.qos,
                        retain=message.retain,
                        dup=message.sent,
                        packet_id=packet_id,
                    )
                message.sent = True
                self._send(data)
                return

    def _on_ack(self, packet_id: int, codes: tuple[int, ...], what: str) -> None:
        entry = self._requests.get(packet_id)
        if entry is None:
            return  # Its waiter timed out.
        future, count = entry
        if (count == 0) != (what == "UNSUBACK"):
            raise ProtocolError(f"{what} {packet_id} answers a different request")
        if count and len(codes) != count:
            raise ProtocolError(f"SUBACK has {len(codes)} return codes for {count} filters [MQTT-3.9.3-1]")
        if not future.done():
            future.set_result(codes)
