"""The bridge's limits, driven against real servers: a `fleet broker` subprocess, the bridge's real
uvicorn and grpc.aio servers, and real WebSocket, SSE and gRPC clients."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import httpx
import psutil
import pytest
from httpx_sse import aconnect_sse
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect

from bridges.app import MAX_JSON_DEPTH
from bridges.bridge import Bridge, running
from bridges.config import BridgeConfig
from bridges.grpc_service import grpc_server
from bridges.hub import MAX_FILTERS, QUEUE_BYTES, RING_BYTES, Hub
from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2 as pb
from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2_grpc
from bridges.server import MAX_WS_MESSAGE
from broker.server import Broker
from tests.bridges.conftest import BridgeFactory, SseReader, recv_json, server_connections, wait_until
from tests.procs import FleetBroker, Paho, Proc

TIMEOUT = 5.0
Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _bridge_config(broker: FleetBroker, **settings: Any) -> BridgeConfig:
    return BridgeConfig(broker=f"mqtt://127.0.0.1:{broker.port}", http_port=0, grpc_port=0, **settings)


async def _connected(bridge: Bridge) -> None:
    await wait_until(lambda: bridge.hub.broker_connected, "the bridge to connect to its broker")


def _nested(depth: int) -> str:
    """JSON text: `depth` arrays, one inside the other."""
    return "[" * depth + "]" * depth


async def _reply(ws: ClientConnection, message: dict[str, Any], *, raw: bool = False) -> dict[str, Any]:
    """Send a control message and return the bridge's reply to it, skipping events in between. With
    `raw`, the message's `payload` is JSON text spliced in as it is."""
    if raw:
        payload = message.pop("payload")
        await ws.send(json.dumps(message)[:-1] + f', "payload": {payload}}}')
    else:
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
    broker = start_fleet_broker("--port", 0, "--ws-port", 0)
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
    reply = await _reply(ws, {"type": "publish", "topic": "fleet/d1/cmd", "payload": "x" * 200_000})
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
    broker = start_fleet_broker("--port", 0, "--ws-port", 0, "--max-packet-size", 65536)
    async with running(_bridge_config(broker, max_publish_bytes=65_000)) as bridge:
        await _connected(bridge)
        async with connect(f"ws://127.0.0.1:{bridge.http_port}/ws?filter=fleet/%23") as ws:
            reply = await _reply(ws, {"type": "publish", "topic": "fleet/d1/cmd", "payload": "x" * 100_000})
            assert reply["type"] == "error", reply
            assert "65000" in reply["error"], reply
            await _link_still_up(ws, bridge)


def _metrics(url: str) -> Metrics:
    text = httpx.get(url, timeout=TIMEOUT).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _wait_metric(url: str, key: tuple[str, tuple[tuple[str, str], ...]], at_least: float) -> Metrics:
    """The bridge's metrics once the sample `key` is at least `at_least` (fails after 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        metrics = _metrics(url)
        if metrics.get(key, 0) >= at_least:
            return metrics
        assert time.monotonic() < deadline, f"timed out waiting for {key} >= {at_least}: {metrics.get(key)}"
        time.sleep(0.05)


def test_the_bridge_stays_within_its_byte_limits_whatever_is_published(
    start_fleet_broker: Callable[..., FleetBroker],
    bridge_proc: Callable[..., Proc],
    paho_client: Callable[..., Paho],
) -> None:
    """400 payloads of 60 KB and 20 of 1 MB: the ring stays under ring_bytes, a stalled consumer's
    queue under queue_bytes, the 1 MB ones become notices counted in /metrics, and the RSS of the
    `fleet bridge` process grows by less than the ring's cap and a queue's, plus allocator slack."""
    broker = start_fleet_broker("--port", 0, "--ws-port", 0)
    proc = bridge_proc("--broker", f"mqtt://127.0.0.1:{broker.port}", "--http-port", 0, "--grpc-port", 0)
    index = proc.stdout.wait_for(lambda line: line.startswith("fleet bridge: serving http://"))
    base = proc.stdout.lines[index].removeprefix("fleet bridge: serving ").removesuffix("/events")
    metrics_url = f"{base}/metrics"
    _wait_metric(metrics_url, ("fleet_bridge_broker_connected", ()), 1)
    bridge = psutil.Process(proc.pid)
    rss_before = bridge.memory_info().rss
    port = int(base.rsplit(":", 1)[1])
    mqtt = paho_client("test-limits-publisher")
    mqtt.connect(broker.port)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as stalled:
        # An SSE consumer that never reads: its queue fills to its byte cap.
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /events?filter=fleet/%23 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        _wait_metric(metrics_url, ("fleet_bridge_consumers", (("transport", "sse"),)), 1)
        large = json.dumps("x" * 60_000).encode()
        for number in range(400):
            mqtt.publish(f"fleet/d{number % 10}/telemetry", large, qos=1)
        for _ in range(20):
            mqtt.publish("fleet/big/telemetry", b"y" * 1_000_000, qos=1)
        metrics = _wait_metric(metrics_url, ("fleet_bridge_events_in_total", ()), 420)
        rss_after = bridge.memory_info().rss
    growth = rss_after - rss_before
    assert growth < RING_BYTES + QUEUE_BYTES + 24 * 1024 * 1024, f"RSS grew by {growth / 1e6:.1f} MB"
    ring_cap = metrics[("fleet_bridge_ring_capacity_bytes", ())]
    assert ring_cap == RING_BYTES
    assert 0 < metrics[("fleet_bridge_ring_bytes", ())] <= ring_cap
    # What the stalled queue keeps beyond the ring is at most QUEUE_BYTES.
    assert metrics[("fleet_bridge_queued_bytes", (("transport", "sse"),))] <= QUEUE_BYTES + ring_cap
    assert metrics[("fleet_bridge_oversized_total", ())] == 20


async def test_a_consumer_gets_a_notice_of_a_message_too_large_to_bridge(
    start_fleet_broker: Callable[..., FleetBroker], paho_client: Callable[..., Paho]
) -> None:
    """A payload over max_event_bytes reaches a matching WebSocket consumer as a `$bridge/oversized`
    notice with its topic and size, then the stream goes on; a consumer of other topics gets nothing."""
    broker = start_fleet_broker("--port", 0, "--ws-port", 0)
    async with running(_bridge_config(broker, max_event_bytes=1000)) as bridge:
        await _connected(bridge)
        url = f"ws://127.0.0.1:{bridge.http_port}/ws"
        async with connect(f"{url}?filter=fleet/%23") as ws, connect(f"{url}?filter=other/%23") as other:
            publisher = paho_client("test-limits-oversized")
            publisher.connect(broker.port)
            publisher.publish("fleet/d1/telemetry", b"z" * 5000, 1)
            publisher.publish("other/small", b"{}", 1)
            publisher.publish("fleet/d1/telemetry", b'{"seq": 1}', 1)
            notice = await recv_json(ws)
            assert notice["topic"] == "$bridge/oversized", notice
            assert notice["kind"] == "bridge"
            assert notice["payload"] == {"topic": "fleet/d1/telemetry", "size": 5000, "max_event_bytes": 1000}
            assert (await recv_json(ws))["payload"] == {"seq": 1}
            assert (await recv_json(other))["topic"] == "other/small"


async def _http_status(port: int, request: bytes) -> int:
    """The status code of the response to a raw HTTP/1.1 request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(TIMEOUT):
            status_line = await reader.readline()
        return int(status_line.split()[1])
    finally:
        writer.close()


async def _ended(connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], within: float) -> None:
    """Return once the bridge has closed every connection (after any answer); fail after `within` s."""
    async with asyncio.timeout(within):
        for reader, _ in connections:
            while await reader.read(65536):
                pass


async def test_partial_requests_are_closed_and_connections_past_the_cap_get_503(broker: Broker) -> None:
    """Slowloris: 130 requests with unfinished headers, and 20 with unfinished bodies, are all closed
    within the request timeout; while they are open, past max_connections, a request and a WebSocket
    handshake get 503."""
    config = BridgeConfig(
        broker=f"mqtt://127.0.0.1:{broker.port}",
        http_port=0,
        grpc_port=0,
        max_connections=100,
        # Long enough that the first of 130 connections is still open when the last is accepted, even
        # on a loaded machine: 1 s was not, beside the other tests of `make test`.
        request_timeout=5.0,
    )
    get = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    handshake = (
        b"GET /ws?filter=fleet/%23 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    async with running(config) as bridge:
        port = bridge.http_port
        opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            headers: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
            for _ in range(130):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                headers.append((reader, writer))
            opened += headers
            await wait_until(lambda: server_connections(port) >= 130, "the bridge to accept 130 connections")
            assert await _http_status(port, get) == 503
            assert await _http_status(port, handshake) == 503
            await _ended(headers, config.request_timeout + TIMEOUT)

            bodies: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
            for _ in range(20):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\nabc")
                bodies.append((reader, writer))
            opened += bodies
            await _ended(bodies, config.request_timeout + TIMEOUT)
            assert await _http_status(port, get) == 200
            assert await _http_status(port, handshake) == 101
        finally:
            for _, writer in opened:
                writer.close()


async def test_deep_or_large_websocket_messages_get_an_error_or_1009_and_the_bridge_goes_on(
    bridge_factory: BridgeFactory,
) -> None:
    """A message nested 100,000 levels deep, or 33, gets the documented `error` reply and the connection
    stays usable; one larger than the server's limit closes it with 1009."""
    async with bridge_factory() as bridge, connect(bridge.ws()) as ws:
        for depth in (100_000, MAX_JSON_DEPTH + 1):
            reply = await _reply(ws, {"type": "publish", "payload": _nested(depth)}, raw=True)
            assert reply["type"] == "error", reply
            assert f"deeper than {MAX_JSON_DEPTH}" in reply["error"], reply
        reply = await _reply(ws, {"type": "subscribe", "filters": ["fleet/#"]})
        assert reply == {"type": "subscribed", "filters": ["fleet/#"]}
        ok = {"type": "publish", "topic": "fleet/d1/cmd", "payload": _nested(MAX_JSON_DEPTH - 1)}
        assert (await _reply(ws, ok, raw=True))["type"] == "published"
        await ws.send(
            json.dumps({"type": "publish", "topic": "fleet/d1/cmd", "payload": "x" * MAX_WS_MESSAGE})
        )
        async with asyncio.timeout(TIMEOUT):
            await ws.wait_closed()
        assert ws.close_code == 1009
    assert bridge.hub.broker_connected


async def test_every_transport_caps_filters_at_64_and_resets_a_resume_point_out_of_range(
    bridge_factory: BridgeFactory,
) -> None:
    """gRPC Subscribe refuses 65 filters with INVALID_ARGUMENT as /ws and /events refuse them (and
    20,000 as a request too large); a resume point past the newest event (2**64 over SSE, 2**64 - 1
    over gRPC) gets `reset`."""
    hub = Hub()
    async with (
        bridge_factory(hub=hub) as bridge,
        grpc_server(hub, bridge.source) as grpc_port,
        grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
        httpx.AsyncClient(timeout=TIMEOUT) as http,
    ):
        stub = bridge_pb2_grpc.FleetBridgeServiceStub(channel)
        # 20,000 filters are a request larger than grpc takes (max_publish_bytes and room for a topic).
        for count, code in ((MAX_FILTERS + 1, "INVALID_ARGUMENT"), (20_000, "RESOURCE_EXHAUSTED")):
            filters = [f"fleet/d{number}/#" for number in range(count)]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in stub.Subscribe(pb.SubscribeRequest(filters=filters), timeout=TIMEOUT):
                    pass
            assert refused.value.code() == grpc.StatusCode[code], refused.value
            if count == MAX_FILTERS + 1:
                assert f"at most {MAX_FILTERS} filters" in (refused.value.details() or "")
        many = [f"fleet/d{number}/#" for number in range(MAX_FILTERS + 1)]
        response = await http.get(bridge.events(filter=many))
        assert response.status_code == 400
        assert f"at most {MAX_FILTERS} filters" in response.text
        async with connect(bridge.ws(filter=many)) as ws:
            assert "at most" in (await recv_json(ws))["error"]
        async with connect(bridge.ws(filter=many[:MAX_FILTERS])) as ws:
            reply = await _reply(ws, {"type": "subscribe", "filters": ["other/#"]})
            assert reply["type"] == "error", reply

        newest = hub.ring[-1].id
        async with aconnect_sse(
            http, "GET", bridge.events(filter="fleet/#"), headers={"Last-Event-ID": str(2**64)}
        ) as source:
            sse = await SseReader(source).next()
            assert sse.event == "reset", sse
            assert json.loads(sse.data) == {"after_id": 2**64, "oldest_id": hub.ring[0].id}
        stream = stub.Subscribe(pb.SubscribeRequest(filters=["fleet/#"], resume_after_id=2**64 - 1))
        async with asyncio.timeout(TIMEOUT):
            first = await anext(aiter(stream))
        stream.cancel()
        assert first.WhichOneof("item") == "reset", first
        assert first.reset.after_id == 2**64 - 1
        assert hub.ring[-1].id >= newest


def test_a_queue_may_hold_the_ring_but_only_queue_bytes_of_what_the_ring_dropped() -> None:
    """A consumer asking for 10,000 events keeps all of those the ring still holds, whatever their
    bytes; of the events the ring has dropped, it keeps at most queue_bytes."""
    payload = json.dumps("x" * 1000).encode()
    roomy = Hub(ring_size=10_000, queue_bytes=10_000)
    taker = roomy.add(["fleet/#"], transport="test", size=10_000)
    for number in range(500):
        roomy.ingest(f"fleet/d{number}/telemetry", payload, qos=0, retain=False)
    assert taker.queued == 500
    assert taker.dropped == 0

    small = Hub(ring_size=5, queue_bytes=10_000)
    slow = small.add(["fleet/#"], transport="test", size=10_000)
    for number in range(500):
        small.ingest(f"fleet/d{number}/telemetry", payload, qos=0, retain=False)
    assert slow.dropped > 0
    assert slow.queued_bytes <= 10_000 + small.ring_bytes


async def test_grpc_calls_past_the_cap_get_resource_exhausted(bridge_factory: BridgeFactory) -> None:
    """With max_calls 2 and two Subscribe streams open, a third call gets RESOURCE_EXHAUSTED; once a
    stream ends, a call goes through again."""
    hub = Hub()
    async with (
        bridge_factory(hub=hub) as bridge,
        grpc_server(hub, bridge.source, max_calls=2) as grpc_port,
        grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
    ):
        stub = bridge_pb2_grpc.FleetBridgeServiceStub(channel)
        streams = [stub.Subscribe(pb.SubscribeRequest(filters=["fleet/#"])) for _ in range(2)]
        for stream in streams:
            async with asyncio.timeout(TIMEOUT):
                await stream.initial_metadata()  # the stream is registered with the hub
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Publish(pb.PublishRequest(topic="fleet/d1/cmd", payload=b"{}", qos=1), timeout=TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
        streams[0].cancel()
        await wait_until(lambda: sum(c.transport == "grpc" for c in hub.consumers) == 1, "the stream to end")
        await stub.Publish(pb.PublishRequest(topic="fleet/d1/cmd", payload=b"{}", qos=1), timeout=TIMEOUT)
        streams[1].cancel()
