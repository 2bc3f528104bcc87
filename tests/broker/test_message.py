"""broker.message.Message keeps the value semantics it had as a frozen dataclass."""

from __future__ import annotations

from broker.message import Message
from fleet.mqtt.properties import EMPTY, Properties


def test_equal_messages_compare_and_hash_alike_and_topic_bytes_is_the_encoded_topic() -> None:
    """Messages with the same fields are equal with equal hashes; topic_bytes is the UTF-8 topic."""
    a = Message("fleet/dév/cmd", b"x", 1, False, Properties(content_type="t"), 5.0, "dev")
    b = Message("fleet/dév/cmd", b"x", 1, False, Properties(content_type="t"), 5.0, "dev")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a.topic_bytes == "fleet/dév/cmd".encode()
    assert (a.properties, a.expires, a.sender) == (Properties(content_type="t"), 5.0, "dev")


def test_messages_differing_in_any_field_are_unequal_and_never_equal_other_types() -> None:
    """Every field takes part in equality; a Message equals no tuple or other object."""
    base = Message("t", b"x", 1, False)
    assert (base.properties, base.expires, base.sender) == (EMPTY, None, None)
    others = [
        Message("u", b"x", 1, False),
        Message("t", b"y", 1, False),
        Message("t", b"x", 0, False),
        Message("t", b"x", 1, True),
        Message("t", b"x", 1, False, Properties(content_type="t")),
        Message("t", b"x", 1, False, EMPTY, 1.0),
        Message("t", b"x", 1, False, EMPTY, None, "dev"),
    ]
    assert all(base != other for other in others)
    assert base != ("t", b"x", 1, False, EMPTY, None, None)


def test_repr_names_every_field_but_topic_bytes() -> None:
    """The repr reads like the dataclass's did: the seven fields by name, topic_bytes left out."""
    text = repr(Message("t", b"x", 1, False, EMPTY, None, "dev"))
    assert text.startswith("Message(topic='t', payload=b'x', qos=1, retain=False, properties=")
    assert text.endswith("expires=None, sender='dev')")
    assert "topic_bytes" not in text
