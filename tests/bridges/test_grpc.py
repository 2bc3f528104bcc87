"""The gRPC bridge end to end: a real broker, a real MqttSource, a grpc.aio server and client."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, get_args

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from bridges.bridge import running
from bridges.config import BridgeConfig
from bridges.envelope import Kind, make_event
from bridges.grpc_service import (
    BATCH_BYTES,
    SERVICE_NAME,
    FleetBridgeServicer,
    PollerScheduling,
    event_message,
    grpc_server,
)
from bridges.hub import Dropped, Hub, Policy
from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2 as pb
from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2_grpc
from bridges.source import MqttSource, SourceSettings
from broker.server import Broker
from tests.bridges.conftest import wait_until
from tests.rawmqtt import RawClient

TIMEOUT = 5.0
Stub = bridge_pb2_grpc.FleetBridgeServiceStub


@pytest.fixture
def hub() -> Hub:
    """A hub with default sizes."""
    return Hub()


@pytest.fixture
async def source(hub: Hub, broker: Broker) -> AsyncIterator[MqttSource]:
    """A real MqttSource feeding `hub` from `broker`, connected and subscribed."""
    mqtt = MqttSource(hub, SourceSettings(port=broker.port, backoff_initial=0.05))
    probe = hub.add(["$bridge/broker"], transport="test")
    task = asyncio.create_task(mqtt.run(), name="test.source")
    try:
        async with asyncio.timeout(TIMEOUT):
            news = await probe.get()  # the source reports "connected" once it has subscribed
        assert hub.broker_connected, news
        probe.close("probe done")
        yield mqtt
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def serving(
    hub: Hub, source: Any, *, policy: Policy = "drop-oldest", queue_size: int | None = None
) -> AsyncIterator[grpc.aio.Channel]:
    async with (
        grpc_server(hub, source, policy=policy, queue_size=queue_size) as port,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield channel


@pytest.fixture
async def channel(hub: Hub, source: MqttSource) -> AsyncIterator[grpc.aio.Channel]:
    """A client channel to a gRPC bridge on `hub` and `source`, on a free port."""
    async with serving(hub, source) as client_channel:
        yield client_channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> Stub:
    """The generated FleetBridgeService stub on `channel`."""
    return bridge_pb2_grpc.FleetBridgeServiceStub(channel)


@pytest.fixture
async def publisher(broker: Broker) -> AsyncIterator[RawClient]:
    """A connected raw MQTT client."""
    client = await RawClient.open(broker.port)
    await client.connect("test-publisher")
    yield client
    await client.close()


class Subscription:
    """A Subscribe call read one item at a time: the events of a batch one by one, in order."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self._events: deque[pb.Event] = deque()

    async def read(self) -> Any:
        """The call's next raw response (for tests that expect it to fail)."""
        return await self.call.read()

    def cancel(self) -> None:
        self.call.cancel()

    async def item(self) -> pb.Event | pb.Dropped | pb.Reset:
        if not self._events:
            async with asyncio.timeout(TIMEOUT):
                response = await self.call.read()
            assert isinstance(response, pb.SubscribeResponse), response
            kind = response.WhichOneof("item")
            if kind == "dropped":
                return response.dropped
            if kind == "reset":
                return response.reset
            assert kind == "events", response
            assert response.events.events, "a batch is never empty"
            self._events.extend(response.events.events)
        return self._events.popleft()

    async def event(self) -> pb.Event:
        item = await self.item()
        assert isinstance(item, pb.Event), item
        return item


async def subscribe(stub: Stub, *filters: str, resume_after_id: int | None = None) -> Subscription:
    """Start Subscribe and wait until the server has registered it (its response headers)."""
    request = pb.SubscribeRequest(filters=filters)
    if resume_after_id is not None:
        request.resume_after_id = resume_after_id
    call = stub.Subscribe(request, timeout=30)
    async with asyncio.timeout(TIMEOUT):
        await call.initial_metadata()
    return Subscription(call)


async def rpc_error(awaitable: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async with asyncio.timeout(TIMEOUT):
            await awaitable
    return caught.value


async def test_subscribe_delivers_the_envelope_of_a_json_message(
    stub: Stub, hub: Hub, publisher: RawClient
) -> None:
    """A JSON payload arrives as the envelope's JSON text, with every envelope field as in the JSON form."""
    call = await subscribe(stub, "fleet/#")
    before = time.time()
    publisher.publish(
        "fleet/dev-1/telemetry", b'{"device": "dev-1", "seq": 42, "values": {"t": 21.5}}', qos=1
    )
    event = await call.event()
    call.cancel()

    assert event.topic == "fleet/dev-1/telemetry"
    assert event.HasField("device")
    assert event.device == "dev-1"
    assert (event.kind, event.qos, event.retain) == (pb.KIND_TELEMETRY, 1, False)
    assert before - 1 <= event.received_at <= time.time()
    assert event.WhichOneof("payload") == "json_text"
    assert event.json_text == '{"device":"dev-1","seq":42,"values":{"t":21.5}}'
    envelope = json.loads(hub.ring[-1].json)
    assert (event.id, event.received_at) == (envelope["id"], envelope["received_at"])


async def test_subscribe_delivers_a_binary_payload_as_raw_bytes(stub: Stub, publisher: RawClient) -> None:
    """A payload that is not JSON arrives in `raw`, byte for byte, and a topic outside the scheme is raw."""
    call = await subscribe(stub, "#")
    publisher.publish("sensors/blob", b"\xff\x00not json", qos=0)
    event = await call.event()
    call.cancel()

    assert event.topic == "sensors/blob"
    assert not event.HasField("device")
    assert event.kind == pb.KIND_RAW
    assert event.WhichOneof("payload") == "raw"
    assert event.raw == b"\xff\x00not json"


async def test_filters_select_topics(stub: Stub, publisher: RawClient) -> None:
    """A `fleet/+/status` stream gets status messages only: the telemetry sent before it never arrives."""
    call = await subscribe(stub, "fleet/+/status")
    publisher.publish("fleet/dev-1/telemetry", b'{"seq": 1}', qos=0)
    publisher.publish("fleet/dev-1/status", b'{"online": true}', qos=0)
    event = await call.event()
    call.cancel()

    assert (event.topic, event.kind) == ("fleet/dev-1/status", pb.KIND_STATUS)
    assert json.loads(event.json_text) == {"online": True}


@pytest.mark.parametrize(
    ("filters", "reason"),
    [
        (["fleet/#/status"], "'#' must be the last level"),
        (["fleet/dev+/status"], "'+' must occupy a whole level"),
        ([], "at least one topic filter is needed"),
    ],
)
async def test_bad_filters_are_invalid_argument(stub: Stub, filters: list[str], reason: str) -> None:
    """An invalid or missing filter ends Subscribe with INVALID_ARGUMENT and the rule it breaks."""
    call = stub.Subscribe(pb.SubscribeRequest(filters=filters))
    error = await rpc_error(call.read())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in (error.details() or "")


def ingest(hub: Hub, count: int) -> list[int]:
    return [
        hub.ingest(f"fleet/dev-{n}/telemetry", b'{"seq": %d}' % n, qos=0, retain=False).id
        for n in range(count)
    ]


async def test_resume_inside_the_ring_replays_what_was_missed(broker: Broker) -> None:
    """Resuming from an id the ring still follows replays exactly the later events, then goes live."""
    hub = Hub(ring_size=3)
    async with serving(hub, MqttSource(hub, SourceSettings(port=broker.port))) as channel:
        stub = bridge_pb2_grpc.FleetBridgeServiceStub(channel)
        ids = ingest(hub, 5)  # the ring keeps ids[2:]
        call = await subscribe(stub, "fleet/#", resume_after_id=ids[2])
        assert [(await call.event()).id for _ in range(2)] == ids[3:]
        live = hub.ingest("fleet/dev-9/status", b"{}", qos=0, retain=False)
        assert (await call.event()).id == live.id
        call.cancel()


async def test_resume_outside_the_ring_starts_with_reset(broker: Broker) -> None:
    """Resuming from an id older than the ring yields a Reset naming the gap, then the whole ring."""
    hub = Hub(ring_size=3)
    async with serving(hub, MqttSource(hub, SourceSettings(port=broker.port))) as channel:
        stub = bridge_pb2_grpc.FleetBridgeServiceStub(channel)
        ids = ingest(hub, 5)
        call = await subscribe(stub, "fleet/#", resume_after_id=ids[0])
        first = await call.item()
        assert isinstance(first, pb.Reset), first
        assert (first.after_id, first.oldest_id) == (ids[0], ids[2])
        assert [(await call.event()).id for _ in range(3)] == ids[2:]
        call.cancel()


async def test_subscribe_without_resume_starts_live(broker: Broker) -> None:
    """Without resume_after_id the stream starts with the next event; the ring is not replayed."""
    hub = Hub()
    async with serving(hub, MqttSource(hub, SourceSettings(port=broker.port))) as channel:
        stub = bridge_pb2_grpc.FleetBridgeServiceStub(channel)
        ingest(hub, 3)
        call = await subscribe(stub, "fleet/#")
        live = hub.ingest("fleet/dev-9/status", b"{}", qos=0, retain=False)
        assert (await call.event()).id == live.id
        call.cancel()


async def test_a_slow_stream_sees_dropped_counts(broker: Broker) -> None:
    """Under drop-oldest, a stream that gets more events in one loop turn than its queue holds gets a
    Dropped item, then the newest events."""
    hub = Hub()
    async with serving(hub, MqttSource(hub, SourceSettings(port=broker.port)), queue_size=2) as channel:
        call = await subscribe(bridge_pb2_grpc.FleetBridgeServiceStub(channel), "fleet/#")
        (consumer,) = hub.consumers
        await wait_until(lambda: consumer.sink is not None, "the stream's handler to wait for events")
        ids = ingest(hub, 5)  # all at once: the server gets no chance to send in between
        dropped = await call.item()
        assert isinstance(dropped, pb.Dropped), dropped
        assert (dropped.count, dropped.total) == (3, 3)
        assert [(await call.event()).id for _ in range(2)] == ids[3:]
        call.cancel()
    assert hub.drops == {"grpc": 3}


async def test_a_slow_stream_is_cut_under_the_disconnect_policy(broker: Broker) -> None:
    """Under the disconnect policy, overflowing the queue ends the stream with RESOURCE_EXHAUSTED."""
    hub = Hub()
    source = MqttSource(hub, SourceSettings(port=broker.port))
    async with serving(hub, source, policy="disconnect", queue_size=2) as channel:
        call = await subscribe(bridge_pb2_grpc.FleetBridgeServiceStub(channel), "fleet/#")
        (consumer,) = hub.consumers
        await wait_until(lambda: consumer.sink is not None, "the stream's handler to wait for events")
        ingest(hub, 3)  # in one loop turn: the third overflows the queue
        error = await rpc_error(call.read())
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too slow" in (error.details() or "")
    assert not hub.consumers


async def test_closing_the_stream_removes_the_consumer(stub: Stub, hub: Hub) -> None:
    """When the client cancels, the server-side consumer leaves the hub."""
    call = await subscribe(stub, "fleet/#")
    assert len(hub.consumers) == 1
    call.cancel()
    await wait_until(lambda: not hub.consumers, "the cancelled stream's consumer to leave the hub", TIMEOUT)


async def test_server_shutdown_ends_streams_with_unavailable(broker: Broker) -> None:
    """Leaving grpc_server ends open streams with UNAVAILABLE promptly, not after the grace period."""
    hub = Hub()
    server = grpc_server(hub, MqttSource(hub, SourceSettings(port=broker.port)), grace=30)
    port = await server.__aenter__()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = await subscribe(bridge_pb2_grpc.FleetBridgeServiceStub(channel), "fleet/#")
        async with asyncio.timeout(TIMEOUT):
            await server.__aexit__(None, None, None)
        error = await rpc_error(call.read())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in (error.details() or "")
    assert not hub.consumers


async def test_publish_reaches_an_mqtt_subscriber(stub: Stub, broker: Broker) -> None:
    """Publish to a device's command topic delivers the payload to the device's MQTT subscription."""
    device = await RawClient.open(broker.port)
    try:
        await device.connect("dev-1")
        await device.subscribe(("fleet/dev-1/cmd", 1))
        async with asyncio.timeout(TIMEOUT):
            await stub.Publish(pb.PublishRequest(topic="fleet/dev-1/cmd", payload=b'{"op": "reboot"}', qos=1))
        received = await device.read_publish()
    finally:
        await device.close()
    assert (received.topic, received.payload, received.qos) == ("fleet/dev-1/cmd", b'{"op": "reboot"}', 1)


@pytest.mark.parametrize(
    ("topic", "qos", "reason"),
    [
        ("fleet/dev-1/telemetry", 1, "is not allowed"),
        ("fleet/+/cmd", 1, "must not contain wildcards"),
        ("", 0, "at least one character"),
        ("fleet/dev-1/cmd", 3, "qos must be 0, 1 or 2"),
    ],
)
async def test_publish_rejects_with_invalid_argument(stub: Stub, topic: str, qos: int, reason: str) -> None:
    """A forbidden or invalid topic, or a bad QoS, is INVALID_ARGUMENT with the reason."""
    error = await rpc_error(stub.Publish(pb.PublishRequest(topic=topic, payload=b"{}", qos=qos)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in (error.details() or "")


async def test_publish_without_a_broker_is_unavailable(broker: Broker) -> None:
    """Publish while the bridge has no broker connection is UNAVAILABLE."""
    hub = Hub()
    async with serving(hub, MqttSource(hub, SourceSettings(port=broker.port))) as channel:
        stub = bridge_pb2_grpc.FleetBridgeServiceStub(channel)
        error = await rpc_error(
            stub.Publish(pb.PublishRequest(topic="fleet/dev-1/cmd", payload=b"{}", qos=1))
        )
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_health_reports_serving(channel: grpc.aio.Channel) -> None:
    """grpc.health.v1 reports SERVING for the server and for the bridge service, NOT_FOUND otherwise."""
    health_stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        async with asyncio.timeout(TIMEOUT):
            response = await health_stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    error = await rpc_error(health_stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_and_describes_the_service(channel: grpc.aio.Channel) -> None:
    """Server reflection lists the bridge, health and reflection services, and serves the bridge's schema."""
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME),
    ]
    call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter(requests))
    async with asyncio.timeout(TIMEOUT):
        responses = [response async for response in call]

    listed = {service.name for service in responses[0].list_services_response.service}
    assert listed == {SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME}
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(data)
        for data in responses[1].file_descriptor_response.file_descriptor_proto
    ]
    bridge = next(f for f in files if f.package == "mqtt_fleet.bridge.v1")
    assert [s.name for s in bridge.service] == ["FleetBridgeService"]
    assert [m.name for m in bridge.service[0].method] == ["Subscribe", "Publish"]


@pytest.mark.parametrize(
    ("raw", "member", "expected"),
    [
        (b'{"a": [1, "x", null]}', "json_text", '{"a":[1,"x",null]}'),
        (b"[true, 2.5]", "json_text", "[true,2.5]"),
        (b"42", "json_text", "42"),
        (b'"hello"', "json_text", '"hello"'),
        (b"null", "json_text", "null"),
        (b"1" + b"0" * 400, "json_text", "1" + "0" * 400),  # an integer no double can hold, exact
        (b"\xff\xfe", "raw", b"\xff\xfe"),
    ],
)
def test_event_message_payloads(raw: bytes, member: str, expected: Any) -> None:
    """Any JSON value goes into `json_text` as compact JSON; bytes that are not JSON go into `raw`."""
    message = event_message(make_event(7, "fleet/d/telemetry", raw, qos=0, retain=False, received_at=1.5))
    assert message.WhichOneof("payload") == member
    assert getattr(message, member) == expected


@pytest.mark.parametrize("kind", get_args(Kind))
def test_every_kind_has_an_enum_value(kind: Kind) -> None:
    """Each envelope kind maps to the enum value of the same name."""
    message = event_message(make_event(1, "x/y", b"{}", qos=0, retain=False, received_at=1.0, kind=kind))
    assert pb.Kind.Name(message.kind) == f"KIND_{kind.upper()}"


def test_waiting_events_go_out_in_batches_encoded_once(hub: Hub, broker: Broker) -> None:
    """Events waiting together go out as one EventBatch of bytes encoded once for every stream; a Dropped
    item splits a batch, and so does the byte bound."""
    servicer = FleetBridgeServicer(hub, MqttSource(hub, SourceSettings(port=broker.port)))
    events = [hub.ingest("fleet/dev-1/telemetry", b'{"seq": %d}' % n, qos=1, retain=False) for n in range(3)]
    (batch,) = servicer.encode(events)
    assert list(pb.SubscribeResponse.FromString(batch).events.events) == [event_message(e) for e in events]
    assert list(servicer.encode(events)) == [batch]

    split = servicer.encode([events[0], Dropped(2, 2), *events[1:]])
    responses = [pb.SubscribeResponse.FromString(data) for data in split]
    assert [r.WhichOneof("item") for r in responses] == ["events", "dropped", "events"]
    assert [len(responses[0].events.events), len(responses[2].events.events)] == [1, 2]

    blob = json.dumps({"blob": "x" * (BATCH_BYTES // 5 - 1000)}).encode()  # five stay under BATCH_BYTES
    big = [hub.ingest("fleet/dev-2/telemetry", blob, qos=0, retain=False) for _ in range(7)]
    sizes = [len(pb.SubscribeResponse.FromString(d).events.events) for d in servicer.encode(big)]
    assert sizes == [6, 1]  # the sixth takes the batch past BATCH_BYTES: it ends there


async def test_an_idle_stream_is_written_from_the_fan_out_and_keeps_order(
    stub: Stub, hub: Hub, publisher: RawClient
) -> None:
    """The events of a turn for a stream that waits go to grpc in one batch once the turn's callbacks
    have run, not through its handler; events of later turns queue behind that write while it is in
    flight, and the client reads all in order."""
    subscription = await subscribe(stub, "fleet/#")
    (consumer,) = [c for c in hub.consumers if c.transport == "grpc"]
    await wait_until(lambda: consumer.sink is not None, "the stream's handler to wait for events")

    ids = [hub.ingest("fleet/dev-1/telemetry", b'{"seq": %d}' % n, qos=0, retain=False).id for n in range(3)]
    assert consumer.queued == 3  # until the turn ends
    await asyncio.sleep(0)
    assert consumer.queued == 0  # written together, not handed to the stream's handler
    for n in range(3, 40):  # one event a turn: through the sink, or queued while a write is in flight
        await asyncio.sleep(0)
        ids.append(hub.ingest("fleet/dev-1/telemetry", b'{"seq": %d}' % n, qos=0, retain=False).id)
    assert [(await subscription.event()).id for _ in ids] == ids
    subscription.cancel()


def test_grpc_poller_thread_runs_under_sched_batch(channel: grpc.aio.Channel) -> None:
    """A running gRPC bridge has put grpc.aio's poller thread under SCHED_BATCH, so that it does not
    preempt the event loop at each write."""
    (poller,) = [
        t
        for t in threading.enumerate()
        if getattr(getattr(t, "_target", None), "__name__", "") == "_poll_wrapper"
    ]
    assert poller.native_id is not None
    assert os.sched_getscheduler(poller.native_id) == os.SCHED_BATCH


def test_grpc_poller_thread_runs_as_any_thread_while_the_bridge_is_busy(channel: grpc.aio.Channel) -> None:
    """grpc.aio's poller thread leaves SCHED_BATCH once the process has used 80 % of a core over a
    look (its completions must not wait for the loop's time slice), and returns to it below."""
    scheduling = PollerScheduling.find()
    assert scheduling is not None
    (poller,) = [
        t
        for t in threading.enumerate()
        if getattr(getattr(t, "_target", None), "__name__", "") == "_poll_wrapper"
    ]
    assert poller.native_id is not None
    scheduling.follow(0.0, 0.0)  # opens the first look
    scheduling.follow(1.0, 0.9)
    assert os.sched_getscheduler(poller.native_id) == os.SCHED_OTHER
    scheduling.follow(1.2, 1.1)  # too short a look: as it was
    assert os.sched_getscheduler(poller.native_id) == os.SCHED_OTHER
    scheduling.follow(2.0, 1.2)
    assert os.sched_getscheduler(poller.native_id) == os.SCHED_BATCH


async def test_a_bridge_serves_where_sched_batch_is_refused(
    hub: Hub, source: MqttSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the system refuses SCHED_BATCH (a seccomp sandbox, say), the gRPC bridge starts and
    delivers with grpc's poller thread as it was."""

    def refuse(*args: Any) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "sched_getscheduler", lambda tid: os.SCHED_OTHER)
    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    async with serving(hub, source) as channel:
        subscription = await subscribe(Stub(channel), "fleet/#")
        event = hub.ingest("fleet/dev-1/telemetry", b"{}", qos=0, retain=False)
        assert (await subscription.event()).id == event.id
        subscription.cancel()


async def test_a_stalled_stream_is_cut_after_the_send_timeout(broker: Broker) -> None:
    """A client that stops reading is cut once a write waits send_timeout: its consumer leaves, the cut
    is counted, another stream goes on, and the client gets RESOURCE_EXHAUSTED after the data it had."""
    hub = Hub()
    source = MqttSource(hub, SourceSettings(port=broker.port))
    # bdp_probe 0 keeps the stalled stream's flow-control window at its initial 64 KB.
    stalled_options = [("grpc.http2.bdp_probe", 0), ("grpc.use_local_subchannel_pool", 1)]
    async with (
        grpc_server(hub, source, send_timeout=0.3) as port,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=stalled_options) as stalled_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stalled = await subscribe(Stub(stalled_channel), "fleet/#")
        steady = await subscribe(Stub(channel), "fleet/#")
        blob = json.dumps({"blob": "x" * 60_000}).encode()
        for _ in range(5):  # 300 KB: far more than the stalled stream's window
            event = hub.ingest("fleet/dev-1/telemetry", blob, qos=0, retain=False)
            assert (await steady.event()).id == event.id
        await wait_until(lambda: hub.send_timeouts == {"grpc": 1}, "the stalled stream to be cut")
        assert len(hub.consumers) == 1

        event = hub.ingest("fleet/dev-1/telemetry", b"{}", qos=0, retain=False)
        assert (await steady.event()).id == event.id
        error = await rpc_error(_read_ten(stalled))  # what was in flight, then the status
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "send timed out after 0.3s" in (error.details() or "")
        steady.cancel()


async def test_a_stalled_write_from_the_fan_out_is_cut_after_the_send_timeout(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that the fan-out started to an idle stream, and that its client never takes, is cut once
    it waits send_timeout, as a write of the stream's handler is."""
    streams: list[Any] = []
    sink = FleetBridgeServicer._sink

    def spy(self: FleetBridgeServicer, stream: Any, events: Any) -> bool:
        streams.append(stream)
        return sink(self, stream, events)

    monkeypatch.setattr(FleetBridgeServicer, "_sink", spy)
    hub = Hub()
    source = MqttSource(hub, SourceSettings(port=broker.port))
    # bdp_probe 0 keeps the stream's flow-control window at its initial 64 KB: two such events overfill it.
    stalled_options = [("grpc.http2.bdp_probe", 0)]
    async with (
        grpc_server(hub, source, send_timeout=0.3) as port,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=stalled_options) as channel,
    ):
        stalled = await subscribe(Stub(channel), "fleet/#")
        (consumer,) = hub.consumers
        await wait_until(lambda: consumer.sink is not None, "the stream's handler to wait for events")
        blob = json.dumps({"blob": "x" * 60_000}).encode()
        hub.ingest("fleet/dev-1/telemetry", blob, qos=0, retain=False)
        await asyncio.sleep(0)  # the turn ends: the fan-out writes
        await wait_until(lambda: streams[-1].written is None, "the first write to complete")
        hub.ingest("fleet/dev-1/telemetry", blob, qos=0, retain=False)
        await wait_until(lambda: consumer.queued == 0, "the fan-out to write it")  # its write_interval
        assert streams[-1].written is not None
        await wait_until(lambda: hub.send_timeouts == {"grpc": 1}, "the stalled stream to be cut")
        assert not hub.consumers
        stalled.cancel()


async def _read_ten(subscription: Subscription) -> None:
    for _ in range(10):
        await subscription.item()


async def test_a_second_bridge_on_a_taken_grpc_port_fails(broker: Broker) -> None:
    """A second bridge on the gRPC port of a running one fails with "address already in use", as the
    HTTP port does, instead of sharing the port (SO_REUSEPORT) and splitting the consumers."""
    first = BridgeConfig(broker=f"mqtt://127.0.0.1:{broker.port}", http_port=0, grpc_port=0)
    async with running(first) as bridge:
        taken = first.model_copy(update={"grpc_port": bridge.grpc_port})
        in_use = pytest.RaisesExc(
            OSError,
            match=f"127.0.0.1:{bridge.grpc_port}: address already in use",
            check=lambda exc: exc.errno == errno.EADDRINUSE,
        )
        with pytest.RaisesGroup(in_use, flatten_subgroups=True):  # raised inside the bridge's TaskGroup
            async with running(taken):
                pass
