"""The HTTP bridge as a whole: one envelope on every transport, health, metrics, broker restarts, shutdown."""

from __future__ import annotations

import asyncio
import json
import socket

import aiomqtt
import httpx
import pytest
from httpx_sse import aconnect_sse
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bridges.app import create_app
from bridges.hub import Hub
from bridges.server import serve_http
from bridges.source import MqttSource, SourceSettings
from tests.bridges.conftest import (
    TIMEOUT,
    Curl,
    RunningBridge,
    SseReader,
    consumers,
    free_port,
    publish_and_wait,
    recv_json,
    recv_text,
    running_bridge,
    wait_until,
)
from tests.conftest import BrokerFactory


async def test_the_same_envelope_bytes_reach_websocket_sse_and_curl(
    bridge: RunningBridge, mqtt: aiomqtt.Client
) -> None:
    """One MQTT message arrives as the very same envelope text over WebSocket, httpx-sse and curl."""
    async with (
        connect(bridge.ws(filter="fleet/+/telemetry")) as ws,
        httpx.AsyncClient(base_url=bridge.http) as client,
        aconnect_sse(client, "GET", "/events", params={"filter": "fleet/+/telemetry"}) as source,
        Curl.stream(bridge.events(filter="fleet/+/telemetry")) as curl,
    ):
        await wait_until(lambda: consumers(bridge.hub, "sse") == 2, "both SSE streams to open")
        payload = {"device": "thermo-0007", "seq": 42, "values": {"temperature": 21.4}, "note": "é\n✓"}
        await publish_and_wait(mqtt, bridge.hub, [("fleet/thermo-0007/telemetry", payload)])
        over_ws = await recv_text(ws)
        sse = await SseReader(source).next()
        over_curl = (await curl.line_starting("data: ")).removeprefix("data: ")
    assert over_ws == sse.data == over_curl
    assert over_ws.encode() == bridge.hub.ring[-1].json
    envelope = json.loads(over_ws)
    assert sse.id == str(envelope["id"])
    assert {key: envelope[key] for key in ("topic", "device", "kind", "qos", "retain")} == {
        "topic": "fleet/thermo-0007/telemetry",
        "device": "thermo-0007",
        "kind": "telemetry",
        "qos": 1,
        "retain": False,
    }
    assert envelope["payload"] == payload


async def test_healthz_reports_the_broker_connection(bridge: RunningBridge) -> None:
    """/healthz is 200 with broker_connected, ready and the consumer count; /readyz is 200 when ready."""
    async with connect(bridge.ws(filter="fleet/#")), httpx.AsyncClient(base_url=bridge.http) as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "broker_connected": True, "ready": True, "consumers": 1}
    assert ready.status_code == 200


async def test_without_a_broker_healthz_stays_200_and_readyz_is_503() -> None:
    """Liveness does not depend on the broker; readiness does."""
    async with (
        running_bridge(free_port(), wait_connected=False) as bridge,
        httpx.AsyncClient(base_url=bridge.http) as client,
    ):
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert health.status_code == 200
    assert health.json()["broker_connected"] is False
    assert health.json()["ready"] is False
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_counters_move_and_keep_labels_low_cardinality(
    bridge: RunningBridge, mqtt: aiomqtt.Client
) -> None:
    """/metrics counts events in, deliveries, drops and consumers by transport only, and the ring."""
    async with (
        httpx.AsyncClient(base_url=bridge.http) as client,
        connect(bridge.ws(filter="fleet/#", queue=1)) as ws,
        aconnect_sse(client, "GET", "/events", params={"filter": "fleet/#"}) as source,
    ):
        before = _samples((await client.get("/metrics")).text)
        await publish_and_wait(mqtt, bridge.hub, [(f"fleet/dev-{n}/telemetry", {"seq": n}) for n in range(3)])
        reader = SseReader(source)
        for _ in range(3):
            await recv_json(ws)
            await reader.next()
        # In one loop turn: queued until the turn ends, and two dropped for queue=1.
        for _ in range(3):
            bridge.hub.ingest("fleet/dev-0/telemetry", b"{}", qos=0, retain=False)
        response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = _samples(response.text)
    assert after[("fleet_bridge_events_in_total", ())] - before[("fleet_bridge_events_in_total", ())] == 6
    ws_label, sse_label = (("transport", "websocket"),), (("transport", "sse"),)
    assert (
        after[("fleet_bridge_deliveries_total", ws_label)]
        - before.get(("fleet_bridge_deliveries_total", ws_label), 0)
        == 6
    )
    assert after[("fleet_bridge_deliveries_total", sse_label)] == 6
    assert after[("fleet_bridge_drops_total", ws_label)] == 2
    assert after[("fleet_bridge_consumers", ws_label)] == 1
    assert after[("fleet_bridge_consumers", sse_label)] == 1
    assert after[("fleet_bridge_broker_connected", ())] == 1
    assert after[("fleet_bridge_ring_events", ())] == len(bridge.hub.ring)
    assert after[("fleet_bridge_ring_capacity", ())] == 10_000
    assert {name for (_, labels) in after for name, _ in labels} == {"transport"}


async def test_send_timeouts_are_exported_by_transport(bridge: RunningBridge) -> None:
    """Consumers cut by the send timeout are counted in fleet_bridge_send_timeouts_total, by transport."""
    for transport in ("grpc", "sse", "sse"):
        bridge.hub.count_send_timeout(transport)
    async with httpx.AsyncClient(base_url=bridge.http) as client:
        samples = _samples((await client.get("/metrics")).text)
    assert samples[("fleet_bridge_send_timeouts_total", (("transport", "grpc"),))] == 1
    assert samples[("fleet_bridge_send_timeouts_total", (("transport", "sse"),))] == 2
    assert ("fleet_bridge_send_timeouts_total", (("transport", "websocket"),)) not in samples


async def test_each_app_has_its_own_registry() -> None:
    """Two apps in one process expose their own hub's numbers, not each other's."""
    first, second = Hub(), Hub()
    first.ingest("fleet/a/status", b"{}", qos=0, retain=False)
    apps = [create_app(hub, MqttSource(hub, SourceSettings(port=free_port()))) for hub in (first, second)]
    texts = []
    for app in apps:
        async with serve_http(app) as port, httpx.AsyncClient() as client:
            texts.append((await client.get(f"http://127.0.0.1:{port}/metrics")).text)
    assert [_samples(text)[("fleet_bridge_events_in_total", ())] for text in texts] == [1, 0]


async def test_the_bridges_survive_a_broker_restart(broker_factory: BrokerFactory) -> None:
    """When the broker goes away and comes back on its port, consumers get `bridge` news and events resume."""
    first_broker = broker_factory()
    port = (await first_broker.__aenter__()).port
    running = True
    try:
        async with (
            running_bridge(port) as bridge,
            connect(bridge.ws(filter="fleet/#")) as ws,
            httpx.AsyncClient(base_url=bridge.http) as client,
            aconnect_sse(client, "GET", "/events", params={"filter": "fleet/#"}) as source,
        ):
            reader = SseReader(source)
            running = False
            await first_broker.__aexit__(None, None, None)
            down_ws, down_sse = await recv_json(ws), await reader.next()
            assert down_ws["kind"] == "bridge"
            assert down_ws["payload"]["connected"] is False
            assert down_sse.event == "bridge"
            assert json.loads(down_sse.data) == down_ws
            assert (await client.get("/healthz")).json()["broker_connected"] is False

            async with broker_factory(port=port) as second:
                up_ws, up_sse = await recv_json(ws), await reader.next()
                assert up_ws["payload"]["connected"] is True
                assert up_sse.event == "bridge"
                assert json.loads(up_sse.data)["payload"]["connected"] is True
                assert (await client.get("/healthz")).json()["broker_connected"] is True
                async with aiomqtt.Client("127.0.0.1", second.port) as mqtt:
                    await publish_and_wait(mqtt, bridge.hub, [("fleet/dev-1/telemetry", {"seq": 1})])
                assert (await recv_json(ws))["payload"] == {"seq": 1}
                assert json.loads((await reader.next()).data)["payload"] == {"seq": 1}
    finally:
        if running:
            await first_broker.__aexit__(None, None, None)


async def test_leaving_serve_http_ends_open_streams_promptly() -> None:
    """Shutdown closes WebSockets with 1001 and ends SSE streams instead of waiting for the clients."""
    hub = Hub()
    app = create_app(hub, MqttSource(hub, SourceSettings(port=free_port())))
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    async def serve() -> None:
        async with serve_http(app) as port:
            bound.set_result(port)
            await stop.wait()

    server = asyncio.create_task(serve(), name="test.serve_http")
    port = await bound
    async with (
        connect(f"ws://127.0.0.1:{port}/ws?filter=fleet/%23") as ws,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
        aconnect_sse(client, "GET", "/events", params={"filter": "fleet/#"}) as source,
    ):
        await wait_until(lambda: len(hub.consumers) == 2, "both streams to open")
        stop.set()
        async with asyncio.timeout(TIMEOUT):
            await server
        with pytest.raises(ConnectionClosed) as closed:
            await recv_text(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001
        assert await SseReader(source).ended()
    assert len(hub.consumers) == 0


async def test_a_port_in_use_is_an_oserror() -> None:
    """serve_http raises OSError for a taken port, before anything runs."""
    hub = Hub()
    app = create_app(hub, MqttSource(hub, SourceSettings(port=free_port())))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="in use"):
            async with serve_http(app, port=taken.getsockname()[1]):
                pass


async def test_the_http_server_turns_nagles_algorithm_off_on_every_connection(bridge: RunningBridge) -> None:
    """A connection the bridge accepts has TCP_NODELAY, set when it is accepted, before any request:
    with Nagle's algorithm on, an event written while the one before was unacknowledged waited for the
    client's delayed ACK, up to 40 ms."""
    async with connect(bridge.ws(filter="fleet/#")):
        await wait_until(lambda: len(bridge.hub.consumers) == 1, "the consumer to join")
        (session,) = bridge.app.state.bridge.streams
        sock = session.websocket.scope["fleet.bridge.transport"].get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
