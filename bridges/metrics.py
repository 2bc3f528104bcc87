"""Prometheus metrics of one bridge process, read from the Hub's counters at scrape time.

The hub counts as it works (plain ints, no locks, no per-event metric calls); this collector turns
those counts into metric families only when `/metrics` is scraped. Labels are low-cardinality on
purpose: `transport` (`websocket`, `sse`, `grpc`) and never a device or topic, which would grow
without bound with the fleet.

Each app gets its own `CollectorRegistry` (`registry_for`), so that many apps can live in one
process (tests) without clashing in the global registry.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from bridges.hub import Hub

__all__ = ["PREFIX", "HubCollector", "registry_for"]

PREFIX = "fleet_bridge"


class HubCollector:
    """Collects the counters and gauges of one Hub."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def describe(self) -> Iterable[Metric]:
        """The families this collector yields, without samples (lets the registry detect clashes)."""
        return list(self._families(sampled=False))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(sampled=True))

    def _families(self, *, sampled: bool) -> Iterator[Metric]:
        hub = self.hub
        events_in = CounterMetricFamily(
            f"{PREFIX}_events_in", "MQTT messages the bridge received and turned into envelopes."
        )
        deliveries = CounterMetricFamily(
            f"{PREFIX}_deliveries",
            "Events offered to consumer queues (one per matching consumer), by transport.",
            labels=["transport"],
        )
        drops = CounterMetricFamily(
            f"{PREFIX}_drops",
            "Events dropped because a consumer's queue was full (drop-oldest), or consumers cut for "
            "it (disconnect), by transport.",
            labels=["transport"],
        )
        send_timeouts = CounterMetricFamily(
            f"{PREFIX}_send_timeouts",
            "Consumers cut for not reading within the send timeout, by transport.",
            labels=["transport"],
        )
        consumers = GaugeMetricFamily(
            f"{PREFIX}_consumers", "Connected consumers, by transport.", labels=["transport"]
        )
        queued = GaugeMetricFamily(
            f"{PREFIX}_queued_events",
            "Events waiting in consumer queues, by transport.",
            labels=["transport"],
        )
        connected = GaugeMetricFamily(
            f"{PREFIX}_broker_connected", "1 while the bridge is connected to its MQTT broker, else 0."
        )
        ring = GaugeMetricFamily(f"{PREFIX}_ring_events", "Events held in the replay ring for resumption.")
        ring_capacity = GaugeMetricFamily(f"{PREFIX}_ring_capacity", "The replay ring's capacity in events.")
        ring_bytes = GaugeMetricFamily(f"{PREFIX}_ring_bytes", "Bytes the replay ring's events hold.")
        ring_capacity_bytes = GaugeMetricFamily(
            f"{PREFIX}_ring_capacity_bytes", "The replay ring's capacity in bytes (ring_bytes)."
        )
        queued_bytes = GaugeMetricFamily(
            f"{PREFIX}_queued_bytes",
            "Bytes the events waiting in consumer queues hold (shared with the ring), by transport.",
            labels=["transport"],
        )
        oversized = CounterMetricFamily(
            f"{PREFIX}_oversized",
            "MQTT messages not bridged because their payload was larger than max_event_bytes.",
        )
        shed = CounterMetricFamily(
            f"{PREFIX}_shed",
            "MQTT messages the intake received but shed, with no CPU left to fan them out (in events_in "
            "too, and a drop for each consumer they were for).",
        )
        retained = GaugeMetricFamily(
            f"{PREFIX}_retained_messages", "Retained messages kept for new consumers, one per topic."
        )
        retained_bytes = GaugeMetricFamily(
            f"{PREFIX}_retained_bytes", "Bytes the retained messages hold (bounded by retained_bytes)."
        )
        retained_evicted = CounterMetricFamily(
            f"{PREFIX}_retained_evicted",
            "Retained messages dropped from the cache, or never kept, to stay within retained_bytes.",
        )
        if sampled:
            events_in.add_metric([], hub.events_in)
            oversized.add_metric([], hub.oversized)
            shed.add_metric([], hub.shed_total)
            retained.add_metric([], len(hub.retained))
            retained_bytes.add_metric([], hub.retained.bytes)
            retained_evicted.add_metric([], hub.retained.evicted)
            for transport, count in sorted(hub.deliveries.items()):
                deliveries.add_metric([transport], count)
            for transport, count in sorted(hub.drops.items()):
                drops.add_metric([transport], count)
            for transport, count in sorted(hub.send_timeouts.items()):
                send_timeouts.add_metric([transport], count)
            by_transport: Counter[str] = Counter()
            queued_by_transport: Counter[str] = Counter()
            bytes_by_transport: Counter[str] = Counter()
            for consumer in list(hub.consumers):
                by_transport[consumer.transport] += 1
                queued_by_transport[consumer.transport] += consumer.queued
                bytes_by_transport[consumer.transport] += consumer.queued_bytes
            for transport, count in sorted(by_transport.items()):
                consumers.add_metric([transport], count)
                queued.add_metric([transport], queued_by_transport[transport])
                queued_bytes.add_metric([transport], bytes_by_transport[transport])
            connected.add_metric([], 1 if hub.broker_connected else 0)
            ring.add_metric([], len(hub.ring))
            ring_capacity.add_metric([], hub.ring_size)
            ring_bytes.add_metric([], hub.ring_bytes)
            ring_capacity_bytes.add_metric([], hub.ring_max_bytes)
        yield from (
            events_in,
            oversized,
            shed,
            deliveries,
            drops,
            send_timeouts,
            consumers,
            queued,
            queued_bytes,
            connected,
            ring,
            ring_capacity,
            ring_bytes,
            ring_capacity_bytes,
            retained,
            retained_bytes,
            retained_evicted,
        )


def registry_for(hub: Hub) -> CollectorRegistry:
    """A fresh registry holding only `hub`'s collector (not the process-global registry)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(HubCollector(hub))
    return registry
