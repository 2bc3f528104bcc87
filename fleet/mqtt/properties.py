"""MQTT 5 properties (MQTT 5.0 section 2.2.2): types, where each may appear, and "at most once".

`Properties` is the decoded value; every field is None (or empty) when the property was absent.
User properties keep their order and duplicate keys [MQTT-3.3.2-18].
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass, fields
from typing import Any

from fleet.errors import ProtocolError

__all__ = [
    "EMPTY",
    "MAX_VARIABLE_BYTE_INTEGER",
    "WILL",
    "Properties",
    "decode_properties",
    "decode_variable_int",
    "encode_properties",
    "encode_property_body",
    "encode_variable_int",
    "envelope_properties",
]

MAX_VARIABLE_BYTE_INTEGER = 268_435_455
# The Will Properties of a CONNECT, as a pseudo packet type next to 1 (CONNECT) .. 15 (AUTH).
WILL = 0

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class Properties:
    payload_format_indicator: int | None = None
    message_expiry_interval: int | None = None
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    subscription_identifiers: tuple[int, ...] = ()
    session_expiry_interval: int | None = None
    assigned_client_identifier: str | None = None
    server_keep_alive: int | None = None
    authentication_method: str | None = None
    authentication_data: bytes | None = None
    request_problem_information: int | None = None
    will_delay_interval: int | None = None
    request_response_information: int | None = None
    response_information: str | None = None
    server_reference: str | None = None
    reason_string: str | None = None
    receive_maximum: int | None = None
    topic_alias_maximum: int | None = None
    topic_alias: int | None = None
    maximum_qos: int | None = None
    retain_available: int | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    maximum_packet_size: int | None = None
    wildcard_subscription_available: int | None = None
    subscription_identifier_available: int | None = None
    shared_subscription_available: int | None = None


EMPTY = Properties()


def envelope_properties(properties: Properties) -> dict[str, Any]:
    """The `properties` object of an MQTT 5 message's envelope: the properties it carried, by their
    names in the spec in snake case; user properties as ordered [key, value] pairs with duplicate keys
    kept, Correlation Data in base64. Empty for a message without properties (and for MQTT 3.1.1)."""
    shown: dict[str, Any] = {}
    if properties.payload_format_indicator is not None:
        shown["payload_format_indicator"] = properties.payload_format_indicator
    if properties.message_expiry_interval is not None:
        shown["message_expiry_interval"] = properties.message_expiry_interval
    if properties.content_type is not None:
        shown["content_type"] = properties.content_type
    if properties.response_topic is not None:
        shown["response_topic"] = properties.response_topic
    if properties.correlation_data is not None:
        shown["correlation_data"] = base64.b64encode(properties.correlation_data).decode()
    if properties.subscription_identifiers:
        shown["subscription_identifiers"] = list(properties.subscription_identifiers)
    if properties.user_properties:
        shown["user_properties"] = [list(pair) for pair in properties.user_properties]
    return shown


_BYTE, _TWO, _FOUR, _VBI, _TEXT, _BINARY, _PAIR = range(7)
_PUBLISH_ACKS = (4, 5, 6, 7)
# identifier: (field, type, the packet types (WILL for will properties) where it may appear)
_TABLE: dict[int, tuple[str, int, frozenset[int]]] = {
    0x01: ("payload_format_indicator", _BYTE, frozenset({3, WILL})),
    0x02: ("message_expiry_interval", _FOUR, frozenset({3, WILL})),
    0x03: ("content_type", _TEXT, frozenset({3, WILL})),
    0x08: ("response_topic", _TEXT, frozenset({3, WILL})),
    0x09: ("correlation_data", _BINARY, frozenset({3, WILL})),
    0x0B: ("subscription_identifiers", _VBI, frozenset({3, 8})),
    0x11: ("session_expiry_interval", _FOUR, frozenset({1, 2, 14})),
    0x12: ("assigned_client_identifier", _TEXT, frozenset({2})),
    0x13: ("server_keep_alive", _TWO, frozenset({2})),
    0x15: ("authentication_method", _TEXT, frozenset({1, 2, 15})),
    0x16: ("authentication_data", _BINARY, frozenset({1, 2, 15})),
    0x17: ("request_problem_information", _BYTE, frozenset({1})),
    0x18: ("will_delay_interval", _FOUR, frozenset({WILL})),
    0x19: ("request_response_information", _BYTE, frozenset({1})),
    0x1A: ("response_information", _TEXT, frozenset({2})),
    0x1C: ("server_reference", _TEXT, frozenset({2, 14})),
    0x1F: ("reason_string", _TEXT, frozenset({2, *_PUBLISH_ACKS, 9, 11, 14, 15})),
    0x21: ("receive_maximum", _TWO, frozenset({1, 2})),
    0x22: ("topic_alias_maximum", _TWO, frozenset({1, 2})),
    0x23: ("topic_alias", _TWO, frozenset({3})),
    0x24: ("maximum_qos", _BYTE, frozenset({2})),
    0x25: ("retain_available", _BYTE, frozenset({2})),
    0x26: ("user_properties", _PAIR, frozenset({WILL, *range(1, 16)} - {12, 13})),
    0x27: ("maximum_packet_size", _FOUR, frozenset({1, 2})),
    0x28: ("wildcard_subscription_available", _BYTE, frozenset({2})),
    0x29: ("subscription_identifier_available", _BYTE, frozenset({2})),
    0x2A: ("shared_subscription_available", _BYTE, frozenset({2})),
}
_BY_FIELD = {name: (identifier, kind) for identifier, (name, kind, _) in _TABLE.items()}
_ORDER = [f.name for f in fields(Properties)]
_NAMES = {0: "will", 1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL"}
_NAMES.update(
    {7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK", 14: "DISCONNECT"}
)
_NAMES[15] = "AUTH"
# Byte properties that are booleans: 0 or 1 only.
_FLAGS = {
    "payload_format_indicator": "3.3.2.3.2",
    "request_problem_information": "3.1.2.11.7",
    "request_response_information": "3.1.2.11.6",
    "maximum_qos": "3.2.2.3.4",
    "retain_available": "3.2.2.3.5",
    "wildcard_subscription_available": "3.2.2.3.11",
    "subscription_identifier_available": "3.2.2.3.12",
    "shared_subscription_available": "3.2.2.3.13",
}
# Properties where 0 is a Protocol Error.
_NONZERO = {
    "receive_maximum": "3.1.2.11.3 / 3.2.2.3.3",
    "maximum_packet_size": "3.1.2.11.4 / 3.2.2.3.6",
    "topic_alias": "MQTT-3.3.2-8",
    "subscription_identifiers": "3.3.2.3.8 / 3.8.2.1.2",
}


def decode_variable_int(data: bytes, pos: int, what: str) -> tuple[int, int]:
    """(value, position after it) of the Variable Byte Integer at `pos` [MQTT-1.5.5-1]."""
    value = 0
    shift = 0
    for count in range(4):
        if pos >= len(data):
            raise ProtocolError(f"packet too short: {what} is cut off [MQTT-1.5.5]")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if count and not byte:
                raise ProtocolError(f"{what} is not encoded in the minimum number of bytes [MQTT-1.5.5-1]")
            return value, pos
        shift += 7
    raise ProtocolError(f"{what} is longer than 4 bytes [MQTT-1.5.5-1]")


def encode_variable_int(value: int) -> bytes:
    if not 0 <= value <= MAX_VARIABLE_BYTE_INTEGER:
        raise ValueError(f"{value} does not fit a Variable Byte Integer [MQTT-1.5.5]")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _text(data: bytes, pos: int, what: str) -> tuple[str, int]:
    if pos + 2 > len(data):
        raise ProtocolError(f"packet too short: {what} is cut off")
    (length,) = _U16.unpack_from(data, pos)
    end = pos + 2 + length
    if end > len(data):
        raise ProtocolError(f"packet too short: {what} claims {length} bytes")
    try:
        value = data[pos + 2 : end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} is not valid UTF-8 [MQTT-1.5.4-1]") from exc
    if "\x00" in value:
        raise ProtocolError(f"{what} contains U+0000 [MQTT-1.5.4-2]")
    return value, end


def decode_properties(data: bytes, pos: int, packet_type: int) -> tuple[Properties, int]:
    """The properties at `pos` of a packet of `packet_type` (WILL for will properties), and the end.

    Raises ProtocolError for a property the packet may not carry, one given twice that may appear
    only once, an out-of-range value, or a length that runs past the packet.
    """
    if pos < len(data) and not data[pos]:
        return EMPTY, pos + 1
    where = _NAMES.get(packet_type, str(packet_type))
    length, pos = decode_variable_int(data, pos, f"{where} property length")
    end = pos + length
    if end > len(data):
        raise ProtocolError(f"{where} property length {length} runs past the end of the packet [MQTT-2.2.2]")
    if not length:
        return EMPTY, end
    values: dict[str, Any] = {}
    while pos < end:
        identifier, pos = decode_variable_int(data, pos, f"{where} property identifier")
        entry = _TABLE.get(identifier)
        if entry is None:
            raise ProtocolError(f"{where} has an unknown property {identifier:#04x} [MQTT 5.0 2.2.2.2]")
        name, kind, allowed = entry
        if packet_type not in allowed:
            raise ProtocolError(f"{where} may not carry the property {name} [MQTT 5.0 2.2.2.2]", 0x82)
        value: Any
        if kind == _BYTE:
            if pos >= end:
                raise ProtocolError(f"{where} property {name} is cut off")
            value = data[pos]
            pos += 1
        elif kind == _TWO:
            if pos + 2 > end:
                raise ProtocolError(f"{where} property {name} is cut off")
            (value,) = _U16.unpack_from(data, pos)
            pos += 2
        elif kind == _FOUR:
            if pos + 4 > end:
                raise ProtocolError(f"{where} property {name} is cut off")
            (value,) = _U32.unpack_from(data, pos)
            pos += 4
        elif kind == _VBI:
            value, pos = decode_variable_int(data, pos, f"{where} property {name}")
        elif kind == _TEXT:
            value, pos = _text(data, pos, f"{where} property {name}")
        elif kind == _BINARY:
            if pos + 2 > end:
                raise ProtocolError(f"{where} property {name} is cut off")
            (size,) = _U16.unpack_from(data, pos)
            value = bytes(data[pos + 2 : pos + 2 + size])
            pos += 2 + size
        else:
            key, pos = _text(data, pos, f"{where} user property name")
            text, pos = _text(data, pos, f"{where} user property value")
            value = (key, text)
        if pos > end:
            raise ProtocolError(f"{where} property {name} runs past the property length [MQTT-2.2.2]")
        if name in _FLAGS and value > 1:
            raise ProtocolError(
                f"{where} property {name} is {value}, not 0 or 1 [MQTT 5.0 {_FLAGS[name]}]", 0x82
            )
        if name in _NONZERO and value == 0:
            reason = 0x94 if name == "topic_alias" else 0x82
            raise ProtocolError(f"{where} property {name} is 0 [MQTT 5.0 {_NONZERO[name]}]", reason)
        if kind == _PAIR or (name == "subscription_identifiers" and packet_type == 3):
            values[name] = (*values.get(name, ()), value)
        elif name in values:
            raise ProtocolError(
                f"{where} carries the property {name} more than once [MQTT 5.0 2.2.2.2]", 0x82
            )
        else:
            values[name] = (value,) if name == "subscription_identifiers" else value
    return Properties(**values), end


def encode_properties(properties: Properties) -> bytes:
    """The property length and the properties, in identifier order; b'\\x00' for none."""
    if properties is EMPTY:
        return b"\x00"
    body = encode_property_body(properties)
    return encode_variable_int(len(body)) + body


def encode_property_body(properties: Properties) -> bytes:
    """The properties without their length, to join with others (a client's Topic Alias, say)."""
    out = bytearray()
    for name in _ORDER:
        value = getattr(properties, name)
        if value is None or value == ():
            continue
        identifier, kind = _BY_FIELD[name]
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            out.append(identifier)
            if kind == _BYTE:
                out.append(item)
            elif kind == _TWO:
                out += _U16.pack(item)
            elif kind == _FOUR:
                out += _U32.pack(item)
            elif kind == _VBI:
                out += encode_variable_int(item)
            elif kind == _TEXT:
                raw = item.encode("utf-8")
                out += _U16.pack(len(raw)) + raw
            elif kind == _BINARY:
                out += _U16.pack(len(item)) + item
            else:
                key, text = (part.encode("utf-8") for part in item)
                out += _U16.pack(len(key)) + key + _U16.pack(len(text)) + text
    return bytes(out)
