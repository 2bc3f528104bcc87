"""The bridges over MQTT 5 (`[bridge] protocol = "5"`): the envelope's `properties` object on every
transport, against the embedded broker and Mosquitto, with the messages published by mosquitto_pub."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bridges.bridge import Bridge, running
from bridges.config import BridgeConfig, load_bridge_config
from bridges.envelope import make_event
from fleet.errors import ConfigError
from fleet.mqtt.properties import Properties
from fleet.testing.streams import Stream, Transport, open_stream
from tests.bridges.conftest import bridge_events_url, wait_until
from tests.procs import MOSQUITTO_PUB, FleetBroker, Proc, run

TIMEOUT = 5.0
TOPIC = "fleet/thermo-0001/telemetry"
# What mosquitto_pub's PUBLISH_PROPERTIES below become in the envelope.
PROPERTIES = {
    "content_type": "application/json",
    "correlation_data": "YWJj",  # b"abc"
    "user_properties": [["tenant", "a"], ["tenant", "b"], ["zone", "north"]],
}
PUBLISH_PROPERTIES = (
    "-D", "publish", "user-property", "tenant", "a",
    "-D", "publish", "user-property", "tenant", "b",
    "-D", "publish", "user-property", "zone", "north",
    "-D", "publish", "correlation-data", "abc",
    "-D", "publish", "content-type", "application/json",
)  # fmt: skip


async def mosquitto_pub(port: int, *args: str) -> None:
    """Run mosquitto_pub over MQTT 5 without blocking the loop (the embedded broker runs on it)."""
    assert MOSQUITTO_PUB is not None
    argv = [MOSQUITTO_PUB, "-V", "mqttv5", "-h", "127.0.0.1", "-p", str(port), "-q", "1", *args]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(TIMEOUT):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, (argv, out, err)


@pytest.fixture
async def bridge5(port: int) -> AsyncIterator[Bridge]:
    """A whole bridge (HTTP and gRPC) with `protocol = "5"`, connected to the broker."""
    config = BridgeConfig(broker=f"mqtt://127.0.0.1:{port}", http_port=0, grpc_port=0, protocol="5")
    async with running(config) as bridge:
        await wait_until(lambda: bridge.hub.broker_connected, "the bridge to connect to the broker")
        yield bridge


def stream_url(bridge: Bridge, transport: Transport) -> str:
    return {
        "ws": f"ws://127.0.0.1:{bridge.http_port}/ws",
        "sse": f"http://127.0.0.1:{bridge.http_port}/events",
        "grpc": f"grpc://127.0.0.1:{bridge.grpc_port}",
    }[transport]


async def _three_streams(bridge: Bridge, stack: Any) -> dict[Transport, Stream]:
    transports: tuple[Transport, ...] = ("ws", "sse", "grpc")
    return {
        t: await stack.enter_async_context(open_stream(t, stream_url(bridge, t), [TOPIC])) for t in transports
    }


async def test_a_v5_publish_s_properties_reach_websocket_sse_and_grpc_as_one_properties_object(
    bridge5: Bridge, port: int
) -> None:
    """User properties (in order, duplicate keys kept), Correlation Data (base64) and Content Type of
    an MQTT 5 publish arrive as the same `properties` object on WebSocket, SSE and gRPC."""
    import contextlib

    async with contextlib.AsyncExitStack() as stack:
        streams = await _three_streams(bridge5, stack)
        await mosquitto_pub(port, "-t", TOPIC, "-m", '{"seq":1}', *PUBLISH_PROPERTIES)
        await mosquitto_pub(port, "-t", TOPIC, "-m", '{"seq":2}')
        for transport, stream in streams.items():
            first = await stream.expect(TOPIC, {"seq": 1}, within=TIMEOUT)
            assert first.data["properties"] == PROPERTIES, transport
            assert first.user_properties == [("tenant", "a"), ("tenant", "b"), ("zone", "north")]
            second = await stream.expect(TOPIC, {"seq": 2}, within=TIMEOUT)
            assert "properties" not in second.data, (transport, second.data)


async def test_the_retained_copy_of_a_status_keeps_its_properties(bridge5: Bridge, port: int) -> None:
    """A new consumer's retained status carries the properties of the message it copies."""
    await mosquitto_pub(
        port, "-t", "fleet/thermo-0001/status", "-r", "-m", '{"online":true}', *PUBLISH_PROPERTIES
    )
    await wait_until(lambda: len(bridge5.hub.retained) == 1, "the bridge to keep the retained status")
    for transport in ("ws", "sse", "grpc"):
        async with open_stream(transport, stream_url(bridge5, transport), ["fleet/+/status"]) as stream:
            event = await stream.expect("fleet/thermo-0001/status", within=TIMEOUT)
            assert event.data["retain"] is True
            assert event.data["properties"] == PROPERTIES, transport


async def test_a_3_1_1_bridge_delivers_a_v5_publish_without_properties(port: int) -> None:
    """With the default protocol the bridge speaks MQTT 3.1.1: no `properties` key, as before."""
    config = BridgeConfig(broker=f"mqtt://127.0.0.1:{port}", http_port=0, grpc_port=0)
    async with running(config) as bridge:
        await wait_until(lambda: bridge.hub.broker_connected, "the bridge to connect to the broker")
        async with open_stream("ws", stream_url(bridge, "ws"), [TOPIC]) as stream:
            await mosquitto_pub(port, "-t", TOPIC, "-m", '{"seq":1}', *PUBLISH_PROPERTIES)
            event = await stream.expect(TOPIC, {"seq": 1}, within=TIMEOUT)
    assert "properties" not in event.data


def test_an_envelope_without_properties_is_unchanged_byte_for_byte() -> None:
    """A message without properties is encoded as before the `properties` object existed."""
    plain = make_event(7, TOPIC, b'{"a":1}', qos=1, retain=False, received_at=1.5)
    assert plain.json == (
        b'{"id":7,"topic":"fleet/thermo-0001/telemetry","device":"thermo-0001","kind":"telemetry",'
        b'"qos":1,"retain":false,"received_at":1.5,"payload":{"a":1}}'
    )
    assert plain.properties_json is None
    with_properties = make_event(
        7, TOPIC, b"\xff", qos=1, retain=False, received_at=1.5,
        properties=Properties(correlation_data=b"abc", user_properties=(("k", "v"), ("k", "w"))),
    )  # fmt: skip
    assert json.loads(with_properties.json)["properties"] == {
        "correlation_data": "YWJj",
        "user_properties": [["k", "v"], ["k", "w"]],
    }
    assert with_properties.json.endswith(
        b',"payload_base64":"/w==","properties":' + with_properties.properties_json + b"}"
    )  # type: ignore[operator]


def test_the_bridge_protocol_is_3_1_1_or_5_with_a_field_path_error(tmp_path: Path) -> None:
    """`[bridge] protocol` takes "3.1.1" (the default) or "5"; anything else names the field."""
    path = tmp_path / "bridge.toml"
    path.write_text('[bridge]\nprotocol = "5"\n')
    assert load_bridge_config(path, {}).protocol == "5"
    assert load_bridge_config(None, {}).protocol == "3.1.1"
    path.write_text("[bridge]\nprotocol = 5\n")
    with pytest.raises(ConfigError, match=r"bridge\.protocol"):
        load_bridge_config(path, {})


def test_fleet_bridge_protocol_version_mqttv5_bridges_the_properties(
    start_fleet_broker: Callable[..., FleetBroker], bridge_proc: Callable[..., Proc]
) -> None:
    """`fleet bridge -V mqttv5` subscribes with MQTT 5: SSE replays the message with its properties."""
    broker = start_fleet_broker("--port", 0, "--ws-port", 0)
    proc = bridge_proc(
        "-V", "mqttv5", "--broker", f"mqtt://127.0.0.1:{broker.port}", "--http-port", 0, "--grpc-port", 0
    )
    events_url = bridge_events_url(proc)
    assert MOSQUITTO_PUB is not None
    published = run(
        [MOSQUITTO_PUB, "-V", "mqttv5", "-p", str(broker.port), "-h", "127.0.0.1", "-q", "1", "-t", TOPIC,
         "-m", "{}", *PUBLISH_PROPERTIES]
    )  # fmt: skip
    assert published.returncode == 0, published
    sse = run(["curl", "-sN", "--max-time", "2", f"{events_url}?filter={TOPIC}&last_event_id=0"])
    data = [
        json.loads(line.removeprefix("data: "))
        for line in sse.stdout.splitlines()
        if line.startswith("data: ")
    ]
    assert [event["properties"] for event in data if event.get("topic") == TOPIC] == [PROPERTIES], sse
