"""MQTT 5 packets: values, strict sans-I/O decoders for both directions, and encoders.

Frames come from the shared `fleet.packets.FrameReader`. `decode_client_packet` (on the broker)
and `decode_server_packet` (on a client) turn one frame into a value, or raise `ProtocolError`
naming the statement of the MQTT 5.0 standard it breaks. Topic filters are checked by the broker,
which answers a bad one with reason 0x8F instead of closing the connection.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from fleet.errors import ProtocolError, TopicError
from fleet.mqtt import reasons
from fleet.mqtt.properties import (
    EMPTY,
    WILL,
    Properties,
    decode_properties,
    encode_properties,
    encode_variable_int,
)
from fleet.packets import Cursor, fixed_header
from fleet.topics import validate_filter, validate_topic

__all__ = [
    "AUTH",
    "Ack",
    "Auth",
    "Connack",
    "Connect",
    "Disconnect",
    "Pingreq",
    "Pingresp",
    "Publish",
    "Suback",
    "Subscribe",
    "Subscription",
    "Unsuback",
    "Unsubscribe",
    "Will",
    "decode_client_packet",
    "decode_connect",
    "decode_server_packet",
    "encode_ack",
    "encode_auth",
    "encode_connack",
    "encode_connect",
    "encode_disconnect",
    "encode_publish",
    "encode_suback",
    "encode_subscribe",
    "encode_unsuback",
    "encode_unsubscribe",
    "is_shared",
    "split_shared",
]

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = range(8, 16)
_U16 = struct.Struct("!H")
_NAMES: tuple[str, ...] = (
    *("", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP", "SUBSCRIBE"),
    *("SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP", "DISCONNECT", "AUTH"),
)


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties = EMPTY


@dataclass(frozen=True, slots=True)
class Connect:
    clean_start: bool
    keepalive: int
    client_id: str
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    properties: Properties = EMPTY
    protocol_level: int = 5


@dataclass(frozen=True, slots=True)
class Connack:
    session_present: bool
    reason: int
    properties: Properties = EMPTY


@dataclass(frozen=True, slots=True)
class Publish:
    """`topic` is empty when the sender gave only a Topic Alias."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int | None
    properties: Properties = EMPTY


@dataclass(frozen=True, slots=True)
class Ack:
    """PUBACK, PUBREC, PUBREL or PUBCOMP: `kind` is the packet type number."""

    kind: int
    packet_id: int
    reason: int = 0
    properties: Properties = EMPTY


@dataclass(frozen=True, slots=True)
class Subscription:
    topic_filter: str
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    subscriptions: tuple[Subscription, ...]
    properties: Properties = EMPTY


@dataclass(frozen=True, slots=True)
class Suback:
    packet_id: int
    reasons: tuple[int, ...]
    properties: Properties = EMPTY


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    filters: tuple[str, ...]
    properties: Properties = EMPTY


@dataclass(frozen=True, slots=True)
class Unsuback:
    packet_id: int
    reasons: tuple[int, ...]
    properties: Properties = EMPTY


@dataclass(frozen=True, slots=True)
class Pingreq:
    pass


@dataclass(frozen=True, slots=True)
class Pingresp:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason: int = 0
    properties: Properties = EMPTY


@dataclass(frozen=True, slots=True)
class Auth:
    reason: int = 0
    properties: Properties = EMPTY


ClientPacket = Connect | Publish | Ack | Subscribe | Unsubscribe | Pingreq | Disconnect | Auth
ServerPacket = Connack | Publish | Ack | Suback | Unsuback | Pingresp | Disconnect | Auth


def is_shared(topic_filter: str) -> bool:
    return topic_filter.startswith("$share/")


def split_shared(topic_filter: str) -> tuple[str, str]:
    """(group, filter) of a valid `$share/{group}/{filter}`, or raise TopicError [MQTT-4.8.2-1, -2]."""
    _, _, rest = topic_filter.partition("/")
    group, slash, inner = rest.partition("/")
    if not group or "+" in group or "#" in group or not slash:
        raise TopicError(
            f"shared subscription {topic_filter!r} needs $share/{{group}}/{{filter}} [MQTT-4.8.2-1]"
        )
    validate_filter(inner)
    return group, inner


class _Cursor(Cursor):
    """The 3.1.1 cursor, with MQTT 5's numbering of the UTF-8 rules, properties and reason codes."""

    __slots__ = ()
    UTF8_RULE = "MQTT-1.5.4"

    def properties(self, packet_type: int) -> Properties:
        properties, self.pos = decode_properties(self.data, self.pos, packet_type)
        return properties

    def packet_id(self) -> int:
        # Cursor.u16 written out: every PUBLISH at QoS 1 or 2 and every acknowledgement has one.
        data, pos = self.data, self.pos
        if pos + 2 > len(data):
            raise ProtocolError(f"{self.where} too short: packet identifier is missing")
        value: int
        (value,) = _U16.unpack_from(data, pos)
        self.pos = pos + 2
        if value == 0:
            raise ProtocolError(f"{self.where} packet identifier must be non-zero [MQTT-2.2.1-3]")
        return value

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(
                f"{self.where} has {self.remaining()} bytes past its last field [MQTT 5.0 2.1.4]"
            )


_REQUIRED_FLAGS = {
    CONNECT: 0,
    CONNACK: 0,
    PUBACK: 0,
    PUBREC: 0,
    PUBREL: 2,
    PUBCOMP: 0,
    SUBSCRIBE: 2,
    SUBACK: 0,
    UNSUBSCRIBE: 2,
    UNSUBACK: 0,
    PINGREQ: 0,
    PINGRESP: 0,
    DISCONNECT: 0,
    AUTH: 0,
}
_FROM_CLIENT = frozenset({CONNECT, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, UNSUBSCRIBE})
_FROM_CLIENT |= {PINGREQ, DISCONNECT, AUTH}
_FROM_SERVER = frozenset({CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, PINGRESP})
_FROM_SERVER |= {DISCONNECT, AUTH}


def _check_flags(kind: int, flags: int) -> None:
    required = _REQUIRED_FLAGS[kind]
    if flags != required:
        raise ProtocolError(f"reserved flags of {_NAMES[kind]} must be {required:#x} [MQTT-2.1.3-1]")


def decode_client_packet(kind: int, flags: int, body: bytes) -> ClientPacket:
    """Decode one frame sent by an MQTT 5 client, or raise ProtocolError naming the statement broken."""
    if kind not in _FROM_CLIENT:
        raise ProtocolError(f"packet type {kind} may not be sent by a client [MQTT 5.0 2.1.2]")
    if kind == PUBLISH:
        return _decode_publish(flags, body, from_client=True)
    if flags != _REQUIRED_FLAGS[kind]:
        _check_flags(kind, flags)
    if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        return _decode_ack(kind, body)
    if kind == PINGREQ:
        if body:
            raise ProtocolError("PINGREQ must have a remaining length of 0 [MQTT 5.0 3.12]")
        return Pingreq()
    if kind == DISCONNECT:
        packet = _decode_reason_packet(kind, body)
        if packet.reason not in reasons.CLIENT_DISCONNECT:
            raise ProtocolError(f"a client may not send DISCONNECT reason {packet.reason:#04x} [3.14.2.1]")
        return Disconnect(packet.reason, packet.properties)
    if kind == AUTH:
        packet = _decode_reason_packet(kind, body)
        return Auth(packet.reason, packet.properties)
    if kind == CONNECT:
        return decode_connect(body)
    if kind == SUBSCRIBE:
        return _decode_subscribe(body)
    return _decode_unsubscribe(body)


def decode_server_packet(kind: int, flags: int, body: bytes) -> ServerPacket:
    """Decode one frame sent by an MQTT 5 server, or raise ProtocolError naming the statement broken."""
    if kind not in _FROM_SERVER:
        raise ProtocolError(f"packet type {kind} may not be sent by a server [MQTT 5.0 2.1.2]")
    if kind == PUBLISH:
        return _decode_publish(flags, body, from_client=False)
    _check_flags(kind, flags)
    if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        return _decode_ack(kind, body)
    if kind == PINGRESP:
        if body:
            raise ProtocolError("PINGRESP must have a remaining length of 0 [MQTT 5.0 3.13]")
        return Pingresp()
    if kind in (DISCONNECT, AUTH):
        packet = _decode_reason_packet(kind, body)
        return Disconnect(*packet.args()) if kind == DISCONNECT else Auth(*packet.args())
    cursor = _Cursor(body, _NAMES[kind])
    if kind == CONNACK:
        flags_byte = cursor.u8("acknowledge flags")
        if flags_byte & 0xFE:
            raise ProtocolError("CONNACK acknowledge flags bits 7-1 are reserved [MQTT-3.2.2-1]")
        reason = _reason(cursor, kind)
        properties = cursor.properties(CONNACK)
        cursor.end()
        return Connack(bool(flags_byte), reason, properties)
    packet_id = cursor.packet_id()
    properties = cursor.properties(kind)
    codes = tuple(body[cursor.pos :])
    if not codes:
        raise ProtocolError(f"{_NAMES[kind]} without reason codes [MQTT 5.0 3.9.3 / 3.11.3]")
    for code in codes:
        if code not in reasons.VALID[kind]:
            raise ProtocolError(
                f"{_NAMES[kind]} reason code {code:#04x} is not defined for it [MQTT 5.0 2.4]"
            )
    if kind == SUBACK:
        return Suback(packet_id, codes, properties)
    return Unsuback(packet_id, codes, properties)


@dataclass(frozen=True, slots=True)
class _ReasonPacket:
    reason: int
    properties: Properties

    def args(self) -> tuple[int, Properties]:
        return self.reason, self.properties


def _reason(cursor: _Cursor, kind: int) -> int:
    code = cursor.u8("reason code")
    if code not in reasons.VALID[kind]:
        raise ProtocolError(f"{_NAMES[kind]} reason code {code:#04x} is not defined for it [MQTT 5.0 2.4]")
    return code


def _decode_reason_packet(kind: int, body: bytes) -> _ReasonPacket:
    """DISCONNECT or AUTH: a missing reason code means 0x00, missing properties mean none."""
    if not body:
        return _ReasonPacket(0, EMPTY)
    cursor = _Cursor(body, _NAMES[kind])
    reason = _reason(cursor, kind)
    properties = cursor.properties(kind) if cursor.remaining() else EMPTY
    cursor.end()
    if kind == AUTH and properties.authentication_method is None:
        raise ProtocolError("AUTH without an Authentication Method [MQTT 5.0 3.15.2.2.2]")
    return _ReasonPacket(reason, properties)


def _decode_ack(kind: int, body: bytes) -> Ack:
    if len(body) == 2:
        # The short form, reason 0 and no properties: most acknowledgements.
        (packet_id,) = _U16.unpack(body)
        if packet_id:
            return Ack(kind, packet_id)
    cursor = _Cursor(body, _NAMES[kind])
    packet_id = cursor.packet_id()
    if not cursor.remaining():
        return Ack(kind, packet_id)
    reason = _reason(cursor, kind)
    properties = cursor.properties(kind) if cursor.remaining() else EMPTY
    cursor.end()
    return Ack(kind, packet_id, reason, properties)


def _decode_publish(flags: int, body: bytes, *, from_client: bool) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3 [MQTT-3.3.1-4]")
    dup = bool(flags & 0x08)
    if dup and qos == 0:
        raise ProtocolError("PUBLISH with DUP set at QoS 0 [MQTT-3.3.1-2]")
    cursor = _Cursor(body, "PUBLISH")
    topic = cursor.text("topic name")
    packet_id = cursor.packet_id() if qos else None
    pos = cursor.pos
    if pos < len(body) and not body[pos]:
        # No properties, as most PUBLISH packets have: one byte, and no call to decode them.
        properties = EMPTY
        cursor.pos = pos + 1
    else:
        properties = cursor.properties(PUBLISH)
    if topic:
        try:
            validate_topic(topic)
        except TopicError as exc:
            raise ProtocolError(f"PUBLISH {exc}") from exc
    elif properties.topic_alias is None:
        raise ProtocolError("PUBLISH with an empty topic name and no Topic Alias [MQTT-3.3.2-1]", 0x82)
    if from_client and properties.subscription_identifiers:
        raise ProtocolError("PUBLISH from a client with a Subscription Identifier [MQTT-3.3.4-6]", 0x82)
    return Publish(topic, body[cursor.pos :], qos, bool(flags & 0x01), dup, packet_id, properties)


def decode_connect(body: bytes) -> Connect:
    """The body of an MQTT 5 CONNECT (protocol name 'MQTT', level 5)."""
    cursor = _Cursor(body, "CONNECT")
    name = cursor.text("protocol name")
    level = cursor.u8("protocol level")
    if name != "MQTT" or level != 5:
        raise ProtocolError(f"CONNECT protocol {name!r} level {level} is not MQTT 5 [MQTT-3.1.2-1, -2]")
    flags = cursor.u8("connect flags")
    if flags & 0x01:
        raise ProtocolError("CONNECT reserved flag must be 0 [MQTT-3.1.2-3]")
    keepalive = cursor.u16("keep alive")
    properties = cursor.properties(CONNECT)
    client_id = cursor.text("client identifier")
    will: Will | None = None
    will_qos = (flags >> 3) & 0x03
    will_retain = bool(flags & 0x20)
    if flags & 0x04:
        if will_qos == 3:
            raise ProtocolError("CONNECT will QoS 3 [MQTT-3.1.2-12]")
        will_properties = cursor.properties(WILL)
        topic = cursor.text("will topic")
        try:
            validate_topic(topic)
        except TopicError as exc:
            raise ProtocolError(f"CONNECT will {exc}") from exc
        will = Will(topic, cursor.binary("will payload"), will_qos, will_retain, will_properties)
    elif will_qos:
        raise ProtocolError("CONNECT will QoS must be 0 without a will [MQTT-3.1.2-11]")
    elif will_retain:
        raise ProtocolError("CONNECT will retain must be 0 without a will [MQTT-3.1.2-13]")
    username = cursor.text("user name") if flags & 0x80 else None
    password = cursor.binary("password") if flags & 0x40 else None
    cursor.end()
    return Connect(bool(flags & 0x02), keepalive, client_id, will, username, password, properties)


def _decode_subscribe(body: bytes) -> Subscribe:
    cursor = _Cursor(body, "SUBSCRIBE")
    packet_id = cursor.packet_id()
    properties = cursor.properties(SUBSCRIBE)
    subscriptions: list[Subscription] = []
    while cursor.remaining():
        topic_filter = cursor.text("topic filter")
        options = cursor.u8("subscription options")
        qos = options & 0x03
        retain_handling = (options >> 4) & 0x03
        if options & 0xC0:
            raise ProtocolError(f"SUBSCRIBE options {options:#04x}: bits 6 and 7 are reserved [MQTT-3.8.3-5]")
        if qos == 3:
            raise ProtocolError("SUBSCRIBE Maximum QoS 3 [MQTT-3.8.3-5]")
        if retain_handling == 3:
            raise ProtocolError("SUBSCRIBE Retain Handling 3 [MQTT-3.8.3-5]")
        no_local = bool(options & 0x04)
        if no_local and is_shared(topic_filter):
            raise ProtocolError("SUBSCRIBE No Local on a shared subscription [MQTT-3.8.3-4]", 0x82)
        subscriptions.append(Subscription(topic_filter, qos, no_local, bool(options & 0x08), retain_handling))
    if not subscriptions:
        raise ProtocolError("SUBSCRIBE without any topic filter [MQTT-3.8.3-2]")
    return Subscribe(packet_id, tuple(subscriptions), properties)


def _decode_unsubscribe(body: bytes) -> Unsubscribe:
    cursor = _Cursor(body, "UNSUBSCRIBE")
    packet_id = cursor.packet_id()
    properties = cursor.properties(UNSUBSCRIBE)
    filters: list[str] = []
    while cursor.remaining():
        filters.append(cursor.text("topic filter"))
    if not filters:
        raise ProtocolError("UNSUBSCRIBE without any topic filter [MQTT-3.10.3-2]")
    return Unsubscribe(packet_id, tuple(filters), properties)


# Encoders


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_variable_int(len(body)) + body


def _text(value: str) -> bytes:
    data = value.encode("utf-8")
    return _U16.pack(len(data)) + data


def encode_publish(
    topic: bytes,
    payload: bytes,
    qos: int,
    *,
    retain: bool = False,
    dup: bool = False,
    packet_id: int = 0,
    properties: bytes = b"\x00",
) -> bytes:
    """A PUBLISH; `topic` is the UTF-8 topic name (b'' with an alias), `properties` encoded ones."""
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    variable = _U16.pack(len(topic)) + topic
    if qos:
        variable += _U16.pack(packet_id)
    variable += properties
    return fixed_header(first, len(variable) + len(payload)) + variable + payload


def encode_connect(connect: Connect) -> bytes:
    flags = 0x02 if connect.clean_start else 0
    payload = _text(connect.client_id)
    will = connect.will
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += encode_properties(will.properties) + _text(will.topic)
        payload += _U16.pack(len(will.payload)) + will.payload
    if connect.username is not None:
        flags |= 0x80
        payload += _text(connect.username)
    if connect.password is not None:
        flags |= 0x40
        payload += _U16.pack(len(connect.password)) + connect.password
    header = _text("MQTT") + bytes((5, flags)) + _U16.pack(connect.keepalive)
    return _packet(0x10, header + encode_properties(connect.properties) + payload)


def encode_connack(session_present: bool, reason: int, properties: Properties = EMPTY) -> bytes:
    return _packet(0x20, bytes((1 if session_present else 0, reason)) + encode_properties(properties))


_ACK_FIRST = {PUBACK: 0x40, PUBREC: 0x50, PUBREL: 0x62, PUBCOMP: 0x70}


def encode_ack(kind: int, packet_id: int, reason: int = 0, properties: Properties = EMPTY) -> bytes:
    """PUBACK, PUBREC, PUBREL or PUBCOMP; the short form when the reason is 0 and there are no properties."""
    if not reason and properties is EMPTY:
        return bytes((_ACK_FIRST[kind], 2)) + _U16.pack(packet_id)
    body = _U16.pack(packet_id) + bytes((reason,))
    if properties is not EMPTY:
        body += encode_properties(properties)
    return _packet(_ACK_FIRST[kind], body)


def encode_subscribe(
    packet_id: int, subscriptions: list[Subscription], properties: Properties = EMPTY
) -> bytes:
    body = _U16.pack(packet_id) + encode_properties(properties)
    for sub in subscriptions:
        options = sub.qos | (0x04 if sub.no_local else 0) | (0x08 if sub.retain_as_published else 0)
        body += _text(sub.topic_filter) + bytes((options | sub.retain_handling << 4,))
    return _packet(0x82, body)


def encode_suback(packet_id: int, codes: list[int], properties: Properties = EMPTY) -> bytes:
    return _packet(0x90, _U16.pack(packet_id) + encode_properties(properties) + bytes(codes))


def encode_unsubscribe(packet_id: int, filters: list[str], properties: Properties = EMPTY) -> bytes:
    body = _U16.pack(packet_id) + encode_properties(properties) + b"".join(_text(f) for f in filters)
    return _packet(0xA2, body)


def encode_unsuback(packet_id: int, codes: list[int], properties: Properties = EMPTY) -> bytes:
    return _packet(0xB0, _U16.pack(packet_id) + encode_properties(properties) + bytes(codes))


def encode_disconnect(reason: int = 0, properties: Properties = EMPTY) -> bytes:
    if not reason and properties is EMPTY:
        return b"\xe0\x00"
    return _packet(0xE0, bytes((reason,)) + encode_properties(properties))


def encode_auth(reason: int, properties: Properties) -> bytes:
    return _packet(0xF0, bytes((reason,)) + encode_properties(properties))
