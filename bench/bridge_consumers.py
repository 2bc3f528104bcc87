"""The consumers of `bench/bridge_scale.py`: one child process, asyncio, many consumers of a bridge.

Started by the bench as ``python bench/bridge_consumers.py --http-port P --grpc-port G --ws N --sse N
--grpc N [--stall-ws N ...]``; takes commands on stdin (``snap``, ``record [EVERY]`` (the latency of one
delivery in EVERY), ``unrecord``, ``stall``, ``quit``, one a line) and answers with JSON lines
prefixed ``BRIDGE-BENCH `` on stdout.

- WebSocket: the ``websockets`` library's sans-I/O ``ClientProtocol`` on an asyncio Protocol
  (``GET /ws?filter=%23``);
- SSE: a raw streaming HTTP/1.1 reader with its own chunked decoder (``GET /events?filter=%23``);
- gRPC: ``grpc.aio``, one channel (and TCP connection) per consumer, ``Subscribe(filters=["#"])``
  read as raw bytes (no response deserializer); each event of an ``events`` batch is a delivery.

A delivery is counted when a consumer has read the event. Latency is the payload's ``ts`` (the
publisher's clock) to the read, split at the envelope's ``received_at`` (the bridge's intake).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import socket
import struct
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from typing import Any

import psutil
from support import cpu_seconds
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

HOST = "127.0.0.1"
LINE_PREFIX = "BRIDGE-BENCH "
TRANSPORTS = ("websocket", "sse", "grpc")  # the bridge's own transport labels
GRPC_METHOD = "/mqtt_fleet.bridge.v1.FleetBridgeService/Subscribe"
STALL_RCVBUF = 8192  # receive buffer of a consumer that will stall (the kernel doubles it)
STALL_MSS = 536  # and its MSS (see open_socket)


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
        self.every = 1  # record the latency of one delivery in `every`
        self.tick = 0
        self.stalled = False
        # Latencies in microseconds (arrays: compact, and nothing for the garbage collector to scan).
        self.lat: dict[str, array[int]] = {t: array("q") for t in TRANSPORTS}  # publish -> read
        self.lat_out: dict[str, array[int]] = {t: array("q") for t in TRANSPORTS}  # bridge intake -> read
        self.lat_in: dict[str, array[int]] = {t: array("q") for t in TRANSPORTS}  # publish -> bridge intake
        self.when: dict[str, array[int]] = {t: array("q") for t in TRANSPORTS}  # read time of each sample
        self.started_us = 0
        self.notes: dict[str, int] = dict.fromkeys(TRANSPORTS, 0)  # dropped/reset notices
        self.errors: list[str] = []
        self.quit = asyncio.Event()
        self.stall_hooks: list[Callable[[], None]] = []

    def error(self, text: str) -> None:
        if len(self.errors) < 50:
            self.errors.append(text)

    def take(self) -> bool:
        """Whether to record the latency of this delivery: one in `every`, across transports."""
        self.tick += 1
        return self.tick % self.every == 0

    def record(self, transport: str, now_us: int, ts: int, received_at: int) -> None:
        self.lat[transport].append(now_us - ts)
        self.lat_out[transport].append(now_us - received_at)
        self.lat_in[transport].append(received_at - ts)
        self.when[transport].append(now_us)

    def reset_latency(self, every: int = 1) -> None:
        self.lat = {t: array("q") for t in TRANSPORTS}
        self.lat_out = {t: array("q") for t in TRANSPORTS}
        self.lat_in = {t: array("q") for t in TRANSPORTS}
        self.when = {t: array("q") for t in TRANSPORTS}
        self.started_us = time.time_ns() // 1000
        self.every = max(1, every)
        self.recording = True

    def timeline(self) -> dict[str, list[list[float]]]:
        """Per transport, per second since recording started: [second, samples, p99 ms, max ms]."""
        out: dict[str, list[list[float]]] = {}
        start = self.started_us
        for t in TRANSPORTS:
            buckets: dict[int, list[int]] = {}
            for when, lat in zip(self.when[t], self.lat[t], strict=True):
                buckets.setdefault((when - start) // 1_000_000, []).append(lat)
            rows = []
            for sec in sorted(buckets):
                p = percentiles(buckets[sec])
                rows.append([sec, p["n"], p["p99"], p["max"]])
            if rows:
                out[t] = rows
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
            "timeline": self.timeline() if self.recording else {},
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
                        if record and owner.take():
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
            owner = self.owner
            for event in done.split(b"\n\n"):
                if event.startswith(b"id: ") and owner.take():
                    owner.record("sse", now, ts_of_json(event), received_at_of_json(event))

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
                        if owner.take():
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
            elif command.startswith("record"):
                gc.collect()
                owner.reset_latency(int(command.removeprefix("record").strip() or 1))
                emit("recording")
            elif command == "unrecord":
                owner.recording = False
                emit("unrecorded")
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--grpc-port", type=int, required=True)
    for key in ("ws", "sse", "grpc", "stall-ws", "stall-sse", "stall-grpc"):
        p.add_argument(f"--{key}", type=int, default=0, help="consumers of this kind")
    p.add_argument("--connect-timeout", type=float, default=30.0, help="cap on connecting them all (s)")
    p.add_argument("--child-deadline", type=float, default=900.0, help="exit after this long (s)")
    p.add_argument("--pin-child", type=int, help="pin this process to this core")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(child_main(parse_args()))
