"""A raw MQTT 5 test client on fleet.mqtt.v5 (cross-checked against paho's property codec in
tests/fleet/test_mqtt5_codec.py).

Like tests/rawmqtt.py it can misbehave on purpose: withhold acknowledgements, break the protocol,
drop the socket. Every read has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from fleet.mqtt import v5
from fleet.mqtt.properties import EMPTY, Properties, encode_properties
from fleet.packets import FrameReader

TIMEOUT = 5.0


class Raw5:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._frames = FrameReader(1 << 28)
        self._pending: list[tuple[int, int, bytes]] = []
        self._next_id = 0

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> Raw5:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)

    def packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    async def connect(
        self,
        client_id: str,
        *,
        clean: bool = True,
        keepalive: int = 60,
        properties: Properties = EMPTY,
        will: v5.Will | None = None,
        username: str | None = None,
        password: bytes | None = None,
    ) -> v5.Connack:
        self.send_bytes(
            v5.encode_connect(v5.Connect(clean, keepalive, client_id, will, username, password, properties))
        )
        connack = await self.read()
        assert isinstance(connack, v5.Connack), connack
        return connack

    async def subscribe(self, *subs: v5.Subscription, identifier: int | None = None) -> tuple[int, ...]:
        props = Properties(subscription_identifiers=(identifier,)) if identifier else EMPTY
        packet_id = self.packet_id()
        self.send_bytes(v5.encode_subscribe(packet_id, list(subs), props))
        suback = await self.read()
        assert isinstance(suback, v5.Suback), suback
        assert suback.packet_id == packet_id, suback
        return suback.reasons

    async def unsubscribe(self, *filters: str) -> tuple[int, ...]:
        self.send_bytes(v5.encode_unsubscribe(self.packet_id(), list(filters)))
        unsuback = await self.read()
        assert isinstance(unsuback, v5.Unsuback), unsuback
        return unsuback.reasons

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        *,
        retain: bool = False,
        properties: Properties = EMPTY,
        packet_id: int | None = None,
    ) -> int:
        if qos and packet_id is None:
            packet_id = self.packet_id()
        self.send_bytes(
            v5.encode_publish(
                topic.encode(),
                payload,
                qos,
                retain=retain,
                packet_id=packet_id or 0,
                properties=encode_properties(properties),
            )
        )
        return packet_id or 0

    async def publish_acked(
        self, topic: str, payload: bytes, qos: int, *, retain: bool = False, properties: Properties = EMPTY
    ) -> int:
        """Publish at QoS 1 or 2 and finish the flow; return the reason code of PUBACK or PUBREC."""
        packet_id = self.publish(topic, payload, qos, retain=retain, properties=properties)
        ack = await self.read()
        assert isinstance(ack, v5.Ack), ack
        assert ack.packet_id == packet_id, ack
        if qos == 2 and ack.reason < 0x80:
            self.send_bytes(v5.encode_ack(6, packet_id))
            comp = await self.read()
            assert isinstance(comp, v5.Ack), comp
            assert comp.kind == 7, comp
        return ack.reason

    def ack(self, kind: int, packet_id: int) -> None:
        self.send_bytes(v5.encode_ack(kind, packet_id))

    async def disconnect(self, reason: int = 0, properties: Properties = EMPTY) -> None:
        self.send_bytes(v5.encode_disconnect(reason, properties))
        await self.writer.drain()
        self.writer.close()

    def abort(self) -> None:
        """Drop the connection without DISCONNECT, as a device losing power would."""
        self.writer.transport.abort()

    async def read(self, timeout: float = TIMEOUT) -> object:
        """The next packet from the broker, decoded strictly."""
        async with asyncio.timeout(timeout):
            while not self._pending:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("the broker closed the connection")
                self._pending.extend(self._frames.feed(data))
        return v5.decode_server_packet(*self._pending.pop(0))

    async def read_publish(self, timeout: float = TIMEOUT) -> v5.Publish:
        packet = await self.read(timeout)
        assert isinstance(packet, v5.Publish), packet
        return packet

    async def read_disconnect(self, timeout: float = TIMEOUT) -> int:
        """The reason code of the DISCONNECT the broker sends, skipping other packets; then EOF."""
        async with asyncio.timeout(timeout):
            while True:
                packet = await self.read(timeout)
                if isinstance(packet, v5.Disconnect):
                    break
            await self.expect_closed(timeout)
        return packet.reason

    async def expect_closed(self, timeout: float = TIMEOUT) -> None:
        async with asyncio.timeout(timeout):
            data = await self.reader.read(65536)
        assert not self._pending, f"expected the broker to close the connection, got {self._pending!r}"
        assert data == b"", f"expected the broker to close the connection, got {data!r}"

    async def expect_nothing(self, seconds: float) -> None:
        """Assert the broker sends nothing at all for `seconds` (for 'must not deliver' checks)."""
        assert not self._pending, self._pending
        try:
            async with asyncio.timeout(seconds):
                data = await self.reader.read(1)
        except TimeoutError:
            return
        raise AssertionError(f"expected silence, got {data!r}")

    async def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Return once `predicate()` holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
