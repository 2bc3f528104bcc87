"""Reading Prometheus text from a `/metrics` endpoint in tests, awaiting a condition on it, and the
names the fleet, the broker and the bridges expose."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bridges.hub import Hub
from bridges.metrics import HubCollector
from broker.metrics import BrokerCollector
from fleet.metrics import FleetCollector

POLL = 0.1  # seconds between two scrapes while awaiting a condition


@dataclass(frozen=True, slots=True)
class Samples:
    """One scrape: every sample's value by its name and labels."""

    values: Mapping[tuple[str, frozenset[tuple[str, str]]], float]

    def sum(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(value for (found, have), value in self.values.items() if found == name and wanted <= have)

    def names(self) -> set[str]:
        return {name for name, _ in self.values}


def scrape(url: str, timeout: float = 5.0) -> Samples:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    values = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return Samples(values)


def scrape_until(url: str, holds: Callable[[Samples], bool], what: str, timeout: float = 20.0) -> Samples:
    """Scrape `url` until `holds(samples)`; fail with `what` and the last scrape after `timeout`."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / POLL) + 1):
        samples = scrape(url)
        if holds(samples) or time.monotonic() > deadline:
            break
        time.sleep(POLL)
    assert holds(samples), f"timed out after {timeout}s waiting for {what}; last scrape: {samples}"
    return samples


def exposed_families() -> dict[str, str]:
    """Every metric family of `fleet run`/`stress`, `fleet broker` and the bridges, by the name it is
    exposed under (counters with `_total`), with its type."""
    collectors: list[Any] = [
        FleetCollector(lambda: None),  # describe() never reads a sample
        BrokerCollector(lambda: None),
        HubCollector(Hub()),
    ]
    return {
        f"{family.name}_total" if family.type == "counter" else family.name: family.type
        for collector in collectors
        for family in collector.describe()
    }
