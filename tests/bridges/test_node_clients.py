"""The bridges against clients we did not write: Node.js's `ws`, `eventsource` and `@grpc/grpc-js`.

Each client is a small script under tests/node/ run as a subprocess against a real bridge
(`bridges.bridge.running`) on the embedded broker. A script prints one JSON line per message it
receives, after a `{"ready":true}` line once it is connected and subscribed, so the tests wait for
that line instead of sleeping. Install the clients with `npm ci --prefix tests/node`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from bridges.bridge import Bridge, running
from bridges.config import BridgeConfig
from broker.server import Broker
from tests.bridges.conftest import consumers, publish_and_wait, wait_until

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "node"
PROTO = ROOT / "protos" / "mqtt_fleet" / "bridge" / "v1" / "bridge.proto"
NODE = shutil.which("node")
TIMEOUT = 10.0
CLIENT_TIMEOUT_MS = 8_000  # each client gives up on its own a little before the test would
INSTALL = "run `npm ci --prefix tests/node` (it installs package-lock.json's exact versions)"
PACKAGES = tuple(json.loads((NODE_DIR / "package.json").read_text())["dependencies"])


def _why_skip() -> str:
    """Why the Node clients cannot run here, or "" when they can."""
    if NODE is None:
        return "Node.js is not installed (no `node` on PATH): install Node.js 20+ and npm, then " + INSTALL
    missing = [name for name in PACKAGES if not (NODE_DIR / "node_modules" / name / "package.json").is_file()]
    if missing:
        return f"the Node clients are not installed (missing {', '.join(missing)}): " + INSTALL
    return ""


_missing = _why_skip()
pytestmark = pytest.mark.skipif(bool(_missing), reason=_missing)


@contextlib.asynccontextmanager
async def node_bridge(broker: Broker, **options: Any) -> AsyncIterator[Bridge]:
    """`bridges.bridge.running` on `broker` with free ports, once it is connected to the broker."""
    config = BridgeConfig(broker=f"mqtt://127.0.0.1:{broker.port}", http_port=0, grpc_port=0, **options)
    async with running(config) as bridge:
        await wait_until(lambda: bridge.hub.broker_connected, "the bridge to connect to the broker")
        yield bridge


class NodeClient:
    """One client script as a subprocess: its stdout read as JSON lines, its stdin open for lines."""

    def __init__(self, process: asyncio.subprocess.Process, argv: Sequence[str]) -> None:
        self.process = process
        self.argv = argv
        self.lines: list[Any] = []
        self.texts: list[str] = []  # the same lines as printed

    async def line(self, timeout: float = TIMEOUT) -> Any:
        """The next stdout line, decoded; fails the test with the client's output if there is none."""
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                raw = await self.process.stdout.readline()
        except TimeoutError:
            self.process.kill()
            raise AssertionError(f"no line within {timeout}s: {await self.finish_describe()}") from None
        if not raw:
            raise AssertionError(f"the output ended: {await self.finish_describe()}")
        return self._add(raw)

    def _add(self, raw: bytes) -> Any:
        text = raw.decode().rstrip("\n")
        value = json.loads(text)
        self.texts.append(text)
        self.lines.append(value)
        return value

    async def ready(self) -> None:
        """Wait for `{"ready":true}`: connected, and subscribed where that comes with connecting."""
        line = await self.line()
        assert line == {"ready": True}, f"expected the ready line, got {line!r} from {self.describe()}"

    async def next_where(self, key: str) -> Any:
        """The next line (a JSON object) that has `key`."""
        while True:
            line = await self.line()
            if isinstance(line, dict) and key in line:
                return line

    def send(self, message: dict[str, Any]) -> None:
        """Write one JSON line to the client's stdin (the WebSocket client sends it as a frame)."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")

    async def finish(self, timeout: float = TIMEOUT) -> tuple[int, list[Any], str]:
        """Wait for the exit; return the code, every stdout line (decoded) and stderr."""
        process = self.process
        try:
            async with asyncio.timeout(timeout):
                stdout, stderr = await process.communicate()
        except TimeoutError:
            raise AssertionError(f"still running after {timeout}s: {self.describe()}") from None
        for raw in stdout.splitlines():
            self._add(raw)
        assert process.returncode is not None
        return process.returncode, self.lines, stderr.decode(errors="replace")

    async def succeed(self) -> list[Any]:
        """Wait for exit code 0; return every stdout line."""
        code, lines, stderr = await self.finish()
        assert code == 0, f"exit code {code}: {self.describe()}\nstdout: {lines!r}\nstderr: {stderr}"
        return lines

    async def finish_describe(self) -> str:
        code, lines, stderr = await self.finish()
        return f"{self.describe()} exited {code}\nstdout: {lines!r}\nstderr: {stderr}"

    def describe(self) -> str:
        return f"$ node {' '.join(self.argv)}"

    async def stop(self) -> None:
        """Teardown: kill the process if it still runs, and reap it with its pipes."""
        if self.process.returncode is None:
            self.process.kill()
        if self.process.stdin is not None:
            self.process.stdin.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TIMEOUT):
                await self.process.communicate()


StartNode = Callable[..., Awaitable[NodeClient]]


@pytest.fixture
async def node() -> AsyncIterator[StartNode]:
    """Start a client script (`await node("ws_client.mjs", *args)`); each is killed at teardown."""
    started: list[NodeClient] = []

    async def start(script: str, *args: str | int) -> NodeClient:
        assert NODE is not None
        argv = [str(NODE_DIR / script), *(str(arg) for arg in args)]
        process = await asyncio.create_subprocess_exec(
            NODE, *argv, cwd=ROOT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        client = NodeClient(process, argv)
        started.append(client)
        return client

    try:
        yield start
    finally:
        for client in started:
            await client.stop()


def grpc(bridge: Bridge, mode: str, *args: str | int) -> list[str | int]:
    """The script and arguments of grpc_client.mjs in `mode` against `bridge`."""
    return ["grpc_client.mjs", f"127.0.0.1:{bridge.grpc_port}", str(PROTO), mode, *args]


def grpc_envelope(response: dict[str, Any]) -> dict[str, Any]:
    """The JSON envelope that an event of a SubscribeResponse batch stands for (fields at their default
    omitted); grpc_client.mjs prints each event of a batch as {"event": ...}."""
    assert set(response) == {"event"}, response
    event = response["event"]
    envelope = {
        "id": int(event["id"]),  # uint64, decoded as a string (longs: String)
        "topic": event["topic"],
        "device": event.get("device"),
        "kind": event["kind"].removeprefix("KIND_").lower(),
        "qos": event.get("qos", 0),
        "retain": event.get("retain", False),
        "received_at": event.get("received_at", 0),
    }
    if event["member"] == "json_text":
        envelope["payload"] = event["payload"]  # JSON.parse(json_text), by grpc_client.mjs
    else:
        envelope["payload"] = None
        envelope["payload_base64"] = event["raw"]  # bytes: String is base64, as in the envelope
    return envelope


# What the comparison test publishes: JSON of every shape, a payload that is not JSON, each kind.
MESSAGES: list[tuple[str, bytes]] = [
    (
        "fleet/dev-1/telemetry",
        json.dumps({"t": 21.5, "n": 3, "ok": True, "tags": ["a", None, -1e-3], "név": "ü ✓"}).encode(),
    ),
    ("fleet/dev-1/status", b'"online"'),
    ("fleet/dev-2/cmd/ack", b'{"id":"c1","ok":false,"nested":{"deep":[[]],"empty":{}}}'),
    ("fleet/dev-2/firmware/log", b"\x00\xffnot json\n"),
    ("fleet/dev-3/telemetry", b"null"),
    ("fleet/dev-3/status", b"42"),
]


async def test_all_three_clients_receive_the_same_envelopes(
    broker: Broker, mqtt: aiomqtt.Client, node: StartNode
) -> None:
    """ws, eventsource and grpc-js each receive every MQTT message as the same envelope, in order."""
    count = len(MESSAGES)
    async with node_bridge(broker) as bridge:
        http = f"127.0.0.1:{bridge.http_port}"
        subscribe = json.dumps({"type": "subscribe", "filters": ["fleet/#"]})
        ws = await node("ws_client.mjs", f"ws://{http}/ws", count + 1, CLIENT_TIMEOUT_MS, subscribe)
        sse = await node("sse_client.mjs", f"http://{http}/events?filter=fleet/%23", count, CLIENT_TIMEOUT_MS)
        grpc_client = await node(*grpc(bridge, "subscribe", '["fleet/#"]', count, CLIENT_TIMEOUT_MS))
        await ws.ready()
        assert await ws.line() == {"type": "subscribed", "filters": ["fleet/#"]}
        await sse.ready()
        await grpc_client.ready()
        assert {c.transport for c in bridge.hub.consumers} == {"websocket", "sse", "grpc"}

        await publish_and_wait(mqtt, bridge.hub, MESSAGES)
        ws_envelopes = (await ws.succeed())[2:]
        sse_lines = (await sse.succeed())[1:]
        grpc_lines = (await grpc_client.succeed())[1:]

    # WebSocket frames and SSE data are the very bytes the hub encoded once.
    assert ws.texts[2:] == [event["data"] for event in sse_lines]
    grpc_envelopes = [grpc_envelope(response) for response in grpc_lines]
    assert ws_envelopes == [json.loads(event["data"]) for event in sse_lines] == grpc_envelopes
    # grpc-js gets the payload's very bytes: its json_text is the WebSocket frame's payload, as text.
    for text, response in zip(ws.texts[2:], grpc_lines, strict=True):
        if "json_text" in response["event"]:
            assert text.endswith(f',"payload":{response["event"]["json_text"]}}}')
    for (topic, payload), envelope, event in zip(MESSAGES, ws_envelopes, sse_lines, strict=True):
        assert envelope["topic"] == topic
        assert event["id"] == str(envelope["id"])
        assert event["event"] == envelope["kind"]
        if "payload_base64" in envelope:
            assert base64.b64decode(envelope["payload_base64"]) == payload
        else:
            assert envelope["payload"] == json.loads(payload)
    assert [e["device"] for e in ws_envelopes] == ["dev-1", "dev-1", "dev-2", "dev-2", "dev-3", "dev-3"]
    assert [e["kind"] for e in ws_envelopes] == ["telemetry", "status", "ack", "raw", "telemetry", "status"]
    ids = [e["id"] for e in ws_envelopes]
    assert ids == sorted(set(ids))


async def test_ws_forbidden_publish_gets_an_error_and_the_socket_stays_open(
    broker: Broker, mqtt: aiomqtt.Client, node: StartNode
) -> None:
    """A forbidden publish from `ws` gets an `error` reply; the socket stays open and events still arrive."""
    await mqtt.subscribe("fleet/#", qos=1)
    async with node_bridge(broker) as bridge:
        url = f"ws://127.0.0.1:{bridge.http_port}/ws?filter=fleet/%2B/status"
        ws = await node("ws_client.mjs", url, 4, CLIENT_TIMEOUT_MS)
        await ws.ready()  # ?filter= subscribes before the handshake completes

        await mqtt.publish("fleet/dev-1/status", b'"online"', qos=1)
        first = await ws.line()
        assert (first["topic"], first["payload"]) == ("fleet/dev-1/status", "online")

        ws.send({"type": "publish", "topic": "fleet/dev-1/telemetry", "payload": {"t": 1}, "qos": 1})
        error = await ws.line()
        assert error == {
            "type": "error",
            "error": "publishing to 'fleet/dev-1/telemetry' is not allowed; allowed: fleet/+/cmd",
        }
        ws.send({"type": "publish", "topic": "fleet/dev-1/cmd", "payload": {"op": "reboot"}, "qos": 1})
        assert await ws.line() == {"type": "published", "topic": "fleet/dev-1/cmd"}

        await mqtt.publish("fleet/dev-1/status", b'"offline"', qos=1)
        last = (await ws.succeed())[-1]
        assert (last["topic"], last["payload"]) == ("fleet/dev-1/status", "offline")
        assert last["id"] > first["id"]

    # The broker saw the allowed command and not the forbidden publish (it would have come first).
    seen = []
    async with asyncio.timeout(TIMEOUT):
        async for message in mqtt.messages:
            seen.append((message.topic.value, message.payload))
            if message.topic.value == "fleet/dev-1/cmd":
                break
    assert ("fleet/dev-1/cmd", b'{"op":"reboot"}') in seen
    assert all(topic != "fleet/dev-1/telemetry" for topic, _ in seen)


async def test_sse_resumes_with_last_event_id_and_gets_exactly_the_missed_events(
    broker: Broker, mqtt: aiomqtt.Client, node: StartNode
) -> None:
    """eventsource reconnects with Last-Event-ID and gets exactly the missed events; so does a fresh one."""
    topic = "fleet/dev-1/telemetry"
    # The reconnect delay is the window in which the missed events are published (it takes milliseconds).
    async with node_bridge(broker, sse_retry_ms=1000) as bridge:
        url = f"http://127.0.0.1:{bridge.http_port}/events?filter=fleet/%2B/telemetry"
        sse = await node("sse_client.mjs", url, 5, CLIENT_TIMEOUT_MS)
        await sse.ready()
        await publish_and_wait(mqtt, bridge.hub, [(topic, {"n": 1}), (topic, {"n": 2})])
        before = [await sse.next_where("id"), await sse.next_where("id")]

        (stream,) = (c for c in bridge.hub.consumers if c.transport == "sse")
        stream.close("test: the server ends the stream")  # the bridge ends the response
        assert (await sse.line())["reconnecting"] is True
        await publish_and_wait(mqtt, bridge.hub, [(topic, {"n": 3}), (topic, {"n": 4})])
        assert consumers(bridge.hub, "sse") == 0, "the client reconnected before the missed events"

        await sse.ready()  # reconnected
        await publish_and_wait(mqtt, bridge.hub, [(topic, {"n": 5})])
        after = [line for line in await sse.succeed() if "id" in line][2:]

        events = before + after
        assert [json.loads(event["data"])["payload"] for event in events] == [{"n": n} for n in range(1, 6)]
        assert all(event["event"] == "telemetry" for event in events)
        ids = [int(event["id"]) for event in events]
        assert ids == sorted(set(ids))
        ring_ids = [event.id for event in bridge.hub.ring if event.topic == topic]
        assert ids == ring_ids

        # A fresh EventSource given the second id as Last-Event-ID gets the three after it, and no more.
        fresh = await node("sse_client.mjs", url, 3, CLIENT_TIMEOUT_MS, ids[1])
        resumed = [line for line in await fresh.succeed() if "id" in line]
        assert [int(event["id"]) for event in resumed] == ids[2:]
        assert [event["data"] for event in resumed] == [event["data"] for event in events[2:]]


@pytest.mark.parametrize(
    ("filters", "reason"),
    [
        (["fleet/#/bad"], "'#' must be the last level"),
        (["fleet/dev+/status"], "'+' must occupy a whole level"),
        ([], "at least one topic filter is needed"),
    ],
)
async def test_grpc_bad_filter_is_invalid_argument(
    broker: Broker, node: StartNode, filters: list[str], reason: str
) -> None:
    """grpc-js gets INVALID_ARGUMENT, with the reason, for a missing or invalid filter."""
    async with node_bridge(broker) as bridge:
        client = await node(*grpc(bridge, "subscribe", json.dumps(filters), 1, CLIENT_TIMEOUT_MS))
        code, lines, stderr = await client.finish()
    assert code == 1, (lines, stderr)
    assert lines == []
    assert "INVALID_ARGUMENT (3)" in stderr
    assert reason in stderr


async def test_grpc_publish_reaches_an_mqtt_subscriber(
    broker: Broker, mqtt: aiomqtt.Client, node: StartNode
) -> None:
    """A grpc-js Publish to fleet/dev-1/cmd reaches an MQTT subscriber; elsewhere it is INVALID_ARGUMENT."""
    await mqtt.subscribe("fleet/+/cmd", qos=1)
    async with node_bridge(broker) as bridge:
        command = '{"op":"set_interval","value":0.5,"note":"ü ✓"}'
        published = await node(*grpc(bridge, "publish", "fleet/dev-1/cmd", command, 1))
        assert await published.succeed() == [{}]  # the empty PublishResponse
        async with asyncio.timeout(TIMEOUT):
            message = await anext(aiter(mqtt.messages))
        assert (message.topic.value, message.payload, message.qos) == ("fleet/dev-1/cmd", command.encode(), 1)

        refused = await node(*grpc(bridge, "publish", "fleet/dev-1/telemetry", "{}", 1))
        code, lines, stderr = await refused.finish()
    assert code == 1, (lines, stderr)
    assert "INVALID_ARGUMENT (3): publishing to 'fleet/dev-1/telemetry' is not allowed" in stderr
