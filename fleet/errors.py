"""The one exception root of mqtt-fleet.

Exception tree::

    FleetError
    ├── ConfigError          a config, password or ACL file is invalid
    ├── TopicError           a topic name or topic filter is invalid
    └── ProtocolError        a peer broke the MQTT protocol
        └── UnsupportedProtocol   a CONNECT for another protocol level (MQTT 5)
"""

from __future__ import annotations

__all__ = ["ConfigError", "FleetError", "ProtocolError", "TopicError", "UnsupportedProtocol"]


class FleetError(Exception):
    """Base class of every error mqtt-fleet raises on purpose."""


class ConfigError(FleetError):
    """A config file is invalid; `where` is 'file: field.path' or 'file:line'."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class TopicError(FleetError, ValueError):
    """A topic name or filter breaks the MQTT 3.1.1 rules; the message says which rule."""


class ProtocolError(FleetError):
    """A peer broke the MQTT protocol; the message names the rule, and the connection must close."""


class UnsupportedProtocol(ProtocolError):
    """A CONNECT asked for a protocol level this side does not speak (for example MQTT 5)."""

    def __init__(self, name: str, level: int) -> None:
        super().__init__(f"unsupported protocol {name!r} level {level}")
        self.name = name
        self.level = level
