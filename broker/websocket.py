"""MQTT over WebSocket: a write transport that lets `Connection` run on a websockets connection."""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

__all__ = ["WebSocketTransport"]

_HIGH_WATER = 256 * 1024


class WebSocketTransport(asyncio.WriteTransport):
    """Buffers writes and sends them as binary messages from one sender task."""

    def __init__(self, websocket: ServerConnection, protocol: asyncio.BaseProtocol) -> None:
        super().__init__()
        self._websocket = websocket
        self._protocol = protocol
        self._buffer = bytearray()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._finished = False
        self._paused = False
        address = websocket.remote_address
        self.peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._websocket.remote_address
        return self._websocket.transport.get_extra_info(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        self._buffer += data
        self._wakeup.set()
        if not self._paused and len(self._buffer) > _HIGH_WATER:
            self._paused = True
            self._protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """The high-water mark is fixed for WebSocket connections."""

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

    def finish(self) -> None:
        """The reader is done: let the sender task end."""
        self._finished = True
        self._wakeup.set()

    async def run_sender(self) -> None:
        websocket = self._websocket
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                if self._buffer:
                    data = bytes(self._buffer)
                    self._buffer.clear()
                    await websocket.send(data)
                    if self._paused:
                        self._paused = False
                        self._protocol.resume_writing()
                if self._finished:
                    return
                if self._closing and not self._buffer:
                    await websocket.close()
                    return
        except ConnectionClosed:
            return
