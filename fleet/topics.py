"""MQTT topic names and topic filters: validation and matching (MQTT 3.1.1 section 4.7).

This is the one matcher of the project: the broker, the bridges and the TUI all use it.
"""

from __future__ import annotations

from typing import Literal

from fleet.errors import TopicError

__all__ = ["MAX_TOPIC_BYTES", "TopicKind", "classify", "matches", "validate_filter", "validate_topic"]

TopicKind = Literal["telemetry", "status", "ack", "raw"]
_SUFFIXES: dict[tuple[str, ...], TopicKind] = {
    ("telemetry",): "telemetry",
    ("status",): "status",
    ("cmd", "ack"): "ack",
}

MAX_TOPIC_BYTES = 65535


def _check_common(text: str, what: str) -> None:
    if not text:
        raise TopicError(f"{what} must be at least one character long [MQTT-4.7.3-1]")
    if "\x00" in text:
        raise TopicError(f"{what} must not contain the null character U+0000 [MQTT-4.7.3-2]")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        raise TopicError(f"{what} is longer than {MAX_TOPIC_BYTES} bytes [MQTT-4.7.3-3]")


def validate_topic(topic: str) -> str:
    """Return `topic` if it is a valid topic name (no wildcards), else raise TopicError."""
    _check_common(topic, "a topic name")
    if "+" in topic or "#" in topic:
        raise TopicError(f"topic name {topic!r} must not contain wildcards '+' or '#' [MQTT-3.3.2-2]")
    return topic


def validate_filter(topic_filter: str) -> str:
    """Return `topic_filter` if it is a valid topic filter, else raise TopicError with the rule broken."""
    _check_common(topic_filter, "a topic filter")
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level:
            if level != "#":
                raise TopicError(f"filter {topic_filter!r}: '#' must occupy a whole level [MQTT-4.7.1-2]")
            if index != len(levels) - 1:
                raise TopicError(f"filter {topic_filter!r}: '#' must be the last level [MQTT-4.7.1-2]")
        elif "+" in level and level != "+":
            raise TopicError(f"filter {topic_filter!r}: '+' must occupy a whole level [MQTT-4.7.1-3]")
    return topic_filter


def matches(topic_filter: str, topic: str) -> bool:
    """Whether a valid `topic_filter` matches the topic name `topic`.

    Wildcards at the first level never match topics that start with '$' [MQTT-4.7.2-1].
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for index, f_level in enumerate(f_levels):
        if f_level == "#":
            return True
        if index >= len(t_levels):
            return False
        if f_level != "+" and f_level != t_levels[index]:
            return False
    return len(f_levels) == len(t_levels)


def classify(topic: str, prefix: str = "fleet") -> tuple[str | None, TopicKind]:
    """The device and kind of a topic under the default scheme `{prefix}/{device}/...`.

    `raw` (with no device) for topics outside the scheme; the bridges and the TUI both use it.
    """
    levels = topic.split("/")
    if len(levels) < 3 or levels[0] != prefix or not levels[1]:
        return None, "raw"
    return levels[1], _SUFFIXES.get(tuple(levels[2:]), "raw")
