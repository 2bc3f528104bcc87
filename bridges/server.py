"""Run the bridge's HTTP app on uvicorn inside the caller's event loop.

    async with serve_http(create_app(hub, source), port=8080) as port:
        ...

uvicorn is configured for this bridge, not left at its defaults:
- WebSocket compression is off (`ws_per_message_deflate=False`): envelopes are small JSON objects,
  and permessage-deflate about halved WebSocket throughput in BRIDGE-NOTES. Bandwidth-starved
  clients can take SSE through a compressing proxy instead.
- The WebSocket implementation is `websockets-sansio` (what uvicorn picks with websockets
  installed), named here so that the legacy implementation, which warns, is never chosen.
- Pings every `ws_ping_interval` (from the app's settings) with the same timeout cut dead peers.
- No lifespan, no access log, no signal handlers, no logging configuration: the owner of the loop
  handles Ctrl-C (by cancelling) and configures logging.
- Nagle's algorithm is off on every connection (`TCP_NODELAY`), as asyncio sets it on the
  connections of servers it binds: it skips sockets bound as this one is (`socket.create_server`,
  protocol 0). With it on, an event written while the client had not yet acknowledged the one before
  waited for the client's delayed ACK, up to 40 ms: the p99 latency of WebSocket and SSE at half the
  bridge's ceiling was 40-50 ms, gRPC's (which grpc sets itself) 17 (bench/README.md).
- Hardened against slow and many clients (`_GuardedH11Protocol`): a client must send a whole
  request, headers and body, within `request_timeout` seconds of connecting or of its previous
  response, or its connection is closed (uvicorn has no header timeout: 1,000 partial requests
  stayed open forever). Past `max_connections` open connections, a request gets 503
  (`limit_concurrency`), and so does a WebSocket handshake, which uvicorn would let through.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import h11
import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol

from bridges.app import BridgeState
from bridges.tls import TlsFiles

__all__ = ["MAX_CONNECTIONS", "MAX_WS_MESSAGE", "REQUEST_TIMEOUT", "serve_http"]

# Client messages are small control messages and commands: a publish's payload is at most
# max_publish_bytes, and a larger message closes the WebSocket with 1009.
MAX_WS_MESSAGE = 256 * 1024
# Open HTTP connections (WebSocket and SSE included) before requests get 503.
MAX_CONNECTIONS = 100
# Seconds a client has to send a whole request.
REQUEST_TIMEOUT = 10.0


class _GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with `TCP_NODELAY`, a request timeout, and the connection cap applied to
    WebSocket handshakes too. It overrides `connection_made`, `on_response_complete`,
    `handle_websocket_upgrade` and `connection_lost`, and reads `conn`, `connections`, `transport`
    and `limit_concurrency`: internals of the exactly pinned uvicorn and h11."""

    request_timeout = REQUEST_TIMEOUT  # set per server by `serve_http`, on a subclass
    _request_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm_request_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_request_timer()  # the next request, on a kept-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
        super().connection_lost(exc)

    def _arm_request_timer(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
        self._request_timer = self.loop.call_later(self.request_timeout, self._request_timed_out)

    def _request_timed_out(self) -> None:
        """Close the connection unless the client has sent its whole request (or was upgraded)."""
        self._request_timer = None
        transport = self.transport
        if transport.is_closing() or transport.get_protocol() is not self:
            return
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
            transport.close()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        limit = self.limit_concurrency
        if limit is not None and len(self.connections) >= limit:
            response = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
            body = b"too many connections: try again later"
            self.transport.write(
                b"%bcontent-length: %d\r\nconnection: close\r\n\r\n%b" % (response, len(body), body)
            )
            self.transport.close()
            return
        super().handle_websocket_upgrade(event)


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signals to the owner of the event loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
    try:
        await server.serve(sockets=[sock])
    except SystemExit as exc:  # uvicorn exits the process when its startup fails
        raise RuntimeError(f"the HTTP server failed to start (exit status {exc.code})") from None


@contextlib.asynccontextmanager
async def serve_http(
    app: Starlette,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    startup_timeout: float = 10.0,
    shutdown_timeout: int = 5,
    tls: TlsFiles | None = None,
    max_connections: int = MAX_CONNECTIONS,
    request_timeout: float = REQUEST_TIMEOUT,
) -> AsyncIterator[int]:
    """Serve `app` on `host:port` until the block exits; yield the bound port (port 0 picks one).

    Past `max_connections` open connections, requests and WebSocket handshakes get 503; a client
    that has not sent a whole request `request_timeout` seconds after connecting (or after its
    previous response) is disconnected.

    A port in use raises OSError here, before anything runs. On exit the app's streams are ended
    (`BridgeState.close`) and given up to `shutdown_timeout` seconds to close themselves, uvicorn
    stops, and connections still open after `shutdown_timeout` seconds more have their tasks
    cancelled. With `tls`, it serves HTTPS and WSS (and asks for client
    certificates when `tls.client_ca` is set)."""
    state = getattr(app.state, "bridge", None)
    ping = state.settings.ws_ping_interval if isinstance(state, BridgeState) else 20.0
    max_message = MAX_WS_MESSAGE
    if isinstance(state, BridgeState):  # room for a publish of max_publish_bytes in its JSON message
        max_message = max(max_message, 2 * state.source.settings.max_publish_bytes)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # Bound here, not by uvicorn: a bind error is an OSError for the caller instead of sys.exit.
    sock = socket.create_server((host, port), family=family, backlog=2048)
    bound_port: int = sock.getsockname()[1]
    protocol = type("GuardedH11Protocol", (_GuardedH11Protocol,), {"request_timeout": request_timeout})
    config = uvicorn.Config(
        app,
        http=protocol,
        limit_concurrency=max_connections,
        lifespan="off",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_ping_interval=ping or None,
        ws_ping_timeout=ping or None,
        ws_max_size=max_message,
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=shutdown_timeout,
        **(tls.uvicorn_options() if tls is not None else {}),
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(_serve(server, sock), name=f"bridges.http[{host}:{bound_port}]")
    try:
        async with asyncio.timeout(startup_timeout):
            while not server.started:
                if task.done():
                    task.result()  # raises what stopped it
                    raise RuntimeError("the HTTP server stopped before it started")
                await asyncio.sleep(0.005)
        yield bound_port
    finally:
        if isinstance(state, BridgeState):
            state.close()
            # Let the streams close themselves (WebSocket code 1001) before uvicorn closes what is
            # left (1012): on a busy machine their writers may not have run yet.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(shutdown_timeout):
                    await state.idle.wait()
        server.should_exit = True
        try:
            await task
        finally:
            sock.close()
