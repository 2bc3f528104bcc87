"""MQTT 3.1.1 packets: values, strict sans-I/O decoders for both directions, and encoders.

No I/O happens here. A transport feeds bytes to a `FrameReader`, gets whole frames back, and
`decode_client_packet` (on the broker) or `decode_server_packet` (on a client) turns each into a
value or raises `ProtocolError` naming the rule broken. The encoders return bytes for the wire.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from fleet.errors import ProtocolError, TopicError, UnsupportedProtocol
from fleet.topics import validate_filter, validate_topic

__all__ = [
    "CONNACK_ACCEPTED",
    "CONNACK_BAD_CREDENTIALS",
    "CONNACK_IDENTIFIER_REJECTED",
    "CONNACK_NOT_AUTHORIZED",
    "CONNACK_UNACCEPTABLE_PROTOCOL",
    "SUBACK_FAILURE",
    "Connack",
    "Connect",
    "Cursor",
    "Disconnect",
    "FrameReader",
    "PacketId",
    "Pingreq",
    "Pingresp",
    "Publish",
    "Suback",
    "Subscribe",
    "Unsuback",
    "Unsubscribe",
    "Will",
    "connack",
    "decode_client_packet",
    "decode_server_packet",
    "disconnect",
    "encode_connect",
    "encode_publish",
    "encode_subscribe",
    "encode_unsubscribe",
    "pingreq",
    "pingresp",
    "puback",
    "pubcomp",
    "pubrec",
    "pubrel",
    "suback",
    "unsuback",
]

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

CONNACK_ACCEPTED = 0
CONNACK_UNACCEPTABLE_PROTOCOL = 1
CONNACK_IDENTIFIER_REJECTED = 2
CONNACK_BAD_CREDENTIALS = 4
CONNACK_NOT_AUTHORIZED = 5
SUBACK_FAILURE = 0x80

MAX_REMAINING_LENGTH = 268_435_455
_U16 = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True)
class Connect:
    protocol_name: str
    protocol_level: int
    clean_session: bool
    keepalive: int
    client_id: str
    will: Will | None
    username: str | None
    password: bytes | None


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int | None


@dataclass(frozen=True, slots=True)
class PacketId:
    """PUBACK, PUBREC, PUBREL or PUBCOMP: `kind` is the packet type number."""

    kind: int
    packet_id: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    topics: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    filters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Pingreq:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    pass


@dataclass(frozen=True, slots=True)
class Connack:
    session_present: bool
    return_code: int


@dataclass(frozen=True, slots=True)
class Suback:
    packet_id: int
    return_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Unsuback:
    packet_id: int


@dataclass(frozen=True, slots=True)
class Pingresp:
    pass


ClientPacket = Connect | Publish | PacketId | Subscribe | Unsubscribe | Pingreq | Disconnect
ServerPacket = Connack | Publish | PacketId | Suback | Unsuback | Pingresp


class FrameReader:
    """Splits a byte stream into whole MQTT frames, refusing any larger than `max_size` up front."""

    __slots__ = ("_buffer", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buffer = bytearray()

    def feed(self, data: bytes | memoryview) -> list[tuple[int, int, bytes]]:
        """Add `data`; return the complete frames as (packet type, flags, body)."""
        buf = self._buffer
        buf += data
        frames: list[tuple[int, int, bytes]] = []
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            index = pos + 1
            multiplier = 1
            length = 0
            while True:
                if index >= size:
                    break
                byte = buf[index]
                index += 1
                length += (byte & 0x7F) * multiplier
                if not byte & 0x80:
                    multiplier = 0
                    break
                multiplier *= 128
                if multiplier > 128**3:
                    raise ProtocolError("malformed remaining length: more than 4 bytes [MQTT-2.2.3]")
            if multiplier:
                break
            if length > self.max_size:
                too_large = f"a packet of {length} bytes exceeds the maximum size {self.max_size}"
                raise ProtocolError(f"{too_large} [MQTT-3.2.2-15]", 0x95)
            end = index + length
            if end > size:
                break
            first = buf[pos]
            frames.append((first >> 4, first & 0x0F, bytes(buf[index:end])))
            pos = end
        if pos:
            del buf[:pos]
        return frames

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole frame."""
        return len(self._buffer)


class Cursor:
    """Reads one packet body's fields in order; an error names the field and the spec statement.

    MQTT 3.1.1 and MQTT 5 (fleet.mqtt.v5) share it; they number the UTF-8 rules differently.
    """

    __slots__ = ("data", "pos", "where")
    UTF8_RULE = "MQTT-1.5.3"  # MQTT 3.1.1's numbering; MQTT 5 says MQTT-1.5.4

    def __init__(self, data: bytes, where: str = "packet") -> None:
        self.data = data
        self.pos = 0
        self.where = where

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def u8(self, what: str) -> int:
        if self.pos >= len(self.data):
            raise ProtocolError(f"{self.where} too short: {what} is missing")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def u16(self, what: str) -> int:
        if self.pos + 2 > len(self.data):
            raise ProtocolError(f"{self.where} too short: {what} is missing")
        (value,) = _U16.unpack_from(self.data, self.pos)
        self.pos += 2
        return int(value)

    def binary(self, what: str) -> bytes:
        length = self.u16(what)
        end = self.pos + length
        if end > len(self.data):
            raise ProtocolError(f"{self.where} too short: {what} claims {length} bytes")
        value = self.data[self.pos : end]
        self.pos = end
        return value

    def text(self, what: str) -> str:
        raw = self.binary(what)
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"{self.where} {what} is not valid UTF-8 [{self.UTF8_RULE}-1]") from exc
        if "\x00" in value:
            raise ProtocolError(f"{self.where} {what} contains U+0000 [{self.UTF8_RULE}-2]")
        return value


def _packet_id(cursor: Cursor, what: str) -> int:
    # Cursor.u16 written out, so that the field's name is only put together for an error.
    data, pos = cursor.data, cursor.pos
    if pos + 2 > len(data):
        raise ProtocolError(f"{cursor.where} too short: {what} packet identifier is missing")
    value: int
    (value,) = _U16.unpack_from(data, pos)
    cursor.pos = pos + 2
    if value == 0:
        raise ProtocolError(f"{what} packet identifier must be non-zero [MQTT-2.3.1-1]")
    return value


_REQUIRED_FLAGS = {
    CONNECT: 0,
    PUBACK: 0,
    PUBREC: 0,
    PUBREL: 2,
    PUBCOMP: 0,
    SUBSCRIBE: 2,
    UNSUBSCRIBE: 2,
    PINGREQ: 0,
    DISCONNECT: 0,
}
_NAMES = {CONNECT: "CONNECT", PUBREL: "PUBREL", SUBSCRIBE: "SUBSCRIBE", UNSUBSCRIBE: "UNSUBSCRIBE"}


def decode_client_packet(kind: int, flags: int, body: bytes) -> ClientPacket:
    """Decode one frame sent by a client, or raise ProtocolError naming the rule it breaks."""
    if kind == PUBLISH:
        return _decode_publish(flags, body)
    required = _REQUIRED_FLAGS.get(kind)
    if required is None:
        raise ProtocolError(f"packet type {kind} may not be sent by a client")
    if flags != required:
        raise ProtocolError(f"reserved flags of packet type {kind} must be {required:#x} [MQTT-2.2.2-2]")
    if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        if len(body) != 2:
            raise ProtocolError(f"packet type {kind} must have a remaining length of 2")
        (packet_id,) = _U16.unpack(body)
        return PacketId(kind, packet_id)
    if kind in (PINGREQ, DISCONNECT):
        if body:
            raise ProtocolError(f"packet type {kind} must have a remaining length of 0")
        return Pingreq() if kind == PINGREQ else Disconnect()
    if kind == CONNECT:
        return _decode_connect(body)
    if kind == SUBSCRIBE:
        return _decode_subscribe(body)
    return _decode_unsubscribe(body)


def decode_server_packet(kind: int, flags: int, body: bytes) -> ServerPacket:
    """Decode one frame sent by a broker, or raise ProtocolError naming the rule it breaks."""
    if kind == PUBLISH:
        return _decode_publish(flags, body)
    if flags != (2 if kind == PUBREL else 0):
        raise ProtocolError(f"reserved flags of packet type {kind} must be 0 [MQTT-2.2.2-2]")
    if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK):
        if len(body) != 2:
            raise ProtocolError(f"packet type {kind} must have a remaining length of 2")
        (packet_id,) = _U16.unpack(body)
        return Unsuback(packet_id) if kind == UNSUBACK else PacketId(kind, packet_id)
    if kind == CONNACK:
        if len(body) != 2 or body[0] & 0xFE:
            raise ProtocolError("malformed CONNACK [MQTT-3.2.2-1]")
        return Connack(bool(body[0] & 1), body[1])
    if kind == SUBACK:
        if len(body) < 3:
            raise ProtocolError("SUBACK without return codes")
        (packet_id,) = _U16.unpack_from(body)
        codes = tuple(body[2:])
        if any(code not in (0, 1, 2, SUBACK_FAILURE) for code in codes):
            raise ProtocolError("SUBACK with a return code other than 0, 1, 2 or 0x80 [MQTT-3.9.3-2]")
        return Suback(packet_id, codes)
    if kind == PINGRESP:
        if body:
            raise ProtocolError("PINGRESP must have a remaining length of 0")
        return Pingresp()
    raise ProtocolError(f"packet type {kind} may not be sent by a broker")


def _decode_publish(flags: int, body: bytes) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3 [MQTT-3.3.1-4]")
    dup = bool(flags & 0x08)
    if dup and qos == 0:
        raise ProtocolError("PUBLISH with DUP set at QoS 0 [MQTT-3.3.1-2]")
    cursor = Cursor(body)
    topic = cursor.text("PUBLISH topic name")
    try:
        validate_topic(topic)
    except TopicError as exc:
        raise ProtocolError(str(exc)) from exc
    packet_id = _packet_id(cursor, "PUBLISH") if qos else None
    return Publish(topic, body[cursor.pos :], qos, bool(flags & 0x01), dup, packet_id)


def _decode_connect(body: bytes) -> Connect:
    cursor = Cursor(body)
    name = cursor.text("CONNECT protocol name")
    level = cursor.u8("CONNECT protocol level")
    if (name, level) not in (("MQTT", 4), ("MQIsdp", 3)):
        if name in ("MQTT", "MQIsdp"):
            raise UnsupportedProtocol(name, level)
        raise ProtocolError(f"CONNECT protocol name {name!r} is not 'MQTT' [MQTT-3.1.2-1]")
    flags = cursor.u8("CONNECT flags")
    if flags & 0x01:
        raise ProtocolError("CONNECT reserved flag must be 0 [MQTT-3.1.2-3]")
    keepalive = cursor.u16("CONNECT keep alive")
    client_id = cursor.text("CONNECT client identifier")
    will: Will | None = None
    will_qos = (flags >> 3) & 0x03
    will_retain = bool(flags & 0x20)
    if flags & 0x04:
        if will_qos == 3:
            raise ProtocolError("CONNECT will QoS 3 [MQTT-3.1.2-14]")
        topic = cursor.text("CONNECT will topic")
        try:
            validate_topic(topic)
        except TopicError as exc:
            raise ProtocolError(str(exc)) from exc
        will = Will(topic, cursor.binary("CONNECT will message"), will_qos, will_retain)
    elif will_qos or will_retain:
        raise ProtocolError("CONNECT will QoS and retain must be 0 without a will [MQTT-3.1.2-13]")
    username = cursor.text("CONNECT user name") if flags & 0x80 else None
    if flags & 0x40 and username is None:
        raise ProtocolError("CONNECT password without a user name [MQTT-3.1.2-22]")
    password = cursor.binary("CONNECT password") if flags & 0x40 else None
    if cursor.remaining():
        raise ProtocolError(f"CONNECT has {cursor.remaining()} unexpected trailing bytes")
    return Connect(name, level, bool(flags & 0x02), keepalive, client_id, will, username, password)


def _decode_subscribe(body: bytes) -> Subscribe:
    cursor = Cursor(body)
    packet_id = _packet_id(cursor, "SUBSCRIBE")
    topics: list[tuple[str, int]] = []
    while cursor.remaining():
        topic_filter = cursor.text("SUBSCRIBE topic filter")
        qos = cursor.u8("SUBSCRIBE requested QoS")
        if qos > 2:
            raise ProtocolError(f"SUBSCRIBE requested QoS byte {qos:#x} is not 0, 1 or 2 [MQTT-3.8.3-4]")
        topics.append((topic_filter, qos))
    if not topics:
        raise ProtocolError("SUBSCRIBE without any topic filter [MQTT-3.8.3-3]")
    return Subscribe(packet_id, tuple(topics))


def _decode_unsubscribe(body: bytes) -> Unsubscribe:
    cursor = Cursor(body)
    packet_id = _packet_id(cursor, "UNSUBSCRIBE")
    filters: list[str] = []
    while cursor.remaining():
        topic_filter = cursor.text("UNSUBSCRIBE topic filter")
        try:
            validate_filter(topic_filter)
        except TopicError as exc:
            raise ProtocolError(str(exc)) from exc
        filters.append(topic_filter)
    if not filters:
        raise ProtocolError("UNSUBSCRIBE without any topic filter [MQTT-3.10.3-2]")
    return Unsubscribe(packet_id, tuple(filters))


def _remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        if length:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_publish(
    topic: bytes, payload: bytes, qos: int, *, retain: bool = False, dup: bool = False, packet_id: int = 0
) -> bytes:
    """Encode a PUBLISH; `topic` is the UTF-8 topic name, `packet_id` is used when qos > 0."""
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    variable = _U16.pack(len(topic)) + topic
    if qos:
        variable += _U16.pack(packet_id)
    return fixed_header(first, len(variable) + len(payload)) + variable + payload


def fixed_header(first: int, length: int) -> bytes:
    """A fixed header: the first byte and the Remaining Length `length`, made in one `bytes` (a
    length under 16 KiB, as most PUBLISH packets have, takes one or two bytes)."""
    if length < 0x80:
        return bytes((first, length))
    if length < 0x4000:
        return bytes((first, length & 0x7F | 0x80, length >> 7))
    return bytes((first,)) + _remaining_length(length)


def _text(value: str) -> bytes:
    data = value.encode("utf-8")
    return _U16.pack(len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _remaining_length(len(body)) + body


def encode_connect(connect: Connect) -> bytes:
    """Encode a CONNECT (protocol name and level are taken from `connect`)."""
    flags = 0x02 if connect.clean_session else 0
    payload = _text(connect.client_id)
    will = connect.will
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += _text(will.topic) + _U16.pack(len(will.payload)) + will.payload
    if connect.username is not None:
        flags |= 0x80
        payload += _text(connect.username)
    if connect.password is not None:
        flags |= 0x40
        payload += _U16.pack(len(connect.password)) + connect.password
    header = _text(connect.protocol_name) + bytes((connect.protocol_level, flags))
    return _packet(0x10, header + _U16.pack(connect.keepalive) + payload)


def encode_subscribe(packet_id: int, topics: list[tuple[str, int]]) -> bytes:
    body = _U16.pack(packet_id) + b"".join(_text(topic) + bytes((qos,)) for topic, qos in topics)
    return _packet(0x82, body)


def encode_unsubscribe(packet_id: int, filters: list[str]) -> bytes:
    return _packet(0xA2, _U16.pack(packet_id) + b"".join(_text(f) for f in filters))


def pingreq() -> bytes:
    return b"\xc0\x00"


def disconnect() -> bytes:
    return b"\xe0\x00"


def connack(session_present: bool, return_code: int) -> bytes:
    return bytes((0x20, 2, 1 if session_present else 0, return_code))


def puback(packet_id: int) -> bytes:
    return b"\x40\x02" + _U16.pack(packet_id)


def pubrec(packet_id: int) -> bytes:
    return b"\x50\x02" + _U16.pack(packet_id)


def pubrel(packet_id: int) -> bytes:
    return b"\x62\x02" + _U16.pack(packet_id)


def pubcomp(packet_id: int) -> bytes:
    return b"\x70\x02" + _U16.pack(packet_id)


def suback(packet_id: int, return_codes: list[int]) -> bytes:
    body = _U16.pack(packet_id) + bytes(return_codes)
    return b"\x90" + _remaining_length(len(body)) + body


def unsuback(packet_id: int) -> bytes:
    return b"\xb0\x02" + _U16.pack(packet_id)


def pingresp() -> bytes:
    return b"\xd0\x00"
