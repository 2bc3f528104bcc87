"""The one exception root of mqtt-fleet.

Exception tree::

    FleetError
    ├── ConfigError          a config, password or ACL file is invalid
    ├── TopicError           a topic name or topic filter is invalid
    ├── ProtocolError        a peer broke the MQTT protocol
    │   └── UnsupportedProtocol   a CONNECT for a protocol level this side does not speak
    ├── ConnectRefused       a broker refused a CONNECT (3.1.1 return code 1-5, MQTT 5 reason >= 0x80)
    ├── TransportError       a connection could not be opened, or failed; the message says what
    │   ├── PublishRefused   an MQTT 5 broker refused a QoS 1/2 message with a reason code
    │   └── ConnectionLost   an open connection ended, or a QoS 1/2 message's session was discarded
    │       └── ServerDisconnected  an MQTT 5 broker sent DISCONNECT with a reason code
    ├── UnsupportedOperation a transport cannot do what was asked (go_silent over aiomqtt)
    ├── StoreError           the broker's persistent store cannot be opened, read or written
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
    "PublishRefused",
    "ServerDisconnected",
    "StoreError",
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


# The CONNACK reason codes of MQTT 5 (table 3-1) that refuse a connection.
_REFUSALS5 = {
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x83: "implementation specific error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8C: "bad authentication method",
    0x90: "topic name invalid",
    0x95: "packet too large",
    0x97: "quota exceeded",
    0x99: "payload format invalid",
    0x9A: "retain not supported",
    0x9B: "QoS not supported",
    0x9C: "use another server",
    0x9D: "server moved",
    0x9F: "connection rate exceeded",
}


class ConnectRefused(FleetError):
    """A broker refused a CONNECT; `return_code` is the CONNACK return code (MQTT 3.1.1) or reason
    code (MQTT 5, `version` 5), `reason` says it in words."""

    def __init__(self, return_code: int, version: int = 4) -> None:
        self.return_code = return_code
        self.version = version
        if version == 5:
            self.reason = _REFUSALS5.get(return_code, f"reason code {return_code:#04x}")
            code = f"CONNACK reason code {return_code:#04x}"
        else:
            self.reason = _REFUSALS.get(return_code, f"reserved return code {return_code}")
            code = f"CONNACK return code {return_code}"
        super().__init__(f"the broker refused the connection: {self.reason} ({code})")

    @property
    def bad_login(self) -> bool:
        """The broker refused the user name, the password or the client's authority."""
        return self.return_code in ((0x86, 0x87) if self.version == 5 else (4, 5))


class TransportError(FleetError):
    """A connection could not be opened (refused, unreachable, TLS failure, timeout) or failed."""


class PublishRefused(TransportError):
    """An MQTT 5 broker answered a QoS 1/2 PUBLISH with PUBACK or PUBREC and an error `reason_code`
    (0x87 not authorized, 0x97 quota exceeded...): it took no responsibility for the message."""

    def __init__(self, message: str, reason_code: int) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class ConnectionLost(TransportError):
    """An open connection ended without a clean DISCONNECT, or the session a QoS 1/2 message waited in
    was discarded, so it will never be acknowledged."""


class ServerDisconnected(ConnectionLost):
    """An MQTT 5 broker sent DISCONNECT: `reason_code` says why (0x8E session taken over, 0x8B
    server shutting down, 0x98 administrative action...), `reason_string` is the broker's own words."""

    def __init__(self, reason_code: int, reason_string: str | None = None) -> None:
        words = f": {reason_string}" if reason_string else ""
        super().__init__(f"the broker disconnected the client with reason code {reason_code:#04x}{words}")
        self.reason_code = reason_code
        self.reason_string = reason_string


class UnsupportedOperation(FleetError, NotImplementedError):
    """A transport cannot do what was asked, for example `go_silent()` over aiomqtt."""


class StoreError(FleetError):
    """The broker's persistent store is unreadable, corrupt, of a newer schema, or cannot be written;
    the message names the file."""


class ExpectationFailed(FleetError, AssertionError):
    """A stream did not deliver what was expected in time; the message shows what arrived instead."""
