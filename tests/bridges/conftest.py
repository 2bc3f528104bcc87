"""Fixtures of the HTTP bridge tests: a real MqttSource on the embedded broker, served by real uvicorn.

Nothing here sleeps for a guessed time: tests wait for a condition with a deadline (`wait_until`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import psutil
import pytest
from httpx_sse import EventSource, ServerSentEvent
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection

from bridges.app import create_app
from bridges.hub import Hub
from bridges.server import serve_http
from bridges.source import MqttSource, SourceSettings
from broker.server import Broker
from tests.procs import Proc, fleet_argv, run

TIMEOUT = 5.0
# The receive buffer of a client that will stop reading (the kernel doubles it).
SMALL_RCVBUF = 4096
# How long a test waits for the bridge to cut such a client: generous, as the machine may be busy.
STALL_TIMEOUT = 20.0
# A burst for such a client: many times its receive buffer, and less than the 64 KiB past which
# uvicorn pauses writing (so no send to it ever waits).
QUIET_BURST = [("fleet/quiet/telemetry", {"seq": seq, "blob": "x" * 1000}) for seq in range(40)]


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Return once `predicate()` holds; fail the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


def server_connections(port: int) -> int:
    """TCP connections that this process holds on the server side of `port` (accepted, not yet closed)."""
    return sum(1 for c in psutil.Process().net_connections("tcp") if c.raddr and c.laddr.port == port)


def consumers(hub: Hub, transport: str) -> int:
    return sum(1 for consumer in hub.consumers if consumer.transport == transport)


async def trickle_until_cut(
    bridge: RunningBridge, transport: str, mqtt: aiomqtt.Client, received: Callable[[], Any]
) -> None:
    """Publish one message at a time to the client that reads on, each read back with `received()`
    (its payload), until the bridge has cut the other client of `transport`; then check that the cut
    was counted, its connection aborted, and that the reading client still receives."""
    seq = 0

    async def one() -> None:
        await mqtt.publish("fleet/busy/telemetry", json.dumps({"seq": seq}).encode())
        assert await received() == {"seq": seq}

    try:
        async with asyncio.timeout(STALL_TIMEOUT):
            while consumers(bridge.hub, transport) == 2:
                await one()
                seq += 1
                await asyncio.sleep(0.02)  # a trickle, not a flood
    except TimeoutError:
        pytest.fail("the client that stopped reading was never cut")
    assert bridge.hub.send_timeouts == {transport: 1}
    await wait_until(lambda: server_connections(bridge.port) == 1, "its connection to be aborted")
    await one()


@dataclass
class RunningBridge:
    hub: Hub
    source: MqttSource
    app: Starlette
    port: int

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, **query: Any) -> str:
        return f"ws://127.0.0.1:{self.port}/ws{_query(query)}"

    def events(self, **query: Any) -> str:
        return f"{self.http}/events{_query(query)}"


def _query(query: dict[str, Any]) -> str:
    """`?a=1&filter=x&filter=y` from keywords; a list value repeats the parameter."""
    pairs = [
        (key, item)
        for key, value in query.items()
        for item in (value if isinstance(value, list) else [value])
    ]
    return "?" + urllib.parse.urlencode(pairs) if pairs else ""


@contextlib.asynccontextmanager
async def running_bridge(
    broker_port: int, *, hub: Hub | None = None, wait_connected: bool = True, **app_options: Any
) -> AsyncIterator[RunningBridge]:
    """An MqttSource feeding a hub from `broker_port`, and the HTTP app served on a free port.

    The default hub writes to its consumers at the end of every loop turn (`write_interval` 0), so
    that a burst ingested in one turn is one batch whatever came before it: the tests of queue
    policies count on that. The interval itself is tested in test_hub.py and through `fleet bridge`."""
    hub = hub or Hub(write_interval=0)
    source = MqttSource(hub, SourceSettings(port=broker_port, backoff_initial=0.05, backoff_max=0.2))
    task = asyncio.create_task(source.run(), name="test.bridges.source")
    try:
        app = create_app(hub, source, **app_options)
        async with serve_http(app) as port:
            if wait_connected:
                await wait_until(lambda: hub.broker_connected, "the bridge to connect to the broker")
            yield RunningBridge(hub, source, app, port)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


BridgeFactory = Callable[..., contextlib.AbstractAsyncContextManager[RunningBridge]]


@pytest.fixture
def bridge_factory(broker: Broker) -> BridgeFactory:
    """Start a bridge on `broker` with a given hub or app options (`running_bridge`'s keywords)."""

    def factory(**options: Any) -> contextlib.AbstractAsyncContextManager[RunningBridge]:
        return running_bridge(broker.port, **options)

    return factory


@pytest.fixture
async def bridge(broker: Broker) -> AsyncIterator[RunningBridge]:
    """A bridge with default settings, connected to `broker`."""
    async with running_bridge(broker.port) as running:
        yield running


@pytest.fixture
async def mqtt(broker: Broker) -> AsyncIterator[aiomqtt.Client]:
    """An ordinary MQTT client of `broker` (publishes test traffic, subscribes to commands)."""
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="test-bridges-client") as client:
        yield client


async def publish_and_wait(
    client: aiomqtt.Client, hub: Hub, messages: Sequence[tuple[str, Any]], qos: int = 1
) -> None:
    """Publish (topic, payload) pairs, JSON-encoding payloads that are not bytes; return once the
    hub has ingested all of them."""
    target = hub.events_in + len(messages)
    for topic, payload in messages:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await client.publish(topic, data, qos=qos)
    await wait_until(lambda: hub.events_in >= target, f"the hub to ingest {len(messages)} messages")


async def small_window_socket(port: int) -> socket.socket:
    """A non-blocking TCP socket connected to 127.0.0.1:`port` with a receive buffer of a few KB: once
    its owner stops reading, the peer's window closes after a few KB, and the rest waits at the bridge."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RCVBUF)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def recv_json(ws: ClientConnection, timeout: float = TIMEOUT) -> Any:
    """The next WebSocket message, decoded; it must be a text frame."""
    async with asyncio.timeout(timeout):
        message = await ws.recv()
    assert isinstance(message, str), f"expected a text frame, got {message!r}"
    return json.loads(message)


async def closed_with_error(conn: ClientConnection) -> str:
    """The error message a refused WebSocket gets before its close (code 1008)."""
    reply = await recv_json(conn)
    assert reply["type"] == "error", reply
    async with asyncio.timeout(TIMEOUT):
        await conn.wait_closed()
    assert conn.close_code == 1008
    return str(reply["error"])


def add_token(path: Path, name: str, *rights: str) -> str:
    """`fleet token add NAME --tokens-file PATH RIGHTS...`; the token it printed."""
    from click.testing import CliRunner

    from fleet.cli import cli

    result = CliRunner().invoke(cli, ["token", "add", name, "--tokens-file", str(path), *rights])
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


async def recv_text(ws: ClientConnection, timeout: float = TIMEOUT) -> str:
    async with asyncio.timeout(timeout):
        message = await ws.recv()
    assert isinstance(message, str), f"expected a text frame, got {message!r}"
    return message


class SseReader:
    """Reads named events from an httpx-sse stream, skipping what carries no event.

    httpx-sse yields the `retry:` hint, and keep-alive comments once an id has been seen, as empty
    'message' events (BRIDGE-NOTES): they are skipped here by name, never json-decoded."""

    def __init__(self, source: EventSource) -> None:
        self.source = source
        self._events = source.aiter_sse()
        self.retry: int | None = None

    async def next(self, timeout: float = TIMEOUT) -> ServerSentEvent:
        async with asyncio.timeout(timeout):
            async for sse in self._events:
                if sse.retry is not None:
                    self.retry = sse.retry
                if sse.event == "message" and not sse.data:
                    continue
                return sse
        raise AssertionError("the event stream ended")

    async def ended(self, timeout: float = TIMEOUT) -> bool:
        """Whether the stream ends (after any events still in flight) within `timeout`."""
        async with asyncio.timeout(timeout):
            async for _ in self._events:
                pass
        return True


class Curl:
    """`curl -N` on an event stream, bounded by --max-time, read line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    @contextlib.asynccontextmanager
    async def stream(cls, url: str, max_time: float = 10.0) -> AsyncIterator[Curl]:
        process = await asyncio.create_subprocess_exec(
            "curl", "-sSN", "--max-time", str(max_time), url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            yield cls(process)
        finally:
            if process.returncode is None:
                process.terminate()
            await process.wait()

    async def line(self, timeout: float = TIMEOUT) -> str:
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            raw = await self.process.stdout.readline()
        if not raw:
            raise AssertionError("curl's output ended")
        return raw.decode().rstrip("\r\n")

    async def line_starting(self, prefix: str, timeout: float = TIMEOUT) -> str:
        """The next line that starts with `prefix`."""
        async with asyncio.timeout(timeout):
            while not (line := await self.line()).startswith(prefix):
                pass
        return line


@pytest.fixture
def bridge_proc(procs: Callable[..., Proc]) -> Callable[..., Proc]:
    """Start `fleet bridge ARGS` (`procs`: stopped by PID at teardown)."""

    def start(*args: str | int) -> Proc:
        return procs(*fleet_argv("bridge", *args))

    return start


def bridge_events_url(proc: Proc) -> str:
    """The SSE URL `fleet bridge` prints, once its /healthz says the broker is connected."""
    index = proc.stdout.wait_for(lambda line: line.startswith("fleet bridge: serving http://"))
    events_url = proc.stdout.lines[index].removeprefix("fleet bridge: serving ")
    health_url = events_url.replace("/events", "/healthz")
    for _ in range(50):  # bounded: the bridge connects to its broker within a few hundred ms
        health = json.loads(run(["curl", "-s", "--max-time", "2", health_url]).stdout or "{}")
        if health.get("broker_connected"):
            break
        time.sleep(0.1)
    assert health["broker_connected"] is True, health
    return events_url
