"""Commands through a bridge that speaks MQTT 5 (`[bridge] protocol = "5"`): a consumer's command to
a v5 device goes out as a request (Response Topic and Correlation Data), and the device's reply
comes back to the consumer as an ordinary event; against the embedded broker and Mosquitto."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import grpc
import pytest
from playwright.async_api import Browser, expect
from websockets.asyncio.client import connect

from bridges.bridge import Bridge, running
from bridges.config import BridgeConfig
from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2 as pb
from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2_grpc
from fleet.testing.streams import open_stream
from tests.bridges.conftest import recv_json, wait_until
from tests.bridges.test_dashboard import cell
from tests.fleet.test_mqtt5_devices import v5_group
from tests.fleet.test_simulator import fleet, ids
from tests.fleet.test_simulator import running as simulating

TIMEOUT = 5.0


# "#" covers the response topics; with only the statuses, the bridge subscribes to them itself.
@pytest.fixture(params=[("#",), ("fleet/+/status",)], ids=["all", "statuses"])
def subscriptions(request: pytest.FixtureRequest) -> tuple[str, ...]:
    value: tuple[str, ...] = request.param
    return value


@asynccontextmanager
async def bridge_and_device(
    port: int, protocol: Literal["3.1.1", "5"], device_protocol: str, subscriptions: tuple[str, ...] = ("#",)
) -> AsyncIterator[tuple[Bridge, str]]:
    """A bridge speaking `protocol` and one simulated device speaking `device_protocol`, whose birth
    the bridge has seen."""
    config = BridgeConfig(
        broker=f"mqtt://127.0.0.1:{port}",
        http_port=0,
        grpc_port=0,
        protocol=protocol,
        subscriptions=subscriptions,
    )
    devices = fleet(v5_group("r", protocol=device_protocol))
    (device,) = ids(devices)
    async with running(config) as bridge:
        await wait_until(lambda: bridge.hub.broker_connected, "the bridge to connect to the broker")
        async with simulating(devices, port):
            status = f"fleet/{device}/status"
            await wait_until(lambda: bridge.hub.retained.get(status) is not None, "the device's birth")
            yield bridge, device


async def command_over_websocket(bridge: Bridge, device: str, command_id: str) -> dict[str, Any]:
    """Publish a ping with `command_id` to `device` over a WebSocket subscribed to its command topics;
    the device's reply event (the `published` confirmation seen too, in either order)."""
    url = f"ws://127.0.0.1:{bridge.http_port}/ws?filter=fleet/{device}/cmd/%23"
    command = {"id": command_id, "op": "ping"}
    reply: dict[str, Any] | None = None
    published = False
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "publish", "topic": f"fleet/{device}/cmd", "payload": command}))
        while reply is None or not published:
            message: dict[str, Any] = await recv_json(ws)
            assert message.get("type") != "error", message
            published = published or message.get("type") == "published"
            is_command = message.get("topic") == f"fleet/{device}/cmd"  # "#" brings the command too
            if not is_command and (message.get("payload") or {}).get("id") == command_id:
                reply = message
    return reply


def check_response(event: dict[str, Any], device: str, command_id: str) -> None:
    """`event` is the device's reply on the bridge's response topic, with the command id as its
    correlation data."""
    assert event["topic"].startswith(f"fleet/{device}/cmd/response/"), event
    assert event["kind"] == "raw"
    assert event["payload"]["ok"] is True
    assert event["properties"]["correlation_data"] == base64.b64encode(command_id.encode()).decode()


async def test_a_websocket_command_to_a_v5_device_is_a_request_whose_reply_reaches_the_consumer(
    port: int, subscriptions: tuple[str, ...]
) -> None:
    """Over a v5 bridge, a WebSocket command to a v5 device is answered on the bridge's response topic."""
    async with bridge_and_device(port, "5", "5", subscriptions) as (bridge, device):
        reply = await command_over_websocket(bridge, device, "c-ws")
    check_response(reply, device, "c-ws")


async def test_a_grpc_command_to_a_v5_device_is_a_request_whose_reply_reaches_the_consumer(
    port: int, subscriptions: tuple[str, ...]
) -> None:
    """Over a v5 bridge, a gRPC Publish to a v5 device is answered on the bridge's response topic,
    which a gRPC Subscribe stream receives."""
    async with bridge_and_device(port, "5", "5", subscriptions) as (bridge, device):
        target = f"grpc://127.0.0.1:{bridge.grpc_port}"
        async with open_stream("grpc", target, [f"fleet/{device}/cmd/#"]) as stream:
            await publish_grpc(bridge, f"fleet/{device}/cmd", b'{"id":"c-grpc","op":"ping"}')
            event = await stream.expect(f"fleet/{device}/cmd/response/+", {"id": "c-grpc"}, within=TIMEOUT)
    check_response(event.data, device, "c-grpc")


@pytest.mark.parametrize(("protocol", "device_protocol"), [("5", "3.1.1"), ("3.1.1", "5")])
async def test_a_command_without_v5_at_both_ends_is_acked_on_cmd_ack(
    port: int, protocol: Literal["3.1.1", "5"], device_protocol: str
) -> None:
    """A 3.1.1 device, or a 3.1.1 bridge, gets the command as it came, and the ack is on cmd/ack."""
    async with bridge_and_device(port, protocol, device_protocol) as (bridge, device):
        reply = await command_over_websocket(bridge, device, "c-plain")
    assert reply["topic"] == f"fleet/{device}/cmd/ack"
    assert reply["kind"] == "ack"
    assert "properties" not in reply


async def test_in_a_shared_group_the_reply_comes_back_to_the_bridge_that_sent_the_command(
    port: int,
) -> None:
    """Each of two bridges of one shared_group gets the reply to its own command, whichever bridge
    the shared subscription would have given it to."""
    config = BridgeConfig(
        broker=f"mqtt://127.0.0.1:{port}", http_port=0, grpc_port=0, protocol="5", shared_group="g"
    )
    devices = fleet(v5_group("r"))
    (device,) = ids(devices)
    status = f"fleet/{device}/status"
    async with contextlib.AsyncExitStack() as stack:
        bridges = [await stack.enter_async_context(running(config)) for _ in range(2)]
        await wait_until(lambda: all(b.hub.broker_connected for b in bridges), "the bridges to connect")
        await stack.enter_async_context(simulating(devices, port))
        await wait_until(
            lambda: all(b.hub.retained.get(status) for b in bridges), "each bridge to see the birth"
        )
        for index, bridge in enumerate(bridges):
            reply = await command_over_websocket(bridge, device, f"c-{index}")
            check_response(reply, device, f"c-{index}")
            assert reply["topic"] == f"fleet/{device}/cmd/response/{bridge.source.response_token}"


async def test_a_command_from_the_dashboard_to_a_v5_device_shows_the_reply_as_its_ack(
    port: int, browser: Browser
) -> None:
    """Over a v5 bridge, the dashboard's command to a v5 device is a request, and the device's reply
    on the response topic (the only way back: the bridge subscribes to statuses and its response
    topics) shows as the command's ack."""
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        async with bridge_and_device(port, "5", "5", ("fleet/+/status",)) as (bridge, device):
            await page.goto(f"http://127.0.0.1:{bridge.http_port}/?transport=ws")
            await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
            await cell(page, device).click()
            await expect(page.locator('#command-form input[name="device"]')).to_have_value(device)
            await page.click('#command-form button[type="submit"]')
            row = page.locator("#command-table tbody tr").first
            await expect(row).to_have_attribute("data-state", "ack")
            await expect(row.locator("td").last).to_have_text("ack: ok")
    finally:
        await page.close()
    assert not errors, f"the page raised: {errors}"


async def publish_grpc(bridge: Bridge, topic: str, payload: bytes) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{bridge.grpc_port}") as channel:
        stub = bridge_pb2_grpc.FleetBridgeServiceStub(channel)
        await stub.Publish(pb.PublishRequest(topic=topic, payload=payload, qos=1), timeout=TIMEOUT)
