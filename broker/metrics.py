"""Prometheus metrics of the embedded broker (`fleet broker --metrics-port`).

The broker counts as it works (`Stats`, plain ints; its single event loop is the only writer).
prometheus-client answers scrapes on a thread of its own, which must not walk the broker's sessions
while the loop changes them: `serving` copies the figures into an immutable `BrokerSample` on the
loop twice a second, and a scrape reads the latest sample. No label: one broker, one set of figures.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, fields

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from broker.server import Broker

__all__ = ["BrokerCollector", "BrokerSample", "MetricsEndpoint", "serving"]

SAMPLE_INTERVAL = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerSample:
    """The broker's figures at one moment."""

    connections: int = 0
    connections_maximum: int = 0
    sessions: int = 0
    subscriptions: int = 0
    retained_messages: int = 0
    queued_messages: int = 0
    connections_total: int = 0
    messages_received_total: int = 0
    messages_sent_total: int = 0
    messages_dropped_total: int = 0
    wills_published_total: int = 0
    protocol_errors_total: int = 0

    @classmethod
    def of(cls, broker: Broker) -> BrokerSample:
        stats = broker.stats
        return cls(
            connections=len(broker.connections),
            connections_maximum=stats.clients_maximum,
            sessions=len(broker.sessions),
            subscriptions=broker.subscription_count(),
            retained_messages=len(broker.retained),
            queued_messages=sum(len(s.queue) + len(s.inflight) for s in broker.sessions.values()),
            connections_total=stats.connections_total,
            messages_received_total=stats.messages_received,
            messages_sent_total=stats.messages_sent,
            messages_dropped_total=stats.messages_dropped,
            wills_published_total=stats.wills_published,
            protocol_errors_total=stats.protocol_errors,
        )


_HELP = {
    "connections": "Open client connections.",
    "connections_maximum": "The most client connections open at once since the start.",
    "sessions": "Sessions held, connected or not (persistent sessions outlive their connection).",
    "subscriptions": "Distinct topic filters subscribed.",
    "retained_messages": "Retained messages stored.",
    "queued_messages": "Messages queued or in flight to clients, over all sessions.",
    "connections_total": "Accepted connects since the start.",
    "messages_received_total": "PUBLISH messages received from clients (and wills published).",
    "messages_sent_total": "PUBLISH messages sent to clients.",
    "messages_dropped_total": "Messages dropped because a session's queue was full.",
    "wills_published_total": "Last wills published.",
    "protocol_errors_total": "Connections closed for a protocol violation.",
}


class BrokerCollector:
    """Turns the latest `BrokerSample` into metric families when `/metrics` is scraped."""

    def __init__(self, sample: Callable[[], BrokerSample]) -> None:
        self._sample = sample

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        return self._families(self._sample())

    def _families(self, sample: BrokerSample | None) -> list[Metric]:
        families: list[Metric] = []
        for field in fields(BrokerSample):
            name = f"mqtt_broker_{field.name}"
            family: GaugeMetricFamily | CounterMetricFamily
            if field.name.endswith("_total"):
                family = CounterMetricFamily(name, _HELP[field.name])
            else:
                family = GaugeMetricFamily(name, _HELP[field.name])
            if sample is not None:
                family.add_metric([], getattr(sample, field.name))
            families.append(family)
        return families


@dataclass(frozen=True, slots=True)
class MetricsEndpoint:
    """Where the metrics are served."""

    url: str
    port: int


@contextlib.asynccontextmanager
async def serving(broker: Broker, host: str, port: int) -> AsyncIterator[MetricsEndpoint]:
    """Serve `broker`'s metrics on http://host:port/metrics (port 0 picks one) while the block runs."""
    latest = BrokerSample.of(broker)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(BrokerCollector(lambda: latest))
    server, thread = start_http_server(port, host, registry)
    bound = server.server_port
    try:
        async with asyncio.TaskGroup() as tasks:

            async def sample() -> None:
                nonlocal latest
                while True:
                    latest = BrokerSample.of(broker)
                    await asyncio.sleep(SAMPLE_INTERVAL)

            task = tasks.create_task(sample(), name="broker.metrics")
            try:
                yield MetricsEndpoint(f"http://{f'[{host}]' if ':' in host else host}:{bound}/metrics", bound)
            finally:
                task.cancel()
    finally:
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        thread.join(5.0)
