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
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import uvicorn
from starlette.applications import Starlette

from bridges.app import BridgeState
from bridges.tls import TlsFiles

__all__ = ["MAX_WS_MESSAGE", "serve_http"]

# Client messages are small control messages and commands.
MAX_WS_MESSAGE = 1 << 20


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
) -> AsyncIterator[int]:
    """Serve `app` on `host:port` until the block exits; yield the bound port (port 0 picks one).

    A port in use raises OSError here, before anything runs. On exit the app's streams are ended
    (`BridgeState.close`), uvicorn stops, and connections still open after `shutdown_timeout`
    seconds have their tasks cancelled. With `tls`, it serves HTTPS and WSS (and asks for client
    certificates when `tls.client_ca` is set)."""
    state = getattr(app.state, "bridge", None)
    ping = state.settings.ws_ping_interval if isinstance(state, BridgeState) else 20.0
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # Bound here, not by uvicorn: a bind error is an OSError for the caller instead of sys.exit.
    sock = socket.create_server((host, port), family=family, backlog=2048)
    bound_port: int = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan="off",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_ping_interval=ping or None,
        ws_ping_timeout=ping or None,
        ws_max_size=MAX_WS_MESSAGE,
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
        server.should_exit = True
        try:
            await task
        finally:
            sock.close()
