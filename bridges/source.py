"""The bridge's MQTT side: one aiomqtt client that feeds the Hub, reconnects with backoff and
resubscribes, and publishes commands on behalf of consumers. It works against any broker.

Messages reach the Hub without aiomqtt's message iterator: `client.messages` creates a task and an
`asyncio.wait` for every message, about 250 µs of bridge CPU each. aiomqtt's documented `queue_type`
hook lets us replace its incoming queue instead: `_handing_to(hub)` is a queue whose `put_nowait`
ingests the message at once, in paho's read callback, and keeps nothing. The iterator then only
waits for the connection to end, which it reports as `MqttError`.

paho reads one packet per readable event, with a `recv` for its first byte, one per length byte
and one for the rest. Over plain TCP, `_BufferedSocket` reads up to 64 KB at once instead, and says
how much it holds through `pending()`, which aiomqtt's reader already drains (it does so for TLS):
one readable event now takes every whole packet received. Under load that also batches the fan-out,
because each consumer's writer wakes once for all the messages of one turn of the event loop.

It fans out what one read of the kernel's socket brings per turn of the loop, so that the
consumers' writers get the loop between reads however fast the broker sends. When the turn's
first read has left more than `_BEHIND_BYTES` in the kernel for `_LATE_AFTER` seconds (longer than
a burst lasts), the bridge has no CPU left to fan out what arrives (Linux keeps the window of a
socket that is not read fast at about 64 KB, so a backlog shows as a buffer that one read no longer
empties, and waits in the broker, not in the kernel). It then fans out a smaller first read per turn
(`_LATE_READ_SIZE`), so that its turns stay short, and reads on in the same turn, shedding what it
reads, while more than `_BEHIND_BYTES` wait; it sheds the turn's first read too while half of
the consumers do not keep up either (`Hub.overflowing`). The intake may
keep up while the fan-out does not: each message is then offered to every consumer only to be
dropped from its full queue, which costs as much as a delivery, so the deliveries fall as the
offered rate rises. So the turn's first read is also shed while half of the consumers do not keep
up, once that has held for `_LATE_AFTER` seconds since the bridge had no CPU to spare (its process
used 95 % of a core; `_Intake.pressed`); consumers that are slow on their own, on a bridge with CPU
to spare, never make it shed for the others. Shed messages are counted (`Hub.shed`: in
`fleet_bridge_shed_total`, and as a drop for each consumer the message was for), which costs far
less than fanning it out, so the intake keeps up and never leaves the loss in the broker, unseen.

Commands over MQTT 5 are requests (as `fleet cmd` sends them): when the bridge speaks MQTT 5 and a
consumer publishes to `{prefix}/{device}/cmd` for a device whose retained birth in the hub's cache
says `"protocol": 5`, the PUBLISH carries the Response Topic `{prefix}/{device}/cmd/response/{token}`
(`token` is this bridge's own) and, when the payload is a JSON object with a string `id`, that id as
its Correlation Data. The bridge subscribes to `{prefix}/+/cmd/response/{token}` unless one of its
subscriptions already covers it, so the device's reply reaches the hub as an ordinary event (device
set, kind `raw`), with the correlation data in the envelope's `properties` (base64) and the command
id in its payload. Over MQTT 3.1.1, or for any other device, a command goes out as it came.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import random
import secrets
import socket
import ssl
import struct
import termios
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiomqtt
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties

from bridges.cpu import CpuShare
from bridges.hub import Hub
from fleet.device import speaks_v5
from fleet.errors import FleetError, TopicError
from fleet.mqtt.properties import EMPTY, Properties
from fleet.topics import classify, matches, validate_topic

__all__ = [
    "MAX_PUBLISH_BYTES",
    "BrokerUnavailable",
    "MqttSource",
    "PublishTooLarge",
    "SourceSettings",
    "publish_size",
]

log = logging.getLogger("bridges.source")


class BrokerUnavailable(FleetError):
    """The bridge is not connected to its broker right now."""


class PublishTooLarge(FleetError, ValueError):
    """A consumer's publish would make a PUBLISH packet larger than the bridge may send."""


# A broker closes the connection of a client whose packet exceeds its maximum packet size, and
# MQTT 3.1.1 has no way to learn that size. 128 KiB is within every limit we know of: ours and
# EMQX's 1 MiB, Azure IoT Hub's 256 KB, AWS IoT Core's 128 KB; Mosquitto's is 256 MB unless set.
MAX_PUBLISH_BYTES = 128 * 1024


def publish_size(topic: str, payload: bytes, qos: int, properties: int = 0) -> int:
    """The bytes of the MQTT PUBLISH packet that carries `payload` to `topic`, fixed header included,
    with `properties` bytes of MQTT 5 properties (their length's bytes included)."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + properties + len(payload)
    length_bytes = 1 + (remaining > 127) + (remaining > 16_383) + (remaining > 2_097_151)
    return 1 + length_bytes + remaining


@dataclass(frozen=True, slots=True)
class SourceSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    transport: str = "tcp"  # or "websockets"
    websocket_path: str | None = None
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None
    subscriptions: tuple[str, ...] = ("#",)
    qos: int = 1
    # Consumers may publish only to topics matching these filters (by default, device commands).
    publish_allowed: tuple[str, ...] = ("fleet/+/cmd",)
    # The largest PUBLISH packet the bridge sends for a consumer; a larger one is refused to the
    # consumer, because the broker would close the bridge's own connection for it.
    max_publish_bytes: int = MAX_PUBLISH_BYTES
    backoff_initial: float = 0.5
    backoff_max: float = 10.0
    # "5": subscribe with MQTT 5, so that the messages' properties reach the envelope.
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    # Subscribe through `$share/{shared_group}/{filter}` (MQTT 5), so that bridges of one group split
    # the messages; the `retained_topics` filters that a subscription covers are also subscribed on
    # their own, for their retained messages (a shared subscription gets none) and all their updates.
    shared_group: str | None = None
    retained_topics: tuple[str, ...] = ()


# The Subscription Identifiers of a bridge in a shared group: of its shared subscriptions, and of its
# own subscriptions to the retained topics, whose messages it takes only from the latter.
_SHARED_ID = 1
_OWN_ID = 2


_READ_SIZE = 65536
# A late intake's first read of a turn, the one fanned out: about 90 telemetry messages, so that a
# turn of an overloaded bridge, and the answer to a request waiting for a few of them (`/healthz`),
# stays short; what it leaves is shed.
_LATE_READ_SIZE = 16 * 1024
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
# After a read, more than this many bytes still waiting in the kernel means the intake is behind:
# the loop has no CPU left to fan out what arrives, and what it reads meanwhile is shed.
_BEHIND_BYTES = 8 * 1024
# Reads of the kernel's socket in one turn of the loop, at most: one to fan out, the others to shed.
_SHED_READS = 16
# A backlog in the kernel for less than this many seconds is a burst, fanned out in full, not shed
# (tests/bridges/test_limits.py publishes 24 MB at once).
_LATE_AFTER = 2.0
# The bridge has no CPU to spare when its process has used this share of a core or more over the
# last `_BUSY_WINDOW` seconds (bench/bridge_scale.py calls a bridge saturated at 95 % of its core).
_BUSY_SHARE = 0.95
_BUSY_WINDOW = 0.5


def _unread_bytes(sock: socket.socket) -> int:
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0])


class _Intake:
    """The hub fed; whether the messages being read now are to be shed (`behind`); since when the
    intake has been late (`late_since`); and how many kernel reads."""

    __slots__ = (
        "_behind_since",
        "_busy",
        "_calm_since",
        "_cpu",
        "_pressed_since",
        "behind",
        "hub",
        "late_since",
        "reads",
    )

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.behind = False
        self.reads = 0
        self._behind_since: float | None = None  # more than one read has waited in the kernel since
        self.late_since: float | None = None  # ... and for at least `_LATE_AFTER` seconds
        self._pressed_since: float | None = None  # the fan-out has not kept up since (see `pressed`)
        self._calm_since: float | None = None  # ... and has kept up since
        self._busy = False  # the process used `_BUSY_SHARE` of a core in the last window
        self._cpu = CpuShare(_BUSY_WINDOW)

    def busy(self, now: float, cpu: float) -> bool:
        """Whether the process has used `_BUSY_SHARE` of a core or more in its last window of at least
        `_BUSY_WINDOW` seconds, `cpu` being its CPU time (`time.process_time()`) at `now`."""
        share = self._cpu.update(now, cpu)
        if share is not None:
            self._busy = share >= _BUSY_SHARE
        return self._busy

    def pressed(self, overflowing: bool, busy: bool, now: float) -> bool:
        """Whether the turn's first read is to be shed because the fan-out does not keep up: the hub
        is `overflowing` and the bridge `busy` (no CPU to spare, `_Intake.busy`) now, and so they
        have been since `_LATE_AFTER` seconds ago or longer, with no calm of `_LATE_AFTER` seconds
        between (a burst is fanned out in full). Slow consumers alone, on a bridge with CPU to spare,
        never make the intake shed for the others; and once shedding has freed CPU, the reads are
        fanned out again."""
        if not overflowing:
            if self._calm_since is None:
                self._calm_since = now
            elif now - self._calm_since >= _LATE_AFTER:
                self._pressed_since = None
            return False
        self._calm_since = None
        if not busy:
            return False
        if self._pressed_since is None:
            self._pressed_since = now
        return now - self._pressed_since >= _LATE_AFTER

    def late(self, unread: int, now: float) -> bool:
        """Whether, with `unread` bytes still waiting after the first read of a turn, the intake is
        late: bytes have been left after that read for `_LATE_AFTER` seconds, so this is no burst
        but a bridge without CPU left for what arrives. (Linux's window for a socket that is not
        read fast is about 64 KB: a backlog shows as a kernel buffer that one read no longer empties,
        not as a larger one.)"""
        if unread <= _BEHIND_BYTES:
            self._behind_since = self.late_since = None
            return False
        if self._behind_since is None:
            self._behind_since = now
        if self.late_since is None and now - self._behind_since >= _LATE_AFTER:
            self.late_since = now
        return self.late_since is not None

    def is_late(self) -> bool:
        return self.late_since is not None


def _frame(buf: bytearray, shed: Callable[[str], None] | None) -> tuple[int, bytes]:
    """Where the whole MQTT packets at the head of `buf` end, and their bytes, less the QoS 0
    PUBLISH packets handed to `shed` (by topic) when it is given."""
    kept: list[bytes] = []
    start = i = 0
    n = len(buf)
    while i + 1 < n:
        length, shift, j = 0, 0, i + 1
        while j < n and shift <= 21:
            byte = buf[j]
            length |= (byte & 0x7F) << shift
            j += 1
            if byte < 0x80:
                break
            shift += 7
        else:
            if shift > 21:  # malformed: paho reports it
                return n, bytes(buf[start:])
            break  # the remaining length is not all here yet
        end = j + length
        if end > n:
            break
        if shed is not None and buf[i] & 0xF6 == 0x30 and length >= 2:  # PUBLISH, QoS 0
            if start < i:
                kept.append(bytes(buf[start:i]))
            topic_end = j + 2 + (buf[j] << 8 | buf[j + 1])
            shed(buf[j + 2 : topic_end].decode("utf-8", "replace"))
            start = end
        i = end
    if start < i:
        kept.append(bytes(buf[start:i]))
    return i, b"".join(kept)


class _BufferedSocket:
    """A TCP socket whose `recv` reads up to 64 KB from the kernel and hands out the whole MQTT
    packets in it in the sizes asked for; `pending()` is what is still buffered. Everything else is
    the socket's own.

    It reads the kernel's socket once per turn of the event loop for messages to fan out: after that,
    a `recv` that finds its buffer empty raises BlockingIOError (paho has read a whole packet and
    stops), unless the intake is late (`_Intake.late`) and more than `_BEHIND_BYTES` still wait in
    the kernel: then the loop has no CPU left for them, and it reads on with `intake.behind` set,
    so that what it reads is shed: the QoS 0 PUBLISH packets here, before paho parses them (which
    costs far more), the others by the hub's hand-off. `pending()` is then 1 with nothing buffered,
    since aiomqtt's reader asks paho for more only while it is not zero. The first read of a turn
    is shed too while the intake is late and the hub is `overflowing()`. aiomqtt's reader goes on
    while `pending()` is not zero, and paho reads the rest of a packet that straddles the buffer's
    end, so without
    this bound one readable event could go on fanning out one 64 KB buffer after another for as long
    as the broker keeps the socket full, and the consumers' writers would get no turn at all
    (receive livelock)."""

    __slots__ = (
        "_data",
        "_eof",
        "_loop",
        "_partial",
        "_pos",
        "_reads",
        "_sock",
        "_turn",
        "intake",
    )

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop, intake: _Intake) -> None:
        self._sock = sock
        self._loop = loop
        self.intake = intake
        self._data = b""  # whole packets, for paho
        self._pos = 0
        self._partial = bytearray()  # the head of a packet not all received yet
        self._eof = False
        self._reads = 0  # of the kernel's socket in the hub's turn `_turn` of the loop
        self._turn = -1

    def recv(self, size: int) -> bytes:
        while self._pos >= len(self._data):
            if self._eof:
                return b""
            self._fill()
        pos = self._pos
        self._pos = pos + size
        return self._data[pos : pos + size]

    def _fill(self) -> None:
        """Read the kernel's socket once; BlockingIOError when nothing is there, or when this turn
        of the loop may read no more."""
        sock, intake = self._sock, self.intake
        turn = intake.hub.turn()
        if turn != self._turn:
            self._turn, self._reads = turn, 0
        if not self._reads:
            now = self._loop.time()
            overflowing = intake.hub.overflowing()
            pressed = intake.pressed(overflowing, intake.busy(now, time.process_time()), now)
            intake.behind = pressed or (intake.is_late() and overflowing)
        elif self._sheds():
            intake.behind = True  # read on in this turn, to shed what the loop has no CPU for
        else:
            raise BlockingIOError  # the rest waits for the next turn
        self._reads += 1
        data = sock.recv(_LATE_READ_SIZE if self._reads == 1 and intake.is_late() else _READ_SIZE)
        intake.reads += 1
        if self._reads == 1:
            intake.late(_unread_bytes(sock), self._loop.time())
        if _QUICKACK is not None:
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        if not data:
            self._eof = True
            return
        partial = self._partial
        partial += data
        end, self._data = _frame(partial, intake.hub.shed if intake.behind else None)
        self._pos = 0
        del partial[:end]

    def _sheds(self) -> bool:
        """Whether this turn reads the kernel's socket again, to shed what it reads."""
        return (
            0 < self._reads < _SHED_READS
            and self._turn == self.intake.hub.turn()
            and self.intake.is_late()
            and _unread_bytes(self._sock) > _BEHIND_BYTES
        )

    def pending(self) -> int:
        """The bytes of whole packets buffered; or 1, with none buffered, while this turn is to read
        the kernel's socket again and shed what it reads: aiomqtt's reader reads on while this is
        not zero."""
        buffered = len(self._data) - self._pos
        return buffered if buffered or not self._sheds() else 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Client(aiomqtt.Client):
    """aiomqtt's client, reading plain TCP through a `_BufferedSocket` (TLS and WebSocket as they are).

    It hooks aiomqtt's socket-open callback and replaces paho's socket before the first read: both
    are internals of the exactly pinned aiomqtt and paho-mqtt."""

    intake: _Intake | None = None  # the source sets its own on each client

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        if type(sock) is socket.socket and self.intake is not None:
            sock = _BufferedSocket(sock, self._loop, self.intake)
            client._sock = sock
        super()._on_socket_open(client, userdata, sock)


def _properties(properties: PahoProperties) -> Properties:
    """The properties of an MQTT 5 PUBLISH that paho received, as the envelope shows them; EMPTY for
    none. Subscription Identifiers are the bridge's own, not the publisher's: left out."""
    given = vars(properties)
    correlation = given.get("CorrelationData")
    shown = Properties(
        payload_format_indicator=given.get("PayloadFormatIndicator"),
        message_expiry_interval=given.get("MessageExpiryInterval"),
        content_type=given.get("ContentType"),
        response_topic=given.get("ResponseTopic"),
        correlation_data=None if correlation is None else bytes(correlation),
        user_properties=tuple((str(key), str(value)) for key, value in given.get("UserProperty", ())),
    )
    return EMPTY if shown == EMPTY else shown


def _subscribe_properties(identifier: int) -> PahoProperties:
    properties = PahoProperties(PacketTypes.SUBSCRIBE)  # type: ignore[no-untyped-call]  # paho has no hints here
    properties.SubscriptionIdentifier = identifier
    return properties


def _handing_to(hub: Hub, intake: _Intake, own: tuple[str, ...] = ()) -> type[asyncio.Queue[aiomqtt.Message]]:
    """A queue class for aiomqtt's `queue_type` that hands every message to `hub` instead of keeping
    it, or sheds it while the intake is behind. A message on a topic of the `own` filters that came
    only through a shared subscription is left out: the bridge's own subscription brings it too."""

    class HandOff(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            if intake.behind:
                hub.shed(item.topic.value)
                return
            if (
                own
                and item.properties is not None
                and getattr(item.properties, "SubscriptionIdentifier", None) == [_SHARED_ID]
                and any(matches(topic_filter, item.topic.value) for topic_filter in own)
            ):
                return
            payload = item.payload
            data = payload if isinstance(payload, bytes) else str(payload).encode()
            properties = EMPTY if item.properties is None else _properties(item.properties)
            hub.ingest(item.topic.value, data, qos=item.qos, retain=item.retain, properties=properties)

    return HandOff


def _subscriptions(settings: SourceSettings) -> tuple[tuple[str, int | None], ...]:
    """The filters the bridge subscribes to, with their Subscription Identifiers (None: none)."""
    group = settings.shared_group
    if group is None:
        return tuple((topic_filter, None) for topic_filter in settings.subscriptions)
    shared = tuple((f"$share/{group}/{topic_filter}", _SHARED_ID) for topic_filter in settings.subscriptions)
    own = tuple(
        (retained, _OWN_ID)
        for retained in settings.retained_topics
        if any(matches(topic_filter, retained) for topic_filter in settings.subscriptions)
    )
    return shared + own


class MqttSource:
    """Owns the MQTT connection of one bridge process; `run()` until cancelled."""

    def __init__(self, hub: Hub, settings: SourceSettings) -> None:
        self.hub = hub
        self.settings = settings
        self._client: aiomqtt.Client | None = None
        self.intake = _Intake(hub)
        # The topics where the v5 devices answer this bridge's requests (see the module docstring).
        self.response_token = secrets.token_hex(6)
        self.response_filter = f"{hub.prefix}/+/cmd/response/{self.response_token}"
        self.subscriptions = _subscriptions(settings) + self._response_subscriptions()
        own = tuple(topic_filter for topic_filter, identifier in self.subscriptions if identifier == _OWN_ID)
        self._queue_type = _handing_to(hub, self.intake, own)
        self.identifier = f"fleet-bridge-{uuid.uuid4().hex[:12]}"

    def _response_subscriptions(self) -> tuple[tuple[str, int | None], ...]:
        """The response topics' filter, unless the bridge speaks 3.1.1 or subscribes to it already;
        in a shared group, always its own (a shared subscription may hand the reply to another bridge)."""
        settings, topic_filter = self.settings, self.response_filter
        if settings.protocol != "5":
            return ()
        if settings.shared_group is not None:
            return ((topic_filter, _OWN_ID),)
        if any(matches(subscribed, topic_filter) for subscribed in settings.subscriptions):
            return ()
        return ((topic_filter, None),)

    def request_properties(self, topic: str, payload: bytes) -> PahoProperties | None:
        """The Response Topic and Correlation Data of a command to a v5 device, when the bridge
        speaks MQTT 5; None for anything to go out as it came."""
        prefix = self.hub.prefix
        device, _ = classify(topic, prefix)
        if self.settings.protocol != "5" or device is None or topic != f"{prefix}/{device}/cmd":
            return None
        birth = self.hub.retained.get(f"{prefix}/{device}/status")
        if birth is None or not speaks_v5(birth.payload):
            return None
        properties = PahoProperties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho has no hints here
        properties.ResponseTopic = f"{prefix}/{device}/cmd/response/{self.response_token}"
        try:
            command = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            command = None
        if isinstance(command, dict) and isinstance(command.get("id"), str):
            properties.CorrelationData = command["id"].encode()
        return properties

    async def run(self) -> None:
        settings = self.settings
        attempt = 0
        while True:
            mqtt5 = settings.protocol == "5"
            client = _Client(
                settings.host,
                settings.port,
                identifier=self.identifier,
                username=settings.username,
                password=settings.password,
                protocol=aiomqtt.ProtocolVersion.V5 if mqtt5 else aiomqtt.ProtocolVersion.V311,
                transport=settings.transport,  # type: ignore[arg-type]
                websocket_path=settings.websocket_path,
                tls_context=settings.tls,
                clean_session=None if mqtt5 else True,
                clean_start=True if mqtt5 else MQTT_CLEAN_START_FIRST_ONLY,  # paho: True is for MQTT 5 only
                keepalive=15,
                queue_type=self._queue_type,
            )
            client.intake = self.intake
            try:
                async with client:
                    for topic_filter, identifier in self.subscriptions:
                        properties = None if identifier is None else _subscribe_properties(identifier)
                        await client.subscribe(topic_filter, qos=settings.qos, properties=properties)
                    self._client = client
                    attempt = 0
                    log.info("bridge connected to %s:%d", settings.host, settings.port)
                    self.hub.broker_status(True, f"connected to {settings.host}:{settings.port}")
                    # Messages go to the hub as they arrive (HandOff); this only waits for the
                    # connection to end, which raises MqttError.
                    await anext(client.messages)
            except aiomqtt.MqttError as exc:
                reason = f"broker {settings.host}:{settings.port} unreachable: {exc}"
                if self.hub.broker_connected or attempt == 0:
                    log.warning("%s; retrying with backoff", reason)
                    self.hub.broker_status(False, reason)
            finally:
                self._client = None
            delay = min(settings.backoff_max, settings.backoff_initial * 2 ** min(attempt, 16))
            attempt += 1
            await asyncio.sleep(random.uniform(delay / 2, delay))

    def check_publish(self, topic: str) -> None:
        """Raise TopicError unless consumers may publish to `topic`."""
        validate_topic(topic)
        if not any(matches(allowed, topic) for allowed in self.settings.publish_allowed):
            allowed = ", ".join(self.settings.publish_allowed) or "nothing (publish_allowed is empty)"
            raise TopicError(f"publishing to {topic!r} is not allowed; allowed: {allowed}")

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish for a consumer, a command to a v5 device as a request (`request_properties`); raises
        TopicError for a forbidden topic, PublishTooLarge past `max_publish_bytes`, BrokerUnavailable
        when down. A refused publish never reaches the broker."""
        self.check_publish(topic)
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, not {qos}")
        properties = self.request_properties(topic, payload)
        extra = 0 if properties is None else len(properties.pack())  # type: ignore[no-untyped-call]
        size, limit = publish_size(topic, payload, qos, extra), self.settings.max_publish_bytes
        if size > limit:
            raise PublishTooLarge(
                f"the publish to {topic!r} would be a {size}-byte MQTT packet; the bridge sends at most "
                f"{limit} (max_publish_bytes), so that the broker never closes its connection for it"
            )
        client = self._client
        if client is None:
            raise BrokerUnavailable("the bridge is not connected to its broker")
        try:
            await client.publish(topic, payload, qos=qos, properties=properties)
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailable(f"publish failed: {exc}") from exc
