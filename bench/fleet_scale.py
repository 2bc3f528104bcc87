"""Fleet scale benchmark: the fleet simulator at 10,000 devices in one process, against Mosquitto,
with a naive one-aiomqtt-client-per-device simulator as the baseline in the same run.

Every measured simulator runs in a child process of this script (``--child``), so that its CPU
time and RSS are those of one PID alone (psutil on that PID).  Each (simulator, phase) pair gets a
fresh child and a fresh Mosquitto on a free loopback port; both are stopped by their own PIDs
(SIGTERM, then SIGKILL) even on errors, Ctrl-C or SIGTERM.

Simulators (``--baseline`` picks the last one, ``--mqtt5 off`` drops the second):

- ``lean``: ``fleet.simulator.simulate()`` as ``fleet run`` calls it, so over the lean ``Link``
  (``simulate()`` has no parameter to choose its transport, so ``AiomqttLink`` cannot be plugged
  in without patching the module).
- ``lean-v5``: the same fleet as MQTT 5 devices (``protocol = "5"``) with two user properties on
  every telemetry message (``tenant``, and ``device`` templated per device) and a topic alias for
  the telemetry topic after its first publish.  Its CPU per message is compared with ``lean``'s of
  the same run (at most 15 % more), and the child reports the bytes of one telemetry PUBLISH:
  3.1.1, v5 with the topic, v5 with the alias, and the bytes the aliases saved per message.
- ``aiomqtt``: the "naive simulator" of FLEET-NOTES, written here: one ``aiomqtt.Client`` per
  device in one event loop, with the same last will, retained birth, cmd subscription and the
  same telemetry payloads and schedule.

Workload per device, as in FLEET-NOTES: MQTT 3.1.1, clean session, keepalive 60 s, a retained
last will and a retained birth message (QoS 1) on its status topic, a QoS 1 subscription to its
cmd topic, and ~150-byte JSON telemetry (two metrics, padded to 150 bytes) every ``interval``
seconds +-10 %.  The fleet-wide connect rate is ``--connect-rate`` (20,000/s: no real limit).

Phases, one child each:

1. **idle** (interval 3600 s, so no telemetry in the run): seconds from the start of
   ``simulate()`` until its ``ready`` callback, i.e. until every device has connected, subscribed
   to its cmd topic and sent its birth message (the naive simulator: the same, with the birth's
   PUBACK, as aiomqtt's ``publish()`` waits for it); RSS just before ``simulate()`` and ``--settle``
   seconds after ready, per device; then the child's CPU % over ``--idle-seconds`` with every
   device connected and silent.
2. **qos0** / **qos1** (interval = devices / ``--rate`` s; the default offered 20,000 msg/s
   saturates both simulators' one core): after ``--warmup`` s of load, messages published per
   CPU-second of the child (user + system) over ``--seconds``.  The figure depends on the load:
   a simulator that keeps up (``--rate 10000``, as FLEET-NOTES measured) spends less per message.

The connect phase is measured in every child; the idle child's figure is the headline one (the
load children publish telemetry while later devices are still connecting).  Mosquitto runs with
``sys_interval 1``; an observer in this process reads its ``$SYS`` tree to check, coarsely, that
the devices really are connected and subscribed, and that the broker received every telemetry
message the simulator says it sent (its counter skips retained PUBLISHes); after the run it counts
the retained status messages, one per device.  ``other CPU`` is everything else on the host
during the window (kernel softirq for loopback included, so a few % is normal).

Usage::

    .venv/bin/python bench/fleet_scale.py [--devices 10000] [--seconds 5] [--baseline aiomqtt|none]
        [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psutil
import support
from support import (
    cpu_seconds,
    fmt,
    free_port,
    host_busy_seconds,
    log_tail,
    raise_fd_limit,
    ratio,
    tcp_counters,
)

HOST = "127.0.0.1"
MOSQUITTO_BIN = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
ROOT = Path(__file__).resolve().parent.parent
KEEPALIVE_S = 60
PAYLOAD_BYTES = 150
JITTER = 0.1
IDLE_INTERVAL_S = 3600.0
PHASES = ("idle", "qos0", "qos1")
LEAN, LEAN5, NAIVE = "lean", "lean-v5", "aiomqtt"
LEANS = (LEAN, LEAN5)
LINE_PREFIX = "FLEET-BENCH "
TOPIC_PREFIX = "bench"
WILL_PAYLOAD = b'{"online":false,"reason":"lost"}'

# Acceptance targets of the fleet simulator (see bench/README.md).
TARGET_DEVICES = 10_000
TARGET_CONNECT_S = 3.0
TARGET_MSG_PER_CPU_S = {"qos0": 20_000.0, "qos1": 12_000.0}
TARGET_IDLE_PCT = 2.0
TARGET_KB_PER_DEVICE = 12.0
TARGET_V5_CPU_RATIO = 1.15  # MQTT 5 (properties, aliases) may cost this much CPU per message over 3.1.1
# What FLEET-NOTES measured for one aiomqtt.Client per device, for reference.
NOTES_AIOMQTT = {
    "connect": "7.1 s",
    "qos0": "4.2k",
    "qos1": "3.2k",
    "idle": "10-13 %",
    "kb": "20-28 KB",
}
FLEET_SHA = [""]  # the fleet sources' hash when the benchmark started
OTHER_CPU_WARN = 25.0  # % of a core used by other processes that makes a run suspect


# --------------------------------------------------------------------------------------------
# Shared helpers.
# --------------------------------------------------------------------------------------------


def ephemeral_ports() -> tuple[int, int]:
    """(local ports of the ephemeral range now taken by some TCP socket, TIME_WAIT included; range size)."""
    lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    taken: set[int] = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(name) as f:
            next(f, None)
            for line in f:
                port = int(line.split(None, 2)[1].rsplit(":", 1)[1], 16)
                if lo <= port <= hi:
                    taken.add(port)
    return len(taken), hi - lo + 1


async def wait_for_ports(need: int, limit_s: float = 75.0) -> float:
    """Wait (at most `limit_s`) until `need` ephemeral ports are free; returns the seconds waited.

    paho binds each client socket to ('', 0) before connecting, so the kernel must find a port
    that no socket holds, TIME_WAIT ones included; a previous 10,000-client run leaves 10,000 of
    those for 60 s, and connects then fail with EADDRINUSE.  (Plain connect(), as Link uses, may
    reuse them.)
    """
    t0 = time.monotonic()
    told = False
    while time.monotonic() - t0 < limit_s:
        try:
            taken, size = ephemeral_ports()
        except (OSError, ValueError):
            return 0.0
        if size - taken >= need:
            break
        if not told:
            print(
                f"  waiting for TIME_WAIT ports to expire: {size - taken:,} of {size:,} free, need {need:,}"
            )
            told = True
        await asyncio.sleep(2.0)
    return time.monotonic() - t0


def fleet_sources_hash() -> tuple[str, float]:
    """sha256 (12 hex digits) of fleet/*.py as they are now, and the newest file's mtime."""
    digest = hashlib.sha256()
    newest = 0.0
    for path in sorted((ROOT / "fleet").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
        newest = max(newest, path.stat().st_mtime)
    return digest.hexdigest()[:12], newest


def fleet_fingerprint() -> dict[str, str]:
    """Which simulator was measured: git HEAD, whether fleet/ has local changes, and a hash of the
    fleet/*.py sources as they are now (other people edit them in parallel)."""
    sha, newest = fleet_sources_hash()
    out = {
        "fleet_sha256": sha,
        "fleet_newest_mtime": datetime.datetime.fromtimestamp(newest, datetime.UTC).isoformat(
            timespec="seconds"
        ),
    }
    head = support.git_head("fleet")
    if head is not None:
        out["git_head"] = head
    return out


# --------------------------------------------------------------------------------------------
# Child: one simulator, one phase; reports JSON lines on stdout.
# --------------------------------------------------------------------------------------------


def emit(event: str, **data: Any) -> None:
    print(LINE_PREFIX + json.dumps({"event": event, **data}), flush=True)


class Counts:
    """What a simulator under test exposes to the measuring code."""

    def connected(self) -> int:
        raise NotImplementedError

    def published(self) -> int:
        raise NotImplementedError

    def errors(self) -> tuple[int, str]:
        raise NotImplementedError


class LeanCounts(Counts):
    def __init__(self, live: Any) -> None:
        self.live = live

    def connected(self) -> int:
        return int(self.live.connected)

    def published(self) -> int:
        return int(self.live.published)

    def errors(self) -> tuple[int, str]:
        return int(self.live.errors), str(self.live.last_error)


def outcome(task: asyncio.Task[Any]) -> str:
    """How a finished task ended, for an error message."""
    if task.cancelled():
        return "cancelled"
    return repr(task.exception()) if task.exception() is not None else "returned"


def phase_interval(args: argparse.Namespace) -> float:
    return IDLE_INTERVAL_S if args.phase == "idle" else args.devices / args.rate


def phase_qos(phase: str) -> int:
    return 1 if phase == "qos1" else 0


async def measure(
    args: argparse.Namespace,
    counts: Counts,
    ready: asyncio.Event,
    ready_at: list[float],
    started: float,
    cpu_at_start: float,
    rss_before: int,
    task: asyncio.Task[Any],
) -> dict[str, Any]:
    """Phases 1-3 of one child, around a running simulator `task`; returns the result fields."""
    me = psutil.Process()
    out: dict[str, Any] = {"rss_before_kb": rss_before / 1024}
    waiter = asyncio.ensure_future(ready.wait())
    try:
        await asyncio.wait({waiter, task}, timeout=args.connect_timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        raise RuntimeError(f"the simulator ended during connect: {outcome(task)}")
    errors, last_error = counts.errors()
    if not ready.is_set():
        out.update(
            status=f"connect timeout after {args.connect_timeout:.0f} s",
            connected=counts.connected(),
            errors=errors,
            last_error=last_error,
        )
        emit("connect_timeout", connected=counts.connected(), errors=errors, last_error=last_error)
        return out
    out["connect_s"] = ready_at[0] - started
    out["connect_cpu_s"] = cpu_seconds(me) - cpu_at_start
    emit(
        "ready",
        connect_s=out["connect_s"],
        connect_cpu_s=out["connect_cpu_s"],
        connected=counts.connected(),
        errors=errors,
    )

    await asyncio.sleep(args.settle if args.phase == "idle" else args.warmup)
    out["rss_after_kb"] = me.memory_info().rss / 1024
    window = args.idle_seconds if args.phase == "idle" else args.seconds
    emit("window_start")
    c0, p0, w0 = cpu_seconds(me), counts.published(), time.perf_counter()
    deadline = w0 + window
    while (left := deadline - time.perf_counter()) > 0:
        await asyncio.sleep(min(0.5, left))
        if task.done():
            raise RuntimeError(f"the simulator ended during the window: {outcome(task)}")
    c1, p1, w1 = cpu_seconds(me), counts.published(), time.perf_counter()
    emit("window_end")
    errors, last_error = counts.errors()
    out.update(
        status="ok",
        connected=counts.connected(),
        window_s=w1 - w0,
        window_cpu_s=c1 - c0,
        published_in_window=p1 - p0,
        errors=errors,
        last_error=last_error,
    )
    return out


async def finish(
    args: argparse.Namespace, stop: asyncio.Event, task: asyncio.Task[Any]
) -> tuple[Any, float, str | None]:
    """Stop the simulator and wait for it (bounded); returns (its result, seconds, problem)."""
    stop.set()
    t0 = time.perf_counter()
    # asyncio.wait, not wait_for: it neither raises the task's error nor swallows our cancellation.
    await asyncio.wait({task}, timeout=args.shutdown_timeout)
    if not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=5.0)
        return None, time.perf_counter() - t0, f"shutdown took > {args.shutdown_timeout:.0f} s: cancelled"
    if task.cancelled():
        return None, time.perf_counter() - t0, "the simulator was cancelled"
    if task.exception() is not None:  # the simulator's own failure: report it
        return None, time.perf_counter() - t0, f"simulator failed: {task.exception()!r}"
    return task.result(), time.perf_counter() - t0, None


def lean_config(args: argparse.Namespace) -> Any:
    from fleet.schema import FleetConfig

    v5: dict[str, Any] = {}
    if args.child == LEAN5:
        v5 = {
            "protocol": "5",
            "topic_alias": True,
            "user_properties": {"tenant": "acme", "device": "{device}"},
        }
    return FleetConfig.model_validate(
        {
            "seed": 1,
            "connect_rate": args.connect_rate,
            "groups": [
                {
                    **v5,
                    "name": TOPIC_PREFIX,
                    "count": args.devices,
                    "id": TOPIC_PREFIX + "-{index:05d}",
                    "interval": phase_interval(args),
                    "jitter": JITTER,
                    "qos": {"telemetry": phase_qos(args.phase), "status": 1, "command": 1},
                    "keepalive": KEEPALIVE_S,
                    "clean_session": True,
                    "birth": True,
                    "will": True,
                    "commands": True,
                    "payload_size": PAYLOAD_BYTES,
                    "telemetry": {
                        "temperature": {"kind": "random_walk", "min": 15, "max": 30, "step": 0.2},
                        "battery": {"kind": "uniform", "min": 0, "max": 100},
                    },
                }
            ],
        }
    )


async def child_lean(args: argparse.Namespace) -> dict[str, Any]:
    from fleet.simulator import Live, Target, simulate
    from fleet.transport import Endpoint

    config = lean_config(args)
    target = Target(Endpoint("mqtt", HOST, args.port))
    live = Live()
    stop = asyncio.Event()
    ready = asyncio.Event()
    ready_at: list[float] = []

    def on_ready() -> None:
        ready_at.append(time.perf_counter())
        ready.set()

    me = psutil.Process()
    gc.collect()
    rss_before = me.memory_info().rss
    cpu0 = cpu_seconds(me)
    started = time.perf_counter()
    task = asyncio.create_task(simulate(config, target, stop=stop, live=live, ready=on_ready))
    out: dict[str, Any] = {}
    connected_at_stop = 0
    try:
        out = await measure(args, LeanCounts(live), ready, ready_at, started, cpu0, rss_before, task)
    finally:
        connected_at_stop = live.connected
        report, out["shutdown_s"], problem = await finish(args, stop, task)
    if problem:
        out["problem"] = problem
    out["published_total"] = live.published
    if report is not None:
        fleet = report.fleet()
        out["published_total"] = sum(fleet.published.values())
        out["acked_total"] = sum(fleet.acked.values())
        # Status messages are retained: one birth per connect, one offline status per device
        # connected at the stop. Everything else this workload sends is telemetry.
        out["telemetry_total"] = out["published_total"] - fleet.connects - connected_at_stop
        out["report_errors"] = dict(fleet.errors)
        out["connect_latency"] = fleet.connect_latency.summary()
        out["alias_bytes_saved"] = fleet.alias_bytes_saved
        out["disconnects"] = dict(fleet.disconnects)
    out["publish_bytes"] = publish_bytes(config)
    return out


def publish_bytes(config: Any) -> dict[str, int]:
    """The bytes of one telemetry PUBLISH of the first device, as the lean Link encodes it: 3.1.1,
    and for an MQTT 5 group with its topic name and with a topic alias instead."""
    from fleet import packets
    from fleet.device import Device
    from fleet.mqtt import v5
    from fleet.mqtt.properties import encode_variable_int

    group = config.groups[0]
    device = Device(group, 0, config.seed)
    qos = group.qos.telemetry
    packet_id = 1 if qos else 0
    topic = device.topics.telemetry.encode()
    if group.protocol_level == 4:
        payload = device.telemetry(time.time())
        return {"mqtt311": len(packets.encode_publish(topic, payload, qos, packet_id=packet_id))}
    properties = device.telemetry_properties()
    payload = device.telemetry(time.time())
    aliased = properties + b"\x23\x00\x01"  # Topic Alias 1
    return {
        "mqtt5_topic": len(
            v5.encode_publish(
                topic,
                payload,
                qos,
                packet_id=packet_id,
                properties=encode_variable_int(len(properties)) + properties,
            )
        ),
        "mqtt5_alias": len(
            v5.encode_publish(
                b"", payload, qos, packet_id=packet_id, properties=encode_variable_int(len(aliased)) + aliased
            )
        ),
    }


class Naive(Counts):
    """The naive simulator of FLEET-NOTES: one aiomqtt.Client per device, all in one event loop."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.n_connected = 0
        self.n_published = 0
        self.n_telemetry = 0
        self.n_telemetry_attempted = 0
        self.stopping = False
        self.n_errors = 0
        self.last_error = ""
        self.commands = 0
        self.first_connects = 0
        self.interval = phase_interval(args)
        self.qos = phase_qos(args.phase)
        self.on_all_connected: Callable[[], None] | None = None
        self.recancelled: dict[int, int] = {}  # round -> devices still running after that cancel

    def connected(self) -> int:
        return self.n_connected

    def published(self) -> int:
        return self.n_published

    def errors(self) -> tuple[int, str]:
        return self.n_errors, self.last_error

    def error(self, device: str, exc: BaseException) -> None:
        self.n_errors += 1
        self.last_error = f"{device}: {type(exc).__name__}: {exc}"[:300]

    async def read_commands(self, client: Any) -> None:
        import aiomqtt

        with contextlib.suppress(aiomqtt.MqttError):
            async for _ in client.messages:
                self.commands += 1

    async def device(self, index: int) -> None:
        import aiomqtt

        dev = f"{TOPIC_PREFIX}-{index:05d}"
        status, cmd, tele = f"fleet/{dev}/status", f"fleet/{dev}/cmd", f"fleet/{dev}/telemetry"
        rng = random.Random(f"naive/{dev}")
        temperature = 22.5
        seq = 0
        first = True
        will = aiomqtt.Will(status, WILL_PAYLOAD, qos=1, retain=True)
        for _attempt in range(1000):  # reconnects, with a 1 s pause; the run ends long before
            if self.stopping:
                return
            try:
                async with aiomqtt.Client(
                    HOST,
                    self.args.port,
                    identifier=dev,
                    keepalive=KEEPALIVE_S,
                    clean_session=True,
                    will=will,
                    timeout=10,
                ) as client:
                    self.n_connected += 1
                    reader = asyncio.create_task(self.read_commands(client))
                    try:
                        await client.subscribe(cmd, qos=1)
                        birth = json.dumps(
                            {"online": True, "ts": round(time.time(), 3)}, separators=(",", ":")
                        )
                        await client.publish(status, birth.encode(), qos=1, retain=True)
                        self.n_published += 1
                        if first:  # ready as simulate() means it: connected, subscribed, announced
                            first = False
                            self.first_connects += 1
                            if self.first_connects == self.args.devices and self.on_all_connected:
                                self.on_all_connected()
                        failures = 0
                        while failures < 10 and not self.stopping:
                            await asyncio.sleep(self.interval * (1.0 + rng.uniform(-JITTER, JITTER)))
                            temperature = min(30.0, max(15.0, temperature + rng.uniform(-0.2, 0.2)))
                            body: dict[str, Any] = {
                                "device": dev,
                                "seq": seq,
                                "ts": round(time.time(), 3),
                                "values": {
                                    "temperature": round(temperature, 2),
                                    "battery": round(rng.uniform(0, 100), 2),
                                },
                            }
                            seq += 1
                            data = json.dumps(body, separators=(",", ":")).encode()
                            if len(data) < PAYLOAD_BYTES:
                                body["pad"] = "x" * max(0, PAYLOAD_BYTES - len(data) - 9)
                                data = json.dumps(body, separators=(",", ":")).encode()
                            self.n_telemetry_attempted += 1
                            try:
                                await client.publish(tele, data, qos=self.qos)
                            except aiomqtt.MqttError as exc:
                                failures += 1
                                self.error(dev, exc)
                                continue
                            failures = 0
                            self.n_published += 1
                            self.n_telemetry += 1
                    finally:
                        self.n_connected -= 1
                        reader.cancel()
            except aiomqtt.MqttError as exc:
                self.error(dev, exc)
            await asyncio.sleep(1.0)


async def child_naive(args: argparse.Namespace) -> dict[str, Any]:
    naive = Naive(args)
    stop = asyncio.Event()
    ready = asyncio.Event()
    ready_at: list[float] = []

    def on_ready() -> None:
        ready_at.append(time.perf_counter())
        ready.set()

    naive.on_all_connected = on_ready

    async def run() -> None:
        ramp = 1.0 / args.connect_rate
        tasks: list[asyncio.Task[None]] = []
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            for i in range(args.devices):
                delay = t0 + i * ramp - loop.time()
                if delay > 0.001:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(naive.device(i)))
            await stop.wait()
        finally:
            # Leaving `async with` sends DISCONNECT: no will fires. A device that swallows its
            # cancellation (asyncio.wait_for in Python 3.11 can) still sees `stopping`.
            naive.stopping = True
            pending = set(tasks)
            for round_ in range(5):
                for t in pending:
                    t.cancel()
                _, pending = await asyncio.wait(pending, timeout=5.0) if pending else (set(), set())
                if not pending:
                    break
                naive.recancelled[round_] = len(pending)

    me = psutil.Process()
    gc.collect()
    rss_before = me.memory_info().rss
    cpu0 = cpu_seconds(me)
    started = time.perf_counter()
    task = asyncio.create_task(run())
    out: dict[str, Any] = {}
    try:
        out = await measure(args, naive, ready, ready_at, started, cpu0, rss_before, task)
    finally:
        _, out["shutdown_s"], problem = await finish(args, stop, task)
    if problem:
        out["problem"] = problem
    out["published_total"] = naive.n_published
    out["telemetry_total"] = naive.n_telemetry
    # Publishes cut short by the stop may have reached the broker without being counted above.
    out["telemetry_attempted"] = naive.n_telemetry_attempted
    out["commands"] = naive.commands
    if naive.recancelled:
        out["still_running_after_cancel"] = naive.recancelled
    return out


def child_main(args: argparse.Namespace) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    runner = child_lean if args.child in LEANS else child_naive
    try:
        out = asyncio.run(runner(args))
        out["fleet_sha256"] = fleet_sources_hash()[0]  # when this child ran (the files may change)
    except Exception as exc:
        emit("result", status="error", error=f"{type(exc).__name__}: {exc}"[:1000])
        raise
    emit("result", **out)
    return 0


# --------------------------------------------------------------------------------------------
# Parent: Mosquitto, the $SYS observer, the children, the report.
# --------------------------------------------------------------------------------------------


class BenchError(Exception):
    """Something failed that makes the rest of a run meaningless."""


class Mosquitto:
    """Mosquitto on a free loopback port, its defaults plus sys_interval 1, its log in a file."""

    def __init__(self, workdir: Path, tag: str) -> None:
        self.port = free_port()
        self.conf = workdir / f"mosquitto-{tag}.conf"
        self.log_path = workdir / f"mosquitto-{tag}.log"
        self.conf.write_text(f"listener {self.port} {HOST}\nallow_anonymous true\nsys_interval 1\n")
        self.conf.chmod(0o644)
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [MOSQUITTO_BIN, "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches this script only; it stops the broker
                preexec_fn=support.die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            )
        self.ps = psutil.Process(self.proc.pid)

    def check_alive(self) -> None:
        assert self.proc is not None
        rc = self.proc.poll()
        if rc is not None:
            raise BenchError(f"mosquitto exited with code {rc}; log tail:\n{log_tail(self.log_path)}")

    async def wait_ready(self, limit_s: float) -> None:
        """Poll with a TCP connect until it is accepted, within `limit_s` seconds."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, self.port), 2.0)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        raise BenchError(
            f"mosquitto not listening after {limit_s:.0f} s; log tail:\n{log_tail(self.log_path)}"
        )

    def cpu_seconds(self) -> float:
        assert self.ps is not None
        with contextlib.suppress(psutil.Error):
            return cpu_seconds(self.ps)
        return 0.0

    def stop(self) -> None:
        if self.proc is not None:
            support.stop_pid(self.proc, "mosquitto")


class SysObserver:
    """One aiomqtt client reading Mosquitto's $SYS counters (updated every second) and, at the end,
    counting the retained status messages the devices left.

    Mosquitto 2.0.11's ``publish/messages/received`` counts only non-retained PUBLISHes, so it is
    compared with the telemetry the simulator sent; the retained births and offline statuses are
    checked by subscribing to ``fleet/+/status`` after the run (one retained message per device).
    """

    STATUS_FILTER = "fleet/+/status"

    TOPICS: ClassVar[dict[str, str]] = {
        "$SYS/broker/publish/messages/received": "received",
        "$SYS/broker/clients/connected": "clients",
        "$SYS/broker/subscriptions/count": "subscriptions",
    }

    def __init__(self, port: int) -> None:
        self.port = port
        self.values: dict[str, int] = {}
        self.peaks: dict[str, int] = {}
        self.updates = 0
        self.ready = asyncio.Event()
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.error: str | None = None
        self.client: Any = None
        self.statuses = 0

    async def _run(self) -> None:
        import aiomqtt

        try:
            async with aiomqtt.Client(HOST, self.port, identifier="bench-sys-observer", timeout=10) as client:
                await client.subscribe([(t, 0) for t in self.TOPICS])
                self.client = client
                self.ready.set()
                async for message in client.messages:
                    key = self.TOPICS.get(message.topic.value)
                    if key is None and message.retain and message.topic.matches(self.STATUS_FILTER):
                        self.statuses += 1
                        self.changed.set()
                        continue
                    if key is None or not isinstance(message.payload, bytes | bytearray):
                        continue
                    with contextlib.suppress(ValueError):
                        value = int(message.payload)
                        self.values[key] = value
                        self.peaks[key] = max(self.peaks.get(key, value), value)
                        self.updates += 1
                        self.changed.set()
        except aiomqtt.MqttError as exc:
            self.error = f"$SYS observer: {exc}"
            self.ready.set()

    async def start(self) -> None:
        self.task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.ready.wait(), 15)

    def reset_peaks(self) -> None:
        self.peaks = dict(self.values)

    async def wait_received(self, want: int, limit_s: float) -> int | None:
        """The broker's PUBLISH-received count once it reaches `want`, or its last value after `limit_s`."""
        deadline = time.monotonic() + limit_s
        while self.values.get("received", -1) < want and (left := deadline - time.monotonic()) > 0:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        return self.values.get("received")

    async def count_statuses(self, want: int, limit_s: float) -> int | None:
        """Subscribe to every device's status topic and count the retained messages that come,
        until `want` came or none came for a second (at most `limit_s` s); None on failure."""
        import aiomqtt

        if self.client is None:
            return None
        try:
            await self.client.subscribe(self.STATUS_FILTER, qos=0)
        except aiomqtt.MqttError:
            return None
        deadline = time.monotonic() + limit_s
        while self.statuses < want and (left := deadline - time.monotonic()) > 0:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(1.0, left))
            except TimeoutError:
                break  # quiet for a second: that was all of them
        return self.statuses

    async def stop(self) -> None:
        task = self.task
        if task is not None:
            task.cancel()
            # asyncio.wait: a Ctrl-C that cancels us meanwhile must not be swallowed here.
            await asyncio.wait({task}, timeout=5)
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: the run is over either way


@dataclass
class Run:
    sim: str
    phase: str
    devices: int
    status: str = "not run"
    error: str | None = None
    offered_msg_s: float | None = None
    connect_s: float | None = None
    connected: int = 0
    connect_cpu_pct: float | None = None
    connect_mosquitto_cpu_s: float | None = None
    listen_overflows: int | None = None
    syn_retransmits: int | None = None
    rss_before_kb: float | None = None
    rss_after_kb: float | None = None
    kb_per_device: float | None = None
    window_s: float | None = None
    cpu_pct: float | None = None
    published_in_window: int | None = None
    msg_per_s: float | None = None
    msg_per_cpu_s: float | None = None
    mosquitto_cpu_pct: float | None = None
    other_cpu_pct: float | None = None
    broker_clients: int | None = None
    broker_subscriptions: int | None = None
    published_total: int | None = None
    telemetry_total: int | None = None
    telemetry_attempted: int | None = None
    retained_statuses: int | None = None
    acked_total: int | None = None
    broker_received: int | None = None
    delivery: str = "-"
    shutdown_s: float | None = None
    errors: int = 0
    last_error: str = ""
    port_wait_s: float = 0.0
    child: dict[str, Any] = field(default_factory=dict)


def child_command(args: argparse.Namespace, sim: str, phase: str, port: int) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        sim,
        "--phase",
        phase,
        "--port",
        str(port),
        "--devices",
        str(args.devices),
        "--seconds",
        str(args.seconds),
        "--idle-seconds",
        str(args.idle_seconds),
        "--rate",
        str(args.rate),
        "--connect-rate",
        str(args.connect_rate),
        "--warmup",
        str(args.warmup),
        "--settle",
        str(args.settle),
        "--connect-timeout",
        str(args.connect_timeout),
        "--shutdown-timeout",
        str(args.shutdown_timeout),
    ]


class Child:
    """The simulator under test, as a subprocess whose stdout carries JSON event lines."""

    def __init__(self, cmd: list[str], log_path: Path) -> None:
        self.cmd = cmd
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None
        self.reader: asyncio.StreamReader | None = None
        self._transport: asyncio.BaseTransport | None = None

    def spawn(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=ROOT,
                start_new_session=True,
                preexec_fn=support.die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            )
        self.ps = psutil.Process(self.proc.pid)

    async def start(self) -> None:
        """Spawn the child and attach a stream reader to its stdout."""
        self.spawn()
        assert self.proc is not None
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        self._transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), self.proc.stdout
        )
        self.reader = reader

    async def event(self, deadline: float) -> dict[str, Any]:
        """The next event line, before `deadline` (time.monotonic())."""
        assert self.reader is not None
        for _ in range(10_000):  # skip anything else the child printed
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError("the child did not report in time")
            try:
                line = await asyncio.wait_for(self.reader.readline(), left)
            except TimeoutError:
                raise BenchError("the child did not report in time") from None
            if not line:
                raise BenchError(f"the child exited early; its stderr:\n{log_tail(self.log_path)}")
            text = line.decode(errors="replace")
            if text.startswith(LINE_PREFIX):
                event: dict[str, Any] = json.loads(text[len(LINE_PREFIX) :])
                return event
        raise BenchError("the child printed too much")

    def cpu_seconds(self) -> float:
        assert self.ps is not None
        with contextlib.suppress(psutil.Error):
            return cpu_seconds(self.ps)
        return 0.0

    def wait(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
        if self.proc is not None:
            support.stop_pid(self.proc, "simulator child")


async def run_one(args: argparse.Namespace, sim: str, phase: str, workdir: Path) -> Run:
    res = Run(sim, phase, args.devices)
    if phase != "idle":
        res.offered_msg_s = args.rate
    tag = f"{sim}-{phase}"
    broker = Mosquitto(workdir, tag)
    observer: SysObserver | None = None
    child: Child | None = None
    me = psutil.Process()
    print(f"- {sim}, {phase}: mosquitto on port {broker.port} ...", flush=True)
    try:
        if sim == NAIVE:
            res.port_wait_s = await wait_for_ports(args.devices + 1000)
        broker.start()
        await broker.wait_ready(args.ready_timeout)
        observer = SysObserver(broker.port)
        await observer.start()
        if observer.error:
            raise BenchError(observer.error)
        received0 = await observer.wait_received(0, 3.0) or 0
        child = Child(child_command(args, sim, phase, broker.port), workdir / f"child-{tag}.log")
        window = args.idle_seconds if phase == "idle" else args.seconds
        deadline = (
            time.monotonic()
            + 30  # interpreter start-up, imports, config
            + args.connect_timeout
            + max(args.settle, args.warmup)
            + window
            + args.shutdown_timeout
            + 15
        )
        tcp0 = tcp_counters()
        mosq0 = broker.cpu_seconds()
        await child.start()
        ev = await child.event(deadline)
        tcp1 = tcp_counters()
        res.connect_mosquitto_cpu_s = broker.cpu_seconds() - mosq0
        res.listen_overflows = tcp1.get("ListenOverflows", 0) - tcp0.get("ListenOverflows", 0)
        res.syn_retransmits = tcp1.get("TCPSynRetrans", 0) - tcp0.get("TCPSynRetrans", 0)
        if ev["event"] == "ready":
            print(
                f"  connect: {ev['connected']:,}/{args.devices:,} in {ev['connect_s']:.2f} s, "
                f"simulator CPU {ev['connect_cpu_s']:.2f} s, "
                f"mosquitto CPU {res.connect_mosquitto_cpu_s:.2f} s, "
                f"accept-queue overflows {res.listen_overflows}, SYN retransmits {res.syn_retransmits}, "
                f"errors {ev['errors']}",
                flush=True,
            )
            ev = await child.event(deadline)
            if ev["event"] == "window_start":
                observer.reset_peaks()
                c0, m0, h0, s0 = (
                    child.cpu_seconds(),
                    broker.cpu_seconds(),
                    host_busy_seconds(),
                    cpu_seconds(me),
                )
                t0 = time.perf_counter()
                ev = await child.event(deadline)
                if ev["event"] == "window_end":
                    wall = time.perf_counter() - t0
                    c1, m1, h1, s1 = (
                        child.cpu_seconds(),
                        broker.cpu_seconds(),
                        host_busy_seconds(),
                        cpu_seconds(me),
                    )
                    res.mosquitto_cpu_pct = 100 * (m1 - m0) / wall
                    ours = (c1 - c0) + (m1 - m0) + (s1 - s0)
                    res.other_cpu_pct = max(0.0, 100 * ((h1 - h0) - ours) / wall)
                    res.broker_clients = observer.peaks.get("clients", 1) - 1  # minus the observer
                    res.broker_subscriptions = observer.peaks.get("subscriptions", 3) - 3
                    ev = await child.event(deadline)
        elif ev["event"] == "connect_timeout":
            print(f"  ! connect: {ev['connected']:,}/{args.devices:,} connected at the cap", flush=True)
            ev = await child.event(deadline)
        if ev["event"] != "result":
            raise BenchError(f"unexpected event from the child: {ev}")
        fill(res, ev)
        broker.check_alive()
        rc = child.wait(10)
        await check_delivery(args, res, observer, received0)
        await check_statuses(args, res, observer)
        if rc not in (0, None):
            res.error = (res.error + "; " if res.error else "") + f"child exit code {rc}"
        print(summary_line(res), flush=True)
    except BenchError as exc:
        res.error = str(exc)
        if res.status == "not run":
            res.status = "error"
        print(f"  ! {exc}", flush=True)
    finally:
        try:
            if child is not None:
                child.stop()
            if observer is not None:
                await observer.stop()
        finally:
            broker.stop()  # even when cancelled (Ctrl-C, SIGTERM) while cleaning up
    return res


async def check_delivery(args: argparse.Namespace, res: Run, observer: SysObserver, received0: int) -> None:
    """Coarse: did the broker receive (about) every telemetry message the simulator says it sent?

    The naive simulator counts a publish when aiomqtt's `publish()` returns; publishes cut short by
    the stop may still have reached the broker, so up to `telemetry_attempted` is fine.
    """
    sent = res.telemetry_total
    if sent is None:
        return
    got = await observer.wait_received(received0 + sent, args.sys_wait)
    if got is None:
        res.delivery = "no $SYS data"
        return
    res.broker_received = got = got - received0
    most = res.telemetry_attempted if res.telemetry_attempted is not None else sent
    ok = 0.99 * sent <= got <= most
    res.delivery = f"{got:,}/{sent:,}" + ("" if ok else " MISMATCH")
    if res.telemetry_attempted is not None and res.telemetry_attempted != sent:
        res.delivery += f" (+{res.telemetry_attempted - sent:,} cut short)"


async def check_statuses(args: argparse.Namespace, res: Run, observer: SysObserver) -> None:
    """Coarse: one retained status message per device (birth, then the offline status)."""
    res.retained_statuses = await observer.count_statuses(args.devices, args.sys_wait)
    if res.retained_statuses is not None and res.retained_statuses < args.devices:
        res.delivery += f"; only {res.retained_statuses:,} retained statuses"


def fill(res: Run, ev: dict[str, Any]) -> None:
    res.child = {k: v for k, v in ev.items() if k != "event"}
    res.status = ev.get("status", "?")
    if res.status not in ("ok",):
        res.error = ev.get("error") or res.status
    for key in ("connect_s", "connected", "rss_before_kb", "rss_after_kb", "window_s", "shutdown_s"):
        if key in ev:
            setattr(res, key, ev[key])
    res.published_total = ev.get("published_total")
    res.telemetry_total = ev.get("telemetry_total")
    res.telemetry_attempted = ev.get("telemetry_attempted")
    res.acked_total = ev.get("acked_total")
    res.errors = int(ev.get("errors", 0))
    res.last_error = str(ev.get("last_error", ""))
    if res.sim in LEANS and ev.get("fleet_sha256") and ev["fleet_sha256"] != FLEET_SHA[0]:
        res.error = (res.error + "; " if res.error else "") + (
            f"fleet/*.py changed during the benchmark (sha256 {ev['fleet_sha256']}): rerun"
        )
    if ev.get("problem"):
        res.error = (res.error + "; " if res.error else "") + str(ev["problem"])
    if "connect_cpu_s" in ev and res.connect_s:
        res.connect_cpu_pct = 100 * ev["connect_cpu_s"] / res.connect_s
    if res.rss_before_kb is not None and res.rss_after_kb is not None and res.devices:
        res.kb_per_device = (res.rss_after_kb - res.rss_before_kb) / res.devices
    if res.window_s:
        cpu = float(ev["window_cpu_s"])
        res.published_in_window = int(ev["published_in_window"])
        res.cpu_pct = 100 * cpu / res.window_s
        res.msg_per_s = res.published_in_window / res.window_s
        res.msg_per_cpu_s = res.published_in_window / cpu if cpu > 0 and res.phase != "idle" else None


def summary_line(r: Run) -> str:
    parts = [f"  {r.phase}: {r.status}"]
    if r.phase == "idle":
        parts.append(f"CPU {fmt(r.cpu_pct, '.2f')} % over {fmt(r.window_s, '.1f')} s")
        parts.append(
            f"RSS {fmt(r.rss_before_kb and r.rss_before_kb / 1024, '.1f')} -> "
            f"{fmt(r.rss_after_kb and r.rss_after_kb / 1024, '.1f')} MB = "
            f"{fmt(r.kb_per_device, '.1f')} KB/device"
        )
    else:
        parts.append(
            f"{fmt(r.msg_per_s, ',.0f')} msg/s at {fmt(r.cpu_pct, '.0f')} % CPU = "
            f"{fmt(r.msg_per_cpu_s, ',.0f')} msg per CPU-s"
        )
    parts += [
        f"mosquitto {fmt(r.mosquitto_cpu_pct, '.0f')} %",
        f"other {fmt(r.other_cpu_pct, '.0f')} %",
        f"broker sees {fmt(r.broker_clients, ',d')} clients / "
        f"{fmt(r.broker_subscriptions, ',d')} subscriptions",
        f"broker got / sent telemetry {r.delivery}",
        f"retained statuses {fmt(r.retained_statuses, ',d')}",
        f"shutdown {fmt(r.shutdown_s, '.1f')} s",
        f"errors {r.errors}" + (f" (last: {r.last_error})" if r.last_error else ""),
    ]
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| "
        + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        + " |"
        for r in rows
    ]
    return "\n".join([line, sep, *body])


def connect_cell(r: Run | None) -> str:
    if r is None:
        return "-"
    if r.connect_s is None:
        return "timeout" if r.status.startswith("connect timeout") else "error"
    return f"{r.connect_s:.2f}"


def load_cell(r: Run | None) -> str:
    if r is None or r.msg_per_cpu_s is None:
        return "-" if r is None else "error"
    cell = f"{r.msg_per_cpu_s:,.0f}"
    return cell + (" SATURATED" if (r.cpu_pct or 0) >= 90 else "")


def report(runs: list[Run], args: argparse.Namespace) -> str:
    by = {(r.sim, r.phase): r for r in runs}
    sims = [s for s in (LEAN, NAIVE) if any(r.sim == s for r in runs)]
    base = NAIVE if NAIVE in sims else None

    def row(
        name: str, get: Callable[[Run | None], str], val: Callable[[Run | None], float | None], **kw: str
    ) -> list[str]:
        lean, naive = by.get((LEAN, kw["phase"])), by.get((NAIVE, kw["phase"]))
        cells = [name, get(lean)]
        if base:
            cells += [get(naive), ratio(val(lean), val(naive))]
        return [*cells, kw["target"], kw["notes"]]

    def conn(r: Run | None) -> float | None:
        return None if r is None else r.connect_s

    def mpc(r: Run | None) -> float | None:
        return None if r is None else r.msg_per_cpu_s

    def idle(r: Run | None) -> float | None:
        return None if r is None else r.cpu_pct

    def kb(r: Run | None) -> float | None:
        return None if r is None else r.kb_per_device

    rows = [
        row(
            "connect s (idle run) ↓",
            connect_cell,
            conn,
            phase="idle",
            target="<= 3 s",
            notes=NOTES_AIOMQTT["connect"],
        ),
        row("connect s (qos0 run) ↓", connect_cell, conn, phase="qos0", target="", notes=""),
        row("connect s (qos1 run) ↓", connect_cell, conn, phase="qos1", target="", notes=""),
        row(
            "msg per CPU-s, QoS 0 ↑",
            load_cell,
            mpc,
            phase="qos0",
            target=">= 20k",
            notes=NOTES_AIOMQTT["qos0"],
        ),
        row(
            "msg per CPU-s, QoS 1 ↑",
            load_cell,
            mpc,
            phase="qos1",
            target=">= 12k",
            notes=NOTES_AIOMQTT["qos1"],
        ),
        row(
            "msg/s, QoS 0 (CPU %)",
            lambda r: "-" if r is None or r.msg_per_s is None else f"{r.msg_per_s:,.0f} ({r.cpu_pct:.0f} %)",
            lambda r: None if r is None else r.msg_per_s,
            phase="qos0",
            target="",
            notes="",
        ),
        row(
            "msg/s, QoS 1 (CPU %)",
            lambda r: "-" if r is None or r.msg_per_s is None else f"{r.msg_per_s:,.0f} ({r.cpu_pct:.0f} %)",
            lambda r: None if r is None else r.msg_per_s,
            phase="qos1",
            target="",
            notes="",
        ),
        row(
            "idle CPU % of a core ↓",
            lambda r: fmt(idle(r), ".2f"),
            idle,
            phase="idle",
            target="<= 2 %",
            notes=NOTES_AIOMQTT["idle"],
        ),
        row(
            "KB per device ↓",
            lambda r: fmt(kb(r), ".1f"),
            kb,
            phase="idle",
            target="<= 12 KB",
            notes=NOTES_AIOMQTT["kb"],
        ),
    ]
    headers = ["figure", "lean (fleet.simulator)"]
    if base:
        headers += ["aiomqtt per device", "lean/aiomqtt"]
    headers += ["target", "FLEET-NOTES aiomqtt"]
    out = [
        f"\n{args.devices:,} devices, one process each (↓ lower is better, ↑ higher is better)",
        table(headers, rows),
    ]
    out += mqtt5_report(by)

    detail = []
    for r in runs:
        detail.append(
            [
                f"{r.sim} {r.phase}",
                connect_cell(r),
                fmt(r.listen_overflows, "d"),
                fmt(r.cpu_pct, ".1f"),
                fmt(r.mosquitto_cpu_pct, ".0f"),
                fmt(r.other_cpu_pct, ".0f"),
                fmt(r.kb_per_device, ".1f"),
                fmt(r.rss_after_kb and r.rss_after_kb / 1024, ".0f"),
                f"{fmt(r.broker_clients, ',d')} / {fmt(r.broker_subscriptions, ',d')}",
                r.delivery,
                fmt(r.retained_statuses, ",d"),
                fmt(r.shutdown_s, ".1f"),
                str(r.errors),
            ]
        )
    out += [
        "\nper run",
        table(
            [
                "run",
                "connect s",
                "listen ovf",
                "sim CPU %",
                "mosquitto CPU %",
                "other CPU %",
                "KB/dev",
                "RSS MB",
                "broker clients / subs",
                "broker got / sent telemetry",
                "retained statuses",
                "shutdown s",
                "errors",
            ],
            detail,
        ),
    ]
    out.append("\nacceptance targets (lean):")
    out += ["  " + line for line in targets(by, args)]
    for r in runs:
        if r.error:
            out.append(f"\nERROR {r.sim} {r.phase}: {r.error}")
        if r.last_error:
            out.append(f"\nlast simulator error, {r.sim} {r.phase} ({r.errors} in all): {r.last_error}")
    busy = [r for r in runs if (r.other_cpu_pct or 0) > OTHER_CPU_WARN]
    if busy:
        out.append(
            f"\nWARNING: other processes used > {OTHER_CPU_WARN:.0f} % CPU during "
            + ", ".join(f"{r.sim} {r.phase}" for r in busy)
            + ": those figures are disturbed; rerun on a quiet machine."
        )
    return "\n".join(out)


def v5_cpu_ratio(by: dict[tuple[str, str], Run], phase: str) -> float | None:
    """CPU per message of the MQTT 5 fleet over the 3.1.1 fleet's, in one phase of this run."""
    v311, v5 = by.get((LEAN, phase)), by.get((LEAN5, phase))
    if v311 is None or v5 is None or not v311.msg_per_cpu_s or not v5.msg_per_cpu_s:
        return None
    return v311.msg_per_cpu_s / v5.msg_per_cpu_s


def mqtt5_report(by: dict[tuple[str, str], Run]) -> list[str]:
    """The MQTT 5 fleet beside the 3.1.1 one of the same run: CPU per message, connect, memory, bytes."""
    phases = [phase for phase in PHASES if (LEAN5, phase) in by]
    if not phases:
        return []
    rows = []
    for phase in phases:
        v311, v5 = by.get((LEAN, phase)), by[(LEAN5, phase)]
        ratio_ = v5_cpu_ratio(by, phase)
        rows.append(
            [
                phase,
                load_cell(v311) if phase != "idle" else "-",
                load_cell(v5) if phase != "idle" else "-",
                "-" if ratio_ is None else f"{ratio_:.2f}",
                connect_cell(v5),
                fmt(v5.kb_per_device, ".1f"),
            ]
        )
    headers = [
        "phase",
        "msg per CPU-s 3.1.1",
        "msg per CPU-s v5",
        "v5 CPU per msg / 3.1.1",
        "v5 connect s",
        "v5 KB/device",
    ]
    out = [
        "\nMQTT 5 devices (user properties, topic alias) beside 3.1.1, same run",
        table(headers, rows),
    ]
    for phase in phases:
        v311, v5 = by.get((LEAN, phase)), by[(LEAN5, phase)]
        sizes = {**(v311.child.get("publish_bytes", {}) if v311 else {}), **v5.child.get("publish_bytes", {})}
        saved, sent = v5.child.get("alias_bytes_saved"), v5.telemetry_total
        per_msg = f"{saved / sent:.1f}" if saved is not None and sent else "-"
        out.append(
            f"  {phase}: bytes per telemetry PUBLISH: 3.1.1 {sizes.get('mqtt311', '-')}, "
            f"v5 with the topic {sizes.get('mqtt5_topic', '-')}, "
            f"v5 with the alias {sizes.get('mqtt5_alias', '-')}; "
            f"aliases saved {per_msg} B per message over the run"
            + (f"; broker DISCONNECTs {v5.child['disconnects']}" if v5.child.get("disconnects") else "")
        )
        if phase == "qos0":
            break
    return out


def targets(by: dict[tuple[str, str], Run], args: argparse.Namespace) -> list[str]:
    def mark(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    lines = []
    if args.devices < TARGET_DEVICES:
        lines.append(f"(the targets are for {TARGET_DEVICES:,} devices; this run has {args.devices:,})")
    r = by.get((LEAN, "idle"))
    if r is not None:
        ok = r.connect_s is not None and r.connect_s <= TARGET_CONNECT_S and r.connected >= args.devices
        lines.append(
            f"[{mark(ok)}] all devices connected in <= {TARGET_CONNECT_S:.0f} s: {connect_cell(r)} s"
        )
        ok = r.cpu_pct is not None and r.cpu_pct <= TARGET_IDLE_PCT
        lines.append(
            f"[{mark(ok)}] idle cost <= {TARGET_IDLE_PCT:.0f} % of a core: {fmt(r.cpu_pct, '.2f')} % "
            f"over {fmt(r.window_s, '.0f')} s"
        )
        ok = r.kb_per_device is not None and r.kb_per_device <= TARGET_KB_PER_DEVICE
        lines.append(
            f"[{mark(ok)}] <= {TARGET_KB_PER_DEVICE:.0f} KB per device: {fmt(r.kb_per_device, '.1f')} KB"
        )
    for phase, goal in TARGET_MSG_PER_CPU_S.items():
        r = by.get((LEAN, phase))
        if r is not None:
            ok = r.msg_per_cpu_s is not None and r.msg_per_cpu_s >= goal
            lines.append(
                f"[{mark(ok)}] >= {goal:,.0f} msg per simulator CPU-second at QoS {phase[-1]}: {load_cell(r)}"
            )
    for phase in ("qos0", "qos1"):
        ratio_ = v5_cpu_ratio(by, phase)
        if ratio_ is not None:
            lines.append(
                f"[{mark(ratio_ <= TARGET_V5_CPU_RATIO)}] MQTT 5 costs <= {TARGET_V5_CPU_RATIO - 1:.0%} "
                f"more CPU per message than 3.1.1 at QoS {phase[-1]}, same run: x{ratio_:.2f}"
            )
    return lines


# --------------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--devices", type=int, default=10_000, help="devices in the one simulator process")
    p.add_argument("--seconds", type=float, default=5.0, help="load measurement window (s)")
    p.add_argument("--baseline", choices=(NAIVE, "none"), default=NAIVE, help="baseline simulator")
    p.add_argument(
        "--mqtt5", choices=("on", "off"), default="on", help="also run the fleet as MQTT 5 devices"
    )
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {','.join(PHASES)}")
    p.add_argument(
        "--idle-seconds", type=float, help="idle measurement window (s); None: the same as --seconds"
    )
    p.add_argument("--rate", type=float, default=20_000.0, help="offered msg/s under load (sets interval)")
    p.add_argument("--connect-rate", type=float, default=20_000.0, help="fleet-wide connects/s")
    p.add_argument("--warmup", type=float, default=2.0, help="load before the load window opens (s)")
    p.add_argument("--settle", type=float, default=1.0, help="pause after connect before RSS / idle (s)")
    p.add_argument("--connect-timeout", type=float, default=60.0, help="cap on the connect phase (s)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0, help="cap on a simulator's shutdown (s)")
    p.add_argument("--ready-timeout", type=float, default=15.0, help="cap on Mosquitto's start-up (s)")
    p.add_argument("--sys-wait", type=float, default=5.0, help="wait for $SYS to count every PUBLISH (s)")
    p.add_argument("--log-dir", type=Path, help="keep Mosquitto and child logs here; None: a temp dir")
    # The child runner mode (one simulator, one phase); not for direct use.
    p.add_argument("--child", choices=(LEAN, LEAN5, NAIVE), help=argparse.SUPPRESS)
    p.add_argument("--phase", choices=PHASES, default="idle", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.idle_seconds is None:
        args.idle_seconds = args.seconds
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    bad = [x for x in args.phases if x not in PHASES]
    if bad or not args.phases:
        p.error(f"--phases: unknown {bad}; known: {list(PHASES)}")
    if args.devices < 1 or args.seconds <= 0 or args.idle_seconds <= 0 or args.rate <= 0:
        p.error("--devices, --seconds, --idle-seconds and --rate must be positive")
    if args.child is not None and args.port is None:
        p.error("--child needs --port")
    if args.child is None and not Path(MOSQUITTO_BIN).exists():
        p.error(f"mosquitto not found at {MOSQUITTO_BIN} (apt-get install mosquitto)")
    return args


async def amain(args: argparse.Namespace, runs: list[Run]) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    sims = [LEAN] + ([LEAN5] if args.mqtt5 == "on" else []) + ([NAIVE] if args.baseline == NAIVE else [])
    with contextlib.ExitStack() as stack:
        workdir = support.workdir(stack, args.log_dir, "fleet_scale-")
        for phase in args.phases:
            for sim in sims:
                runs.append(await run_one(args, sim, phase, workdir))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return child_main(args)
    fd_limit = raise_fd_limit(args.devices + 200)
    started = datetime.datetime.now(datetime.UTC)
    command = " ".join([".venv/bin/python", "bench/fleet_scale.py", *sys.argv[1:]])
    print(f"fleet_scale {started:%Y-%m-%d %H:%M} UTC: {command}")
    print(
        f"  {os.cpu_count()} CPUs, Python {platform.python_version()}, fd limit {fd_limit}, "
        f"{args.devices:,} devices, payload {PAYLOAD_BYTES} B, keepalive {KEEPALIVE_S} s, "
        f"offered {args.rate:,.0f} msg/s under load (interval {args.devices / args.rate:.3g} s +-10 %), "
        f"connect rate {args.connect_rate:,.0f}/s"
    )
    print(
        "  baseline: "
        + (
            "naive simulator written in this script (one aiomqtt.Client per device, one loop)"
            if args.baseline == NAIVE
            else "none"
        )
    )
    source = fleet_fingerprint()
    FLEET_SHA[0] = source["fleet_sha256"]
    print(
        f"  simulator: fleet/*.py sha256 {source['fleet_sha256']} (newest file "
        f"{source['fleet_newest_mtime']}), git {source.get('git_head', '?')}"
    )
    runs: list[Run] = []
    try:
        asyncio.run(amain(args, runs))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted: children and brokers stopped", file=sys.stderr)
        if runs:
            print("results so far:" + report(runs, args))
        return 130
    print(report(runs, args))
    if args.json:
        doc: dict[str, Any] = {
            **support.run_record(started, command, args),
            "simulator_source": source,
            "targets": {
                "devices": TARGET_DEVICES,
                "connect_s": TARGET_CONNECT_S,
                "msg_per_cpu_s": TARGET_MSG_PER_CPU_S,
                "idle_pct": TARGET_IDLE_PCT,
                "kb_per_device": TARGET_KB_PER_DEVICE,
            },
            "runs": [asdict(r) for r in runs],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 1 if any(r.error for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
