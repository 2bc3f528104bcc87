"""The bridge's HTTP app: WebSocket `/ws`, Server-Sent Events `/events`, `/healthz`, `/readyz`, `/metrics`.

Both streaming transports deliver the Hub's envelope exactly as it was encoded once per message
(`Event.json`); neither re-encodes per consumer. In their query strings a `+` is itself (the MQTT
wildcard, as users type `?filter=fleet/+/status`), not a space: a space is `%20`.

`GET /ws` (WebSocket, JSON text frames)
    Query: `filter` (repeatable; none means: wait for a subscribe message), `policy`
    (`drop-oldest` or `disconnect`), `queue` (1..MAX_QUEUE events). A bad query is answered with
    an error message and close code 1008.
    Client to bridge:
        {"type": "subscribe", "filters": ["fleet/+/status"]}      adds filters
        {"type": "unsubscribe", "filters": ["fleet/+/status"]}    removes filters
        {"type": "publish", "topic": "fleet/dev-1/cmd", "payload": {...} or "text", "qos": 1}
    Bridge to client: each event as its envelope, after the hub's retained messages that the
    filters (or a subscribe message's added filters) match; `{"type": "subscribed", "filters": [...]}` (the
    whole set now in force), `{"type": "published", "topic": ...}`, `{"type": "dropped", "count":
    n, "total": m}`, and `{"type": "error", "error": reason}` for a bad, unknown or forbidden
    message (JSON nested deeper than MAX_JSON_DEPTH is one), after which the connection stays
    open. A message larger than the server's limit (`bridges.server.MAX_WS_MESSAGE`) closes it
    with code 1009. A consumer cut under `policy=disconnect` is
    closed with code 1008 and the reason; at shutdown the code is 1001. A client that stops reading
    (a send to it has waited `send_timeout` seconds, or, on Linux, bytes have waited for it that
    long and its TCP has acknowledged none, however they were written), or that does not complete
    a close within a second, has its connection aborted: a close handshake with a peer that reads
    nothing would hold the socket and its buffers forever. Pings are uvicorn's (see `bridges.server`).

`GET /events` (text/event-stream)
    Query: `filter` (repeatable, required), `policy`, `queue`, and `last_event_id` (or the
    `Last-Event-ID` header) to resume from the replay ring. Without a resume point the stream
    starts with the hub's retained messages that the filters match, with no `id:` line. Each event
    has `id:` (the envelope id), `event:` (its kind: telemetry, status, ack, raw, bridge) and
    `data:` (the envelope). `dropped` and `reset` events carry no id, so the resume point stays on
    the last real event. A bad query
    is a 400 with the reason as text. The stream starts with a `retry:` hint, sends a comment every
    `keepalive` seconds, and a client that stops reading is cut as on `/ws` (`send_timeout`): its
    connection is aborted.

`GET /` is the dashboard page, with its scripts and styles under `/dashboard/` (bridges/dashboard/:
static files, no build step, nothing fetched from elsewhere).

With a tokens file (`access`), `/ws`, `/events` and `/metrics` (for any subscribe right) need a
token (bridges.auth says where it goes): `/events` and the `/ws` handshake are answered 401 without
a known one and 403 for a filter beyond its rights; a subscribe or publish message beyond them is
answered with an `error` and the connection stays open. `POST /login` with `{"token": ...}` sets
the HttpOnly cookie the dashboard uses, `POST /logout` clears it, and `GET /whoami` names the token
and its rights (401 without one). The dashboard's files, `/healthz` and `/readyz` stay open.

Every request and WebSocket handshake must name the bridge in its Host header (bridges.hosts):
another name gets 400, or a refused handshake, against DNS rebinding.

`GET /healthz` is liveness: always 200 while the process serves, with `broker_connected` and
`ready` in the body. `GET /readyz` is readiness: 503 while the bridge has no broker connection or
is shutting down. `GET /metrics` is Prometheus text from a registry of this app alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import h11
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette.event import ServerSentEvent
from sse_starlette.sse import EventSourceResponse, SendTimeoutError
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected
from uvicorn.protocols.http.h11_impl import RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from bridges.auth import COOKIE, QUERY_PARAMETER, Access, http_token
from bridges.envelope import Event
from bridges.hosts import HostGuard
from bridges.hub import (
    MAX_FILTERS,
    Consumer,
    ConsumerClosed,
    Dropped,
    Hub,
    Item,
    Policy,
    Reset,
    Retained,
    wanted_by,
)
from bridges.metrics import registry_for
from bridges.source import BrokerUnavailable, MqttSource
from bridges.tokens import Grant
from bridges.turns import BURST
from fleet.errors import TopicError
from fleet.topics import validate_filter

__all__ = [
    "MAX_FILTERS",
    "MAX_JSON_DEPTH",
    "MAX_QUEUE",
    "SSE_TRANSPORT",
    "WS_TRANSPORT",
    "BridgeSettings",
    "BridgeState",
    "StreamOptions",
    "create_app",
    "parse_stream_options",
    "query_params",
]

log = logging.getLogger("bridges.app")

WS_TRANSPORT = "websocket"
SSE_TRANSPORT = "sse"
MAX_QUEUE = 100_000
# How deep a client's JSON message may nest (a command payload is a small object).
MAX_JSON_DEPTH = 32
SHUTDOWN_REASON = "the bridge is shutting down"

_POLICIES: dict[str, Policy] = {"drop-oldest": "drop-oldest", "disconnect": "disconnect"}
# A close handshake to a client that has stopped reading would wait forever.
_CLOSE_TIMEOUT = 1.0
# The consumer a WebSocket leaves behind when it changes filters is closed with this reason.
_RESUBSCRIBED = "resubscribed"
_CLOSE_GOING_AWAY = 1001
_CLOSE_POLICY = 1008
DASHBOARD = Path(__file__).with_name("dashboard")
# Where `_BridgeApp` puts the connection's transport, and the object that owns it, in the ASGI scope.
_TRANSPORT = "fleet.bridge.transport"
_OWNER = "fleet.bridge.owner"


@dataclass(frozen=True, slots=True, kw_only=True)
class BridgeSettings:
    """Timing of the HTTP transports; see `create_app`."""

    sse_retry_ms: int = 3000
    keepalive: float = 15.0
    ws_ping_interval: float = 20.0
    send_timeout: float = 10.0
    # Browser origins, besides the bridge's own, whose pages may open /ws ("*": any).
    allowed_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.sse_retry_ms < 0:
            raise ValueError(f"sse_retry_ms must be >= 0, got {self.sse_retry_ms}")
        if self.keepalive < 0 or self.ws_ping_interval < 0:
            raise ValueError("keepalive and ws_ping_interval must be >= 0 (0 turns them off)")
        if self.send_timeout <= 0:
            raise ValueError(f"send_timeout must be > 0, got {self.send_timeout}")


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamOptions:
    """What a streaming client asked for in its query string."""

    filters: tuple[str, ...]
    policy: Policy
    size: int


def parse_stream_options(params: QueryParams, default_size: int) -> StreamOptions:
    """The `filter`, `policy` and `queue` query parameters, validated; raises ValueError (or its
    subclass TopicError) with a reason fit to show the client.

    Filters are repeated parameters and never split on commas: a comma is legal in a topic. Pass
    `query_params(scope)`, which reads `+` as the wildcard."""
    filters = tuple(dict.fromkeys(params.getlist("filter")))
    if len(filters) > MAX_FILTERS:
        raise ValueError(f"at most {MAX_FILTERS} filters, got {len(filters)}")
    for topic_filter in filters:
        try:
            validate_filter(topic_filter)
        except TopicError as exc:
            if "+" not in topic_filter:
                raise
            raise TopicError(f"{exc}; in the URL, '+' is the wildcard: write a space as %20") from None
    raw_policy = params.get("policy", "drop-oldest")
    policy = _POLICIES.get(raw_policy)
    if policy is None:
        raise ValueError(f"policy must be 'drop-oldest' or 'disconnect', got {raw_policy!r}")
    raw_size = params.get("queue")
    if raw_size is None:
        size = default_size
    else:
        try:
            size = int(raw_size)
        except ValueError:
            size = 0
        if not 1 <= size <= MAX_QUEUE:
            raise ValueError(f"queue must be an integer from 1 to {MAX_QUEUE}, got {raw_size!r}")
    return StreamOptions(filters=filters, policy=policy, size=size)


def query_params(scope: Scope) -> QueryParams:
    """The query string's parameters, with `+` read as itself, not as a space.

    Form encoding turns `+` into a space, so `?filter=fleet/+/status`, as people type it (and curl
    and browsers send it), would become the filter `fleet/ /status` and match nothing. A topic filter
    is not form data: here `+` is the wildcard, and a space is written `%20`."""
    raw: bytes = scope.get("query_string", b"")
    return QueryParams(raw.replace(b"+", b"%2B"))


def _resume_point(request: Request) -> int | None:
    raw = request.headers.get("last-event-id") or query_params(request.scope).get("last_event_id")
    if not raw:
        return None
    try:
        after_id = int(raw)
    except ValueError:
        after_id = -1
    if after_id < 0:
        raise ValueError(f"Last-Event-ID must be an event id (an integer >= 0), got {raw!r}")
    return after_id


class _Stream(Protocol):
    def close(self, reason: str) -> None: ...


class BridgeState:
    """What the endpoints of one app share: the hub, the MQTT source, settings, its open streams."""

    def __init__(self, hub: Hub, source: MqttSource, settings: BridgeSettings, access: Access) -> None:
        self.hub = hub
        self.source = source
        self.settings = settings
        self.access = access
        self.registry = registry_for(hub)
        self.streams: set[_Stream] = set()
        self.idle = asyncio.Event()  # set while no stream is open
        self.idle.set()
        self.closing: str | None = None

    def close(self, reason: str = SHUTDOWN_REASON) -> None:
        """End every stream of this app and refuse new ones (called by `serve_http` on exit).

        The server cannot do it: an SSE response never completes on its own, and the hub is
        shared with the gRPC service, whose consumers must stay."""
        self.closing = reason
        for stream in list(self.streams):
            stream.close(reason)

    def opened(self, stream: _Stream) -> None:
        self.streams.add(stream)
        self.idle.clear()

    def ended(self, stream: _Stream) -> None:
        self.streams.discard(stream)
        if not self.streams:
            self.idle.set()

    # Plain HTTP

    def _health(self) -> dict[str, Any]:
        hub = self.hub
        return {
            "status": "ok",
            "broker_connected": hub.broker_connected,
            "ready": hub.broker_connected and self.closing is None,
            "consumers": len(hub.consumers),
        }

    async def healthz(self, request: Request) -> Response:
        return JSONResponse(self._health())

    async def readyz(self, request: Request) -> Response:
        health = self._health()
        if not health["ready"]:
            health["status"] = "unavailable"
        return JSONResponse(health, status_code=200 if health["ready"] else 503)

    async def metrics(self, request: Request) -> Response:
        grant = self._grant(request.scope)
        if grant is None:
            return _unauthorized()
        if not grant.subscribe:  # a token with no rights may do nothing, not even count
            reason = f"token {grant.name!r} may not read /metrics: it may subscribe to nothing"
            return PlainTextResponse(reason, status_code=403)
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    # Authentication

    def _grant(self, scope: Scope) -> Grant | None:
        return self.access.grant(http_token(scope, query_params(scope).get(QUERY_PARAMETER)))

    async def whoami(self, request: Request) -> Response:
        """200 with the token's name and rights, or 401: how the dashboard knows to show its login."""
        grant = self._grant(request.scope)
        if grant is None:
            return _unauthorized()
        return JSONResponse(
            {
                "auth": self.access.required,
                "name": grant.name,
                "subscribe": list(grant.subscribe),
                "publish": list(grant.publish),
            }
        )

    async def login(self, request: Request) -> Response:
        """`POST /login` with `{"token": "..."}`: 204 and the HttpOnly cookie for a known token."""
        origin = request.headers.get("origin")
        if origin is not None and not _origin_allowed(
            origin, request.headers.get("host", ""), self.settings.allowed_origins
        ):
            return PlainTextResponse(f"a page from {origin} may not log in to this bridge", status_code=403)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _LOGIN_BYTES:
                return PlainTextResponse("the login body is too large", status_code=413)
        try:
            token = json.loads(body).get("token")
        except (ValueError, AttributeError):
            return PlainTextResponse('expected JSON: {"token": "..."}', status_code=400)
        if not isinstance(token, str) or self.access.grant(token.strip()) is None:
            return _unauthorized()
        response = Response(status_code=204)
        response.set_cookie(
            COOKIE,
            token.strip(),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, httponly=True, samesite="strict")
        return response

    async def dashboard(self, request: Request) -> Response:
        return FileResponse(DASHBOARD / "index.html")

    # Server-Sent Events

    async def events(self, request: Request) -> Response:
        if self.closing is not None:
            return PlainTextResponse(self.closing, status_code=503)
        try:
            options = parse_stream_options(query_params(request.scope), self.hub.queue_size)
            if not options.filters:
                raise TopicError("at least one filter is needed, for example ?filter=fleet/%23 (fleet/#)")
            after_id = _resume_point(request)
        except ValueError as exc:
            return PlainTextResponse(str(exc), status_code=400)
        grant = self._grant(request.scope)
        if grant is None:
            return _unauthorized()
        try:
            grant.check_subscribe(options.filters)
        except PermissionError as exc:
            return PlainTextResponse(str(exc), status_code=403)
        consumer = self.hub.add(
            options.filters,
            transport=SSE_TRANSPORT,
            policy=options.policy,
            size=options.size,
            after_id=after_id,
        )
        return _EventStream(self, consumer)

    # WebSocket

    async def websocket(self, websocket: WebSocket) -> None:
        try:
            options = parse_stream_options(query_params(websocket.scope), self.hub.queue_size)
        except ValueError as exc:
            await _refuse(websocket, _CLOSE_POLICY, str(exc))
            return
        if self.closing is not None:
            await _refuse(websocket, _CLOSE_GOING_AWAY, self.closing)
            return
        origin = websocket.headers.get("origin")
        if origin is not None and not _origin_allowed(
            origin, websocket.headers.get("host", ""), self.settings.allowed_origins
        ):
            # Any page in the user's browser could otherwise publish commands to the devices.
            await _refuse(
                websocket, _CLOSE_POLICY, f"a page from {origin} may not use this bridge: see allowed_origins"
            )
            return
        grant = self._grant(websocket.scope)
        if grant is None:
            await _deny(websocket, _unauthorized())
            return
        try:
            grant.check_subscribe(options.filters)
        except PermissionError as exc:
            await _deny(websocket, PlainTextResponse(str(exc), status_code=403))
            return
        session = _WebSocketSession(self, websocket, options, grant)
        if options.filters:
            # Subscribed before the handshake completes: once the client is connected, nothing is missed.
            session.resubscribe(options.filters)
        self.opened(session)
        try:
            try:
                await websocket.accept()
            except OSError:  # the client left during the handshake
                return
            await session.run()
        finally:
            self.ended(session)
            session.release()


_LOGIN_BYTES = 4096
_UNAUTHENTICATED = (
    "authentication required: send Authorization: Bearer TOKEN, log in at /login, or add ?access_token="
)


def _unauthorized() -> Response:
    return PlainTextResponse(_UNAUTHENTICATED, status_code=401, headers={"WWW-Authenticate": "Bearer"})


def _origin_allowed(origin: str, host: str, allowed: tuple[str, ...]) -> bool:
    """A browser's Origin may open /ws when it is the bridge's own (same host and port as the
    request's Host) or listed in `allowed`. Clients outside browsers send no Origin."""
    if "*" in allowed or origin.rstrip("/") in allowed:
        return True
    return urlsplit(origin).netloc.lower() == host.lower()


async def _refuse(websocket: WebSocket, code: int, reason: str) -> None:
    """Accept, say why in an error message (browsers cannot read a refused handshake), and close."""
    try:
        await websocket.accept()
        await websocket.send_text(_encode(_error(reason)))
        await websocket.close(code, _close_reason(reason))
    except (OSError, WebSocketDisconnect, WebSocketDisconnected):
        pass


async def _deny(websocket: WebSocket, response: Response) -> None:
    """Refuse the handshake with an HTTP answer (401, 403) that any client can read; a server without
    the ASGI denial-response extension gets `_refuse` instead."""
    if "websocket.http.response" not in websocket.scope.get("extensions", {}):
        body = response.body
        await _refuse(websocket, _CLOSE_POLICY, bytes(body).decode())
        return
    with contextlib.suppress(OSError):  # the client left during the handshake
        await websocket.send_denial_response(response)


def _error(reason: str) -> dict[str, Any]:
    return {"type": "error", "error": reason}


def _encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def _close_reason(reason: str) -> str:
    """`reason` cut to the 123 bytes a close frame allows."""
    return reason.encode()[:123].decode(errors="ignore")


def _abort_connection(scope: Scope) -> None:
    """Drop the connection of `scope` at once, with whatever is still buffered for it."""
    transport = scope.get(_TRANSPORT)
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()


def _ws_sink(scope: Scope) -> Callable[[list[bytes]], bool] | None:
    """A synchronous write of text frames to this WebSocket, one for each payload and all in one
    write to the connection: what uvicorn's `send` does for each `websocket.send` once its `writable`
    event is set, which it then does without waiting. It returns False, having written nothing, where
    `send` would wait or fail: the caller queues instead, and the writer's `send` (with its watchdog)
    takes over. Internals of the exactly pinned uvicorn and websockets; None under any other server."""
    protocol = scope.get(_OWNER)
    if not isinstance(protocol, WebSocketsSansIOProtocol):
        return None

    def write(texts: list[bytes]) -> bool:
        conn = protocol.conn
        if (
            protocol.close_sent
            or protocol.disconnected
            or not protocol.handshake_complete
            or protocol.initial_response is not None
            or not protocol.writable.is_set()
            or conn.state is not State.OPEN
            or conn.expect_continuation_frame
        ):
            return False
        if conn.extensions:  # permessage-deflate: every frame goes through the connection's compressor
            for text in texts:
                conn.send_text(text)
            data = b"".join(conn.data_to_send())
        else:  # what websockets writes for a server's unfragmented text frame, without its Frame objects
            data = b"".join([_text_frame_header(len(text)) + text for text in texts])
        protocol.transport.write(data)
        return True

    return write


def _text_frame_header(length: int) -> bytes:
    """The header of an unmasked, final text frame carrying `length` bytes (RFC 6455 §5.2)."""
    if length < 126:
        return bytes((0x81, length))
    if length < 1 << 16:
        return b"\x81\x7e" + length.to_bytes(2, "big")
    return b"\x81\x7f" + length.to_bytes(8, "big")


def _http_sink(scope: Scope) -> Callable[[bytes], bool] | None:
    """A synchronous write of one chunk of a streaming response, for `Consumer.sink`: what uvicorn's
    h11 `send` does for `http.response.body` with `more_body` while its flow control lets it write.
    As for `_ws_sink`, False where `send` would wait or fail. Internals of the exactly pinned uvicorn
    and h11; None under any other server."""
    cycle = scope.get(_OWNER)
    if not isinstance(cycle, RequestResponseCycle) or scope.get("method") != "GET":
        return None

    def write(body: bytes) -> bool:
        if cycle.flow.write_paused or cycle.disconnected or cycle.response_complete:
            return False
        if not cycle.response_started:
            return False
        try:
            data = cycle.conn.send(h11.Data(data=body))
        except h11.LocalProtocolError:
            return False
        cycle.transport.write(data)
        return True

    return write


# Linux's `struct tcp_info` (linux/tcp.h), read by offset: the kernel only appends fields to it.
# tcpi_unacked (segments sent and not yet acknowledged) at 24, tcpi_bytes_acked at 120 (Linux 4.1),
# tcpi_notsent_bytes (written, not yet sent) at 144 (Linux 4.6).
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)
_TCP_INFO_BYTES = 148
_TCPI_UNACKED = struct.Struct("=I")
_TCPI_BYTES_ACKED = struct.Struct("=Q")
_TCPI_NOTSENT = struct.Struct("=I")


class _Peer:
    """Whether the peer of one TCP connection takes what is written to it, as its kernel sees it.

    The bytes written for a client wait in the transport's buffer, then in the kernel's send buffer,
    which Linux grows to hundreds of KB and more for a peer that has stopped reading; a send waits
    only once both are full, which at a modest event rate takes minutes, or never comes when the
    events stop. So the peer is judged by what its TCP acknowledges instead: stuck while bytes wait
    for it and it acknowledges none, whichever path wrote them (a send, the fan-out's direct write, a
    ping). Linux only (`TCP_INFO`); `of` is None elsewhere, and only sends are watched."""

    __slots__ = ("_acked_then", "_socket", "_transport")

    def __init__(self, transport: asyncio.WriteTransport, sock: socket.socket) -> None:
        self._transport = transport
        self._socket = sock
        self._acked_then: int | None = None  # bytes acknowledged at the last look, if bytes waited then

    @classmethod
    def of(cls, scope: Scope) -> _Peer | None:
        """The peer of the connection of `scope`, under uvicorn on Linux; None elsewhere."""
        transport = scope.get(_TRANSPORT)
        if _TCP_INFO is None or not isinstance(transport, asyncio.WriteTransport):
            return None
        sock = transport.get_extra_info("socket")
        if (
            sock is None
            or sock.type != socket.SOCK_STREAM
            or sock.family not in (socket.AF_INET, socket.AF_INET6)
        ):
            return None
        peer = cls(transport, sock)
        return peer if peer._look() is not None else None

    def _look(self) -> tuple[int, bool] | None:
        """The bytes the peer has acknowledged so far, and whether bytes wait for it; None when the
        kernel cannot tell (too old, or the connection is gone)."""
        assert _TCP_INFO is not None
        try:
            info = self._socket.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_BYTES)
        except OSError:
            return None
        if len(info) < _TCP_INFO_BYTES:
            return None
        (acked,) = _TCPI_BYTES_ACKED.unpack_from(info, 120)
        (unacked,) = _TCPI_UNACKED.unpack_from(info, 24)
        (notsent,) = _TCPI_NOTSENT.unpack_from(info, 144)
        return acked, bool(unacked or notsent or self._transport.get_write_buffer_size())

    def stuck(self) -> bool:
        """Whether bytes waited for the peer at the previous look and still wait, and it has
        acknowledged none since."""
        look = self._look()
        if look is None:
            self._acked_then = None
            return False
        acked, waiting = look
        then, self._acked_then = self._acked_then, acked if waiting else None
        return waiting and acked == then


class _SendWatch:
    """Sends in flight on one connection, and since when some send has been in flight.

    A watchdog (`expired`) instead of a timeout around every send: a send to a healthy client does
    not wait, and arming a timer (or an anyio cancel scope) per send would cost about as much as the
    send itself. It looks every `timeout / 2` seconds, so a send that waits `timeout` seconds, or a
    peer that takes no byte for `timeout` seconds (`_Peer`), is detected within 1.5 times that."""

    __slots__ = ("_count", "_since", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._count = 0
        self._since = 0.0

    def begin(self) -> None:
        if self._count == 0:
            self._since = time.monotonic()
        self._count += 1

    def end(self) -> None:
        self._count -= 1

    async def expired(self, peer: _Peer | None) -> str:
        """Return, with the reason, once a send has been waiting for `timeout` seconds, or once `peer`
        has had bytes waiting for it and acknowledged none for `timeout` seconds: at three looks in
        a row, half a timeout apart."""
        stuck = 0  # looks in a row at which the peer was stuck since the look before
        while True:
            await asyncio.sleep(self.timeout / 2)
            if self._count and time.monotonic() - self._since > self.timeout:
                return f"send timed out after {self.timeout:g}s: the client is not reading"
            stuck = stuck + 1 if peer is not None and peer.stuck() else 0
            if stuck >= 2:
                return f"the client took no byte waiting for it in {self.timeout:g}s: it is not reading"


class _Close(Exception):
    """Ends a WebSocket session from inside its task group with a close code and reason."""

    def __init__(self, code: int, reason: str, *, abort: bool = False) -> None:
        super().__init__(code, reason)
        self.code, self.reason, self.abort = code, reason, abort


class _WebSocketSession:
    """One WebSocket client: a reader (control messages), a writer (events) and a send watchdog.

    Hub consumers have fixed filters, so a filter change makes a new consumer. The old one leaves
    the hub's routes at once, but its queued events are still delivered first, in order, keeping
    those that match the new filter set: a change neither loses nor reorders events."""

    def __init__(
        self, state: BridgeState, websocket: WebSocket, options: StreamOptions, grant: Grant
    ) -> None:
        self.state = state
        self.websocket = websocket
        self.grant = grant
        self.policy: Policy = options.policy
        self.size = options.size
        self.filters: tuple[str, ...] = ()
        self.consumer: Consumer | None = None
        self._retiring: deque[Consumer] = deque()
        self._changed = asyncio.Event()
        self._dropped = 0
        self._closing: str | None = None
        self._sends = _SendWatch(state.settings.send_timeout)
        self._sink = _ws_sink(websocket.scope)

    # Filters

    def resubscribe(self, filters: tuple[str, ...]) -> None:
        """Put `filters` (validated) in force; synchronous, so no event slips between consumers."""
        if filters == self.filters:
            return
        old = self.consumer
        new = None
        if filters:
            # Retained messages for the filters added, as a new MQTT subscription gets them.
            added = tuple(f for f in filters if f not in self.filters)
            new = self.state.hub.add(
                filters, transport=WS_TRANSPORT, policy=self.policy, size=self.size, retained_for=added
            )
            if self._sink is not None:
                new.sink = self._write_now
        self.filters, self.consumer = filters, new
        if old is not None:
            if old.queued and old.closed is None:
                self.state.hub.remove(old)
                self._retiring.append(old)
            else:
                old.close(_RESUBSCRIBED)
        self._changed.set()

    def _write_now(self, events: list[Event]) -> bool:
        """The consumer's sink: its writer waits for events, and no retired consumer's are left."""
        assert self._sink is not None
        return not self._retiring and self._closing is None and self._sink([event.json for event in events])

    def _wanted(self, item: Item) -> bool:
        """Whether the current filters want `item`, a retired consumer's item: notices always."""
        event = item.event if isinstance(item, Retained) else item
        return not isinstance(event, Event) or wanted_by(self.filters, event)

    def close(self, reason: str) -> None:
        """End the session (bridge shutdown); the writer closes the socket with code 1001."""
        self._closing = reason
        if self.consumer is not None:
            self.consumer.close(reason)
        self._changed.set()

    def release(self) -> None:
        for consumer in (*self._retiring, self.consumer):
            if consumer is not None:
                consumer.close("connection closed")
                self.state.hub.remove(consumer)  # also one that the hub closed while adding it
        self._retiring.clear()
        self.consumer = None
        self.state.hub.turns.leave(self)

    # Tasks

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._read(), name="bridges.ws.read")
                tasks.create_task(self._write(), name="bridges.ws.write")
                tasks.create_task(self._watch_sends(), name="bridges.ws.watchdog")
        except* WebSocketDisconnect:
            pass
        except* _Close as group:
            close = group.exceptions[0]
            assert isinstance(close, _Close)
            if close.abort:
                log.info("aborting WebSocket %s: %s", self.websocket.client, close.reason)
                _abort_connection(self.websocket.scope)
            else:
                await self._close_socket(close.code, close.reason)

    async def _close_socket(self, code: int, reason: str) -> None:
        log.info("closing WebSocket %s (%d): %s", self.websocket.client, code, reason)
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self.websocket.close(code, _close_reason(reason))
        except TimeoutError:
            _abort_connection(self.websocket.scope)
        except (OSError, WebSocketDisconnect, WebSocketDisconnected):
            pass

    async def _send(self, text: str) -> None:
        self._sends.begin()
        try:
            await self.websocket.send_text(text)
        finally:
            self._sends.end()

    async def _watch_sends(self) -> None:
        reason = await self._sends.expired(_Peer.of(self.websocket.scope))
        self.state.hub.count_send_timeout(WS_TRANSPORT)
        raise _Close(_CLOSE_POLICY, reason, abort=True)

    async def _write(self) -> None:
        turns = self.state.hub.turns
        sent = 0
        while True:
            if self._closing is not None:
                raise _Close(_CLOSE_GOING_AWAY, self._closing)
            items: list[Item]
            if self._retiring:
                old = self._retiring[0]
                if not old.queued:
                    self._retiring.popleft()
                    old.close(_RESUBSCRIBED)
                    continue
                items = [item for item in await self._get(old) if self._wanted(item)]  # at once: queued
            elif self.consumer is None:
                turns.leave(self)  # no filters, nothing to send until they change
                self._changed.clear()
                await self._changed.wait()
                continue
            else:
                consumer = self.consumer
                items = await self._get(consumer)
                # The filters changed while this get was waking up: the items are the retired consumer's.
                if consumer is not self.consumer:
                    items = [item for item in items if self._wanted(item)]
            if items:
                await self._send_all([self._frame(item) for item in items])
                sent += len(items)
                if not self._backlog():
                    turns.leave(self)
                elif sent >= BURST:
                    await turns.next(self)
                    sent = 0

    async def _send_all(self, texts: list[bytes]) -> None:
        """Send each of `texts` as a text message: in one write while the connection takes one
        without waiting, else one `send` (watched by the send timeout) each."""
        if self._sink is not None and self._sink(texts):
            return
        for text in texts:
            await self._send(text.decode())

    def _backlog(self) -> bool:
        consumer = self.consumer
        return any(old.queued for old in self._retiring) or (consumer is not None and consumer.queued > 0)

    async def _get(self, consumer: Consumer) -> list[Item]:
        """The consumer's next items, at most a burst; none when it was replaced by a filter change."""
        try:
            return await consumer.get_batch(BURST)
        except ConsumerClosed as exc:
            if self._closing is not None:
                raise _Close(_CLOSE_GOING_AWAY, self._closing) from None
            if exc.reason == _RESUBSCRIBED:
                return []
            raise _Close(_CLOSE_POLICY, exc.reason) from None

    def _frame(self, item: Item) -> bytes:
        if isinstance(item, Event):
            return item.json
        if isinstance(item, Retained):
            return item.event.json
        if isinstance(item, Dropped):
            self._dropped += item.count  # across filter changes, not per hub consumer
            return _encode({"type": "dropped", "count": item.count, "total": self._dropped}).encode()
        return _encode({"type": "reset", "after_id": item.after_id, "oldest_id": item.oldest_id}).encode()

    async def _read(self) -> None:
        websocket = self.websocket
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
            text = message.get("text")
            if text is None:
                reply = _error("binary frames are not supported: send JSON text")
            else:
                reply = await self._handle(text)
            await self._send(_encode(reply))

    async def _handle(self, text: str) -> dict[str, Any]:
        try:
            message = json.loads(text)
        except json.JSONDecodeError as exc:
            return _error(f"invalid JSON: {exc}")
        except RecursionError:
            return _error(f"invalid message: JSON nested deeper than {MAX_JSON_DEPTH} levels")
        if not _within_depth(message, MAX_JSON_DEPTH):
            return _error(f"invalid message: JSON nested deeper than {MAX_JSON_DEPTH} levels")
        if not isinstance(message, dict):
            return _error("a control message must be a JSON object with a 'type'")
        kind = message.get("type")
        if kind in ("subscribe", "unsubscribe"):
            try:
                filters = _filters_of(message)
                if kind == "subscribe":
                    self.grant.check_subscribe(filters)
            except (ValueError, PermissionError) as exc:
                return _error(str(exc))
            if kind == "subscribe":
                wanted = tuple(dict.fromkeys((*self.filters, *filters)))
            else:
                wanted = tuple(f for f in self.filters if f not in filters)
            if len(wanted) > MAX_FILTERS:
                return _error(f"at most {MAX_FILTERS} filters per connection")
            self.resubscribe(wanted)
            return {"type": "subscribed", "filters": list(wanted)}
        if kind == "publish":
            return await self._publish(message)
        return _error(f"unknown message type {kind!r}: expected 'subscribe', 'unsubscribe' or 'publish'")

    async def _publish(self, message: dict[str, Any]) -> dict[str, Any]:
        topic = message.get("topic")
        if not isinstance(topic, str):
            return _error("publish needs a 'topic' string")
        try:
            self.grant.check_publish(topic)
        except (TopicError, PermissionError) as exc:
            return _error(str(exc))
        qos = message.get("qos", 1)
        if type(qos) is not int or qos not in (0, 1, 2):
            return _error(f"qos must be 0, 1 or 2, got {qos!r}")
        payload = message.get("payload", "")
        data = payload.encode() if isinstance(payload, str) else _encode_json(payload)
        timeout = self.state.settings.send_timeout
        try:
            async with asyncio.timeout(timeout):
                await self.state.source.publish(topic, data, qos)
        except (ValueError, BrokerUnavailable) as exc:  # TopicError and PublishTooLarge are ValueErrors
            return _error(str(exc))
        except TimeoutError:
            return _error(f"the broker did not acknowledge the publish within {timeout:g}s")
        return {"type": "published", "topic": topic}


def _within_depth(value: Any, limit: int) -> bool:
    """Whether `value` (decoded JSON) nests arrays and objects at most `limit` levels deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


def _encode_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _filters_of(message: dict[str, Any]) -> tuple[str, ...]:
    filters = message.get("filters")
    if not isinstance(filters, list) or not filters or not all(isinstance(f, str) for f in filters):
        raise ValueError(f"{message['type']} needs 'filters': a non-empty list of topic filters")
    for topic_filter in filters:
        validate_filter(topic_filter)
    return tuple(dict.fromkeys(filters))


_SSE_KIND_LINES = {
    kind: f"event: {kind}\n".encode() for kind in ("telemetry", "status", "ack", "raw", "bridge")
}


def _sse_frame(item: Item) -> bytes:
    """One SSE event, built from the envelope's bytes; the JSON codec never emits a raw CR or LF."""
    if isinstance(item, Event):
        return b"id: %d\n%bdata: %b\n\n" % (item.id, _SSE_KIND_LINES[item.kind], item.json)
    if isinstance(item, Retained):
        # No id: the client's resume point stays on live events, so that a reconnect without one
        # gets the retained messages again, and one with one gets the ring after it.
        return b"%bdata: %b\n\n" % (_SSE_KIND_LINES[item.event.kind], item.event.json)
    if isinstance(item, Dropped):
        return b'event: dropped\ndata: {"count":%d,"total":%d}\n\n' % (item.count, item.total)
    assert isinstance(item, Reset)
    return b'event: reset\ndata: {"after_id":%d,"oldest_id":%d}\n\n' % (item.after_id, item.oldest_id)


class _EventStream(EventSourceResponse):
    """One SSE client's response; its consumer is released however the response ends.

    Frames are built here as bytes (sse-starlette passes bytes through), so the id is written as
    text and sse-starlette's int-id trap cannot arise.

    The send timeout is a `_SendWatch` watchdog, as for WebSocket: sse-starlette's own opens an
    anyio cancel scope around every send, which cost more than the send (bench/README.md)."""

    def __init__(self, state: BridgeState, consumer: Consumer) -> None:
        self._state = state
        self._consumer = consumer
        settings = state.settings
        self._sends = _SendWatch(settings.send_timeout)
        super().__init__(
            self._frames(),
            ping=settings.keepalive,
            sep="\n",
            ping_message_factory=lambda: ServerSentEvent(comment="keepalive", sep="\n"),
        )
        state.opened(consumer)

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        # sse-starlette sends every event and keep-alive through here.
        self._sends.begin()
        try:
            await send(message)
        finally:
            self._sends.end()

    async def _watch_sends(self, scope: Scope) -> None:
        reason = await self._sends.expired(_Peer.of(scope))
        raise SendTimeoutError(reason)

    async def _frames(self) -> AsyncIterator[bytes]:
        consumer = self._consumer
        turns = self._state.hub.turns
        yield b"retry: %d\n\n" % self._state.settings.sse_retry_ms
        while True:
            try:
                items = await consumer.get_batch(BURST)
            except ConsumerClosed:
                # Cut by policy or shutdown: ending the stream makes an EventSource reconnect and
                # resume from its Last-Event-ID.
                return
            # One write for the whole batch: sse-starlette passes bytes through as they are.
            yield b"".join([_sse_frame(item) for item in items])
            if consumer.queued:
                await turns.next(self)
            else:
                turns.leave(self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sink = _http_sink(scope)
        if sink is not None:
            self._consumer.sink = lambda events: sink(b"".join([_sse_frame(event) for event in events]))
        try:
            async with asyncio.TaskGroup() as tasks:
                watchdog = tasks.create_task(self._watch_sends(scope), name="bridges.sse.watchdog")
                try:
                    await super().__call__(scope, receive, send)
                finally:
                    watchdog.cancel()
        except* SendTimeoutError as group:
            self._state.hub.count_send_timeout(SSE_TRANSPORT)
            log.info("cut SSE client %s: %s", scope.get("client"), group.exceptions[0])
            _abort_connection(scope)
        finally:
            consumer = self._consumer
            self._state.ended(consumer)
            consumer.close("stream ended")
            self._state.hub.turns.leave(self)
            self._state.hub.remove(consumer)  # also one that the hub closed while adding it


class _BridgeApp(Starlette):
    """Starlette, with each connection's transport in the scope, so that a cut client can be aborted.

    ASGI has no way to abort a connection. uvicorn's `send` is a method of the object that owns the
    connection's transport (its request cycle, or its WebSocket protocol); any other server leaves
    the key out, and cut clients are then closed the ordinary way."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        owner = getattr(send, "__self__", None)
        transport = getattr(owner, "transport", None)
        if isinstance(transport, asyncio.WriteTransport):
            scope[_TRANSPORT] = transport
            scope[_OWNER] = owner
        await super().__call__(scope, receive, send)


def create_app(
    hub: Hub,
    source: MqttSource,
    *,
    sse_retry_ms: int = 3000,
    keepalive: float = 15.0,
    ws_ping_interval: float = 20.0,
    send_timeout: float = 10.0,
    allowed_origins: tuple[str, ...] = (),
    access: Access | None = None,
    host: str = "127.0.0.1",
    allowed_hosts: tuple[str, ...] = (),
) -> Starlette:
    """The bridge's HTTP app over `hub`, publishing through `source`.

    `keepalive` is the SSE comment interval; `ws_ping_interval` is read by `serve_http` for
    uvicorn's WebSocket pings (interval and timeout); `send_timeout` cuts a client that stops
    reading and bounds a consumer's publish. A browser page may open /ws only from the bridge's own
    origin or one of `allowed_origins`. `access` checks the clients' tokens (None: everyone may do
    everything); requests whose Host is not loopback, an IP address, `host` (the bind address) or
    one of `allowed_hosts` are refused (bridges.auth). `app.state.bridge` is the `BridgeState`."""
    settings = BridgeSettings(
        sse_retry_ms=sse_retry_ms,
        keepalive=keepalive,
        ws_ping_interval=ws_ping_interval,
        send_timeout=send_timeout,
        allowed_origins=tuple(origin.rstrip("/") for origin in allowed_origins),
    )
    state = BridgeState(hub, source, settings, access or Access())
    app = _BridgeApp(
        routes=[
            WebSocketRoute("/ws", state.websocket),
            Route("/events", state.events),
            Route("/healthz", state.healthz),
            Route("/readyz", state.readyz),
            Route("/metrics", state.metrics),
            Route("/whoami", state.whoami),
            Route("/login", state.login, methods=["POST"]),
            Route("/logout", state.logout, methods=["POST"]),
            Route("/", state.dashboard),
            Mount("/dashboard", StaticFiles(directory=DASHBOARD)),
        ]
    )
    app.add_middleware(HostGuard, bind_host=host, allowed_hosts=allowed_hosts)
    app.state.bridge = state
    return app
