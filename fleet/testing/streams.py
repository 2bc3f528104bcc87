"""Stream clients with one API over MQTT, WebSocket, Server-Sent Events and gRPC.

    async with open_stream("ws", "ws://127.0.0.1:8080/ws", ["fleet/+/status"]) as stream:
        event = await stream.expect(topic="fleet/+/status", match={"online": False}, within=5.0)

A stream reads in the background from the moment it is open, and keeps what arrives until an
expectation consumes it: `expect` consumes events up to the first match, `expect_count` up to the
n-th, and `expect_silence` fails on a matching event that no expectation has consumed yet. A failed
expectation raises `ExpectationFailed` (an AssertionError) showing the stream, its filters, the
expectation and the last events that arrived.

Each frame becomes a `StreamEvent` whose `data` is the decoded JSON (the bridge envelope on our
bridges; any JSON on someone else's WebSocket or SSE server). Its `topic` is `data["topic"]` and its
`payload` is `data["payload"]`, or the whole of `data` when it has no payload field. MQTT messages
get the bridges' envelope without `id`, so that one parser reads every transport; over MQTT 5
(`version=5`) it has the message's properties as `properties` (`envelope_properties`), which
expectations can ask for (`user_properties`, `content_type`). A WebSocket server that accepts the
subprotocol 'mqtt' is an MQTT broker, and its stream is MQTT over WebSocket.
Client libraries are imported when a stream of their transport opens.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import urllib.parse
import uuid
from collections import Counter, deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from fleet.credentials import Credentials, split_url
from fleet.endpoint import Endpoint
from fleet.errors import (
    ConfigError,
    ConnectionLost,
    ConnectRefused,
    ExpectationFailed,
    TopicError,
    TransportError,
)
from fleet.mqtt.properties import Properties, envelope_properties
from fleet.topics import matches, validate_filter

if TYPE_CHECKING:
    from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2

__all__ = [
    "Expectation",
    "Stream",
    "StreamEvent",
    "Transport",
    "envelope_properties",
    "grpc_events",
    "open_stream",
]

Transport = Literal["mqtt", "ws", "sse", "grpc"]
OPEN_TIMEOUT = 10.0
KEEP = 10_000  # unconsumed events kept per stream; older ones are dropped and counted
SHOW = 10  # events shown by a failed expectation


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One frame of a stream: `data` as decoded, and when it arrived (seconds since the epoch)."""

    data: Any
    received_at: float

    @property
    def topic(self) -> str | None:
        topic = self.data.get("topic") if isinstance(self.data, dict) else None
        return topic if isinstance(topic, str) else None

    @property
    def payload(self) -> Any:
        if isinstance(self.data, dict) and "payload" in self.data:
            return self.data["payload"]
        return self.data

    @property
    def properties(self) -> dict[str, Any]:
        """The MQTT 5 properties of the envelope (`envelope_properties`); empty when it has none."""
        properties = self.data.get("properties") if isinstance(self.data, dict) else None
        return properties if isinstance(properties, dict) else {}

    @property
    def user_properties(self) -> list[tuple[str, str]]:
        """The MQTT 5 user properties, in order, duplicate keys kept."""
        pairs = self.properties.get("user_properties")
        if not isinstance(pairs, list):
            return []
        return [(str(pair[0]), str(pair[1])) for pair in pairs if isinstance(pair, list) and len(pair) == 2]


def _same(expected: Any, actual: Any) -> bool:
    """`actual` holds `expected`: equal values (True is not 1), and dicts by subset, recursively."""
    if isinstance(expected, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and _same(value, actual[key]) for key, value in expected.items()
        )
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    return bool(expected == actual)


def _paths(value: Mapping[str, Any], prefix: str) -> list[str]:
    """`payload.a.b=value` items of a nested match, values in JSON."""
    items: list[str] = []
    for key, item in value.items():
        if isinstance(item, Mapping) and item:
            items += _paths(item, f"{prefix}.{key}")
        else:
            items.append(f"{prefix}.{key}={json.dumps(item, default=str)}")
    return items


@dataclass(frozen=True, slots=True)
class Expectation:
    """Which events count: a topic filter (MQTT wildcards), values the payload must hold, and MQTT 5
    properties the message must carry.

    `user_properties` must be present, in any order and among others: each (key, value) pair given
    occurs among the message's user properties, as often as it is given. `content_type` is
    compared as it is."""

    topic: str | None = None
    match: Mapping[str, Any] = field(default_factory=dict)
    user_properties: tuple[tuple[str, str], ...] = ()
    content_type: str | None = None

    def __post_init__(self) -> None:
        if self.topic is not None:
            validate_filter(self.topic)
        pairs = tuple(self.user_properties)
        if not all(
            isinstance(p, tuple | list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in pairs
        ):
            raise ValueError(
                f"user_properties must be (key, value) pairs of strings, got {self.user_properties!r}"
            )
        object.__setattr__(self, "user_properties", tuple((key, value) for key, value in pairs))

    @classmethod
    def parse(cls, text: str) -> Expectation:
        """`topic=fleet/+/status,payload.online=false`: values are JSON, else text.

        Raises ValueError naming the item that is wrong.
        """
        topic: str | None = None
        match: dict[str, Any] = {}
        user_properties: list[tuple[str, str]] = []
        content_type: str | None = None
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep:
                raise ValueError(f"expectation {text!r}: {item!r} is not KEY=VALUE")
            if key == "topic":
                topic = raw.strip()
                continue
            if key == "content_type":
                content_type = raw.strip()
                continue
            if key.startswith("user_property.") and key != "user_property.":
                user_properties.append((key.removeprefix("user_property."), raw.strip()))
                continue
            path = key.split(".")
            if path[0] != "payload" or len(path) < 2 or not all(path):
                raise ValueError(
                    f"expectation {text!r}: unknown key {key!r}; use topic=FILTER, payload.PATH=VALUE, "
                    "user_property.KEY=VALUE or content_type=TYPE"
                )
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw.strip()
            node = match
            for name in path[1:-1]:
                node = node.setdefault(name, {})
            node[path[-1]] = value
        return cls(topic, match, tuple(user_properties), content_type)

    def matches(self, event: StreamEvent) -> bool:
        if self.topic is not None and (event.topic is None or not matches(self.topic, event.topic)):
            return False
        if self.content_type is not None and event.properties.get("content_type") != self.content_type:
            return False
        if self.user_properties and Counter(self.user_properties) - Counter(event.user_properties):
            return False
        return not self.match or _same(self.match, event.payload)

    def __str__(self) -> str:
        items = [f"topic={self.topic}"] if self.topic is not None else []
        items += _paths(self.match, "payload")
        items += [f"user_property.{key}={value}" for key, value in self.user_properties]
        if self.content_type is not None:
            items.append(f"content_type={self.content_type}")
        return ",".join(items) or "anything"


class Stream:
    """The events of one open stream; made by `open_stream`."""

    def __init__(self, name: str, filters: Sequence[str]) -> None:
        self.name = name
        self.filters = tuple(filters)
        self.received = 0
        self.dropped = 0
        self.ended: str | None = None
        self._pending: deque[StreamEvent] = deque()
        self._recent: deque[StreamEvent] = deque(maxlen=SHOW)
        self._arrived = asyncio.Event()

    def _feed(self, data: Any) -> None:
        event = StreamEvent(data, time.time())
        if len(self._pending) >= KEEP:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append(event)
        self._recent.append(event)
        self.received += 1
        self._arrived.set()

    async def _read(self, frames: Frames) -> None:
        try:
            async with contextlib.aclosing(frames):
                async for data in frames:
                    self._feed(data)
            self.ended = "the server ended the stream"
        except TransportError as exc:
            self.ended = str(exc)
        self._arrived.set()

    async def _next(self, deadline: float) -> StreamEvent | None:
        """The next unconsumed event; None once `deadline` (loop time) passes or the stream ends."""
        while not self._pending:
            if self.ended is not None:
                return None
            self._arrived.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._arrived.wait()
            except TimeoutError:
                return None
        return self._pending.popleft()

    async def events(self, within: float | None = None) -> AsyncIterator[StreamEvent]:
        """Consume events as they arrive, until `within` seconds pass (None: forever) or the stream ends."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within if within is not None else float("inf")
        while (event := await self._next(deadline)) is not None:
            yield event

    async def expect(
        self,
        topic: str | None = None,
        match: Mapping[str, Any] | None = None,
        *,
        user_properties: Sequence[tuple[str, str]] = (),
        content_type: str | None = None,
        within: float = 5.0,
    ) -> StreamEvent:
        """The first event that matches; fails after `within` seconds, or when the stream ends.

        `user_properties` and `content_type` are MQTT 5 properties the message must carry (see
        `Expectation`): the stream must speak MQTT 5, or come from a bridge that passes them on."""
        __tracebackhide__ = True  # pytest shows the test's line, not ours
        found = await self.expect_count(
            1,
            topic=topic,
            match=match,
            user_properties=user_properties,
            content_type=content_type,
            within=within,
        )
        return found[0]

    async def expect_count(
        self,
        n: int,
        *,
        topic: str | None = None,
        match: Mapping[str, Any] | None = None,
        user_properties: Sequence[tuple[str, str]] = (),
        content_type: str | None = None,
        within: float = 5.0,
    ) -> list[StreamEvent]:
        """The first `n` events that match; fails when fewer arrive within `within` seconds."""
        __tracebackhide__ = True
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        expectation = Expectation(topic, match or {}, tuple(user_properties), content_type)
        found: list[StreamEvent] = []
        seen = self.received - len(self._pending)
        async for event in self.events(within):
            if expectation.matches(event):
                found.append(event)
                if len(found) == n:
                    return found
        wanted = f"{n} events" if n > 1 else "an event"
        raise self._failure(
            f"expected {wanted} matching {expectation} within {within}s, got {len(found)}", seen
        )

    async def expect_silence(
        self,
        *,
        for_: float,
        topic: str | None = None,
        match: Mapping[str, Any] | None = None,
        user_properties: Sequence[tuple[str, str]] = (),
        content_type: str | None = None,
    ) -> None:
        """No matching event for `for_` seconds, counting unconsumed events that arrived before; the
        events it looks at are consumed."""
        __tracebackhide__ = True
        expectation = Expectation(topic, match or {}, tuple(user_properties), content_type)
        seen = self.received - len(self._pending)
        wanted = f"no event matching {expectation} for {for_}s"
        async for event in self.events(for_):
            if expectation.matches(event):
                raise self._failure(f"expected {wanted}, got one: {_show(event)}", seen)
        if self.ended is not None:
            raise self._failure(f"expected {wanted}, but the stream ended", seen)

    def _failure(self, what: str, seen: int) -> ExpectationFailed:
        """ExpectationFailed: `what`, and the events it consumed after the first `seen` of the stream."""
        lines = [f"{self.name} (filters: {', '.join(self.filters) or 'none'}): {what}"]
        if self.ended is not None:
            lines.append(f"the stream ended: {self.ended}")
        consumed = self.received - len(self._pending)
        looked = consumed - seen
        recent = list(self._recent)[: max(0, len(self._recent) - len(self._pending))]
        recent = recent[-looked:] if looked else []
        counted = f"{looked} event" if looked == 1 else f"{looked} events"
        lines.append(f"it looked at {counted}" + (f"; the last {len(recent)}:" if recent else ""))
        lines += [f"  {_show(event)}" for event in recent]
        if self.dropped:
            lines.append(f"({self.dropped} unconsumed events were dropped: more than {KEEP} waited)")
        return ExpectationFailed("\n".join(lines))


def _show(event: StreamEvent) -> str:
    text = json.dumps(event.data, default=str, separators=(",", ":"))
    return text if len(text) <= 300 else text[:297] + "..."


def _json_or_text(frame: str | bytes) -> Any:
    try:
        return json.loads(frame)
    except ValueError:
        return frame.decode(errors="replace") if isinstance(frame, bytes) else frame


def with_filters(url: str, filters: Sequence[str]) -> str:
    """`url` with a `filter` query parameter for each filter (how our bridges take them), added to
    its query as it is."""
    if not filters:
        return url
    parts = urllib.parse.urlsplit(url)
    added = urllib.parse.urlencode([("filter", f) for f in filters], quote_via=urllib.parse.quote)
    return urllib.parse.urlunsplit(parts._replace(query=f"{parts.query}&{added}" if parts.query else added))


def _query_filters(url: str) -> tuple[str, ...]:
    """The `filter` parameters of `url`'s query; '+' is the MQTT wildcard there, not a space as in forms."""
    pairs = (item.partition("=") for item in urllib.parse.urlsplit(url).query.split("&"))
    return tuple(
        urllib.parse.unquote(value) for key, _, value in pairs if urllib.parse.unquote(key) == "filter"
    )


Frames = AsyncGenerator[Any, None]
Opened = tuple[str, tuple[str, ...], Frames]  # the stream's name, its filters in effect, its frames


def _paths_hint(url: str) -> str:
    """Where our servers serve, on the host and port of `url`: for an error that reached something else."""
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme in ("https", "wss")
    http, ws = ("https", "wss") if secure else ("http", "ws")
    return (
        f"fleet bridge serves Server-Sent Events at {http}://{parts.netloc}/events and JSON over "
        f"WebSocket at {ws}://{parts.netloc}/ws; an MQTT broker's WebSocket listener answers the "
        f"'mqtt' subprotocol (ws://HOST:8083/mqtt by default)"
    )


@contextlib.asynccontextmanager
async def _mqtt(
    url: str, filters: Sequence[str], credentials: Credentials, version: int
) -> AsyncIterator[Opened]:
    """An MQTT 3.1.1 or 5 (`version` 4 or 5) client on the lean transport (`fleet.transport.Link`).
    Over MQTT 5 each filter is subscribed with its own Subscription Identifier, its place in the
    filters counting from 1, so that a message's `subscription_identifiers` say which filters it
    matched."""
    from bridges.envelope import make_event
    from fleet.mqtt import v5
    from fleet.mqtt.properties import EMPTY
    from fleet.packets import Connect, Publish
    from fleet.transport import ClientSession, Link

    endpoint = Endpoint.parse(url)
    client_id = f"fleet-stream-{uuid.uuid4().hex[:12]}"
    username, password = credentials.username, credentials.read_password()
    connect: Connect | v5.Connect
    if version == 5:
        connect = v5.Connect(True, 60, client_id, None, username, password)
    else:
        connect = Connect("MQTT", 4, True, 60, client_id, None, username, password)
    inbox: asyncio.Queue[Publish | v5.Publish | None] = asyncio.Queue()
    try:
        link, _ = await Link.open(
            endpoint,
            connect,
            session=ClientSession(),
            on_message=inbox.put_nowait,
            ssl=credentials.ssl_context() if endpoint.tls else None,
            timeout=OPEN_TIMEOUT,
        )
    except ConnectRefused as exc:
        raise TransportError(f"cannot connect to {endpoint}: {exc}") from None
    link.closed.add_done_callback(lambda _: inbox.put_nowait(None))

    async def frames() -> Frames:
        while (message := await inbox.get()) is not None:
            event = make_event(
                0,
                message.topic,
                message.payload,
                qos=message.qos,
                retain=message.retain,
                received_at=time.time(),
                properties=message.properties if isinstance(message, v5.Publish) else EMPTY,
            )
            envelope = json.loads(event.json)
            del envelope["id"]  # ids belong to a bridge
            yield envelope
        error = link.closed.result()
        if error is not None:
            raise ConnectionLost(f"{endpoint}: {error}")

    try:
        subscribed = tuple(filters) or ("#",)
        for number, topic_filter in enumerate(subscribed, 1):
            properties = Properties(subscription_identifiers=(number,)) if version == 5 else EMPTY
            try:
                (code,) = await link.subscribe([(topic_filter, 1)], OPEN_TIMEOUT, properties=properties)
            except TransportError as exc:
                raise TransportError(f"cannot subscribe to {topic_filter!r} at {endpoint}: {exc}") from None
            if code >= 0x80:
                raise TransportError(
                    f"cannot subscribe to {topic_filter!r} at {endpoint}: the broker refused it ({code:#04x})"
                )
        yield f"mqtt{'v5' if version == 5 else ''} stream {endpoint}", subscribed, frames()
    finally:
        with contextlib.suppress(TransportError, OSError):
            await link.disconnect(timeout=2.0)


@contextlib.asynccontextmanager
async def _websocket(
    url: str, filters: Sequence[str], credentials: Credentials, version: int
) -> AsyncIterator[Opened]:
    """`url` has the filters already, as query parameters. The handshake offers the WebSocket
    subprotocol 'mqtt' [MQTT-6.0.0-3]: a server that selects it [MQTT-6.0.0-4] is an MQTT broker,
    read as MQTT (`version`) over WebSocket, subscribed to `filters` ('#' without them); any other
    server is read as JSON text frames."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake, InvalidMessage, InvalidStatus, WebSocketException
    from websockets.typing import Subprotocol

    try:
        websocket = await connect(
            url,
            subprotocols=[Subprotocol("mqtt")],
            open_timeout=OPEN_TIMEOUT,
            ssl=credentials.ssl_context() if url.startswith("wss:") else None,
            additional_headers=credentials.bearer(),
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        content_type = exc.response.headers.get("content-type", "no content type")
        body = " ".join(bytes(exc.response.body or b"").decode(errors="replace").split())
        if status == 401 or (status == 403 and body):  # a bridge's tokens: its answer says what is missing
            raise TransportError(f"cannot open {url}: HTTP {status}: {body[:200]}") from None
        raise TransportError(
            f"cannot open {url}: the WebSocket handshake got HTTP {status} ({content_type}); "
            + _paths_hint(url)
        ) from None
    except InvalidMessage as exc:  # it answered, but not in HTTP
        netloc = urllib.parse.urlsplit(url).netloc
        raise TransportError(
            f"cannot open {url}: {exc} (an MQTT/TCP port? then use mqtt://{netloc}); {_paths_hint(url)}"
        ) from None
    except InvalidHandshake as exc:  # it answered, but not as a WebSocket server
        raise TransportError(f"cannot open {url}: {exc}; {_paths_hint(url)}") from None
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise TransportError(f"cannot open {url}: {exc}") from None

    if websocket.subprotocol == "mqtt":
        await websocket.close()
        broker = urllib.parse.urlsplit(url)._replace(query="", fragment="").geturl()
        for topic_filter in filters:
            try:
                validate_filter(topic_filter)
            except TopicError as exc:
                raise TransportError(f"cannot subscribe at {broker}: {exc}") from None
        async with _mqtt(broker, filters, credentials, version) as opened:
            yield opened
        return

    async def frames() -> Frames:
        try:
            async for message in websocket:
                yield _json_or_text(message)
        except (OSError, WebSocketException) as exc:
            raise ConnectionLost(f"{url}: {exc}") from None

    try:
        yield f"ws stream {url}", tuple(filters), frames()
    finally:
        await websocket.close()


@contextlib.asynccontextmanager
async def _sse(
    url: str, filters: Sequence[str], credentials: Credentials, version: int
) -> AsyncIterator[Opened]:
    """`url` has the filters already, as query parameters; `version` is for brokers only."""
    import httpx
    from httpx_sse import SSEError, aconnect_sse

    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            httpx.AsyncClient(
                timeout=httpx.Timeout(OPEN_TIMEOUT, read=None),
                verify=credentials.ssl_context() if url.startswith("https:") else True,
                headers=credentials.bearer(),
            )
        )
        try:
            source = await stack.enter_async_context(aconnect_sse(client, "GET", url))
        except httpx.HTTPError as exc:
            raise TransportError(f"cannot open {url}: {exc}") from None
        response = source.response
        content_type = response.headers.get("content-type", "no content type")
        if response.status_code != 200:
            body = " ".join((await response.aread()).decode(errors="replace").split())
            wrong_place = response.status_code in (404, 405, 426)  # no such path, or a WebSocket's
            raise TransportError(
                f"cannot open {url}: HTTP {response.status_code}: {body[:200]}"
                + (f"; {_paths_hint(url)}" if wrong_place else "")
            )
        if content_type.partition(";")[0].strip().lower() != "text/event-stream":
            raise TransportError(
                f"cannot read {url}: it answered {content_type}, not a Server-Sent Events stream "
                f"(text/event-stream); {_paths_hint(url)}"
            )

        async def frames() -> Frames:
            try:
                async for sse in source.aiter_sse():
                    if sse.data:  # the retry hint and keep-alives carry no data
                        yield _json_or_text(sse.data)
            except (httpx.HTTPError, SSEError) as exc:
                raise ConnectionLost(f"{url}: {exc}") from None

        yield f"sse stream {url}", tuple(filters), frames()


def grpc_events(response: bridge_pb2.SubscribeResponse) -> list[dict[str, Any]]:
    """The JSON form of one FleetBridgeService response: the envelopes of its batch of events, in
    order, or a notice with a `type`, as on WebSocket. The one place that decodes the gRPC stream."""
    item = response.WhichOneof("item")
    if item == "dropped":
        return [{"type": "dropped", "count": response.dropped.count, "total": response.dropped.total}]
    if item == "reset":
        return [{"type": "reset", "after_id": response.reset.after_id, "oldest_id": response.reset.oldest_id}]
    return [_grpc_envelope(event) for event in response.events.events]


def _grpc_envelope(event: bridge_pb2.Event) -> dict[str, Any]:
    from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2 as pb

    data: dict[str, Any] = {
        "id": event.id,
        "topic": event.topic,
        "device": event.device if event.HasField("device") else None,
        "kind": pb.Kind.Name(event.kind).removeprefix("KIND_").lower(),
        "qos": event.qos,
        "retain": event.retain,
        "received_at": event.received_at,
        # The envelope's own JSON text: integers stay integers, keys keep their order.
        "payload": json.loads(event.json_text) if event.HasField("json_text") else None,
    }
    if event.HasField("raw"):
        data["payload_base64"] = base64.b64encode(event.raw).decode()
    if event.HasField("properties_json"):
        data["properties"] = json.loads(event.properties_json)
    return data


@contextlib.asynccontextmanager
async def _grpc(
    url: str, filters: Sequence[str], credentials: Credentials, version: int
) -> AsyncIterator[Opened]:
    """`version` is for brokers only."""
    import grpc

    from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2, bridge_pb2_grpc

    tls = url.startswith("grpcs://")
    target = url.removeprefix("grpcs://" if tls else "grpc://").rstrip("/")
    shown = f"grpc{'s' if tls else ''}://{target}"
    if tls:
        channel = grpc.aio.secure_channel(target, _grpc_credentials(shown, credentials))
    else:
        channel = grpc.aio.insecure_channel(target)
    async with channel:
        stub = bridge_pb2_grpc.FleetBridgeServiceStub(channel)
        metadata = (("authorization", f"Bearer {credentials.token}"),) if credentials.token else ()
        call = stub.Subscribe(bridge_pb2.SubscribeRequest(filters=list(filters) or ["#"]), metadata=metadata)
        try:
            async with asyncio.timeout(OPEN_TIMEOUT):
                await call.initial_metadata()  # sent once the subscription is registered
                code = await call.code() if call.done() else grpc.StatusCode.OK
                if code != grpc.StatusCode.OK:  # a failed call ends with empty initial metadata
                    details = await call.details()
                    raise TransportError(f"cannot subscribe at {shown}: {code.name}: {details}")
        except TimeoutError:
            call.cancel()
            raise TransportError(f"cannot subscribe at {shown}: no answer within {OPEN_TIMEOUT}s") from None

        async def frames() -> Frames:
            try:
                async for response in call:
                    for data in grpc_events(response):
                        yield data
            except grpc.aio.AioRpcError as exc:
                raise ConnectionLost(f"{shown}: {exc.code().name}: {exc.details()}") from None

        try:
            yield f"grpc stream {shown}", tuple(filters), frames()
        finally:
            call.cancel()


def _grpc_credentials(url: str, credentials: Credentials) -> Any:
    """grpc's channel credentials: the CA file's certificates (else the system's) and the client
    certificate, if any. grpc cannot skip verification: --insecure is refused."""
    import grpc

    if credentials.insecure:
        raise TransportError(
            f"cannot open {url}: gRPC cannot skip certificate verification (--insecure); "
            "give the bridge's CA with --cafile"
        )
    try:
        roots = credentials.cafile.read_bytes() if credentials.cafile is not None else None
        chain = credentials.cert.read_bytes() if credentials.cert is not None else None
        key = credentials.key.read_bytes() if credentials.key is not None else None
    except OSError as exc:
        raise ConfigError(str(exc.filename), f"cannot read: {exc.strerror}") from None
    return grpc.ssl_channel_credentials(roots, key, chain)


_Opener = Callable[[str, Sequence[str], Credentials, int], contextlib.AbstractAsyncContextManager[Opened]]
_OPENERS: dict[Transport, _Opener] = {
    "mqtt": _mqtt,
    "ws": _websocket,
    "sse": _sse,
    "grpc": _grpc,
}


@contextlib.asynccontextmanager
async def open_stream(
    transport: Transport,
    url: str,
    filters: Sequence[str] = (),
    credentials: Credentials | None = None,
    *,
    version: int = 4,
) -> AsyncIterator[Stream]:
    """Open a stream and read it in the background until the block exits.

    `url`: a broker URL (mqtt://, mqtts://, ws:// MQTT over WebSocket) for "mqtt", the endpoint's
    URL for "ws" and "sse" (filters are added as `filter` query parameters; a ws:// server that
    accepts the WebSocket subprotocol 'mqtt' is a broker, read as "mqtt"), `host:port` or
    grpc[s]://host:port for "grpc" (our FleetBridgeService). `credentials` log in to a broker and
    set up TLS (mqtts://, wss://, https://, grpcs://); their `token` is sent to a bridge. `version`
    is the MQTT version a broker is spoken to in: 4 (MQTT 3.1.1) or 5, when the events carry the
    messages' properties (`envelope_properties`). Raises TransportError when it cannot open,
    TopicError for an invalid filter, and ConfigError for a password or TLS file that cannot be read.
    """
    if version not in (4, 5):
        raise ValueError(f"version must be 4 (MQTT 3.1.1) or 5, got {version}")
    credentials = credentials or Credentials()
    if transport in ("mqtt", "ws"):  # a broker's URL may carry user:password@
        url, from_url = split_url(url)
        credentials = from_url.override(credentials)
    for topic_filter in filters:
        validate_filter(topic_filter)
    if transport in ("ws", "sse"):
        url = with_filters(url, filters)
        filters = _query_filters(url)  # with those the URL had
    async with _OPENERS[transport](url, filters, credentials, version) as (name, subscribed, frames):
        stream = Stream(name, subscribed)
        async with asyncio.TaskGroup() as tasks:
            reader = tasks.create_task(stream._read(frames), name=f"fleet.testing.stream[{name}]")
            try:
                yield stream
            finally:
                reader.cancel()
