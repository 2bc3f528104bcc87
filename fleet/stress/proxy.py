"""A TCP fault proxy between devices and a broker: latency and jitter, a bandwidth cap, a blackhole
(partition) for a while, connection resets, and half-open connections.

    async with fault_proxy("127.0.0.1", 1883) as proxy:    # listens on 127.0.0.1, a free port
        proxy.shape(Shaping(latency=0.2, jitter=0.1))       # every byte from now on, both ways
        proxy.blackhole(True)                                # nothing passes, nothing closes
        proxy.blackhole(False)                               # held bytes flow again, closes follow
        proxy.reset(0.3)                                     # 30% of the connections die at once (RST)
        proxy.half_open(0.3)                                 # 30% stop forwarding forever, unclosed

Each direction of a connection is a `_Pipe`: bytes are delivered in order, each at its due time,
by one timer per pipe; a pipe that holds more than 256 KiB stops reading its source, as TCP would.
A close travels through the pipe behind the bytes before it, so a delayed link closes late too.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

__all__ = ["FaultProxy", "Shaping", "fault_proxy"]

_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


@dataclass(frozen=True, slots=True)
class Shaping:
    """How bytes are slowed: one-way `latency` ± uniform `jitter` (seconds), at most `rate` bytes/s."""

    latency: float = 0.0
    jitter: float = 0.0
    rate: int | None = None

    @property
    def active(self) -> bool:
        return bool(self.latency or self.jitter or self.rate)


_NONE = Shaping()


class _Pipe:
    """One direction of one connection: from `source` to `sink`."""

    __slots__ = (
        "_loop",
        "_proxy",
        "_queue",
        "_queued",
        "_timer",
        "held",
        "last_at",
        "next_free",
        "sink",
        "source",
    )

    def __init__(self, proxy: FaultProxy) -> None:
        self._proxy = proxy
        self._loop = asyncio.get_running_loop()
        self._queue: deque[tuple[float, bytes | None]] = deque()  # None: close the sink
        self._queued = 0
        self._timer: asyncio.TimerHandle | None = None
        self.held = False
        self.last_at = 0.0
        self.next_free = 0.0
        self.source: asyncio.Transport | None = None
        self.sink: asyncio.Transport | None = None

    def feed(self, data: bytes | None) -> None:
        """Bytes from the source, or None when the source closed."""
        shaping = self._proxy.shaping
        if not self._queue and not self.held and not shaping.active and self.sink is not None:
            self._deliver(data)
            return
        now = self._loop.time()
        at = now + shaping.latency
        if shaping.jitter:
            at += self._proxy.rng.uniform(-shaping.jitter, shaping.jitter)
        if shaping.rate and data:
            start = max(now, self.next_free)
            self.next_free = start + len(data) / shaping.rate
            at = max(at, self.next_free)
        at = self.last_at = max(at, self.last_at)
        self._queue.append((at, data))
        if data:
            self._queued += len(data)
            if self._queued > _HIGH_WATER and self.source is not None:
                self.source.pause_reading()
        self.arm()

    def release(self) -> None:
        """Stop holding: what was held flows."""
        self.held = False
        self.arm()

    def arm(self) -> None:
        """Set the timer for the next due delivery, if there is one and the pipe may deliver."""
        if self._timer is None and self._queue and not self.held and self.sink is not None:
            self._timer = self._loop.call_at(self._queue[0][0], self._flush)

    def _flush(self) -> None:
        self._timer = None
        if self.held:
            return
        now = self._loop.time()
        queue = self._queue
        while queue and queue[0][0] <= now and self.sink is not None:
            _, data = queue.popleft()
            if data:
                self._queued -= len(data)
            self._deliver(data)
        if self._queued <= _LOW_WATER and self.source is not None and not self.source.is_closing():
            self.source.resume_reading()
        self.arm()

    def _deliver(self, data: bytes | None) -> None:
        sink = self.sink
        if sink is None or sink.is_closing():
            return
        if data is None:
            sink.close()
        else:
            sink.write(data)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()


class _Side(asyncio.Protocol):
    """One socket of a proxied connection; what it reads goes into `out`, its closing too."""

    __slots__ = ("_pair", "is_device", "out", "transport")

    def __init__(self, pair: _Pair, out: _Pipe, *, is_device: bool) -> None:
        self._pair = pair
        self.out = out
        self.is_device = is_device
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.is_device:
            self._pair.device_connected(transport)

    def data_received(self, data: bytes) -> None:
        self.out.feed(data)

    def eof_received(self) -> bool:
        # Pass the end on through the pipe, and keep this socket open: a held (half-open) pipe must
        # not let the peer learn that its connection is gone.
        self.out.feed(None)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.out.feed(None)
        self._pair.side_closed()


class _Pair:
    """A device's connection and the proxy's connection to the broker for it."""

    __slots__ = ("_closed", "_proxy", "device", "down", "frozen", "up", "upstream")

    def __init__(self, proxy: FaultProxy) -> None:
        self._proxy = proxy
        self._closed = 0
        self.frozen = False  # half-open: held for good
        self.up = _Pipe(proxy)  # device -> broker
        self.down = _Pipe(proxy)  # broker -> device
        self.device = _Side(self, self.up, is_device=True)
        self.upstream = _Side(self, self.down, is_device=False)
        if proxy.blackholed:
            self.hold()

    def device_connected(self, transport: asyncio.Transport) -> None:
        self.up.source = self.down.sink = transport
        transport.pause_reading()  # until the broker side is there
        self._proxy.connect_upstream(self)

    def upstream_connected(self, transport: asyncio.Transport) -> None:
        self.up.sink = self.down.source = transport
        if self.device.transport is not None and not self.device.transport.is_closing():
            self.device.transport.resume_reading()
        self.up.arm()

    def side_closed(self) -> None:
        self._closed += 1
        if self._closed == 2:
            self.up.cancel()
            self.down.cancel()
            self._proxy.pairs.pop(self, None)

    def abort(self) -> None:
        """Both sockets closed at once with RST, nothing held delivered."""
        self.up.cancel()
        self.down.cancel()
        for side in (self.device, self.upstream):
            transport = side.transport
            if transport is not None and not transport.is_closing():
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()

    def hold(self) -> None:
        self.up.held = self.down.held = True

    @property
    def open(self) -> bool:
        """Both sockets are up, and the connection is not half-open already."""
        return not self.frozen and all(
            side.transport is not None and not side.transport.is_closing()
            for side in (self.device, self.upstream)
        )


class FaultProxy:
    """The proxy's state; `fault_proxy()` runs it. Faults apply to every connection through it."""

    def __init__(self, upstream_host: str, upstream_port: int, tasks: asyncio.TaskGroup, seed: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.rng = random.Random(seed)
        self.shaping = _NONE
        self.blackholed = False
        self.pairs: dict[_Pair, None] = {}  # in the order they were accepted
        self.port = 0
        self.resets = 0
        self.half_opened = 0
        self._tasks = tasks

    def accept(self) -> asyncio.Protocol:
        pair = _Pair(self)
        self.pairs[pair] = None
        return pair.device

    def connect_upstream(self, pair: _Pair) -> None:
        self._tasks.create_task(self._connect(pair), name="fleet.stress.proxy.connect")

    async def _connect(self, pair: _Pair) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_connection(
                lambda: pair.upstream, self.upstream_host, self.upstream_port
            )
        except OSError:
            pair.abort()  # the broker is away: the device sees its connection refused, in effect
            pair.side_closed()
            return
        pair.upstream_connected(transport)

    def shape(self, shaping: Shaping | None) -> None:
        """Slow every byte that arrives from now on; None: no more shaping."""
        self.shaping = shaping or _NONE

    def blackhole(self, on: bool) -> None:
        """On: nothing passes either way and no close travels, for old and new connections alike.
        Off: what was held flows again, and closes that waited follow their bytes."""
        self.blackholed = on
        for pair in list(self.pairs):
            if on:
                pair.hold()
            elif not pair.frozen:
                pair.up.release()
                pair.down.release()

    def _pick(self, fraction: float) -> list[_Pair]:
        """`fraction` of the open connections, chosen with the proxy's seeded generator."""
        pairs = [pair for pair in self.pairs if pair.open]
        return self.rng.sample(pairs, round(len(pairs) * fraction))

    def reset(self, fraction: float) -> int:
        """Reset `fraction` of the open connections at once; return how many."""
        chosen = self._pick(fraction)
        for pair in chosen:
            pair.abort()
        self.resets += len(chosen)
        return len(chosen)

    def half_open(self, fraction: float) -> int:
        """Make `fraction` of the open connections stop forwarding for good, without closing them."""
        chosen = self._pick(fraction)
        for pair in chosen:
            pair.frozen = True
            pair.hold()
        self.half_opened += len(chosen)
        return len(chosen)


@contextlib.asynccontextmanager
async def fault_proxy(
    upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1", port: int = 0, seed: int = 0
) -> AsyncIterator[FaultProxy]:
    """Run a fault proxy to the broker at upstream_host:upstream_port until the block exits; then
    every proxied connection is closed."""
    loop = asyncio.get_running_loop()
    async with asyncio.TaskGroup() as tasks:
        proxy = FaultProxy(upstream_host, upstream_port, tasks, seed)
        server = await loop.create_server(proxy.accept, host, port, backlog=4096)
        proxy.port = server.sockets[0].getsockname()[1]
        try:
            yield proxy
        finally:
            server.close()
            for pair in list(proxy.pairs):
                pair.abort()
            await server.wait_closed()
