"""Prometheus metrics of `fleet run`, `fleet broker` and `fleet stress`, scraped from real subprocesses:
live figures while the fleet runs, final figures equal to the JSON report, and one table of names."""

from __future__ import annotations

import json
import re
import signal
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.procs import FleetBroker, Paho, Proc, fleet_argv
from tests.prom import Samples, exposed_families, scrape, scrape_until

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 60.0
URL = re.compile(r"metrics on (http://127\.0\.0\.1:\d+/metrics)$")
SIZE = 9
FLEET = """\
seed = 3

[broker]
port = 0
ws_port = 0
sys_interval = 0

[[groups]]
name = "a"
count = 5
interval = 0.2

[[groups]]
name = "b"
count = 4
interval = 0.3
qos = { telemetry = 1 }
"""


def metrics_url(proc: Proc, stream: str = "stderr") -> str:
    """The endpoint a `fleet` process announced with its `metrics on URL` line."""
    reader = getattr(proc, stream)
    found = URL.search(reader.lines[reader.wait_for(lambda line: URL.search(line) is not None)])
    assert found is not None
    return found[1]


def assert_metrics_equal_report(samples: Samples, report: dict[str, Any]) -> None:
    """Every counted figure of every group is the same in the scrape and in the JSON report."""
    for group, stats in report["groups"].items():

        def value(name: str, group: str = group, **labels: str) -> float:
            return samples.sum(name, group=group, **labels)

        assert value("fleet_devices") == stats["devices"]
        assert value("fleet_devices_online") == 0
        for qos, count in stats["published"].items():
            assert value("fleet_messages_published_total", qos=qos) == count, (group, qos)
        for qos, count in stats["acked"].items():
            assert value("fleet_messages_acked_total", qos=qos) == count, (group, qos)
        assert value("fleet_connects_total") == stats["connects"]
        assert value("fleet_connect_failures_total") == stats["connect_failures"]
        assert value("fleet_reconnects_total") == stats["reconnects"]
        assert value("fleet_wills_expected_total") == stats["wills_expected"]
        for kind, count in stats["drops"].items():
            assert value("fleet_disconnects_total", kind=kind) == count
        assert value("fleet_connect_seconds_count") == stats["connect_latency_s"]["count"]
        assert value("fleet_reconnect_seconds_count") == stats["reconnect_time_s"]["count"]
        assert value("fleet_publish_ack_seconds_count") == stats["publish_ack_s"]["count"]
        assert value("fleet_publish_ack_seconds_count") == sum(stats["acked"].values())


@pytest.mark.parametrize("workers", [1, 2])
def test_run_metrics_show_the_fleet_online_then_equal_the_report(
    tmp_path: Path, procs: Callable[..., Proc], workers: int
) -> None:
    """`fleet run --metrics-port 0` prints its endpoint; while the fleet runs, it shows every device
    online (with --workers 2, one endpoint sums both workers); after the run it holds figures equal to
    the JSON report until SIGTERM, and the run still exits 0."""
    config = tmp_path / "fleet.toml"
    config.write_text(FLEET)
    out = tmp_path / "report.json"
    proc = procs(
        *fleet_argv("run", config, "--duration", 3, "--report", out, "--workers", workers),
        *("--metrics-port", 0, "--metrics-hold", RUN_TIMEOUT),
    )
    url = metrics_url(proc)
    live = scrape_until(url, lambda s: s.sum("fleet_devices_online") == SIZE, "every device online")
    assert live.sum("fleet_devices_online", shard="1/1", group="a") == 5
    proc.stderr.wait_for("report written", timeout=RUN_TIMEOUT)
    report = json.loads(out.read_text())
    assert_metrics_equal_report(scrape(url), report)
    assert report["groups"]["b"]["publish_ack_s"]["count"] > 0
    proc.signal(signal.SIGTERM)
    assert proc.wait(RUN_TIMEOUT) == 0, proc.describe()


def test_a_metrics_port_in_use_is_a_one_line_error(tmp_path: Path, procs: Callable[..., Proc]) -> None:
    """`--metrics-port` on a port already taken exits 1 with one line, before any device starts."""
    config = tmp_path / "fleet.toml"
    config.write_text(FLEET)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = procs(*fleet_argv("run", config, "--duration", 1, "--metrics-port", port))
        assert proc.wait(RUN_TIMEOUT) == 1
    assert proc.stderr.lines[-1].startswith("Error: cannot listen: ")
    assert "Traceback" not in proc.stderr.text
    assert "devices ->" not in proc.stderr.text


def test_broker_metrics_count_connections_and_messages(
    start_fleet_broker: Callable[..., FleetBroker], paho_client: Callable[..., Paho]
) -> None:
    """`fleet broker --metrics-port 0` prints its endpoint, which counts open connections, sessions and
    received messages as clients come and publish."""
    broker = start_fleet_broker("--port", 0, "--ws-port", 0, "--metrics-port", 0)
    url = metrics_url(broker.proc, "stdout")
    assert scrape(url).sum("mqtt_broker_connections") == 0
    client = paho_client("metrics-client")
    client.connect(broker.port)
    client.publish("fleet/x/telemetry", b"{}", 1)
    samples = scrape_until(
        url,
        lambda s: s.sum("mqtt_broker_connections") == 1 and s.sum("mqtt_broker_messages_received_total") == 1,
        "one connection and one message",
    )
    assert samples.sum("mqtt_broker_connections_total") == 1
    assert samples.sum("mqtt_broker_sessions") == 1
    assert samples.sum("mqtt_broker_messages_dropped_total") == 0


STRESS = """\
seed = 2

[stress]
scenario = "storm"
duration = 2
drain = 5
fraction = 0.5

[[groups]]
name = "p"
count = 6
id = "p-{tag}-{{index}}"
interval = 0.1
qos = {{ telemetry = 1 }}
clean_session = false
keepalive = 5

[groups.backoff]
initial = 0.05
max = 0.5
"""


def test_stress_metrics_equal_its_report(tmp_path: Path, procs: Callable[..., Proc]) -> None:
    """`fleet stress --metrics-port 0` serves the fleet's figures; after the run they equal the fleet
    part of its JSON report, reconnects and expected wills included."""
    config = tmp_path / "stress.toml"
    config.write_text(STRESS.format(tag=uuid.uuid4().hex[:6]))
    out = tmp_path / "report.json"
    proc = procs(
        *fleet_argv("stress", config, "--report", out, "--metrics-port", 0, "--metrics-hold", RUN_TIMEOUT)
    )
    url = metrics_url(proc)
    proc.stderr.wait_for("report written", timeout=RUN_TIMEOUT)
    report = json.loads(out.read_text())["fleet"]
    samples = scrape(url)
    assert_metrics_equal_report(samples, report)
    assert samples.sum("fleet_reconnects_total") == report["fleet"]["reconnects"] > 0
    proc.signal(signal.SIGTERM)
    assert proc.wait(RUN_TIMEOUT) == 0, proc.describe()


def test_one_docs_table_names_every_metric() -> None:
    """docs/metrics.md has one table, and it names every metric the fleet, the broker and the bridges
    expose, and no other."""
    exposed = set(exposed_families())
    page = (ROOT / "docs" / "metrics.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    documented = {re.match(r"\| `([a-z_]+)`", row)[1] for row in rows}
    assert documented == exposed
    assert page.count("\n|---") == 1
