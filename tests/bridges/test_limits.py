"""The bridge's limits, driven against real servers: a `fleet broker` subprocess, the bridge's real
uvicorn and grpc.aio servers, and real WebSocket, SSE and gRPC clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from websockets.asyncio.client import ClientConnection, connect

from bridges.bridge import Bridge, running
from bridges.config import BridgeConfig
from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2 as pb
from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2_grpc
from tests.bridges.conftest import recv_json, wait_until
from tests.procs import FleetBroker

TIMEOUT = 5.0


def _bridge_config(broker: FleetBroker, **settings: Any) -> BridgeConfig:
    return BridgeConfig(broker=f"mqtt://127.0.0.1:{broker.port}", http_port=0, grpc_port=0, **settings)


async def _connected(bridge: Bridge) -> None:
    await wait_until(lambda: bridge.hub.broker_connected, "the bridge to connect to its broker")


async def _reply(ws: ClientConnection, message: dict[str, Any]) -> dict[str, Any]:
    """Send a control message and return the bridge's reply to it, skipping events in between."""
    await ws.send(json.dumps(message))
    async with asyncio.timeout(TIMEOUT):
        while True:
            reply: dict[str, Any] = await recv_json(ws)
            if reply.get("type") in ("published", "error", "subscribed"):
                return reply
            assert reply.get("kind") != "bridge", f"the bridge's broker link changed: {reply}"


async def _link_still_up(ws: ClientConnection, bridge: Bridge) -> None:
    """A command published after the refused ones is acknowledged and reaches the consumer, with no
    news of the broker link before it."""
    await ws.send(json.dumps({"type": "publish", "topic": "fleet/probe/cmd", "payload": {"op": "ping"}}))
    published = delivered = False
    async with asyncio.timeout(TIMEOUT):
        while not (published and delivered):
            message = await recv_json(ws)
            assert message.get("kind") != "bridge", f"consumers saw the broker link change: {message}"
            assert message.get("type") != "error", message
            published = published or message == {"type": "published", "topic": "fleet/probe/cmd"}
            delivered = delivered or message.get("topic") == "fleet/probe/cmd"
    assert bridge.hub.broker_connected


@pytest.fixture
async def oversized_setup(
    start_fleet_broker: Callable[..., FleetBroker],
) -> AsyncIterator[tuple[Bridge, ClientConnection, bridge_pb2_grpc.FleetBridgeServiceStub]]:
    """A bridge on `fleet broker` (1 MiB maximum packet), a WebSocket consumer of fleet/#, a gRPC stub."""
    broker = start_fleet_broker("--port", 0)
    async with running(_bridge_config(broker)) as bridge:
        await _connected(bridge)
        async with (
            connect(f"ws://127.0.0.1:{bridge.http_port}/ws?filter=fleet/%23", max_size=None) as ws,
            grpc.aio.insecure_channel(f"127.0.0.1:{bridge.grpc_port}") as channel,
        ):
            yield bridge, ws, bridge_pb2_grpc.FleetBridgeServiceStub(channel)


async def test_an_oversized_grpc_publish_is_refused_and_the_bridge_stays_connected(
    oversized_setup: tuple[Bridge, ClientConnection, bridge_pb2_grpc.FleetBridgeServiceStub],
) -> None:
    """A 2 MB and a 200 KB gRPC Publish get RESOURCE_EXHAUSTED, and no consumer sees `connected: false`."""
    bridge, ws, stub = oversized_setup
    for size in (2_000_000, 200_000):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Publish(
                pb.PublishRequest(topic="fleet/d1/cmd", payload=b"x" * size, qos=1), timeout=TIMEOUT
            )
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
        if size == 200_000:
            assert "max_publish_bytes" in (refused.value.details() or "")
    for topic in ("fleet/+/cmd", "fleet/#", ""):
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.Publish(pb.PublishRequest(topic=topic, payload=b"{}", qos=1), timeout=TIMEOUT)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad.value
    await _link_still_up(ws, bridge)


async def test_an_oversized_websocket_publish_is_refused_and_the_bridge_stays_connected(
    oversized_setup: tuple[Bridge, ClientConnection, bridge_pb2_grpc.FleetBridgeServiceStub],
) -> None:
    """A WebSocket publish past max_publish_bytes, or to a bad topic, gets an `error`; the link holds."""
    bridge, ws, _ = oversized_setup
    reply = await _reply(ws, {"type": "publish", "topic": "fleet/d1/cmd", "payload": "x" * 900_000})
    assert reply["type"] == "error", reply
    assert "max_publish_bytes" in reply["error"], reply
    for topic in ("fleet/+/cmd", "fleet/d1/cmd/#", "fleet/d\x00/cmd"):
        reply = await _reply(ws, {"type": "publish", "topic": topic, "payload": "{}"})
        assert reply["type"] == "error", reply
    await _link_still_up(ws, bridge)


async def test_max_publish_bytes_keeps_a_publish_under_a_smaller_broker_limit(
    start_fleet_broker: Callable[..., FleetBroker],
) -> None:
    """With a broker limit of 64 KiB and max_publish_bytes below it, a 100 KB WebSocket publish is refused."""
    broker = start_fleet_broker("--port", 0, "--max-packet-size", 65536)
    async with running(_bridge_config(broker, max_publish_bytes=65_000)) as bridge:
        await _connected(bridge)
        async with connect(f"ws://127.0.0.1:{bridge.http_port}/ws?filter=fleet/%23") as ws:
            reply = await _reply(ws, {"type": "publish", "topic": "fleet/d1/cmd", "payload": "x" * 100_000})
            assert reply["type"] == "error", reply
            assert "65000" in reply["error"], reply
            await _link_still_up(ws, bridge)
