"""Bridge scale benchmark: `fleet bridge` (MQTT -> WebSocket, SSE, gRPC) against Mosquitto, measured
as a subprocess pinned to one core, with its consumers and the publisher on the other.

Everything runs over loopback.  Each phase gets a fresh Mosquitto (``/usr/sbin/mosquitto``, its
defaults except ``listener PORT 127.0.0.1`` and ``allow_anonymous true``) and a fresh bridge,
``python -m fleet bridge --broker mqtt://127.0.0.1:PORT --http-port 0 --grpc-port 0`` (plus a
``--config`` TOML for the stall phase), started with ``taskset -c 0``.  The publisher is this
process: a hand-written MQTT 3.1.1 client that sends QoS 0, 140-byte JSON payloads to
``fleet/dev-NNN/telemetry`` (100 devices) at a paced rate; each payload starts with
``{"ts":<microseconds since the epoch>``.  The consumers live in one or two child processes of this
script (``--child``), asyncio each:

- WebSocket: the ``websockets`` library's sans-I/O ``ClientProtocol`` on an asyncio Protocol
  (``GET /ws?filter=%23``);
- SSE: a raw streaming HTTP/1.1 reader with its own chunked decoder (``GET /events?filter=%23``);
- gRPC: ``grpc.aio``, one channel (and TCP connection) per consumer, ``Subscribe(filters=["#"])``
  read as raw bytes (no response deserializer); each event of an ``events`` batch is a delivery.

Every consumer subscribes to everything, so one published message is one delivery per consumer.
A delivery is counted when a consumer has read the event; CPU is psutil's user + system time of
each PID; the bridge's own counters come from its ``/metrics``.

Phases (``--phases``):

1. ``mixed``: 100 consumers, 34 WebSocket + 33 SSE (one child) and 33 gRPC (another child).  The
   offered rate steps up through ``--rates`` until the sweep is both ``--past-saturation`` steps past
   the first saturated step and ``--past-overload`` steps past the first overloaded one (each
   sweep does this; the rates list bounds it).  Per step, after ``--warmup`` s: deliveries per second
   and per bridge CPU-second, per transport, the bridge's MQTT intake against what was published,
   drops, RSS, and the CPU of the client core.
2. ``grpc``: the same with 100 gRPC consumers (two children of 50), over ``--grpc-rates``.
3. ``ingest``: 3 consumers (one per transport), offered ``--ingest-rates`` msg/s: does the bridge's
   MQTT side keep up while it has CPU left?
4. ``latency`` (then ``stall``): the bridge with ``[bridge] send_timeout = --send-timeout``; 100
   consumers as in ``mixed`` plus one more per transport that will stall; ``--latency-rate`` msg/s
   (300, ~30k deliveries/s).  Latency is device publish (the payload's ts) to consumer read, per
   transport.  Then the three extra consumers stop reading (they have small receive buffers, so
   the bridge's writes back up within seconds): for ``--stall-seconds`` the bridge's RSS and its
   per-transport consumer gauge are sampled, and the other consumers' latency is measured again.

Markers: ``SATURATED``: the bridge used >= 90 % of its core.  ``OVERLOADED``: the consumers' queues
dropped >= 1 % of the events offered to them (``fleet_bridge_drops_total`` over
``fleet_bridge_deliveries_total``); fairness is judged on these steps, deliveries per CPU-second
on the step with the most deliveries/s.  ``CLIENT-BOUND``: the client core
(consumers + publisher + Mosquitto) was >= 90 % busy, so the bridge may do better than the figure.
A final WARNING names steps where other processes used > 25 % of a core.

Usage::

    .venv/bin/python bench/bridge_scale.py [--seconds 5] [--json FILE] [--phases mixed,grpc,ingest,latency]
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
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import support
from support import BenchError, Proc, cpu_seconds, fmt, free_port, host_busy_seconds, log_tail
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

HOST = "127.0.0.1"
SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
MOSQUITTO_BIN = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
TASKSET = shutil.which("taskset")
LINE_PREFIX = "BRIDGE-BENCH "
PAYLOAD_BYTES = 140
DEVICES = 100
TRANSPORTS = ("websocket", "sse", "grpc")  # the bridge's own transport labels
SHORT = {"websocket": "ws", "sse": "sse", "grpc": "grpc"}
GRPC_METHOD = "/mqtt_fleet.bridge.v1.FleetBridgeService/Subscribe"
BRIDGE_CORE, CLIENT_CORE = 0, 1
SATURATED_PCT = 90.0
OVERLOAD_SHARE = 0.01  # a step overloads when consumers' queues drop >= 1 % of the deliveries offered
CLIENT_BOUND_PCT = 90.0
OTHER_CPU_WARN = 25.0
STALL_RCVBUF = 8192  # receive buffer of a consumer that will stall (the kernel doubles it)
STALL_MSS = 536  # and its MSS (see open_socket)
STALL_SETTLE = 1.0  # s after the stall before the others' latency window opens
PREFILL_RATE = 6000.0  # msg/s that fill the bridge's replay ring before the consumers connect

# Acceptance targets (see bench/README.md, "bridge scale").
TARGET_MIXED = 100_000.0  # deliveries per bridge CPU-second, 34 WS + 33 SSE + 33 gRPC
TARGET_GRPC = 50_000.0  # the same, 100 gRPC consumers
TARGET_FAIRNESS = 0.5  # no transport's per-consumer rate below half of another's, overloaded
TARGET_INGEST = 0.99  # received / published while the bridge has CPU left
TARGET_P99_MS = 10.0
RSS_GROWTH_MB = 20.0  # during the stall phase
RSS_SLOPE_MB_S = 0.1  # over the stall phase's second half
NOISE_FACTOR, NOISE_MS = 1.5, 1.0  # "within noise": p99 <= baseline * 1.5 + 1 ms
NAIVE = {
    "mixed": "41-49k",
    "grpc": "21-27k",
    "fairness": "gRPC 2.2k/s vs 24k/s",
    "ingest": "17k of 20k msg/s",
    "p99": "4-45 ms",
    "stall": "+0.72 MB/s, never cut",
}


# --------------------------------------------------------------------------------------------
# Shared helpers.
# --------------------------------------------------------------------------------------------


def emit(event: str, **data: Any) -> None:
    print(LINE_PREFIX + json.dumps({"event": event, **data}), flush=True)


def percentiles(values: Sequence[int]) -> dict[str, float]:
    """n, p50, p99, p99.9 and max of latencies in microseconds, as milliseconds."""
    if not values:
        return {"n": 0}
    v = sorted(values)
    n = len(v)

    def pick(q: float) -> float:
        return v[min(n - 1, int(q * (n - 1) + 0.5))] / 1000

    return {"n": n, "p50": pick(0.50), "p99": pick(0.99), "p999": pick(0.999), "max": v[-1] / 1000}


def sources_fingerprint() -> dict[str, str]:
    """sha256 of bridges/*.py (other people edit them in parallel) and the git HEAD."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "bridges").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    out = {"bridges_sha256": digest.hexdigest()[:12]}
    head = support.git_head("bridges")
    if head is not None:
        out["git_head"] = head
    return out


# --------------------------------------------------------------------------------------------
# Child: the consumers.  Commands on stdin (one per line), JSON event lines on stdout.
# --------------------------------------------------------------------------------------------

_TS_JSON = b'"ts":'
_DOUBLE = struct.Struct("<d")


def ts_of_json(data: bytes) -> int:
    """The payload's ts (microseconds) from a JSON envelope, or from a serialized gRPC Event, whose
    `json_text` holds the payload's JSON as the envelope has it."""
    i = data.find(_TS_JSON) + len(_TS_JSON)
    return int(data[i : data.index(b",", i)])


_RECEIVED_AT = b'"received_at":'


def received_at_of_json(data: bytes) -> int:
    """The envelope's received_at (the bridge's clock when it took the message), in microseconds."""
    i = data.find(_RECEIVED_AT) + len(_RECEIVED_AT)
    return round(float(data[i : data.index(b",", i)]) * 1e6)


def _varint_at(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(10):
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
    return value, pos


_EVENTS_TAG = 0x22  # SubscribeResponse.events (field 4, length-delimited)


def grpc_events(data: bytes) -> list[bytes]:
    """The serialized Events of a SubscribeResponse; empty for a Dropped or Reset item.

    A batch is `0x22 <length>` then one `0x0a <length> <Event>` per event (EventBatch.events)."""
    if data[0] != _EVENTS_TAG:
        return []
    events = []
    _, pos = _varint_at(data, 1)
    for _ in range(len(data)):
        if pos >= len(data):
            break
        length, pos = _varint_at(data, pos + 1)
        events.append(data[pos : pos + length])
        pos += length
    return events


def received_at_of_grpc(data: bytes) -> int:
    """Event.received_at (field 7, a double) from a serialized Event, in microseconds."""
    pos = 0
    for _ in range(16):
        key, pos = _varint_at(data, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _varint_at(data, pos)
        elif wire == 1:
            if key >> 3 == 7:
                return round(_DOUBLE.unpack_from(data, pos)[0] * 1e6)
            pos += 8
        elif wire == 2:
            length, pos = _varint_at(data, pos)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            break
    raise ValueError("no received_at in the gRPC event")


class Conn:
    """One consumer's counters."""

    __slots__ = ("closed", "count", "stall", "transport")

    def __init__(self, transport: str, stall: bool) -> None:
        self.transport = transport
        self.stall = stall  # it will stop reading on the "stall" command
        self.count = 0
        self.closed: str | None = None


class Owner:
    """The state shared by all the consumers of one child process (one event loop)."""

    def __init__(self) -> None:
        self.conns: list[Conn] = []
        self.recording = False
        self.stalled = False
        # Latencies in microseconds (arrays: compact, and nothing for the garbage collector to scan).
        self.lat: dict[str, array[int]] = {t: array("q") for t in TRANSPORTS}  # publish -> read
        self.lat_out: dict[str, array[int]] = {t: array("q") for t in TRANSPORTS}  # bridge intake -> read
        self.lat_in: dict[str, array[int]] = {t: array("q") for t in TRANSPORTS}  # publish -> bridge intake
        self.when: array[int] = array("q")  # the read time of each sample, all transports
        self.when_lat: array[int] = array("q")
        self.started_us = 0
        self.notes: dict[str, int] = dict.fromkeys(TRANSPORTS, 0)  # dropped/reset notices
        self.errors: list[str] = []
        self.quit = asyncio.Event()
        self.stall_hooks: list[Callable[[], None]] = []

    def error(self, text: str) -> None:
        if len(self.errors) < 50:
            self.errors.append(text)

    def record(self, transport: str, now_us: int, ts: int, received_at: int) -> None:
        self.lat[transport].append(now_us - ts)
        self.lat_out[transport].append(now_us - received_at)
        self.lat_in[transport].append(received_at - ts)
        self.when.append(now_us)
        self.when_lat.append(now_us - ts)

    def reset_latency(self) -> None:
        self.lat = {t: array("q") for t in TRANSPORTS}
        self.lat_out = {t: array("q") for t in TRANSPORTS}
        self.lat_in = {t: array("q") for t in TRANSPORTS}
        self.when = array("q")
        self.when_lat = array("q")
        self.started_us = time.time_ns() // 1000
        self.recording = True

    def timeline(self) -> list[list[float]]:
        """Per second since recording started: [second, samples, p99 ms, max ms], all transports."""
        buckets: dict[int, list[int]] = {}
        start = self.started_us
        for when, lat in zip(self.when, self.when_lat, strict=True):
            buckets.setdefault((when - start) // 1_000_000, []).append(lat)
        out = []
        for sec in sorted(buckets):
            p = percentiles(buckets[sec])
            out.append([sec, p["n"], p["p99"], p["max"]])
        return out

    def stall(self) -> None:
        self.stalled = True
        for hook in self.stall_hooks:
            hook()

    def snapshot(self) -> dict[str, Any]:
        counts = dict.fromkeys(TRANSPORTS, 0)
        stalled_counts = dict.fromkeys(TRANSPORTS, 0)
        closed = dict.fromkeys(TRANSPORTS, 0)
        stalled_closed = dict.fromkeys(TRANSPORTS, 0)
        per: dict[str, list[int]] = {t: [] for t in TRANSPORTS}
        for c in self.conns:
            if c.stall:
                stalled_counts[c.transport] += c.count
                stalled_closed[c.transport] += c.closed is not None
            else:
                counts[c.transport] += c.count
                closed[c.transport] += c.closed is not None
                per[c.transport].append(c.count)
        reasons = sorted({f"{c.transport}: {c.closed}" for c in self.conns if c.closed and not c.stall})
        return {
            "cpu": cpu_seconds(psutil.Process()),
            "counts": counts,
            "stalled_counts": stalled_counts,
            "closed": closed,
            "stalled_closed": stalled_closed,
            "closed_reasons": reasons[:5],
            "per": per,
            "notes": self.notes,
            "errors": self.errors[-5:],
            "lat": {t: percentiles(v) for t, v in self.lat.items()} if self.recording else {},
            "lat_out": {t: percentiles(v) for t, v in self.lat_out.items()} if self.recording else {},
            "lat_in": {t: percentiles(v) for t, v in self.lat_in.items()} if self.recording else {},
            "timeline": self.timeline() if self.recording else [],
        }


async def open_socket(port: int, small: bool) -> socket.socket:
    """A connected non-blocking TCP socket.

    `small` (a consumer that will stall): a small SO_RCVBUF caps the window it offers, and a small
    MSS keeps the bridge's send buffer small too (Linux sizes it from the MSS and the congestion
    window; over loopback's 64 KB MSS it grows to megabytes).  So the bridge's writes to it back up
    within seconds of it stopping to read, instead of after minutes of filling kernel buffers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if small:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALL_RCVBUF)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, STALL_MSS)
        await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
    except BaseException:
        sock.close()
        raise
    return sock


class WsConsumer(asyncio.Protocol):
    """A WebSocket consumer: websockets' sans-I/O client protocol, asyncio does the I/O."""

    def __init__(self, owner: Owner, conn: Conn, port: int) -> None:
        self.owner = owner
        self.conn = conn
        self.proto = ClientProtocol(parse_uri(f"ws://{HOST}:{port}/ws?filter=%23"), max_size=1 << 20)
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if conn.stall:
            owner.stall_hooks.append(self.pause)

    def pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.proto.send_request(self.proto.connect())
        self._flush()

    def _flush(self) -> None:
        assert self.transport is not None
        for data in self.proto.data_to_send():
            if data:
                self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        proto = self.proto
        proto.receive_data(data)
        owner = self.owner
        record = owner.recording and not self.conn.stall
        n = 0
        now = time.time_ns() // 1000 if record else 0
        for ev in proto.events_received():
            if type(ev) is Frame:
                if ev.opcode is Opcode.TEXT:
                    payload = ev.data
                    if payload.startswith(b'{"id":'):
                        n += 1
                        if record:
                            owner.record("websocket", now, ts_of_json(payload), received_at_of_json(payload))
                    else:
                        owner.notes["websocket"] += 1
            elif not self.ready.done():  # the handshake response
                if proto.state is State.OPEN:
                    self.ready.set_result(None)
                else:
                    self.ready.set_exception(ConnectionError(f"handshake failed: {proto.handshake_exc!r}"))
        self.conn.count += n
        self._flush()

    def eof_received(self) -> bool | None:
        self.proto.receive_eof()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn.closed is None:
            code = getattr(self.proto.close_rcvd, "code", None)
            self.conn.closed = f"closed (code {code})" if code else f"connection lost ({exc!r})"
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(self.conn.closed))


class SseConsumer(asyncio.Protocol):
    """An SSE consumer: HTTP/1.1 GET, then the chunked body parsed into events, all by hand."""

    def __init__(self, owner: Owner, conn: Conn, port: int) -> None:
        self.owner = owner
        self.conn = conn
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.head: bytearray | None = bytearray()  # None once the response head is parsed
        self.raw = bytearray()  # chunked transfer coding, not yet decoded
        self.body = bytearray()  # decoded, starting at an event boundary
        self.chunk_left = 0  # bytes of the current chunk still to come (+2 for its CRLF)
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if conn.stall:
            owner.stall_hooks.append(self.pause)

    def pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(
            b"GET /events?filter=%%23 HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\n\r\n" % (HOST.encode(), self.port)
        )

    def data_received(self, data: bytes) -> None:
        if self.head is not None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    self._fail("response head too long")
                return
            head = bytes(self.head[:end]).lower()
            rest = bytes(self.head[end + 4 :])
            self.head = None
            status = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"?"
            if status != b"200" or b"transfer-encoding: chunked" not in head:
                self._fail(f"unexpected response: {head[:200]!r}")
                return
            self.ready.set_result(None)
            data = rest
        self.raw += data
        self._dechunk()
        self._events()

    def _dechunk(self) -> None:
        raw = self.raw
        pos = 0
        end = len(raw)
        for _ in range(1_000_000):
            if self.chunk_left:
                take = min(self.chunk_left, end - pos)
                if take == 0:
                    break
                data_left = self.chunk_left - 2  # the chunk's data, then its CRLF
                if data_left > 0:
                    self.body += raw[pos : pos + min(take, data_left)]
                self.chunk_left -= take
                pos += take
                continue
            nl = raw.find(b"\r\n", pos)
            if nl < 0:
                break
            size = int(bytes(raw[pos:nl]).split(b";")[0], 16)
            pos = nl + 2
            if size == 0:
                self.conn.closed = self.conn.closed or "the stream ended"
                break
            self.chunk_left = size + 2
        del raw[:pos]

    def _events(self) -> None:
        body = self.body
        last = body.rfind(b"\n\n")
        if last < 0:
            return
        done = bytes(body[: last + 2])
        del body[: last + 2]
        n = done.count(b"\n\nid: ") + done.startswith(b"id: ")
        self.conn.count += n
        notices = done.count(b"event: dropped") + done.count(b"event: reset")
        if notices:
            self.owner.notes["sse"] += notices
        if self.owner.recording and not self.conn.stall and n:
            now = time.time_ns() // 1000
            record = self.owner.record
            for event in done.split(b"\n\n"):
                if event.startswith(b"id: "):
                    record("sse", now, ts_of_json(event), received_at_of_json(event))

    def _fail(self, reason: str) -> None:
        self.conn.closed = reason
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn.closed is None:
            self.conn.closed = f"connection lost ({exc!r})"
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(self.conn.closed))


async def grpc_consumer(owner: Owner, conn: Conn, port: int, ready: asyncio.Future[None]) -> None:
    """A gRPC consumer: one channel of its own, Subscribe(#), messages read as raw bytes."""
    import grpc

    from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2 as pb

    options: list[tuple[str, Any]] = [("grpc.use_local_subchannel_pool", 1)]  # one TCP connection each
    if conn.stall:
        options.append(("grpc.http2.bdp_probe", 0))  # keep the flow-control window at its initial size
    stall = asyncio.Event()
    if conn.stall:
        owner.stall_hooks.append(stall.set)
    async with grpc.aio.insecure_channel(f"{HOST}:{port}", options=options) as channel:
        subscribe = channel.unary_stream(
            GRPC_METHOD, request_serializer=pb.SubscribeRequest.SerializeToString, response_deserializer=None
        )
        call = subscribe(pb.SubscribeRequest(filters=["#"]))
        try:
            await call.initial_metadata()  # sent once the bridge has registered the subscription
            if not ready.done():
                ready.set_result(None)
            for _ in range(1 << 62):
                if stall.is_set():
                    await owner.quit.wait()
                    return
                data = await call.read()
                if data is grpc.aio.EOF:
                    break
                events = grpc_events(data)
                if not events:
                    owner.notes["grpc"] += 1  # Dropped or Reset
                conn.count += len(events)
                if owner.recording and not conn.stall:
                    now = time.time_ns() // 1000
                    for event in events:
                        owner.record("grpc", now, ts_of_json(event), received_at_of_grpc(event))
            conn.closed = f"stream ended ({await call.code()})"
        except grpc.aio.AioRpcError as exc:
            conn.closed = f"{exc.code().name}: {exc.details()}"
            if not ready.done():
                ready.set_exception(ConnectionError(conn.closed))
        finally:
            call.cancel()


async def child_amain(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    owner = Owner()
    deadline = time.monotonic() + args.child_deadline
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    layout = [
        ("websocket", args.ws, False),
        ("sse", args.sse, False),
        ("grpc", args.grpc, False),
        ("websocket", args.stall_ws, True),
        ("sse", args.stall_sse, True),
        ("grpc", args.stall_grpc, True),
    ]
    transports: list[asyncio.BaseTransport] = []
    tasks: list[asyncio.Task[None]] = []
    gate = asyncio.Semaphore(20)

    async def connect(transport: str, stall: bool) -> None:
        conn = Conn(transport, stall)
        owner.conns.append(conn)
        async with gate:
            if transport == "grpc":
                ready: asyncio.Future[None] = loop.create_future()
                tasks.append(asyncio.create_task(grpc_consumer(owner, conn, args.grpc_port, ready)))
                await ready
                return
            sock = await open_socket(args.http_port, stall)
            factory: Callable[[], WsConsumer | SseConsumer]
            if transport == "websocket":
                factory = lambda: WsConsumer(owner, conn, args.http_port)  # noqa: E731
            else:
                factory = lambda: SseConsumer(owner, conn, args.http_port)  # noqa: E731
            tr, proto = await loop.create_connection(factory, sock=sock)
            transports.append(tr)
            await proto.ready

    t0 = time.monotonic()
    try:
        async with asyncio.timeout(args.connect_timeout):
            await asyncio.gather(*(connect(t, s) for t, n, s in layout for _ in range(n)))
    except (OSError, ConnectionError, TimeoutError) as exc:
        emit("failed", error=f"connecting the consumers: {exc!r}", errors=owner.errors)
        return 1
    emit("ready", connect_s=time.monotonic() - t0, consumers=len(owner.conns))
    # This process is the measuring instrument: its own collector pauses would show up as latency.
    # So no automatic collections; a full one between windows (at each command) instead.
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = await asyncio.wait_for(reader.readline(), left)
            except TimeoutError:
                break
            command = line.decode().strip()
            if command in ("", "quit"):
                break
            if command == "snap":
                emit("snap", **owner.snapshot())
                gc.collect()
            elif command == "record":
                gc.collect()
                owner.reset_latency()
                emit("recording")
            elif command == "stall":
                owner.stall()
                emit("stalled")
            else:
                emit("unknown", command=command)
    finally:
        owner.quit.set()
        for tr in transports:
            tr.abort()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
    return 0


def child_main(args: argparse.Namespace) -> int:
    if args.pin_child is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {args.pin_child})
    try:
        return asyncio.run(child_amain(args))
    except KeyboardInterrupt:
        return 130


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
        conf.write_text(f"listener {self.port} {HOST}\nallow_anonymous true\n")
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


_SERVING = re.compile(r"fleet bridge: serving (http|grpc)://[^:]+:(\d+)")


class Bridge(Proc):
    """`python -m fleet bridge` on free ports (the bridge picks them and prints them)."""

    def __init__(
        self, workdir: Path, tag: str, broker_port: int, core: int | None, config: Path | None, python: str
    ) -> None:
        cmd = [python, "-m", "fleet", "bridge", "--broker", f"mqtt://{HOST}:{broker_port}"]
        cmd += ["--host", HOST, "--http-port", "0", "--grpc-port", "0"]
        if config is not None:
            cmd += ["--config", str(config)]
        super().__init__("bridge", pinned(core, cmd), workdir / f"bridge-{tag}.log")
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

    async def metrics(self) -> dict[str, float]:
        status, body = await http_get(self.http_port, "/metrics", 5.0)
        if status != 200:
            raise BenchError(f"/metrics answered {status}")
        return parse_metrics(body.decode())


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
    published: int
    metrics: dict[str, float]
    snaps: list[dict[str, Any]]


@dataclass
class Step:
    phase: str
    rate: float
    consumers: dict[str, int]
    window_s: float = 0.0
    published_per_s: float = 0.0
    events_in_per_s: float = 0.0
    ingest_ratio: float | None = None  # events_in / published over the window
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

    @property
    def saturated(self) -> bool:
        return self.bridge_cpu_pct >= SATURATED_PCT

    @property
    def client_bound(self) -> bool:
        return self.client_core_pct >= CLIENT_BOUND_PCT

    @property
    def overloaded(self) -> bool:
        return self.drop_share is not None and self.drop_share >= OVERLOAD_SHARE


def _sum(snaps: list[dict[str, Any]], key: str) -> dict[str, int]:
    out = dict.fromkeys(TRANSPORTS, 0)
    for s in snaps:
        for t, v in s.get(key, {}).items():
            out[t] += v
    return out


def step_from(phase: str, rate: float, consumers: dict[str, int], a: Sample, b: Sample) -> Step:
    dt = b.t - a.t
    st = Step(phase, rate, consumers, window_s=dt)
    st.published_per_s = (b.published - a.published) / dt
    ev_in = b.metrics.get("fleet_bridge_events_in_total", 0) - a.metrics.get(
        "fleet_bridge_events_in_total", 0
    )
    st.events_in_per_s = ev_in / dt
    if b.published > a.published:
        st.ingest_ratio = ev_in / (b.published - a.published)
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
    st.deliveries_per_cpu_s = sum(rb[t] - ra[t] for t in TRANSPORTS) / cpu if cpu > 0 else None
    st.bridge_cpu_pct = 100 * cpu / dt
    st.consumers_cpu_pct = 100 * (b.children_cpu - a.children_cpu) / dt
    st.mosquitto_cpu_pct = 100 * (b.mosquitto_cpu - a.mosquitto_cpu) / dt
    st.bench_cpu_pct = 100 * (b.own_cpu - a.own_cpu) / dt
    st.client_core_pct = st.consumers_cpu_pct + st.mosquitto_cpu_pct + st.bench_cpu_pct
    busy = 100 * (b.host_busy - a.host_busy) / dt
    st.other_cpu_pct = max(0.0, busy - st.bridge_cpu_pct - st.client_core_pct)
    st.bridge_rss_mb = b.bridge_rss / 2**20
    st.closed = _sum(b.snaps, "closed")
    for snap in b.snaps:
        st.latency_ms.update({t: v for t, v in snap.get("lat", {}).items() if v.get("n")})
        st.latency_out_ms.update({t: v for t, v in snap.get("lat_out", {}).items() if v.get("n")})
        st.latency_in_ms.update({t: v for t, v in snap.get("lat_in", {}).items() if v.get("n")})
    return st


class Rig:
    """Mosquitto, a bridge, the publisher and the consumer children of one phase."""

    def __init__(self, args: argparse.Namespace, workdir: Path, tag: str, config: Path | None = None) -> None:
        self.args = args
        self.tag = tag
        self.workdir = workdir
        self.mosquitto = Mosquitto(workdir, tag, args.client_core)
        self.bridge = Bridge(workdir, tag, self.mosquitto.port, args.bridge_core, config, args.bridge_python)
        self.children: list[Child] = []
        self.want = dict.fromkeys(TRANSPORTS, 0)  # consumers the bridge should count
        self.publisher: Publisher | None = None
        self.me = psutil.Process()

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
            cmd = [
                sys.executable,
                str(SCRIPT),
                "--child",
                "--http-port",
                str(self.bridge.http_port),
                "--grpc-port",
                str(self.bridge.grpc_port),
                "--connect-timeout",
                str(args.connect_timeout),
                "--child-deadline",
                str(args.child_deadline),
            ]
            if args.client_core is not None:
                cmd += ["--pin-child", str(args.client_core)]
            for key in ("ws", "sse", "grpc", "stall_ws", "stall_sse", "stall_grpc"):
                cmd += [f"--{key.replace('_', '-')}", str(counts.get(key, 0))]
            child = Child(f"consumers-{i}", cmd, self.workdir / f"consumers-{self.tag}-{i}.log")
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
            published=self.publisher.sent if self.publisher else 0,
            metrics={},
            snaps=list(snaps),
        )
        s.metrics = await self.bridge.metrics()
        return s

    async def measure(self, phase: str, rate: float, consumers: dict[str, int]) -> Step:
        assert self.publisher is not None
        self.publisher.set_rate(rate)
        await self.sleep(self.args.warmup)
        a = await self.sample()
        await self.sleep(self.args.seconds)
        b = await self.sample()
        return step_from(phase, rate, consumers, a, b)

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


# --------------------------------------------------------------------------------------------
# Phases.
# --------------------------------------------------------------------------------------------


@dataclass
class Sweep:
    phase: str
    consumers: dict[str, int]
    steps: list[Step] = field(default_factory=list)
    published_total: int = 0
    events_in_total: int = 0
    error: str | None = None

    @property
    def ceiling(self) -> Step | None:
        """The step with the most deliveries per second."""
        return max(self.steps, key=lambda s: s.deliveries_per_s, default=None)

    @property
    def best_per_cpu(self) -> Step | None:
        """The step with the most deliveries per bridge CPU-second."""
        return max(self.steps, key=lambda s: s.deliveries_per_cpu_s or 0, default=None)

    @property
    def overloaded(self) -> list[Step]:
        return [s for s in self.steps if s.overloaded]

    @property
    def least_fair(self) -> Step | None:
        """The overloaded step with the lowest fairness: the one target 3 is judged on."""
        return min(self.overloaded, key=lambda s: s.fairness or 0, default=None)


def past(first: int | None, steps: int, i: int) -> bool:
    """Step `i` is at least `steps` steps after step `first` (None: no such step yet)."""
    return first is not None and i - first >= steps


def step_line(st: Step) -> str:
    rec = " / ".join(f"{SHORT[t]} {st.received_per_s[t]:,.0f}" for t in TRANSPORTS if st.consumers.get(t))
    drops = sum(st.drops_per_s.values())
    marks = (
        (" SATURATED" if st.saturated else "")
        + (" OVERLOADED" if st.overloaded else "")
        + (" CLIENT-BOUND" if st.client_bound else "")
    )
    return (
        f"  {st.rate:>7,.0f} msg/s: in {st.events_in_per_s:,.0f}/s "
        f"({fmt(st.ingest_ratio and 100 * st.ingest_ratio, '.1f')} %)"
        f", delivered {st.deliveries_per_s:,.0f}/s ({rec}), dropped {drops:,.0f}/s, bridge CPU "
        f"{st.bridge_cpu_pct:.0f} %, {fmt(st.deliveries_per_cpu_s, ',.0f')} per CPU-s, client core "
        f"{st.client_core_pct:.0f} %, other {st.other_cpu_pct:.0f} %, RSS {st.bridge_rss_mb:.0f} MB{marks}"
    )


async def run_sweep(
    args: argparse.Namespace,
    workdir: Path,
    phase: str,
    layout: list[dict[str, int]],
    rates: list[float],
    sweeps: dict[str, Sweep],
) -> Sweep:
    consumers = {
        t: sum(c.get(k, 0) for c in layout)
        for t, k in (("websocket", "ws"), ("sse", "sse"), ("grpc", "grpc"))
    }
    sweep = sweeps[phase] = Sweep(phase, consumers)  # registered at once: an interrupt reports its steps
    shown = ", ".join(f"{n} {SHORT[t]}" for t, n in consumers.items() if n)
    print(f"\n- {phase}: {shown} consumers in {len(layout)} process(es); offered {rates} msg/s", flush=True)
    rig = Rig(args, workdir, phase)
    try:
        await rig.start(layout)
        first_saturated: int | None = None
        first_overloaded: int | None = None
        for i, rate in enumerate(rates):
            st = await rig.measure(phase, rate, consumers)
            sweep.steps.append(st)
            print(step_line(st), flush=True)
            if first_saturated is None and st.saturated:
                first_saturated = i
            if first_overloaded is None and st.overloaded:
                first_overloaded = i
            if past(first_saturated, args.past_saturation, i) and past(
                first_overloaded, args.past_overload, i
            ):
                break
        sweep.published_total, sweep.events_in_total = await rig.drain()
        lost = sweep.published_total - sweep.events_in_total
        print(
            f"  total: published {sweep.published_total:,}, bridge received {sweep.events_in_total:,}"
            + (f" ({lost:,} never arrived)" if lost else ""),
            flush=True,
        )
    except BenchError as exc:
        sweep.error = str(exc)
        print(f"  ! {exc}", flush=True)
    finally:
        rig.stop()
    return sweep


@dataclass
class StallResult:
    rate: float
    send_timeout: float
    baseline: Step | None = None
    stalled: Step | None = None
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (s since the stall, MB)
    cut_after_s: dict[str, float | None] = field(default_factory=dict)
    queued: dict[str, float] = field(default_factory=dict)  # the stalled consumers' queues at the end
    rss_growth_mb: float | None = None
    rss_slope_mb_s: float | None = None
    normal_closed: dict[str, int] = field(default_factory=dict)
    stalled_read: dict[str, int] = field(default_factory=dict)  # events the stalled ones read after it
    # Established connections the bridge holds at the end, beyond those it had before the stallers
    # came: after the cuts, sockets it still keeps open for the cut consumers.
    sockets_held: dict[str, int] = field(default_factory=dict)
    # Per second: [second, samples, p99 ms, max ms] (p99: the worse of the two consumer processes).
    baseline_timeline: list[list[float]] = field(default_factory=list)
    stall_timeline: list[list[float]] = field(default_factory=list)
    error: str | None = None


def merge_timelines(snaps: list[dict[str, Any]]) -> list[list[float]]:
    merged: dict[int, list[float]] = {}
    for snap in snaps:
        for sec, n, p99, mx in snap.get("timeline", []):
            row = merged.setdefault(int(sec), [sec, 0, 0.0, 0.0])
            row[1] += n
            row[2] = max(row[2], p99)
            row[3] = max(row[3], mx)
    return [merged[k] for k in sorted(merged)]


def timeline_line(rows: list[list[float]]) -> str:
    return " ".join(f"{r[2]:.0f}" + (f"({r[3]:.0f})" if r[3] > 2 * TARGET_P99_MS else "") for r in rows)


def slope(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else None


async def run_latency(args: argparse.Namespace, workdir: Path) -> StallResult:
    res = StallResult(args.latency_rate, args.send_timeout)
    config = workdir / "bridge-stall.toml"
    config.write_text(f"[bridge]\nsend_timeout = {float(args.send_timeout)}\n")
    layout = [{"ws": 34, "sse": 33}, {"grpc": 33}]
    consumers = {"websocket": 34, "sse": 33, "grpc": 33}
    print(
        f"\n- latency: 34 ws, 33 sse, 33 grpc consumers, {args.latency_rate:,.0f} msg/s; then one more per "
        f"transport that stops reading, [bridge] send_timeout = {args.send_timeout:g}",
        flush=True,
    )
    rig = Rig(args, workdir, "latency", config)
    try:
        await rig.start(layout)
        assert rig.publisher is not None
        rig.publisher.set_rate(args.latency_rate)
        await rig.sleep(args.warmup)
        for child in rig.children:
            await child.request("record")
        a = await rig.sample()
        await rig.sleep(args.stall_seconds)  # as long as the stall phase: p99s of equal windows
        b = await rig.sample()
        res.baseline = step_from("latency", args.latency_rate, consumers, a, b)
        res.baseline_timeline = merge_timelines(b.snaps)
        print(step_line(res.baseline), flush=True)
        print("  latency " + latency_line(res.baseline), flush=True)
        print("  p99 (max) ms per second: " + timeline_line(res.baseline_timeline), flush=True)

        # The stall: three more consumers, in a process of their own, read for --stall-lead seconds
        # and then stop reading.
        held0 = rig.bridge.connections()
        (stallers,) = await rig.add_children([{"stall_ws": 1, "stall_sse": 1, "stall_grpc": 1}])
        await rig.sleep(args.stall_lead)
        before = dict(rig.want)
        await stallers.request("stall")
        t0 = time.perf_counter()
        rss0 = rig.bridge.rss() / 2**20
        res.cut_after_s = dict.fromkeys(TRANSPORTS)
        metrics: dict[str, float] = {}
        a: Sample | None = None
        watch = STALL_SETTLE + args.stall_seconds
        for _ in range(int(watch / 0.5) + 2):
            now = time.perf_counter() - t0
            if now >= watch:
                break
            if a is None and now >= STALL_SETTLE:
                # The others' latency window opens once the stallers' process has started up (it
                # shares the client core); as long as the baseline window.
                for child in rig.children[:-1]:
                    await child.request("record")
                a = await rig.sample()
            await rig.sleep(min(0.5, watch - now))
            now = time.perf_counter() - t0
            res.rss_mb.append((now, rig.bridge.rss() / 2**20))
            metrics = await rig.bridge.metrics()
            for t in TRANSPORTS:
                if res.cut_after_s[t] is None and metrics.get(f"fleet_bridge_consumers:{t}", 0) < before[t]:
                    res.cut_after_s[t] = now
        if a is None:
            raise BenchError("the stall phase ended before its latency window opened")
        b = await rig.sample()
        res.stalled = step_from("stall", args.latency_rate, consumers, a, b)
        res.stall_timeline = merge_timelines(b.snaps)
        res.normal_closed = _sum(b.snaps, "closed")
        held1 = rig.bridge.connections()
        res.sockets_held = {k: held1.get(k, 0) - held0.get(k, 0) for k in ("http", "grpc")}
        sa, sb = _sum(a.snaps, "stalled_counts"), _sum(b.snaps, "stalled_counts")
        res.stalled_read = {t: sb[t] - sa[t] for t in TRANSPORTS}
        res.queued = {t: metrics.get(f"fleet_bridge_queued_events:{t}", 0.0) for t in TRANSPORTS}
        start_rss = rss0
        res.rss_growth_mb = max(mb for _, mb in res.rss_mb) - start_rss if res.rss_mb else None
        half = [p for p in res.rss_mb if p[0] >= watch / 2]
        res.rss_slope_mb_s = slope(half)
        print(step_line(res.stalled), flush=True)
        print("  latency (the others) " + latency_line(res.stalled), flush=True)
        print("  p99 (max) ms per second: " + timeline_line(res.stall_timeline), flush=True)
        cuts = ", ".join(
            f"{SHORT[t]} {'not cut' if v is None else f'cut after {v:.1f} s'}"
            for t, v in res.cut_after_s.items()
        )
        print(
            f"  stalled consumers: {cuts}; bridge RSS {start_rss:.0f} MB at the stall, max "
            f"{start_rss + (res.rss_growth_mb or 0):.0f} MB, slope over the second half "
            f"{fmt(res.rss_slope_mb_s, '+.3f')} MB/s; the stalled consumers' hub queues "
            + ", ".join(f"{SHORT[t]} {res.queued[t]:,.0f}" for t in TRANSPORTS)
            + "; events they read after the stall "
            + ", ".join(f"{SHORT[t]} {res.stalled_read[t]:,}" for t in TRANSPORTS)
            + f"; TCP connections the bridge still holds for them: HTTP {res.sockets_held.get('http')}, "
            f"gRPC {res.sockets_held.get('grpc')}",
            flush=True,
        )
    except BenchError as exc:
        res.error = str(exc)
        print(f"  ! {exc}", flush=True)
    finally:
        rig.stop()
    return res


def latency_line(st: Step) -> str:
    parts = []
    for t in TRANSPORTS:
        v = st.latency_ms.get(t)
        o = st.latency_out_ms.get(t)
        i = st.latency_in_ms.get(t)
        if v and o and i:
            parts.append(
                f"{SHORT[t]} p50 {v['p50']:.1f} / p99 {v['p99']:.1f} / max {v['max']:.1f} ms "
                f"(to the bridge {i['p50']:.1f} / {i['p99']:.1f}, from the bridge {o['p50']:.1f} / "
                f"{o['p99']:.1f}; n {v['n']:,})"
            )
    return "; ".join(parts) or "no samples"


# --------------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join([line, sep, *body])


def sweep_table(sw: Sweep) -> str:
    ts = [t for t in TRANSPORTS if sw.consumers.get(t)]
    rows = []
    for st in sw.steps:
        flags = (("S", st.saturated), ("O", st.overloaded), ("C", st.client_bound))
        marks = "".join(m for m, on in flags if on)
        rows.append(
            [
                f"{st.rate:,.0f}",
                f"{st.events_in_per_s:,.0f}",
                fmt(st.ingest_ratio and 100 * st.ingest_ratio, ".1f"),
                f"{st.deliveries_per_s:,.0f}",
                " / ".join(f"{st.per_consumer_per_s[t]:,.0f}" for t in ts),
                f"{sum(st.drops_per_s.values()):,.0f}",
                f"{st.bridge_cpu_pct:.0f}",
                fmt(st.deliveries_per_cpu_s, ",.0f"),
                f"{st.client_core_pct:.0f}",
                f"{st.other_cpu_pct:.0f}",
                f"{st.bridge_rss_mb:.0f}",
                marks,
            ]
        )
    per = "per consumer/s " + " / ".join(SHORT[t] for t in ts)
    return table(
        [
            "offered msg/s",
            "bridge in/s",
            "in %",
            "delivered/s",
            per,
            "dropped/s",
            "bridge CPU%",
            "deliv/CPU-s",
            "client core%",
            "other%",
            "RSS MB",
            "",
        ],
        rows,
    )


def mark(ok: bool | None) -> str:
    return " n/a" if ok is None else ("PASS" if ok else "FAIL")


def targets(sweeps: dict[str, Sweep], stall: StallResult | None) -> list[str]:
    lines = []
    for phase, goal in (("mixed", TARGET_MIXED), ("grpc", TARGET_GRPC)):
        sw = sweeps.get(phase)
        if sw is None or not sw.steps:
            continue
        top, best = sw.ceiling, sw.best_per_cpu
        assert top is not None
        assert best is not None
        figure = top.deliveries_per_cpu_s or 0
        note = "saturated" if top.saturated else f"bridge at {top.bridge_cpu_pct:.0f} %"
        if top.client_bound:
            note += ", CLIENT-BOUND"
        lines.append(
            f"[{mark(figure >= goal)}] {phase}: >= {goal:,.0f} deliveries per bridge CPU-second at the "
            f"ceiling: {figure:,.0f} at {top.deliveries_per_s:,.0f} deliveries/s (the step at "
            f"{top.rate:,.0f} msg/s, {note}; best step {best.deliveries_per_cpu_s or 0:,.0f} at "
            f"{best.rate:,.0f} msg/s; naive {NAIVE[phase]})"
        )
    sw = sweeps.get("mixed")
    if sw is not None and sw.steps:
        worst = sw.least_fair
        st = worst or sw.steps[-1]
        shown = ", ".join(f"{SHORT[t]} {v:,.0f}" for t, v in st.per_consumer_per_s.items())
        ok = None if worst is None else (worst.fairness or 0) >= TARGET_FAIRNESS
        if worst is None:
            why = (
                f"; no step dropped >= {OVERLOAD_SHARE:.0%} up to {max(s.rate for s in sw.steps):,.0f} "
                "msg/s: not tested, add higher --rates"
            )
        else:
            why = f"; the least fair of {len(sw.overloaded)} overloaded step(s)" + (
                ", CLIENT-BOUND" if worst.client_bound else ""
            )
        lines.append(
            f"[{mark(ok)}] fairness at overload: no transport below {TARGET_FAIRNESS:.0%} of another "
            f"(per consumer/s at {st.rate:,.0f} msg/s, {100 * (st.drop_share or 0):.0f} % dropped: "
            f"{shown}; min/max {fmt(st.fairness, '.2f')}{why})"
        )
    checked = [
        s for sw in sweeps.values() for s in sw.steps if not s.saturated and s.ingest_ratio is not None
    ]
    if checked:
        worst = min(checked, key=lambda s: s.ingest_ratio or 0)
        ok = (worst.ingest_ratio or 0) >= TARGET_INGEST
        lines.append(
            f"[{mark(ok)}] ingest keeps up while the bridge has CPU left (< {SATURATED_PCT:.0f} %): "
            f"received >= {TARGET_INGEST:.0%} of published in {len(checked)} steps; worst "
            f"{100 * (worst.ingest_ratio or 0):.1f} % ({worst.phase} at {worst.rate:,.0f} msg/s, bridge "
            f"{worst.bridge_cpu_pct:.0f} %)"
        )
    for sw in sweeps.values():
        if sw.published_total:
            lost = sw.published_total - sw.events_in_total
            sat = [s for s in sw.steps if s.saturated]
            at_sat = (
                f"; at saturation {100 * (sat[-1].ingest_ratio or 0):.1f} % in the window at "
                f"{sat[-1].rate:,.0f} msg/s"
                if sat
                else ""
            )
            lines.append(
                f"       {sw.phase}: {sw.events_in_total:,} of {sw.published_total:,} published reached "
                "the bridge "
                f"({lost:,} lost){at_sat}"
            )
    if stall is not None and stall.baseline is not None:
        lat = stall.baseline.latency_ms
        ok = all(lat.get(t, {}).get("p99", 1e9) <= TARGET_P99_MS for t in TRANSPORTS)
        shown = ", ".join(
            f"{SHORT[t]} {fmt(lat.get(t, {}).get('p50'), '.1f')} / {fmt(lat.get(t, {}).get('p99'), '.1f')}"
            for t in TRANSPORTS
        )
        lines.append(
            f"[{mark(ok)}] latency p99 <= {TARGET_P99_MS:.0f} ms at {stall.baseline.deliveries_per_s:,.0f} "
            f"deliveries/s (p50 / p99 ms: {shown}; naive p99 {NAIVE['p99']})"
        )
    if stall is not None and stall.stalled is not None and stall.baseline is not None:
        grew, sl = stall.rss_growth_mb, stall.rss_slope_mb_s
        ok = grew is not None and grew <= RSS_GROWTH_MB and (sl is None or sl <= RSS_SLOPE_MB_S)
        lines.append(
            f"[{mark(ok)}] stall: bridge RSS bounded (growth <= {RSS_GROWTH_MB:.0f} MB, second-half slope <= "
            f"{RSS_SLOPE_MB_S} MB/s): +{fmt(grew, '.1f')} MB, {fmt(sl, '+.3f')} MB/s (naive {NAIVE['stall']})"
        )
        for t in TRANSPORTS:
            cut = stall.cut_after_s.get(t)
            lines.append(
                f"[{mark(cut is not None)}] stall: the stalled {SHORT[t]} consumer is cut: "
                + ("not cut" if cut is None else f"after {cut:.1f} s")
                + f" (send_timeout {stall.send_timeout:g} s, watched {stall_window(stall):.0f} s)"
            )
        base, during = stall.baseline.latency_ms, stall.stalled.latency_ms
        parts, ok = [], True
        for t in TRANSPORTS:
            p0, p1 = base.get(t, {}).get("p99"), during.get(t, {}).get("p99")
            good = p0 is not None and p1 is not None and p1 <= p0 * NOISE_FACTOR + NOISE_MS
            ok = ok and good
            parts.append(f"{SHORT[t]} {fmt(p0, '.1f')} -> {fmt(p1, '.1f')}")
        closed = sum(stall.normal_closed.values())
        ok = ok and closed == 0
        lines.append(
            f"[{mark(ok)}] stall: the others' p99 within noise (<= {NOISE_FACTOR}x + {NOISE_MS:g} ms) "
            "and none cut: "
            f"{', '.join(parts)} ms; {closed} cut"
        )
    return lines


def judged_steps(sweeps: dict[str, Sweep]) -> dict[str, dict[str, Any]]:
    """Per sweep, the offered rate (msg/s) of the steps the targets use; None where there is none."""
    out: dict[str, dict[str, Any]] = {}
    for phase, sw in sweeps.items():
        top, best, worst = sw.ceiling, sw.best_per_cpu, sw.least_fair
        out[phase] = {
            "ceiling_rate": top and top.rate,
            "best_per_cpu_rate": best and best.rate,
            "overloaded_rates": [s.rate for s in sw.overloaded],
            "fairness_rate": worst and worst.rate,
        }
    return out


def stall_window(stall: StallResult) -> float:
    return stall.rss_mb[-1][0] if stall.rss_mb else 0.0


def report(sweeps: dict[str, Sweep], stall: StallResult | None) -> str:
    out = []
    titles = {
        "mixed": "mixed: 34 WebSocket + 33 SSE + 33 gRPC consumers",
        "grpc": "grpc: 100 gRPC consumers",
        "ingest": "ingest: 1 consumer per transport",
    }
    for phase, sw in sweeps.items():
        if sw.steps:
            out += [
                f"\n{titles.get(phase, phase)} (S = bridge saturated, O = overloaded: queues dropped >= "
                f"{OVERLOAD_SHARE:.0%} of the deliveries, C = client core >= 90 %)",
                sweep_table(sw),
            ]
    if stall is not None and stall.baseline is not None:
        rows = []
        for name, st in (("baseline", stall.baseline), ("3 stalled", stall.stalled)):
            if st is None:
                continue
            for t in TRANSPORTS:
                v = st.latency_ms.get(t, {})
                rows.append(
                    [
                        name,
                        SHORT[t],
                        f"{st.received_per_s.get(t, 0):,.0f}",
                        fmt(v.get("p50"), ".1f"),
                        fmt(v.get("p99"), ".1f"),
                        fmt(v.get("p999"), ".1f"),
                        fmt(v.get("max"), ".1f"),
                        f"{st.bridge_cpu_pct:.0f}",
                    ]
                )
        out += [
            f"\nlatency at {stall.rate:,.0f} msg/s, publish -> consumer read (ms)",
            table(["run", "transport", "delivered/s", "p50", "p99", "p99.9", "max", "bridge CPU%"], rows),
        ]
    out.append("\nacceptance targets:")
    out += ["  " + line for line in targets(sweeps, stall)]
    for sw in sweeps.values():
        if sw.error:
            out.append(f"\nERROR {sw.phase}: {sw.error}")
    if stall is not None and stall.error:
        out.append(f"\nERROR latency/stall: {stall.error}")
    busy = [
        f"{s.phase}@{s.rate:,.0f}"
        for s in [
            *(s for sw in sweeps.values() for s in sw.steps),
            *(x for x in (stall and stall.baseline,) if x),
        ]
        if s.other_cpu_pct > OTHER_CPU_WARN
    ]
    if busy:
        out.append(
            f"\nWARNING: other processes used > {OTHER_CPU_WARN:.0f} % of a core during {', '.join(busy)}: "
            "those figures are disturbed; rerun on a quiet machine."
        )
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------------

PHASES = ("mixed", "grpc", "ingest", "latency")


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--seconds", type=float, default=5.0, help="measurement window of each step (s)")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {','.join(PHASES)}")
    p.add_argument(
        "--rates", default="100,200,300,500,800,1300,2000,2600,3200,4000", help="mixed: offered msg/s"
    )
    p.add_argument("--grpc-rates", default="50,100,200,300,400,500,700,1000", help="grpc: offered msg/s")
    p.add_argument("--ingest-rates", default="1000,2000,5000,10000,15000,20000", help="ingest: msg/s")
    p.add_argument(
        "--past-saturation", type=int, default=1, help="steps to run after the first saturated one"
    )
    p.add_argument(
        "--past-overload",
        type=int,
        default=1,
        help=f"steps to run after the first overloaded one (queues dropped >= {100 * OVERLOAD_SHARE:g} %%)",
    )
    p.add_argument("--latency-rate", type=float, default=300.0, help="msg/s of the latency and stall phases")
    p.add_argument("--send-timeout", type=float, default=2.0, help="[bridge] send_timeout in the stall phase")
    p.add_argument("--stall-seconds", type=float, default=15.0, help="how long the stall phase watches")
    p.add_argument(
        "--stall-lead", type=float, default=0.0, help="the stalling consumers read this long first"
    )
    p.add_argument("--warmup", type=float, default=2.0, help="load before each window opens (s)")
    p.add_argument("--prefill", type=int, default=12_000, help="messages that fill the ring first (0: none)")
    p.add_argument(
        "--ready-timeout", type=float, default=30.0, help="cap on Mosquitto's / the bridge's start"
    )
    p.add_argument("--connect-timeout", type=float, default=30.0, help="cap on connecting the consumers")
    p.add_argument("--no-pin", action="store_true", help="do not pin the bridge and the clients to cores")
    p.add_argument(
        "--bridge-python",
        default=sys.executable,
        help="interpreter that runs the bridge (e.g. a venv with uvloop/httptools, to measure them)",
    )
    p.add_argument("--log-dir", type=Path, help="keep logs and configs here (default: a temp dir)")
    # The consumer child (not for direct use).
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--http-port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--grpc-port", type=int, default=0, help=argparse.SUPPRESS)
    for key in ("ws", "sse", "grpc", "stall-ws", "stall-sse", "stall-grpc"):
        p.add_argument(f"--{key}", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--pin-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-deadline", type=float, default=900.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return args
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    bad = [x for x in args.phases if x not in PHASES]
    if bad or not args.phases:
        p.error(f"--phases: unknown {bad}; known: {list(PHASES)}")
    try:
        args.rates, args.grpc_rates, args.ingest_rates = (
            floats(args.rates),
            floats(args.grpc_rates),
            floats(args.ingest_rates),
        )
    except ValueError as exc:
        p.error(f"rates: {exc}")
    if args.past_saturation < 0 or args.past_overload < 0:
        p.error("--past-saturation and --past-overload must be >= 0")
    if args.seconds <= 0 or args.send_timeout <= 0 or args.stall_seconds <= 0:
        p.error("--seconds, --send-timeout and --stall-seconds must be positive")
    if not Path(MOSQUITTO_BIN).exists():
        p.error(f"mosquitto not found at {MOSQUITTO_BIN} (apt-get install mosquitto)")
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    args.bridge_core = BRIDGE_CORE if pin else None
    args.client_core = CLIENT_CORE if pin else None
    # Each child may live through a whole sweep: bound it generously but finitely.
    steps = max(len(args.rates), len(args.grpc_rates), len(args.ingest_rates))
    args.child_deadline = 120 + steps * (args.warmup + args.seconds + 5) + args.stall_seconds
    return args


async def amain(args: argparse.Namespace, sweeps: dict[str, Sweep], stall: list[StallResult]) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.ExitStack() as stack:
        workdir = support.workdir(stack, args.log_dir, "bridge_scale-")
        for phase in args.phases:
            if phase == "mixed":
                layout = [{"ws": 34, "sse": 33}, {"grpc": 33}]
                await run_sweep(args, workdir, phase, layout, args.rates, sweeps)
            elif phase == "grpc":
                layout = [{"grpc": 50}, {"grpc": 50}]
                await run_sweep(args, workdir, phase, layout, args.grpc_rates, sweeps)
            elif phase == "ingest":
                layout = [{"ws": 1, "sse": 1, "grpc": 1}]
                await run_sweep(args, workdir, phase, layout, args.ingest_rates, sweeps)
            elif phase == "latency":
                stall.append(await run_latency(args, workdir))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    if args.client_core is not None:
        os.sched_setaffinity(0, {args.client_core})  # the publisher shares the clients' core
    started = datetime.datetime.now(datetime.UTC)
    command = " ".join([".venv/bin/python", "bench/bridge_scale.py", *sys.argv[1:]])
    source = sources_fingerprint()
    print(f"bridge_scale {started:%Y-%m-%d %H:%M} UTC: {command}")
    pins = (
        f"bridge on core {args.bridge_core} ({'taskset' if TASKSET else 'not pinned: no taskset'}), "
        f"consumers, publisher and Mosquitto on core {args.client_core}"
        if args.bridge_core is not None
        else "nothing pinned"
    )
    print(
        f"  {os.cpu_count()} CPUs, Python {platform.python_version()}, {pins}; payload {PAYLOAD_BYTES} B "
        f"JSON, QoS 0, {DEVICES} device topics; window {args.seconds:g} s after {args.warmup:g} s warm-up"
    )
    print(f"  bridges/*.py sha256 {source['bridges_sha256']}, git {source.get('git_head', '?')}")
    sweeps: dict[str, Sweep] = {}
    stall: list[StallResult] = []
    try:
        asyncio.run(amain(args, sweeps, stall))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted: every process stopped", file=sys.stderr)
        print("results so far:" + report(sweeps, stall[0] if stall else None))
        return 130
    finally:
        for proc in list(Proc.LIVE):  # last resort: whatever a phase could not stop itself
            proc.stop()
    print(report(sweeps, stall[0] if stall else None))
    after = sources_fingerprint()["bridges_sha256"]
    changed = after != source["bridges_sha256"]
    if changed:
        print(f"\nWARNING: bridges/*.py changed during the run ({source['bridges_sha256']} -> {after})")
    if args.json:
        doc: dict[str, Any] = {
            **support.run_record(started, command, args),
            "source": source,
            "targets": {
                "mixed_deliveries_per_cpu_s": TARGET_MIXED,
                "grpc_deliveries_per_cpu_s": TARGET_GRPC,
                "fairness": TARGET_FAIRNESS,
                "overload_drop_share": OVERLOAD_SHARE,
                "ingest": TARGET_INGEST,
                "p99_ms": TARGET_P99_MS,
                "stall_rss_growth_mb": RSS_GROWTH_MB,
                "stall_rss_slope_mb_s": RSS_SLOPE_MB_S,
            },
            "targets_report": targets(sweeps, stall[0] if stall else None),
            "judged_steps": judged_steps(sweeps),
            "sweeps": {k: asdict(v) for k, v in sweeps.items()},
            "latency_stall": asdict(stall[0]) if stall else None,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    errors = any(sw.error for sw in sweeps.values()) or any(s.error for s in stall)
    return 1 if errors or changed else 0


if __name__ == "__main__":
    sys.exit(main())
