"""The Hub: one MQTT subscription set fanned out to many consumers, each with a bounded queue.

Every message is decoded and encoded into the envelope once (`bridges.envelope`), kept in a
bounded replay ring for resumption, and offered to each consumer whose filters match. The ring and
each consumer's queue are bounded in events and in bytes (`Event.size`), and a message whose
payload is larger than `max_event_bytes` is not bridged at all: the consumers it was for get a
notice on `$bridge/oversized` instead. A consumer's queue has a stated overflow policy:

- `drop-oldest` (the default): the oldest queued event makes room; the consumer is told how many
  it lost (a `Dropped` item before its next event), and the drop is counted in metrics;
- `disconnect`: the consumer is closed with a reason, and its transport ends the connection.

A slow consumer never stalls the others: offering an event never waits. A consumer whose writer
waits with nothing queued may have a `sink`, set by its transport: the events it gets in one turn of
the loop are then queued, and once the turn's callbacks have run (or `write_interval` after the last
such write, if that is later) the hub writes them through the sink in one write, without waking the
writer. A connection's write costs about as much for one event as for
many, and a task wake more than the write, so a delivery costs about the same whether a turn brings
one event or a hundred. Events the sink refuses (its connection cannot take a write now) stay queued,
and the writer wakes for them.

The hub also keeps the latest retained message of each topic (`RetainedCache`, bounded in bytes),
and a new consumer gets the entries its filters match (`Retained` items) before any live event, as
a new MQTT subscription gets the broker's retained messages. A consumer that resumes from an event
id gets the replay ring instead.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Literal

from bridges.envelope import BRIDGE_TOPIC, OVERSIZED_TOPIC, Event, make_event
from bridges.turns import Turns
from fleet.errors import TopicError
from fleet.mqtt.properties import EMPTY, Properties
from fleet.routing import SubscriptionTree
from fleet.topics import matches, validate_filter

__all__ = [
    "MAX_EVENT_BYTES",
    "MAX_FILTERS",
    "QUEUE_BYTES",
    "RETAINED_BYTES",
    "RETAINED_TOPICS",
    "RING_BYTES",
    "WRITE_BYTES",
    "WRITE_INTERVAL",
    "Consumer",
    "ConsumerClosed",
    "Dropped",
    "Hub",
    "Item",
    "Policy",
    "Reset",
    "Retained",
    "RetainedCache",
    "wanted_by",
]

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


@dataclass(frozen=True, slots=True)
class Retained:
    """A topic's retained message, from the bridge's cache, for a new consumer: the envelope says
    `"retain": true`, and its id is that of the message it copies (older than live events)."""

    event: Event


Item = Event | Dropped | Reset | Retained

# 16 MiB: the statuses of 10,000 devices take about 2.5 MB.
RETAINED_BYTES: Final = 16 * 1024 * 1024
# The byte limits that keep a bridge under about 280 MiB whatever is published (docs/bridge.md
# "Limits" has the arithmetic). A telemetry event holds about 400 bytes: 10,000 of them fit the
# ring, and 1,000 a queue, so the event counts stay the binding limits for ordinary traffic.
RING_BYTES: Final = 8 * 1024 * 1024
QUEUE_BYTES: Final = 512 * 1024
# Filters per consumer, on every transport.
MAX_FILTERS: Final = 64
# A payload larger than this is not bridged; its event would hold up to about three times as much.
MAX_EVENT_BYTES: Final = 64 * 1024
# A consumer whose oldest queued live event is this many seconds older than the newest is behind:
# it loses the old events (and is told), or is cut, instead of falling further behind.
MAX_LAG: Final = 1.0
# The fan-out writes to a waiting consumer at most once in this many seconds: the events of the turns
# in between go out together. A write costs about as much for one event as for many (a system call,
# and the wake-up of the reader), so without it a bridge whose turns each bring a few events spends
# most of its CPU on writes (bench/README.md, "Writes per loop turn").
WRITE_INTERVAL: Final = 0.008
# A write through a consumer's sink stops growing once it holds this many bytes of events: what a
# connection holds in flight stays bounded (docs/bridge.md, "The memory bound").
WRITE_BYTES: Final = 256 * 1024
# The drops of what the intake shed are counted, and told to the consumers, at most this often.
SHED_COUNT_INTERVAL: Final = 0.1
# The device scheme publishes every status retained (birth, will, clean offline).
RETAINED_TOPICS: Final = ("fleet/+/status",)


class RetainedCache:
    """The latest retained message per topic, as far as the bridge can tell, at most `limit` bytes.

    MQTT 3.1.1 sets the retain flag only on what a new subscription receives [MQTT-3.3.1-8, -9]: a
    retained message published while the bridge is subscribed arrives with the flag clear. So:
    - a message with the flag set (sent when the bridge subscribed) is its topic's entry;
    - on a topic that `always` matches (topics whose every message is published retained, like
      the scheme's statuses), every message is its topic's entry, kept with `"retain": true`;
    - a message on any other topic that has an entry removes the entry: it may have replaced the
      retained message or not, and the cache keeps only what it knows.
    An empty payload removes the entry (it deletes the retained message). Entries are counted by the
    bytes of the envelope and payload they hold; past `limit`, the least recently updated go first.
    """

    def __init__(self, limit: int, always: tuple[str, ...], *, prefix: str = "fleet") -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0 bytes, got {limit}")
        self.limit = limit
        self.always = always
        self.prefix = prefix
        self.bytes = 0
        self.evicted = 0
        self._entries: dict[str, Event] = {}  # least recently updated first

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Event]:
        """The entries, least recently updated first: in the order of their ids."""
        return iter(list(self._entries.values()))

    def update(self, event: Event) -> None:
        topic = event.topic
        if not event.retain and not any(matches(f, topic) for f in self.always):
            if topic in self._entries:
                self._remove(topic)
            return
        self._remove(topic)
        if not event.raw:
            return
        if not event.retain:
            event = make_event(
                event.id, topic, event.raw, qos=event.qos, retain=True, received_at=event.received_at,
                prefix=self.prefix, kind=event.kind, properties=event.properties,
            )  # fmt: skip
        size = event.size
        if size > self.limit:
            self.evicted += 1
            return
        self._entries[topic] = event
        self.bytes += size
        while self.bytes > self.limit:
            self._remove(next(iter(self._entries)))
            self.evicted += 1

    def get(self, topic: str) -> Event | None:
        """`topic`'s entry; None when the cache has none."""
        return self._entries.get(topic)

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def forget(self, topic: str) -> None:
        """Remove `topic`'s entry: a message on it went by unseen, so the entry may be stale."""
        self._remove(topic)

    def _remove(self, topic: str) -> None:
        event = self._entries.pop(topic, None)
        if event is not None:
            self.bytes -= event.size


def wanted_by(filters: tuple[str, ...], event: Event) -> bool:
    """Whether a consumer of `filters` gets `event` from the ring: broker news always, an
    oversized notice when the filters match the topic it is about."""
    if event.kind == "bridge":
        return event.topic != OVERSIZED_TOPIC or any(matches(f, event.payload["topic"]) for f in filters)
    return any(matches(f, event.topic) for f in filters)


class ConsumerClosed(Exception):
    """The consumer was closed; `reason` says why (for example, too slow under `disconnect`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Consumer:
    """One subscriber of the hub (a WebSocket, an SSE stream or a gRPC stream)."""

    __slots__ = (
        "_due",
        "_live_from",
        "_pending_drops",
        "_queue",
        "_retained",
        "_waiter",
        "closed",
        "dropped",
        "filters",
        "hub",
        "max_bytes",
        "overflowed",
        "policy",
        "queue_drops",
        "queue_drops_seen",
        "queued_bytes",
        "sink",
        "size",
        "transport",
    )

    def __init__(
        self,
        hub: Hub,
        filters: tuple[str, ...],
        *,
        policy: Policy,
        size: int,
        transport: str,
        max_bytes: int = QUEUE_BYTES,
    ) -> None:
        self.hub = hub
        self.filters = filters
        self.policy = policy
        self.size = size
        self.max_bytes = max_bytes
        self.queued_bytes = 0  # of the events in the queue
        self.transport = transport
        self._queue: deque[Item] = deque()
        # Retained messages for a new consumer, sent before the queue: bounded by the hub's cache,
        # not by `size`, so that a fleet's statuses neither overflow a small queue nor cut it.
        self._retained: deque[Retained] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._pending_drops = 0
        self.dropped = 0
        # Of them, dropped from the queue (not shed by the intake); and at the hub's last look.
        self.queue_drops = 0
        self.queue_drops_seen = 0
        self.closed: str | None = None
        self.overflowed = False  # closed because its queue was full (policy: disconnect)
        # Set by the transport: writes events to the client at once, in one write and without
        # waiting, or returns False (its connection cannot take a write now). Used only while the
        # writer waits in `get`, for the events queued in one turn of the loop.
        self.sink: Callable[[list[Event]], bool] | None = None
        self._due = False  # the hub writes its queue through `sink` at the end of this turn
        # Events from this id on are live; older ones were replayed on request and may be old.
        self._live_from = hub.next_id

    def offer(self, item: Item) -> None:
        """Queue `item` without waiting; apply the overflow policy when the queue is full: at
        `size` items, or past `max_bytes` of events that the hub's replay ring no longer holds.

        Events still in the ring cost the queue nothing but a reference, and queues are in event
        order, so the events the ring has dropped are the oldest queued: those go first when the
        queue holds more than `max_bytes`. So a consumer may take the whole ring (the dashboard
        asks for 10,000 events), and what it alone keeps alive stays within `max_bytes`."""
        if self.closed is not None:
            return
        queue = self._queue
        size = item.size if type(item) is Event else 0
        if queue and type(item) is Event:
            head = queue[0]
            if type(head) is Event and item.received_at - head.received_at > self.hub.max_lag:
                self._behind(item.received_at - self.hub.max_lag)
                if self.closed is not None:
                    return
        if self._due and self.hub.deferred and len(queue) >= self.size:
            self.write_due()  # its write waits for `write_interval`: write now rather than drop
        if len(queue) >= self.size or (self.queued_bytes + size > self.max_bytes and self._head_dropped()):
            if self.policy == "disconnect":
                self._cut(f"{len(queue)} events, {self.queued_bytes} bytes queued")
                return
            while queue and (
                len(queue) >= self.size
                or (self.queued_bytes + size > self.max_bytes and self._head_dropped())
            ):
                self._drop_oldest()
        queue.append(item)
        self.queued_bytes += size
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # the writer is awake: it takes the queue
        if self.sink is not None and type(item) is Event:
            if not self._due:
                self._due = True
                self.hub.write_soon(self)
        else:
            waiter.set_result(None)

    def write_due(self) -> None:
        """The end of a turn in which events were queued for this consumer while its writer waited:
        write them through the sink in one write, or wake the writer for what is left."""
        self._due = False
        waiter, queue, sink = self._waiter, self._queue, self.sink
        if self.closed is not None or waiter is None or waiter.done() or not queue:
            return
        if sink is not None and not self._retained and not self._pending_drops:
            events: list[Event] = []
            size = 0
            for item in queue:
                if type(item) is not Event or size >= WRITE_BYTES:
                    break
                events.append(item)
                size += item.size
            if events and sink(events):
                for _ in events:
                    self._pop()
        if queue or self._pending_drops:
            waiter.set_result(None)

    def _behind(self, cutoff: float) -> None:
        """The oldest queued live event waited more than the hub's `max_lag` behind the newest: drop
        the live events received before `cutoff`, as the overflow policy drops (and tells), or, with
        policy disconnect, cut the consumer. Replayed events (asked for) do not count."""
        queue = self._queue
        if self.policy == "disconnect":
            self._cut(f"over {self.hub.max_lag:g} s behind")
            return
        live_from = self._live_from
        while queue:
            head = queue[0]
            if type(head) is not Event or head.received_at >= cutoff or head.id < live_from:
                break
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        """Drop the oldest queued item, count it, and tell the consumer before its next event."""
        self._pop()
        self._pending_drops += 1
        self.dropped += 1
        self.queue_drops += 1
        self.hub.count_drop(self)

    def _cut(self, why: str) -> None:
        """Close a consumer too slow for its queue (policy disconnect), counting the event it lost."""
        self.hub.count_drop(self)
        self.overflowed = True
        self.close(f"too slow: {why} (policy: disconnect)")

    def lose(self, count: int) -> None:
        """`count` events for this consumer were shed before they were queued: count them as drops,
        and tell the consumer as for a queue overflow."""
        if self.closed is None:
            self._pending_drops += count
            self.dropped += count
            self.hub.count_drop(self, count)
            self._wake()

    def _head_dropped(self) -> bool:
        """Whether the oldest queued item is an event that the replay ring no longer holds."""
        head = self._queue[0] if self._queue else None
        ring = self.hub.ring
        return type(head) is Event and (not ring or head.id < ring[0].id)

    def _pop(self) -> Item:
        item = self._queue.popleft()
        if type(item) is Event:
            self.queued_bytes -= item.size
        return item

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
            if self._retained:
                return self._retained.popleft()
            if self._pending_drops:
                count, self._pending_drops = self._pending_drops, 0
                return Dropped(count, self.dropped)
            if self._queue:
                return self._pop()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def get_batch(self, limit: int) -> list[Item]:
        """The next items in order, at least one and at most `limit`: waits only for the first.

        A batch ends before a `Dropped` item, so that a drop count always precedes the events after it."""
        items = [await self.get()]
        retained, queue = self._retained, self._queue
        while retained and len(items) < limit and self.closed is None:
            items.append(retained.popleft())
        while queue and len(items) < limit and not self._pending_drops and self.closed is None:
            items.append(self._pop())
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
        """Items waiting: retained messages not yet sent, and the queue."""
        return len(self._retained) + len(self._queue)


class Hub:
    """Fans out MQTT messages as envelopes; `ingest` is called by the MQTT source."""

    def __init__(
        self,
        *,
        ring_size: int = 10_000,
        queue_size: int = 1_000,
        prefix: str = "fleet",
        retained_bytes: int = RETAINED_BYTES,
        retained_topics: tuple[str, ...] = RETAINED_TOPICS,
        ring_bytes: int = RING_BYTES,
        queue_bytes: int = QUEUE_BYTES,
        max_event_bytes: int = MAX_EVENT_BYTES,
        max_lag: float = MAX_LAG,
        write_interval: float = WRITE_INTERVAL,
    ) -> None:
        if ring_size < 1 or queue_size < 1:
            raise ValueError("ring_size and queue_size must be at least 1")
        if min(ring_bytes, queue_bytes, max_event_bytes) < 1:
            raise ValueError("ring_bytes, queue_bytes and max_event_bytes must be at least 1")
        self.ring: deque[Event] = deque()
        self.ring_size = ring_size
        self.ring_max_bytes = ring_bytes
        self.ring_bytes = 0  # of the events in the ring
        self.retained = RetainedCache(retained_bytes, retained_topics, prefix=prefix)
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
        self.max_event_bytes = max_event_bytes
        if max_lag <= 0:
            raise ValueError("max_lag must be positive")
        self.max_lag = max_lag  # seconds a live event may wait in a queue behind the newest
        self.oversized = 0  # messages not bridged for their size
        self.shed_total = 0  # messages the intake shed (`shed`)
        self._shed_topics: dict[str, int] = {}  # counted as drops every SHED_COUNT_INTERVAL
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
        self._turn = 0  # counts the loop's turns in which `turn()` was asked, to the next such
        self._turn_counted = False
        self._due: list[Consumer] = []  # consumers to write through their sinks at the turn's end
        self.write_interval = write_interval
        self._written_at = -math.inf  # the loop's time at the last write of due consumers
        self.deferred = False  # the next write of due consumers waits for `write_interval`

    @property
    def next_id(self) -> int:
        """The id the next event will get."""
        return self._next_id

    def turn(self) -> int:
        """A number that stays the same for the rest of this turn of the event loop."""
        if not self._turn_counted:
            self._turn_counted = True
            asyncio.get_running_loop().call_soon(self._next_turn)
        return self._turn

    def _next_turn(self) -> None:
        self._turn += 1
        self._turn_counted = False

    def write_soon(self, consumer: Consumer) -> None:
        """Write the events queued for `consumer` through its sink (`Consumer.write_due`) once this
        turn's callbacks have run, or `write_interval` seconds after the last such write if that is
        later: one write per consumer for the events of one turn, or of the turns in between."""
        if not self._due:
            loop = asyncio.get_running_loop()
            at = self._written_at + self.write_interval
            self.deferred = at > loop.time()
            if self.deferred:
                loop.call_at(at, self._write_due)
            else:
                loop.call_soon(self._write_due)
        self._due.append(consumer)

    def _write_due(self) -> None:
        self._written_at = asyncio.get_running_loop().time()
        self.deferred = False
        due, self._due = self._due, []
        for consumer in due:
            consumer.write_due()

    @staticmethod
    def validate_filters(filters: Iterable[str]) -> tuple[str, ...]:
        """The filters, each validated; raises TopicError naming the rule a bad one breaks."""
        checked = tuple(dict.fromkeys(filters))
        if not checked:
            raise TopicError("at least one topic filter is needed, for example 'fleet/#'")
        if len(checked) > MAX_FILTERS:
            raise TopicError(f"at most {MAX_FILTERS} filters, got {len(checked)}")
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
        retained_for: Iterable[str] | None = None,
    ) -> Consumer:
        """A new consumer of `filters`: first the retained messages they match (or those that
        `retained_for`, a subset, matches) or, with `after_id`, the ring's events after it."""
        consumer = Consumer(
            self,
            self.validate_filters(filters),
            policy=policy,
            size=size or self.queue_size,
            transport=transport,
            max_bytes=self.queue_bytes,
        )
        if after_id is not None:
            self._replay(consumer, after_id)
        else:
            wanted = consumer.filters if retained_for is None else tuple(retained_for)
            consumer._retained.extend(
                Retained(event) for event in self.retained if any(matches(f, event.topic) for f in wanted)
            )
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
        """Offer the ring's events after `after_id`; a resume point the ring cannot continue from
        (older than it, or newer than any event this bridge issued) gets a Reset, then the whole ring."""
        ring = self.ring
        last = self._next_id - 1
        if after_id == last:
            return
        oldest = ring[0].id if ring else self._next_id
        if after_id < oldest - 1 or after_id > last:
            consumer.offer(Reset(after_id, oldest))
            start = 0
        else:
            start = after_id - oldest + 1
        for index in range(start, len(ring)):
            event = ring[index]
            if wanted_by(consumer.filters, event):
                consumer.offer(event)

    def remove(self, consumer: Consumer) -> None:
        if consumer in self.consumers:
            self.consumers.discard(consumer)
            for topic_filter in consumer.filters:
                self._routes.remove(topic_filter, consumer)

    def ingest(
        self, topic: str, payload: bytes, *, qos: int, retain: bool, properties: Properties = EMPTY
    ) -> Event:
        """Turn one MQTT message, with its MQTT 5 `properties`, into an event and offer it to every
        matching consumer; one larger than `max_event_bytes` becomes a notice of its topic and size
        instead."""
        self.events_in += 1
        if len(payload) > self.max_event_bytes:
            return self._oversized(topic, len(payload))
        event = make_event(
            self._next_id, topic, payload, qos=qos, retain=retain, received_at=time.time(),
            prefix=self.prefix, properties=properties,
        )  # fmt: skip
        self._next_id += 1
        self._keep(event)
        self.retained.update(event)
        for consumer in self._routes.match(topic):
            consumer.offer(event)
            self.deliveries[consumer.transport] = self.deliveries.get(consumer.transport, 0) + 1
        return event

    def shed(self, topic: str) -> None:
        """The intake has no CPU left for this message: count it as received and shed, and as a drop
        for every consumer it was for, which is told as for a queue overflow. It gets no id and no
        place in the ring, and its topic's retained entry, which it may have replaced, is forgotten.

        The drops are counted, and told, once per topic and consumer every `SHED_COUNT_INTERVAL`
        seconds, so that shedding a message costs far less than fanning it out: a shedding intake
        sheds in every turn, and a notice each turn woke every consumer's writer each turn."""
        self.events_in += 1
        self.shed_total += 1
        shed = self._shed_topics
        if not shed:
            asyncio.get_running_loop().call_later(SHED_COUNT_INTERVAL, self._count_shed)
        shed[topic] = shed.get(topic, 0) + 1

    def _count_shed(self) -> None:
        shed, self._shed_topics = self._shed_topics, {}
        for topic, count in shed.items():
            self.retained.forget(topic)
            for consumer in self._routes.match(topic):
                consumer.lose(count)

    def overflowing(self) -> bool:
        """Whether at least half of the consumers do not keep up with what is fanned out: each has a
        queue at least half full, or has dropped events from its queue since the last call (a writer
        that takes its whole queue each turn may leave it empty at any one moment). Events the intake
        shed do not count: they were never offered."""
        consumers = self.consumers
        behind = 0
        for consumer in consumers:
            drops = consumer.queue_drops
            if 2 * len(consumer._queue) >= consumer.size or drops != consumer.queue_drops_seen:
                behind += 1
            consumer.queue_drops_seen = drops
        return bool(consumers) and 2 * behind >= len(consumers)

    def _oversized(self, topic: str, size: int) -> Event:
        self.oversized += 1
        self.retained.forget(topic)
        notice = json.dumps({"topic": topic, "size": size, "max_event_bytes": self.max_event_bytes})
        event = make_event(
            self._next_id, OVERSIZED_TOPIC, notice.encode(), qos=0, retain=False, received_at=time.time(),
            prefix=self.prefix, kind="bridge",
        )  # fmt: skip
        self._next_id += 1
        self._keep(event)
        for consumer in self._routes.match(topic):
            consumer.offer(event)
        return event

    def _keep(self, event: Event) -> None:
        """Append `event` to the replay ring, evicting the oldest beyond its count or bytes."""
        ring = self.ring
        ring.append(event)
        self.ring_bytes += event.size
        while len(ring) > self.ring_size or (self.ring_bytes > self.ring_max_bytes and len(ring) > 1):
            self.ring_bytes -= ring.popleft().size

    def broker_status(self, connected: bool, reason: str) -> None:
        """Tell every consumer, whatever its filters, that the bridge's broker connection changed."""
        self.broker_connected = connected
        if not connected:
            # Retained messages may change unseen meanwhile; the broker sends them all again when
            # the bridge subscribes after reconnecting.
            self.retained.clear()
        payload = json.dumps({"connected": connected, "reason": reason})
        event = make_event(
            self._next_id, BRIDGE_TOPIC, payload.encode(), qos=0, retain=False, received_at=time.time(),
            prefix=self.prefix, kind="bridge",
        )  # fmt: skip
        self._next_id += 1
        self._status = event
        self._keep(event)
        for consumer in list(self.consumers):
            consumer.offer(event)

    def count_drop(self, consumer: Consumer, count: int = 1) -> None:
        self.drops[consumer.transport] = self.drops.get(consumer.transport, 0) + count

    def count_send_timeout(self, transport: str) -> None:
        """A consumer of `transport` was cut for not reading: a send to it, or on WebSocket and SSE the
        bytes written for it, waited longer than the send timeout."""
        self.send_timeouts[transport] = self.send_timeouts.get(transport, 0) + 1

    def close(self, reason: str) -> None:
        for consumer in list(self.consumers):
            consumer.close(reason)
