"""Client sessions: subscriptions, the in-flight window, the bounded offline queue, and redelivery.

A session outlives its network connection when the client asked for a persistent session
(CleanSession = 0). Everything here is synchronous; the connection calls in with packets and the
session writes through the connection's `send`.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from broker.message import Message
from broker.stats import Stats
from fleet.packets import encode_publish, pubrel

__all__ = ["Limits", "Outlet", "Session"]

log = logging.getLogger("broker")


@dataclass(frozen=True, slots=True)
class Limits:
    max_inflight: int
    max_queued: int


class Outlet(Protocol):
    """What a session needs of the network connection it is attached to."""

    @property
    def paused(self) -> bool: ...

    def congested(self) -> bool: ...

    def send(self, data: bytes) -> None: ...


class _Inflight:
    __slots__ = ("message", "qos", "released", "retain")

    def __init__(self, message: Message, qos: int, retain: bool) -> None:
        self.message = message
        self.qos = qos
        self.retain = retain
        self.released = False


class Session:
    """One client's session state [MQTT-3.1.2-4]."""

    __slots__ = (
        "_next_packet_id",
        "awaiting_release",
        "clean",
        "client_id",
        "dropped",
        "inflight",
        "limits",
        "outlet",
        "queue",
        "stats",
        "subscriptions",
        "username",
    )

    def __init__(self, client_id: str, *, clean: bool, limits: Limits, stats: Stats) -> None:
        self.client_id = client_id
        self.clean = clean
        self.limits = limits
        self.stats = stats
        self.username: str | None = None
        self.outlet: Outlet | None = None
        self.subscriptions: dict[str, int] = {}
        self.inflight: dict[int, _Inflight] = {}
        self.queue: deque[tuple[Message, int, bool]] = deque()
        # QoS 2 packet ids received and not yet released, so a duplicate is not routed twice.
        self.awaiting_release: set[int] = set()
        self.dropped = 0
        self._next_packet_id = 0

    def deliver(self, message: Message, qos: int, *, retain: bool = False) -> None:
        """Send `message` at `qos` now, or queue it, or drop it and count the drop."""
        outlet = self.outlet
        if qos == 0:
            # QoS 0 is never queued for an offline session, and is dropped for a congested one.
            if outlet is None:
                return
            if outlet.congested():
                self._drop(message, "the client is not reading")
                return
            outlet.send(encode_publish(message.topic_bytes, message.payload, 0, retain=retain))
            self.stats.messages_sent += 1
            return
        if (
            outlet is not None
            and not outlet.paused
            and not self.queue
            and len(self.inflight) < self.limits.max_inflight
        ):
            self._send_new(outlet, message, qos, retain)
        elif len(self.queue) < self.limits.max_queued:
            self.queue.append((message, qos, retain))
        else:
            self._drop(message, f"its queue holds {self.limits.max_queued} messages")

    def _drop(self, message: Message, why: str) -> None:
        self.dropped += 1
        self.stats.messages_dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning(
                "dropped a message on %s for client %r (%d dropped so far): %s",
                message.topic,
                self.client_id,
                self.dropped,
                why,
            )

    def _send_new(self, outlet: Outlet, message: Message, qos: int, retain: bool) -> None:
        packet_id = self._allocate_packet_id()
        self.inflight[packet_id] = _Inflight(message, qos, retain)
        outlet.send(
            encode_publish(message.topic_bytes, message.payload, qos, retain=retain, packet_id=packet_id)
        )
        self.stats.messages_sent += 1

    def _allocate_packet_id(self) -> int:
        packet_id = self._next_packet_id
        while True:
            packet_id = packet_id % 65535 + 1
            if packet_id not in self.inflight:
                self._next_packet_id = packet_id
                return packet_id

    def pump(self) -> None:
        """Move queued messages into the in-flight window while the connection can take them."""
        outlet = self.outlet
        if outlet is None:
            return
        queue = self.queue
        while queue and not outlet.paused and len(self.inflight) < self.limits.max_inflight:
            message, qos, retain = queue.popleft()
            self._send_new(outlet, message, qos, retain)

    def resume(self) -> None:
        """After a reconnect, re-send unacknowledged PUBLISH and PUBREL packets [MQTT-4.4.0-1]."""
        outlet = self.outlet
        if outlet is None:
            return
        for packet_id, entry in self.inflight.items():
            if entry.released:
                outlet.send(pubrel(packet_id))
            else:
                outlet.send(
                    encode_publish(
                        entry.message.topic_bytes,
                        entry.message.payload,
                        entry.qos,
                        retain=entry.retain,
                        dup=True,
                        packet_id=packet_id,
                    )
                )
        self.pump()

    def acknowledge(self, packet_id: int) -> None:
        """PUBACK (QoS 1) or PUBCOMP (QoS 2): the message is delivered; the window moves on."""
        if self.inflight.pop(packet_id, None) is not None:
            self.pump()

    def received(self, packet_id: int) -> bool:
        """PUBREC: mark a QoS 2 message released; return whether the PUBREL must be sent."""
        entry = self.inflight.get(packet_id)
        if entry is None or entry.qos != 2:
            return False
        entry.released = True
        return True
