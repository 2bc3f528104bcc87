"""Broker scale benchmark: fleet's embedded broker against Mosquitto, in the same run.

What it measures, for each client count N (``--clients``) and each broker (``--brokers``), on a
fresh broker process per N, over loopback only:

1. **connect** -- N device clients each open a TCP connection, send CONNECT (MQTT 3.1.1, clean
   session, keepalive 60, client id ``dev-<i>``), wait for CONNACK, SUBSCRIBE to their own
   ``fleet/dev-<i>/cmd`` at QoS 1 and wait for SUBACK, with at most ``--concurrency`` of them in
   flight at once.  Reported: seconds from the first connect to the last SUBACK, and connects/s.
2. **routing** -- with all N connected, one extra publisher sends QoS 1 PUBLISHes (200-byte
   payload) to random devices' cmd topics, keeping ``--window`` PUBLISHes un-PUBACKed in flight
   (and at most ``--backlog`` sent but not yet delivered).  Devices PUBACK each delivery.  After a
   warm-up of ``--warmup-msgs`` deliveries, deliveries/s is measured over ``--seconds``.  Also
   reported: delivery latency p50/p99 (publisher write to device read), broker CPU and load
   generator CPU during the window (100 % = one core), lost / misrouted / duplicate deliveries.
3. **memory** -- broker RSS (psutil, the broker process plus its children) once ready and idle,
   and after all N clients are connected, subscribed and idle: KB/conn = (after - before) / N.

How to read the output: one table per broker (one row per N), then one ratio table per
non-baseline broker against Mosquitto (``connect s`` and ``KB/conn`` ratios: lower is better;
``msg/s`` ratio: higher is better), then the acceptance targets of the fleet broker.  ``timeout``
means a phase did not finish within its cap (``--phase-timeout`` for connect, ``--warmup-timeout``
for routing).  ``LOADGEN-BOUND`` next to a figure means this load generator used >= 90 % of a
core during that phase, so the broker may be faster than the figure says (the machine has 2
cores: one for the broker, one for the generator); Mosquitto usually is.  ``listen ovf`` counts
the host's TCP accept-queue overflows during the connect phase: each one costs a client a 1 s SYN
retransmit, which shows as a ~1 s step in ``connect s``.  The default ``--concurrency 100``
equals Mosquitto's fixed listen backlog (100), so that Mosquitto is not penalised for it.

The load generator is this process: a hand-written asyncio MQTT 3.1.1 client (asyncio Protocols,
raw bytes, no MQTT library), lean enough that a Python broker, not the generator, is the limit.

Mosquitto runs with its defaults except ``listener PORT 127.0.0.1`` and ``allow_anonymous true``
(so ``max_inflight_messages 20``, ``max_queued_messages 1000``, no persistence, default logging to
stderr, which goes to a log file).  amqtt (optional, ``--brokers ...,amqtt``) runs as shipped with
one TCP listener and only the anonymous-auth plugin.

MQTT 5: the broker names ``fleet5`` and ``mosquitto5`` run the same brokers with MQTT 5 clients (CONNECT
level 5, empty property lists); ``fleet-base`` runs the fleet broker of another checkout, given with
``--base-worktree`` (for example ``git worktree add /tmp/base <commit before yours>``), with MQTT
3.1.1 clients.  ``CPU us/msg`` is broker CPU per delivery during the routing window; the comparison
block prints fleet5/fleet (target <= 1.10) and fleet/fleet-base (target <= 1.05).

Broker CPU per delivery moves with the machine's load: a broker that gets less CPU reads fewer
packets per event-loop turn and pays each turn's fixed cost over fewer deliveries.  ``--rounds N``
therefore keeps every broker up with its clients connected and runs N routing windows per broker,
interleaved (the order rotates each round); it prints each broker's median [min-max, IQR] and the
per-round ratio of the compared pair with its spread.  ``--base-worktree .`` makes ``fleet-base``
this checkout: an A/A run, whose ratio spread is the noise floor.  ``--rate`` paces the publisher;
``--profile DIR`` runs the fleet brokers under cProfile during the windows.  For the broker's own
CPU per delivery without the network and the scheduler, see ``bench/broker_hotpath.py``.

Usage::

    .venv/bin/python bench/broker_scale.py [--clients 1000,5000,10000]
        [--brokers fleet,mosquitto] [--seconds 5] [--json out.json]
    .venv/bin/python bench/broker_scale.py --clients 1000 \
        --brokers fleet,fleet5,fleet-base,mosquitto,mosquitto5 --base-worktree /tmp/base
    .venv/bin/python bench/broker_scale.py --clients 1000 --brokers fleet,fleet-base \
        --base-worktree /tmp/base --rounds 8 --seconds 3          # (--base-worktree . : A/A)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import functools
import gc
import json
import multiprocessing
import os
import platform
import pstats
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import support
from support import fmt, free_port, host_busy_seconds, raise_fd_limit, ratio, tcp_counters

BASELINE = "mosquitto"
KNOWN_BROKERS = ("fleet", "mosquitto", "amqtt", "fleet5", "mosquitto5", "fleet-base")
MOSQUITTO_BIN = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PAYLOAD_BYTES = 200
KEEPALIVE_S = 60
HOST = "127.0.0.1"

# Acceptance targets of the fleet broker (see bench/README.md).
TARGET_CONNECT_CLIENTS = 10_000
TARGET_CONNECT_S = 10.0
TARGET_MSG_S = 5_000.0
TARGET_KB_PER_CONN = 20.0
OTHER_CPU_WARN = 25.0  # % of a core used by other processes that makes a run suspect
# --rate: the paced publisher's tick, and the most it sends at once after a late tick.
PACE_TICK_S = 0.002
PACE_BURST_S = 0.05


# --------------------------------------------------------------------------------------------
# MQTT 3.1.1 codec: only what the workload needs.
# --------------------------------------------------------------------------------------------

CONNACK, PUBLISH, PUBACK, SUBACK, PINGRESP = 2, 3, 4, 9, 13
PINGREQ_PKT = b"\xc0\x00"
DISCONNECT_PKT = b"\xe0\x00"
_U16 = struct.Struct("!H")
_PUBACK = struct.Struct("!BBH")


def varint(n: int) -> bytes:
    """Encode an MQTT remaining length."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_str(s: bytes) -> bytes:
    return _U16.pack(len(s)) + s


def connect_pkt(client_id: bytes, version: int, keepalive: int = KEEPALIVE_S, clean: bool = True) -> bytes:
    # protocol name "MQTT", level 4 or 5, flags 0x02 = clean session (0x00: a persistent one), no
    # will/user/password; MQTT 5 adds an empty property list
    props = b"\x00" if version == 5 else b""
    flags = 2 if clean else 0
    body = mqtt_str(b"MQTT") + bytes((version, flags)) + _U16.pack(keepalive) + props + mqtt_str(client_id)
    return b"\x10" + varint(len(body)) + body


def subscribe_pkt(packet_id: int, topic: bytes, version: int, qos: int = 1) -> bytes:
    props = b"\x00" if version == 5 else b""
    body = _U16.pack(packet_id) + props + mqtt_str(topic) + bytes([qos])
    return b"\x82" + varint(len(body)) + body


def publish_prefix(topic: bytes, payload_len: int, version: int) -> bytes:
    """Fixed header + topic of a QoS 1 PUBLISH; then the packet id (MQTT 5: a property list), payload."""
    extra = 1 if version == 5 else 0
    return b"\x32" + varint(2 + len(topic) + 2 + extra + payload_len) + mqtt_str(topic)


def cmd_topic(i: int) -> bytes:
    return b"fleet/dev-%d/cmd" % i


class Stats:
    """Counters shared by all the clients of one run (one process, one event loop)."""

    __slots__ = (
        "acked",
        "delivered",
        "dups",
        "lat_ns",
        "lost_conns",
        "misrouted",
        "protocol_errors",
        "publisher",
        "recording",
        "sent",
        "version",
    )

    def __init__(self, version: int = 4) -> None:
        self.version = version
        self.sent = 0
        self.acked = 0
        self.delivered = 0
        self.misrouted = 0
        self.dups = 0
        self.protocol_errors: Counter[str] = Counter()
        self.lost_conns = 0
        self.recording = False
        self.lat_ns: list[int] = []
        self.publisher: Publisher | None = None


class Client(asyncio.Protocol):
    """Raw MQTT 3.1.1 client: parses fixed header + remaining length, dispatches by type."""

    def __init__(self, stats: Stats, topic: bytes) -> None:
        self.stats = stats
        self.topic = topic
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        loop = asyncio.get_running_loop()
        self.connack: asyncio.Future[int] = loop.create_future()
        self.suback: asyncio.Future[int] = loop.create_future()
        self.last_tx = time.monotonic()
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        err = ConnectionError(f"connection closed by broker ({exc!r})")
        for fut in (self.connack, self.suback):
            if not fut.done():
                fut.set_exception(err)
                fut.exception()  # mark retrieved: nobody may be waiting any more
        if not self.closing:
            self.stats.lost_conns += 1

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)
        self.last_tx = time.monotonic()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(Exception):
                self.transport.write(DISCONNECT_PKT)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        n = len(buf)
        pos = 0
        while n - pos >= 2:
            i = pos + 1
            length = 0
            shift = 0
            while i < n:
                b = buf[i]
                length |= (b & 0x7F) << shift
                i += 1
                if not b & 0x80:
                    break
                shift += 7
                if shift > 21:
                    self.stats.protocol_errors["bad remaining length"] += 1
                    self.close()
                    return
            else:
                break  # remaining length incomplete
            end = i + length
            if end > n:
                break
            first = buf[pos]
            kind = first >> 4
            if kind == PUBLISH:
                self.on_publish(first, buf, i, end)
            elif kind == PUBACK:
                self.on_puback((buf[i] << 8) | buf[i + 1])
            elif kind == CONNACK:
                if not self.connack.done():
                    self.connack.set_result(buf[i + 1])
            elif kind == SUBACK:
                if not self.suback.done():
                    # MQTT 5: an (empty) property list comes before the reason codes
                    self.suback.set_result(buf[i + 2 + (self.stats.version == 5)])
            elif kind != PINGRESP:
                self.stats.protocol_errors[f"unexpected packet type {kind}"] += 1
            pos = end
        if pos:
            del buf[:pos]

    def on_publish(self, first: int, buf: bytearray, i: int, end: int) -> None:
        st = self.stats
        tlen = (buf[i] << 8) | buf[i + 1]
        p = i + 2 + tlen
        if buf[i + 2 : p] != self.topic:
            st.misrouted += 1
        if first & 0x06:  # QoS > 0: packet id follows, ack it
            assert self.transport is not None
            self.transport.write(_PUBACK.pack(0x40, 2, (buf[p] << 8) | buf[p + 1]))
            self.last_tx = time.monotonic()
            p += 2
        if st.version == 5:  # skip the property list: its length, then the properties
            shift = length = 0
            while True:
                b = buf[p]
                p += 1
                length |= (b & 0x7F) << shift
                if not b & 0x80:
                    break
                shift += 7
            p += length
        if first & 0x08:
            st.dups += 1
        st.delivered += 1
        if st.recording:
            st.lat_ns.append(time.perf_counter_ns() - int.from_bytes(buf[p : p + 8], "big"))
        pub = st.publisher
        if pub is not None and pub.blocked:
            pub.pump()

    def on_puback(self, packet_id: int) -> None:
        self.stats.protocol_errors["PUBACK on a device connection"] += 1


class Publisher(Client):
    """The one publisher: QoS 1 to random devices, a window of un-PUBACKed packets in flight."""

    def __init__(
        self, stats: Stats, prefixes: list[bytes], window: int, backlog: int, rate: float = 0.0
    ) -> None:
        super().__init__(stats, b"")
        # With a rate (msg/s), sends are paced: at most rate * elapsed since `started`, plus a burst of
        # PACE_BURST_S worth; 0 sends as fast as the window allows.
        self.rate = rate
        self.started = 0.0
        self.paced = 0
        self.prefixes = prefixes
        self.window = window
        self.min_batch = max(1, window // 8)
        self.backlog = backlog
        self.inflight: set[int] = set()
        self.next_id = 0
        self.running = False
        self.blocked = False
        self.paused = False
        self.filler = b"\x00" * (PAYLOAD_BYTES - 8)

    def pump(self, tick: bool = False) -> None:
        """Refill the window, one write per batch (the packets of a batch share a timestamp).

        Refills wait until window/8 slots are free, so that a broker that PUBACKs one packet per
        read does not drive the generator into one write per message. A paced publisher sends only
        on the pacer's `tick`.
        """
        st = self.stats
        if self.rate and not tick:
            return
        if not self.running or self.paused or self.transport is None or self.transport.is_closing():
            return
        free = self.window - len(self.inflight)
        room = min(free, self.backlog - (st.sent - st.delivered))
        self.blocked = room < free  # held back by the backlog cap: deliveries call pump()
        if self.rate:
            due = int((time.perf_counter() - self.started) * self.rate) - self.paced
            if due > self.rate * PACE_BURST_S:  # time the generator lost is not made up in one burst
                self.paced += due - int(self.rate * PACE_BURST_S)
                due = int(self.rate * PACE_BURST_S)
            room = min(room, due)
            if room <= 0:
                return
            self.paced += room
        elif room <= 0 or (room < self.min_batch and self.inflight and not self.blocked):
            return
        ts = time.perf_counter_ns().to_bytes(8, "big")
        if st.version == 5:
            ts = b"\x00" + ts  # the empty property list between packet id and payload
        prefixes = self.prefixes
        count = len(prefixes)
        inflight = self.inflight
        parts: list[bytes] = []
        for _ in range(room):
            pid = self.next_id
            while True:
                pid = pid % 65535 + 1
                if pid not in inflight:
                    break
            self.next_id = pid
            inflight.add(pid)
            parts += (prefixes[random.randrange(count)], _U16.pack(pid), ts, self.filler)
        st.sent += room
        self.send(b"".join(parts))

    def on_puback(self, packet_id: int) -> None:
        try:
            self.inflight.remove(packet_id)
        except KeyError:
            self.stats.protocol_errors["PUBACK for an unknown packet id"] += 1
            return
        self.stats.acked += 1
        self.pump()

    def on_publish(self, first: int, buf: bytearray, i: int, end: int) -> None:
        self.stats.protocol_errors["PUBLISH delivered to the publisher"] += 1

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()


async def pace(pub: Publisher) -> None:
    """Call the paced publisher's pump every PACE_TICK_S, as long as it runs."""
    pub.started = time.perf_counter()
    while True:
        pub.pump(tick=True)
        await asyncio.sleep(PACE_TICK_S)


async def open_client(
    factory: Callable[[], Client],
    port: int,
    client_id: bytes,
    topic: bytes | None,
    limit_s: float,
    clean: bool = True,
) -> Client:
    """TCP connect, CONNECT/CONNACK and (if topic) SUBSCRIBE/SUBACK, all within `limit_s` seconds."""
    loop = asyncio.get_running_loop()
    proto: Client | None = None
    try:
        async with asyncio.timeout(limit_s):
            _, proto = await loop.create_connection(factory, HOST, port)
            version = proto.stats.version
            proto.send(connect_pkt(client_id, version, clean=clean))
            rc = await proto.connack
            if rc != 0:
                raise ConnectionError(f"CONNACK return code {rc}")
            if topic is not None:
                proto.send(subscribe_pkt(1, topic, version))
                granted = await proto.suback
                if granted == 0x80:
                    raise ConnectionError("SUBACK failure (0x80)")
                if granted != 1:
                    raise ConnectionError(f"SUBACK granted QoS {granted}, asked 1")
    except BaseException:
        if proto is not None:
            proto.close()
        raise
    return proto


# --------------------------------------------------------------------------------------------
# Broker processes.
# --------------------------------------------------------------------------------------------


# The tail of a fleet broker's `python -c` under --profile: SIGUSR1 starts cProfile, SIGUSR2 stops it
# and writes the profile so far (the bench sends them around each routing window).
PROFILED = (
    "import cProfile, signal; p = cProfile.Profile(); "
    "signal.signal(signal.SIGUSR1, lambda *_: p.enable()); "
    "signal.signal(signal.SIGUSR2, lambda *_: (p.disable(), p.dump_stats({path!r}))); cli()"
)


class Broker:
    """One broker subprocess on a free loopback port, its output in a log file."""

    def __init__(
        self, kind: str, workdir: Path, tag: str, base: Path | None = None, profile: Path | None = None
    ) -> None:
        self.kind = kind
        self.base = base
        # With --profile, a fleet broker runs under cProfile, on between profile_on() and profile_off().
        self.profile = (
            None if profile is None or not kind.startswith("fleet") else profile / f"{kind}-{tag}.prof"
        )
        self.port = free_port()
        self.log_path = workdir / f"{kind}-{tag}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None
        self.ready_line_seen = False
        self.cmd = self._command(workdir, tag)

    def _command(self, workdir: Path, tag: str) -> list[str]:
        if self.kind.startswith("fleet+"):
            # The persistence cost phase: a fresh store per run, in the work folder.
            sync = self.kind.removeprefix("fleet+")
            store = workdir / f"store-{sync}-{tag}"
            return [
                sys.executable, "-m", "fleet", "broker", "--host", HOST, "--port", str(self.port),
                "--ws-port", "0", "--persistence", str(store), "--sync", sync,
            ]  # fmt: skip
        if self.kind == "mosquitto+persist":
            conf = workdir / f"mosquitto-persist-{tag}.conf"
            store = workdir / f"mosquitto-store-{tag}"
            store.mkdir(exist_ok=True)
            conf.write_text(
                f"listener {self.port} {HOST}\nallow_anonymous true\n"
                f"persistence true\npersistence_location {store}/\n"
            )
            conf.chmod(0o644)
            return [MOSQUITTO_BIN, "-c", str(conf)]
        server = self.kind.removesuffix("5")
        if server in ("fleet", "fleet-base") and (server == "fleet-base" or self.profile is not None):
            # The checkout's code (the other one for fleet-base): its package directory first on the path.
            root = self.base if server == "fleet-base" else Path(__file__).resolve().parent.parent
            assert root is not None
            code = f"import sys; sys.path.insert(0, {str(root)!r}); from fleet.cli import cli; "
            code += PROFILED.format(path=str(self.profile)) if self.profile is not None else "cli()"
            return [
                sys.executable,
                "-c",
                code,
                "broker",
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--ws-port",
                "0",
            ]
        if server == "fleet":
            return [
                sys.executable,
                "-m",
                "fleet",
                "broker",
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--ws-port",
                "0",
            ]
        if server == "mosquitto":
            conf = workdir / f"mosquitto-{tag}.conf"
            conf.write_text(f"listener {self.port} {HOST}\nallow_anonymous true\n")
            conf.chmod(0o644)
            return [MOSQUITTO_BIN, "-c", str(conf)]
        if server == "amqtt":
            conf = workdir / f"amqtt-{tag}.yaml"
            conf.write_text(
                "listeners:\n  default:\n    type: tcp\n"
                f"    bind: {HOST}:{self.port}\n"
                "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
                "    allow_anonymous: true\n"
            )
            amqtt_bin = Path(sys.executable).with_name("amqtt")
            return [str(amqtt_bin), "-c", str(conf)]
        raise ValueError(f"unknown broker {self.kind!r}")

    def start(self) -> None:
        root = Path(__file__).resolve().parent.parent
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=root,
                preexec_fn=support.die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            )
        self.ps = psutil.Process(self.proc.pid)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join("    | " + line for line in text.splitlines()[-lines:])

    def check_alive(self) -> None:
        assert self.proc is not None
        rc = self.proc.poll()
        if rc is not None:
            raise BenchError(f"{self.kind} exited with code {rc}; log tail:\n{self.log_tail()}")

    async def wait_ready(self, stats: Stats, limit_s: float) -> None:
        """Poll with an MQTT CONNECT until it is answered, within `limit_s` seconds."""
        deadline = time.monotonic() + limit_s
        last: BaseException | None = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                probe = await open_client(lambda: Client(stats, b""), self.port, b"bench-probe", None, 2.0)
            except (OSError, TimeoutError) as exc:
                last = exc
                await asyncio.sleep(0.05)
                continue
            probe.close()
            self.ready_line_seen = f"mqtt://{HOST}:{self.port}" in self.log_path.read_text(errors="replace")
            return
        raise BenchError(
            f"{self.kind} not ready after {limit_s:.0f} s ({last!r}); log tail:\n{self.log_tail()}"
        )

    def profile_on(self) -> None:
        if self.profile is not None and self.proc is not None:
            self.proc.send_signal(signal.SIGUSR1)

    def profile_off(self) -> None:
        if self.profile is not None and self.proc is not None:
            self.proc.send_signal(signal.SIGUSR2)

    def rss(self) -> int:
        """RSS in bytes of the broker process and all its children."""
        assert self.ps is not None
        procs = [self.ps, *self.ps.children(recursive=True)]
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total

    def cpu_seconds(self) -> float:
        assert self.ps is not None
        total = 0.0
        for p in [self.ps, *self.ps.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` s; only this broker's own PID (and its children)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        children: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            assert self.ps is not None
            children = self.ps.children(recursive=True)
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"  ! {self.kind} ignored SIGTERM for {timeout:.0f} s: killing pid {self.proc.pid}")
            self.proc.kill()
            self.proc.wait(5)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()


class BenchError(Exception):
    """A broker failed in a way that makes the rest of its run meaningless."""


# --------------------------------------------------------------------------------------------
# The three workloads.
# --------------------------------------------------------------------------------------------


@dataclass
class Result:
    broker: str
    clients: int
    connect_s: float | None = None
    connects_per_s: float | None = None
    connected: int = 0
    connect_status: str = "not run"
    connect_errors: dict[str, int] = field(default_factory=dict)
    connect_broker_cpu_pct: float | None = None
    connect_loadgen_cpu_pct: float | None = None
    connect_other_cpu_pct: float | None = None
    listen_overflows: int | None = None
    syn_retransmits: int | None = None
    msg_per_s: float | None = None
    routing_status: str = "not run"
    delivered_in_window: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    broker_cpu_pct: float | None = None
    loadgen_cpu_pct: float | None = None
    other_cpu_pct: float | None = None
    lost: int | None = None
    misrouted: int = 0
    duplicates: int = 0
    rss_before_kb: float | None = None
    rss_after_kb: float | None = None
    rss_after_routing_kb: float | None = None
    kb_per_conn: float | None = None
    unexpected_disconnects: int = 0
    protocol_errors: dict[str, int] = field(default_factory=dict)
    ready_line_seen: bool | None = None
    error: str | None = None
    # 0: the one routing window of a plain run; 1..N: a round of --rounds (row 0 keeps connect and memory)
    round: int = 0


def own_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process, the load generator."""
    t = os.times()
    return t.user + t.system


def other_cpu_pct(h0: float, c0: float, m0: float, broker: Broker, wall: float) -> float:
    """CPU % (100 = one core) used by everything but the broker and the generator since h0/c0/m0.

    Includes the kernel's softirq work for loopback traffic that is not charged to a process, so
    it is a few % even on a quiet host; tens of % mean another workload competed for the CPUs.
    """
    busy = host_busy_seconds() - h0
    ours = (broker.cpu_seconds() - c0) + (own_cpu_seconds() - m0)
    return max(0.0, 100 * (busy - ours) / wall)


async def keepalive(clients: list[Client]) -> None:
    """PINGREQ every client idle for > keepalive/2, so slow phases never trip the broker's timer."""
    while True:
        await asyncio.sleep(10)
        limit = time.monotonic() - KEEPALIVE_S / 2
        for c in clients:
            if c.last_tx < limit and c.transport is not None and not c.transport.is_closing():
                c.send(PINGREQ_PKT)


async def connect_phase(
    args: argparse.Namespace, broker: Broker, stats: Stats, res: Result, devices: list[Client]
) -> None:
    """Connect + subscribe res.clients devices, --concurrency at a time, into `devices`."""
    n = res.clients
    ids: Iterator[int] = iter(range(n))
    errors: Counter[str] = Counter()

    async def worker() -> None:
        for i in ids:
            topic = cmd_topic(i)
            try:
                dev = await open_client(
                    functools.partial(Client, stats, topic),
                    broker.port,
                    b"dev-%d" % i,
                    topic,
                    args.conn_timeout,
                )
            except (OSError, TimeoutError) as exc:
                errors[f"{type(exc).__name__}: {exc}"[:160]] += 1
                if sum(errors.values()) >= args.max_errors:
                    raise BenchError(f"{args.max_errors} connect errors, giving up") from exc
                continue
            devices.append(dev)

    tcp0 = tcp_counters()
    c0, m0, h0 = broker.cpu_seconds(), own_cpu_seconds(), host_busy_seconds()
    t0 = time.perf_counter()
    workers = [asyncio.create_task(worker()) for _ in range(min(args.concurrency, n))]
    try:
        async with asyncio.timeout(args.phase_timeout):
            await asyncio.gather(*workers)
        res.connect_status = "ok" if not errors else f"{sum(errors.values())} failed"
    except TimeoutError:
        res.connect_status = "timeout"
    except BenchError as exc:
        res.connect_status = "failed"
        res.error = str(exc)
    finally:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    elapsed = time.perf_counter() - t0
    res.connect_broker_cpu_pct = 100 * (broker.cpu_seconds() - c0) / elapsed
    res.connect_loadgen_cpu_pct = 100 * (own_cpu_seconds() - m0) / elapsed
    res.connect_other_cpu_pct = other_cpu_pct(h0, c0, m0, broker, elapsed)
    tcp1 = tcp_counters()
    res.listen_overflows = tcp1.get("ListenOverflows", 0) - tcp0.get("ListenOverflows", 0)
    res.syn_retransmits = tcp1.get("TCPSynRetrans", 0) - tcp0.get("TCPSynRetrans", 0)
    res.connected = len(devices)
    res.connect_errors = dict(errors)
    if res.connect_status == "timeout":
        res.error = f"connect phase capped at {args.phase_timeout:.0f} s: {len(devices)}/{n} connected"
    else:
        res.connect_s = elapsed
        res.connects_per_s = len(devices) / elapsed


async def routing_phase(
    args: argparse.Namespace, broker: Broker, stats: Stats, res: Result, devices: list[Client]
) -> None:
    prefixes = [publish_prefix(d.topic, PAYLOAD_BYTES, stats.version) for d in devices]
    pub = await open_client(
        lambda: Publisher(stats, prefixes, args.window, args.backlog, args.rate),
        broker.port,
        b"bench-pub",
        None,
        args.conn_timeout,
    )
    assert isinstance(pub, Publisher)
    stats.publisher = pub
    pacer: asyncio.Task[None] | None = None
    try:
        pub.running = True
        if args.rate:
            pacer = asyncio.create_task(pace(pub))
        else:
            pub.pump()
        # Warm-up by message count, bounded in time; progress checks catch a stalled broker.
        if not await wait_until(lambda: stats.delivered >= args.warmup_msgs, args.warmup_timeout, broker):
            res.routing_status = "timeout"
            res.error = (
                f"warm-up: {stats.delivered}/{args.warmup_msgs} deliveries in {args.warmup_timeout:.0f} s"
            )
            return
        broker.profile_on()
        c0, m0, h0 = broker.cpu_seconds(), own_cpu_seconds(), host_busy_seconds()
        d0 = stats.delivered
        stats.lat_ns.clear()
        stats.recording = True
        t0 = time.perf_counter()
        stalled = False
        last_progress, last_count = t0, d0
        while (now := time.perf_counter()) - t0 < args.seconds:
            await asyncio.sleep(min(0.2, args.seconds - (now - t0)))
            broker.check_alive()
            if stats.delivered != last_count:
                last_progress, last_count = time.perf_counter(), stats.delivered
            elif time.perf_counter() - last_progress > args.stall_timeout:
                stalled = True
                break
        t1 = time.perf_counter()
        d1 = stats.delivered
        stats.recording = False
        wall = t1 - t0
        res.broker_cpu_pct = 100 * (broker.cpu_seconds() - c0) / wall
        broker.profile_off()
        res.loadgen_cpu_pct = 100 * (own_cpu_seconds() - m0) / wall
        res.other_cpu_pct = other_cpu_pct(h0, c0, m0, broker, wall)
        res.delivered_in_window = d1 - d0
        res.msg_per_s = (d1 - d0) / wall
        lat = sorted(stats.lat_ns)
        if lat:
            res.latency_p50_ms = lat[len(lat) // 2] / 1e6
            res.latency_p99_ms = lat[min(len(lat) - 1, len(lat) * 99 // 100)] / 1e6
        res.routing_status = f"stalled > {args.stall_timeout:.0f} s" if stalled else "ok"
        # Drain: stop publishing, wait for every PUBACKed message to be delivered.
        pub.running = False
        drained = await wait_until(
            lambda: not pub.inflight and stats.delivered >= stats.acked, args.drain_timeout, broker
        )
        res.lost = stats.acked - stats.delivered + stats.dups if drained else None
        if not drained:
            res.routing_status += (
                f"; drain timeout: {stats.acked - stats.delivered} acked not delivered, "
                f"{len(pub.inflight)} unacked"
            )
        res.misrouted = stats.misrouted
        res.duplicates = stats.dups
        if res.routing_status != "ok":
            res.error = f"routing: {res.routing_status}"
    finally:
        if pacer is not None:
            pacer.cancel()
            await asyncio.gather(pacer, return_exceptions=True)
        pub.running = False
        stats.publisher = None
        pub.close()


async def wait_until(cond: Callable[[], bool], limit_s: float, broker: Broker) -> bool:
    """Poll `cond` every 20 ms for at most `limit_s` seconds; fail fast if the broker died."""
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() >= deadline:
            return False
        broker.check_alive()
        await asyncio.sleep(0.02)
    return True


@dataclass
class Run:
    """One broker process with its devices connected: the state the routing windows share."""

    kind: str
    broker: Broker
    stats: Stats
    res: Result
    devices: list[Client] = field(default_factory=list)

    @property
    def routable(self) -> bool:
        res = self.res
        return (
            res.error is None
            and not res.connect_status.startswith(("timeout", "failed"))
            and bool(self.devices)
        )


@contextlib.asynccontextmanager
async def connected(args: argparse.Namespace, kind: str, n: int, workdir: Path) -> AsyncIterator[Run]:
    """Start `kind`, connect and subscribe `n` devices, measure idle memory; stop it all on exit.

    A BenchError inside is recorded in the run's Result, not raised."""
    res = Result(broker=kind, clients=n)
    run = Run(
        kind,
        Broker(kind, workdir, f"{n}", args.base_worktree, args.profile),
        Stats(5 if kind.endswith("5") else 4),
        res,
    )
    broker, stats, devices = run.broker, run.stats, run.devices
    pinger: asyncio.Task[None] | None = None
    print(f"- {kind}, {n} clients: starting on port {broker.port} ...", flush=True)
    try:
        try:
            broker.start()
            await broker.wait_ready(stats, args.ready_timeout)
            if kind == "fleet":
                res.ready_line_seen = broker.ready_line_seen
            await asyncio.sleep(args.settle)
            res.rss_before_kb = broker.rss() / 1024
            pinger = asyncio.create_task(keepalive(devices))

            await connect_phase(args, broker, stats, res, devices)
            print(
                f"  connect: {res.connect_status}, {res.connected}/{n} in "
                f"{fmt(res.connect_s, '.2f')} s ({fmt(res.connects_per_s, ',.0f')}/s), "
                f"broker CPU {fmt(res.connect_broker_cpu_pct, '.0f')} %, "
                f"loadgen CPU {fmt(res.connect_loadgen_cpu_pct, '.0f')} %, "
                f"other CPU {fmt(res.connect_other_cpu_pct, '.0f')} %, "
                f"accept-queue overflows {res.listen_overflows}, SYN retransmits {res.syn_retransmits}",
                flush=True,
            )
            broker.check_alive()
            await asyncio.sleep(args.settle)
            res.rss_after_kb = broker.rss() / 1024
            if res.connected:
                res.kb_per_conn = (res.rss_after_kb - res.rss_before_kb) / res.connected
            print(
                f"  memory: {res.rss_before_kb / 1024:.1f} MB -> {res.rss_after_kb / 1024:.1f} MB, "
                f"{fmt(res.kb_per_conn, '.1f')} KB/conn",
                flush=True,
            )
        except BenchError as exc:
            res.error = str(exc)
            print(f"  ! {exc}", flush=True)
        if not run.routable:
            res.routing_status = "skipped (connect phase incomplete)"
        try:
            yield run
            if res.error is None:
                broker.check_alive()
        except BenchError as exc:
            res.error = str(exc)
            print(f"  ! {exc}", flush=True)
    finally:
        try:
            res.unexpected_disconnects = stats.lost_conns
            res.protocol_errors = dict(stats.protocol_errors)
            if pinger is not None:
                pinger.cancel()
            for d in devices:
                d.close()
            devices.clear()
            await asyncio.sleep(0.2)  # let the loop flush DISCONNECTs and close the sockets
        finally:
            broker.stop()  # even when cancelled (Ctrl-C, SIGTERM) while cleaning up
    problems = [
        f"{res.unexpected_disconnects} connections closed by the broker"
        if res.unexpected_disconnects
        else "",
        f"{res.lost} QoS 1 messages lost" if res.lost else "",
        f"{res.misrouted} deliveries on the wrong topic" if res.misrouted else "",
        f"protocol errors {res.protocol_errors}" if res.protocol_errors else "",
    ]
    if any(problems) and res.error is None:
        res.error = "; ".join(p for p in problems if p)
    if res.unexpected_disconnects:
        print(f"  ! {res.unexpected_disconnects} connections closed by the broker unexpectedly", flush=True)
    if res.protocol_errors:
        print(f"  ! protocol errors: {res.protocol_errors}", flush=True)
    if res.connect_errors:
        print(f"  ! connect errors: {res.connect_errors}", flush=True)
    if kind == "fleet" and res.ready_line_seen is False:
        print(
            f"  ! fleet was ready but its log has no 'mqtt://{HOST}:{broker.port}' line "
            "(printed without flush=True?)",
            flush=True,
        )


async def route(args: argparse.Namespace, run: Run, res: Result) -> None:
    """One routing window of `run`'s broker, its figures into `res`."""
    gc.collect()
    gc.freeze()  # 10k long-lived protocol objects: keep them out of the load generator's GC
    try:
        await routing_phase(args, run.broker, run.stats, res, run.devices)
    finally:
        gc.unfreeze()
    res.rss_after_routing_kb = run.broker.rss() / 1024
    label = f"round {res.round}, {run.kind}: " if res.round else ""
    print(
        f"  {label}routing: {res.routing_status}, {fmt(res.msg_per_s, ',.0f')} msg/s, "
        f"p50 {fmt(res.latency_p50_ms, '.1f')} ms, p99 {fmt(res.latency_p99_ms, '.1f')} ms, "
        f"broker CPU {fmt(res.broker_cpu_pct, '.0f')} %, {fmt(cpu_per_msg(res), '.1f')} us/msg, loadgen CPU "
        f"{fmt(res.loadgen_cpu_pct, '.0f')} %, other CPU {fmt(res.other_cpu_pct, '.0f')} %, "
        f"lost {fmt(res.lost, 'd')}, misrouted {res.misrouted}, duplicates {res.duplicates}",
        flush=True,
    )


async def run_one(args: argparse.Namespace, kind: str, n: int, workdir: Path) -> Result:
    async with connected(args, kind, n, workdir) as run:
        if run.routable:
            await route(args, run, run.res)
    return run.res


async def run_rounds(args: argparse.Namespace, n: int, workdir: Path, results: list[Any]) -> None:
    """Every broker up at once with its `n` devices connected, then `--rounds` routing windows each,
    interleaved: round r runs the brokers in turn, starting one further along the list each round,
    so that load from outside and any drift fall on each broker alike. Appends to `results` as it goes:
    each broker's connect row (round 0), then one row per round and broker."""
    async with contextlib.AsyncExitStack() as stack:
        runs = [await stack.enter_async_context(connected(args, kind, n, workdir)) for kind in args.brokers]
        results += [run.res for run in runs]
        live = [run for run in runs if run.routable]
        for r in range(1, args.rounds + 1):
            k = (r - 1) % len(live) if live else 0
            for run in live[k:] + live[:k]:
                if run.res.error is not None:
                    continue
                res = dataclasses.replace(run.res, round=r, routing_status="not run")
                try:
                    run.broker.check_alive()
                    await route(args, run, res)
                except BenchError as exc:
                    res.error = run.res.error = str(exc)
                    print(f"  ! {exc}", flush=True)
                results.append(res)


# --------------------------------------------------------------------------------------------
# The flood phase (--flood): is the broker fair to everyone else while one client floods?
# --------------------------------------------------------------------------------------------

FLOOD_TOPIC = b"flood/x"
FLOOD_PAYLOAD = 100


def qos0_publish(topic: bytes, payload: bytes, version: int) -> bytes:
    props = b"\x00" if version == 5 else b""
    body = mqtt_str(topic) + props + payload
    return b"\x30" + varint(len(body)) + body


def _blocking_client(port: int, client_id: bytes, version: int) -> socket.socket:
    """A blocking socket, CONNECTed (CONNACK read), with a timeout on every call."""
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.sendall(connect_pkt(client_id, version))
    if len(sock.recv(64)) < 4:
        raise ConnectionError(f"{client_id!r}: no CONNACK")
    return sock


def flood_child(port: int, version: int, seconds: float, ready: Any, sent: Any) -> None:
    """The flooder process: a sink subscribed to the flood topic, read and discarded by a thread,
    and one client writing QoS 0 PUBLISHes as fast as the broker takes them, for `seconds`."""
    sink = _blocking_client(port, b"flood-sink", version)
    sink.sendall(subscribe_pkt(1, b"flood/#", version, qos=0))

    def drain() -> None:
        with contextlib.suppress(OSError):
            while sink.recv(1 << 20):
                pass

    threading.Thread(target=drain, daemon=True).start()
    flooder = _blocking_client(port, b"flooder", version)
    batch = qos0_publish(FLOOD_TOPIC, b"\x00" * FLOOD_PAYLOAD, version) * 500
    ready.set()
    deadline = time.monotonic() + seconds
    total = 0
    while time.monotonic() < deadline:
        try:
            flooder.sendall(batch)
        except TimeoutError:
            continue
        except OSError:
            break
        total += 500
        sent.value = total
    flooder.close()
    sink.close()


@dataclass
class FloodWindow:
    """What the others saw during one window: their delivery latency and new clients' CONNECT time."""

    p50_ms: float | None = None
    p99_ms: float | None = None
    sent: int = 0
    received: int = 0
    connect_p50_ms: float | None = None
    connect_max_ms: float | None = None
    connects: int = 0
    connect_failures: int = 0
    broker_cpu_pct: float | None = None
    other_cpu_pct: float | None = None


@dataclass
class FloodResult:
    broker: str
    quiet: FloodWindow = field(default_factory=FloodWindow)
    flood: FloodWindow = field(default_factory=FloodWindow)
    flood_msg_per_s: float | None = None
    error: str | None = None


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def _others_publish(peers: list[Client], rate: float, counter: list[int]) -> None:
    """Each peer publishes one QoS 0 message per 1/rate s to the next peer, on an absolute schedule."""
    version = peers[0].stats.version
    filler = b"\x00" * (PAYLOAD_BYTES - 8)
    prefixes = [peers[(i + 1) % len(peers)].topic for i in range(len(peers))]
    tick = 1 / rate
    next_at = time.perf_counter()
    while True:
        for peer, topic in zip(peers, prefixes, strict=True):
            if peer.transport is not None and not peer.transport.is_closing():
                ts = time.perf_counter_ns().to_bytes(8, "big")
                peer.send(qos0_publish(topic, ts + filler, version))
                counter[0] += 1
        next_at += tick
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))


async def _probe_connects(
    port: int, version: int, interval: float, times: list[float], failures: list[int]
) -> None:
    """Every `interval` s, a new client connects (TCP + CONNECT until CONNACK), timed, then leaves."""
    stats = Stats(version)
    index = 0
    while True:
        index += 1
        t0 = time.perf_counter()
        try:
            probe = await open_client(lambda: Client(stats, b""), port, b"probe-%d" % index, None, 10.0)
        except (OSError, TimeoutError):
            failures[0] += 1
        else:
            times.append((time.perf_counter() - t0) * 1000)
            probe.close()
        await asyncio.sleep(interval)


async def _flood_window(
    args: argparse.Namespace,
    broker: Broker,
    stats: Stats,
    counter: list[int],
    window: FloodWindow,
    extra: list[psutil.Process],
) -> None:
    """Record the others' latency and the probes' CONNECT times for --flood-seconds."""
    times: list[float] = []
    failures = [0]
    s0 = counter[0]
    stats.lat_ns.clear()
    d0 = stats.delivered
    c0, m0, h0 = broker.cpu_seconds(), own_cpu_seconds(), host_busy_seconds()
    x0 = sum(support.cpu_seconds(p) for p in extra)
    stats.recording = True
    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tasks:
        probes = tasks.create_task(_probe_connects(broker.port, stats.version, 0.25, times, failures))
        await asyncio.sleep(args.flood_seconds)
        probes.cancel()
    wall = time.perf_counter() - t0
    stats.recording = False
    # Messages still on their way are counted once they arrive (the window's sent ones).
    await asyncio.sleep(0.5)
    lat = [ns / 1e6 for ns in stats.lat_ns]
    window.p50_ms, window.p99_ms = _quantile(lat, 0.5), _quantile(lat, 0.99)
    window.received = stats.delivered - d0
    window.sent = counter[0] - s0
    window.connect_p50_ms, window.connect_max_ms = _quantile(times, 0.5), max(times, default=None)
    window.connects, window.connect_failures = len(times), failures[0]
    broker_cpu = broker.cpu_seconds() - c0
    extra_cpu = sum(support.cpu_seconds(p) for p in extra) - x0
    window.broker_cpu_pct = 100 * broker_cpu / wall
    busy = host_busy_seconds() - h0
    window.other_cpu_pct = max(0.0, 100 * (busy - broker_cpu - (own_cpu_seconds() - m0) - extra_cpu) / wall)


async def run_flood(args: argparse.Namespace, kind: str, workdir: Path) -> FloodResult:
    """Others publish/subscribe at a modest rate, quiet then while one client floods QoS 0."""
    res = FloodResult(kind)
    stats = Stats(5 if kind.endswith("5") else 4)
    broker = Broker(kind, workdir, "flood", args.base_worktree)
    peers: list[Client] = []
    spawn = multiprocessing.get_context("spawn")
    child: multiprocessing.process.BaseProcess | None = None
    print(f"- {kind}, flood: starting on port {broker.port} ...", flush=True)
    try:
        broker.start()
        await broker.wait_ready(stats, args.ready_timeout)
        for i in range(args.flood_others):
            topic = b"others/%d" % i
            peers.append(
                await open_client(
                    functools.partial(Client, stats, topic),
                    broker.port,
                    b"other-%d" % i,
                    topic,
                    args.conn_timeout,
                )
            )
        async with asyncio.TaskGroup() as tasks:
            counter = [0]
            publishing = tasks.create_task(_others_publish(peers, args.flood_rate, counter))
            await asyncio.sleep(1.0)  # warm-up
            await _flood_window(args, broker, stats, counter, res.quiet, [])
            ready, sent = spawn.Event(), spawn.Value("q", 0)
            child = spawn.Process(
                target=flood_child,
                args=(broker.port, stats.version, args.flood_seconds + 30, ready, sent),
                name="flooder",
            )
            child.start()
            assert child.pid is not None
            if not await asyncio.to_thread(ready.wait, 30):
                raise BenchError("the flooder did not connect within 30 s")
            await asyncio.sleep(1.0)  # the flood builds up
            s0, t0 = sent.value, time.perf_counter()
            await _flood_window(args, broker, stats, counter, res.flood, [psutil.Process(child.pid)])
            res.flood_msg_per_s = (sent.value - s0) / (time.perf_counter() - t0)
            publishing.cancel()
        broker.check_alive()
    except BenchError as exc:
        res.error = str(exc)
        print(f"  ! {exc}", flush=True)
    finally:
        try:
            if child is not None and child.is_alive():
                child.terminate()  # our own child, by its PID
            if child is not None:
                child.join(10)
            for peer in peers:
                peer.close()
            await asyncio.sleep(0.2)
        finally:
            broker.stop()
    for name, w in (("quiet", res.quiet), ("flood", res.flood)):
        print(
            f"  {name}: others p50 {fmt(w.p50_ms, '.1f')} ms, p99 {fmt(w.p99_ms, '.1f')} ms, "
            f"CONNECT p50 {fmt(w.connect_p50_ms, '.1f')} ms, max {fmt(w.connect_max_ms, '.1f')} ms "
            f"({w.connects} probes, {w.connect_failures} failed), "
            f"broker CPU {fmt(w.broker_cpu_pct, '.0f')} %, other CPU {fmt(w.other_cpu_pct, '.0f')} %",
            flush=True,
        )
    print(f"  flooder: {fmt(res.flood_msg_per_s, ',.0f')} QoS 0 msg/s taken by the broker", flush=True)
    return res


_FLOOD_FIGURES: dict[str, Callable[[FloodResult], float | None]] = {
    "quiet p50 ms": lambda r: r.quiet.p50_ms,
    "quiet p99 ms": lambda r: r.quiet.p99_ms,
    "flood p50 ms": lambda r: r.flood.p50_ms,
    "flood p99 ms": lambda r: r.flood.p99_ms,
    "flood CONNECT p50 ms": lambda r: r.flood.connect_p50_ms,
    "flood CONNECT max ms": lambda r: r.flood.connect_max_ms,
}


def flood_report(results: list[FloodResult]) -> str:
    rows = []
    for r in results:
        q, f = r.quiet, r.flood
        rows.append(
            [
                r.broker,
                fmt(q.p50_ms, ".1f"),
                fmt(q.p99_ms, ".1f"),
                fmt(f.p50_ms, ".1f"),
                fmt(f.p99_ms, ".1f"),
                fmt(q.connect_max_ms, ".1f"),
                f"{fmt(f.connect_p50_ms, '.1f')} / {fmt(f.connect_max_ms, '.1f')}",
                fmt(r.flood_msg_per_s, ",.0f"),
                fmt(f.broker_cpu_pct, ".0f"),
                fmt(max(q.other_cpu_pct or 0, f.other_cpu_pct or 0), ".0f"),
            ]
        )
    out = [
        "\nflood: others' delivery latency and a new client's CONNECT time, quiet and while one floods",
        table(
            [
                "broker",
                "quiet p50 ms",
                "quiet p99 ms",
                "flood p50 ms",
                "flood p99 ms",
                "quiet CONNECT max ms",
                "flood CONNECT p50 / max ms",
                "flood msg/s",
                "broker CPU%",
                "other CPU%",
            ],
            rows,
        ),
    ]
    brokers = list(dict.fromkeys(r.broker for r in results))
    medians = {
        b: {
            key: _quantile([v for r in results if r.broker == b if (v := pick(r)) is not None], 0.5)
            for key, pick in _FLOOD_FIGURES.items()
        }
        for b in brokers
    }
    if len(results) > len(brokers):
        out.append(f"\nmedians over {len(results) // len(brokers)} rounds:")
        out.append(
            table(
                ["broker", *_FLOOD_FIGURES],
                [[b, *(fmt(medians[b][key], ".1f") for key in _FLOOD_FIGURES)] for b in brokers],
            )
        )
    if BASELINE in medians:
        base = medians[BASELINE]
        for b in brokers:
            if b == BASELINE:
                continue
            for key in ("flood p99 ms", "flood CONNECT p50 ms", "flood CONNECT max ms"):
                a, m = medians[b][key], base[key]
                ok = a is not None and m is not None and a <= 2 * m
                out.append(f"  [{'PASS' if ok else 'FAIL'}] {b} {key} within 2x {BASELINE}: {ratio(a, m)}")
    for r in results:
        if r.error:
            out.append(f"\nERROR {r.broker} flood: {r.error}")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Output.
# --------------------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join([line, sep, *body])


def connect_cell(r: Result) -> str:
    if r.connect_status == "timeout":
        return "timeout"
    cell = fmt(r.connect_s, ".2f")
    if r.connect_loadgen_cpu_pct is not None and r.connect_loadgen_cpu_pct >= 90:
        cell += " LOADGEN-BOUND"
    return cell + ("" if r.connect_status == "ok" else f" ({r.connect_status})")


def msgs_cell(r: Result) -> str:
    if r.msg_per_s is None:
        if r.routing_status.startswith(("skipped", "timeout")):
            return r.routing_status.split(" ")[0]
        return "error" if r.error else "-"
    cell = f"{r.msg_per_s:,.0f}"
    if r.loadgen_cpu_pct is not None and r.loadgen_cpu_pct >= 90:
        cell += " LOADGEN-BOUND"
    if r.routing_status != "ok":
        cell += f" ({r.routing_status.split(';')[0]})"
    return cell


def report(results: list[Result], args: argparse.Namespace) -> str:
    out: list[str] = []
    brokers = [b for b in args.brokers if any(r.broker == b for r in results)]
    # With --rounds, each broker's round-0 row holds connect and memory; its routing is in rounds_report.
    by = {(r.broker, r.clients): r for r in results if r.round == 0}
    for b in brokers:
        rows = []
        for n in args.clients:
            r = by.get((b, n))
            if r is None:
                continue
            rows.append(
                [
                    f"{n:,}",
                    connect_cell(r),
                    fmt(r.connects_per_s, ",.0f"),
                    msgs_cell(r),
                    fmt(r.latency_p50_ms, ".1f"),
                    fmt(r.latency_p99_ms, ".1f"),
                    fmt(r.kb_per_conn, ".1f"),
                    fmt(None if r.rss_after_kb is None else r.rss_after_kb / 1024, ".1f"),
                    fmt(r.broker_cpu_pct, ".0f"),
                    fmt(cpu_per_msg(r), ".1f"),
                    fmt(r.loadgen_cpu_pct, ".0f"),
                    fmt(r.other_cpu_pct, ".0f"),
                    fmt(r.listen_overflows, "d"),
                    fmt(r.lost, "d"),
                    str(r.unexpected_disconnects),
                ]
            )
        out += [
            f"\n{b}",
            table(
                [
                    "clients",
                    "connect s",
                    "conn/s",
                    "msg/s",
                    "p50 ms",
                    "p99 ms",
                    "KB/conn",
                    "RSS MB",
                    "broker CPU%",
                    "CPU us/msg",
                    "loadgen CPU%",
                    "other CPU%",
                    "listen ovf",
                    "lost",
                    "dropped conns",
                ],
                rows,
            ),
        ]
    if BASELINE in brokers:
        for b in brokers:
            if b == BASELINE:
                continue
            rows = []
            for n in args.clients:
                r, m = by.get((b, n)), by.get((BASELINE, n))
                if r is None or m is None:
                    continue
                rows.append(
                    [
                        f"{n:,}",
                        ratio(r.connect_s, m.connect_s),
                        ratio(r.msg_per_s, m.msg_per_s),
                        ratio(r.kb_per_conn, m.kb_per_conn),
                    ]
                )
            out += [
                f"\nratios {b}/{BASELINE} (connect s, KB/conn: lower is better; msg/s: higher is better)",
                table(["clients", "connect s", "msg/s", "KB/conn"], rows),
            ]
    if args.rounds > 1:
        out.append(rounds_report(results, args))
    for new, old, limit in CPU_TARGETS:
        if new not in brokers or old not in brokers or args.rounds > 1:
            continue
        lines = []
        for n in args.clients:
            r, m = by.get((new, n)), by.get((old, n))
            if r is None or m is None:
                continue
            a, b = cpu_per_msg(r), cpu_per_msg(m)
            if a is None or b is None:
                lines.append(f"  [ n/a] {n:,} clients: no routing figure")
                continue
            verdict = "PASS" if a / b <= limit else "FAIL"
            lines.append(f"  [{verdict}] {n:,} clients: {a:.1f} / {b:.1f} us = {a / b:.2f} (<= {limit:.2f})")
        out += [f"\nbroker CPU per delivery, {new}/{old}:", *lines]
    for b in brokers:
        if b == BASELINE:
            continue
        out.append(f"\nacceptance targets ({b}):")
        out += [
            "  " + line
            for line in targets(
                [with_median_routing(by[b, n], results) for n in args.clients if (b, n) in by]
            )
        ]
    for r in results:
        if r.error:
            out.append(f"\nERROR {r.broker}@{r.clients:,}: {r.error}")
    busy = [r for r in results if max(r.other_cpu_pct or 0, r.connect_other_cpu_pct or 0) > OTHER_CPU_WARN]
    if busy:
        counts = Counter(f"{r.broker}@{r.clients:,}" for r in busy)
        runs = ", ".join(f"{run} ({n} windows)" if n > 1 else run for run, n in counts.items())
        advice = (
            "compare only the per-round ratios, and the A/A run's spread"
            if args.rounds > 1
            else "rerun on a quiet machine, or with --rounds"
        )
        out.append(
            f"\nWARNING: other processes used > {OTHER_CPU_WARN:.0f} % CPU during {runs}: "
            f"those figures are disturbed; {advice}."
        )
    return "\n".join(out)


# Broker CPU per delivery: (new, old, the most new / old may be).
CPU_TARGETS = (("fleet5", "fleet", 1.10), ("fleet", "fleet-base", 1.05))


def _spread(values: list[float], spec: str) -> str:
    """median [min-max], and the interquartile range as a share of the median."""
    med = statistics.median(values)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (med, med, med)
    iqr = f", IQR {100 * (q3 - q1) / med:.0f} %" if med else ""
    return f"{med:{spec}} [{min(values):{spec}}-{max(values):{spec}}{iqr}]"


def rounds_report(results: list[Result], args: argparse.Namespace) -> str:
    """The interleaved routing windows: per broker the median and spread of each figure, then for each
    compared pair the per-round ratio (both brokers measured minutes apart at most) with its spread."""
    out = []
    for n in args.clients:
        rows = [r for r in results if r.clients == n and r.round > 0]
        if not rows:
            continue
        brokers = [b for b in args.brokers if any(r.broker == b for r in rows)]
        per: dict[str, dict[int, Result]] = {b: {r.round: r for r in rows if r.broker == b} for b in brokers}
        table_rows = []
        for b in brokers:
            ok = [r for r in per[b].values() if r.routing_status == "ok" and cpu_per_msg(r) is not None]
            if not ok:
                table_rows.append([b, "0", "-", "-", "-", "-"])
                continue
            table_rows.append(
                [
                    b,
                    str(len(ok)),
                    _spread([v for r in ok if (v := cpu_per_msg(r)) is not None], ".1f"),
                    _spread([r.msg_per_s or 0.0 for r in ok], ",.0f"),
                    _spread([r.broker_cpu_pct or 0.0 for r in ok], ".0f"),
                    fmt(max(r.other_cpu_pct or 0.0 for r in ok), ".0f"),
                ]
            )
        out += [
            f"\ninterleaved routing, {n:,} clients, {args.rounds} rounds of {args.seconds:g} s "
            "(median [min-max, interquartile range / median]):",
            table(
                ["broker", "rounds", "CPU us/msg", "msg/s", "broker CPU%", "other CPU% max"],
                table_rows,
            ),
        ]
        for new, old, limit in CPU_TARGETS:
            if new not in per or old not in per:
                continue
            ratios = []
            for r, a in per[new].items():
                b = per[old].get(r)
                x, y = cpu_per_msg(a), None if b is None else cpu_per_msg(b)
                if (
                    x is not None
                    and y
                    and a.routing_status == "ok"
                    and b is not None
                    and b.routing_status == "ok"
                ):
                    ratios.append(x / y)
            if not ratios:
                out.append(f"  [ n/a] {new}/{old}: no round with both figures")
                continue
            med = statistics.median(ratios)
            verdict = "PASS" if med <= limit else "FAIL"
            out.append(
                f"  [{verdict}] broker CPU per delivery {new}/{old}, per-round ratio, {len(ratios)} rounds: "
                f"{_spread(ratios, '.2f')} (median <= {limit:.2f}); rounds: "
                + " ".join(f"{x:.2f}" for x in ratios)
            )
    return "\n".join(out)


PROFILE_TOP = 25


def profile_report(results: list[Result], args: argparse.Namespace) -> str:
    """Each profiled broker's hottest functions (own time) per delivery of its routing windows."""
    out = []
    for n in args.clients:
        for kind in args.brokers:
            path = args.profile / f"{kind}-{n}.prof"
            delivered = sum(r.delivered_in_window for r in results if r.broker == kind and r.clients == n)
            if not path.exists() or not delivered:
                continue
            st = pstats.Stats(str(path))
            entries: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = st.stats  # type: ignore[attr-defined]
            calls = sum(nc for _, nc, _, _, _ in entries.values())
            total: float = st.total_tt  # type: ignore[attr-defined]
            top = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)[:PROFILE_TOP]
            rows = [
                [
                    f"{Path(file).parent.name}/{Path(file).name}:{line}({name})" if line else name,
                    f"{nc / delivered:.2f}",
                    f"{1e6 * tt / delivered:.2f}",
                    f"{1e6 * ct / delivered:.2f}",
                ]
                for (file, line, name), (_, nc, tt, ct, _) in top
            ]
            out += [
                f"\nprofile {kind}, {n:,} clients ({path}): {delivered:,} deliveries, "
                f"{1e6 * total / delivered:.1f} us, {calls / delivered:.1f} calls per delivery in cProfile",
                table(["function", "calls/delivery", "own us/delivery", "with callees us/delivery"], rows),
            ]
    return "\n".join(out)


def with_median_routing(r: Result, results: list[Result]) -> Result:
    """`r`, a broker's row of one N, with the median msg/s of its --rounds rows when it has any."""
    rates = [x.msg_per_s for x in results if x.broker == r.broker and x.clients == r.clients and x.round > 0]
    rates = [x for x in rates if x is not None]
    return dataclasses.replace(r, msg_per_s=statistics.median(rates)) if rates else r


def cpu_per_msg(r: Result) -> float | None:
    """Broker CPU microseconds per delivery during the routing window."""
    if r.broker_cpu_pct is None or not r.msg_per_s:
        return None
    return r.broker_cpu_pct / 100 * 1e6 / r.msg_per_s


def targets(rs: list[Result]) -> list[str]:
    lines = []
    big = [r for r in rs if r.clients >= TARGET_CONNECT_CLIENTS]
    if big:
        r = big[0]
        ok = r.connect_s is not None and r.connect_status == "ok" and r.connect_s <= TARGET_CONNECT_S
        lines.append(
            f"[{'PASS' if ok else 'FAIL'}] {r.clients:,} clients connect+subscribe <= "
            f"{TARGET_CONNECT_S:.0f} s: {connect_cell(r)}"
        )
    else:
        lines.append(f"[ n/a] connect target needs --clients to include {TARGET_CONNECT_CLIENTS:,}")
    rates = [r.msg_per_s for r in rs]
    ok = bool(rates) and all(x is not None and x >= TARGET_MSG_S for x in rates)
    shown = ", ".join(fmt(x, ",.0f") for x in rates)
    if len(rates) > 1 and rates[0] and rates[-1] is not None:
        shown += f" (largest N / smallest N: {rates[-1] / rates[0]:.2f})"
    lines.append(f"[{'PASS' if ok else 'FAIL'}] routing >= {TARGET_MSG_S:,.0f} msg/s at every N: {shown}")
    kbs = [r.kb_per_conn for r in rs]
    ok = bool(kbs) and all(x is not None and x <= TARGET_KB_PER_CONN for x in kbs)
    shown = ", ".join(fmt(x, ".1f") for x in kbs)
    lines.append(f"[{'PASS' if ok else 'FAIL'}] <= {TARGET_KB_PER_CONN:.0f} KB per idle connection: {shown}")
    return lines


# --------------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# The cost of persistence (--persistence-cost).
# --------------------------------------------------------------------------------------------

PERSIST_PAIRS = 10
PERSIST_WINDOW = 50
PERSIST_BACKLOG = 500
# (broker kind, label); the first of each server is the in-memory baseline of its ratios.
PERSIST_CONFIGS = (
    ("fleet", "fleet, in memory"),
    ("fleet+always", "fleet --sync always"),
    ("fleet+interval", "fleet --sync interval (1000 ms)"),
    ("fleet+never", "fleet --sync never"),
    ("mosquitto", "mosquitto, in memory"),
    ("mosquitto+persist", "mosquitto persistence true (no per-message fsync)"),
)
# Targets of issue 14: QoS 1 throughput as a share of the in-memory broker's, in the same run.
PERSIST_TARGETS = {"fleet+always": 0.30, "fleet+interval": 0.80}


@dataclass
class CostResult:
    kind: str
    label: str
    msg_per_s: float | None = None
    delivered: int = 0
    error: str | None = None


async def persistence_cost(args: argparse.Namespace, kind: str, label: str, workdir: Path) -> CostResult:
    """QoS 1 publish throughput (PUBACKs per second of wall clock) of 10 publishers, each with a window
    of 50, to 10 persistent subscribers (CleanSession 0, QoS 1), one topic per pair."""
    res = CostResult(kind, label)
    broker = Broker(kind, workdir, "cost")
    pairs: list[tuple[Stats, Publisher]] = []
    clients: list[Client] = []
    try:
        broker.start()
        await broker.wait_ready(Stats(), args.ready_timeout)
        for i in range(PERSIST_PAIRS):
            stats = Stats()
            topic = f"persist/{i}".encode()
            subscriber = await open_client(
                lambda s=stats, t=topic: Client(s, t), broker.port, f"persist-sub-{i}".encode(), topic,
                args.conn_timeout, clean=False,
            )  # fmt: skip
            clients.append(subscriber)
            prefix = [publish_prefix(topic, PAYLOAD_BYTES, 4)]
            publisher = await open_client(
                lambda s=stats, p=prefix: Publisher(s, p, PERSIST_WINDOW, PERSIST_BACKLOG),
                broker.port, f"persist-pub-{i}".encode(), None, args.conn_timeout,
            )  # fmt: skip
            assert isinstance(publisher, Publisher)
            clients.append(publisher)
            stats.publisher = publisher
            pairs.append((stats, publisher))
        for _, publisher in pairs:
            publisher.running = True
            publisher.pump()

        def acked() -> int:
            return sum(stats.acked for stats, _ in pairs)

        if not await wait_until(lambda: acked() >= args.warmup_msgs, args.warmup_timeout, broker):
            res.error = f"warm-up: {acked()}/{args.warmup_msgs} PUBACKs in {args.warmup_timeout:.0f} s"
            return res
        a0 = acked()
        d0 = sum(stats.delivered for stats, _ in pairs)
        t0 = time.perf_counter()
        while (now := time.perf_counter()) - t0 < args.seconds:
            await asyncio.sleep(min(0.2, args.seconds - (now - t0)))
            broker.check_alive()
        wall = time.perf_counter() - t0
        res.msg_per_s = (acked() - a0) / wall
        res.delivered = sum(stats.delivered for stats, _ in pairs) - d0
        return res
    except (BenchError, OSError, TimeoutError, ConnectionError) as exc:
        res.error = str(exc)
        return res
    finally:
        for _, publisher in pairs:
            publisher.running = False
        for client in clients:
            client.close()
        broker.stop()


def cost_report(results: list[CostResult], fsync_ms: float) -> str:
    lines = [
        "",
        f"persistence cost: QoS 1, {PERSIST_PAIRS} publishers x window {PERSIST_WINDOW}, "
        f"{PERSIST_PAIRS} persistent subscribers, {PAYLOAD_BYTES}-byte payload, the best of the rounds",
        f"fsync of a 4 KB write in the stores' folder: {fsync_ms:.2f} ms",
    ]
    baselines = {r.kind: r.msg_per_s for r in results if "+" not in r.kind}
    rows = []
    verdicts = []
    for r in results:
        base = baselines.get(r.kind.split("+")[0])
        share = r.msg_per_s / base if r.msg_per_s is not None and base else None
        rows.append(
            [r.label, fmt(r.msg_per_s, ",.0f"), "-" if share is None else f"{share:.0%}", r.error or ""]
        )
        target = PERSIST_TARGETS.get(r.kind)
        if target is not None:
            ok = share is not None and share >= target
            verdicts.append(
                f"  {'PASS' if ok else 'FAIL'}  {r.label}: {'-' if share is None else f'{share:.0%}'} "
                f"of in-memory (target >= {target:.0%})"
            )
    lines.append(table(["broker", "msg/s", "vs in-memory", "error"], rows))
    lines += ["targets:", *verdicts]
    return "\n".join(lines)


async def cost_main(args: argparse.Namespace, results: list[CostResult]) -> float:
    """Every persistence configuration in turn; returns the fsync latency (ms) of the work folder."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.ExitStack() as stack:
        workdir = support.workdir(stack, args.log_dir, "broker_scale-")
        fsync_ms = support.fsync_latency(workdir, 1.0) * 1000
        best: dict[str, CostResult] = {}
        # Rounds over every configuration in turn, the best of each kept: on a shared machine the load
        # of others comes and goes, and the best round is the one it disturbed least.
        for _ in range(args.cost_rounds):
            for kind, label in PERSIST_CONFIGS:
                if kind.startswith("mosquitto") and not args.has_mosquitto:
                    continue
                result = await persistence_cost(args, kind, label, workdir)
                kept = best.get(kind)
                if kept is None or (result.msg_per_s or 0) > (kept.msg_per_s or 0):
                    best[kind] = result
        results.extend(best.values())
    return fsync_ms


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--clients", default="1000,5000,10000", help="comma-separated client counts N")
    p.add_argument("--brokers", default="fleet,mosquitto", help=f"comma-separated: {','.join(KNOWN_BROKERS)}")
    p.add_argument("--seconds", type=float, default=5.0, help="routing measurement window (s)")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    p.add_argument("--concurrency", type=int, default=100, help="connects in flight at once")
    p.add_argument("--window", type=int, default=100, help="un-PUBACKed PUBLISHes in flight")
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="routing: publish at most this many msg/s (0: as fast as the window allows); at a rate every "
        "broker sustains, each one works the same batches, so their CPU per delivery compares",
    )
    p.add_argument("--backlog", type=int, default=1000, help="max sent-but-undelivered messages")
    p.add_argument("--warmup-msgs", type=int, default=2000, help="deliveries before the window opens")
    p.add_argument("--phase-timeout", type=float, default=120.0, help="cap on the connect phase (s)")
    p.add_argument("--conn-timeout", type=float, default=30.0, help="cap on one client's connect+subscribe")
    p.add_argument("--warmup-timeout", type=float, default=30.0)
    p.add_argument("--stall-timeout", type=float, default=10.0, help="abort routing after this long idle")
    p.add_argument("--drain-timeout", type=float, default=10.0)
    p.add_argument("--ready-timeout", type=float, default=30.0, help="cap on a broker's start-up (s)")
    p.add_argument("--settle", type=float, default=2.0, help="idle pause before each RSS reading (s)")
    p.add_argument("--max-errors", type=int, default=100, help="connect errors before giving up on a run")
    p.add_argument("--log-dir", type=Path, help="keep broker logs and configs here (default: temp dir)")
    p.add_argument("--base-worktree", type=Path, help="the checkout whose fleet broker `fleet-base` runs")
    p.add_argument(
        "--profile",
        type=Path,
        help="run the fleet brokers under cProfile during the routing windows, write DIR/<broker>-<N>.prof "
        "and print each broker's hottest functions per delivery (CPU figures then include cProfile's cost)",
    )
    p.add_argument(
        "--flood",
        action="store_true",
        help="run the flood phase instead of the scale phases: one client floods QoS 0 while others publish",
    )
    p.add_argument("--flood-seconds", type=float, default=5.0, help="each flood-phase window (s)")
    p.add_argument("--flood-others", type=int, default=10, help="clients publishing beside the flooder")
    p.add_argument("--flood-rate", type=float, default=50.0, help="messages/s each other client publishes")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="rounds, each running every broker: with --flood, a fresh broker per round; else every broker "
        "stays up with its clients connected and runs one routing window per round, interleaved",
    )
    p.add_argument(
        "--persistence-cost",
        action="store_true",
        help="measure only QoS 1 throughput with persistence in each sync mode against in-memory",
    )
    p.add_argument("--cost-rounds", type=int, default=2, help="--persistence-cost: rounds, best kept")
    args = p.parse_args(argv)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    try:
        args.clients = [int(x) for x in args.clients.split(",") if x.strip()]
    except ValueError:
        p.error(f"--clients: not a list of integers: {args.clients!r}")
    args.brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    bad = [b for b in args.brokers if b not in KNOWN_BROKERS]
    if bad:
        p.error(f"--brokers: unknown {bad}; known: {list(KNOWN_BROKERS)}")
    if "fleet-base" in args.brokers and (
        args.base_worktree is None or not (args.base_worktree / "fleet").is_dir()
    ):
        p.error("--brokers fleet-base needs --base-worktree, a checkout with a fleet/ package")
    if not args.clients or min(args.clients) < 1:
        p.error("--clients: give positive counts")
    if "mosquitto" in args.brokers and not Path(MOSQUITTO_BIN).exists():
        p.error(f"mosquitto not found at {MOSQUITTO_BIN} (apt-get install mosquitto)")
    return args


async def amain(args: argparse.Namespace, results: list[Any]) -> None:
    """Run every (N, broker) pair in turn, or with --flood the flood phase of each broker, appending
    to `results` as each finishes."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.ExitStack() as stack:
        workdir = support.workdir(stack, args.log_dir, "broker_scale-")
        if args.flood:
            # Rounds interleave the brokers, so that load from outside falls on each alike.
            for _ in range(args.rounds):
                for kind in args.brokers:
                    results.append(await run_flood(args, kind, workdir))
            return
        for n in args.clients:
            if args.rounds > 1:
                await run_rounds(args, n, workdir, results)
                continue
            for kind in args.brokers:
                results.append(await run_one(args, kind, n, workdir))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Interleaved rounds keep every broker's clients connected at once.
    fd_limit = raise_fd_limit(max(args.clients) * (len(args.brokers) if args.rounds > 1 else 1) + 100)
    started = datetime.datetime.now(datetime.UTC)
    command = " ".join([".venv/bin/python", "bench/broker_scale.py", *sys.argv[1:]])
    print(f"broker_scale {started:%Y-%m-%d %H:%M} UTC: {command}")
    print(
        f"  {os.cpu_count()} CPUs, Python {platform.python_version()}, fd limit {fd_limit}, "
        f"payload {PAYLOAD_BYTES} B, QoS 1, window {args.window}, connect concurrency {args.concurrency}"
    )
    print(
        "  mosquitto: defaults except 'listener PORT 127.0.0.1' + 'allow_anonymous true' "
        "(max_inflight_messages 20, max_queued_messages 1000, no persistence)"
    )
    print("  load average (1, 5, 15 min) at the start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if "fleet-base" in args.brokers:
        base = args.base_worktree.resolve()
        print(
            f"  fleet: {support.ROOT} at {support.git_head('broker')}; "
            f"fleet-base: {base} at {support.git_head('broker', base)}"
        )
    if args.persistence_cost:
        args.has_mosquitto = Path(MOSQUITTO_BIN).exists()
        print("  figures from a machine shared with other work: compare ratios within one run only")
        costs: list[CostResult] = []
        try:
            fsync_ms = asyncio.run(cost_main(args, costs))
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("\ninterrupted: brokers stopped, sockets closed", file=sys.stderr)
            return 130
        print(cost_report(costs, fsync_ms))
        if args.json:
            cost_doc = {
                **support.run_record(started, command, args),
                "persistence": [asdict(r) for r in costs],
            }
            args.json.write_text(json.dumps(cost_doc, indent=2) + "\n")
        return 1 if any(r.error for r in costs) else 0
    results: list[Any] = []
    show = flood_report if args.flood else functools.partial(report, args=args)
    try:
        asyncio.run(amain(args, results))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted: brokers stopped, sockets closed", file=sys.stderr)
        if results:
            print("results so far:" + show(results))
        return 130
    print(show(results))
    if args.profile and not args.flood:
        print(profile_report(results, args))
    print("\nload average (1, 5, 15 min) at the end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if args.json:
        doc: dict[str, Any] = {
            **support.run_record(started, command, args),
            "targets": {
                "connect_clients": TARGET_CONNECT_CLIENTS,
                "connect_s": TARGET_CONNECT_S,
                "msg_per_s": TARGET_MSG_S,
                "kb_per_conn": TARGET_KB_PER_CONN,
            },
            "results": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
