"""What a fleet run did: counters and latency histograms per group, mergeable across shards.

Latencies go into log-bucketed histograms (about 2% resolution), so the reports of eight shards
merge into the percentiles one run of the whole fleet would have given.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.errors import ConfigError

__all__ = ["GroupStats", "Histogram", "Report", "merge_reports", "merge_shard_files", "shard_files"]

_BUCKETS_PER_DOUBLING = 32
_PERCENTILES = (50, 90, 99)


class Histogram:
    """Counts of positive values (seconds) in log buckets; percentiles are bucket midpoints."""

    __slots__ = ("buckets", "count", "maximum", "total")

    def __init__(self) -> None:
        self.buckets: Counter[int] = Counter()
        self.count = 0
        self.total = 0.0
        self.maximum = 0.0

    def add(self, value: float) -> None:
        value = max(value, 1e-6)
        self.buckets[math.floor(math.log2(value) * _BUCKETS_PER_DOUBLING)] += 1
        self.count += 1
        self.total += value
        self.maximum = max(self.maximum, value)

    def merge(self, other: Histogram) -> None:
        self.buckets.update(other.buckets)
        self.count += other.count
        self.total += other.total
        self.maximum = max(self.maximum, other.maximum)

    def percentile(self, p: float) -> float | None:
        if not self.count:
            return None
        rank = math.ceil(self.count * p / 100)
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                return min(2 ** ((bucket + 0.5) / _BUCKETS_PER_DOUBLING), self.maximum)
        return self.maximum

    def midpoints(self) -> dict[float, int]:
        """Each bucket's count by its midpoint in seconds, the value `percentile` gives for it."""
        return {2 ** ((bucket + 0.5) / _BUCKETS_PER_DOUBLING): n for bucket, n in self.buckets.items()}

    def cumulative(self, bounds: Sequence[float]) -> list[int]:
        """How many values are at most each of the ascending `bounds`, a bucket counting at its
        midpoint as in `percentile` (so within about 2%): a Prometheus histogram's buckets."""
        counts = [0] * len(bounds)
        for value, count in self.midpoints().items():
            for index, bound in enumerate(bounds):
                if value <= bound:
                    counts[index] += count
        return counts

    def summary(self) -> dict[str, float | int | None]:
        out: dict[str, float | int | None] = {"count": self.count}
        for p in _PERCENTILES:
            value = self.percentile(p)
            out[f"p{p}"] = None if value is None else round(value, 4)
        out["max"] = round(self.maximum, 4) if self.count else None
        out["mean"] = round(self.total / self.count, 4) if self.count else None
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "buckets": {str(k): v for k, v in sorted(self.buckets.items())},
            "count": self.count,
            "total": self.total,
            "max": self.maximum,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Histogram:
        histogram = cls()
        histogram.buckets.update({int(k): int(v) for k, v in data["buckets"].items()})
        histogram.count = int(data["count"])
        histogram.total = float(data["total"])
        histogram.maximum = float(data["max"])
        return histogram


_COUNTERS = ("published", "acked", "drops", "errors", "commands", "disconnects")


@dataclass(slots=True)
class GroupStats:
    """Everything counted for one group (or, merged, for the fleet)."""

    devices: int = 0
    published: Counter[str] = field(default_factory=Counter)  # by QoS: "0", "1", "2"
    acked: Counter[str] = field(default_factory=Counter)  # QoS 1 and 2 publishes the broker acknowledged
    connects: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    drops: Counter[str] = field(default_factory=Counter)  # clean, abrupt, silent, lost
    wills_expected: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    commands: Counter[str] = field(default_factory=Counter)  # by op
    disconnects: Counter[str] = field(default_factory=Counter)  # a broker's DISCONNECT, by reason ("0x8e")
    alias_bytes_saved: int = 0  # topic bytes MQTT 5 Topic Aliases left out, less the aliases' own bytes
    connect_latency: Histogram = field(default_factory=Histogram)
    reconnect_time: Histogram = field(default_factory=Histogram)
    publish_ack: Histogram = field(default_factory=Histogram)  # QoS 1/2: publish to PUBACK/PUBCOMP

    def merge(self, other: GroupStats) -> None:
        self.devices += other.devices
        self.connects += other.connects
        self.reconnects += other.reconnects
        self.connect_failures += other.connect_failures
        self.wills_expected += other.wills_expected
        self.alias_bytes_saved += other.alias_bytes_saved
        for name in _COUNTERS:
            getattr(self, name).update(getattr(other, name))
        self.connect_latency.merge(other.connect_latency)
        self.reconnect_time.merge(other.reconnect_time)
        self.publish_ack.merge(other.publish_ack)

    def to_json(self) -> dict[str, Any]:
        return {
            "devices": self.devices,
            "published": dict(sorted(self.published.items())),
            "acked": dict(sorted(self.acked.items())),
            "connects": self.connects,
            "reconnects": self.reconnects,
            "connect_failures": self.connect_failures,
            "drops": dict(sorted(self.drops.items())),
            "wills_expected": self.wills_expected,
            "errors": dict(sorted(self.errors.items())),
            "commands": dict(sorted(self.commands.items())),
            "disconnects": dict(sorted(self.disconnects.items())),
            "alias_bytes_saved": self.alias_bytes_saved,
            "connect_latency_s": self.connect_latency.summary(),
            "reconnect_time_s": self.reconnect_time.summary(),
            "publish_ack_s": self.publish_ack.summary(),
            "histograms": {
                "connect_latency": self.connect_latency.to_json(),
                "reconnect_time": self.reconnect_time.to_json(),
                "publish_ack": self.publish_ack.to_json(),
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GroupStats:
        stats = cls(
            devices=int(data["devices"]),
            connects=int(data["connects"]),
            reconnects=int(data["reconnects"]),
            connect_failures=int(data["connect_failures"]),
            wills_expected=int(data["wills_expected"]),
            alias_bytes_saved=int(data.get("alias_bytes_saved", 0)),
            connect_latency=Histogram.from_json(data["histograms"]["connect_latency"]),
            reconnect_time=Histogram.from_json(data["histograms"]["reconnect_time"]),
        )
        if "publish_ack" in data["histograms"]:  # reports older than the ack latency have none
            stats.publish_ack = Histogram.from_json(data["histograms"]["publish_ack"])
        for name in _COUNTERS:
            getattr(stats, name).update(data.get(name, {}))  # "disconnects" is newer than some reports
        return stats


@dataclass(slots=True)
class Report:
    """A run's report: per-group stats plus what identifies the run."""

    groups: dict[str, GroupStats] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def group(self, name: str) -> GroupStats:
        stats = self.groups.get(name)
        if stats is None:
            stats = self.groups[name] = GroupStats()
        return stats

    def fleet(self) -> GroupStats:
        total = GroupStats()
        for stats in self.groups.values():
            total.merge(stats)
        return total

    def merge(self, other: Report) -> None:
        for name, stats in other.groups.items():
            self.group(name).merge(stats)

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "fleet": self.fleet().to_json(),
            "groups": {name: stats.to_json() for name, stats in sorted(self.groups.items())},
        }

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Report:
        report = cls(meta=dict(data.get("meta", {})))
        for name, stats in data["groups"].items():
            report.groups[name] = GroupStats.from_json(stats)
        return report

    @classmethod
    def load(cls, path: Path) -> Report:
        """Read a `fleet run` report; ConfigError names the file and what it is instead."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(str(path), "no such file") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(str(path), f"not a fleet run report: {exc}") from None
        if isinstance(data, dict) and "delivery" in data and "gates" in data:
            raise ConfigError(str(path), "a `fleet stress` report; only `fleet run` reports merge")
        if not isinstance(data, dict) or "groups" not in data:
            raise ConfigError(str(path), 'not a fleet run report: it has no "groups"')
        try:
            return cls.from_json(data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(str(path), f"not a fleet run report: {exc!r}") from None

    def runs(self) -> list[dict[str, Any]]:
        """The meta of each run in this report: itself, or the shards it was merged from."""
        merged = self.meta.get("merged")
        return list(merged) if isinstance(merged, list) else [self.meta]


def merge_reports(reports: Iterable[Report]) -> Report:
    """One report for several shards: counters add up, histograms merge, shard labels are listed.

    A shard cut short (`complete: false`) makes the merged report incomplete too.
    """
    merged = Report(meta={"merged": []})
    for report in reports:
        merged.merge(report)
        merged.meta["merged"].extend(report.runs())
    if any(run.get("complete") is False for run in merged.meta["merged"]):
        merged.meta["complete"] = False
    return merged


_SAME_RUN = (("config", "the fleet config"), ("seed", "the seed"))


def shard_files(paths: Iterable[Path]) -> list[Path]:
    """The report files to merge: each file as given, and each directory's `*.json` files, sorted."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.json"))
            if not found:
                raise ConfigError(str(path), "a directory with no .json report in it")
            files.extend(found)
        else:
            files.append(path)
    return files


def merge_shard_files(paths: Iterable[Path], *, partial: bool = False) -> Report:
    """Load and merge the reports of the shards of one fleet run (`fleet run --shard I/N`).

    Raises ConfigError naming the file when it is given twice, holds a shard already counted, is
    not a `fleet run` report, or comes from another run: another config, seed or shard count; and
    when shards are missing, unless `partial`: then the merged report lists them under `missing`.
    """
    files: dict[Path, Path] = {}
    shards: dict[str, Path] = {}
    first: tuple[Path, dict[str, Any]] | None = None
    reports = []
    for path in paths:
        if path.resolve() in files:
            earlier = files[path.resolve()]
            raise ConfigError(str(path), f"given twice (also as {earlier}): it would count twice")
        files[path.resolve()] = path
        report = Report.load(path)
        for run in report.runs():
            shard = run.get("shard")
            if not isinstance(shard, str) or "/" not in shard:
                raise ConfigError(str(path), "not a fleet run report: its meta has no shard")
            if shard in shards:
                raise ConfigError(
                    str(path), f"shard {shard} is also in {shards[shard]}: it would count twice"
                )
            shards[shard] = path
            if first is None:
                first = (path, run)
                continue
            origin, expected = first
            for key, name in _SAME_RUN:
                if run.get(key) != expected.get(key):
                    raise ConfigError(
                        str(path),
                        f"{name} differs from {origin}'s ({run.get(key)} here, {expected.get(key)} "
                        "there): only the shards of one run merge",
                    )
            count, expected_count = shard.partition("/")[2], expected["shard"].partition("/")[2]
            if count != expected_count:
                raise ConfigError(
                    str(path),
                    f"shard {shard} is of {count} shards, {origin}'s of {expected_count}: "
                    "only the shards of one run merge",
                )
        reports.append(report)
    merged = merge_reports(reports)
    if first is not None:
        origin, expected = first
        total = int(expected["shard"].partition("/")[2])
        missing = [f"{number}/{total}" for number in range(1, total + 1) if f"{number}/{total}" not in shards]
        if missing and not partial:
            raise ConfigError(
                str(origin),
                f"shard {', '.join(missing)} of its run is missing: give every shard, "
                "or --partial to merge what is here",
            )
        if missing:
            merged.meta["missing"] = missing
    return merged
