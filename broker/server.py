"""The embedded MQTT 3.1.1 broker: listeners, sessions, routing, retained messages, auth and ACLs.

async with running(BrokerSettings(port=0)) as broker:
    print(broker.urls)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import uuid
from collections.abc import AsyncIterator

from websockets.asyncio.server import Server as WebSocketServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from broker.acl import AclFile
from broker.auth import PasswordFile
from broker.config import BrokerSettings, is_loopback
from broker.connection import Connection
from broker.message import Message
from broker.retained import RetainedStore
from broker.session import Limits, Session
from broker.stats import Stats
from broker.tally import Tally
from broker.websocket import WebSocketTransport
from fleet.errors import TopicError
from fleet.packets import (
    CONNACK_ACCEPTED,
    CONNACK_BAD_CREDENTIALS,
    CONNACK_IDENTIFIER_REJECTED,
    CONNACK_NOT_AUTHORIZED,
    SUBACK_FAILURE,
    Connect,
    Publish,
    Subscribe,
    Unsubscribe,
    connack,
    suback,
    unsuback,
)
from fleet.routing import SubscriptionTree
from fleet.topics import validate_filter

__all__ = ["Broker", "running"]

log = logging.getLogger("broker")

VERSION = "mqtt-fleet 0.1.0"


class Broker:
    """Broker state and packet handling; `running()` adds the listeners and the $SYS task."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self.stats = Stats()
        self.sessions: dict[str, Session] = {}
        self.connections: set[Connection] = set()
        self.subscriptions: SubscriptionTree[Session] = SubscriptionTree()
        self.retained = RetainedStore()
        self.limits = Limits(max_inflight=settings.max_inflight, max_queued=settings.max_queued)
        self.passwords = PasswordFile.load(settings.password_file) if settings.password_file else None
        self.acl = AclFile.load(settings.acl_file) if settings.acl_file else None
        self.urls: list[str] = []
        self.port = 0
        self.ws_port: int | None = None
        self.tls_port: int | None = None
        self.started = time.monotonic()
        self.closing = False
        self._unflushed: list[Connection] = []
        # A storm ends hundreds of connections at once: their wills make one line per interval.
        self.wills_log = Tally(
            log,
            "publishing the will of client %r on %s",
            "published %d more wills, the last of client %r on %s",
        )

    def flush_soon(self, connection: Connection) -> None:
        """Write `connection`'s queued packets at the end of this loop turn, in one system call."""
        if not self._unflushed:
            asyncio.get_running_loop().call_soon(self._flush)
        self._unflushed.append(connection)

    def _flush(self) -> None:
        unflushed, self._unflushed = self._unflushed, []
        for connection in unflushed:
            connection.flush()

    # Connections

    def connection_opened(self, connection: Connection) -> None:
        if self.closing:
            connection.abort()
            return
        self.connections.add(connection)

    def connection_closed(self, connection: Connection) -> None:
        self.connections.discard(connection)
        session = connection.session
        connection.session = None
        if session is not None and session.outlet is connection:
            session.outlet = None
            if session.clean:
                self._discard(session)
        will = connection.will
        connection.will = None
        if will is not None and not self.closing:
            # The connection ended without DISCONNECT: publish its will [MQTT-3.1.2-8].
            self.wills_log.add(connection.client_id, will.topic)
            self.stats.wills_published += 1
            self.publish(Message(will.topic, will.payload, will.qos, will.retain))

    def _discard(self, session: Session) -> None:
        for topic_filter in session.subscriptions:
            self.subscriptions.remove(topic_filter, session)
        session.subscriptions.clear()
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]

    def _authenticate(self, packet: Connect) -> int:
        if packet.username is None:
            return CONNACK_ACCEPTED if self.settings.anonymous else CONNACK_NOT_AUTHORIZED
        if self.passwords is None:
            return CONNACK_ACCEPTED
        if self.passwords.verify(packet.username, packet.password):
            return CONNACK_ACCEPTED
        return CONNACK_BAD_CREDENTIALS

    def handle_connect(self, connection: Connection, packet: Connect) -> None:
        client_id = packet.client_id
        if not client_id:
            if not packet.clean_session:
                self._refuse(connection, CONNACK_IDENTIFIER_REJECTED, "empty client id needs CleanSession=1")
                return
            # The server assigns a unique id to a zero-length one [MQTT-3.1.3-6].
            client_id = f"auto-{uuid.uuid4().hex}"
        elif packet.protocol_level == 3 and len(client_id) > 23:
            self._refuse(connection, CONNACK_IDENTIFIER_REJECTED, "MQTT 3.1 ids have 23 characters at most")
            return
        connection.client_id = client_id
        code = self._authenticate(packet)
        will = packet.will
        # A will the client may not publish itself is refused at CONNECT, as Mosquitto does.
        if (
            code == CONNACK_ACCEPTED
            and will is not None
            and self.acl is not None
            and not self.acl.can_publish(client_id, packet.username, will.topic)
        ):
            code = CONNACK_NOT_AUTHORIZED
        if code != CONNACK_ACCEPTED:
            self._refuse(connection, code, f"authentication failed for user {packet.username!r}")
            return

        session = self.sessions.get(client_id)
        present = False
        if session is not None:
            previous = session.outlet
            if isinstance(previous, Connection):
                self._take_over(previous)
            if packet.clean_session or session.clean:
                self._discard(session)
                session = None
            else:
                present = True
        if session is None:
            session = Session(client_id, clean=packet.clean_session, limits=self.limits, stats=self.stats)
            self.sessions[client_id] = session
        session.username = packet.username
        session.outlet = connection
        connection.session = session
        connection.will = packet.will
        connection.connected = True
        self.stats.connections_total += 1
        self.stats.clients_maximum = max(self.stats.clients_maximum, len(self.connections))
        connection.send(connack(present, CONNACK_ACCEPTED))
        connection.start_keepalive(packet.keepalive)
        log.debug("client %r connected from %s (session present: %s)", client_id, connection.peer, present)
        session.resume()

    def _refuse(self, connection: Connection, code: int, reason: str) -> None:
        log.warning("refused CONNECT from %s (client %r): %s", connection.peer, connection.client_id, reason)
        connection.send(connack(False, code))
        connection.close()

    def _take_over(self, previous: Connection) -> None:
        """A second CONNECT with the same client id closes the first connection [MQTT-3.1.4-2].

        The old connection ended without DISCONNECT, so its will is published now, before the new
        connection's CONNACK: a device's last will never lands after its own new birth message.
        """
        log.info("client %r took over its session from %s", previous.client_id, previous.peer)
        session = previous.session
        previous.session = None
        if session is not None:
            session.outlet = None
        self.connection_closed(previous)
        previous.abort()

    # Messages

    def handle_publish(self, connection: Connection, session: Session, packet: Publish) -> None:
        topic = packet.topic
        if topic.startswith("$SYS"):
            log.info("ignored a PUBLISH to %s from client %r: $SYS is the broker's", topic, session.client_id)
            return
        if self.acl is not None and not self.acl.can_publish(session.client_id, session.username, topic):
            log.info("ACL denied client %r publishing to %s", session.client_id, topic)
            return
        self.publish(Message(topic, packet.payload, packet.qos, packet.retain))

    def publish(self, message: Message) -> None:
        """Route a message to every matching subscription at min(publish QoS, granted QoS) [MQTT-3.8.4]."""
        self.stats.messages_received += 1
        if message.retain:
            self.retained.store(message)
        self._route(message)

    def _route(self, message: Message) -> None:
        acl = self.acl
        qos = message.qos
        for session, granted in self.subscriptions.match(message.topic).items():
            if acl is not None and not acl.can_read(session.client_id, session.username, message.topic):
                continue
            session.deliver(message, granted if granted < qos else qos)

    def handle_subscribe(self, connection: Connection, session: Session, packet: Subscribe) -> None:
        codes: list[int] = []
        granted: list[tuple[str, int]] = []
        for topic_filter, qos in packet.topics:
            try:
                validate_filter(topic_filter)
            except TopicError as exc:
                log.warning("refused a subscription of client %r: %s", session.client_id, exc)
                codes.append(SUBACK_FAILURE)
                continue
            if self.acl is not None and not self.acl.can_subscribe(
                session.client_id, session.username, topic_filter
            ):
                log.warning("ACL denied client %r subscribing to %r", session.client_id, topic_filter)
                codes.append(SUBACK_FAILURE)
                continue
            session.subscriptions[topic_filter] = qos
            self.subscriptions.add(topic_filter, session, qos)
            codes.append(qos)
            granted.append((topic_filter, qos))
        connection.send(suback(packet.packet_id, codes))
        # Retained messages go to this subscriber only, for the filters it just subscribed to
        # [MQTT-3.3.1-6], at min(message QoS, granted QoS).
        acl = self.acl
        for topic_filter, qos in granted:
            for message in self.retained.matching(topic_filter):
                if acl is not None and not acl.can_read(session.client_id, session.username, message.topic):
                    continue
                session.deliver(message, min(message.qos, qos), retain=True)

    def handle_unsubscribe(self, connection: Connection, session: Session, packet: Unsubscribe) -> None:
        for topic_filter in packet.filters:
            if session.subscriptions.pop(topic_filter, None) is not None:
                self.subscriptions.remove(topic_filter, session)
        connection.send(unsuback(packet.packet_id))

    # $SYS

    def sys_values(self) -> dict[str, str]:
        stats = self.stats
        connected = len(self.connections)
        queued = sum(len(s.queue) + len(s.inflight) for s in self.sessions.values())
        return {
            "$SYS/broker/version": VERSION,
            "$SYS/broker/uptime": f"{int(time.monotonic() - self.started)} seconds",
            "$SYS/broker/clients/connected": str(connected),
            "$SYS/broker/clients/disconnected": str(
                sum(1 for s in self.sessions.values() if s.outlet is None)
            ),
            "$SYS/broker/clients/total": str(len(self.sessions)),
            "$SYS/broker/clients/maximum": str(stats.clients_maximum),
            "$SYS/broker/messages/received": str(stats.messages_received),
            "$SYS/broker/messages/sent": str(stats.messages_sent),
            "$SYS/broker/publish/messages/dropped": str(stats.messages_dropped),
            "$SYS/broker/store/messages/count": str(queued),
            "$SYS/broker/subscriptions/count": str(len(self.subscriptions)),
            "$SYS/broker/retained messages/count": str(len(self.retained)),
            "$SYS/broker/wills/published": str(stats.wills_published),
            "$SYS/broker/protocol/errors": str(stats.protocol_errors),
        }

    def publish_sys(self) -> None:
        for topic, value in self.sys_values().items():
            message = Message(topic, value.encode(), 0, True)
            self.retained.store(message)
            self._route(message)

    async def _sys_loop(self, interval: float) -> None:
        while True:
            self.publish_sys()
            await asyncio.sleep(interval)

    # Listeners

    async def _serve_websocket(self, websocket: ServerConnection) -> None:
        connection = Connection(self)
        transport = WebSocketTransport(websocket, connection)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(transport.run_sender(), name=f"broker.ws[{transport.peer}].sender")
            connection.connection_made(transport)
            try:
                async for data in websocket:
                    if isinstance(data, str):
                        # MQTT over WebSocket uses binary frames only [MQTT-6.0.0-1].
                        connection.violation("a text WebSocket frame")
                        break
                    connection.data_received(data)
                    if connection.closing:
                        break
            except ConnectionClosed:
                pass
            finally:
                connection.connection_lost(None)
                transport.finish()


@contextlib.asynccontextmanager
async def running(settings: BrokerSettings) -> AsyncIterator[Broker]:
    """Run a broker with its listeners until the block exits; then close every connection."""
    broker = Broker(settings)
    loop = asyncio.get_running_loop()
    host = settings.host
    if not is_loopback(host) and settings.anonymous:
        log.warning(
            "!!! listening on %s with anonymous access: any machine that can reach this host may "
            "publish and subscribe. Give --password-file (and --acl-file) to require credentials. !!!",
            host,
        )
    tcp = await loop.create_server(lambda: Connection(broker), host, settings.port, backlog=4096)
    servers: list[asyncio.Server] = [tcp]
    broker.port = tcp.sockets[0].getsockname()[1]
    broker.urls.append(f"mqtt://{_url_host(host)}:{broker.port}")
    websocket_server: WebSocketServer | None = None
    try:
        if settings.tls_cert is not None and settings.tls_key is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(settings.tls_cert, settings.tls_key)
            tls = await loop.create_server(
                lambda: Connection(broker), host, settings.tls_port, ssl=context, backlog=4096
            )
            servers.append(tls)
            broker.tls_port = tls.sockets[0].getsockname()[1]
            broker.urls.append(f"mqtts://{_url_host(host)}:{broker.tls_port}")
        if settings.ws_port is not None:
            websocket_server = await serve(
                broker._serve_websocket,
                host,
                settings.ws_port,
                subprotocols=[Subprotocol("mqtt"), Subprotocol("mqttv3.1")],
                compression=None,
                max_size=settings.max_packet_size + 8,
                ping_interval=None,
            )
            broker.ws_port = next(iter(websocket_server.sockets)).getsockname()[1]
            broker.urls.append(f"ws://{_url_host(host)}:{broker.ws_port}/mqtt")
        async with asyncio.TaskGroup() as tasks:
            sys_task = None
            if settings.sys_interval > 0:
                sys_task = tasks.create_task(broker._sys_loop(settings.sys_interval), name="broker.sys")
            try:
                yield broker
            finally:
                if sys_task is not None:
                    sys_task.cancel()
    finally:
        broker.closing = True
        broker.wills_log.close()
        for server in servers:
            server.close()
        if websocket_server is not None:
            websocket_server.close(close_connections=False)
        for connection in list(broker.connections):
            connection.abort()
        for server in servers:
            await server.wait_closed()
        if websocket_server is not None:
            await websocket_server.wait_closed()
        log.info(
            "broker stopped: %d messages received, %d sent, %d dropped, %d wills published",
            broker.stats.messages_received,
            broker.stats.messages_sent,
            broker.stats.messages_dropped,
            broker.stats.wills_published,
        )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
