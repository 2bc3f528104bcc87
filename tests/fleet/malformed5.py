"""Malformed MQTT 5 packets a broker must refuse, each named with the statement it breaks."""

from __future__ import annotations


def _frame(first: int, body: bytes) -> bytes:
    out = bytearray((first,))
    length = len(body)
    while True:
        byte = length & 0x7F
        length >>= 7
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out) + body


def _s(text: bytes) -> bytes:
    return len(text).to_bytes(2, "big") + text


def _publish(props: bytes, topic: bytes = b"a/b", first: int = 0x32) -> bytes:
    return _frame(first, _s(topic) + b"\x00\x01" + bytes((len(props),)) + props + b"payload")


def _connect(flags: int = 0x02, props: bytes = b"", tail: bytes = b"") -> bytes:
    return _frame(
        0x10, _s(b"MQTT") + bytes((5, flags)) + b"\x00\x3c" + bytes((len(props),)) + props + _s(b"c") + tail
    )


def _subscribe(options: int, props: bytes = b"", first: int = 0x82) -> bytes:
    return _frame(first, b"\x00\x01" + bytes((len(props),)) + props + _s(b"a/#") + bytes((options,)))


MALFORMED: list[tuple[str, bytes]] = [
    ("PUBLISH QoS 3 [MQTT-3.3.1-4]", _publish(b"", first=0x36)),
    ("PUBLISH DUP at QoS 0 [MQTT-3.3.1-2]", _frame(0x38, _s(b"a/b") + b"\x00x")),
    ("PUBLISH topic with a wildcard [MQTT-3.3.2-2]", _publish(b"", topic=b"a/+")),
    ("PUBLISH topic not UTF-8 [MQTT-1.5.4-1]", _publish(b"", topic=b"a/\xff")),
    ("PUBLISH topic with U+0000 [MQTT-1.5.4-2]", _publish(b"", topic=b"a/\x00")),
    ("PUBLISH packet id 0 [MQTT-2.2.1-3]", _frame(0x32, _s(b"a/b") + b"\x00\x00\x00x")),
    ("PUBLISH property twice [MQTT-3.3.2-...]", _publish(b"\x02\x00\x00\x00\x05\x02\x00\x00\x00\x06")),
    ("PUBLISH with a CONNECT-only property [2.2.2.2]", _publish(b"\x11\x00\x00\x00\x05")),
    ("PUBLISH unknown property 0x00 [2.2.2.2]", _publish(b"\x00")),
    ("PUBLISH Payload Format Indicator 2 [3.3.2.3.2]", _publish(b"\x01\x02")),
    ("PUBLISH Topic Alias 0 [MQTT-3.3.2-8]", _publish(b"\x23\x00\x00")),
    ("PUBLISH Subscription Identifier from a client [MQTT-3.3.4-6]", _publish(b"\x0b\x01")),
    ("PUBLISH property length past the end [MQTT-2.2.2]", _frame(0x32, _s(b"a/b") + b"\x00\x01\x7f\x01")),
    ("PUBLISH user property value not UTF-8 [MQTT-1.5.4-1]", _publish(b"\x26\x00\x01k\x00\x01\xff")),
    ("remaining length of 5 bytes [MQTT-1.5.5-1]", b"\x30\xff\xff\xff\xff\x7f"),
    ("CONNECT reserved flag set [MQTT-3.1.2-3]", _connect(flags=0x03)),
    ("CONNECT will QoS 3 [MQTT-3.1.2-12]", _connect(flags=0x1E, tail=b"\x00" + _s(b"w") + _s(b"x"))),
    ("CONNECT Receive Maximum 0 [3.1.2.11.3]", _connect(props=b"\x21\x00\x00")),
    ("CONNECT Maximum Packet Size 0 [3.1.2.11.4]", _connect(props=b"\x27\x00\x00\x00\x00")),
    ("CONNECT Request Problem Information 2 [3.1.2.11.7]", _connect(props=b"\x17\x02")),
    ("CONNECT trailing bytes [MQTT-3.1.3]", _connect(tail=b"\x00")),
    ("SUBSCRIBE fixed flags 0 [MQTT-3.8.1-1]", _subscribe(0x01, first=0x80)),
    ("SUBSCRIBE reserved option bits [MQTT-3.8.3-5]", _subscribe(0xC1)),
    ("SUBSCRIBE Retain Handling 3 [MQTT-3.8.3-5]", _subscribe(0x31)),
    ("SUBSCRIBE QoS 3 [MQTT-3.8.3-5]", _subscribe(0x03)),
    ("SUBSCRIBE Subscription Identifier 0 [3.8.2.1.2]", _subscribe(0x01, props=b"\x0b\x00")),
    ("SUBSCRIBE without filters [MQTT-3.8.3-2]", _frame(0x82, b"\x00\x01\x00")),
    ("UNSUBSCRIBE without filters [MQTT-3.10.3-2]", _frame(0xA2, b"\x00\x01\x00")),
    ("PUBREL fixed flags 0 [MQTT-3.6.1-1]", _frame(0x60, b"\x00\x01")),
    ("PUBACK reason code 0x05 [3.4.2.1]", _frame(0x40, b"\x00\x01\x05")),
    ("PINGREQ with a body [3.12]", _frame(0xC0, b"\x00")),
    ("DISCONNECT reason 0x8E from a client [3.14.2.1]", _frame(0xE0, b"\x8e")),
    ("garbage", b"\xff\x00\x13\x37garbage"),
]
