"""The MQTT 5 codec agrees with paho-mqtt's independent encoder and refuses malformed packets."""

from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties

from fleet.errors import ProtocolError
from fleet.mqtt import v5
from fleet.mqtt.properties import Properties, decode_properties, encode_properties
from fleet.packets import FrameReader
from tests.fleet.malformed5 import MALFORMED


def _decode(data: bytes) -> object:
    frames = FrameReader(1 << 20).feed(data)
    assert len(frames) == 1
    return v5.decode_client_packet(*frames[0])


def test_publish_properties_encoded_by_paho_decode_in_order_with_duplicate_user_properties() -> None:
    """Properties paho packs decode field for field; user properties keep order and duplicate keys."""
    paho = PahoProperties(PacketTypes.PUBLISH)
    paho.MessageExpiryInterval = 30
    paho.ContentType = "application/json"
    paho.ResponseTopic = "reply/1"
    paho.CorrelationData = b"\x01\x02"
    paho.PayloadFormatIndicator = 1
    paho.UserProperty = [("k", "2"), ("a", "1"), ("k", "1")]
    packed = paho.pack()
    properties, end = decode_properties(packed, 0, 3)
    assert end == len(packed)
    assert properties == Properties(
        payload_format_indicator=1,
        message_expiry_interval=30,
        content_type="application/json",
        response_topic="reply/1",
        correlation_data=b"\x01\x02",
        user_properties=(("k", "2"), ("a", "1"), ("k", "1")),
    )
    assert decode_properties(encode_properties(properties), 0, 3)[0] == properties


def test_every_client_packet_round_trips_through_encoder_and_decoder() -> None:
    """CONNECT with a will, PUBLISH, acks, SUBSCRIBE with options, UNSUBSCRIBE, DISCONNECT and AUTH."""
    will = v5.Will("s/t", b"gone", 1, True, Properties(will_delay_interval=5, user_properties=(("a", "b"),)))
    connect = v5.Connect(False, 30, "dev", will, "u", b"p", Properties(session_expiry_interval=60))
    assert _decode(v5.encode_connect(connect)) == connect
    publish = v5.Publish("a/b", b"x", 1, True, False, 9, Properties(topic_alias=3, message_expiry_interval=4))
    wire = v5.encode_publish(
        b"a/b", b"x", 1, retain=True, packet_id=9, properties=encode_properties(publish.properties)
    )
    assert _decode(wire) == publish
    for kind in (4, 5, 7):
        assert _decode(v5.encode_ack(kind, 5, 0x10 if kind != 7 else 0x92)) == v5.Ack(
            kind, 5, 0x10 if kind != 7 else 0x92
        )
    subs = [v5.Subscription("a/#", 2, True, True, 2), v5.Subscription("$share/g/b", 1)]
    subscribe = v5.Subscribe(7, tuple(subs), Properties(subscription_identifiers=(12,)))
    assert _decode(v5.encode_subscribe(7, subs, subscribe.properties)) == subscribe
    assert _decode(v5.encode_unsubscribe(8, ["a/#"])) == v5.Unsubscribe(8, ("a/#",))
    disconnect = v5.Disconnect(4, Properties(session_expiry_interval=0))
    assert _decode(v5.encode_disconnect(4, disconnect.properties)) == disconnect
    auth = v5.Auth(0x19, Properties(authentication_method="SCRAM"))
    assert _decode(v5.encode_auth(0x19, auth.properties)) == auth


def test_every_server_packet_round_trips_through_encoder_and_decoder() -> None:
    """CONNACK with properties, SUBACK and UNSUBACK with reasons, and a DISCONNECT 0x8E decode as encoded."""
    props = Properties(
        receive_maximum=20, topic_alias_maximum=10, server_keep_alive=60, assigned_client_identifier="x"
    )
    packets = [
        (v5.encode_connack(True, 0, props), v5.Connack(True, 0, props)),
        (v5.encode_suback(3, [0, 1, 0x87]), v5.Suback(3, (0, 1, 0x87))),
        (v5.encode_unsuback(3, [0, 0x11]), v5.Unsuback(3, (0, 0x11))),
        (v5.encode_disconnect(0x8E), v5.Disconnect(0x8E)),
    ]
    for wire, value in packets:
        frames = FrameReader(1 << 20).feed(wire)
        assert v5.decode_server_packet(*frames[0]) == value


@pytest.mark.parametrize(("name", "data"), MALFORMED, ids=[name for name, _ in MALFORMED])
def test_malformed_mqtt5_packets_raise_protocol_error_naming_the_statement(name: str, data: bytes) -> None:
    """Each malformed packet (also measured by bench/mqtt5_codec.py) raises ProtocolError citing the spec."""

    def decode_all() -> None:
        for kind, flags, body in FrameReader(1 << 20).feed(data):
            v5.decode_client_packet(kind, flags, body)

    with pytest.raises(ProtocolError, match=r"MQTT|\[\d"):
        decode_all()


# Remaining Lengths at each edge of the one-, two- and three-byte encodings [MQTT 5.0 1.5.5].
_LENGTH_EDGES = (6, 127, 128, 16_383, 16_384)


@pytest.mark.parametrize("length", _LENGTH_EDGES)
def test_publish_remaining_length_takes_the_fewest_bytes_at_each_edge(length: int) -> None:
    """A PUBLISH of any Remaining Length has the shortest Variable Byte Integer and decodes whole."""
    overhead = 2 + 1 + 2 + 1  # topic length, topic "t", packet id, properties length
    payload = b"p" * (length - overhead)
    wire = v5.encode_publish(b"t", payload, 1, packet_id=3)
    remaining = overhead + len(payload)
    size = 1 if remaining < 128 else 2 if remaining < 16_384 else 3
    assert wire[1 : 1 + size] == v5.encode_variable_int(remaining)
    assert len(wire) == 1 + size + remaining
    assert _decode(wire) == v5.Publish("t", payload, 1, False, False, 3)


def test_short_acks_decode_and_a_zero_packet_identifier_is_refused() -> None:
    """A PUBACK of two bytes is reason 0 without properties; packet identifier 0 is a protocol error."""
    assert _decode(v5.encode_ack(4, 5)) == v5.Ack(4, 5)
    assert _decode(bytes((0x40, 2, 0, 0x2A))) == v5.Ack(4, 42)
    with pytest.raises(ProtocolError, match=r"PUBACK packet identifier must be non-zero \[MQTT-2.2.1-3\]"):
        _decode(bytes((0x40, 2, 0, 0)))


def test_publish_without_properties_and_a_cut_packet_identifier() -> None:
    """A PUBLISH whose property length is 0 has no properties; one cut inside its packet id is refused."""
    assert _decode(bytes((0x32, 7, 0, 1)) + b"a" + bytes((0, 9, 0)) + b"x") == v5.Publish(
        "a", b"x", 1, False, False, 9
    )
    with pytest.raises(ProtocolError, match=r"PUBLISH too short: packet identifier is missing"):
        _decode(bytes((0x32, 4, 0, 1)) + b"a" + bytes((0,)))
