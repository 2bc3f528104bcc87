"""The gRPC bridge: `mqtt_fleet.bridge.v1.FleetBridgeService` on grpc.aio, with health and reflection.

    async with grpc_server(hub, source, port=50051) as port:
        ...  # serving until the block exits

`Subscribe` streams the Hub's items as `SubscribeResponse` messages: every event waiting for the
stream goes out in one `EventBatch` (up to `BATCH_EVENTS` events or `BATCH_BYTES` bytes), and
`Dropped` and `Reset` as their own messages. grpc.aio costs about as much per message as per
event, so a stream with a backlog sends a batch per write instead of one event. While WebSocket
or SSE writers wait for their turn (`bridges.turns`), a stream with a backlog takes turns with
them: one batch of `BURST` events per round, and the round waits for its write, so that those
writers do not send a burst on every turn of the loop while the write is in flight.

A stream whose handler waits for an event with nothing queued is written to from the fan-out
(`Consumer.sink`, as WebSocket and SSE are): the events of a loop turn go to grpc in one batch at
the turn's end, without waking the handler, and those of later turns wait in the queue, for the
handler, while that write is in flight. grpc.aio's
poller thread runs under `SCHED_BATCH` while the bridge is not busy, so that grpc does not switch to
it at each write: it takes the completions of a turn together once the loop waits
(`PollerScheduling`). At 50 msg/s to 90 streams this cut the
bridge's CPU per delivery by about 40 % (bench/README.md, "gRPC at low load").

Each event is serialized once, not once per consumer: Subscribe is registered with no response
serializer, so it yields bytes that grpc sends as they are. The bytes of recent events are cached by
event id as `EventBatch` fields, and a batch is their concatenation behind one length prefix.

A stream whose client stops reading is cut once a write has been pending for `send_timeout`
seconds (a watchdog checks every half of it): its consumer leaves the hub at once, the cut is counted
(`fleet_bridge_send_timeouts_total`), its handler is cancelled, and the RPC ends with
RESOURCE_EXHAUSTED. grpc.aio cannot reset a single stream, so that status is queued behind the
data already in flight: the client sees it once it reads again, or loses the stream with its
connection. `Publish` publishes a device command through the bridge's MQTT source.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import socket
import struct
import termios
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, Final, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bridges.auth import Access, bearer
from bridges.cpu import CpuShare
from bridges.envelope import Event, Kind
from bridges.hub import WRITE_BYTES, Consumer, ConsumerClosed, Dropped, Hub, Item, Policy, Reset, Retained
from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2 as pb
from bridges.source import MAX_PUBLISH_BYTES, BrokerUnavailable, PublishTooLarge
from bridges.tokens import Grant
from bridges.turns import BURST
from fleet.errors import TopicError, TransportError

__all__ = [
    "BATCH_BYTES",
    "BATCH_EVENTS",
    "SERVICE_NAME",
    "FleetBridgeServicer",
    "PollerScheduling",
    "Publisher",
    "event_message",
    "grpc_server",
]

log = logging.getLogger("bridges.grpc")

SERVICE_NAME: Final = pb.DESCRIPTOR.services_by_name["FleetBridgeService"].full_name

_KINDS: Final[dict[Kind, pb.Kind.ValueType]] = {
    "telemetry": pb.KIND_TELEMETRY,
    "status": pb.KIND_STATUS,
    "ack": pb.KIND_ACK,
    "raw": pb.KIND_RAW,
    "bridge": pb.KIND_BRIDGE,
}

# A batch holds at most this many events (`BURST`, a round's share, while other writers wait for
# their turn), and stops growing once it holds this many bytes. grpc.aio takes one write per stream
# at a time, and its completion comes a loop turn or more later: on a loaded bridge, whose turns are
# long, a stream gets one write every few turns, so a batch must carry what those turns brought (a
# full default queue), or gRPC streams fall behind WebSocket and SSE, which write every turn. Past
# HTTP/2's initial 64 KB stream window a write waits for the client's window update; grpc's clients
# grow the window (BDP probing) as they read.
BATCH_EVENTS: Final = 1024
BATCH_BYTES: Final = WRITE_BYTES
# The tag of SubscribeResponse.events (field 4, length-delimited).
_EVENTS_TAG: Final = bytes([4 << 3 | 2])

# Server-side HTTP/2 keepalive: a peer that stops answering pings is cut after about 40 s instead of
# holding its stream open forever (grpc's default has none; see BRIDGE-NOTES.md). Pings go on while
# a quiet stream sends no data, and clients may ping every 10 s (the default refuses under 5 min).
#
# No SO_REUSEPORT (grpc sets it by default): a second bridge on the same port would listen beside the
# first, and the kernel would split the consumers between them. A taken port fails instead.
SERVER_OPTIONS: Final = (
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
)

# The serialized events shared by the streams: at most this many bytes.
ENCODED_BYTES: Final = 4 * 1024 * 1024
# Calls in progress, streams included, before RESOURCE_EXHAUSTED: `fleet bridge`'s max_connections.
MAX_CALLS: Final = 100
# What a request may hold besides a publish's payload: its topic (at most 65,535 bytes) and framing.
_REQUEST_ROOM: Final = 80 * 1024


class Publisher(Protocol):
    """What Publish needs from the bridge's MQTT side (`bridges.source.MqttSource` is one)."""

    def check_publish(self, topic: str) -> None: ...

    async def publish(self, topic: str, payload: bytes, qos: int) -> None: ...


def event_message(event: Event) -> pb.Event:
    """The protobuf form of an envelope: the same fields and values as its JSON form.

    A JSON payload goes into `json_text` as the very bytes of the envelope's `payload`, any other
    into `raw`.
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
    if event.payload_json is not None:
        message.json_text = event.payload_json.decode()
    else:
        message.raw = event.raw
    if event.properties_json is not None:
        message.properties_json = event.properties_json.decode()
    return message


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class _EncodedEvents:
    """Serialized events of recent ids, each as an `EventBatch.events` field (tag, length, Event), so
    that N streams cost one encoding. Bounded in entries and in bytes: a stream far behind the others
    re-encodes what it reads."""

    def __init__(self, size: int, max_bytes: int = ENCODED_BYTES) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.bytes = 0
        self._bytes: dict[int, bytes] = {}

    def get(self, event: Event) -> bytes:
        # The hub's retained copy of a status shares its id with the live event (retain false) it
        # copies: retained events have keys of their own, below zero.
        key = ~event.id if event.retain else event.id
        data = self._bytes.get(key)
        if data is None:
            data = pb.EventBatch(events=[event_message(event)]).SerializeToString()
            cache = self._bytes
            while cache and (len(cache) >= self.size or self.bytes + len(data) > self.max_bytes):
                self.bytes -= len(cache.pop(next(iter(cache))))  # the oldest inserted
            cache[key] = data
            self.bytes += len(data)
        return data


class _Stream:
    """One Subscribe call: its consumer, its handler task, since when a write has been pending, and
    the fan-out's write in flight (see `FleetBridgeServicer._sink`)."""

    __slots__ = ("consumer", "context", "sending_since", "task", "written")

    def __init__(
        self, consumer: Consumer, context: grpc.aio.ServicerContext[Any, Any], task: asyncio.Task[Any]
    ) -> None:
        self.consumer = consumer
        self.context = context
        self.task = task
        self.sending_since = 0.0  # 0: no write pending
        # grpc's completion of the fan-out's write in flight; None: none in flight.
        self.written: asyncio.Future[None] | None = None


class FleetBridgeServicer:
    """`FleetBridgeService` on a Hub and an MQTT publisher; add it to a grpc.aio server with `add_to()`,
    and run `watch()` beside it to cut streams whose client stopped reading.

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
        send_timeout: float = 10.0,
        cache_size: int = 4096,
        access: Access | None = None,
    ) -> None:
        if send_timeout <= 0:
            raise ValueError(f"send_timeout must be > 0, got {send_timeout}")
        self.hub = hub
        self.source = source
        self.policy: Policy = policy
        self.queue_size = queue_size
        self.send_timeout = send_timeout
        self.access = access or Access()
        self.streams: set[_Stream] = set()
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

    def encode(self, items: list[Item]) -> Iterator[bytes]:
        """The serialized `SubscribeResponse`s for hub items in order: runs of events as batches."""
        events: list[bytes] = []
        size = 0
        for item in items:
            if isinstance(item, Event | Retained):
                data = self._encoded.get(item if isinstance(item, Event) else item.event)
                events.append(data)
                size += len(data)
                if size < BATCH_BYTES:
                    continue
            if events:
                yield b"%b%b%b" % (_EVENTS_TAG, _varint(size), b"".join(events))
                events, size = [], 0
            if isinstance(item, Dropped):
                yield pb.SubscribeResponse(
                    dropped=pb.Dropped(count=item.count, total=item.total)
                ).SerializeToString()
            elif isinstance(item, Reset):
                reset = pb.Reset(after_id=item.after_id, oldest_id=item.oldest_id)
                yield pb.SubscribeResponse(reset=reset).SerializeToString()
        if events:
            yield b"%b%b%b" % (_EVENTS_TAG, _varint(size), b"".join(events))

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        if self._shutting_down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the bridge is shutting down")
        try:
            filters = self.hub.validate_filters(request.filters)
        except TopicError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        grant = await self._grant(context)
        try:
            grant.check_subscribe(filters)
        except PermissionError as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        after_id = request.resume_after_id if request.HasField("resume_after_id") else None
        consumer = self.hub.add(
            filters, transport="grpc", policy=self.policy, size=self.queue_size, after_id=after_id
        )
        task = asyncio.current_task()
        assert task is not None
        stream = _Stream(consumer, context, task)
        self.streams.add(stream)
        loop = asyncio.get_running_loop()
        turns = self.hub.turns
        try:
            # The response headers tell the client that its subscription is registered.
            await context.send_initial_metadata(())
            consumer.sink = functools.partial(self._sink, stream)
            while True:
                try:
                    # While other writers wait for their turn, a batch is one round's share.
                    items = await consumer.get_batch(BURST if turns.waiting else BATCH_EVENTS)
                except ConsumerClosed as exc:
                    await context.abort(self._close_code(consumer), exc.reason)
                turns.join(stream)  # the round waits for these writes
                if stream.written is not None:  # the fan-out's write goes first
                    await asyncio.shield(stream.written)
                for data in self.encode(items):
                    # The write is pending from here until grpc asks for the next message.
                    stream.sending_since = loop.time()
                    yield data
                    stream.sending_since = 0.0
                if consumer.queued and turns.waiting:
                    await turns.next(stream)
                else:
                    turns.leave(stream)  # no other writer waits for a turn: no round to keep
        finally:
            consumer.sink = None
            turns.leave(stream)
            self.streams.discard(stream)
            consumer.close("the gRPC stream ended")

    def _sink(self, stream: _Stream, events: list[Event]) -> bool:
        """Write `events` to the stream in one batch from the fan-out while its handler waits for
        events; False if a write is in flight, the call has ended, or they are more than a batch's
        `BATCH_EVENTS` (they stay queued for the handler then). Their bytes the hub has bounded
        already (`WRITE_BYTES`, which is `BATCH_BYTES`).

        grpc.aio writes only from a coroutine: this one, `context.write`, is run by hand instead of
        by a task. Its first step starts grpc's batch and yields grpc's completion future; the step
        after that completion (`_written`) ends it. So a turn's events cost grpc's write and one loop
        callback, instead of two wakes of the handler's task and its generators."""
        if stream.written is not None or len(events) > BATCH_EVENTS:
            return False
        encoded = self._encoded
        data = b"".join([encoded.get(event) for event in events])
        write = stream.context.write(b"%b%b%b" % (_EVENTS_TAG, _varint(len(data)), data))
        try:
            written = write.send(None)
        except StopIteration:  # written without waiting for grpc
            return True
        except Exception:  # the call has ended: the handler finds out
            return False
        stream.written = written
        stream.sending_since = asyncio.get_running_loop().time()
        written.add_done_callback(functools.partial(_written, stream, write))
        return True

    async def _grant(self, context: grpc.aio.ServicerContext[Any, Any]) -> Grant:
        """What the caller's `authorization: Bearer TOKEN` metadata allows; aborts with UNAUTHENTICATED."""
        token = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                token = bearer(value)
        grant = self.access.grant(token)
        if grant is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "authentication required: send the metadata authorization: Bearer TOKEN",
            )
        assert grant is not None
        return grant

    def _close_code(self, consumer: Consumer) -> grpc.StatusCode:
        # The Hub closes a consumer under the disconnect policy when its queue is full, and leaves
        # the queue as it was: that is the one closure that is the client's doing.
        if not self._shutting_down and consumer.overflowed:
            return grpc.StatusCode.RESOURCE_EXHAUSTED
        return grpc.StatusCode.UNAVAILABLE

    async def watch(self) -> None:
        """Cut every stream whose write has been pending for `send_timeout` seconds; run until cancelled.

        One watchdog for all streams, instead of a timer per write: a write to a healthy client
        completes at once, and arming a timer per message would cost about as much as the write."""
        timeout = self.send_timeout
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as aborts:
            while True:
                await asyncio.sleep(timeout / 2)
                now = loop.time()
                for stream in list(self.streams):
                    if stream.sending_since and now - stream.sending_since > timeout:
                        self._cut(stream, aborts)

    def _cut(self, stream: _Stream, aborts: asyncio.TaskGroup) -> None:
        reason = f"send timed out after {self.send_timeout:g}s: the client is not reading"
        log.info("cutting gRPC stream of %s: %s", stream.context.peer(), reason)
        self.streams.discard(stream)
        stream.consumer.close(reason)
        self.hub.count_send_timeout("grpc")
        aborts.create_task(self._abort(stream.context, reason), name="bridges.grpc.abort")
        stream.task.cancel()  # its write stays with grpc: the handler must not wait for it

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext[Any, Any], reason: str) -> None:
        """Queue the final status behind the data in flight; it completes when the client reads it."""
        with contextlib.suppress(grpc.aio.AbortError, grpc.aio.UsageError, grpc.aio.InternalError):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, reason)

    async def Publish(
        self, request: pb.PublishRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PublishResponse:
        if request.qos > 2:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"qos must be 0, 1 or 2, not {request.qos}")
        grant = await self._grant(context)
        try:
            grant.check_publish(request.topic)
        except PermissionError as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except ValueError as exc:  # TopicError is one
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            self.source.check_publish(request.topic)
            await self.source.publish(request.topic, request.payload, request.qos)
        except BrokerUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except PublishTooLarge as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except ValueError as exc:  # TopicError is one
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.PublishResponse()

    def shutdown(self, reason: str = "the bridge is shutting down") -> None:
        """End every stream with UNAVAILABLE and `reason`, and refuse new ones."""
        self._shutting_down = True
        for stream in list(self.streams):
            stream.consumer.close(reason)


def _written(stream: _Stream, write: Coroutine[Any, Any, None], written: asyncio.Future[None]) -> None:
    """The last step of a write started by `FleetBridgeServicer._sink`, once grpc completed it."""
    stream.written = None
    stream.sending_since = 0.0
    try:
        write.send(None)
    except StopIteration:
        return
    except Exception as exc:  # the call ended (grpc may have released it: no peer() here)
        log.debug("a gRPC write from the fan-out failed: %r", exc)
        return
    raise RuntimeError("grpc.aio's write waited twice")


def _unread_bytes(fd: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


def _handle_events_drained(fd: int, handle_events: Callable[[], None]) -> None:
    """grpc's `_handle_events`, after reading all but one of the wake-up bytes (it reads that one)."""
    unread = _unread_bytes(fd)
    if unread > 1:
        os.read(fd, unread - 1)
    handle_events()


def drain_completion_wakeups(loop: asyncio.AbstractEventLoop) -> bool:
    """Make grpc.aio's completion-queue reader take every wake-up byte in one call; True if it did.

    grpc's poller thread writes one byte to a socket per completion, and its reader on the event
    loop reads one byte per call but handles every completion queued: after a burst of N writes,
    N - 1 bytes stay unread, the socket stays readable, and the loop calls the reader once a turn
    and never waits in its selector, a turn at a time, until they are gone (`bench/bridge_profile.py`
    saw 175 unread on average at 300 msg/s, and the loop idle 1 % of the time). That spin costs CPU
    at any load and delays every other task of the loop.

    This reads grpc's internals (the reader is `functools.partial(PollerCompletionQueue._handle_events,
    loop)`) and asyncio's selector: grpcio is pinned exactly in pyproject.toml for it. Another
    grpcio, or a loop without `_selector` (uvloop), leaves grpc's reader as it is."""
    selector = getattr(loop, "_selector", None)
    if selector is None:
        return False
    for key in list(selector.get_map().values()):
        reader = key.data[0] if isinstance(key.data, tuple) else None
        callback = getattr(reader, "_callback", None)
        if callback is _handle_events_drained:
            return True
        if isinstance(callback, functools.partial) and callback.func.__name__ == "_handle_events":
            handle_events: Callable[[], None] = callback
            loop.add_reader(key.fd, _handle_events_drained, key.fd, handle_events)
            return True
    return False


# grpc.aio's poller thread runs under SCHED_BATCH while the process uses less than this share of a
# core over each look, and as any thread above it (see `PollerScheduling`).
_PROMPT_POLLER_SHARE = 0.8
_POLLER_LOOK_S = 0.5


class PollerScheduling:
    """grpc.aio's poller thread's scheduling, set by the bridge's load.

    grpc's poller thread waits on the completion queue, and grpc wakes it (an eventfd write) for
    the first completion queued while it waits. A woken thread normally preempts the one running
    on its core: on the loop's core, each gRPC write of a turn then switched to the poller and back,
    and the poller woke, took one completion and wrote one wake-up byte per write. Under
    `SCHED_BATCH` (Linux; no other priority or share changes) it does not preempt on wake-up: it
    runs once the loop waits in its selector, and takes every completion of the turn in one wake.
    That cut a delivery's cost at low load by about a third; but on a busy loop, which rarely
    waits, a completion then waits for the end of the loop's time slice, the writers' rounds
    (`bridges.turns`) wait for it, and at 15,000 msg/s to 3 consumers the bridge delivered 29,000
    a second instead of 42,000 (bench/README.md). So the thread is under `SCHED_BATCH` while the
    process uses less than `_PROMPT_POLLER_SHARE` of a core, and runs as any thread above it.

    Finds the thread by its target, `PollerCompletionQueue._poll_wrapper`: an internal of the
    pinned grpcio (see pyproject.toml). Elsewhere, without `SCHED_BATCH`, or where the system refuses
    it, nothing changes."""

    __slots__ = ("_batched", "_cpu", "_thread_id")

    def __init__(self, thread_id: int) -> None:
        self._thread_id = thread_id
        self._batched: bool | None = None
        self._cpu = CpuShare(_POLLER_LOOK_S)

    @classmethod
    def find(cls) -> PollerScheduling | None:
        """The poller thread of grpc.aio, put under SCHED_BATCH; None where that cannot be done."""
        if not hasattr(os, "SCHED_BATCH"):
            return None
        for thread in threading.enumerate():
            target = getattr(thread, "_target", None)
            if getattr(target, "__name__", "") == "_poll_wrapper" and thread.native_id is not None:
                scheduling = cls(thread.native_id)
                return scheduling if scheduling.batch(True) else None
        return None

    def batch(self, on: bool) -> bool:
        """Put the thread under SCHED_BATCH, or back to SCHED_OTHER; False if the system refuses (a
        seccomp sandbox, say) or the thread has ended."""
        if on == self._batched:
            return True
        policy = os.SCHED_BATCH if on else os.SCHED_OTHER
        try:
            os.sched_setscheduler(self._thread_id, policy, os.sched_param(0))
        except OSError:
            return False
        self._batched = on
        return True

    def follow(self, now: float, cpu: float) -> None:
        """Batch the thread or not by the process's CPU share since the last look (`cpu`:
        `time.process_time()` at the loop's time `now`)."""
        share = self._cpu.update(now, cpu)
        if share is not None:
            self.batch(share < _PROMPT_POLLER_SHARE)

    async def run(self) -> None:
        """Follow the load every `_POLLER_LOOK_S` seconds, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            self.follow(loop.time(), time.process_time())
            await asyncio.sleep(_POLLER_LOOK_S)


def _raise_bind_error(host: str, port: int, address: str) -> None:
    """Raise the OSError that binding `host:port` gives (address already in use, say), as the HTTP
    listener does: grpc says only "Failed to bind". Binds as grpc does, with SO_REUSEADDR."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            raise OSError(exc.errno, f"gRPC cannot listen on {address}: {reason}") from None


@contextlib.asynccontextmanager
async def grpc_server(
    hub: Hub,
    source: Publisher,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    policy: Policy = "drop-oldest",
    queue_size: int | None = None,
    send_timeout: float = 10.0,
    max_publish_bytes: int = MAX_PUBLISH_BYTES,
    max_calls: int = MAX_CALLS,
    handshake_timeout: float = 10.0,
    grace: float = 1.0,
    access: Access | None = None,
    credentials: grpc.ServerCredentials | None = None,
) -> AsyncIterator[int]:
    """Serve FleetBridgeService, `grpc.health.v1` and server reflection; yields the bound port.

    A port that another process (another bridge, say) listens on raises OSError here, "address
    already in use", as the HTTP listener does.

    `access` checks each call's `authorization` metadata (None: every caller may do everything):
    UNAUTHENTICATED without a known token, PERMISSION_DENIED for a filter or topic beyond its
    rights. Health and reflection stay open: they tell nothing about the fleet. `credentials`
    (`grpc.ssl_server_credentials`) serve TLS, with client certificates if they require them.

    A stream whose write waits `send_timeout` seconds is cut (see the module's docstring). On exit,
    health turns NOT_SERVING, open streams end with UNAVAILABLE, and unary calls get `grace` seconds
    to finish. A request larger than `max_publish_bytes` and room for a topic is refused by grpc
    with RESOURCE_EXHAUSTED before it is read whole (grpc's default would take 4 MB). Past `max_calls`
    calls in progress (streams included), a call gets RESOURCE_EXHAUSTED, and a connection must
    complete its HTTP/2 handshake within `handshake_timeout` seconds (grpc's default is 120).
    """
    options = (
        *SERVER_OPTIONS,
        ("grpc.max_receive_message_length", max_publish_bytes + _REQUEST_ROOM),
        ("grpc.server_handshake_timeout_ms", round(handshake_timeout * 1000)),
    )
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=max_calls)
    if not drain_completion_wakeups(asyncio.get_running_loop()):
        log.warning("grpc.aio's completion-queue reader not found: the loop may spin after bursts")
    poller = PollerScheduling.find()
    if poller is None:
        log.info("grpc.aio's poller thread left as it is: it may preempt the loop at each write")
    servicer = FleetBridgeServicer(
        hub, source, policy=policy, queue_size=queue_size, send_timeout=send_timeout, access=access
    )
    servicer.add_to(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        _raise_bind_error(host, port, address)
        raise TransportError(f"gRPC cannot listen on {address}: {exc}") from exc
    await server.start()
    try:
        async with asyncio.TaskGroup() as tasks:
            watchdog = tasks.create_task(servicer.watch(), name="bridges.grpc.watchdog")
            tuner = None if poller is None else tasks.create_task(poller.run(), name="bridges.grpc.poller")
            try:
                yield bound
            finally:
                watchdog.cancel()
                if tuner is not None:
                    tuner.cancel()
    finally:
        await health_servicer.enter_graceful_shutdown()
        servicer.shutdown()
        await server.stop(grace)
