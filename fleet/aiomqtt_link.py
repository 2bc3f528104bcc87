"""`AiomqttLink`: the `Link` API on aiomqtt, the reference transport for fidelity checks and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl as ssl_module
from collections.abc import Callable
from typing import Any, cast

from fleet.errors import (
    ConnectionLost,
    ConnectRefused,
    TransportError,
    UnsupportedOperation,
)
from fleet.packets import (
    Connect,
    Publish,
)
from fleet.topics import validate_topic
from fleet.transport import ClientSession, Endpoint, tls_context, validated_filters

log = logging.getLogger("fleet.transport")

__all__ = ["AiomqttLink"]


# aiomqtt reports a v3.1.1 CONNACK refusal as paho's MQTT 5 reason code; these are the 3.1.1 codes.
_PAHO_REFUSALS = {132: 1, 133: 2, 136: 3, 134: 4, 135: 5}


class AiomqttLink:
    """The `Link` API on aiomqtt 2.5.1: the reference transport for fidelity checks and benchmarks.

    What aiomqtt allows, and where this differs from `Link`:

    - `abort()` shuts down the paho socket (`shutdown(SHUT_RDWR)`) without DISCONNECT. The broker sees
      the connection end and publishes the will, as with `Link.abort()`; paho then notices the EOF
      and closes the socket itself.
    - `go_silent()` raises UnsupportedOperation: paho writes PINGREQ from its own housekeeping and
      has no way to stop writing while keeping the socket open.
    - There is no client-side session: each `open()` makes a new paho client, which knows nothing of
      the previous one's unacknowledged messages, so nothing is re-sent on reconnect [MQTT-4.4.0-1].
      The `session` argument is accepted for API compatibility only. Publish futures still pending
      when the link ends fail with ConnectionLost.
    - `publish()` runs aiomqtt's `Client.publish` coroutine in a task, because the API is
      synchronous; the task's Event and timeout are aiomqtt's own cost, kept on purpose for the
      benchmark. Incoming messages are read by one task per link from `Client.messages`.
    - CONNACK's session-present flag is read by wrapping paho's `on_connect` (aiomqtt hides it).
    - Incoming PUBLISH values carry `dup=False`: aiomqtt does not expose the flag.
    """

    def __init__(self, session: ClientSession, on_message: Callable[[Publish], None]) -> None:
        self._session = session
        self._on_message = on_message
        self._loop = asyncio.get_running_loop()
        self._closed: asyncio.Future[Exception | None] = self._loop.create_future()
        self._closed_view: asyncio.Future[Exception | None] | None = None
        self._client: Any = None
        self._session_present = False
        self._aborted = False
        self._clean_close = False
        self._pending: set[asyncio.Future[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        endpoint: Endpoint,
        connect: Connect,
        *,
        session: ClientSession,
        on_message: Callable[[Publish], None],
        ssl: ssl_module.SSLContext | None = None,
        timeout: float = 10.0,
    ) -> tuple[AiomqttLink, bool]:
        """Connect as `Link.open` does; same errors, same return value."""
        link = cls(session, on_message)
        await link._open(endpoint, connect, tls_context(endpoint, ssl), timeout)
        return link, link._session_present

    async def _open(
        self, endpoint: Endpoint, connect: Connect, context: ssl_module.SSLContext | None, timeout: float
    ) -> None:
        import aiomqtt
        from aiomqtt.exceptions import MqttConnectError

        if connect.clean_session:
            self._session.discard(f"{connect.client_id!r} connected with a clean session")
        will = connect.will
        client = aiomqtt.Client(
            endpoint.host,
            endpoint.port,
            identifier=connect.client_id,
            clean_session=connect.clean_session,
            keepalive=connect.keepalive,
            will=None if will is None else aiomqtt.Will(will.topic, will.payload, will.qos, will.retain),
            transport="websockets" if endpoint.websocket else "tcp",
            websocket_path=endpoint.path if endpoint.websocket else None,
            tls_context=context,
            timeout=timeout,
        )
        paho = client._client
        if connect.username is not None:
            # paho keeps a bytes password as it is (its annotation says str).
            paho.username_pw_set(connect.username, cast(str | None, connect.password))
        on_connect = paho.on_connect

        def record_session_present(*args: Any) -> None:
            self._session_present = bool(args[2].session_present)
            if on_connect is not None:
                on_connect(*args)

        paho.on_connect = record_session_present
        self._client = client
        try:
            async with asyncio.timeout(timeout):
                await client.__aenter__()
        except MqttConnectError as exc:
            rc = exc.rc
            code = rc if isinstance(rc, int) else (0 if rc is None else int(rc.value))
            raise ConnectRefused(_PAHO_REFUSALS.get(code, code)) from exc
        except aiomqtt.MqttError as exc:
            raise TransportError(f"cannot connect to {endpoint}: {exc}") from exc
        except TimeoutError:
            raise TransportError(f"{endpoint}: no CONNACK within {timeout}s") from None
        client._disconnected.add_done_callback(self._disconnected)
        self._reader = self._loop.create_task(self._read(), name=f"aiomqtt[{connect.client_id}].fleet-reader")

    async def _read(self) -> None:
        import aiomqtt

        with contextlib.suppress(aiomqtt.MqttError):
            async for message in self._client.messages:
                packet = Publish(
                    message.topic.value,
                    message.payload,
                    message.qos,
                    message.retain,
                    False,
                    message.mid or None,
                )
                try:
                    self._on_message(packet)
                except Exception:
                    log.exception("on_message failed for a message on %s", packet.topic)

    def _disconnected(self, future: asyncio.Future[None]) -> None:
        error = None if future.cancelled() else future.exception()
        result: Exception | None
        if self._clean_close:
            result = None
        elif self._aborted:
            result = ConnectionLost("the link was aborted")
        else:
            result = ConnectionLost(f"the connection failed: {error}")
            result.__cause__ = error
        self._end(result)

    def _end(self, result: Exception | None) -> None:
        if self._reader is not None:
            self._reader.cancel()
        for task in list(self._tasks):
            task.cancel()
        for future in list(self._pending):
            if not future.done():
                future.set_exception(ConnectionLost("the link closed before the broker acknowledged"))
                future.exception()
        self._pending.clear()
        if not self._closed.done():
            self._closed.set_result(result)

    @property
    def closed(self) -> asyncio.Future[Exception | None]:
        """As `Link.closed`."""
        view = self._closed_view
        if view is None or view.cancelled():
            view = self._closed_view = asyncio.shield(self._closed)
        return view

    @property
    def connected(self) -> bool:
        return self._client is not None and not self._closed.done() and not self._aborted

    @property
    def session(self) -> ClientSession:
        return self._session

    def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> asyncio.Future[None] | None:
        """As `Link.publish`, through `aiomqtt.Client.publish` run in a task."""
        validate_topic(topic)
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS must be 0, 1 or 2, got {qos}")
        if not self.connected:
            raise ConnectionLost("the link is closed")
        task = self._loop.create_task(self._client.publish(topic, payload, qos, retain))
        self._tasks.add(task)
        if qos == 0:
            task.add_done_callback(self._forget)
            return None
        future: asyncio.Future[None] = self._loop.create_future()
        self._pending.add(future)

        def settle(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            self._pending.discard(future)
            if future.done():
                return
            if task.cancelled():
                future.set_exception(ConnectionLost("the link closed before the broker acknowledged"))
            elif task.exception() is not None:
                future.set_exception(TransportError(f"publish failed: {task.exception()}"))
            else:
                future.set_result(None)
                return
            future.exception()  # Not logged if nobody awaits it, as with Link's futures.

        task.add_done_callback(settle)
        return future

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("a QoS 0 publish over aiomqtt failed: %s", task.exception())

    async def subscribe(self, topics: list[tuple[str, int]], timeout: float = 10.0) -> tuple[int, ...]:
        """As `Link.subscribe`."""
        import aiomqtt

        validated_filters(topics)
        try:
            codes = await self._client.subscribe(topics, timeout=timeout)
        except aiomqtt.MqttError as exc:
            raise TransportError(f"subscribe failed: {exc}") from exc
        return tuple(int(getattr(code, "value", code)) for code in codes)

    async def disconnect(self, timeout: float = 10.0) -> None:
        """Send DISCONNECT and close. paho closes its socket right after writing DISCONNECT, so unlike
        `Link.disconnect()` this does not wait for the broker to have processed it."""
        if self._closed.done():
            return
        self._clean_close = True
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                await self._client.__aexit__(None, None, None)
        self._end(None)

    def abort(self) -> None:
        """Shut the socket down without DISCONNECT; paho sees the EOF and ends the connection."""
        if self._closed.done() or self._aborted:
            return
        self._aborted = True
        sock = self._client._client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def go_silent(self) -> None:
        """Unsupported over aiomqtt (see the class docstring)."""
        raise UnsupportedOperation(
            "go_silent() is not possible over aiomqtt: paho sends PINGREQ on its own and cannot stop "
            "writing while keeping the socket open; use Link"
        )
