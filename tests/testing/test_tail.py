"""`fleet tail` as a user runs it: a subprocess reading a real broker and real bridges, while a
simulated fleet publishes its birth messages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from bridges.bridge import Bridge, running
from bridges.config import BridgeConfig
from broker.server import Broker
from fleet.credentials import Credentials
from fleet.testing.services import RunningBridges
from tests.bridges.conftest import add_token, wait_until
from tests.conftest import BrokerFactory
from tests.pki import Pki
from tests.procs import CHILD_ENV, ROOT, fleet_argv, run

TIMEOUT = 10.0
STATUS = "fleet/+/status"
TWO_DOORS = {"groups": [{"name": "door", "count": 2}]}


@dataclass
class Tail:
    process: asyncio.subprocess.Process
    stdout: list[str]
    stderr: list[str]
    code: int


class Running:
    """A `fleet tail` process that is reading: its stdout lines one by one, then its exit."""

    def __init__(self, process: asyncio.subprocess.Process, stderr: list[str]) -> None:
        assert process.stdout is not None
        assert process.stderr is not None
        self.process = process
        self._stdout, self._stderr = process.stdout, process.stderr
        self._lines: list[str] = []
        self._first = stderr

    async def line(self) -> str:
        """The next line on stdout (bounded in time)."""
        async with asyncio.timeout(TIMEOUT):
            line = await self._stdout.readline()
        assert line, f"fleet tail closed its stdout: {self._first}"
        self._lines.append(line.decode().rstrip("\n"))
        return self._lines[-1]

    async def finished(self) -> Tail:
        """Wait (bounded) for the exit, with everything it printed."""
        async with asyncio.timeout(TIMEOUT):
            out, err = await asyncio.gather(self._stdout.read(), self._stderr.read())
            code = await self.process.wait()
        stdout = self._lines + out.decode().splitlines()
        return Tail(self.process, stdout, self._first + err.decode().splitlines(), code)


@contextlib.asynccontextmanager
async def fleet_tail(*args: str) -> AsyncIterator[Running]:
    """Start `fleet tail ARGS` and wait (bounded) until it reads. The process is killed by PID if it
    is still running at the end."""
    process = await asyncio.create_subprocess_exec(
        *fleet_argv("tail", *args), cwd=ROOT, env=CHILD_ENV,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    first: list[str] = []
    try:
        async with asyncio.timeout(TIMEOUT):
            while not (first and first[-1].startswith("fleet tail: reading ")):
                line = await process.stderr.readline()
                assert line, f"fleet tail exited before reading: {first}"
                first.append(line.decode().rstrip("\n"))
        yield Running(process, first)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def _url(transport: str, broker: Broker, bridges: RunningBridges) -> list[str]:
    """`fleet tail` arguments that read the fleet's status messages over `transport`."""
    return {
        "mqtt": [f"mqtt://127.0.0.1:{broker.port}/{STATUS}"],
        "ws": [f"{bridges.ws}?filter=fleet/%2B/status"],
        "sse": [bridges.events, "--filter", STATUS],
        "grpc": [f"grpc://{bridges.grpc}/fleet/%2B/status"],
    }[transport]


@pytest.mark.parametrize("transport", ["mqtt", "ws", "sse", "grpc"])
async def test_tail_prints_the_fleets_events_as_json_lines(
    transport: str, fleet_broker: Broker, fleet_bridges: RunningBridges, fleet_sim: Any
) -> None:
    """`fleet tail URL --count 2` prints two devices' birth messages as JSON envelopes and exits 0."""
    async with fleet_tail(*_url(transport, fleet_broker, fleet_bridges), "--count", "2") as running:
        await fleet_sim(TWO_DOORS)
        tail = await running.finished()
    assert tail.code == 0, tail
    reading = [line for line in tail.stderr if line.startswith("fleet tail: reading ")]
    assert reading[0].endswith(f"(filters: {STATUS})"), tail  # also when they came in the URL
    events = [json.loads(line) for line in tail.stdout]
    assert sorted(event["topic"] for event in events) == ["fleet/door-0000/status", "fleet/door-0001/status"]
    for event in events:
        assert event["kind"] == "status"
        assert event["payload"]["online"] is True
        assert event["device"] == event["topic"].split("/")[1]


async def test_tail_exits_0_once_the_expectation_is_met(fleet_broker: Broker, fleet_sim: Any) -> None:
    """`--expect` is met by the first matching event: tail prints it (`--format pretty`) and exits 0."""
    url = f"mqtt://127.0.0.1:{fleet_broker.port}/fleet/%23"
    expect = "topic=fleet/door-0001/status,payload.online=true"
    async with fleet_tail(url, "--expect", expect, "--format", "pretty", "--timeout", "10") as running:
        await fleet_sim(TWO_DOORS)
        tail = await running.finished()
    assert tail.code == 0, tail
    clock, topic, payload = tail.stdout[-1].split("  ", 2)
    assert topic == "fleet/door-0001/status", tail
    assert json.loads(payload)["online"] is True, tail
    assert len(clock) == len("12:00:00.000"), tail


async def test_tail_exits_1_with_a_one_line_reason_when_the_expectation_is_not_met(
    fleet_bridges: RunningBridges, fleet_sim: Any
) -> None:
    """No event meets --expect within --timeout: tail prints what came, exits 1 and says why in a line."""
    expect = "topic=fleet/+/status,payload.online=false"
    args = [fleet_bridges.events, "--filter", STATUS, "--expect", expect, "--timeout", "3"]
    async with fleet_tail(*args) as running:
        await fleet_sim(TWO_DOORS)
        tail = await running.finished()
    assert tail.code == 1, tail
    assert len(tail.stdout) == 2, tail
    assert (
        tail.stderr[-1] == f"Error: expectation not met: no event matching {expect} within 3.0s (2 events)"
    ), tail


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["mqtt://127.0.0.1:1883/#", "--expect", "kind=status"], 2, "unknown key 'kind'"),
        (["ftp://127.0.0.1/x"], 2, "the URL must start with mqtt://"),
        (["mqtt://127.0.0.1:1883/a/#/b"], 2, "'#' must be the last level"),
        (["grpc://127.0.0.1:1/#"], 1, "Error: cannot subscribe at grpc://127.0.0.1:1"),
    ],
    ids=["expectation", "scheme", "filter", "unreachable"],
)
def test_tail_says_what_is_wrong_with_its_input(args: list[str], code: int, message: str) -> None:
    """A bad expectation, scheme or filter is a usage error (2) naming it; an unreachable server exits 1."""
    result = run(fleet_argv("tail", *args))
    assert result.returncode == code, result
    assert message in result.stderr, result


async def test_tail_exits_1_when_the_stream_ends_before_count_events() -> None:
    """Someone else's SSE server that closes after one event: tail prints it, then exits 1 saying so."""

    async def one_event(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: {"temp": 20}\n\n')
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(one_event, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        async with fleet_tail(f"http://127.0.0.1:{port}/feed", "--count", "3") as running:
            tail = await running.finished()
    assert tail.code == 1, tail
    assert tail.stdout == ['{"temp":20}'], tail
    assert tail.stderr[-1] == "Error: the stream ended after 1 of 3 events: the server ended the stream", tail


@pytest.mark.parametrize("transport", ["mqtt", "ws", "sse", "grpc"])
async def test_tail_exits_1_when_fewer_than_count_events_come_within_the_timeout(
    transport: str, fleet_broker: Broker, fleet_bridges: RunningBridges, fleet_sim: Any
) -> None:
    """`--count 3 --timeout 2` with two devices: tail prints both events, then exits 1 in one line."""
    args = [*_url(transport, fleet_broker, fleet_bridges), "--count", "3", "--timeout", "2"]
    async with fleet_tail(*args) as running:
        await fleet_sim(TWO_DOORS)
        tail = await running.finished()
    assert tail.code == 1, tail
    assert len(tail.stdout) == 2, tail
    assert tail.stderr[-1] == "Error: timed out: 2 of 3 events within 2.0s", tail


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_tail_exits_0_on_a_signal_after_printing_what_came(
    sig: signal.Signals, fleet_broker: Broker, fleet_sim: Any
) -> None:
    """Ctrl-C (or SIGTERM) ends a plain tail like mosquitto_sub: events printed, exit 0, no 'Aborted!'."""
    async with fleet_tail(f"mqtt://127.0.0.1:{fleet_broker.port}/{STATUS}") as running:
        await fleet_sim(TWO_DOORS)
        printed = [await running.line(), await running.line()]
        running.process.send_signal(sig)
        tail = await running.finished()
    assert tail.code == 0, tail
    assert tail.stdout == printed, tail
    assert [json.loads(line)["kind"] for line in printed] == ["status", "status"], tail
    assert not any("Aborted" in line for line in tail.stderr), tail


@pytest.mark.parametrize(
    ("goal", "unmet"),
    [
        (["--count", "5"], "--count 5"),
        (["--expect", "payload.online=false"], "--expect payload.online=false"),
    ],
    ids=["count", "expect"],
)
async def test_tail_fails_with_130_when_ctrl_c_comes_before_its_goal(
    goal: list[str], unmet: str, fleet_broker: Broker, fleet_sim: Any
) -> None:
    """Ctrl-C before --count or --expect is met is an interrupted check, not a pass: exit 130, saying so."""
    async with fleet_tail(f"mqtt://127.0.0.1:{fleet_broker.port}/{STATUS}", *goal) as running:
        await fleet_sim(TWO_DOORS)
        printed = [await running.line(), await running.line()]
        running.process.send_signal(signal.SIGINT)
        tail = await running.finished()
    assert tail.code == 130, tail
    assert tail.stdout == printed, tail
    reason = f"fleet tail: interrupted by SIGINT after 2 events, before {unmet} was met"
    assert tail.stderr[-1] == reason, tail


async def test_tail_reads_mqtt_over_websocket_from_a_brokers_websocket_listener(
    broker_factory: BrokerFactory,
) -> None:
    """A ws:// URL that `fleet watch` takes (a broker's WebSocket listener, which accepts the 'mqtt'
    subprotocol) is read as MQTT, subscribed to its `?filter=`, typed with a bare '+'."""
    async with broker_factory(ws_port=0) as broker:
        url = f"ws://127.0.0.1:{broker.ws_port}/mqtt?filter=fleet/+/status"
        async with fleet_tail(url, "--count", "2") as running:
            async with aiomqtt.Client("127.0.0.1", broker.port) as publisher:
                await publisher.publish("fleet/other/telemetry", b'{"seq": 0}', qos=1)
                for device in ("door-0000", "door-0001"):
                    await publisher.publish(f"fleet/{device}/status", b'{"online": true}', qos=1)
            tail = await running.finished()
    assert tail.code == 0, tail
    assert tail.stderr[0] == (
        f"fleet tail: reading mqtt stream ws://127.0.0.1:{broker.ws_port}/mqtt (filters: fleet/+/status)"
    ), tail
    events = [json.loads(line) for line in tail.stdout]
    assert [event["topic"] for event in events] == ["fleet/door-0000/status", "fleet/door-0001/status"]
    for event in events:
        assert event["kind"] == "status"
        assert event["payload"] == {"online": True}
        assert "id" not in event  # MQTT's envelope: ids belong to a bridge


async def _plain_http(body: bytes, content_type: str) -> asyncio.Server:
    """Someone else's HTTP server: every request gets `body` as `content_type`."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = f"HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


@pytest.mark.parametrize(
    ("path", "answered"),
    [("/", "text/html; charset=utf-8"), ("/healthz", "application/json")],
    ids=["dashboard", "healthz"],
)
async def test_tail_refuses_an_http_answer_that_is_not_an_event_stream_from_the_bridge(
    path: str, answered: str, fleet_bridges: RunningBridges
) -> None:
    """`fleet tail http://bridge/` (the dashboard's page) exits 1 naming the URL, what it answered and
    where the events are, instead of reading HTML and exiting 0."""
    url = fleet_bridges.http + path
    result = await asyncio.to_thread(run, fleet_argv("tail", url))
    assert result.returncode == 1, result
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"Error: cannot read {url}: it answered {answered}, not a Server-Sent"), error
    assert f"{fleet_bridges.events} and JSON over WebSocket at {fleet_bridges.ws};" in error, error


async def test_tail_refuses_a_plain_http_servers_json_page() -> None:
    """Someone else's HTTP server answering JSON to an http:// URL is no event stream: exit 1, saying so."""
    server = await _plain_http(b'{"temp": 20}', "application/json")
    async with server:
        port = server.sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}/api"
        result = await asyncio.to_thread(run, fleet_argv("tail", url))
    assert result.returncode == 1, result
    assert f"Error: cannot read {url}: it answered application/json, not a Server-Sent" in result.stderr


async def test_tail_says_where_the_bridges_websocket_is_when_the_path_is_wrong(
    fleet_bridges: RunningBridges,
) -> None:
    """`fleet tail ws://bridge/mqtt` (a broker's path on the bridge's port) names the status, the
    content type and the bridge's /ws, not a bare 'HTTP 403'."""
    url = fleet_bridges.http.replace("http://", "ws://") + "/mqtt"
    result = await asyncio.to_thread(run, fleet_argv("tail", url))
    assert result.returncode == 1, result
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"Error: cannot open {url}: the WebSocket handshake got HTTP 403 ("), error
    assert f"JSON over WebSocket at {fleet_bridges.ws};" in error, error
    assert "'mqtt' subprotocol" in error, error


async def test_tail_suggests_mqtt_when_a_ws_url_reaches_an_mqtt_tcp_port(fleet_broker: Broker) -> None:
    """`fleet tail ws://HOST:1883/…` (the broker's MQTT/TCP port, which answers no HTTP) suggests mqtt://."""
    url = f"ws://127.0.0.1:{fleet_broker.port}/mqtt"
    result = await asyncio.to_thread(run, fleet_argv("tail", url))
    assert result.returncode == 1, result
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"Error: cannot open {url}: did not receive a valid HTTP response"), error
    assert f"(an MQTT/TCP port? then use mqtt://127.0.0.1:{fleet_broker.port})" in error, error


@pytest.fixture
async def secured_bridge(fleet_broker: Broker, pki: Pki, tmp_path: Path) -> AsyncIterator[tuple[Bridge, str]]:
    """The whole bridge on `fleet_broker` over TLS (the test CA's certificate) with a tokens file;
    and a token that may subscribe to fleet/#."""
    tokens = tmp_path / "tokens.toml"
    token = add_token(tokens, "tail", "--subscribe", "fleet/#")
    config = BridgeConfig(
        broker=fleet_broker.urls[0],
        http_port=0,
        grpc_port=0,
        tokens_file=tokens,
        tls_cert=pki.cert,
        tls_key=pki.key,
    )
    async with running(config) as bridge:
        await wait_until(lambda: bridge.hub.broker_connected, "the bridge to connect to the broker")
        yield bridge, token


@pytest.mark.parametrize("transport", ["ws", "sse", "grpc"])
async def test_tail_reads_a_bridge_over_tls_with_a_token(
    transport: str, fleet_broker: Broker, secured_bridge: tuple[Bridge, str], pki: Pki
) -> None:
    """`fleet tail wss://, https://, grpcs:// --cafile CA --token T` reads a secured bridge; without
    the token it exits 1 saying the bridge wants one."""
    bridge, token = secured_bridge
    url = {
        "ws": f"wss://localhost:{bridge.http_port}/ws?filter=fleet/%2B/status",
        "sse": f"https://localhost:{bridge.http_port}/events?filter=fleet/%2B/status",
        "grpc": f"grpcs://localhost:{bridge.grpc_port}/fleet/%2B/status",
    }[transport]
    refused = await asyncio.to_thread(run, fleet_argv("tail", url, "--cafile", pki.ca, "--count", "1"))
    assert refused.returncode == 1, refused
    assert "401" in refused.stderr or "UNAUTHENTICATED" in refused.stderr, refused
    async with fleet_tail(url, "--cafile", str(pki.ca), "--token", token, "--count", "1") as running_tail:
        async with aiomqtt.Client("127.0.0.1", fleet_broker.port) as client:
            await client.publish("fleet/pump-1/status", b'{"online": true}', qos=1)
        tail = await running_tail.finished()
    assert tail.code == 0, tail
    assert [json.loads(line)["topic"] for line in tail.stdout] == ["fleet/pump-1/status"]


def test_tail_refuses_a_token_for_a_broker_and_insecure_for_grpcs() -> None:
    """--token is for the bridges, not an mqtt:// broker; gRPC cannot skip verification (--insecure)."""
    broker = run(fleet_argv("tail", "mqtt://127.0.0.1:1883/#", "--token", "t"))
    assert broker.returncode == 2, broker
    assert "--token is for a bridge" in broker.stderr, broker
    grpcs = run(fleet_argv("tail", "grpcs://127.0.0.1:1/#", "--insecure"))
    assert grpcs.returncode == 2, grpcs
    assert "give --cafile, not --insecure" in grpcs.stderr, grpcs


async def test_the_plugin_s_stream_fixtures_take_a_token_and_a_ca(
    fleet_broker: Broker,
    secured_bridge: tuple[Bridge, str],
    pki: Pki,
    ws_stream: Any,
    sse_stream: Any,
    grpc_stream: Any,
) -> None:
    """ws_stream, sse_stream and grpc_stream read a secured bridge with Credentials(cafile=, token=)."""
    bridge, token = secured_bridge
    credentials = Credentials(cafile=pki.ca, token=token)
    streams = [
        await ws_stream(f"wss://localhost:{bridge.http_port}/ws", [STATUS], credentials),
        await sse_stream(f"https://localhost:{bridge.http_port}/events", [STATUS], credentials),
        await grpc_stream(f"grpcs://localhost:{bridge.grpc_port}", [STATUS], credentials),
    ]
    async with aiomqtt.Client("127.0.0.1", fleet_broker.port) as client:
        await client.publish("fleet/pump-2/status", b'{"online": true}', qos=1)
    for stream in streams:
        event = await stream.expect(topic="fleet/pump-2/status", within=TIMEOUT)
        assert event.payload == {"online": True}
