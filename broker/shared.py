"""Shared subscriptions `$share/{group}/{filter}` [MQTT 5.0 4.8.2]: each message goes to one member."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.session import Session, Subscription

__all__ = ["SharedGroup"]


class SharedGroup:
    """The members of one share name and filter; `pick` takes turns, preferring connected members."""

    __slots__ = ("_turn", "members", "name", "topic_filter")

    def __init__(self, name: str, topic_filter: str) -> None:
        self.name = name
        self.topic_filter = topic_filter
        self.members: dict[Session, Subscription] = {}
        self._turn = 0

    def pick(self, exclude: Session | None = None) -> tuple[Session, Subscription] | None:
        """The next member in turn whose client is connected, else the next member at all."""
        members = [item for item in self.members.items() if item[0] is not exclude]
        if not members:
            return None
        count = len(members)
        start = self._turn % count
        self._turn = start + 1
        for offset in range(count):
            session, subscription = members[(start + offset) % count]
            if session.outlet is not None:
                self._turn = start + offset + 1
                return session, subscription
        return members[start]
