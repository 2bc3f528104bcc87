"""Client sessions: subscriptions, the in-flight window, the bounded offline queue, and redelivery.

A session outlives its network connection while its Session Expiry Interval runs: forever for an
MQTT 3.1.1 persistent session (CleanSession = 0) and for 0xFFFFFFFF, not at all for 0. Everything
here is synchronous; the connection calls in with packets and the session writes through the
connection's `send` and `send_publish`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from broker.logs import clip
from broker.message import Message
from broker.stats import Stats
from fleet.packets import pubrel
from fleet.topics import matches

if TYPE_CHECKING:
    from broker.shared import SharedGroup
    from broker.store import Store

__all__ = ["NEVER", "Entry", "Limits", "Outlet", "Session", "Subscription"]

log = logging.getLogger("broker")

# Session Expiry Interval 0xFFFFFFFF: the session does not expire [MQTT 5.0 3.1.2.11.2].
NEVER = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Limits:
    """A session's bounds; its in-flight window is its connection's (`Outlet.window`)."""

    max_queued: int


@dataclass(frozen=True, slots=True)
class Subscription:
    """One subscription's options [MQTT 5.0 3.8.3.1]; 3.1.1 subscriptions have only a QoS."""

    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    identifier: int | None = None

    @property
    def plain(self) -> bool:
        """Whether delivery needs only the QoS (no option changes what is sent)."""
        return not (self.no_local or self.retain_as_published or self.identifier)


class Outlet(Protocol):
    """What a session needs of the network connection it is attached to."""

    @property
    def paused(self) -> bool: ...

    @property
    def window(self) -> int:
        """The most QoS 1/2 deliveries in flight to the client: the smaller of the broker's
        `max_inflight` and the client's Receive Maximum [MQTT-3.3.4-9]."""
        ...

    def congested(self) -> bool: ...

    def send(self, data: bytes) -> None: ...

    def send_publish(
        self, message: Message, qos: int, retain: bool, packet_id: int, dup: bool, sub_ids: tuple[int, ...]
    ) -> bool: ...


class Entry:
    """A QoS 1/2 message queued for, or in flight to, this session."""

    __slots__ = ("group", "key", "message", "qos", "released", "retain", "sub_ids")

    def __init__(
        self, message: Message, qos: int, retain: bool, sub_ids: tuple[int, ...], group: SharedGroup | None
    ) -> None:
        self.message = message
        self.qos = qos
        self.retain = retain
        self.sub_ids = sub_ids
        self.group = group
        self.released = False
        # Its key in the persistent store; 0 while it is not stored.
        self.key = 0


class Session:
    """One client's session state [MQTT-3.1.2-4]."""

    __slots__ = (
        "_next_packet_id",
        "awaiting_release",
        "client_id",
        "dropped",
        "expiry",
        "expiry_timer",
        "inflight",
        "limits",
        "options",
        "outlet",
        "pending_will",
        "queue",
        "stats",
        "store",
        "subscriptions",
        "username",
        "will_timer",
    )

    def __init__(self, client_id: str, *, expiry: int, limits: Limits, stats: Stats) -> None:
        self.client_id = client_id
        self.expiry = expiry
        self.limits = limits
        self.stats = stats
        self.username: str | None = None
        self.outlet: Outlet | None = None
        self.subscriptions: dict[str, Subscription] = {}
        # How many of `subscriptions` are not plain: routing looks at the options only then.
        self.options = 0
        self.inflight: dict[int, Entry] = {}
        self.queue: deque[Entry] = deque()
        # QoS 2 packet ids received and not yet released, so a duplicate is not routed twice.
        self.awaiting_release: set[int] = set()
        self.dropped = 0
        self._next_packet_id = 0
        self.expiry_timer: asyncio.TimerHandle | None = None
        self.will_timer: asyncio.TimerHandle | None = None
        # The will of the last connection, while its Will Delay Interval runs [MQTT-3.1.3-9].
        self.pending_will: Message | None = None
        # The persistent store, for a session that outlives its connection when persistence is on.
        self.store: Store | None = None

    def subscribe(self, topic_filter: str, subscription: Subscription) -> bool:
        """Add or replace a subscription; return whether one existed for this filter."""
        previous = self.subscriptions.get(topic_filter)
        if previous is not None and not previous.plain:
            self.options -= 1
        if not subscription.plain:
            self.options += 1
        self.subscriptions[topic_filter] = subscription
        return previous is not None

    def unsubscribe(self, topic_filter: str) -> bool:
        previous = self.subscriptions.pop(topic_filter, None)
        if previous is not None and not previous.plain:
            self.options -= 1
        return previous is not None

    def route_options(self, message: Message, qos: int) -> tuple[int, bool, tuple[int, ...]] | None:
        """(QoS, retain flag, subscription identifiers) of one copy for all of this session's matching
        non-shared subscriptions [MQTT 5.0 3.3.4], or None when No Local excludes them all."""
        best = -1
        retain = False
        ids: list[int] = []
        own = message.sender == self.client_id
        for topic_filter, sub in self.subscriptions.items():
            if topic_filter.startswith("$share/") or not matches(topic_filter, message.topic):
                continue
            if sub.no_local and own:  # [MQTT-3.8.3-3]
                continue
            best = max(best, sub.qos)
            retain = retain or (sub.retain_as_published and message.retain)  # [MQTT-3.3.1-12, -13]
            if sub.identifier:
                ids.append(sub.identifier)
        if best < 0:
            return None
        return min(best, qos), retain, tuple(ids)

    def deliver(
        self,
        message: Message,
        qos: int,
        *,
        retain: bool = False,
        sub_ids: tuple[int, ...] = (),
        group: SharedGroup | None = None,
    ) -> None:
        """Send `message` at `qos` now, or queue it, or drop it and count the drop."""
        outlet = self.outlet
        if qos == 0:
            # QoS 0 is never queued for an offline session, and is dropped for a congested one.
            if outlet is None:
                return
            if outlet.congested():
                self._drop(message, "the client is not reading")
                return
            if outlet.send_publish(message, 0, retain, 0, False, sub_ids):
                self.stats.messages_sent += 1
            return
        entry = Entry(message, qos, retain, sub_ids, group)
        store = self.store
        if outlet is not None and not outlet.paused and not self.queue and len(self.inflight) < outlet.window:
            # `_send_new` written out: this is every QoS 1/2 delivery's path.
            packet_id = self._allocate_packet_id()
            if store is not None:
                store.entry_added(self.client_id, entry)
            if outlet.send_publish(message, qos, retain, packet_id, False, sub_ids):
                self.inflight[packet_id] = entry
                self.stats.messages_sent += 1
                if store is not None:
                    store.entry_changed(entry, packet_id)
            elif store is not None:
                store.entry_done(entry)
        elif len(self.queue) < self.limits.max_queued:
            self.queue.append(entry)
            if store is not None:
                store.entry_added(self.client_id, entry)
        else:
            self._drop(message, f"its queue holds {self.limits.max_queued} messages")

    def _drop(self, message: Message, why: str) -> None:
        self.dropped += 1
        self.stats.messages_dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning(
                "dropped a message on %r for client %r (%d dropped so far): %s",
                clip(message.topic),
                clip(self.client_id),
                self.dropped,
                why,
            )

    def _send_new(self, outlet: Outlet, entry: Entry) -> None:
        message = entry.message
        packet_id = self._allocate_packet_id()
        if outlet.send_publish(message, entry.qos, entry.retain, packet_id, False, entry.sub_ids):
            self.inflight[packet_id] = entry
            self.stats.messages_sent += 1
            if self.store is not None:
                self.store.entry_changed(entry, packet_id)
        elif self.store is not None:
            self.store.entry_done(entry)

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
        queue = self.queue
        if outlet is None or not queue:
            return
        window = outlet.window
        while queue and not outlet.paused and len(self.inflight) < window:
            self._send_new(outlet, queue.popleft())

    def resume(self) -> None:
        """After a reconnect, re-send unacknowledged PUBLISH and PUBREL packets [MQTT-4.4.0-1]."""
        outlet = self.outlet
        if outlet is None:
            return
        for packet_id, entry in list(self.inflight.items()):
            if entry.released:
                outlet.send(pubrel(packet_id))
            elif not outlet.send_publish(
                entry.message, entry.qos, entry.retain, packet_id, True, entry.sub_ids
            ):
                del self.inflight[packet_id]
                if self.store is not None:
                    self.store.entry_done(entry)
        self.pump()

    def acknowledge(self, packet_id: int) -> None:
        """PUBACK (QoS 1) or PUBCOMP (QoS 2): the message is delivered; the window moves on."""
        entry = self.inflight.pop(packet_id, None)
        if entry is None:
            return
        if self.store is not None:
            self.store.entry_done(entry)
        if self.queue:
            self.pump()

    def received(self, packet_id: int) -> bool:
        """PUBREC: mark a QoS 2 message released; return whether the PUBREL must be sent."""
        entry = self.inflight.get(packet_id)
        if entry is None or entry.qos != 2:
            return False
        entry.released = True
        if self.store is not None:
            self.store.entry_changed(entry, packet_id)
        return True

    def hold(self, packet_id: int) -> None:
        """A QoS 2 PUBLISH from the client was routed; its PUBREL is awaited."""
        self.awaiting_release.add(packet_id)
        if self.store is not None:
            self.store.incoming(self.client_id, packet_id, held=True)

    def release(self, packet_id: int) -> bool:
        """PUBREL from the client: whether `packet_id` was awaiting it."""
        if packet_id not in self.awaiting_release:
            return False
        self.awaiting_release.discard(packet_id)
        if self.store is not None:
            self.store.incoming(self.client_id, packet_id, held=False)
        return True

    def cancel_timers(self) -> None:
        for timer in (self.expiry_timer, self.will_timer):
            if timer is not None:
                timer.cancel()
        self.expiry_timer = None
        self.will_timer = None

    def take_unfinished_shared(self) -> list[Entry]:
        """The queued and unreleased in-flight messages this session got through shared subscriptions."""
        taken = [e for e in self.inflight.values() if e.group is not None and not e.released]
        taken += [e for e in self.queue if e.group is not None]
        return taken
