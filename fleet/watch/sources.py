"""Where `fleet watch` gets its messages: an injected source.

`MqttSource` attaches to any broker as an ordinary MQTT client, on the project's lean transport
(`fleet.transport.Link`: the message is decoded once, no task or future per message), and says
what its connection does (`Attachment`). It speaks MQTT 3.1.1, or MQTT 5 (`version=5`): then each
message comes with its properties, and a broker's DISCONNECT is reported with its reason code, the
code's name and the broker's reason string. `ListSource` replays a fixed list of messages, so that
tests and screenshots see the same fleet every run.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ssl import SSLContext
from typing import Literal, Protocol

from fleet.endpoint import Endpoint
from fleet.errors import FleetError, ServerDisconnected, TransportError
from fleet.mqtt import v5
from fleet.mqtt.properties import EMPTY, Properties
from fleet.packets import Connect, Publish
from fleet.transport import ClientSession, Link, make_connect

__all__ = [
    "Attachment",
    "Deliver",
    "LinkState",
    "ListSource",
    "Message",
    "MqttSource",
    "Notify",
    "Source",
    "disconnect_text",
    "reason_name",
]


class Deliver(Protocol):
    """Called with (topic, payload, retain, qos, properties) for each message, in order; the properties
    are MQTT 5's, EMPTY (the default) over MQTT 3.1.1."""

    def __call__(
        self, topic: str, payload: bytes, retain: bool, qos: int, properties: Properties = EMPTY, /
    ) -> None: ...


LinkState = Literal["connecting", "connected", "lost", "retrying"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Attachment:
    """What the source's connection to the broker does now; `detail` says why (a reason, an address)."""

    state: LinkState
    detail: str
    retry_in: float | None = None  # seconds until the next attempt, while retrying

    def __post_init__(self) -> None:
        if (self.state == "retrying") != (self.retry_in is not None):
            raise ValueError(f"retry_in is for the retrying state only, got {self.state} and {self.retry_in}")


Notify = Callable[[Attachment], None]
"""Called with each change of the source's connection: connecting, connected, lost, retrying."""


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a `ListSource`."""

    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 0
    properties: Properties = EMPTY


def reason_name(code: int, packet_type: int) -> str:
    """The MQTT 5 name of reason code `code` in a packet of `packet_type` (14: DISCONNECT, 4:
    PUBACK...), as paho-mqtt spells it: 0x8E in a DISCONNECT is 'Session taken over'."""
    from paho.mqtt.reasoncodes import ReasonCode

    try:
        return str(ReasonCode(packet_type, identifier=code).getName())
    except KeyError:
        return "not a reason code of this packet"


def disconnect_text(error: ServerDisconnected) -> str:
    """A broker's DISCONNECT in words: 'DISCONNECT 0x8E Session taken over: <its reason string>'."""
    words = f": {error.reason_string}" if error.reason_string else ""
    return f"DISCONNECT {error.reason_code:#04x} {reason_name(error.reason_code, 14)}{words}"


class Source(Protocol):
    @property
    def description(self) -> str:
        """Where the messages come from, for the header."""

    async def run(self, deliver: Deliver, notify: Notify) -> None:
        """Deliver messages until cancelled."""

    @property
    def version(self) -> int:
        """The MQTT version the source speaks: 4 (3.1.1) or 5, when a publish may carry properties."""

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, properties: bytes = b""
    ) -> None:
        """Publish a message (a device command, or any message), with the encoded MQTT 5
        `properties` (b"": none) when the source speaks MQTT 5; raises FleetError when it cannot."""

    async def resync(self) -> None:
        """Read every retained message under the prefix again; raises FleetError when it cannot."""


class ListSource:
    """Delivers `messages` at once, then nothing; what is published is kept in `published`.

    A resync delivers `retained`, as the broker's retained store would be by then."""

    def __init__(
        self,
        messages: Sequence[Message],
        description: str = "recorded messages",
        *,
        retained: Sequence[Message] = (),
    ) -> None:
        self.messages = messages
        self.retained = retained
        self.published: list[tuple[str, bytes, int, bool]] = []  # topic, payload, QoS, retain
        self.resyncs = 0
        self._description = description
        self._deliver: Deliver | None = None

    @property
    def description(self) -> str:
        return self._description

    async def run(self, deliver: Deliver, notify: Notify) -> None:
        self._deliver = deliver
        notify(Attachment(state="connected", detail=self._description))
        for message in self.messages:
            deliver(message.topic, message.payload, message.retain, message.qos, message.properties)
        await asyncio.Event().wait()

    @property
    def version(self) -> int:
        return 4  # recorded messages: nothing is published as MQTT 5, so `properties` stay b""

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, properties: bytes = b""
    ) -> None:
        self.published.append((topic, payload, qos, retain))

    async def resync(self) -> None:
        self.resyncs += 1
        if self._deliver is not None:
            for message in self.retained:
                self._deliver(message.topic, message.payload, True, message.qos, message.properties)


class MqttSource:
    """Subscribes to `{prefix}/#` and `$SYS/#` at QoS 0, reconnects with backoff, publishes commands;
    over MQTT 3.1.1, or MQTT 5 with `version=5`.

    QoS 0, because a broker delivers a QoS 1 burst through its in-flight window and per-client
    queue (20 + 1,000 on Mosquitto and on ours) and drops the rest: attached to a fleet of 10,000,
    a QoS 1 subscription received 1,020 retained statuses and lost 8,980, while QoS 0 got them all.
    A resync subscribes to `{prefix}/#` again: the broker replaces the subscription and re-sends
    every retained message under it [MQTT-3.8.4-3], so each device's status is read afresh.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        prefix: str = "fleet",
        username: str | None = None,
        password: bytes | None = None,
        ssl: SSLContext | None = None,
        backoff_max: float = 10.0,
        version: int = 4,
    ) -> None:
        if version not in (4, 5):
            raise ValueError(f"version must be 4 (MQTT 3.1.1) or 5, got {version}")
        self.endpoint = endpoint
        self.prefix = prefix
        self.version = version
        client_id = f"fleet-watch-{uuid.uuid4().hex[:12]}"
        self._connect: Connect | v5.Connect
        if version == 5:
            self._connect = v5.Connect(True, 30, client_id, None, username, password)
        else:
            self._connect = make_connect(client_id, keepalive=30, username=username, password=password)
        self._ssl = ssl
        self._backoff_max = backoff_max
        self._link: Link | None = None

    @property
    def description(self) -> str:
        return f"{self.endpoint} (MQTT 5)" if self.version == 5 else str(self.endpoint)

    @property
    def attached(self) -> bool:
        """Connected and subscribed: commands can be published."""
        return self._link is not None and self._link.connected

    @property
    def client_id(self) -> str:
        """The client identifier the source connects with (the same on every reconnect)."""
        return self._connect.client_id

    async def run(self, deliver: Deliver, notify: Notify) -> None:
        def on_message(packet: Publish | v5.Publish) -> None:
            properties = packet.properties if isinstance(packet, v5.Publish) else EMPTY
            deliver(packet.topic, packet.payload, packet.retain, packet.qos, properties)

        attempt = 0
        where = self.description
        # Connecting is the first attempt; later ones are retrying, which keeps its reason on show.
        notify(Attachment(state="connecting", detail=where))
        while True:
            try:
                link, _ = await Link.open(
                    self.endpoint,
                    self._connect,
                    session=ClientSession(),
                    on_message=on_message,
                    ssl=self._ssl,
                )
            except FleetError as exc:
                reason = str(exc)
            else:
                try:
                    # Connected before the SUBACK, so that a watcher counts from before the
                    # retained messages that follow it.
                    notify(Attachment(state="connected", detail=where))
                    filters = (f"{self.prefix}/#", "$SYS/#")
                    codes = await link.subscribe([(f, 0) for f in filters])
                    self._link = link
                    attempt = 0
                    refused = [f for f, code in zip(filters, codes, strict=True) if code == 0x80]
                    if refused:
                        detail = f"{where}; the broker refused {', '.join(refused)}"
                        notify(Attachment(state="connected", detail=detail))
                    closed = await link.closed
                    if isinstance(closed, ServerDisconnected):
                        reason = f"{where}: {disconnect_text(closed)}"
                    else:
                        reason = f"{where}: {closed or 'closed'}"
                except FleetError as exc:
                    reason = f"{where}: {exc}"
                finally:
                    self._link = None
                    await _leave(link)
                notify(Attachment(state="lost", detail=reason))
            delay = min(self._backoff_max, 0.5 * 2 ** min(attempt, 16))
            delay = random.uniform(delay / 2, delay)
            attempt += 1
            notify(Attachment(state="retrying", detail=reason, retry_in=delay))
            await asyncio.sleep(delay)

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, properties: bytes = b""
    ) -> None:
        link = self._link
        if link is None or not link.connected:
            raise TransportError(f"not attached to {self.endpoint}")
        future = link.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if future is None:  # QoS 0: written, nothing to wait for
            return
        try:
            async with asyncio.timeout(10.0):
                await future
        except TimeoutError:
            raise TransportError(f"{self.endpoint} did not acknowledge the command within 10s") from None

    async def resync(self) -> None:
        link = self._link
        if link is None or not link.connected:
            raise TransportError(f"not attached to {self.endpoint}")
        await link.subscribe([(f"{self.prefix}/#", 0)])


async def _leave(link: Link) -> None:
    """Disconnect cleanly, also when cancelled (the watcher is shutting down)."""
    if link.connected:
        try:
            await asyncio.shield(link.disconnect(timeout=2.0))
        except OSError:  # the broker closed the socket first
            link.abort()
        except asyncio.CancelledError:
            link.abort()
            raise
