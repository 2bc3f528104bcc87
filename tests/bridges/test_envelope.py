"""One envelope on every transport: the same bytes over WebSocket, SSE and gRPC, integers as integers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiomqtt
import grpc
import httpx
import pytest
from websockets.asyncio.client import connect

from bridges.bridge import running
from bridges.config import BridgeConfig
from bridges.envelope import make_event
from bridges.grpc_service import event_message
from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2 as pb
from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2_grpc
from broker.server import Broker
from fleet.tail import format_event
from fleet.testing.streams import StreamEvent, grpc_events
from tests.bridges.conftest import wait_until

TIMEOUT = 5.0
# Keys out of alphabetical order, integers beside floats: what a Struct would have changed.
PAYLOAD = b'{"device":"thermo-0007","seq":148,"ts":1764400000.123,"values":{"temp":21,"rh":40.5},"b":0}'


def _compact(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


async def _sse_data(client: httpx.AsyncClient, url: str, ready: asyncio.Event) -> bytes:
    """The `data:` bytes of the first event of an SSE stream, as sent."""
    async with client.stream("GET", url) as response:
        assert response.status_code == 200
        ready.set()
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                return line.removeprefix("data: ").encode()
    raise AssertionError("the SSE stream ended")


async def test_one_event_is_the_same_bytes_on_every_transport(broker: Broker) -> None:
    """A telemetry message reaches WebSocket, SSE and gRPC as the same envelope bytes: `seq` stays 148
    (not 148.0) and the payload's keys keep their order."""
    config = BridgeConfig(broker=f"mqtt://127.0.0.1:{broker.port}", http_port=0, grpc_port=0)
    topic_filter = "fleet/%2B/telemetry"
    async with running(config) as bridge, asyncio.TaskGroup() as tasks:
        await wait_until(lambda: bridge.hub.broker_connected, "the bridge to connect to the broker")
        base = f"127.0.0.1:{bridge.http_port}"
        sse_ready = asyncio.Event()
        async with (
            connect(f"ws://{base}/ws?filter={topic_filter}") as ws,
            httpx.AsyncClient(timeout=TIMEOUT) as client,
            grpc.aio.insecure_channel(f"127.0.0.1:{bridge.grpc_port}") as channel,
            aiomqtt.Client("127.0.0.1", broker.port, identifier="test-envelope") as mqtt,
        ):
            sse_url = f"http://{base}/events?filter={topic_filter}"
            sse = tasks.create_task(_sse_data(client, sse_url, sse_ready))
            call = bridge_pb2_grpc.FleetBridgeServiceStub(channel).Subscribe(
                pb.SubscribeRequest(filters=["fleet/+/telemetry"]), timeout=30
            )
            async with asyncio.timeout(TIMEOUT):
                await call.initial_metadata()
                await sse_ready.wait()
            await wait_until(lambda: len(bridge.hub.consumers) == 3, "three consumers")
            await mqtt.publish("fleet/thermo-0007/telemetry", PAYLOAD, qos=1)
            async with asyncio.timeout(TIMEOUT):
                over_ws = (await ws.recv()).encode()
                over_sse = await sse
                [over_grpc] = grpc_events(await call.read())
            call.cancel()
    expected = bridge.hub.ring[-1].json
    assert b'"payload":' + PAYLOAD + b"}" in expected
    assert over_ws == over_sse == _compact(over_grpc) == expected
    # `fleet tail` prints the same line whichever transport it reads.
    lines = {format_event(StreamEvent(data, 0.0)) for data in (json.loads(over_ws), over_grpc)}
    assert len(lines) == 1
    assert '"seq":148,' in lines.pop()


@pytest.mark.parametrize(
    ("raw", "payload_json"),
    [
        (b'{"n": 1, "x": 1.0, "big": 1' + b"0" * 30 + b"1}", b'{"n":1,"x":1.0,"big":1' + b"0" * 30 + b"1}"),
        (b'"\\ud800"', b'"\\ud800"'),  # a lone surrogate: UTF-8 cannot hold it, the escape stays
        (b"NaN", None),
        (b'{"t": Infinity}', None),
        (b"[" * 100_000 + b"]" * 100_000, None),  # nested deeper than the parser goes
        (b"\xff\xfe", None),
    ],
    ids=["numbers", "lone-surrogate", "nan", "infinity", "deep", "binary"],
)
def test_a_payload_is_json_only_when_any_parser_reads_it(raw: bytes, payload_json: bytes | None) -> None:
    """Integers of any size stay exact; NaN, Infinity, deep nesting and bytes that are not UTF-8 are
    carried as base64; a lone surrogate is kept as its escape, and gRPC carries the same text."""
    event = make_event(1, "fleet/d/telemetry", raw, qos=0, retain=False, received_at=1.5)
    envelope = json.loads(event.json)
    message = event_message(event)
    assert event.payload_json == payload_json
    if payload_json is None:
        assert envelope["payload"] is None
        assert "payload_base64" in envelope
        assert message.raw == raw
    else:
        assert event.json.endswith(b'"payload":' + payload_json + b"}")
        assert message.json_text.encode() == payload_json
