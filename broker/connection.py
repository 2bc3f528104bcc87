"""One client's network connection: framing, the CONNECT handshake, keepalive, and packet dispatch.

`Connection` is an `asyncio.BufferedProtocol`, so TCP and TLS connections cost no task of their
own. The WebSocket listener drives the same class through a small transport adapter. The CONNECT's
protocol level picks the codec: MQTT 3.1.1 (and 3.1) from `fleet.packets`, MQTT 5 from
`fleet.mqtt.v5`. What it logs goes through `broker.logs`.

Fairness: each event-loop turn reads at most READ_BUDGET bytes from a connection, so a client that
floods the broker gets a turn like every other, and TCP flow control slows it down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
import time
from typing import TYPE_CHECKING

from broker.logs import clip
from broker.message import Message
from fleet.errors import ProtocolError, UnsupportedProtocol
from fleet.mqtt import reasons, v5
from fleet.mqtt.properties import EMPTY, Properties, encode_properties
from fleet.packets import (
    CONNACK_UNACCEPTABLE_PROTOCOL,
    PUBACK,
    PUBCOMP,
    PUBREC,
    Connect,
    Disconnect,
    FrameReader,
    PacketId,
    Pingreq,
    Publish,
    Subscribe,
    Unsubscribe,
    Will,
    connack,
    decode_client_packet,
    encode_publish,
    pingresp,
    puback,
    pubcomp,
    pubrec,
    pubrel,
)

if TYPE_CHECKING:
    from broker.server import Broker
    from broker.session import Session

__all__ = ["Connection"]

# The broker closes a connection after 1.5 keepalive periods of silence [MQTT-3.1.2-24].
KEEPALIVE_GRACE = 1.5
# A QoS 0 message to a client whose send buffer holds more than this is dropped and counted.
CONGESTED_BYTES = 1 << 20
# How long a connection the broker ended with DISCONNECT stays half-open for the client to close it.
DISCONNECT_LINGER = 2.0
# The most bytes read from one connection per event-loop turn: a client that floods can take no
# more of a turn than this, and the rest waits in the kernel (TCP then slows the sender down).
READ_BUDGET = 4 * 1024
# The buffer every connection of a thread's event loop reads into: its bytes are consumed before
# the next read, so one per thread serves every connection without costing memory per connection.
_read_buffers = threading.local()
# The encoding of no properties: most MQTT 5 PUBLISH packets have none.
_NO_PROPERTIES = encode_properties(EMPTY)


def _read_buffer() -> memoryview:
    """This thread's read buffer, made on first use."""
    buffer: memoryview | None = getattr(_read_buffers, "buffer", None)
    if buffer is None:
        buffer = _read_buffers.buffer = memoryview(bytearray(READ_BUDGET))
    return buffer


def _connect_level(body: bytes) -> int:
    """The protocol level of a CONNECT body, or -1 when it is too short to tell."""
    if len(body) < 3:
        return -1
    end = 2 + int.from_bytes(body[:2], "big")
    return body[end] if end < len(body) else -1


class Connection(asyncio.BufferedProtocol):
    __slots__ = (
        "_buffer",
        "_frames",
        "_last_heard",
        "_out",
        "_timer",
        "aliases_in",
        "aliases_out",
        "broker",
        "client_id",
        "closing",
        "connected",
        "keepalive",
        "max_outgoing",
        "password",
        "paused",
        "peer",
        "session",
        "topic_alias_maximum",
        "transport",
        "username",
        "version",
        "will",
        "will_delay",
        "window",
    )

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.transport: asyncio.WriteTransport | None = None
        self._frames = FrameReader(broker.settings.max_packet_size)
        self._buffer = _read_buffer()
        self.session: Session | None = None
        self.client_id = ""
        # The credentials of CONNECT, kept to check them again when the password file is reloaded.
        self.username: str | None = None
        self.password: bytes | None = None
        self.peer = "?"
        self.connected = False
        self.closing = False
        self.paused = False
        self.keepalive = 0.0
        self._last_heard = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._out: list[bytes] | None = None
        self.will: Will | v5.Will | None = None
        self.will_delay = 0
        self.version = 4
        # What an MQTT 5 client announced in CONNECT; 3.1.1 clients get the defaults.
        self.window = broker.settings.max_inflight
        self.max_outgoing: int | None = None
        self.topic_alias_maximum = 0
        self.aliases_in: dict[int, str] = {}
        self.aliases_out: dict[str, int] = {}

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        transport.set_write_buffer_limits(high=256 * 1024)
        loop = asyncio.get_running_loop()
        self._last_heard = loop.time()
        self._timer = loop.call_later(self.broker.settings.connect_timeout, self._connect_timeout)
        self.broker.connection_opened(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        """`nbytes` from the client are in the read buffer (TCP and TLS; WebSocket: `data_received`)."""
        if self.closing:
            return
        self._last_heard = asyncio.get_running_loop().time()
        try:
            # The frame reader copies the bytes out before the next read reuses the buffer.
            frames = self._frames.feed(self._buffer[:nbytes])
            if not self.connected:
                frames = self._handshake(frames)
            # The protocol version is settled by CONNECT, so it is checked once per read, not per packet.
            if self.version == 5:
                for kind, flags, body in frames:
                    self._dispatch5(v5.decode_client_packet(kind, flags, body))
                    if self.closing:
                        return
            else:
                for kind, flags, body in frames:
                    self._dispatch(decode_client_packet(kind, flags, body))
                    if self.closing:
                        return
        except UnsupportedProtocol as exc:
            self.broker.noise.refused.add(
                self.peer, "", f"{clip(str(exc))}: mqtt-fleet's broker speaks MQTT 3.1, 3.1.1 and 5"
            )
            self.send(connack(False, CONNACK_UNACCEPTABLE_PROTOCOL))
            self.close()
        except ProtocolError as exc:
            self.violation(str(exc), exc.reason)

    def _handshake(self, frames: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
        """Dispatch the first frame, which must be CONNECT; its protocol level picks the codec.
        Return the frames after it, or none once the connection is closing."""
        if not frames:
            return frames
        kind, flags, body = frames[0]
        if kind == 1 and _connect_level(body) == 5:
            self.version = 5
            self._dispatch5(v5.decode_client_packet(kind, flags, body))
        else:
            self._dispatch(decode_client_packet(kind, flags, body))
        return [] if self.closing else frames[1:]

    def data_received(self, data: bytes) -> None:
        """A WebSocket frame's bytes: they go through the read buffer as a TCP read's do."""
        view = memoryview(data)
        buffer = self._buffer
        size = len(buffer)
        while view and not self.closing:
            chunk = view[:size]
            buffer[: len(chunk)] = chunk
            self.buffer_updated(len(chunk))
            view = view[size:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.broker.connection_closed(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.session is not None:
            self.session.pump()

    # Outlet, as the session sees it

    def congested(self) -> bool:
        transport = self.transport
        return transport is None or transport.get_write_buffer_size() > CONGESTED_BYTES

    def send(self, data: bytes) -> None:
        """Queue `data`; the broker writes each connection's queue once per event-loop turn."""
        if self.transport is None or self.closing:
            return
        if self._out is None:
            self._out = [data]
            self.broker.flush_soon(self)
        else:
            self._out.append(data)

    def send_publish(
        self, message: Message, qos: int, retain: bool, packet_id: int, dup: bool, sub_ids: tuple[int, ...]
    ) -> bool:
        """Send one PUBLISH in this client's protocol version; False when it was not sent: expired, or
        larger than the client's Maximum Packet Size (dropped and counted [MQTT-3.1.2-25]).

        A `dup` re-sends a message whose delivery had started, so its expiry no longer deletes it
        [MQTT 5.0 3.3.2.3.3]: it goes out with the time left, 0 once none is.
        """
        if message.expires is not None and not dup and message.expires <= time.monotonic():
            # An expired message is never delivered [MQTT-3.3.2-5].
            self.broker.stats.messages_expired += 1
            return False
        if self.version != 5:
            # Properties are dropped toward MQTT 3.1.1 clients, which announce no Maximum Packet Size.
            self.send(
                encode_publish(
                    message.topic_bytes, message.payload, qos, retain=retain, dup=dup, packet_id=packet_id
                )
            )
            return True
        # MQTT 5, written out here rather than in a method of its own: one call less per delivery.
        expires = message.expires
        # The time left in whole seconds, rounded up; 0 once none is left (a redelivery past its expiry).
        expiry = None if expires is None else max(0, math.ceil(expires - time.monotonic()))
        topic = message.topic_bytes
        alias = new_alias = None
        if self.topic_alias_maximum:
            alias = self.aliases_out.get(message.topic)
            if alias is not None:
                topic = b""
            elif len(self.aliases_out) < self.topic_alias_maximum:
                alias = new_alias = len(self.aliases_out) + 1
        properties = message.properties
        if expiry is not None or alias is not None or sub_ids:
            properties = dataclasses.replace(
                properties,
                message_expiry_interval=expiry,
                topic_alias=alias,
                subscription_identifiers=sub_ids,
            )
        data = v5.encode_publish(
            topic,
            message.payload,
            qos,
            retain=retain,
            dup=dup,
            packet_id=packet_id,
            properties=_NO_PROPERTIES if properties is EMPTY else encode_properties(properties),
        )
        if self.max_outgoing is not None and len(data) > self.max_outgoing:
            self._drop_oversize(len(data), message)
            return False
        self.send(data)
        if new_alias is not None:
            self.aliases_out[message.topic] = new_alias
        return True

    def _drop_oversize(self, size: int, message: Message) -> None:
        stats = self.broker.stats
        stats.messages_oversize += 1
        stats.messages_dropped += 1
        self.broker.noise.denied.add(
            f"dropped a message on {clip(message.topic)!r} for client {clip(self.client_id)!r}: "
            f"{size} bytes exceed its Maximum Packet Size {self.max_outgoing}"
        )

    def flush(self) -> None:
        """Write the queued packets now; with sync "always", once what they acknowledge is durable."""
        if self.broker.durable():
            self.write_out()
        else:
            self.drop_out()

    def write_out(self) -> None:
        """Write the queued packets in one system call (the caller made what they acknowledge durable)."""
        out, self._out = self._out, None
        transport = self.transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    def drop_out(self) -> None:
        """Drop the queued packets: what they acknowledge could not be made durable (the broker is
        then stopping)."""
        self._out = None

    # Closing

    def close(self) -> None:
        """Flush what was sent, then close."""
        self.flush()
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close at once without flushing: the peer sees a reset or EOF, never a DISCONNECT."""
        self.closing = True
        self._out = None
        if self.transport is not None:
            self.transport.abort()

    def disconnect(self, reason: int, *, linger: bool = True) -> None:
        """Close the connection: an MQTT 5 client is first told why with DISCONNECT [MQTT 5.0 4.13].

        With `linger`, a TCP connection is half-closed and what the client still sends is read and
        dropped for up to DISCONNECT_LINGER seconds, so the client reads the DISCONNECT instead of a
        reset caused by packets it sent before it saw it.
        """
        if not (self.version == 5 and self.connected):
            self.abort()
            return
        self.send(v5.encode_disconnect(reason))
        transport = self.transport
        if not linger or transport is None or self.closing or not transport.can_write_eof():
            self.close()
            return
        self.flush()
        self.closing = True
        transport.write_eof()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(DISCONNECT_LINGER, self.abort)
        # The session and the will do not wait for the linger: the connection has ended for MQTT.
        self.broker.connection_closed(self)

    def violation(self, reason: str, code: int = reasons.PROTOCOL_ERROR) -> None:
        self.broker.stats.protocol_errors += 1
        self.broker.noise.violations.add(self.peer, clip(self.client_id), clip(reason))
        self.disconnect(code)

    # Timers

    def _connect_timeout(self) -> None:
        self._timer = None
        if not self.connected:
            self.broker.noise.no_connect.add(self.peer, self.broker.settings.connect_timeout)
            self.abort()

    def start_keepalive(self, keepalive: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if keepalive:
            self.keepalive = keepalive * KEEPALIVE_GRACE
            self._timer = asyncio.get_running_loop().call_later(self.keepalive, self._check_keepalive)

    def _check_keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        silent = loop.time() - self._last_heard
        if silent < self.keepalive:
            self._timer = loop.call_later(self.keepalive - silent, self._check_keepalive)
            return
        self._timer = None
        self.broker.noise.silent.add(self.peer, clip(self.client_id), silent)
        self.disconnect(reasons.KEEP_ALIVE_TIMEOUT)

    # MQTT 3.1.1 packets

    def _dispatch(self, packet: object) -> None:
        if not self.connected:
            if not isinstance(packet, Connect):
                raise ProtocolError("the first packet must be CONNECT [MQTT-3.1.0-1]")
            self.username, self.password = packet.username, packet.password
            self.broker.handle_connect(self, packet)
            # The CONNACK goes out now, not at the end of the turn: a client connecting while
            # others flood waits one loop turn less.
            self.flush()
            return
        session = self.session
        if session is None:
            return
        if isinstance(packet, Publish):
            self._on_publish(session, packet)
        elif isinstance(packet, PacketId):
            self._on_packet_id(session, packet)
        elif isinstance(packet, Subscribe):
            self.broker.handle_subscribe(self, session, packet)
        elif isinstance(packet, Unsubscribe):
            self.broker.handle_unsubscribe(self, session, packet)
        elif isinstance(packet, Pingreq):
            self.send(pingresp())
        elif isinstance(packet, Disconnect):
            # A clean DISCONNECT discards the will [MQTT-3.14.4-3].
            self.will = None
            self.close()
        else:
            raise ProtocolError("a second CONNECT on one connection [MQTT-3.1.0-2]")

    def _on_publish(self, session: Session, packet: Publish) -> None:
        packet_id = packet.packet_id
        if packet.qos == 2:
            assert packet_id is not None
            if packet_id not in session.awaiting_release:
                session.hold(packet_id)
                self.broker.handle_publish(session, packet)
            self.send(pubrec(packet_id))
            return
        self.broker.handle_publish(session, packet)
        if packet_id is not None:
            self.send(puback(packet_id))

    def _on_packet_id(self, session: Session, packet: PacketId) -> None:
        kind = packet.kind
        packet_id = packet.packet_id
        if kind in (PUBACK, PUBCOMP):
            session.acknowledge(packet_id)
        elif kind == PUBREC:
            if session.received(packet_id):
                self.send(pubrel(packet_id))
        else:
            session.release(packet_id)
            self.send(pubcomp(packet_id))

    # MQTT 5 packets

    def _dispatch5(self, packet: object) -> None:
        if not self.connected:
            if not isinstance(packet, v5.Connect):
                raise ProtocolError("the first packet must be CONNECT [MQTT-3.1.0-1]", reasons.PROTOCOL_ERROR)
            self.username, self.password = packet.username, packet.password
            self.broker.handle_connect(self, packet)
            # The CONNACK goes out now, not at the end of the turn: a client connecting while
            # others flood waits one loop turn less.
            self.flush()
            return
        session = self.session
        if session is None:
            return
        if isinstance(packet, v5.Publish):
            self._on_publish5(session, packet)
        elif isinstance(packet, v5.Ack):
            self._on_ack5(session, packet)
        elif isinstance(packet, v5.Subscribe):
            self.broker.handle_subscribe(self, session, packet)
        elif isinstance(packet, v5.Unsubscribe):
            self.broker.handle_unsubscribe(self, session, packet)
        elif isinstance(packet, v5.Pingreq):
            self.send(pingresp())
        elif isinstance(packet, v5.Disconnect):
            self._on_disconnect5(session, packet)
        elif isinstance(packet, v5.Auth):
            # No Authentication Method was agreed in CONNECT (one would have been refused with 0x8C).
            raise ProtocolError("AUTH without an Authentication Method in CONNECT [MQTT-4.12.0-6]", 0x82)
        else:
            raise ProtocolError("a second CONNECT on one connection [MQTT-3.1.0-2]", reasons.PROTOCOL_ERROR)

    def _on_disconnect5(self, session: Session, packet: v5.Disconnect) -> None:
        expiry = packet.properties.session_expiry_interval
        if expiry is not None:
            if session.expiry == 0 and expiry:
                raise ProtocolError(
                    "DISCONNECT sets a Session Expiry Interval after CONNECT gave 0 [MQTT-3.14.2-2]", 0x82
                )
            session.expiry = min(expiry, self.broker.settings.max_session_expiry)
        if packet.reason != reasons.DISCONNECT_WITH_WILL:
            # A normal DISCONNECT discards the will; reason 0x04 keeps it [MQTT-3.14.4-3].
            self.will = None
        self.close()

    def _resolve_topic(self, packet: v5.Publish) -> str:
        """The topic of a PUBLISH that has a Topic Alias."""
        alias = packet.properties.topic_alias
        assert alias is not None
        if alias > self.broker.settings.max_topic_alias:
            raise ProtocolError(
                f"Topic Alias {alias} exceeds the Topic Alias Maximum "
                f"{self.broker.settings.max_topic_alias} [MQTT-3.3.2-9]",
                reasons.TOPIC_ALIAS_INVALID,
            )
        if packet.topic:
            self.aliases_in[alias] = packet.topic
            return packet.topic
        topic = self.aliases_in.get(alias)
        if topic is None:
            raise ProtocolError(
                f"Topic Alias {alias} was never set on this connection [MQTT 5.0 3.3.2.3.4]", 0x82
            )
        return topic

    def _on_publish5(self, session: Session, packet: v5.Publish) -> None:
        topic = packet.topic if packet.properties.topic_alias is None else self._resolve_topic(packet)
        packet_id = packet.packet_id
        if packet.qos == 2:
            assert packet_id is not None
            if packet_id in session.awaiting_release:
                self.send(v5.encode_ack(PUBREC, packet_id))
                return
            if len(session.awaiting_release) >= self.broker.settings.max_inflight:
                raise ProtocolError(
                    f"more than Receive Maximum {self.broker.settings.max_inflight} QoS 2 messages "
                    "unreleased [MQTT-3.3.4-8]",
                    reasons.RECEIVE_MAXIMUM_EXCEEDED,
                )
            code = self.broker.handle_publish5(self, session, topic, packet)
            if code == reasons.PAYLOAD_FORMAT_INVALID and self.closing:
                return
            if code < 0x80:
                session.hold(packet_id)
            self.send(v5.encode_ack(PUBREC, packet_id, code))
            return
        code = self.broker.handle_publish5(self, session, topic, packet)
        if packet_id is not None and not self.closing:
            self.send(v5.encode_ack(PUBACK, packet_id, code))

    def _on_ack5(self, session: Session, packet: v5.Ack) -> None:
        kind = packet.kind
        packet_id = packet.packet_id
        if kind in (PUBACK, PUBCOMP):
            session.acknowledge(packet_id)
        elif kind == PUBREC:
            if packet.reason >= 0x80:
                # A PUBREC with an error ends the QoS 2 exchange [MQTT 5.0 4.3.3].
                session.acknowledge(packet_id)
            elif session.received(packet_id):
                self.send(v5.encode_ack(6, packet_id))
            else:
                self.send(v5.encode_ack(6, packet_id, reasons.PACKET_IDENTIFIER_NOT_FOUND))
        elif session.release(packet_id):
            self.send(v5.encode_ack(PUBCOMP, packet_id))
        else:
            self.send(v5.encode_ack(PUBCOMP, packet_id, reasons.PACKET_IDENTIFIER_NOT_FOUND))


def forwarded(properties: Properties) -> Properties:
    """The properties of an incoming PUBLISH or will that are forwarded unchanged [MQTT-3.3.2-17..20]."""
    if properties is EMPTY:
        return EMPTY
    if (
        properties.topic_alias is None
        and properties.message_expiry_interval is None
        and properties.will_delay_interval is None
    ):
        return properties
    return dataclasses.replace(
        properties, topic_alias=None, message_expiry_interval=None, will_delay_interval=None
    )
