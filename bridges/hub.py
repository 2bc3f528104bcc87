"""The Hub: one MQTT subscription set fanned out to many consumers, each with a bounded queue.

Every message is decoded and encoded into the envelope once (`bridges.envelope`), kept in a
bounded replay ring for resumption, and offered to each consumer whose filters match. A consumer's
queue has a fixed size and a stated overflow policy:

- `drop-oldest` (the default): the oldest queued event makes room; the consumer is told how many
  it lost (a `Dropped` item before its next event), and the drop is counted in metrics;
- `disconnect`: the consumer is closed with a reason, and its transport ends the connection.

A slow consumer never stalls the others: offering an event never waits.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from bridges.envelope import BRIDGE_TOPIC, Event, make_event
from bridges.turns import Turns
from fleet.errors import TopicError
from fleet.routing import SubscriptionTree
from fleet.topics import matches, validate_filter

__all__ = ["Consumer", "ConsumerClosed", "Dropped", "Hub", "Item", "Policy", "Reset"]

Policy = Literal["drop-oldest", "disconnect"]


@dataclass(frozen=True, slots=True)
class Dropped:
    """`count` events were dropped for this consumer since its last item; `total` since it joined."""

    count: int
    total: int


@dataclass(frozen=True, slots=True)
class Reset:
    """A resume point older than the replay ring: events in between are gone."""

    after_id: int
    oldest_id: int


Item = Event | Dropped | Reset


class ConsumerClosed(Exception):
    """The consumer was closed; `reason` says why (for example, too slow under `disconnect`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Consumer:
    """One subscriber of the hub (a WebSocket, an SSE stream or a gRPC stream)."""

    __slots__ = (
        "_pending_drops",
        "_queue",
        "_waiter",
        "closed",
        "dropped",
        "filters",
        "hub",
        "policy",
        "size",
        "transport",
    )

    def __init__(
        self, hub: Hub, filters: tuple[str, ...], *, policy: Policy, size: int, transport: str
    ) -> None:
        self.hub = hub
        self.filters = filters
        self.policy = policy
        self.size = size
        self.transport = transport
        self._queue: deque[Item] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._pending_drops = 0
        self.dropped = 0
        self.closed: str | None = None

    def offer(self, item: Item) -> None:
        """Queue `item` without waiting; apply the overflow policy when the queue is full."""
        if self.closed is not None:
            return
        queue = self._queue
        if len(queue) >= self.size:
            if self.policy == "disconnect":
                self.hub.count_drop(self)
                self.close(f"too slow: {self.size} events queued (policy: disconnect)")
                return
            queue.popleft()
            self._pending_drops += 1
            self.dropped += 1
            self.hub.count_drop(self)
        queue.append(item)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
            self.hub.remove(self)
            self._wake()

    async def get(self) -> Item:
        """The next item; raises ConsumerClosed once the consumer is closed."""
        while True:
            if self.closed is not None:
                raise ConsumerClosed(self.closed)
            if self._pending_drops:
                count, self._pending_drops = self._pending_drops, 0
                return Dropped(count, self.dropped)
            if self._queue:
                return self._queue.popleft()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def get_batch(self, limit: int) -> list[Item]:
        """The next items in order, at least one and at most `limit`: waits only for the first.

        A batch ends before a `Dropped` item, so that a drop count always precedes the events after it."""
        items = [await self.get()]
        queue = self._queue
        while queue and len(items) < limit and not self._pending_drops and self.closed is None:
            items.append(queue.popleft())
        return items

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Item:
        try:
            return await self.get()
        except ConsumerClosed:
            raise StopAsyncIteration from None

    @property
    def queued(self) -> int:
        return len(self._queue)


class Hub:
    """Fans out MQTT messages as envelopes; `ingest` is called by the MQTT source."""

    def __init__(self, *, ring_size: int = 10_000, queue_size: int = 1_000, prefix: str = "fleet") -> None:
        if ring_size < 1 or queue_size < 1:
            raise ValueError("ring_size and queue_size must be at least 1")
        self.ring: deque[Event] = deque(maxlen=ring_size)
        self.queue_size = queue_size
        self.prefix = prefix
        self.consumers: set[Consumer] = set()
        self._routes: SubscriptionTree[Consumer] = SubscriptionTree()
        # Ids start at the microseconds since the epoch, so that a resume point from before a
        # restart of the bridge is older than anything in the new ring (and gets a reset).
        self._next_id = time.time_ns() // 1000
        self.broker_connected = False
        self._status: Event | None = None
        self.events_in = 0
        self.deliveries: dict[str, int] = {}
        self.drops: dict[str, int] = {}
        self.send_timeouts: dict[str, int] = {}
        self.turns = Turns()  # the consumers' writers take turns under a backlog

    @staticmethod
    def validate_filters(filters: Iterable[str]) -> tuple[str, ...]:
        """The filters, each validated; raises TopicError naming the rule a bad one breaks."""
        checked = tuple(filters)
        if not checked:
            raise TopicError("at least one topic filter is needed, for example 'fleet/#'")
        for topic_filter in checked:
            validate_filter(topic_filter)
        return checked

    def add(
        self,
        filters: Iterable[str],
        *,
        transport: str,
        policy: Policy = "drop-oldest",
        size: int | None = None,
        after_id: int | None = None,
    ) -> Consumer:
        """A new consumer of `filters`; with `after_id`, first replay the ring's events after it."""
        consumer = Consumer(
            self,
            self.validate_filters(filters),
            policy=policy,
            size=size or self.queue_size,
            transport=transport,
        )
        if after_id is not None:
            self._replay(consumer, after_id)
        status = self._status
        if not self.broker_connected and status is not None and (after_id is None or after_id >= status.id):
            consumer.offer(status)  # joining while the broker is down: say so at once
        if consumer.closed is not None:
            return consumer  # its replay already overflowed a disconnect-policy queue
        for topic_filter in consumer.filters:
            self._routes.add(topic_filter, consumer, 0)
        self.consumers.add(consumer)
        return consumer

    def _replay(self, consumer: Consumer, after_id: int) -> None:
        ring = self.ring
        if not ring or after_id >= ring[-1].id:
            return
        oldest = ring[0].id
        if after_id < oldest - 1:
            consumer.offer(Reset(after_id, oldest))
            start = 0
        else:
            start = after_id - oldest + 1
        for index in range(start, len(ring)):
            event = ring[index]
            if event.kind == "bridge" or any(matches(f, event.topic) for f in consumer.filters):
                consumer.offer(event)

    def remove(self, consumer: Consumer) -> None:
        if consumer in self.consumers:
            self.consumers.discard(consumer)
            for topic_filter in consumer.filters:
                self._routes.remove(topic_filter, consumer)

    def ingest(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> Event:
        """Turn one MQTT message into an event and offer it to every matching consumer."""
        event = make_event(
            self._next_id, topic, payload, qos=qos, retain=retain, received_at=time.time(), prefix=self.prefix
        )
        self._next_id += 1
        self.events_in += 1
        self.ring.append(event)
        for consumer in self._routes.match(topic):
            consumer.offer(event)
            self.deliveries[consumer.transport] = self.deliveries.get(consumer.transport, 0) + 1
        return event

    def broker_status(self, connected: bool, reason: str) -> None:
        """Tell every consumer, whatever its filters, that the bridge's broker connection changed."""
        self.broker_connected = connected
        payload = json.dumps({"connected": connected, "reason": reason})
        event = make_event(
            self._next_id, BRIDGE_TOPIC, payload.encode(), qos=0, retain=False, received_at=time.time(),
            prefix=self.prefix, kind="bridge",
        )  # fmt: skip
        self._next_id += 1
        self._status = event
        self.ring.append(event)
        for consumer in list(self.consumers):
            consumer.offer(event)

    def count_drop(self, consumer: Consumer) -> None:
        self.drops[consumer.transport] = self.drops.get(consumer.transport, 0) + 1

    def count_send_timeout(self, transport: str) -> None:
        """A consumer of `transport` was cut because a send to it waited longer than the send timeout."""
        self.send_timeouts[transport] = self.send_timeouts.get(transport, 0) + 1

    def close(self, reason: str) -> None:
        for consumer in list(self.consumers):
            consumer.close(reason)
