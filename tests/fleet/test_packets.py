"""The MQTT 3.1.1 codec agrees with amqtt's independent codec and refuses malformed packets."""

from __future__ import annotations

import asyncio

import pytest
from amqtt.adapters import BufferReader
from amqtt.mqtt import packet_class
from amqtt.mqtt.connect import ConnectPacket, ConnectPayload, ConnectVariableHeader
from amqtt.mqtt.packet import MQTTFixedHeader
from amqtt.mqtt.publish import PublishPacket
from amqtt.mqtt.subscribe import SubscribePacket
from hypothesis import given
from hypothesis import strategies as st

from fleet.errors import ProtocolError, UnsupportedProtocol
from fleet.packets import (
    Connect,
    FrameReader,
    Publish,
    Subscribe,
    connack,
    decode_client_packet,
    encode_publish,
    suback,
)


def _decode_one(data: bytes) -> object:
    frames = FrameReader(1 << 20).feed(data)
    assert len(frames) == 1
    return decode_client_packet(*frames[0])


def _amqtt_decode(data: bytes) -> object:
    async def decode() -> object:
        reader = BufferReader(data)
        fixed = await MQTTFixedHeader.from_stream(reader)
        assert fixed is not None
        return await packet_class(fixed).from_stream(reader, fixed_header=fixed)

    return asyncio.run(decode())


def test_connect_encoded_by_amqtt_decodes_with_every_field() -> None:
    """A CONNECT with will, user name and password, encoded by amqtt, decodes field for field."""
    header = ConnectVariableHeader(keep_alive=30)
    header.will_flag = True
    header.will_qos = 1
    header.will_retain_flag = True
    header.username_flag = True
    header.password_flag = True
    payload = ConnectPayload(
        client_id="thermo-0001",
        will_topic="fleet/thermo-0001/status",
        will_message=b'{"online":false}',
        username="thermo-0001",
        password="s3cret",
    )
    packet = _decode_one(ConnectPacket(variable_header=header, payload=payload).to_bytes())
    assert isinstance(packet, Connect)
    assert (packet.client_id, packet.keepalive, packet.clean_session) == ("thermo-0001", 30, False)
    assert packet.will is not None
    assert (packet.will.topic, packet.will.payload, packet.will.qos, packet.will.retain) == (
        "fleet/thermo-0001/status",
        b'{"online":false}',
        1,
        True,
    )
    assert (packet.username, packet.password) == ("thermo-0001", b"s3cret")


def test_publish_and_subscribe_encoded_by_amqtt_decode() -> None:
    """PUBLISH and SUBSCRIBE packets from amqtt's encoder decode to the same values."""
    publish = _decode_one(PublishPacket.build("a/b", b"\x00payload", 7, False, 1, True).to_bytes())
    assert publish == Publish("a/b", b"\x00payload", 1, True, False, 7)
    subscribe = _decode_one(SubscribePacket.build([("a/#", 2), ("b/+", 0)], 3).to_bytes())
    assert subscribe == Subscribe(3, (("a/#", 2), ("b/+", 0)))


def test_our_encodings_decode_with_amqtt() -> None:
    """PUBLISH, CONNACK and SUBACK as we encode them are read back correctly by amqtt."""
    big = b"z" * 70_000  # a three-byte remaining length
    publish = _amqtt_decode(encode_publish(b"t/x", big, 2, retain=True, dup=True, packet_id=513))
    assert isinstance(publish, PublishPacket)
    assert (publish.topic_name, publish.data, publish.qos) == ("t/x", big, 2)
    assert (publish.retain_flag, publish.dup_flag, publish.packet_id) == (True, True, 513)
    ack = _amqtt_decode(connack(True, 0))
    assert (ack.variable_header.session_parent, ack.variable_header.return_code) == (1, 0)  # type: ignore[attr-defined]
    sub = _amqtt_decode(suback(9, [0, 1, 0x80]))
    assert sub.payload.return_codes == [0, 1, 0x80]  # type: ignore[attr-defined]


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30))
def test_frames_split_at_any_boundary_come_out_whole(cuts: list[int]) -> None:
    """However the byte stream is split, the frame reader yields the same whole frames in order."""
    stream = b"".join(encode_publish(b"t", bytes([i]) * i, 0) for i in range(20))
    reader = FrameReader(1024)
    frames = []
    position = 0
    for cut in cuts * 10:
        frames += reader.feed(stream[position : position + cut])
        position += cut
    frames += reader.feed(stream[position:])
    assert [body[3:] for _, _, body in frames] == [bytes([i]) * i for i in range(20)]
    assert reader.buffered == 0


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x30\x05\x00\x02\xff\xfe!", "not valid UTF-8"),
        (b"\x30\x05\x00\x02a+!", "MQTT-3.3.2-2"),
        (b"\x36\x04\x00\x01a\x00", "QoS 3"),
        (b"\x38\x04\x00\x01ab", "DUP set at QoS 0"),
        (b"\x32\x05\x00\x01a\x00\x00", "non-zero"),
        (b"\x32\x04\x00\x01a\x00", "packet too short: PUBLISH packet identifier is missing"),
        (b"\x82\x01\x00", "packet too short: SUBSCRIBE packet identifier is missing"),
        (b"\x82\x06\x00\x01\x00\x01a\x03", "not 0, 1 or 2"),
        (b"\x80\x06\x00\x01\x00\x01a\x00", "reserved flags"),
        (b"\x82\x02\x00\x01", "without any topic filter"),
        (b"\x10\x0c\x00\x04MQTT\x04\x40\x00\x3c\x00\x00", "password without a user name"),
        (b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x00!", "trailing"),
        (b"\x20\x02\x00\x00", "may not be sent by a client"),
        (b"\xc0\x01\x00", "remaining length of 0"),
    ],
)
def test_malformed_packets_are_refused_with_the_reason(data: bytes, reason: str) -> None:
    """Each malformed packet raises ProtocolError whose message says what is wrong."""
    with pytest.raises(ProtocolError, match=reason):
        _decode_one(data)


def test_mqtt5_connect_is_reported_as_unsupported() -> None:
    """A CONNECT with protocol level 5 raises UnsupportedProtocol, so the broker can answer 0x01."""
    with pytest.raises(UnsupportedProtocol) as caught:
        _decode_one(b"\x10\x0f\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x02v5")
    assert caught.value.level == 5


def test_oversized_and_overlong_lengths_are_refused_before_buffering() -> None:
    """A remaining length over the maximum, or of five bytes, is refused from its header alone."""
    with pytest.raises(ProtocolError, match="exceeds the maximum size"):
        FrameReader(1024).feed(b"\x30\x80\x10")
    with pytest.raises(ProtocolError, match="more than 4 bytes"):
        FrameReader(1024).feed(b"\x30\xff\xff\xff\xff\x01")


@pytest.mark.parametrize("length", [4, 127, 128, 16_383, 16_384, 70_000])
def test_publish_remaining_length_takes_the_fewest_bytes_at_each_edge(length: int) -> None:
    """A PUBLISH of any Remaining Length has the shortest encoding of it and decodes whole."""
    payload = b"p" * (length - 3)  # after the topic's length and the topic "t"
    wire = encode_publish(b"t", payload, 0)
    size = 1 if length < 128 else 2 if length < 16_384 else 3
    assert len(wire) == 1 + size + length
    assert _decode_one(wire) == Publish("t", payload, 0, False, False, None)
    publish = _amqtt_decode(wire)
    assert isinstance(publish, PublishPacket)
    assert publish.data == payload
