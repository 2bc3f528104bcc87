"""The application message as the broker routes it, in either protocol version."""

from __future__ import annotations

from typing import Final

from fleet.mqtt.properties import EMPTY, Properties

__all__ = ["Message"]


class Message:
    """`properties` are the MQTT 5 ones forwarded unchanged: Payload Format Indicator, Content Type,
    Response Topic, Correlation Data and User Properties [MQTT-3.3.2-17, -18, -20]. `expires` is the
    event-loop time at which a Message Expiry Interval runs out, `sender` the publisher's client id
    (for No Local); `topic_bytes` is `topic` encoded, once.

    A value: its attributes are set once, here, and never changed (mypy holds every one `Final`).
    It is a `__slots__` class rather than a frozen dataclass because the broker makes one per PUBLISH
    routed: a frozen dataclass sets each of its eight attributes through `object.__setattr__`, which
    cost about a tenth of the machine instructions of an MQTT 3.1.1 delivery (bench/README.md,
    "Third pass").
    Equality, hashing and repr are a dataclass's, `topic_bytes` left out.
    """

    __slots__ = ("expires", "payload", "properties", "qos", "retain", "sender", "topic", "topic_bytes")

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: Properties = EMPTY,
        expires: float | None = None,
        sender: str | None = None,
    ) -> None:
        self.topic: Final = topic
        self.payload: Final = payload
        self.qos: Final = qos
        self.retain: Final = retain
        self.properties: Final = properties
        self.expires: Final = expires
        self.sender: Final = sender
        self.topic_bytes: Final = topic.encode("utf-8")

    def _fields(self) -> tuple[object, ...]:
        return (self.topic, self.payload, self.qos, self.retain, self.properties, self.expires, self.sender)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Message)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"Message(topic={self.topic!r}, payload={self.payload!r}, qos={self.qos!r}, "
            f"retain={self.retain!r}, properties={self.properties!r}, expires={self.expires!r}, "
            f"sender={self.sender!r})"
        )
