"""The distributed run of deploy/kubernetes/, rehearsed on one machine: four `fleet run --shard auto`
processes (each its own JOB_COMPLETION_INDEX) against a `fleet broker`, scraped by a real Prometheus
(Debian's `prometheus`), whose fleet-wide sums must equal the merged JSON reports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.procs import FleetBroker, Proc, fleet_argv, free_port, run
from tests.test_metrics import metrics_url

PROMETHEUS = shutil.which("prometheus") or (
    "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
)
# CI installs prometheus (.ci/run): there, a missing one fails the test instead of skipping it.
# Six processes and Prometheus: `make test` runs the heavy tests one at a time, on one worker.
pytestmark = [
    pytest.mark.skipif(
        PROMETHEUS is None and not os.environ.get("CI"),
        reason="prometheus not installed (apt-get install prometheus)",
    ),
    pytest.mark.xdist_group("heavy"),
]

SHARDS = 4
# FLEET_REHEARSAL_DEVICES=16000 rehearses a bigger fleet by hand; CI runs the small default.
DEVICES = int(os.environ.get("FLEET_REHEARSAL_DEVICES", "40"))
DURATION = float(os.environ.get("FLEET_REHEARSAL_DURATION", "10"))
TIMEOUT = 60.0 + DEVICES / 200  # bounds each wait; a bigger fleet takes longer to connect
POLL = 0.2
CONFIG = """\
seed = 17
connect_rate = 1000  # fleet-wide, 250 per shard: a bigger rehearsal must not drown one broker in connects

[[groups]]
name = "sensor"
count = {sensors}
id = "rehearsal-sensor-{{index:05d}}"
interval = 1.0
jitter = 0.1

[[groups]]
name = "tracker"
count = {trackers}
id = "rehearsal-tracker-{{index:05d}}"
interval = 1.0
qos = {{ telemetry = 1 }}
"""


class Prometheus:
    """A Prometheus on 127.0.0.1 with a scrape config written here and targets from a file it watches."""

    def __init__(self, proc: Proc, port: int, targets: Path) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.targets = targets
        self.watched: list[Proc] = []  # described when a wait fails

    def scrape(self, urls: list[str]) -> None:
        """Make `urls` (…/metrics endpoints) the fleet's targets: Prometheus sees the file change."""
        hosts = [urllib.parse.urlsplit(url).netloc for url in urls]
        staged = self.targets.with_suffix(".tmp")
        staged.write_text(json.dumps([{"targets": hosts}]))
        staged.replace(self.targets)

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as response:
            return json.loads(response.read()) if path.startswith("/api/") else response.status

    def query(self, expr: str) -> dict[str, float]:
        """An instant query's values by the labels of its series, joined by ',' ('' for a sum)."""
        data = self.get("/api/v1/query", query=expr)
        assert data["status"] == "success", data
        return {
            ",".join(f"{k}={v}" for k, v in sorted(series["metric"].items())): float(series["value"][1])
            for series in data["data"]["result"]
        }

    def until(self, holds: Callable[[], bool], what: str) -> None:
        """Query until `holds()`; fail with `what` after TIMEOUT."""
        deadline = time.monotonic() + TIMEOUT
        for _ in range(int(TIMEOUT / POLL) + 1):
            if holds():
                return
            if time.monotonic() > deadline:
                break
            time.sleep(POLL)
        online: object
        try:
            online = self.query("sum by (shard) (fleet_devices_online)")
        except OSError as exc:
            online = exc
        tails = "".join(f"\n{proc.describe()}" for proc in (self.proc, *self.watched))
        pytest.fail(f"Prometheus: timed out after {TIMEOUT}s waiting for {what}; online: {online}{tails}")


@pytest.fixture
def prometheus(tmp_path: Path, procs: Callable[..., Proc], fleet_broker_metrics: str) -> Prometheus:
    """A real Prometheus, its data in a temp dir, scraping the broker and (once set) the fleet every
    0.5 s; stopped by its PID at teardown."""
    home = tmp_path / "prometheus"
    home.mkdir()
    targets = home / "fleet-targets.json"
    targets.write_text("[]")
    broker = urllib.parse.urlsplit(fleet_broker_metrics).netloc
    (home / "prometheus.yml").write_text(
        f"""\
global:
  scrape_interval: 500ms
  scrape_timeout: 500ms
scrape_configs:
  - job_name: fleet
    file_sd_configs:
      - files: ["{targets}"]
        refresh_interval: 1s
  - job_name: broker
    static_configs:
      - targets: ["{broker}"]
"""
    )
    port = free_port()
    assert PROMETHEUS is not None, "prometheus is not installed (apt-get install prometheus)"
    proc = procs(
        PROMETHEUS,
        f"--config.file={home / 'prometheus.yml'}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    )
    server = Prometheus(proc, port, targets)

    def ready() -> bool:
        try:
            return bool(server.get("/-/ready") == 200)
        except OSError:
            assert proc.popen.poll() is None, proc.describe()
            return False

    server.until(ready, "/-/ready")
    return server


@pytest.fixture
def broker(start_fleet_broker: Callable[..., FleetBroker]) -> FleetBroker:
    return start_fleet_broker("--port", 0, "--ws-port", 0, "--sys-interval", 0, "--metrics-port", 0)


@pytest.fixture
def fleet_broker_metrics(broker: FleetBroker) -> str:
    return metrics_url(broker.proc, "stdout")


def test_prometheus_sums_the_shards_into_the_merged_report(
    tmp_path: Path, procs: Callable[..., Proc], broker: FleetBroker, prometheus: Prometheus
) -> None:
    """Four shards scraped by Prometheus: while they run, sum(fleet_devices_online) is the fleet's size
    (and the broker counts as many connections); after the run, every fleet-wide sum in Prometheus
    equals the merged JSON reports of the four shards."""
    config = tmp_path / "fleet.toml"
    trackers = DEVICES // 4
    config.write_text(CONFIG.format(sensors=DEVICES - trackers, trackers=trackers))
    reports = [tmp_path / f"shard-{index}.json" for index in range(SHARDS)]
    shards = [
        procs(
            *fleet_argv("run", config, "--shard", "auto", "--broker", f"mqtt://127.0.0.1:{broker.port}"),
            *("--duration", DURATION, "--report", report, "--metrics-port", 0, "--metrics-hold", TIMEOUT),
            env={"JOB_COMPLETION_INDEX": str(index), "FLEET_SHARDS": str(SHARDS)},
        )
        for index, report in enumerate(reports)
    ]
    prometheus.scrape([metrics_url(shard) for shard in shards])
    prometheus.watched.extend(shards)

    def one(expr: str) -> float | None:
        return prometheus.query(expr).get("")

    prometheus.until(lambda: one("sum(fleet_devices_online)") == DEVICES, f"{DEVICES} devices online")
    assert prometheus.query('count by (shard) (fleet_devices{job="fleet"})').keys() == {
        f"shard={index + 1}/{SHARDS}" for index in range(SHARDS)
    }
    assert one("sum(fleet_devices)") == DEVICES
    prometheus.until(lambda: one("sum(mqtt_broker_connections)") == DEVICES, "the broker's connections")

    for shard in shards:
        shard.stderr.wait_for("report written", timeout=TIMEOUT + DURATION)
    merged_path = tmp_path / "merged.json"
    done = run(fleet_argv("report", "merge", *reports, "-o", merged_path), timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    merged = json.loads(merged_path.read_text())
    fleet = merged["fleet"]
    published = sum(fleet["published"].values())
    prometheus.until(
        lambda: (
            one("sum(fleet_messages_published_total)") == published and one("sum(fleet_devices_online)") == 0
        ),
        f"the final figures ({published} messages published)",
    )
    assert prometheus.query("sum by (qos) (fleet_messages_published_total)") == {
        f"qos={qos}": count for qos, count in fleet["published"].items()
    }
    assert prometheus.query("sum by (qos) (fleet_messages_acked_total)") == {
        f"qos={qos}": count for qos, count in fleet["acked"].items()
    }
    assert prometheus.query("sum by (group) (fleet_devices)") == {
        f"group={group}": stats["devices"] for group, stats in merged["groups"].items()
    }
    for metric, key in (
        ("fleet_connects_total", "connects"),
        ("fleet_reconnects_total", "reconnects"),
        ("fleet_connect_failures_total", "connect_failures"),
        ("fleet_wills_expected_total", "wills_expected"),
    ):
        assert one(f"sum({metric})") == fleet[key], metric
    assert one("sum(fleet_publish_ack_seconds_count)") == fleet["publish_ack_s"]["count"]
    assert one("sum(fleet_connect_seconds_count)") == fleet["connect_latency_s"]["count"] == DEVICES
    assert fleet["connects"] == DEVICES

    for shard in shards:
        shard.signal(signal.SIGTERM)  # ends the hold
        assert shard.wait(TIMEOUT) == 0, shard.describe()
