"""The naive bridge of `bench/bridge_scale.py` (`bench/naive_bridge.py`) speaks what the bench's
consumers read from `fleet bridge`: the same envelope on WebSocket, SSE and gRPC, and the same
counter names on /metrics. A real subprocess against the embedded broker; no timing is asserted."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Callable

import aiomqtt
import grpc
import httpx
from websockets.asyncio.client import connect

from bridges.envelope import make_event
from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2 as pb
from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2_grpc as pb_grpc
from broker.server import Broker
from tests.procs import ROOT, Proc

TIMEOUT = 10.0
SERVING = re.compile(r"naive bridge: serving (http|grpc)://127\.0\.0\.1:(\d+)")
TOPIC = "fleet/dev-7/telemetry"
PAYLOAD = b'{"ts":1764400000123456,"seq":7,"temperature":21.5}'


def metrics_of(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out


async def poll_metrics(
    client: httpx.AsyncClient, want: Callable[[dict[str, float]], bool]
) -> dict[str, float]:
    """/metrics once `want` holds of it; fails after TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    metrics: dict[str, float] = {}
    while time.monotonic() < deadline:
        response = await client.get("/metrics")
        metrics = metrics_of(response.text)
        if want(metrics):
            return metrics
        await asyncio.sleep(0.02)
    raise AssertionError(f"/metrics never matched: {metrics}")


async def test_naive_bridge_delivers_fleet_bridges_envelope_on_every_transport(
    broker: Broker, procs: Callable[..., Proc]
) -> None:
    """One published message reaches a WebSocket, an SSE and a gRPC consumer of the naive bridge as
    fleet bridge's envelope (gRPC: its Event), and /metrics counts it under fleet bridge's names."""
    proc = procs(sys.executable, ROOT / "bench" / "naive_bridge.py", "--broker-port", broker.port)
    await asyncio.to_thread(proc.stdout.wait_for, "naive bridge: serving grpc://", TIMEOUT)
    ports = dict(SERVING.findall(proc.stdout.text))
    http, grpc_port = int(ports["http"]), int(ports["grpc"])
    base = f"127.0.0.1:{http}"
    async with (
        httpx.AsyncClient(base_url=f"http://{base}", timeout=TIMEOUT) as client,
        connect(f"ws://{base}/ws?filter=fleet/%2B/telemetry") as ws,
        client.stream("GET", "/events?filter=%23") as sse,
        grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
    ):
        stream = pb_grpc.FleetBridgeServiceStub(channel).Subscribe(pb.SubscribeRequest(filters=["#"]))
        await asyncio.wait_for(stream.initial_metadata(), TIMEOUT)
        consumers = ("websocket", "sse", "grpc")
        await poll_metrics(
            client,
            lambda m: (
                m.get("fleet_bridge_events_in_total") is not None
                and all(m.get(f'fleet_bridge_consumers{{transport="{t}"}}') == 1 for t in consumers)
            ),
        )
        async with aiomqtt.Client("127.0.0.1", broker.port) as mqtt:
            await mqtt.publish(TOPIC, PAYLOAD)
        expected = json.loads(make_event(1, TOPIC, PAYLOAD, qos=0, retain=False, received_at=0.0).json)
        del expected["id"], expected["received_at"]

        ws_envelope = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert {k: v for k, v in ws_envelope.items() if k not in ("id", "received_at")} == expected
        lines = sse.aiter_lines()
        sse_data = ""
        async with asyncio.timeout(TIMEOUT):
            while not sse_data:
                line = await anext(lines)
                sse_data = line.removeprefix("data: ") if line.startswith("data: ") else ""
        assert json.loads(sse_data) == ws_envelope
        response = await asyncio.wait_for(stream.read(), TIMEOUT)
        assert isinstance(response, pb.SubscribeResponse)
        (event,) = response.events.events
        assert (event.id, event.topic, event.device, event.kind) == (
            ws_envelope["id"],
            TOPIC,
            "dev-7",
            pb.KIND_TELEMETRY,
        )
        assert json.loads(event.json_text) == json.loads(PAYLOAD)
        metrics = await poll_metrics(client, lambda m: m.get("fleet_bridge_events_in_total") == 1)
        for t in consumers:
            assert metrics[f'fleet_bridge_deliveries_total{{transport="{t}"}}'] == 1
            assert metrics[f'fleet_bridge_drops_total{{transport="{t}"}}'] == 0
        stream.cancel()
