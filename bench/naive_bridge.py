"""The naive bridge: the baseline `bench/bridge_scale.py` runs beside `fleet bridge` in the same run.

It is the straightforward asyncio bridge a competent engineer writes in an afternoon, with the
libraries anyone would pick, and nothing tuned:

- one aiomqtt subscription (``#``, QoS 0); each message becomes one JSON envelope (the same one
  ``fleet bridge`` sends, encoded once per message) and one protobuf ``Event``;
- one bounded ``asyncio.Queue`` per consumer (``--queue-size``, 1,000 like ``fleet bridge``'s
  default); a full queue drops the new event and counts it (drop-newest);
- Starlette on uvicorn (its defaults: asyncio loop, h11, the ``websockets`` WebSocket
  implementation): ``/ws`` sends one text frame per event, ``/events`` is sse-starlette's
  ``EventSourceResponse``, one event each; ``?filter=`` takes MQTT topic filters (aiomqtt matches);
- grpc.aio serving ``FleetBridgeService.Subscribe`` of ``bridges/proto``: one ``SubscribeResponse``
  with a one-event batch per event;
- ``/healthz``, ``/readyz`` and a hand-written ``/metrics`` with the counter names of ``fleet
  bridge`` that the bench reads (``fleet_bridge_events_in_total``, ``fleet_bridge_deliveries_total``
  and ``fleet_bridge_drops_total`` by transport, ``fleet_bridge_consumers``).

It prints ``naive bridge: serving http://HOST:PORT`` and ``... grpc://HOST:PORT`` once it listens.

Usage::

    .venv/bin/python bench/naive_bridge.py --broker-port 1883 [--http-port 0] [--grpc-port 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import grpc
import uvicorn
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2 as pb
from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2_grpc as pb_grpc
from fleet.topics import classify

HOST = "127.0.0.1"
KINDS = {"telemetry": pb.KIND_TELEMETRY, "status": pb.KIND_STATUS, "ack": pb.KIND_ACK}


@dataclass(frozen=True, slots=True)
class Message:
    topic: aiomqtt.Topic
    text: str  # the JSON envelope
    proto: pb.Event


@dataclass(eq=False)  # hashed by identity: the hub keeps a set of them
class Consumer:
    transport: str
    filters: list[str]
    queue: asyncio.Queue[Message]


@dataclass
class Hub:
    queue_size: int
    consumers: set[Consumer] = field(default_factory=set)
    events_in: int = 0
    deliveries: Counter[str] = field(default_factory=Counter)
    drops: Counter[str] = field(default_factory=Counter)
    connected: bool = False

    def add(self, transport: str, filters: list[str]) -> Consumer:
        consumer = Consumer(transport, filters, asyncio.Queue(self.queue_size))
        self.consumers.add(consumer)
        return consumer

    def publish(self, message: Message) -> None:
        self.events_in += 1
        for consumer in list(self.consumers):
            if any(message.topic.matches(f) for f in consumer.filters):
                self.deliveries[consumer.transport] += 1
                try:
                    consumer.queue.put_nowait(message)
                except asyncio.QueueFull:
                    self.drops[consumer.transport] += 1


def envelope(event_id: int, topic: str, payload: bytes) -> Message:
    device, kind = classify(topic, "fleet")
    now = time.time()
    try:
        value = json.loads(payload)
    except ValueError:
        value = None
    doc = {
        "id": event_id,
        "topic": topic,
        "device": device,
        "kind": kind,
        "qos": 0,
        "retain": False,
        "received_at": round(now, 6),
        "payload": value,
    }
    text = json.dumps(doc, separators=(",", ":"))
    event = pb.Event(id=event_id, topic=topic, kind=KINDS.get(kind, pb.KIND_RAW), qos=0, received_at=now)
    if device:
        event.device = device
    if value is not None:
        event.json_text = json.dumps(value, separators=(",", ":"))
    else:
        event.raw = payload
    return Message(aiomqtt.Topic(topic), text, event)


async def mqtt_loop(hub: Hub, port: int) -> None:
    """Subscribe to everything and hand each message to the hub; reconnect after a lost link."""
    event_id = 0
    for _ in range(1 << 62):
        try:
            async with aiomqtt.Client(HOST, port, identifier=f"naive-bridge-{time.time_ns()}") as client:
                await client.subscribe("#", qos=0)
                hub.connected = True
                async for msg in client.messages:
                    event_id += 1
                    payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload).encode()
                    hub.publish(envelope(event_id, msg.topic.value, payload))
        except aiomqtt.MqttError:
            hub.connected = False
            await asyncio.sleep(1.0)


def filters_of(request_filters: list[str]) -> list[str]:
    return request_filters or ["#"]


def make_app(hub: Hub) -> Starlette:
    async def ws_endpoint(ws: WebSocket) -> None:
        await ws.accept()
        consumer = hub.add("websocket", filters_of(ws.query_params.getlist("filter")))
        try:
            while True:
                message = await consumer.queue.get()
                await ws.send_text(message.text)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            hub.consumers.discard(consumer)

    async def events(request: Request) -> Response:
        consumer = hub.add("sse", filters_of(request.query_params.getlist("filter")))

        async def stream() -> AsyncIterator[dict[str, str]]:
            try:
                while True:
                    message = await consumer.queue.get()
                    yield {"id": str(message.proto.id), "data": message.text}
            finally:
                hub.consumers.discard(consumer)

        return EventSourceResponse(stream(), sep="\n")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True, "broker_connected": hub.connected})

    async def readyz(request: Request) -> Response:
        return JSONResponse({"ready": hub.connected}, status_code=200 if hub.connected else 503)

    async def metrics(request: Request) -> Response:
        lines = [f"fleet_bridge_events_in_total {hub.events_in}"]
        by_transport = Counter(c.transport for c in hub.consumers)
        queued = Counter[str]()
        for c in list(hub.consumers):
            queued[c.transport] += c.queue.qsize()
        for t in ("websocket", "sse", "grpc"):
            lines.append(f'fleet_bridge_deliveries_total{{transport="{t}"}} {hub.deliveries[t]}')
            lines.append(f'fleet_bridge_drops_total{{transport="{t}"}} {hub.drops[t]}')
            lines.append(f'fleet_bridge_consumers{{transport="{t}"}} {by_transport[t]}')
            lines.append(f'fleet_bridge_queued_events{{transport="{t}"}} {queued[t]}')
        return PlainTextResponse("\n".join(lines) + "\n")

    return Starlette(
        routes=[
            WebSocketRoute("/ws", ws_endpoint),
            Route("/events", events),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
        ]
    )


class Service(pb_grpc.FleetBridgeServiceServicer):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SubscribeResponse]:
        consumer = self.hub.add("grpc", filters_of(list(request.filters)))
        try:
            await context.send_initial_metadata(())
            while True:
                message = await consumer.queue.get()
                yield pb.SubscribeResponse(events=pb.EventBatch(events=[message.proto]))
        finally:
            self.hub.consumers.discard(consumer)

    async def Publish(
        self, request: pb.PublishRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PublishResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the naive bridge only streams events")


async def serve(args: argparse.Namespace) -> None:
    hub = Hub(args.queue_size)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, args.http_port))
    http = uvicorn.Server(
        uvicorn.Config(make_app(hub), log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    )
    server = grpc.aio.server()
    pb_grpc.add_FleetBridgeServiceServicer_to_server(Service(hub), server)
    grpc_port = server.add_insecure_port(f"{HOST}:{args.grpc_port}")
    await server.start()
    try:
        async with asyncio.TaskGroup() as tg:
            mqtt = tg.create_task(mqtt_loop(hub, args.broker_port), name="naive-bridge.mqtt")
            web = tg.create_task(http.serve(sockets=[sock]), name="naive-bridge.http")
            for _ in range(1000):
                if http.started or web.done():
                    break
                await asyncio.sleep(0.01)
            print(f"naive bridge: serving http://{HOST}:{sock.getsockname()[1]}", flush=True)
            print(f"naive bridge: serving grpc://{HOST}:{grpc_port}", flush=True)
            await web  # until uvicorn takes SIGTERM or SIGINT
            mqtt.cancel()
    finally:
        await server.stop(1.0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--broker-port", type=int, required=True, help="the MQTT broker on 127.0.0.1")
    p.add_argument("--http-port", type=int, default=0)
    p.add_argument("--grpc-port", type=int, default=0)
    p.add_argument("--queue-size", type=int, default=1000, help="events queued per consumer")
    args = p.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
