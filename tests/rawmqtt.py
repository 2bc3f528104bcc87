"""A raw MQTT 3.1.1 test client that encodes and decodes with amqtt's packet codec, not ours.

It can do what well-behaved clients never do: withhold acknowledgements, drop the socket without
DISCONNECT, go silent, send garbage. Every read has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from amqtt.adapters import StreamReaderAdapter
from amqtt.mqtt import packet_class
from amqtt.mqtt.connect import ConnectPacket, ConnectPayload, ConnectVariableHeader
from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.mqtt.packet import MQTTFixedHeader
from amqtt.mqtt.pingreq import PingReqPacket
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.pubcomp import PubcompPacket
from amqtt.mqtt.publish import PublishPacket
from amqtt.mqtt.pubrec import PubrecPacket
from amqtt.mqtt.pubrel import PubrelPacket
from amqtt.mqtt.subscribe import SubscribePacket
from amqtt.mqtt.unsubscribe import UnsubscribePacket

TIMEOUT = 5.0


@dataclass(frozen=True)
class Received:
    """One PUBLISH as the client saw it on the wire."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int | None


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._adapter = StreamReaderAdapter(reader)
        self._next_id = 0

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> RawClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)

    def send(self, packet: Any) -> None:
        self.writer.write(packet.to_bytes())

    def packet_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def connect(
        self,
        client_id: str,
        *,
        clean: bool = True,
        keepalive: int = 60,
        will: tuple[str, bytes, int, bool] | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> tuple[bool, int]:
        """Send CONNECT; return (session present, return code) from the CONNACK."""
        header = ConnectVariableHeader(keep_alive=keepalive)
        header.clean_session_flag = clean
        payload = ConnectPayload(client_id=client_id, username=username, password=password)
        if will is not None:
            header.will_flag = True
            payload.will_topic, payload.will_message, header.will_qos, header.will_retain_flag = will
        header.username_flag = username is not None
        header.password_flag = password is not None
        self.send(ConnectPacket(variable_header=header, payload=payload))
        connack = await self.read()
        assert type(connack).__name__ == "ConnackPacket", connack
        return bool(connack.variable_header.session_parent), int(connack.variable_header.return_code)

    async def subscribe(self, *topics: tuple[str, int]) -> list[int]:
        self.send(SubscribePacket.build(list(topics), self.packet_id()))
        suback = await self.read()
        assert type(suback).__name__ == "SubackPacket", suback
        return list(suback.payload.return_codes)

    async def unsubscribe(self, *filters: str) -> None:
        self.send(UnsubscribePacket.build(list(filters), self.packet_id()))
        unsuback = await self.read()
        assert type(unsuback).__name__ == "UnsubackPacket", unsuback

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        *,
        retain: bool = False,
        packet_id: int | None = None,
        dup: bool = False,
    ) -> int | None:
        if qos and packet_id is None:
            packet_id = self.packet_id()
        self.send(PublishPacket.build(topic, payload, packet_id if qos else None, dup, qos, retain))
        return packet_id

    def puback(self, packet_id: int) -> None:
        self.send(PubackPacket.build(packet_id))

    def pubrec(self, packet_id: int) -> None:
        self.send(PubrecPacket.build(packet_id))

    def pubrel(self, packet_id: int) -> None:
        self.send(PubrelPacket.build(packet_id))

    def pubcomp(self, packet_id: int) -> None:
        self.send(PubcompPacket.build(packet_id))

    def pingreq(self) -> None:
        self.send(PingReqPacket())

    async def disconnect(self) -> None:
        self.send(DisconnectPacket())
        await self.writer.drain()
        self.writer.close()

    def abort(self) -> None:
        """Drop the connection without DISCONNECT, as a device losing power would."""
        self.writer.transport.abort()

    async def read(self, timeout: float = TIMEOUT) -> Any:
        """The next packet from the broker (an amqtt packet object)."""
        async with asyncio.timeout(timeout):
            fixed = await MQTTFixedHeader.from_stream(self._adapter)
            if fixed is None:
                raise ConnectionError("the broker closed the connection")
            return await packet_class(fixed).from_stream(self._adapter, fixed_header=fixed)

    async def read_publish(self, timeout: float = TIMEOUT) -> Received:
        packet = await self.read(timeout)
        assert type(packet).__name__ == "PublishPacket", packet
        return Received(
            packet.topic_name,
            bytes(packet.data),
            packet.qos,
            packet.retain_flag,
            packet.dup_flag,
            packet.packet_id,
        )

    async def expect_closed(self, timeout: float = TIMEOUT) -> None:
        """Wait until the broker closes this connection; fail if it sends anything but EOF."""
        async with asyncio.timeout(timeout):
            data = await self.reader.read(65536)
        assert data == b"", f"expected the broker to close the connection, got {data!r}"

    async def expect_nothing(self, seconds: float) -> None:
        """Assert the broker sends nothing at all for `seconds` (for 'must not deliver' checks)."""
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
