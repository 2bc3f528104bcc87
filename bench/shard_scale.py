"""Shard scale benchmark: a fleet of 16,000 devices run as 4 `fleet run --shard auto` processes (the
pods of deploy/kubernetes/'s Indexed Job, rehearsed on one machine) and seen through a real
Prometheus, against the same fleet in one `fleet run` process: what sharding costs per device.

Every process is a child of this script in its own session, its output in a log file, stopped by
its own PID (SIGTERM, then SIGKILL after 10 s) on every path: the end of a phase, an error, Ctrl-C
or SIGTERM. The script sets its soft fd limit to the hard one but never above 20,000, and the
children inherit it: no process here holds more than 20,000 file descriptors (the broker needs one
per device, and so does the single fleet process).

- Prometheus: Debian's /usr/bin/prometheus on a free loopback port, its data in a temp dir,
  scraping every --scrape-interval (1 s) the targets of a file_sd file that this script rewrites
  for each phase: the broker and the fleet processes, labelled ``phase`` and ``role``.
- Each phase gets a fresh ``fleet broker --port 0 --ws-port 0 --sys-interval 0 --metrics-port 0``
  and then its fleet:

  - ``shards``: --shards (4) processes ``fleet run CONFIG --shard auto`` with JOB_COMPLETION_INDEX
    0..3 and FLEET_SHARDS=4 in their environment, as the Indexed Job runs them;
  - ``single``: one ``fleet run CONFIG`` with the whole fleet.

  Each runs with ``--metrics-port 0 --report FILE``, ``--duration`` (--connect-timeout +
  --warmup + --seconds + 5 s) and ``--metrics-hold``, which keeps its final counters scrapable until this
  script has checked them and sends SIGTERM.
- The fleet: --devices (16,000) in two groups, as in tests/test_rehearsal.py: 3/4 sensors at
  QoS 0 and 1/4 trackers at QoS 1, each sending telemetry every --interval s +-10 % (10 s: 1,600
  msg/s for 16,000 devices). The fleet-wide connect ramp is --connect-rate (500/s), the config's
  ``connect_rate``: each of the 4 shards ramps at a quarter of it.
- Connect time: from the spawn of the fleet processes until the sum of their fleet_devices_online,
  read from their own /metrics every 0.25 s, is the fleet's size; also from the moment the last of
  their /metrics first answered (without the interpreters' start).
- Window: once all devices are online, a --warmup (one --interval, so that every device has sent its
  first telemetry and is on its steady schedule), then --seconds (20). CPU is psutil's user + system
  time of each PID over the window; messages are fleet_messages_published_total over the window,
  from the same direct scrapes; RSS at the window's end, and its growth since /metrics first
  answered. The cost: fleet CPU-seconds per device-minute, microseconds of fleet CPU per message, KB
  of RSS per device, shards against single. The broker's CPU and RSS are given too (its work is the
  same).
- Prometheus: during the warm-up and the window, sum(fleet_devices_online) and
  sum(mqtt_broker_connections) must reach the fleet's size; after the run, its fleet-wide sums
  (messages published and acked by QoS, connects, reconnects, connect failures, wills expected,
  devices) must equal the report: the shards' merged by ``fleet report merge DIR``, or the single
  process's. So must the broker's: the wills it published equal the wills expected, and the
  messages it received the messages published plus those wills.
- Load: the host's 1-minute load average is sampled every poll. A WARN line names a phase whose
  load average passed the CPU count, or in whose window other processes used more than 25 % of a
  core: its CPU figures are then suspect.

The exit code is 1 when a phase failed or a Prometheus sum differed from the report, 130 when
interrupted. Usage::

    .venv/bin/python bench/shard_scale.py [--devices 16000] [--shards 4] [--seconds 20] \\
        [--interval 10] [--phases shards,single] [--json FILE] [--log-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
import support
from prometheus_client.parser import text_string_to_metric_families
from support import HOST, BenchError, Proc, fmt, free_port, host_busy_seconds, log_tail, ratio

FD_CAP = 20_000  # the most file descriptors any process here may hold
PROMETHEUS_BIN = shutil.which("prometheus") or "/usr/bin/prometheus"
PHASES = ("shards", "single")
POLL_S = 0.25
TAIL_S = 5.0  # of each fleet run's --duration after the window: its shutdown starts after the window
OTHER_CPU_WARN = 25.0  # % of a core used by other processes in a window that makes it suspect
METRICS_URL = re.compile(r"metrics on (http://127\.0\.0\.1:\d+/metrics)$", re.MULTILINE)
LISTENING = re.compile(r"listening on mqtt://127\.0\.0\.1:(\d+)$", re.MULTILINE)
REPORT_WRITTEN = "fleet: report written to"
CONFIG = """\
seed = 17
connect_rate = {connect_rate}  # fleet-wide: each shard ramps at its part

[[groups]]
name = "sensor"
count = {sensors}
id = "shard-bench-sensor-{{index:05d}}"
interval = {interval}
jitter = 0.1

[[groups]]
name = "tracker"
count = {trackers}
id = "shard-bench-tracker-{{index:05d}}"
interval = {interval}
jitter = 0.1
qos = {{ telemetry = 1 }}
"""
# Report figure -> the Prometheus expression that must equal it (sums over one phase's fleet).
COUNTERS = {
    "devices": "fleet_devices",
    "connects": "fleet_connects_total",
    "reconnects": "fleet_reconnects_total",
    "connect_failures": "fleet_connect_failures_total",
    "wills_expected": "fleet_wills_expected_total",
}


def fleet_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "fleet", *(str(arg) for arg in args)]


def wait_for(proc: Proc, pattern: re.Pattern[str] | str, deadline: float) -> str:
    """`pattern`'s first group in `proc`'s log (a plain string: itself, once it is there), by `deadline`."""
    for _ in range(int((deadline - time.monotonic()) / 0.05) + 2):
        text = proc.log_path.read_text(errors="replace")
        if isinstance(pattern, str):
            if pattern in text:
                return pattern
        elif found := pattern.search(text):
            return found[1]
        proc.check_alive()
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    what = pattern if isinstance(pattern, str) else pattern.pattern
    raise BenchError(f"{proc.name}: no {what!r} in its log in time; log tail:\n{log_tail(proc.log_path)}")


def scrape(url: str) -> dict[str, float]:
    """One /metrics endpoint: each sample name's sum over its labels."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


class Prometheus(Proc):
    """Prometheus on a free loopback port, scraping the targets of a file_sd file in `home`."""

    def __init__(self, home: Path, scrape_interval: float) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.targets = home / "targets.json"
        self.targets.write_text("[]")
        config = home / "prometheus.yml"
        every = f"{round(scrape_interval * 1000)}ms"
        config.write_text(
            f"global:\n  scrape_interval: {every}\n  scrape_timeout: {every}\n"
            f"scrape_configs:\n  - job_name: bench\n    file_sd_configs:\n"
            f'      - files: ["{self.targets}"]\n        refresh_interval: 1s\n'
        )
        super().__init__(
            "prometheus",
            [
                PROMETHEUS_BIN,
                f"--config.file={config}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address={HOST}:{self.port}",
                "--log.level=warn",
            ],
            home / "prometheus.log",
        )

    def wait_ready(self, deadline: float) -> None:
        for _ in range(int((deadline - time.monotonic()) / POLL_S) + 2):
            self.check_alive()
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        raise BenchError(f"prometheus not ready in time; log tail:\n{log_tail(self.log_path)}")

    def scrape_only(self, phase: str, broker: str, fleet: list[str]) -> None:
        """Make the phase's broker and fleet endpoints the targets (Prometheus watches the file)."""
        groups = [
            {
                "targets": [urllib.parse.urlsplit(url).netloc for url in urls],
                "labels": {"phase": phase, "role": role},
            }
            for role, urls in (("broker", [broker]), ("fleet", fleet))
        ]
        staged = self.targets.with_suffix(".tmp")
        staged.write_text(json.dumps(groups))
        staged.replace(self.targets)

    def query(self, expr: str) -> dict[str, float]:
        """An instant query's values by their series' labels, joined by ',' ('' for a plain sum)."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(url, timeout=5) as response:
            data = json.loads(response.read())
        if data.get("status") != "success":
            raise BenchError(f"prometheus: {expr}: {data}")
        return {
            ",".join(f"{k}={v}" for k, v in sorted(series["metric"].items())): float(series["value"][1])
            for series in data["data"]["result"]
        }


@dataclass
class Phase:
    """One phase's figures; None where it did not get that far."""

    phase: str
    processes: int
    devices: int
    connect_s: float | None = None  # spawn -> all online
    connect_after_start_s: float | None = None  # last /metrics up -> all online
    window_s: float | None = None
    messages: float | None = None  # published in the window
    fleet_cpu_s: float | None = None  # in the window, all fleet processes
    fleet_cpu_run_s: float | None = None  # the whole run, start-up and connects included
    fleet_rss_mb: float | None = None  # at the window's end
    fleet_rss_start_mb: float | None = None  # when each /metrics first answered
    broker_cpu_s: float | None = None
    broker_rss_mb: float | None = None
    cpu_s_per_device_min: float | None = None
    us_per_msg: float | None = None
    kb_per_device: float | None = None
    kb_per_device_growth: float | None = None
    other_cpu_pct: float | None = None  # % of one core used by everything else in the window
    load_start: float | None = None
    load_max: float | None = None
    prometheus: dict[str, float] = field(default_factory=dict)
    report: dict[str, float] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    error: str | None = None

    def sample_load(self) -> None:
        load = os.getloadavg()[0]
        self.load_max = load if self.load_max is None else max(self.load_max, load)


def fleet_config(path: Path, args: argparse.Namespace) -> Path:
    trackers = args.devices // 4
    path.write_text(
        CONFIG.format(
            connect_rate=args.connect_rate,
            sensors=args.devices - trackers,
            trackers=trackers,
            interval=args.interval,
        )
    )
    return path


def report_figures(report: dict[str, Any]) -> dict[str, float]:
    """The figures of a (merged) report that Prometheus must sum to, by the name used in `prometheus`."""
    fleet = report["fleet"]
    figures = {key: float(fleet[key]) for key in COUNTERS if key != "devices"}
    figures["devices"] = float(sum(group["devices"] for group in report["groups"].values()))
    for kind in ("published", "acked"):
        for qos, count in fleet[kind].items():
            figures[f"{kind}{{qos={qos}}}"] = float(count)
    # The broker's side: it got every PUBLISH written, and it published the wills expected, no more.
    figures["broker wills"] = figures["wills_expected"]
    figures["broker received"] = sum(fleet["published"].values()) + figures["wills_expected"]
    return figures


def prometheus_figures(prom: Prometheus, phase: str, want: dict[str, float]) -> dict[str, float]:
    """The same figures, summed by Prometheus over the phase's fleet (and its broker's)."""
    sel = f'{{phase="{phase}",role="fleet"}}'
    got = {key: prom.query(f"sum({metric}{sel})").get("", -1.0) for key, metric in COUNTERS.items()}
    for kind in ("published", "acked"):
        by_qos = prom.query(f"sum by (qos) (fleet_messages_{kind}_total{sel})")
        got.update({f"{kind}{{{labels}}}": value for labels, value in by_qos.items()})
    broker = f'{{phase="{phase}",role="broker"}}'
    for key, metric in (("wills", "wills_published"), ("received", "messages_received")):
        got[f"broker {key}"] = prom.query(f"sum(mqtt_broker_{metric}_total{broker})").get("", -1.0)
    for key in want:
        got.setdefault(key, -1.0)
    return got


def run_phase(args: argparse.Namespace, phase: str, workdir: Path, prom: Prometheus, res: Phase) -> None:
    processes = res.processes
    duration = args.connect_timeout + args.warmup + args.seconds + TAIL_S
    hold = 120.0  # the final metrics stay up at most this long; SIGTERM ends the hold sooner
    config = fleet_config(workdir / f"fleet-{phase}.toml", args)
    reports = workdir / f"reports-{phase}"
    reports.mkdir(exist_ok=True)
    res.load_start = os.getloadavg()[0]
    res.sample_load()

    broker = Proc(
        f"broker[{phase}]",
        fleet_cmd("broker", "--port", 0, "--ws-port", 0, "--sys-interval", 0, "--metrics-port", 0),
        workdir / f"broker-{phase}.log",
    )
    fleet: list[Proc] = []
    try:
        broker.start()
        ready_by = time.monotonic() + args.ready_timeout
        port = int(wait_for(broker, LISTENING, ready_by))
        broker_url = wait_for(broker, METRICS_URL, ready_by)
        sharded = phase == "shards"
        run = ["run", config, "--broker", f"mqtt://{HOST}:{port}", *(["--shard", "auto"] * sharded)]
        run += ["--duration", duration, "--metrics-port", 0, "--metrics-hold", hold]
        for index in range(processes):
            env = {"JOB_COMPLETION_INDEX": str(index), "FLEET_SHARDS": str(processes)}
            fleet.append(
                Proc(
                    f"fleet[{index}/{processes}]" if sharded else "fleet",
                    fleet_cmd(*run, "--report", reports / f"shard-{index}.json"),
                    workdir / f"fleet-{phase}-{index}.log",
                    env=env if sharded else None,
                )
            )
        spawned = time.monotonic()
        for proc in fleet:
            proc.start()
        urls: list[str] = []
        rss_start = 0
        for proc in fleet:
            urls.append(wait_for(proc, METRICS_URL, spawned + args.ready_timeout))
            rss_start += proc.rss()
        started = time.monotonic()
        res.fleet_rss_start_mb = rss_start / 2**20
        prom.scrape_only(phase, broker_url, urls)
        print(f"  {phase}: {processes} fleet process(es) up in {started - spawned:.1f} s; connecting")

        def online(sums: list[dict[str, float]]) -> float:
            return sum(s.get("fleet_devices_online", 0.0) for s in sums)

        sums: list[dict[str, float]] = []
        deadline = spawned + args.connect_timeout
        for _ in range(int(args.connect_timeout / POLL_S) + 2):
            for proc in (broker, *fleet):
                proc.check_alive()
            sums = [scrape(url) for url in urls]
            res.sample_load()
            if online(sums) == args.devices or time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        at = time.monotonic()
        if online(sums) != args.devices:
            raise BenchError(
                f"{online(sums):.0f} of {args.devices} devices online after --connect-timeout "
                f"{args.connect_timeout:.0f} s"
            )
        res.connect_s, res.connect_after_start_s = at - spawned, at - started
        print(
            f"  {phase}: {args.devices:,} devices online after {res.connect_s:.1f} s; "
            f"warm-up {args.warmup:g} s, window {args.seconds:g} s"
        )

        seen: dict[str, bool] = {"fleet_devices_online": False, "mqtt_broker_connections": False}

        def watch(seconds: float) -> None:
            """Wait `seconds`, checking every second that every process lives, the load, and Prometheus."""
            start = time.monotonic()
            for _ in range(int(seconds) + 2):
                left = seconds - (time.monotonic() - start)
                if left <= 0:
                    return
                time.sleep(min(1.0, left))
                for proc in (broker, *fleet):
                    proc.check_alive()
                res.sample_load()
                for metric in [name for name, ok in seen.items() if not ok]:
                    seen[metric] = prom.query(f'sum({metric}{{phase="{phase}"}})').get("") == args.devices

        watch(args.warmup)
        sums = [scrape(url) for url in urls]
        me = psutil.Process()
        ours = [*fleet, broker, prom]
        fleet_cpu0 = sum(p.cpu_seconds() for p in fleet)
        broker_cpu0 = broker.cpu_seconds()
        ours_cpu0 = sum(p.cpu_seconds() for p in ours) + support.cpu_seconds(me)
        host0 = host_busy_seconds()
        published0 = sum(s.get("fleet_messages_published_total", 0.0) for s in sums)
        t0 = time.monotonic()
        watch(args.seconds)
        sums = [scrape(url) for url in urls]
        t1 = time.monotonic()
        res.fleet_cpu_s = sum(p.cpu_seconds() for p in fleet) - fleet_cpu0
        res.broker_cpu_s = broker.cpu_seconds() - broker_cpu0
        ours_cpu = sum(p.cpu_seconds() for p in ours) + support.cpu_seconds(me) - ours_cpu0
        res.window_s = t1 - t0
        res.other_cpu_pct = max(0.0, host_busy_seconds() - host0 - ours_cpu) / res.window_s * 100
        res.fleet_rss_mb = sum(p.rss() for p in fleet) / 2**20
        res.broker_rss_mb = broker.rss() / 2**20
        res.messages = sum(s.get("fleet_messages_published_total", 0.0) for s in sums) - published0
        if online(sums) != args.devices or any(REPORT_WRITTEN in p.log_path.read_text() for p in fleet):
            raise BenchError(f"the run ended or lost devices in the window: {online(sums):.0f} online")
        res.cpu_s_per_device_min = res.fleet_cpu_s / (args.devices * res.window_s / 60)
        res.us_per_msg = res.fleet_cpu_s / res.messages * 1e6 if res.messages else None
        res.kb_per_device = res.fleet_rss_mb * 1024 / args.devices
        res.kb_per_device_growth = (res.fleet_rss_mb - res.fleet_rss_start_mb) * 1024 / args.devices
        for metric, ok in seen.items():
            res.prometheus[metric] = args.devices if ok else -1.0
            if not ok:
                res.mismatches.append(
                    f"Prometheus never saw sum({metric}) = {args.devices} while all were online"
                )

        print(f"  {phase}: window done; waiting for the end of the run (--duration {duration:.0f} s)")
        for proc in fleet:
            wait_for(proc, REPORT_WRITTEN, spawned + duration + args.shutdown_timeout)
        res.fleet_cpu_run_s = sum(p.cpu_seconds() for p in fleet)  # still serving, in --metrics-hold
        if sharded:
            merged = workdir / f"merged-{phase}.json"
            done = subprocess.run(
                fleet_cmd("report", "merge", reports, "-o", merged),
                capture_output=True, text=True, timeout=60, check=False, cwd=support.ROOT,
            )  # fmt: skip
            if done.returncode != 0:
                raise BenchError(f"fleet report merge: exit {done.returncode}: {done.stderr.strip()}")
        else:
            merged = reports / "shard-0.json"
        res.report = report_figures(json.loads(merged.read_text()))
        deadline = time.monotonic() + args.prometheus_timeout
        for _ in range(int(args.prometheus_timeout / POLL_S) + 2):
            res.prometheus.update(prometheus_figures(prom, phase, res.report))
            if all(res.prometheus[key] == value for key, value in res.report.items()):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        res.mismatches.extend(
            f"{key}: Prometheus {res.prometheus[key]:g}, report {value:g}"
            for key, value in res.report.items()
            if res.prometheus[key] != value
        )
    finally:
        for proc in fleet:
            proc.terminate()  # ends the --metrics-hold (exit code 0), or the run: all shut down at once
        for proc in fleet:
            proc.stop(args.shutdown_timeout)
            res.exit_codes[proc.name] = None if proc.proc is None else proc.proc.returncode
        broker.stop(args.shutdown_timeout)
        res.exit_codes[broker.name] = None if broker.proc is None else broker.proc.returncode


def row(label: str, cells: list[str]) -> str:
    return f"  {label:<34}" + "".join(f"{cell:>16}" for cell in cells)


def report(phases: list[Phase], args: argparse.Namespace) -> str:
    by = {p.phase: p for p in phases}
    names = [p.phase for p in phases] + (["shards/single"] if {"shards", "single"} <= by.keys() else [])

    def line(label: str, get: Callable[[Phase], float | None], spec: str) -> str:
        cells = [fmt(get(p), spec) for p in phases]
        if len(names) > len(phases):
            cells.append(ratio(get(by["shards"]), get(by["single"])))
        return row(label, cells)

    out = [
        "",
        row("", names),
        row("processes", [str(p.processes) for p in phases]),
        line("connect: spawn -> all online (s)", lambda p: p.connect_s, ".1f"),
        line("connect: /metrics up -> online (s)", lambda p: p.connect_after_start_s, ".1f"),
        line("messages in the window", lambda p: p.messages, ",.0f"),
        line("fleet CPU in the window (s)", lambda p: p.fleet_cpu_s, ".2f"),
        line("fleet CPU-s per device-minute", lambda p: p.cpu_s_per_device_min, ".5f"),
        line("fleet CPU us per message", lambda p: p.us_per_msg, ".0f"),
        line("fleet CPU, whole run (s)", lambda p: p.fleet_cpu_run_s, ".1f"),
        line("fleet RSS (MB)", lambda p: p.fleet_rss_mb, ".0f"),
        line("fleet RSS per device (KB)", lambda p: p.kb_per_device, ".1f"),
        line("  growth since /metrics up (KB)", lambda p: p.kb_per_device_growth, ".1f"),
        line("broker CPU in the window (s)", lambda p: p.broker_cpu_s, ".2f"),
        line("broker RSS (MB)", lambda p: p.broker_rss_mb, ".0f"),
        line("other CPU in the window (%)", lambda p: p.other_cpu_pct, ".0f"),
        row(
            "load average: start / max",
            [f"{fmt(p.load_start, '.2f')} / {fmt(p.load_max, '.2f')}" for p in phases],
        ),
    ]
    for p in phases:
        out.append(
            f"\n  {p.phase}: Prometheus against the {'merged reports' if p.phase == 'shards' else 'report'}:"
        )
        for key, value in p.report.items():
            got = p.prometheus.get(key)
            out.append(
                f"    {key:<24} report {value:>12,.0f}   Prometheus {fmt(got, ',.0f'):>12}   "
                + ("ok" if got == value else "DIFFERS")
            )
        for key in ("fleet_devices_online", "mqtt_broker_connections"):
            if key in p.prometheus:
                ok = p.prometheus[key] == p.devices
                seen = "ok" if ok else "NOT SEEN"
                out.append(f"    sum({key}) = {p.devices:,} while all were online: {seen}")
        if p.error:
            out.append(f"  {p.phase}: ERROR {p.error}")
        bad_exits = {name: code for name, code in p.exit_codes.items() if code not in (0, None)}
        if bad_exits:
            out.append(f"  {p.phase}: exit codes {bad_exits}")
    cpus = os.cpu_count() or 1
    for p in phases:
        if p.load_max is not None and p.load_max > cpus:
            out.append(
                f"WARN: {p.phase}: the load average reached {p.load_max:.2f} on {cpus} CPUs: "
                "its CPU figures are suspect"
            )
        if p.other_cpu_pct is not None and p.other_cpu_pct > OTHER_CPU_WARN:
            out.append(
                f"WARN: {p.phase}: other processes used {p.other_cpu_pct:.0f} % of a core in the window"
            )
    return "\n".join(out)


def comparison(phases: list[Phase]) -> dict[str, float | None]:
    """Each cost of the shards over the same cost of the single process (None without both)."""
    by = {p.phase: p for p in phases}
    if not {"shards", "single"} <= by.keys():
        return {}
    shards, single = by["shards"], by["single"]
    return {
        key: None if a is None or not b else a / b
        for key, a, b in (
            (key, getattr(shards, key), getattr(single, key))
            for key in ("cpu_s_per_device_min", "us_per_msg", "kb_per_device", "connect_s", "broker_cpu_s")
        )
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--devices", type=int, default=16_000, help="the fleet's size")
    p.add_argument("--shards", type=int, default=4, help="fleet processes in the shards phase")
    p.add_argument("--interval", type=float, default=10.0, help="each device's telemetry interval (s)")
    p.add_argument("--connect-rate", type=float, default=500.0, help="fleet-wide connects/s")
    p.add_argument("--warmup", type=float, help="wait once all are online (s); default: one --interval")
    p.add_argument("--seconds", type=float, default=20.0, help="measurement window after the warm-up (s)")
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {','.join(PHASES)}")
    p.add_argument("--scrape-interval", type=float, default=1.0, help="Prometheus's scrape interval (s)")
    p.add_argument(
        "--connect-timeout",
        type=float,
        help="cap on the connect phase (s); default: 2 x devices / connect rate + 15",
    )
    p.add_argument("--ready-timeout", type=float, default=30.0, help="cap on a process's start-up (s)")
    p.add_argument("--shutdown-timeout", type=float, default=60.0, help="cap on a process's shutdown (s)")
    p.add_argument("--prometheus-timeout", type=float, default=20.0, help="cap on Prometheus catching up (s)")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    p.add_argument(
        "--log-dir", type=Path, help="keep the logs, configs and reports here; default: a temp dir"
    )
    args = p.parse_args(argv)
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    bad = [x for x in args.phases if x not in PHASES]
    if bad or not args.phases:
        p.error(f"--phases: unknown {bad}; known: {list(PHASES)}")
    if args.devices < args.shards or args.shards < 1 or args.seconds <= 0 or args.interval <= 0:
        p.error("--shards and --seconds and --interval must be positive, and --devices at least --shards")
    if args.warmup is None:
        args.warmup = args.interval  # every device has sent its first telemetry: its steady schedule
    if args.connect_timeout is None:
        args.connect_timeout = 2 * args.devices / args.connect_rate + 15
    if not Path(PROMETHEUS_BIN).exists():
        p.error(f"prometheus not found at {PROMETHEUS_BIN} (apt-get install prometheus)")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM: the same clean-up as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fd_limit = support.raise_fd_limit(args.devices + 200, cap=FD_CAP)
    signal.signal(signal.SIGTERM, _terminate)
    started = datetime.datetime.now(datetime.UTC)
    load_at_start = os.getloadavg()
    command = " ".join([".venv/bin/python", "bench/shard_scale.py", *sys.argv[1:]])
    print(f"shard_scale {started:%Y-%m-%d %H:%M} UTC: {command}")
    print(
        f"  {os.cpu_count()} CPUs, fd limit {fd_limit} per process, {args.devices:,} devices "
        f"(3/4 QoS 0, 1/4 QoS 1), telemetry every {args.interval:g} s +-10 % "
        f"({args.devices / args.interval:,.0f} msg/s), connect ramp {args.connect_rate:,.0f}/s fleet-wide, "
        f"warm-up {args.warmup:g} s, window {args.seconds:g} s, git {support.git_head('fleet') or '?'}, "
        "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    phases: list[Phase] = []
    try:
        with contextlib.ExitStack() as stack:
            workdir = support.workdir(stack, args.log_dir, "shard_scale-")
            prom = Prometheus(workdir / "prometheus", args.scrape_interval)
            stack.callback(prom.stop, args.shutdown_timeout)
            prom.start()
            prom.wait_ready(time.monotonic() + args.ready_timeout)
            for name in args.phases:
                res = Phase(name, args.shards if name == "shards" else 1, args.devices)
                phases.append(res)
                try:
                    run_phase(args, name, workdir, prom, res)
                except BenchError as exc:
                    res.error = str(exc)
                    print(f"  {name}: ERROR {exc}")
    except BenchError as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: every process stopped", file=sys.stderr)
        if phases:
            print("results so far (incomplete):" + report(phases, args))
        return 130
    finally:
        for proc in list(Proc.LIVE):  # last resort: whatever a phase could not stop itself
            proc.stop(args.shutdown_timeout)
    print(report(phases, args))
    if args.json:
        doc = {
            **support.run_record(started, command, args),
            "load_average_at_start": load_at_start,
            "phases": [asdict(p) for p in phases],
            "shards_over_single": comparison(phases),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    failed = any(
        p.error or p.mismatches or any(c not in (0, None) for c in p.exit_codes.values()) for p in phases
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
