"""The embedded MQTT 3.1.1 and 5 broker: listeners, sessions, routing, retained messages, auth and ACLs.

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
from broker.connection import Connection, forwarded
from broker.logs import Noise, clip
from broker.message import Message
from broker.reload import reload_security
from broker.retained import RetainedStore
from broker.session import NEVER, Entry, Limits, Session, Subscription
from broker.shared import SharedGroup
from broker.stats import Stats
from broker.store import Store
from broker.websocket import WebSocketTransport
from fleet.errors import StoreError, TopicError
from fleet.mqtt import reasons, v5
from fleet.mqtt.properties import EMPTY, Properties
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
    Will,
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
        # Shared subscriptions: each group by (name, filter), and the groups' filters in a tree of their
        # own, so that routing to sessions never has to tell a group apart from a session.
        self.shared: dict[tuple[str, str], SharedGroup] = {}
        self.group_filters: SubscriptionTree[SharedGroup] = SubscriptionTree()
        self.retained = RetainedStore()
        self.limits = Limits(max_queued=settings.max_queued)
        self.passwords = PasswordFile.load(settings.password_file) if settings.password_file else None
        self.acl = AclFile.load(settings.acl_file) if settings.acl_file else None
        self.urls: list[str] = []
        self.port = 0
        self.ws_port: int | None = None
        self.tls_port: int | None = None
        self.started = time.monotonic()
        self.closing = False
        self._unflushed: list[Connection] = []
        # What clients can make the broker log, bounded and counted (broker/logs.py).
        self.noise = Noise(log)
        # The persistent store (None: persistence off), and whether every write waits for it.
        self.store: Store | None = None
        self._sync_always = settings.sync == "always"
        # Fails with the StoreError of a commit that could not be written: `running()` then stops.
        self.store_failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def flush_soon(self, connection: Connection) -> None:
        """Write `connection`'s queued packets at the end of this loop turn, in one system call."""
        if not self._unflushed:
            asyncio.get_running_loop().call_soon(self._flush)
        self._unflushed.append(connection)

    def _flush(self) -> None:
        unflushed, self._unflushed = self._unflushed, []
        # One durability check (with sync "always", one commit) covers every packet of this turn.
        if self.store is None or self.durable():
            for connection in unflushed:
                connection.write_out()
        else:
            for connection in unflushed:
                connection.drop_out()

    def durable(self) -> bool:
        """With sync "always", commit the store before any packet leaves: one commit (one fsync) per
        loop turn covers every PUBACK, PUBREC and SUBACK of that turn. False when the store cannot be
        written: then nothing is acknowledged, and the broker stops."""
        store = self.store
        if store is None or not store.pending or not self._sync_always:
            return True
        try:
            store.commit()
        except StoreError as exc:
            if not self.store_failed.done():
                self.store_failed.set_exception(exc)
            return False
        return True

    # Persistence

    def restore(self, store: Store) -> None:
        """Load the sessions and retained messages of `store`; from now on every change goes to it."""
        sessions, retained = store.load()
        self.store = store
        now = time.monotonic()
        for message in retained:
            if message.expires is not None and message.expires <= now:
                store.retained(Message(message.topic, b"", 0, True))
            else:
                self.retained.store(message)
        loop = asyncio.get_running_loop()
        queued = 0
        for stored in sessions:
            remaining = None if stored.expiry == NEVER else stored.expiry - stored.offline
            if remaining is not None and remaining <= 0:
                log.info("the session of client %r expired while the broker was down", stored.client_id)
                store.session_dropped(stored.client_id)
                continue
            session = Session(stored.client_id, expiry=stored.expiry, limits=self.limits, stats=self.stats)
            session.store = store
            session.username = stored.username
            self.sessions[session.client_id] = session
            for topic_filter, sub, shared in stored.subscriptions:
                session.subscribe(topic_filter, sub)
                self._attach(session, topic_filter, sub, shared)
            for item in stored.entries:
                group = self.shared.get(item.share) if item.share is not None else None
                entry = Entry(item.message, item.qos, item.retain, item.sub_ids, group)
                entry.key = item.key
                entry.released = item.released
                if item.packet_id is None:
                    session.queue.append(entry)
                else:
                    session.inflight[item.packet_id] = entry
                queued += 1
            session.awaiting_release = set(stored.incoming)
            if remaining is not None:
                session.expiry_timer = loop.call_later(remaining, self._expire, session)
        log.info(
            "restored %d sessions, %d queued or in-flight messages and %d retained messages from %s",
            len(self.sessions),
            queued,
            len(self.retained),
            store.path,
        )

    async def _sync_loop(self, store: Store, interval: float) -> None:
        """sync "interval": every `interval` seconds, the changes since the last commit are written by
        a worker thread (SQLite lets go of the GIL while it writes), while the loop goes on."""
        while True:
            await asyncio.sleep(interval)
            changes = store.take()
            if changes is not None:
                await asyncio.to_thread(store.write, changes)

    def close_store(self) -> None:
        """At shutdown: the sessions still connected count as offline from now; the store is closed."""
        store = self.store
        if store is None:
            return
        for session in self.sessions.values():
            if session.store is not None and session.outlet is not None:
                store.session_saved(session, offline=True)
        self.store = None
        store.close()

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
        will = _will_message(connection.will)
        connection.will = None
        if self.closing:
            return
        client_id = connection.client_id
        if session is None or session.outlet is not connection:
            if will is not None:
                self._publish_will(client_id, will)
            return
        session.outlet = None
        if session.store is not None and session.expiry != 0:
            session.store.session_saved(session, offline=True)
        if session.expiry == 0:
            # The session ends with the connection, and its will is published now [MQTT 5.0 3.1.2.11.2].
            self._discard(session)
            if will is not None:
                self._publish_will(client_id, will)
            return
        loop = asyncio.get_running_loop()
        if will is not None:
            # The will waits for its Will Delay Interval, or for the session's end if that is sooner.
            delay = min(connection.will_delay, session.expiry)
            if delay == 0:
                self._publish_will(client_id, will)
            else:
                session.pending_will = will
                session.will_timer = loop.call_later(delay, self._will_due, session)
        if session.expiry != NEVER:
            session.expiry_timer = loop.call_later(session.expiry, self._expire, session)

    def _publish_will(self, client_id: str, will: Message) -> None:
        # The connection ended without DISCONNECT (or with 0x04): publish its will [MQTT-3.1.2-8].
        self.noise.wills.add(clip(client_id), clip(will.topic))
        self.stats.wills_published += 1
        self.publish(_stamped(will))

    def _will_due(self, session: Session) -> None:
        session.will_timer = None
        will, session.pending_will = session.pending_will, None
        if will is not None and session.outlet is None:
            self._publish_will(session.client_id, will)

    def _expire(self, session: Session) -> None:
        session.expiry_timer = None
        if session.outlet is not None or self.sessions.get(session.client_id) is not session:
            return
        log.info("the session of client %r expired", clip(session.client_id))
        will, session.pending_will = session.pending_will, None
        self._discard(session)
        if will is not None:
            self._publish_will(session.client_id, will)

    def _discard(self, session: Session) -> None:
        session.cancel_timers()
        if session.store is not None:
            session.store.session_dropped(session.client_id)
            session.store = None
        unfinished = session.take_unfinished_shared()
        for topic_filter in session.subscriptions:
            if not self._leave_group(topic_filter, session):
                self.subscriptions.remove(topic_filter, session)
        session.subscriptions.clear()
        session.options = 0
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        # A shared subscriber's unfinished QoS 1/2 messages go to another member of its group.
        for entry in unfinished:
            group = entry.group
            picked = group.pick() if group is not None else None
            if picked is not None:
                member, subscription = picked
                member.deliver(
                    entry.message, min(entry.qos, subscription.qos), retain=entry.retain, group=group
                )

    def authenticate(
        self, connection: Connection, username: str | None, password: bytes | None
    ) -> tuple[int, str | None]:
        """CONNACK's return code, and the user name the client has for ACLs."""
        if self.settings.use_identity_as_username:
            identity = _certificate_name(connection)
            if identity is not None:
                # The TLS handshake verified the certificate; as Mosquitto, no password is checked.
                return CONNACK_ACCEPTED, identity
            if username is not None and self.passwords is None:
                # User names come from certificates: one nothing can verify must not pass for a device.
                return CONNACK_BAD_CREDENTIALS, username
        if username is None:
            return (CONNACK_ACCEPTED if self.settings.anonymous else CONNACK_NOT_AUTHORIZED), None
        if self.passwords is None:
            return CONNACK_ACCEPTED, username
        if self.passwords.verify(username, password):
            return CONNACK_ACCEPTED, username
        return CONNACK_BAD_CREDENTIALS, username

    def handle_connect(self, connection: Connection, packet: Connect | v5.Connect) -> None:
        settings = self.settings
        is5 = isinstance(packet, v5.Connect)
        properties = packet.properties if isinstance(packet, v5.Connect) else EMPTY
        clean = packet.clean_start if isinstance(packet, v5.Connect) else packet.clean_session
        client_id = packet.client_id
        assigned = None
        if is5 and properties.authentication_method is not None:
            # Enhanced authentication is not supported [MQTT 5.0 4.12, 3.2.2.2].
            reason = f"authentication method {clip(properties.authentication_method)!r} is not supported"
            self._refuse(connection, reasons.BAD_AUTHENTICATION_METHOD, reason)
            return
        if not client_id:
            if not clean and not is5:
                self._refuse(connection, CONNACK_IDENTIFIER_REJECTED, "empty client id needs CleanSession=1")
                return
            # The server assigns a unique id to a zero-length one [MQTT-3.1.3-6, MQTT-3.2.2-16].
            client_id = assigned = f"auto-{uuid.uuid4().hex}"
        elif packet.protocol_level == 3 and len(client_id) > 23:
            self._refuse(connection, CONNACK_IDENTIFIER_REJECTED, "MQTT 3.1 ids have 23 characters at most")
            return
        connection.client_id = client_id
        code, username = self.authenticate(connection, packet.username, packet.password)
        will = packet.will
        # A will the client may not publish itself is refused at CONNECT, as Mosquitto does.
        if (
            code == CONNACK_ACCEPTED
            and will is not None
            and self.acl is not None
            and not self.acl.can_publish(client_id, username, will.topic)
        ):
            code = CONNACK_NOT_AUTHORIZED
        if code != CONNACK_ACCEPTED:
            user = None if username is None else clip(username)
            self._refuse(connection, code, f"authentication failed for user {user!r}")
            return

        if is5:
            requested = properties.session_expiry_interval or 0
            expiry = min(requested, settings.max_session_expiry)
        else:
            expiry = 0 if clean else NEVER
        session = self.sessions.get(client_id)
        present = False
        if session is not None:
            previous = session.outlet
            if isinstance(previous, Connection):
                self._take_over(previous)
            session = self.sessions.get(client_id)
        if session is not None:
            session.cancel_timers()
            will_due, session.pending_will = session.pending_will, None
            if clean:
                # Clean Start 1 ends the session [MQTT-3.1.2-4], and a will still waiting for its
                # Will Delay Interval is due when its session ends [MQTT-3.1.2-8].
                self._discard(session)
                session = None
                if will_due is not None:
                    self._publish_will(client_id, will_due)
            else:
                # The session goes on: a reconnect within the Will Delay Interval publishes no will
                # [MQTT-3.1.3-9].
                present = True
        if session is None:
            session = Session(client_id, expiry=expiry, limits=self.limits, stats=self.stats)
            self.sessions[client_id] = session
            if expiry != 0:
                session.store = self.store
        session.expiry = expiry
        session.username = username
        if session.store is not None:
            session.store.session_saved(session, offline=False)
        session.outlet = connection
        connection.session = session
        connection.will = will
        connection.connected = True
        keepalive = packet.keepalive
        self.stats.connections_total += 1
        self.stats.clients_maximum = max(self.stats.clients_maximum, len(self.connections))
        if is5:
            assert isinstance(packet, v5.Connect)
            delay = will.properties.will_delay_interval if isinstance(will, v5.Will) else None
            connection.will_delay = delay or 0
            # The client's Receive Maximum caps the broker's in-flight window [MQTT-3.3.4-9].
            connection.window = min(settings.max_inflight, properties.receive_maximum or 65535)
            connection.max_outgoing = properties.maximum_packet_size
            connection.topic_alias_maximum = properties.topic_alias_maximum or 0
            server_keepalive = None
            if keepalive > settings.max_keepalive:
                keepalive = server_keepalive = settings.max_keepalive
            connection.send(
                v5.encode_connack(
                    present,
                    reasons.SUCCESS,
                    Properties(
                        session_expiry_interval=expiry
                        if expiry != (properties.session_expiry_interval or 0)
                        else None,
                        receive_maximum=settings.max_inflight,
                        maximum_packet_size=settings.max_packet_size,
                        topic_alias_maximum=settings.max_topic_alias or None,
                        assigned_client_identifier=assigned,
                        server_keep_alive=server_keepalive,
                        shared_subscription_available=None if settings.shared_subscriptions else 0,
                    ),
                )
            )
        else:
            connection.send(connack(present, CONNACK_ACCEPTED))
        connection.start_keepalive(keepalive)
        log.debug(
            "client %r connected from %s (session present: %s)", clip(client_id), connection.peer, present
        )
        session.resume()

    def _refuse(self, connection: Connection, code: int, reason: str) -> None:
        self.noise.refused.add(connection.peer, clip(connection.client_id), reason)
        if connection.version == 5:
            connection.send(v5.encode_connack(False, _V5_CONNACK.get(code, code)))
        else:
            connection.send(connack(False, code))
        connection.close()

    def _take_over(self, previous: Connection) -> None:
        """A second CONNECT with the same client id closes the first connection [MQTT-3.1.4-2]; an
        MQTT 5 client is told so with DISCONNECT 0x8E [MQTT-3.1.4-3].

        The old connection ended without DISCONNECT, so its will is due now, or after its Will Delay
        Interval: a new connection with Clean Start 0 continues the session and cancels it, one with
        Clean Start 1 ends the session and publishes it at once; either way before the new CONNACK.
        """
        log.info("client %r took over its session from %s", clip(previous.client_id), previous.peer)
        self.connection_closed(previous)
        previous.disconnect(reasons.SESSION_TAKEN_OVER)

    # Messages

    def handle_publish(self, session: Session, packet: Publish) -> None:
        """Route one MQTT 3.1.1 PUBLISH from a client (its acknowledgement carries no reason)."""
        topic = packet.topic
        if topic.startswith("$SYS") or (
            self.acl is not None and not self.acl.can_publish(session.client_id, session.username, topic)
        ):
            self._refuse_publish(session, topic)
            return
        self.publish(
            Message(topic, packet.payload, packet.qos, packet.retain, EMPTY, None, session.client_id)
        )

    def _refuse_publish(self, session: Session, topic: str) -> int:
        """Log a PUBLISH the broker does not route; return the MQTT 5 reason code for its acknowledgement."""
        if topic.startswith("$SYS"):
            self.noise.denied.add(
                f"ignored a PUBLISH to {clip(topic)!r} from client {clip(session.client_id)!r}: "
                "$SYS is the broker's"
            )
            return reasons.TOPIC_NAME_INVALID
        self.noise.denied.add(f"ACL denied client {clip(session.client_id)!r} publishing to {clip(topic)!r}")
        return reasons.NOT_AUTHORIZED

    def handle_publish5(
        self, connection: Connection, session: Session, topic: str, packet: v5.Publish
    ) -> int:
        """Route one MQTT 5 PUBLISH from a client; return the reason code for its acknowledgement."""
        acl = self.acl
        if topic.startswith("$SYS") or (
            acl is not None and not acl.can_publish(session.client_id, session.username, topic)
        ):
            return self._refuse_publish(session, topic)
        properties = packet.properties
        if properties is EMPTY:
            # Most PUBLISH packets have no properties: nothing to check, forward or time.
            message = Message(
                topic, packet.payload, packet.qos, packet.retain, EMPTY, None, session.client_id
            )
            return reasons.SUCCESS if self.publish(message) else reasons.NO_MATCHING_SUBSCRIBERS
        if properties.payload_format_indicator == 1:
            try:
                packet.payload.decode("utf-8")
            except UnicodeDecodeError:
                # A payload that says UTF-8 and is not [MQTT 5.0 3.3.2.3.2]: refused with 0x99.
                self.noise.denied.add(
                    f"client {clip(session.client_id)!r} published a payload that is not the UTF-8 it claims"
                )
                if packet.qos == 0:
                    connection.disconnect(reasons.PAYLOAD_FORMAT_INVALID)
                return reasons.PAYLOAD_FORMAT_INVALID
        interval = properties.message_expiry_interval
        expires = None if interval is None else time.monotonic() + interval
        message = Message(
            topic,
            packet.payload,
            packet.qos,
            packet.retain,
            forwarded(properties),
            expires,
            session.client_id,
        )
        return reasons.SUCCESS if self.publish(message) else reasons.NO_MATCHING_SUBSCRIBERS

    def publish(self, message: Message) -> int:
        """Route a message to every matching subscription at min(publish QoS, granted QoS) [MQTT-3.8.4];
        return how many sessions it went to."""
        self.stats.messages_received += 1
        if message.retain:
            self.retained.store(message)
            if self.store is not None:
                self.store.retained(message)
        return self._route(message)

    def _route(self, message: Message) -> int:
        acl = self.acl
        qos = message.qos
        matched = self.subscriptions.match(message.topic)
        # Every match counts as a delivery unless it is skipped: skips are rare, deliveries are not.
        count = len(matched)
        for session, granted in matched.items():
            if acl is not None and not acl.can_read(session.client_id, session.username, message.topic):
                count -= 1
                continue
            if session.options:
                options = session.route_options(message, qos)
                if options is None:
                    count -= 1
                    continue
                delivered_qos, retain, ids = options
                session.deliver(message, delivered_qos, retain=retain, sub_ids=ids)
            else:
                session.deliver(message, granted if granted < qos else qos)
        if self.shared:
            for group in self.group_filters.match(message.topic):
                count += self._route_shared(group, message)
        return count

    def _route_shared(self, group: SharedGroup, message: Message) -> int:
        """Deliver `message` to one member of a shared subscription's group; return 1 if one took it."""
        picked = group.pick()
        if picked is None:
            return 0
        member, sub = picked
        if self.acl is not None and not self.acl.can_read(member.client_id, member.username, message.topic):
            return 0
        one: tuple[int, ...] = (sub.identifier,) if sub.identifier else ()
        retain = sub.retain_as_published and message.retain
        member.deliver(message, min(sub.qos, message.qos), retain=retain, sub_ids=one, group=group)
        return 1

    def handle_subscribe(
        self, connection: Connection, session: Session, packet: Subscribe | v5.Subscribe
    ) -> None:
        is5 = isinstance(packet, v5.Subscribe)
        if is5:
            assert isinstance(packet, v5.Subscribe)
            given = packet.properties.subscription_identifiers
            identifier = given[0] if given else None
            wanted = [
                (
                    s.topic_filter,
                    Subscription(s.qos, s.no_local, s.retain_as_published, s.retain_handling, identifier),
                )
                for s in packet.subscriptions
            ]
        else:
            assert isinstance(packet, Subscribe)
            wanted = [(topic_filter, Subscription(qos)) for topic_filter, qos in packet.topics]
        codes: list[int] = []
        retained_for: list[tuple[str, Subscription]] = []
        for topic_filter, sub in wanted:
            code, existed = self._subscribe_one(session, topic_filter, sub, is5)
            codes.append(code)
            if code >= 0x80:
                continue
            # Retain Handling: 0 sends retained messages, 1 only for a new subscription, 2 never
            # [MQTT-3.3.1-9, -10, -11]; a shared subscription gets none [MQTT 5.0 4.8.2].
            if topic_filter.startswith("$share/") or sub.retain_handling == 2:
                continue
            if sub.retain_handling == 1 and existed:
                continue
            retained_for.append((topic_filter, sub))
        connection.send(v5.encode_suback(packet.packet_id, codes) if is5 else suback(packet.packet_id, codes))
        # Retained messages go to this subscriber only, for the filters it just subscribed to
        # [MQTT-3.3.1-6], at min(message QoS, granted QoS), with the retain flag set.
        acl = self.acl
        now = time.monotonic()
        for topic_filter, sub in retained_for:
            ids: tuple[int, ...] = (sub.identifier,) if sub.identifier else ()
            for message in self.retained.matching(topic_filter):
                if message.expires is not None and message.expires <= now:
                    continue
                if acl is not None and not acl.can_read(session.client_id, session.username, message.topic):
                    continue
                session.deliver(message, min(message.qos, sub.qos), retain=True, sub_ids=ids)

    def _subscribe_one(
        self, session: Session, topic_filter: str, sub: Subscription, is5: bool
    ) -> tuple[int, bool]:
        """The SUBACK code of one subscription, and whether it replaced an existing one."""
        shared = v5.is_shared(topic_filter) and is5
        try:
            if shared:
                _, inner = v5.split_shared(topic_filter)
            else:
                validate_filter(topic_filter)
        except TopicError as exc:
            self.noise.denied.add(
                f"refused a subscription of client {clip(session.client_id)!r}: {clip(str(exc))}"
            )
            return (reasons.TOPIC_FILTER_INVALID if is5 else SUBACK_FAILURE), False
        if shared and not self.settings.shared_subscriptions:
            return reasons.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED, False
        checked = inner if shared else topic_filter
        if self.acl is not None and not self.acl.can_subscribe(session.client_id, session.username, checked):
            self.noise.denied.add(
                f"ACL denied client {clip(session.client_id)!r} subscribing to {clip(topic_filter)!r}"
            )
            return (reasons.NOT_AUTHORIZED if is5 else SUBACK_FAILURE), False
        existed = session.subscribe(topic_filter, sub)
        self._attach(session, topic_filter, sub, shared)
        if session.store is not None:
            session.store.subscribed(session.client_id, topic_filter, sub, shared=shared)
        return sub.qos, existed

    def _attach(self, session: Session, topic_filter: str, sub: Subscription, shared: bool) -> None:
        """Put a subscription of `session` into the routing tree, or into its shared group."""
        if shared:
            group_name, inner = v5.split_shared(topic_filter)
            key = (group_name, inner)
            group = self.shared.get(key)
            if group is None:
                group = self.shared[key] = SharedGroup(group_name, inner)
                self.group_filters.add(inner, group, 2)
            group.members[session] = sub
        else:
            self.subscriptions.add(topic_filter, session, sub.qos)

    def _leave_group(self, topic_filter: str, session: Session) -> bool:
        """Take `session` out of the shared group of `topic_filter`; False if it is in none (an MQTT
        3.1.1 client's `$share/...` is an ordinary filter)."""
        if not v5.is_shared(topic_filter):
            return False
        try:
            key = v5.split_shared(topic_filter)
        except TopicError:
            return False
        group = self.shared.get(key)
        if group is None or group.members.pop(session, None) is None:
            return False
        if not group.members:
            del self.shared[key]
            self.group_filters.remove(group.topic_filter, group)
        return True

    def subscription_count(self) -> int:
        """Subscriptions in force, a shared group counting as one."""
        return len(self.subscriptions) + len(self.group_filters)

    def remove_subscription(self, session: Session, topic_filter: str) -> bool:
        """End one subscription of `session`; False if it had none on `topic_filter`."""
        existed = session.unsubscribe(topic_filter)
        if existed and not self._leave_group(topic_filter, session):
            self.subscriptions.remove(topic_filter, session)
        if existed and session.store is not None:
            session.store.unsubscribed(session.client_id, topic_filter)
        return existed

    def reload(self) -> None:
        """Read the password and ACL files again and apply them to every client (broker/reload.py)."""
        reload_security(self)

    def handle_unsubscribe(
        self, connection: Connection, session: Session, packet: Unsubscribe | v5.Unsubscribe
    ) -> None:
        codes: list[int] = []
        for topic_filter in packet.filters:
            existed = self.remove_subscription(session, topic_filter)
            codes.append(reasons.SUCCESS if existed else reasons.NO_SUBSCRIPTION_EXISTED)
        if isinstance(packet, v5.Unsubscribe):
            connection.send(v5.encode_unsuback(packet.packet_id, codes))
        else:
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
            "$SYS/broker/publish/messages/expired": str(stats.messages_expired),
            "$SYS/broker/publish/messages/oversize": str(stats.messages_oversize),
            "$SYS/broker/store/messages/count": str(queued),
            "$SYS/broker/subscriptions/count": str(self.subscription_count()),
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
    if settings.persistence is not None:
        broker.restore(Store(settings.persistence))
    if not is_loopback(host) and settings.anonymous:
        log.warning(
            "!!! listening on %s with anonymous access (--allow-anonymous): any machine that can reach "
            "this host may publish and subscribe. Give --password-file (and --acl-file) to require "
            "credentials. !!!",
            host,
        )
    try:
        tcp = await loop.create_server(lambda: Connection(broker), host, settings.port, backlog=4096)
    except BaseException:
        broker.close_store()
        raise
    servers: list[asyncio.Server] = [tcp]
    broker.port = tcp.sockets[0].getsockname()[1]
    broker.urls.append(f"mqtt://{_url_host(host)}:{broker.port}")
    websocket_server: WebSocketServer | None = None
    try:
        if settings.tls_cert is not None and settings.tls_key is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(settings.tls_cert, settings.tls_key)
            if settings.cafile is not None:
                context.load_verify_locations(settings.cafile)
                context.verify_mode = ssl.CERT_REQUIRED if settings.require_certificate else ssl.CERT_OPTIONAL
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
            sync_task = None
            if broker.store is not None and settings.sync == "interval":
                sync_task = tasks.create_task(
                    broker._sync_loop(broker.store, settings.sync_interval / 1000), name="broker.sync"
                )
            # A store that cannot be written ends the task group, and with it the broker.
            failed = tasks.create_task(_raise_when(broker.store_failed), name="broker.store")
            try:
                yield broker
            finally:
                for task in (sys_task, sync_task, failed):
                    if task is not None:
                        task.cancel()
    finally:
        broker.closing = True
        broker.noise.close()
        for server in servers:
            server.close()
        if websocket_server is not None:
            websocket_server.close(close_connections=False)
        for connection in list(broker.connections):
            # MQTT 5 clients are told why: DISCONNECT 0x8B, server shutting down [MQTT 5.0 4.13].
            connection.disconnect(reasons.SERVER_SHUTTING_DOWN, linger=False)
        for server in servers:
            await server.wait_closed()
        if websocket_server is not None:
            await websocket_server.wait_closed()
        broker.close_store()
        log.info(
            "broker stopped: %d messages received, %d sent, %d dropped, %d wills published",
            broker.stats.messages_received,
            broker.stats.messages_sent,
            broker.stats.messages_dropped,
            broker.stats.wills_published,
        )


# MQTT 3.1.1 CONNACK return codes and their MQTT 5 reason codes.
_V5_CONNACK = {
    CONNACK_IDENTIFIER_REJECTED: reasons.CLIENT_IDENTIFIER_NOT_VALID,
    CONNACK_BAD_CREDENTIALS: reasons.BAD_USER_NAME_OR_PASSWORD,
    CONNACK_NOT_AUTHORIZED: reasons.NOT_AUTHORIZED,
}


def _will_message(will: Will | v5.Will | None) -> Message | None:
    """The will as a message; its Message Expiry Interval starts when it is published."""
    if will is None:
        return None
    if isinstance(will, Will):
        return Message(will.topic, will.payload, will.qos, will.retain)
    interval = will.properties.message_expiry_interval
    return Message(
        will.topic,
        will.payload,
        will.qos,
        will.retain,
        forwarded(will.properties),
        None if interval is None else float(interval),
    )


def _stamped(will: Message) -> Message:
    """A will about to be published: its expiry interval becomes a deadline from now."""
    if will.expires is None:
        return will
    return Message(
        will.topic, will.payload, will.qos, will.retain, will.properties, time.monotonic() + will.expires
    )


def _certificate_name(connection: Connection) -> str | None:
    """The common name of the client certificate that the TLS handshake verified, if any."""
    transport = connection.transport
    certificate = transport.get_extra_info("peercert") if transport is not None else None
    if not certificate:
        return None
    names = [value for rdn in certificate.get("subject", ()) for key, value in rdn if key == "commonName"]
    return names[-1] if names else None


async def _raise_when(failed: asyncio.Future[None]) -> None:
    await failed


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
