"""The application message as the broker routes it, in either protocol version."""

from __future__ import annotations

from dataclasses import dataclass, field

from fleet.mqtt.properties import EMPTY, Properties

__all__ = ["Message"]


@dataclass(frozen=True, slots=True)
class Message:
    """`properties` are the MQTT 5 ones forwarded unchanged: Payload Format Indicator, Content Type,
    Response Topic, Correlation Data and User Properties [MQTT-3.3.2-17, -18, -20]. `expires` is the
    event-loop time at which a Message Expiry Interval runs out, `sender` the publisher's client id
    (for No Local)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties = EMPTY
    expires: float | None = None
    sender: str | None = None
    topic_bytes: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "topic_bytes", self.topic.encode("utf-8"))
