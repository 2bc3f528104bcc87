"""One client's network connection: framing, the CONNECT handshake, keepalive, and packet dispatch.

`Connection` is an `asyncio.Protocol`, so TCP and TLS connections cost no task of their own. The
WebSocket listener drives the same class through a small transport adapter.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from fleet.errors import ProtocolError, UnsupportedProtocol
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

log = logging.getLogger("broker")

# The broker closes a connection after 1.5 keepalive periods of silence [MQTT-3.1.2-24].
KEEPALIVE_GRACE = 1.5
# A QoS 0 message to a client whose send buffer holds more than this is dropped and counted.
CONGESTED_BYTES = 1 << 20


class Connection(asyncio.Protocol):
    __slots__ = (
        "_frames",
        "_last_heard",
        "_out",
        "_timer",
        "broker",
        "client_id",
        "closing",
        "connected",
        "keepalive",
        "paused",
        "peer",
        "session",
        "transport",
        "will",
    )

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.transport: asyncio.WriteTransport | None = None
        self._frames = FrameReader(broker.settings.max_packet_size)
        self.session: Session | None = None
        self.client_id = ""
        self.peer = "?"
        self.connected = False
        self.closing = False
        self.paused = False
        self.keepalive = 0.0
        self._last_heard = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._out: list[bytes] | None = None
        self.will: Will | None = None

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

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self._last_heard = asyncio.get_running_loop().time()
        try:
            for kind, flags, body in self._frames.feed(data):
                self._dispatch(decode_client_packet(kind, flags, body))
                if self.closing:
                    return
        except UnsupportedProtocol as exc:
            log.warning(
                "refused %s from %s: mqtt-fleet's broker speaks MQTT 3.1.1 only; "
                "use an external broker for MQTT 5",
                exc,
                self.peer,
            )
            self.send(connack(False, CONNACK_UNACCEPTABLE_PROTOCOL))
            self.close()
        except ProtocolError as exc:
            self.violation(str(exc))

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

    def flush(self) -> None:
        out, self._out = self._out, None
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

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

    def violation(self, reason: str) -> None:
        self.broker.stats.protocol_errors += 1
        log.warning("closing %s (client %r): protocol violation: %s", self.peer, self.client_id, reason)
        self.abort()

    # Timers

    def _connect_timeout(self) -> None:
        self._timer = None
        if not self.connected:
            log.info("closing %s: no CONNECT within %ss", self.peer, self.broker.settings.connect_timeout)
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
        log.info(
            "closing %s (client %r): silent for %.1fs, over 1.5 x keepalive [MQTT-3.1.2-24]",
            self.peer,
            self.client_id,
            silent,
        )
        self.abort()

    # Packets

    def _dispatch(self, packet: object) -> None:
        if not self.connected:
            if not isinstance(packet, Connect):
                raise ProtocolError("the first packet must be CONNECT [MQTT-3.1.0-1]")
            self.broker.handle_connect(self, packet)
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
                session.awaiting_release.add(packet_id)
                self.broker.handle_publish(self, session, packet)
            self.send(pubrec(packet_id))
            return
        self.broker.handle_publish(self, session, packet)
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
            session.awaiting_release.discard(packet_id)
            self.send(pubcomp(packet_id))
