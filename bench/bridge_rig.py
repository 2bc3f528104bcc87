"""The processes and the instruments of `bench/bridge_scale.py`: Mosquitto, a bridge (`fleet bridge`
or the naive one), the consumer children (`bench/bridge_consumers.mjs` or `bench/bridge_consumers.py`,
by `--load`), the publisher, and one measured window (`Step`).

Every process runs in its own session and is stopped by its own PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from bridge_consumers import HOST, LINE_PREFIX, TRANSPORTS
from support import BenchError, Proc, cpu_seconds, free_port, host_busy_seconds, log_tail

ROOT = Path(__file__).resolve().parent.parent
CONSUMERS = Path(__file__).resolve().parent / "bridge_consumers.py"
NODE_CONSUMERS = Path(__file__).resolve().parent / "bridge_consumers.mjs"
NODE_MODULES = ROOT / "tests" / "node" / "node_modules"
NODE_PACKAGES = ("ws", "@grpc/grpc-js")  # what bridge_consumers.mjs requires from tests/node
NODE_BIN = shutil.which("node")
LOADS = ("node", "python")  # the runtimes of the consumer children
NAIVE = Path(__file__).resolve().parent / "naive_bridge.py"
MOSQUITTO_BIN = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
TASKSET = shutil.which("taskset")
PAYLOAD_BYTES = 140
DEVICES = 100
PREFILL_RATE = 6000.0  # msg/s that fill the bridge's replay ring before the consumers connect
SATURATED_PCT = 95.0  # the bridge's core is full
CLIENT_BOUND_PCT = 80.0  # the load generator's core is full: the run is invalid
OVERLOAD_SHARE = 0.01  # consumers' queues dropped >= 1 % of the deliveries offered to them
HEALTHZ_EVERY_S = 0.2  # /healthz probes during an overload step
LATENCY_SAMPLES_PER_S = 30_000  # latency windows record about this many deliveries a second
METRICS_CAP_S = 15.0  # /metrics of a bridge that gets no answer this long: the phase fails
HEALTHZ_CAP_S = 5.0  # a probe without an answer this long counts as this long


# --------------------------------------------------------------------------------------------
# Processes: Mosquitto, the bridge, the consumer children.  Each stopped by its own PID.
# --------------------------------------------------------------------------------------------


def pinned(core: int | None, cmd: list[str]) -> list[str]:
    if core is None or TASKSET is None:
        return cmd
    return [TASKSET, "-c", str(core), *cmd]


class Mosquitto(Proc):
    def __init__(self, workdir: Path, tag: str, core: int | None) -> None:
        self.port = free_port()
        conf = workdir / f"mosquitto-{tag}.conf"
        # $SYS every second: the bench reads the messages Mosquitto dropped (mosquitto_dropped).
        conf.write_text(f"listener {self.port} {HOST}\nallow_anonymous true\nsys_interval 1\n")
        conf.chmod(0o644)
        super().__init__(
            "mosquitto", pinned(core, [MOSQUITTO_BIN, "-c", str(conf)]), workdir / f"mosquitto-{tag}.log"
        )

    async def wait_ready(self, limit_s: float) -> None:
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


_SERVING = re.compile(r"(?:fleet|naive) bridge: serving (http|grpc)://[^:]+:(\d+)")
BRIDGES = ("fleet", "naive")


class Bridge(Proc):
    """`python -m fleet bridge` (kind "fleet") or `bench/naive_bridge.py` (kind "naive") on free
    ports (the bridge picks them and prints them)."""

    def __init__(
        self,
        workdir: Path,
        tag: str,
        broker_port: int,
        core: int | None,
        config: Path | None,
        python: str,
        kind: str = "fleet",
    ) -> None:
        if kind == "naive":
            cmd = [python, str(NAIVE), "--broker-port", str(broker_port)]
        else:
            cmd = [python, "-m", "fleet", "bridge", "--broker", f"mqtt://{HOST}:{broker_port}"]
            cmd += ["--host", HOST, "--http-port", "0", "--grpc-port", "0"]
            if config is not None:
                cmd += ["--config", str(config)]
        super().__init__(f"{kind} bridge", pinned(core, cmd), workdir / f"bridge-{tag}.log")
        self.kind = kind
        self.http_port = 0
        self.grpc_port = 0

    def _read_ports(self) -> None:
        with contextlib.suppress(OSError):
            for kind, port in _SERVING.findall(self.log_path.read_text(errors="replace")):
                if kind == "http":
                    self.http_port = int(port)
                else:
                    self.grpc_port = int(port)

    async def wait_ready(self, limit_s: float) -> None:
        """Until the log names both ports and /readyz says the broker is connected."""
        deadline = time.monotonic() + limit_s
        status = None
        while time.monotonic() < deadline:
            self.check_alive()
            if not (self.http_port and self.grpc_port):
                self._read_ports()
            if self.http_port and self.grpc_port:
                with contextlib.suppress(OSError, TimeoutError, ValueError):
                    status, _ = await http_get(self.http_port, "/readyz", 2.0)
                    if status == 200:
                        return
            await asyncio.sleep(0.05)
        raise BenchError(
            f"the bridge was not ready after {limit_s:.0f} s (ports {self.http_port}/{self.grpc_port}, "
            f"/readyz {status}); log tail:\n{log_tail(self.log_path)}"
        )

    def connections(self) -> dict[str, int]:
        """Established TCP connections of the bridge on its HTTP and gRPC ports."""
        out = {"http": 0, "grpc": 0}
        if self.ps is None:
            return out
        with contextlib.suppress(psutil.Error):
            for c in self.ps.net_connections(kind="tcp"):
                if c.status == psutil.CONN_ESTABLISHED and c.laddr:
                    if c.laddr.port == self.http_port:
                        out["http"] += 1
                    elif c.laddr.port == self.grpc_port:
                        out["grpc"] += 1
        return out

    async def metrics(self, limit_s: float = METRICS_CAP_S) -> dict[str, float]:
        try:
            status, body = await http_get(self.http_port, "/metrics", limit_s)
        except (OSError, TimeoutError, ValueError, IndexError) as exc:
            raise BenchError(
                f"the {self.kind} bridge did not answer /metrics within {limit_s:g} s ({exc!r})"
            ) from None
        if status != 200:
            raise BenchError(f"/metrics answered {status}")
        return parse_metrics(body.decode())


def node_version() -> str | None:
    """`node --version` (such as "v20.20.2"), or None without a working node on PATH."""
    if NODE_BIN is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([NODE_BIN, "--version"], capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    return None


def node_missing(version: str | None) -> str | None:
    """Why the Node.js consumers (`bench/bridge_consumers.mjs`) cannot run; None when they can."""
    if version is None:
        return "no working `node` on PATH"
    major = version.lstrip("v").split(".")[0]
    if not major.isdigit() or int(major) < 20:
        return f"node {version} is older than 20"
    missing = [name for name in NODE_PACKAGES if not (NODE_MODULES / name / "package.json").is_file()]
    if missing:
        return f"{', '.join(missing)} not installed in tests/node (make node-deps)"
    return None


class Child(Proc):
    """A consumer child process: commands on its stdin, JSON event lines on its stdout."""

    def __init__(self, name: str, cmd: list[str], log_path: Path) -> None:
        super().__init__(name, cmd, log_path, pipes=True)
        self.reader: asyncio.StreamReader | None = None
        self._transport: asyncio.BaseTransport | None = None

    async def attach(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        reader = asyncio.StreamReader(limit=1 << 22)
        self._transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), self.proc.stdout
        )
        self.reader = reader

    async def event(self, limit_s: float) -> dict[str, Any]:
        assert self.reader is not None
        deadline = time.monotonic() + limit_s
        for _ in range(10_000):  # skip anything else the child printed
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                line = await asyncio.wait_for(self.reader.readline(), left)
            except TimeoutError:
                break
            if not line:
                raise BenchError(f"{self.name} exited early; its stderr:\n{log_tail(self.log_path)}")
            text = line.decode(errors="replace")
            if text.startswith(LINE_PREFIX):
                event: dict[str, Any] = json.loads(text[len(LINE_PREFIX) :])
                if event["event"] == "failed":
                    raise BenchError(f"{self.name}: {event.get('error')} {event.get('errors') or ''}")
                return event
        raise BenchError(f"{self.name} did not answer within {limit_s:.0f} s")

    async def request(self, command: str, limit_s: float = 10.0) -> dict[str, Any]:
        assert self.proc is not None
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command.encode() + b"\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise BenchError(f"{self.name}: cannot send {command!r}: {exc}") from None
        return await self.event(limit_s)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.flush()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(3)
        if self._transport is not None:
            self._transport.close()
        super().stop(timeout)


async def http_get(port: int, path: str, limit_s: float) -> tuple[int, bytes]:
    """One HTTP/1.1 GET with Connection: close; (status, body)."""
    async with asyncio.timeout(limit_s):
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
            data = await reader.read(-1)
        finally:
            writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        out = bytearray()
        pos = 0
        for _ in range(100_000):
            nl = body.find(b"\r\n", pos)
            size = int(body[pos:nl].split(b";")[0], 16) if nl >= 0 else 0
            if size == 0:
                break
            out += body[nl + 2 : nl + 2 + size]
            pos = nl + 2 + size + 2
        body = bytes(out)
    return status, body


_SAMPLE = re.compile(r'^(fleet_bridge_\w+?)(?:\{transport="(\w+)"\})? ([0-9.eE+-]+)$', re.MULTILINE)


def parse_metrics(text: str) -> dict[str, float]:
    """`name` or `name:transport` -> value, for the bridge's own families."""
    return {(f"{n}:{t}" if t else n): float(v) for n, t, v in _SAMPLE.findall(text)}


# --------------------------------------------------------------------------------------------
# The publisher: MQTT 3.1.1 QoS 0, paced, in this process.
# --------------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    for _ in range(4):
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            break
    return bytes(out)


class Publisher(asyncio.Protocol):
    """Publishes `rate` msg/s (QoS 0) in batches every ~2 ms; `sent` counts what it wrote."""

    TICK = 0.002

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.buf = b""
        self.sent = 0
        self.rate = 0.0
        self._base_t = 0.0
        self._base_n = 0
        self.paused = False
        self.lost = False
        self.task: asyncio.Task[None] | None = None
        self.topics = [_mqtt_str(b"fleet/dev-%03d/telemetry" % i) for i in range(DEVICES)]
        self.devices = [b"dev-%03d" % i for i in range(DEVICES)]
        self.seq = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.connack.done() and len(self.buf) >= 4:
            self.connack.set_result(self.buf[:4])
        self.buf = b""  # QoS 0 and keepalive 0: nothing else is expected

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.connack.done():
            self.connack.set_exception(ConnectionError(f"mosquitto closed the connection ({exc!r})"))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    @classmethod
    async def open(cls, port: int) -> Publisher:
        loop = asyncio.get_running_loop()
        _, pub = await asyncio.wait_for(loop.create_connection(cls, HOST, port), 5.0)
        assert pub.transport is not None
        cid = b"bench-publisher"
        body = _mqtt_str(b"MQTT") + b"\x04\x02\x00\x00" + _mqtt_str(cid)  # clean, keepalive 0
        pub.transport.write(b"\x10" + _varint(len(body)) + body)
        ack = await asyncio.wait_for(pub.connack, 5.0)
        if ack[0] != 0x20 or ack[3] != 0:
            raise BenchError(f"publisher CONNACK {ack!r}")
        pub.task = asyncio.create_task(pub._run(), name="publisher")
        return pub

    def set_rate(self, rate: float) -> None:
        self._base_t = time.perf_counter()
        self._base_n = self.sent
        self.rate = rate

    def _payload(self, ts: int, i: int) -> bytes:
        self.seq += 1
        head = b'{"ts":%d,"seq":%d,"device":"%s","temperature":%.2f,"battery":%.1f,"pad":"' % (
            ts,
            self.seq,
            self.devices[i],
            20 + (self.seq % 1000) / 100,
            100 - (self.seq % 1000) / 10,
        )
        return head + b"x" * max(0, PAYLOAD_BYTES - len(head) - 2) + b'"}'

    async def _run(self) -> None:
        for _ in range(1 << 62):
            await asyncio.sleep(self.TICK)
            transport = self.transport
            if transport is None or self.lost or transport.is_closing():
                return
            if self.rate <= 0 or self.paused:
                continue
            due = int((time.perf_counter() - self._base_t) * self.rate) - (self.sent - self._base_n)
            due = min(due, max(1, int(self.rate * 0.05)))  # never more than 50 ms worth at once
            if due <= 0:
                continue
            ts = time.time_ns() // 1000
            parts: list[bytes] = []
            topics = self.topics
            for k in range(due):
                i = (self.sent + k) % DEVICES
                payload = self._payload(ts, i)
                parts += (b"\x30", _varint(len(topics[i]) + len(payload)), topics[i], payload)
            transport.write(b"".join(parts))
            self.sent += due

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(Exception):
                self.transport.write(b"\xe0\x00")  # DISCONNECT
            self.transport.close()


def _mqtt_str(s: bytes) -> bytes:
    return struct.pack("!H", len(s)) + s


SYS_DROPPED = b"$SYS/broker/publish/messages/dropped"


async def mosquitto_dropped(port: int, limit_s: float = 3.0) -> int | None:
    """Messages Mosquitto dropped so far (for example for a subscriber that does not read fast
    enough), from its retained `$SYS` topic; None when it does not answer within `limit_s`."""
    with contextlib.suppress(OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
        async with asyncio.timeout(limit_s):
            reader, writer = await asyncio.open_connection(HOST, port)
            try:
                body = _mqtt_str(b"MQTT") + b"\x04\x02\x00\x00" + _mqtt_str(b"bench-sys-%d" % time.time_ns())
                writer.write(b"\x10" + _varint(len(body)) + body)
                sub = b"\x00\x01" + _mqtt_str(SYS_DROPPED) + b"\x00"
                writer.write(b"\x82" + _varint(len(sub)) + sub)
                for _ in range(20):
                    kind = (await reader.readexactly(1))[0]
                    length = shift = 0
                    for _ in range(4):
                        b = (await reader.readexactly(1))[0]
                        length |= (b & 0x7F) << shift
                        shift += 7
                        if not b & 0x80:
                            break
                    packet = await reader.readexactly(length)
                    if kind >> 4 == 3:  # PUBLISH, QoS 0: topic, then the payload
                        (n,) = struct.unpack_from("!H", packet)
                        if packet[2 : 2 + n] == SYS_DROPPED:
                            return int(packet[2 + n :])
            finally:
                writer.close()
    return None


async def probe_healthz(port: int, until: asyncio.Event, every_s: float, times_ms: list[float]) -> None:
    """GET /healthz every `every_s` s until `until` is set; appends each response time (ms), or
    HEALTHZ_CAP_S as ms for a request that failed or got no answer within it."""
    for _ in range(1 << 30):
        if until.is_set():
            return
        t0 = time.perf_counter()
        try:
            status, _ = await http_get(port, "/healthz", HEALTHZ_CAP_S)
            ok = status == 200
        except (OSError, TimeoutError, ValueError, IndexError):
            ok = False
        times_ms.append(1000 * (time.perf_counter() - t0) if ok else 1000 * HEALTHZ_CAP_S)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), every_s)


def sample_every(rate: float, consumers: dict[str, int]) -> int:
    """Record the latency of one delivery in this many: about LATENCY_SAMPLES_PER_S a second."""
    return max(1, round(rate * sum(consumers.values()) / LATENCY_SAMPLES_PER_S))


def cores_busy_seconds() -> list[float]:
    """Per CPU: seconds spent busy so far (not idle, not waiting for I/O)."""
    out = []
    for t in psutil.cpu_times(percpu=True):
        idle = t.idle + sum(getattr(t, k, 0.0) for k in ("iowait", "steal", "guest", "guest_nice"))
        out.append(float(sum(t) - idle))
    return out


def intake_shed(metrics: dict[str, float]) -> float:
    """MQTT messages the bridge received but shed before fan-out (`fleet_bridge_shed_total`; the naive
    bridge has none). `fleet bridge` counts them in `fleet_bridge_events_in_total` too, and each as a
    drop for every consumer it was for."""
    return metrics.get("fleet_bridge_shed_total", 0.0)


# --------------------------------------------------------------------------------------------
# Measurement.
# --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    bridge_cpu: float
    bridge_rss: int
    children_cpu: float
    mosquitto_cpu: float
    own_cpu: float
    host_busy: float
    cores_busy: list[float]  # per CPU, seconds busy so far
    published: int
    metrics: dict[str, float]
    snaps: list[dict[str, Any]]
    mosquitto_dropped: int | None = None


@dataclass
class Step:
    phase: str
    rate: float
    consumers: dict[str, int]
    window_s: float = 0.0
    published_per_s: float = 0.0
    events_in_per_s: float = 0.0
    ingest_ratio: float | None = None  # (events_in - shed) / published over the window
    received_per_s: dict[str, float] = field(default_factory=dict)  # deliveries read by consumers
    offered_per_s: dict[str, float] = field(default_factory=dict)  # queued by the hub (/metrics)
    drops_per_s: dict[str, float] = field(default_factory=dict)
    drop_share: float | None = None  # drops / events offered to the queues (drop-oldest)
    per_consumer_per_s: dict[str, float] = field(default_factory=dict)
    within_transport_min_max: dict[str, list[float]] = field(default_factory=dict)
    fairness: float | None = None  # min / max of the per-consumer rates across transports
    deliveries_per_s: float = 0.0
    deliveries_per_cpu_s: float | None = None
    bridge_cpu_pct: float = 0.0
    consumers_cpu_pct: float = 0.0
    consumers_us_per_delivery: float | None = None  # the consumer children's CPU µs per delivery read
    mosquitto_cpu_pct: float = 0.0
    bench_cpu_pct: float = 0.0
    client_core_pct: float = 0.0
    other_cpu_pct: float = 0.0
    bridge_rss_mb: float = 0.0
    closed: dict[str, int] = field(default_factory=dict)
    notices: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # publish -> read
    latency_out_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # bridge intake -> read
    latency_in_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # publish -> bridge intake
    # Per transport, per second of the window: [second, samples, p99 ms, max ms] (the worse process).
    timeline: dict[str, list[list[float]]] = field(default_factory=dict)
    intake_shed_per_s: float = 0.0  # messages the bridge's counters say it shed at intake
    mosquitto_dropped_per_s: float | None = None  # messages Mosquitto dropped ($SYS)
    queued: dict[str, float] = field(default_factory=dict)  # events in consumer queues at the end
    queued_change: float = 0.0  # events in all consumer queues: end minus start of the window
    healthz_ms: list[float] = field(default_factory=list)  # /healthz response times, when probed

    # How busy the two cores were, by every process: the bridge's (pinned) and the load generator's.
    # Unpinned, the bridge's own CPU and the load generator's processes stand in for them.
    bridge_core_busy_pct: float = 0.0
    loadgen_core_busy_pct: float = 0.0

    @property
    def saturated(self) -> bool:
        """The bridge's core was >= 95 % busy."""
        return self.bridge_core_busy_pct >= SATURATED_PCT

    @property
    def client_bound(self) -> bool:
        """The load generator's core was >= 80 % busy."""
        return self.loadgen_core_busy_pct >= CLIENT_BOUND_PCT

    @property
    def overloaded(self) -> bool:
        return self.drop_share is not None and self.drop_share >= OVERLOAD_SHARE


def _sum(snaps: list[dict[str, Any]], key: str) -> dict[str, int]:
    out = dict.fromkeys(TRANSPORTS, 0)
    for s in snaps:
        for t, v in s.get(key, {}).items():
            out[t] += v
    return out


def step_from(
    phase: str,
    rate: float,
    consumers: dict[str, int],
    a: Sample,
    b: Sample,
    cores: tuple[int | None, int | None] = (None, None),
) -> Step:
    """The step of the window from `a` to `b`; `cores`: the bridge's and the load generator's CPUs."""
    bridge_core, loadgen_core = cores
    dt = b.t - a.t
    st = Step(phase, rate, consumers, window_s=dt)
    st.published_per_s = (b.published - a.published) / dt
    ev_in = b.metrics.get("fleet_bridge_events_in_total", 0) - a.metrics.get(
        "fleet_bridge_events_in_total", 0
    )
    st.events_in_per_s = ev_in / dt
    if b.published > a.published:
        # A message the intake shed counts in events_in, but it was lost all the same.
        st.ingest_ratio = (ev_in - (intake_shed(b.metrics) - intake_shed(a.metrics))) / (
            b.published - a.published
        )
    ra, rb = _sum(a.snaps, "counts"), _sum(b.snaps, "counts")
    na, nb = _sum(a.snaps, "notes"), _sum(b.snaps, "notes")
    for t in TRANSPORTS:
        key = f"fleet_bridge_deliveries_total:{t}"
        st.offered_per_s[t] = (b.metrics.get(key, 0) - a.metrics.get(key, 0)) / dt
        key = f"fleet_bridge_drops_total:{t}"
        st.drops_per_s[t] = (b.metrics.get(key, 0) - a.metrics.get(key, 0)) / dt
        st.received_per_s[t] = (rb[t] - ra[t]) / dt
        st.notices[t] = nb[t] - na[t]
        if consumers.get(t):
            st.per_consumer_per_s[t] = st.received_per_s[t] / consumers[t]
            per_a = [x for s in a.snaps for x in s["per"][t]]
            per_b = [x for s in b.snaps for x in s["per"][t]]
            if len(per_a) == len(per_b) and per_a:
                rates = [(y - x) / dt for x, y in zip(per_a, per_b, strict=True)]
                st.within_transport_min_max[t] = [min(rates), max(rates)]
    offered = sum(st.offered_per_s.values())
    if offered > 0:
        st.drop_share = sum(st.drops_per_s.values()) / offered
    rates = [v for v in st.per_consumer_per_s.values()]
    if len(rates) > 1 and max(rates) > 0:
        st.fairness = min(rates) / max(rates)
    st.deliveries_per_s = sum(st.received_per_s.values())
    cpu = b.bridge_cpu - a.bridge_cpu
    read = sum(rb[t] - ra[t] for t in TRANSPORTS)
    st.deliveries_per_cpu_s = read / cpu if cpu > 0 else None
    st.bridge_cpu_pct = 100 * cpu / dt
    st.consumers_cpu_pct = 100 * (b.children_cpu - a.children_cpu) / dt
    st.consumers_us_per_delivery = 1e6 * (b.children_cpu - a.children_cpu) / read if read else None
    st.mosquitto_cpu_pct = 100 * (b.mosquitto_cpu - a.mosquitto_cpu) / dt
    st.bench_cpu_pct = 100 * (b.own_cpu - a.own_cpu) / dt
    st.client_core_pct = st.consumers_cpu_pct + st.mosquitto_cpu_pct + st.bench_cpu_pct
    busy = 100 * (b.host_busy - a.host_busy) / dt
    st.other_cpu_pct = max(0.0, busy - st.bridge_cpu_pct - st.client_core_pct)
    if bridge_core is not None and loadgen_core is not None:
        st.bridge_core_busy_pct = 100 * (b.cores_busy[bridge_core] - a.cores_busy[bridge_core]) / dt
        st.loadgen_core_busy_pct = 100 * (b.cores_busy[loadgen_core] - a.cores_busy[loadgen_core]) / dt
    else:
        st.bridge_core_busy_pct, st.loadgen_core_busy_pct = st.bridge_cpu_pct, st.client_core_pct
    st.bridge_rss_mb = b.bridge_rss / 2**20
    st.closed = _sum(b.snaps, "closed")
    for snap in b.snaps:
        st.latency_ms.update({t: v for t, v in snap.get("lat", {}).items() if v.get("n")})
        st.latency_out_ms.update({t: v for t, v in snap.get("lat_out", {}).items() if v.get("n")})
        st.latency_in_ms.update({t: v for t, v in snap.get("lat_in", {}).items() if v.get("n")})
    st.timeline = merge_timelines(b.snaps)
    st.intake_shed_per_s = (intake_shed(b.metrics) - intake_shed(a.metrics)) / dt
    if a.mosquitto_dropped is not None and b.mosquitto_dropped is not None:
        st.mosquitto_dropped_per_s = (b.mosquitto_dropped - a.mosquitto_dropped) / dt
    st.queued = {t: b.metrics.get(f"fleet_bridge_queued_events:{t}", 0.0) for t in TRANSPORTS}
    st.queued_change = sum(
        b.metrics.get(f"fleet_bridge_queued_events:{t}", 0.0)
        - a.metrics.get(f"fleet_bridge_queued_events:{t}", 0.0)
        for t in TRANSPORTS
    )
    return st


def merge_timelines(snaps: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """Per transport, the children's per-second rows merged: samples added, the worse p99 and max."""
    out: dict[str, list[list[float]]] = {}
    for t in TRANSPORTS:
        merged: dict[int, list[float]] = {}
        for snap in snaps:
            for sec, n, p99, mx in snap.get("timeline", {}).get(t, []):
                row = merged.setdefault(int(sec), [sec, 0, 0.0, 0.0])
                row[1] += n
                row[2] = max(row[2], p99)
                row[3] = max(row[3], mx)
        if merged:
            out[t] = [merged[k] for k in sorted(merged)]
    return out


class Rig:
    """Mosquitto, a bridge, the publisher and the consumer children of one phase."""

    def __init__(
        self, args: argparse.Namespace, workdir: Path, tag: str, kind: str, config: Path | None = None
    ) -> None:
        self.args = args
        self.tag = tag
        self.workdir = workdir
        self.mosquitto = Mosquitto(workdir, tag, args.client_core)
        self.bridge = Bridge(
            workdir, tag, self.mosquitto.port, args.bridge_core, config, args.bridge_python, kind
        )
        self.children: list[Child] = []
        self.want = dict.fromkeys(TRANSPORTS, 0)  # consumers the bridge should count
        self.publisher: Publisher | None = None
        self.me = psutil.Process()
        by_cores = args.judge_by == "cores"
        self.cores = (args.bridge_core, args.client_core) if by_cores else (None, None)

    async def start(self, layout: list[dict[str, int]]) -> None:
        args = self.args
        self.mosquitto.start()
        await self.mosquitto.wait_ready(args.ready_timeout)
        self.bridge.start()
        await self.bridge.wait_ready(args.ready_timeout)
        self.publisher = await Publisher.open(self.mosquitto.port)
        await self.prefill(args.prefill)
        await self.add_children(layout)

    async def add_children(self, layout: list[dict[str, int]]) -> list[Child]:
        """One consumer process per entry of `layout`; returns once the bridge counts them all."""
        args = self.args
        added: list[Child] = []
        for counts in layout:
            i = len(self.children)
            child = Child(
                f"consumers-{i}", self.child_cmd(counts), self.workdir / f"consumers-{self.tag}-{i}.log"
            )
            child.start()
            await child.attach()
            self.children.append(child)
            added.append(child)
        for child in added:
            ready = await child.event(args.connect_timeout + 30)
            if ready["event"] != "ready":
                raise BenchError(f"{child.name}: expected ready, got {ready}")
        for counts in layout:
            for t, k in (("websocket", "ws"), ("sse", "sse"), ("grpc", "grpc")):
                self.want[t] += counts.get(k, 0) + counts.get(f"stall_{k}", 0)
        await self.wait_consumers(self.want, 10.0)
        return added

    def child_cmd(self, counts: dict[str, int]) -> list[str]:
        """The command of a consumer child: in the runtime of --load, except that consumers that will
        stall always live in a Python child (Node cannot shrink a socket's receive buffer)."""
        args = self.args
        cmd = ["--http-port", str(self.bridge.http_port), "--grpc-port", str(self.bridge.grpc_port)]
        cmd += ["--connect-timeout", str(args.connect_timeout), "--child-deadline", str(args.child_deadline)]
        stalls = ("stall_ws", "stall_sse", "stall_grpc")
        if args.load == "node" and NODE_BIN is not None and not any(counts.get(k) for k in stalls):
            for key in ("ws", "sse", "grpc"):
                cmd += [f"--{key}", str(counts.get(key, 0))]
            return pinned(args.client_core, [NODE_BIN, str(NODE_CONSUMERS), *cmd])
        if args.client_core is not None:
            cmd += ["--pin-child", str(args.client_core)]
        for key in ("ws", "sse", "grpc", *stalls):
            cmd += [f"--{key.replace('_', '-')}", str(counts.get(key, 0))]
        return [sys.executable, str(CONSUMERS), *cmd]

    async def prefill(self, count: int) -> None:
        """Publish `count` messages before any consumer connects, so that the bridge's replay ring
        (10,000 events by default) is full and its RSS no longer grows with it during the phase."""
        pub = self.publisher
        if count <= 0 or pub is None:
            return
        pub.set_rate(PREFILL_RATE)
        deadline = time.monotonic() + count / PREFILL_RATE + 10
        while pub.sent < count and time.monotonic() < deadline:
            await self.sleep(0.05)
        pub.set_rate(0)
        events_in = 0.0
        while time.monotonic() < deadline:
            events_in = (await self.bridge.metrics()).get("fleet_bridge_events_in_total", 0)
            if events_in >= pub.sent:
                break
            await self.sleep(0.1)
        print(f"  prefill: published {pub.sent:,}, the bridge received {events_in:,.0f}", flush=True)

    async def wait_consumers(self, want: dict[str, int], limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        have: dict[str, int] = {}
        while time.monotonic() < deadline:
            m = await self.bridge.metrics()
            have = {t: int(m.get(f"fleet_bridge_consumers:{t}", 0)) for t in TRANSPORTS}
            if all(have[t] == want[t] for t in TRANSPORTS):
                return
            await asyncio.sleep(0.1)
        raise BenchError(f"the bridge has consumers {have}, expected {want}")

    def check_alive(self) -> None:
        for p in (self.mosquitto, self.bridge, *self.children):
            p.check_alive()
        if self.publisher is not None and self.publisher.lost:
            raise BenchError("mosquitto closed the publisher's connection")

    async def sleep(self, seconds: float) -> None:
        """Sleep, checking every 0.25 s that every process is still alive."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(0.25, left))
            self.check_alive()

    async def sample(self) -> Sample:
        snaps = await asyncio.gather(*(c.request("snap") for c in self.children))
        t = time.perf_counter()
        s = Sample(
            t=t,
            bridge_cpu=self.bridge.cpu_seconds(),
            bridge_rss=self.bridge.rss(),
            children_cpu=sum(c.cpu_seconds() for c in self.children),
            mosquitto_cpu=self.mosquitto.cpu_seconds(),
            own_cpu=cpu_seconds(self.me),
            host_busy=host_busy_seconds(),
            cores_busy=cores_busy_seconds(),
            published=self.publisher.sent if self.publisher else 0,
            metrics={},
            snaps=list(snaps),
        )
        s.metrics = await self.bridge.metrics()
        s.mosquitto_dropped = await mosquitto_dropped(self.mosquitto.port)
        return s

    async def measure(
        self,
        phase: str,
        rate: float,
        consumers: dict[str, int],
        *,
        seconds: float | None = None,
        latency: bool = False,
        healthz: bool = False,
    ) -> Step:
        """Offer `rate` msg/s; after the warm-up, one window of `seconds` (default --seconds).
        `latency`: the consumers record latencies over the window; `healthz`: /healthz is probed
        every HEALTHZ_EVERY_S through it."""
        assert self.publisher is not None
        self.publisher.set_rate(rate)
        await self.sleep(self.args.warmup)
        every = sample_every(rate, consumers)
        for child in self.children:
            await child.request(f"record {every}" if latency else "unrecord")
        a = await self.sample()
        times: list[float] = []
        done = asyncio.Event()
        probe = (
            asyncio.create_task(probe_healthz(self.bridge.http_port, done, HEALTHZ_EVERY_S, times))
            if healthz
            else None
        )
        try:
            await self.sleep(self.args.seconds if seconds is None else seconds)
        finally:
            done.set()
            if probe is not None:
                await asyncio.wait_for(probe, HEALTHZ_CAP_S + 1)
        b = await self.sample()
        st = step_from(phase, rate, consumers, a, b, self.cores)
        st.healthz_ms = [round(x, 2) for x in times]
        return st

    async def drain(self, limit_s: float = 5.0) -> tuple[int, int]:
        """Stop publishing; wait until the bridge's intake stops growing; (published, events_in)."""
        assert self.publisher is not None
        self.publisher.set_rate(0)
        deadline = time.monotonic() + limit_s
        last = -1.0
        events_in = 0.0
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            events_in = (await self.bridge.metrics()).get("fleet_bridge_events_in_total", 0)
            if events_in == last:
                break
            last = events_in
        return self.publisher.sent, int(events_in)

    def stop(self) -> None:
        if self.publisher is not None:
            self.publisher.close()
        for child in self.children:
            child.stop()
        self.bridge.stop()
        self.mosquitto.stop()
