"""The one exception root of mqtt-fleet.

Exception tree::

    FleetError
    ├── ConfigError          a config, password or ACL file is invalid
    ├── TopicError           a topic name or topic filter is invalid
    ├── ProtocolError        a peer broke the MQTT protocol
    │   └── UnsupportedProtocol   a CONNECT for a protocol level this side does not speak
    ├── ConnectRefused       a broker answered CONNECT with a refusal (CONNACK return code 1-5)
    ├── TransportError       a connection could not be opened, or failed; the message says what
    │   └── ConnectionLost   an open connection ended, or a QoS 1/2 message's session was discarded
    ├── UnsupportedOperation a transport cannot do what was asked (go_silent over aiomqtt)
    └── ExpectationFailed    a stream did not deliver what a test expected (also an AssertionError)
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConnectRefused",
    "ConnectionLost",
    "ExpectationFailed",
    "FleetError",
    "ProtocolError",
    "TopicError",
    "TransportError",
    "UnsupportedOperation",
    "UnsupportedProtocol",
]


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
    """A peer broke the MQTT protocol; the message names the rule, and the connection must close.

    `reason` is the MQTT 5 DISCONNECT reason code a broker sends before closing: 0x81 (malformed
    packet) unless the rule names another, such as 0x82 (protocol error) or 0x95 (packet too large).
    """

    def __init__(self, message: str, reason: int = 0x81) -> None:
        super().__init__(message)
        self.reason = reason


class UnsupportedProtocol(ProtocolError):
    """A CONNECT asked for a protocol level this side does not speak (the broker: other than 3, 4 and 5)."""

    def __init__(self, name: str, level: int) -> None:
        super().__init__(f"unsupported protocol {name!r} level {level}")
        self.name = name
        self.level = level


# The CONNACK return codes of MQTT 3.1.1 (table 3.1); 6-255 are reserved.
_REFUSALS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class ConnectRefused(FleetError):
    """A broker refused a CONNECT; `return_code` is the CONNACK return code, `reason` says it in words."""

    def __init__(self, return_code: int) -> None:
        self.return_code = return_code
        self.reason = _REFUSALS.get(return_code, f"reserved return code {return_code}")
        super().__init__(
            f"the broker refused the connection: {self.reason} (CONNACK return code {return_code})"
        )


class TransportError(FleetError):
    """A connection could not be opened (refused, unreachable, TLS failure, timeout) or failed."""


class ConnectionLost(TransportError):
    """An open connection ended without a clean DISCONNECT, or the session a QoS 1/2 message waited in
    was discarded, so it will never be acknowledged."""


class UnsupportedOperation(FleetError, NotImplementedError):
    """A transport cannot do what was asked, for example `go_silent()` over aiomqtt."""


class ExpectationFailed(FleetError, AssertionError):
    """A stream did not deliver what was expected in time; the message shows what arrived instead."""
