"""The application message as the broker routes it."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Message"]


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    topic_bytes: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "topic_bytes", self.topic.encode("utf-8"))
