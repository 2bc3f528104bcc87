"""Prometheus metrics of `fleet run` and `fleet stress`: the fleet's report, by shard and group.

The simulator counts into its report as it works (plain ints and log-bucketed histograms, no locks,
no metric call per message). prometheus-client answers scrapes on a thread of its own, which must
never read a report the event loop is changing: `FleetMetrics.following(live)` copies the report
into an immutable `FleetSample` on the loop twice a second, and a scrape turns the latest sample
into metric families. With `--workers`, the parent's `Live` holds the sum of its workers' reports
(fleet.workers), so one endpoint shows every device of the process tree.

Labels are bounded: `shard` (one value per process), `group` (the config's groups), `qos`, `kind`
(how an online period ended) and `op` (the known command ops, and `unknown`). Never a device.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from fleet.report import GroupStats, Histogram, Report
from fleet.simulator import Live

__all__ = ["BUCKETS", "FleetCollector", "FleetMetrics", "FleetSample"]

# Seconds: the `le` bounds of the latency histograms, from a LAN's millisecond to a minute of backoff.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SAMPLE_INTERVAL = 0.5


@dataclass(frozen=True, slots=True)
class FleetSample:
    """A copy of a fleet process's counts at one moment; nothing changes it after it is made."""

    shard: str
    groups: Mapping[str, GroupStats]
    online: Mapping[str, int]

    @classmethod
    def of(cls, shard: str, report: Report | None, online: Mapping[str, int]) -> FleetSample:
        groups = {}
        for name, stats in (report.groups if report is not None else {}).items():
            copy = GroupStats()
            copy.merge(stats)
            groups[name] = copy
        return cls(shard, groups, dict(online))


class FleetCollector:
    """Turns the latest `FleetSample` into metric families when `/metrics` is scraped."""

    def __init__(self, sample: Callable[[], FleetSample]) -> None:
        self._sample = sample

    def describe(self) -> Iterable[Metric]:
        """The families this collector yields, without samples (lets the registry detect clashes)."""
        return list(self._families(None))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self._sample()))

    def _families(self, sample: FleetSample | None) -> Iterator[Metric]:
        by = ["shard", "group"]
        devices = GaugeMetricFamily("fleet_devices", "Devices this process runs.", labels=by)
        online = GaugeMetricFamily("fleet_devices_online", "Devices connected now.", labels=by)
        published = CounterMetricFamily(
            "fleet_messages_published",
            "Messages the devices published (telemetry, status, command acks), by QoS.",
            labels=[*by, "qos"],
        )
        acked = CounterMetricFamily(
            "fleet_messages_acked",
            "QoS 1 and 2 publishes the broker acknowledged (PUBACK, PUBCOMP), by QoS.",
            labels=[*by, "qos"],
        )
        connects = CounterMetricFamily("fleet_connects", "Successful connects (CONNACK 0).", labels=by)
        failures = CounterMetricFamily("fleet_connect_failures", "Failed connect attempts.", labels=by)
        reconnects = CounterMetricFamily(
            "fleet_reconnects", "Successful connects after a device's first.", labels=by
        )
        ends = CounterMetricFamily(
            "fleet_disconnects",
            "Online periods that ended, by kind: clean, abrupt, silent, lost.",
            labels=[*by, "kind"],
        )
        wills = CounterMetricFamily(
            "fleet_wills_expected",
            "Abrupt and silent ends of devices with a will: wills the broker must publish.",
            labels=by,
        )
        commands = CounterMetricFamily(
            "fleet_commands_received", "Commands the devices received, by op.", labels=[*by, "op"]
        )
        errors = CounterMetricFamily("fleet_errors", "Errors the devices met, of every kind.", labels=by)
        connect_s = HistogramMetricFamily(
            "fleet_connect_seconds", "One connect attempt, TCP connect to CONNACK.", labels=by
        )
        reconnect_s = HistogramMetricFamily(
            "fleet_reconnect_seconds",
            "From when a reconnect became due to its CONNACK, retries and backoff included.",
            labels=by,
        )
        ack_s = HistogramMetricFamily(
            "fleet_publish_ack_seconds", "A QoS 1 or 2 publish to its PUBACK or PUBCOMP.", labels=by
        )
        if sample is not None:
            for group, stats in sorted(sample.groups.items()):
                labels = [sample.shard, group]
                devices.add_metric(labels, stats.devices)
                online.add_metric(labels, sample.online.get(group, 0))
                for qos, count in sorted(stats.published.items()):
                    published.add_metric([*labels, qos], count)
                for qos, count in sorted(stats.acked.items()):
                    acked.add_metric([*labels, qos], count)
                connects.add_metric(labels, stats.connects)
                failures.add_metric(labels, stats.connect_failures)
                reconnects.add_metric(labels, stats.reconnects)
                for kind, count in sorted(stats.drops.items()):
                    ends.add_metric([*labels, kind], count)
                wills.add_metric(labels, stats.wills_expected)
                for op, count in sorted(stats.commands.items()):
                    commands.add_metric([*labels, op], count)
                errors.add_metric(labels, stats.errors.total())
                for family, histogram in (
                    (connect_s, stats.connect_latency),
                    (reconnect_s, stats.reconnect_time),
                    (ack_s, stats.publish_ack),
                ):
                    family.add_metric(labels, _buckets(histogram), histogram.total)
        yield from (
            devices,
            online,
            published,
            acked,
            connects,
            failures,
            reconnects,
            ends,
            wills,
            commands,
            errors,
            connect_s,
            reconnect_s,
            ack_s,
        )


def _buckets(histogram: Histogram) -> Sequence[tuple[str, float]]:
    counts = histogram.cumulative(BUCKETS)
    return [(f"{bound:g}", count) for bound, count in zip(BUCKETS, counts, strict=True)] + [
        ("+Inf", histogram.count)
    ]


class FleetMetrics:
    """`/metrics` of one fleet process, served on prometheus-client's HTTP server thread.

    A context manager: the server listens from construction and stops at exit, so it may outlive
    the event loop of the run (to hold the final figures for a last scrape).
    """

    def __init__(self, shard: str, host: str, port: int) -> None:
        self.shard = shard
        self._sample = FleetSample(shard, {}, {})
        registry = CollectorRegistry(auto_describe=True)
        registry.register(FleetCollector(lambda: self._sample))
        server, thread = start_http_server(port, host, registry)
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.port: int = server.server_port
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}/metrics"

    def __enter__(self) -> FleetMetrics:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)

    def update(self, report: Report | None, online: Mapping[str, int]) -> None:
        """Publish a copy of `report` and the online counts to the next scrapes."""
        self._sample = FleetSample.of(self.shard, report, online)

    def finish(self, report: Report) -> None:
        """Publish the run's final report: nobody online any more."""
        self.update(report, {})

    @contextlib.asynccontextmanager
    async def following(self, live: Live) -> AsyncIterator[None]:
        """Sample `live` twice a second while the block runs, and once more when it ends."""

        async def sample() -> None:
            while True:
                self.update(live.report, live.online)
                await asyncio.sleep(SAMPLE_INTERVAL)

        try:
            async with asyncio.TaskGroup() as tasks:
                task = tasks.create_task(sample(), name="fleet.metrics")
                try:
                    yield
                finally:
                    task.cancel()
        finally:
            self.update(live.report, live.online)
