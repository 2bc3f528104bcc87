"""Retained messages for new consumers: the hub's byte-bounded cache, and its replay on every transport."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiomqtt
import grpc
import httpx
from websockets.asyncio.client import connect

from bridges.bridge import running
from bridges.config import BridgeConfig
from bridges.hub import Hub, Item, Retained
from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2 as pb
from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2_grpc
from broker.server import Broker
from fleet.testing.streams import grpc_events
from tests.bridges.conftest import TIMEOUT, Curl, RunningBridge, recv_json, wait_until


def _topics(items: list[Item]) -> list[tuple[str, bool]]:
    """(topic, retained replay?) of each event item."""
    return [
        (item.event.topic, True) if isinstance(item, Retained) else (getattr(item, "topic", "?"), False)
        for item in items
    ]


async def test_a_new_consumer_gets_the_retained_statuses_before_live_events() -> None:
    """A fresh consumer gets the latest status of each device first, marked retained; a resuming one
    gets the ring instead; telemetry is never cached."""
    hub = Hub()
    first = hub.ingest("fleet/d-1/status", b'{"online":true}', qos=1, retain=True)  # sent on subscribe
    hub.ingest("fleet/d-2/status", b'{"online":true}', qos=1, retain=False)  # a birth, live
    hub.ingest("fleet/d-1/telemetry", b'{"seq":1}', qos=0, retain=False)
    hub.ingest("fleet/d-1/status", b'{"online":false,"reason":"lost"}', qos=1, retain=False)  # a will, live

    fresh = hub.add(["fleet/+/status"], transport="test")
    hub.ingest("fleet/d-3/status", b'{"online":true}', qos=1, retain=False)
    items = await fresh.get_batch(10)
    assert _topics(items) == [
        ("fleet/d-2/status", True),
        ("fleet/d-1/status", True),
        ("fleet/d-3/status", False),
    ]
    replayed = [json.loads(item.event.json) for item in items if isinstance(item, Retained)]
    assert [(e["retain"], e["payload"]) for e in replayed] == [
        (True, {"online": True}),
        (True, {"online": False, "reason": "lost"}),
    ]

    resumed = hub.add(["fleet/+/status"], transport="test", after_id=first.id)
    assert all(not isinstance(item, Retained) for item in await resumed.get_batch(10))


async def test_an_empty_payload_or_an_unknown_live_message_removes_the_entry() -> None:
    """An empty retained payload deletes a topic's entry, and so does a live message on a topic the
    bridge cannot tell is always retained; a lost broker connection clears the cache."""
    hub = Hub()
    hub.ingest("fleet/d-1/status", b'{"online":true}', qos=1, retain=True)
    hub.ingest("fleet/d-1/status", b"", qos=1, retain=False)
    hub.ingest("plant/config", b'{"v":1}', qos=1, retain=True)
    hub.ingest("site/mode", b'"auto"', qos=1, retain=True)
    assert [event.topic for event in hub.retained] == ["plant/config", "site/mode"]
    hub.ingest("plant/config", b'{"v":2}', qos=1, retain=False)  # retained or not: MQTT 3.1.1 does not say
    assert [event.topic for event in hub.retained] == ["site/mode"]
    hub.broker_status(False, "broker down")
    assert len(hub.retained) == 0
    assert hub.retained.bytes == 0


def test_the_cache_is_bounded_in_bytes_and_evicts_the_least_recently_updated() -> None:
    """Past `retained_bytes` the oldest entries go, and each eviction is counted."""
    hub = Hub(retained_bytes=1000)
    for n in range(20):
        hub.ingest(f"fleet/d-{n:02}/status", b'{"online":true,"pad":"%b"}' % (b"x" * 50), qos=1, retain=True)
    kept = [event.topic for event in hub.retained]
    assert 0 < hub.retained.bytes <= 1000
    assert kept == [f"fleet/d-{n:02}/status" for n in range(20 - len(kept), 20)]
    assert hub.retained.evicted == 20 - len(kept)
    assert len(Hub(retained_bytes=0).retained) == 0


async def _sse_lines(client: httpx.AsyncClient, url: str, count: int, headers: dict[str, str]) -> list[str]:
    """The first `count` `id:` and `data:` lines of an SSE stream."""
    lines: list[str] = []
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith(("id: ", "data: ")):
                lines.append(line)
                if sum(1 for seen in lines if seen.startswith("data: ")) == count:
                    return lines
    raise AssertionError(f"the stream ended after {lines}")


async def test_every_transport_replays_the_retained_statuses_on_a_fresh_connect(broker: Broker) -> None:
    """WebSocket, SSE and gRPC consumers that connect after the statuses were published get them at
    once (SSE without an id, so the resume point stays on live events); an SSE resume does not."""
    config = BridgeConfig(broker=f"mqtt://127.0.0.1:{broker.port}", http_port=0, grpc_port=0)
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="test-retained") as mqtt:
        await mqtt.publish("fleet/d-1/status", b'{"online":true}', qos=1, retain=True)
        async with running(config) as bridge:
            await wait_until(lambda: len(bridge.hub.retained) == 1, "the retained status from the broker")
            await mqtt.publish("fleet/d-2/status", b'{"online":false,"reason":"lost"}', qos=1, retain=True)
            await wait_until(lambda: len(bridge.hub.retained) == 2, "the live status in the cache")
            expected = [
                ("fleet/d-1/status", {"online": True}),
                ("fleet/d-2/status", {"online": False, "reason": "lost"}),
            ]
            base = f"127.0.0.1:{bridge.http_port}"

            async with connect(f"ws://{base}/ws?filter=fleet/+/status") as ws:
                async with asyncio.timeout(TIMEOUT):
                    over_ws = [json.loads(await ws.recv()) for _ in expected]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{bridge.grpc_port}") as channel:
                call = bridge_pb2_grpc.FleetBridgeServiceStub(channel).Subscribe(
                    pb.SubscribeRequest(filters=["fleet/+/status"]), timeout=30
                )
                over_grpc: list[dict[str, Any]] = []
                async with asyncio.timeout(TIMEOUT):
                    while len(over_grpc) < len(expected):
                        over_grpc += grpc_events(await call.read())
                call.cancel()
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                url = f"http://{base}/events?filter=fleet/%2B/status"
                sse = await _sse_lines(client, url, len(expected), {})
                live = bridge.hub.ingest("fleet/d-3/status", b'{"online":true}', qos=1, retain=False)
                resumed = await _sse_lines(client, url, 1, {"Last-Event-ID": str(live.id - 1)})

            for envelopes in (over_ws, over_grpc, [json.loads(line[6:]) for line in sse]):
                assert [(e["topic"], e["payload"]) for e in envelopes] == expected
                assert all(e["retain"] for e in envelopes)
            assert not any(line.startswith("id: ") for line in sse)
            assert resumed == [f"id: {live.id}", f"data: {live.json.decode()}"]

            # The README's example: curl prints the statuses at once, not only when one changes.
            async with Curl.stream(f"http://{base}/events?filter=fleet/%2B/status") as curl:
                assert json.loads((await curl.line_starting("data: "))[6:])["topic"] == "fleet/d-1/status"


async def test_a_websocket_subscribe_gets_the_retained_messages_of_the_filters_it_adds(
    bridge: RunningBridge,
) -> None:
    """Each subscribe message brings the retained messages of the filters it adds, and not again those
    of the filters already in force."""
    bridge.hub.ingest("fleet/d-1/status", b'{"online":true}', qos=1, retain=True)
    bridge.hub.ingest("plant/config", b'{"v":1}', qos=1, retain=True)
    async with connect(bridge.ws()) as ws:
        for topic_filter, retained in (("fleet/+/status", "fleet/d-1/status"), ("plant/#", "plant/config")):
            await ws.send(json.dumps({"type": "subscribe", "filters": [topic_filter]}))
            # The reply and the retained message come from two tasks: in either order.
            replies = [await recv_json(ws), await recv_json(ws)]
            assert sorted(r.get("type") or r["topic"] for r in replies) == sorted(["subscribed", retained])
        live = bridge.hub.ingest("fleet/d-2/status", b'{"online":true}', qos=1, retain=False)
        assert (await recv_json(ws))["id"] == live.id  # the first status was not sent again
