"""Broker-wide counters, published under $SYS and logged at shutdown."""

from __future__ import annotations

__all__ = ["Stats"]


class Stats:
    """Monotonic counters; the broker's single event loop is their only writer."""

    __slots__ = (
        "clients_maximum",
        "connections_total",
        "messages_dropped",
        "messages_expired",
        "messages_oversize",
        "messages_received",
        "messages_sent",
        "protocol_errors",
        "wills_published",
    )

    def __init__(self) -> None:
        self.messages_received = 0
        self.messages_sent = 0
        self.messages_dropped = 0
        self.messages_expired = 0
        self.messages_oversize = 0
        self.connections_total = 0
        self.clients_maximum = 0
        self.protocol_errors = 0
        self.wills_published = 0
