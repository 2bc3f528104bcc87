"""The gRPC bridge: `mqtt_fleet.bridge.v1.FleetBridgeService` on grpc.aio, with health and reflection.

    async with grpc_server(hub, source, port=50051) as port:
        ...  # serving until the block exits

`Subscribe` streams the Hub's items (`Event`, `Dropped`, `Reset`) as `SubscribeResponse` messages.
Each event is serialized once, not once per consumer: Subscribe is registered with no response
serializer, so it yields bytes that grpc sends as they are, and the bytes of recent events are
cached by event id. `Publish` publishes a device command through the bridge's MQTT source.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Final, Protocol

import grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bridges.envelope import Event, Kind
from bridges.hub import Consumer, ConsumerClosed, Dropped, Hub, Item, Policy
from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2 as pb
from bridges.source import BrokerUnavailable
from fleet.errors import TopicError, TransportError

__all__ = ["SERVICE_NAME", "FleetBridgeServicer", "Publisher", "event_message", "grpc_server"]

SERVICE_NAME: Final = pb.DESCRIPTOR.services_by_name["FleetBridgeService"].full_name

_KINDS: Final[dict[Kind, pb.Kind.ValueType]] = {
    "telemetry": pb.KIND_TELEMETRY,
    "status": pb.KIND_STATUS,
    "ack": pb.KIND_ACK,
    "raw": pb.KIND_RAW,
    "bridge": pb.KIND_BRIDGE,
}

# Server-side HTTP/2 keepalive: a peer that stops answering pings is cut after about 40 s instead of
# holding its stream open forever (grpc's default has none; see BRIDGE-NOTES.md). Pings go on while
# a quiet stream sends no data, and clients may ping every 10 s (the default refuses under 5 min).
SERVER_OPTIONS: Final = (
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
)


class Publisher(Protocol):
    """What Publish needs from the bridge's MQTT side (`bridges.source.MqttSource` is one)."""

    def check_publish(self, topic: str) -> None: ...

    async def publish(self, topic: str, payload: bytes, qos: int) -> None: ...


def _set_json(value: struct_pb2.Value, payload: Any) -> None:
    if payload is None:
        value.null_value = struct_pb2.NULL_VALUE
    elif isinstance(payload, bool):
        value.bool_value = payload
    elif isinstance(payload, int | float):
        value.number_value = payload
    elif isinstance(payload, str):
        value.string_value = payload
    elif isinstance(payload, dict):
        value.struct_value.update(payload)
    elif isinstance(payload, list):
        value.list_value.extend(payload)
    else:
        raise TypeError(f"not a JSON value: {type(payload).__name__}")


def event_message(event: Event) -> pb.Event:
    """The protobuf form of an envelope: the same fields and values as its JSON form.

    A JSON payload goes into `json` (a `google.protobuf.Value`), any other into `raw`; so does a
    JSON payload that protobuf cannot hold (an integer beyond a double's range, a lone surrogate).
    """
    message = pb.Event(
        id=event.id,
        topic=event.topic,
        kind=_KINDS[event.kind],
        qos=event.qos,
        retain=event.retain,
        received_at=round(event.received_at, 6),  # the JSON envelope's rounding
    )
    if event.device is not None:
        message.device = event.device
    if event.is_json:
        try:
            _set_json(message.json, event.payload)
        except (ValueError, TypeError, OverflowError):
            message.raw = event.raw  # setting the other member of the oneof clears `json`
    else:
        message.raw = event.raw
    return message


class _EncodedEvents:
    """Serialized `SubscribeResponse`s of recent events, by event id, so that N streams cost one
    encoding. Bounded: a stream far behind the others re-encodes what it reads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._bytes: dict[int, bytes] = {}

    def get(self, event: Event) -> bytes:
        data = self._bytes.get(event.id)
        if data is None:
            data = pb.SubscribeResponse(event=event_message(event)).SerializeToString()
            if len(self._bytes) >= self.size:
                del self._bytes[next(iter(self._bytes))]  # the oldest inserted
            self._bytes[event.id] = data
        return data


class FleetBridgeServicer:
    """`FleetBridgeService` on a Hub and an MQTT publisher; add it to a grpc.aio server with `add_to()`.

    It does not subclass the generated servicer, because Subscribe yields pre-serialized bytes.
    Each stream is a Hub consumer with `policy` and `queue_size` (the Hub's default when None).
    """

    def __init__(
        self,
        hub: Hub,
        source: Publisher,
        *,
        policy: Policy = "drop-oldest",
        queue_size: int | None = None,
        cache_size: int = 4096,
    ) -> None:
        self.hub = hub
        self.source = source
        self.policy: Policy = policy
        self.queue_size = queue_size
        self.consumers: set[Consumer] = set()
        self._encoded = _EncodedEvents(cache_size)
        self._shutting_down = False

    def add_to(self, server: grpc.aio.Server) -> None:
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "Subscribe": grpc.unary_stream_rpc_method_handler(
                self.Subscribe,
                request_deserializer=pb.SubscribeRequest.FromString,
                response_serializer=None,  # Subscribe yields serialized SubscribeResponse bytes
            ),
            "Publish": grpc.unary_unary_rpc_method_handler(
                self.Publish,
                request_deserializer=pb.PublishRequest.FromString,
                response_serializer=pb.PublishResponse.SerializeToString,
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        server.add_registered_method_handlers(SERVICE_NAME, handlers)

    def encode(self, item: Item) -> bytes:
        """The serialized `SubscribeResponse` for one hub item."""
        if isinstance(item, Event):
            return self._encoded.get(item)
        if isinstance(item, Dropped):
            response = pb.SubscribeResponse(dropped=pb.Dropped(count=item.count, total=item.total))
        else:
            response = pb.SubscribeResponse(reset=pb.Reset(after_id=item.after_id, oldest_id=item.oldest_id))
        return response.SerializeToString()

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        if self._shutting_down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the bridge is shutting down")
        try:
            filters = self.hub.validate_filters(request.filters)
        except TopicError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        after_id = request.resume_after_id if request.HasField("resume_after_id") else None
        consumer = self.hub.add(
            filters, transport="grpc", policy=self.policy, size=self.queue_size, after_id=after_id
        )
        self.consumers.add(consumer)
        try:
            # The response headers tell the client that its subscription is registered.
            await context.send_initial_metadata(())
            while True:
                try:
                    item = await consumer.get()
                except ConsumerClosed as exc:
                    await context.abort(self._close_code(consumer), exc.reason)
                yield self.encode(item)
        finally:
            self.consumers.discard(consumer)
            consumer.close("the gRPC stream ended")

    def _close_code(self, consumer: Consumer) -> grpc.StatusCode:
        # The Hub closes a consumer under the disconnect policy when its queue is full, and leaves
        # the queue as it was: that is the one closure that is the client's doing.
        if not self._shutting_down and consumer.policy == "disconnect" and consumer.queued >= consumer.size:
            return grpc.StatusCode.RESOURCE_EXHAUSTED
        return grpc.StatusCode.UNAVAILABLE

    async def Publish(
        self, request: pb.PublishRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PublishResponse:
        if request.qos > 2:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"qos must be 0, 1 or 2, not {request.qos}")
        try:
            self.source.check_publish(request.topic)
            await self.source.publish(request.topic, request.payload, request.qos)
        except BrokerUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except ValueError as exc:  # TopicError is one
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.PublishResponse()

    def shutdown(self, reason: str = "the bridge is shutting down") -> None:
        """End every stream with UNAVAILABLE and `reason`, and refuse new ones."""
        self._shutting_down = True
        for consumer in list(self.consumers):
            consumer.close(reason)


@contextlib.asynccontextmanager
async def grpc_server(
    hub: Hub,
    source: Publisher,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    policy: Policy = "drop-oldest",
    queue_size: int | None = None,
    grace: float = 1.0,
) -> AsyncIterator[int]:
    """Serve FleetBridgeService, `grpc.health.v1` and server reflection; yields the bound port.

    On exit, health turns NOT_SERVING, open streams end with UNAVAILABLE, and unary calls get
    `grace` seconds to finish.
    """
    server = grpc.aio.server(options=SERVER_OPTIONS)
    servicer = FleetBridgeServicer(hub, source, policy=policy, queue_size=queue_size)
    servicer.add_to(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise TransportError(f"gRPC cannot listen on {address}: {exc}") from exc
    await server.start()
    try:
        yield bound
    finally:
        await health_servicer.enter_graceful_shutdown()
        servicer.shutdown()
        await server.stop(grace)
