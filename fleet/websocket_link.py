"""MQTT over WebSocket for device links: a write transport that runs a `Link` on a websockets client."""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
from typing import Any

from fleet.errors import (
    ProtocolError,
    TransportError,
)
from fleet.transport import Endpoint, Link

__all__ = ["WebSocketTransport"]


class WebSocketTransport(asyncio.WriteTransport):
    """Runs a `Link` over a websockets client connection: a reader task feeds each binary message to
    the link, and a sender task sends what the link wrote as binary messages [MQTT-6.0.0-1]."""

    def __init__(self, websocket: Any, link: Link, name: str) -> None:
        super().__init__()
        self._websocket = websocket
        self._link = link
        self._buffer = bytearray()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._tasks = (
            asyncio.create_task(self._read(), name=f"fleet.link[{name}].ws-reader"),
            asyncio.create_task(self._send(), name=f"fleet.link[{name}].ws-sender"),
        )

    @classmethod
    async def open(
        cls, link: Link, endpoint: Endpoint, context: ssl_module.SSLContext | None, name: str
    ) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import WebSocketException
        from websockets.typing import Subprotocol

        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
        uri = f"{endpoint.scheme}://{host}:{endpoint.port}{endpoint.path}"
        try:
            websocket = await connect(
                uri,
                subprotocols=[Subprotocol("mqtt")],
                compression=None,
                proxy=None,
                open_timeout=None,  # Link.open bounds the whole handshake.
                ping_interval=None,  # MQTT keepalive is the liveness check; a silent link stays silent.
                max_size=None,  # The link's FrameReader enforces the packet size.
                ssl=context,
            )
        except WebSocketException as exc:
            raise TransportError(f"WebSocket handshake with {endpoint} failed: {exc}") from exc
        if websocket.subprotocol != "mqtt":
            await websocket.close()
            raise TransportError(f"{endpoint} did not accept the WebSocket subprotocol 'mqtt'")
        transport = cls(websocket, link, name)
        link.connection_made(transport)

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        link = self._link
        error: Exception | None = None
        try:
            async for message in self._websocket:
                if isinstance(message, str):
                    link._fail(
                        ProtocolError("a text WebSocket frame; MQTT uses binary frames [MQTT-6.0.0-1]")
                    )
                    break
                link.data_received(message)
        except ConnectionClosed as exc:
            if exc.rcvd is None or exc.rcvd.code != 1000:
                error = exc
        finally:
            self._closing = True
            self._wakeup.set()
            self._websocket.transport.abort()
            link.connection_lost(error)

    async def _send(self) -> None:
        from websockets.exceptions import ConnectionClosed

        websocket = self._websocket
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                if self._buffer:
                    data = bytes(self._buffer)
                    self._buffer.clear()
                    await websocket.send(data)
                if self._closing:
                    await websocket.close()
                    return

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._websocket.transport.get_extra_info(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closing:
            self._buffer += data
            self._wakeup.set()

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """WebSocket links buffer without a limit (they are few)."""

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True
        self._wakeup.set()

    def abort(self) -> None:
        self._closing = True
        self._buffer.clear()
        self._websocket.transport.abort()
        self._wakeup.set()
