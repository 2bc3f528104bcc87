"""Where `fleet watch` gets its messages: an injected source.

`MqttSource` attaches to any broker as an ordinary MQTT client, on the project's lean transport
(`fleet.transport.Link`: the message is decoded once, no task or future per message). `ListSource`
replays a fixed list of messages, so that tests and screenshots see the same fleet every run.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from fleet.endpoint import Endpoint
from fleet.errors import FleetError, TransportError
from fleet.packets import Publish
from fleet.transport import ClientSession, Link, make_connect

__all__ = ["Deliver", "ListSource", "Message", "MqttSource", "Notify", "Source"]

Deliver = Callable[[str, bytes, bool], None]
"""Called with (topic, payload, retain) for each message, in order."""
Notify = Callable[[str], None]
"""Called with news about the source itself: connected, lost, refused."""


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a `ListSource`."""

    topic: str
    payload: bytes
    retain: bool = False


class Source(Protocol):
    @property
    def description(self) -> str:
        """Where the messages come from, for the header."""

    async def run(self, deliver: Deliver, notify: Notify) -> None:
        """Deliver messages until cancelled."""

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish a message (a device command); raises FleetError when it cannot."""


class ListSource:
    """Delivers `messages` at once, then nothing; what is published is kept in `published`."""

    def __init__(self, messages: Sequence[Message], description: str = "recorded messages") -> None:
        self.messages = messages
        self.published: list[tuple[str, bytes]] = []
        self._description = description

    @property
    def description(self) -> str:
        return self._description

    async def run(self, deliver: Deliver, notify: Notify) -> None:
        for message in self.messages:
            deliver(message.topic, message.payload, message.retain)
        await asyncio.Event().wait()

    async def publish(self, topic: str, payload: bytes) -> None:
        self.published.append((topic, payload))


class MqttSource:
    """Subscribes to `{prefix}/#` and `$SYS/#` at QoS 1, reconnects with backoff, publishes commands."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        prefix: str = "fleet",
        username: str | None = None,
        password: str | None = None,
        backoff_max: float = 10.0,
    ) -> None:
        self.endpoint = endpoint
        self.prefix = prefix
        self._connect = make_connect(
            f"fleet-watch-{uuid.uuid4().hex[:12]}",
            keepalive=30,
            username=username,
            password=None if password is None else password.encode(),
        )
        self._backoff_max = backoff_max
        self._link: Link | None = None

    @property
    def description(self) -> str:
        return str(self.endpoint)

    async def run(self, deliver: Deliver, notify: Notify) -> None:
        def on_message(packet: Publish) -> None:
            deliver(packet.topic, packet.payload, packet.retain)

        attempt = 0
        while True:
            try:
                link, _ = await Link.open(
                    self.endpoint, self._connect, session=ClientSession(), on_message=on_message
                )
            except FleetError as exc:
                if attempt == 0:
                    notify(f"cannot attach to {self.endpoint}: {exc}; retrying")
            else:
                try:
                    await link.subscribe([(f"{self.prefix}/#", 1), ("$SYS/#", 1)])
                    self._link = link
                    attempt = 0
                    notify(f"attached to {self.endpoint}")
                    reason = await link.closed
                    notify(f"lost {self.endpoint}: {reason}; reconnecting")
                except FleetError as exc:
                    notify(f"lost {self.endpoint}: {exc}; reconnecting")
                finally:
                    self._link = None
                    await _leave(link)
            delay = min(self._backoff_max, 0.5 * 2 ** min(attempt, 16))
            attempt += 1
            await asyncio.sleep(random.uniform(delay / 2, delay))

    async def publish(self, topic: str, payload: bytes) -> None:
        link = self._link
        if link is None or not link.connected:
            raise TransportError(f"not attached to {self.endpoint}")
        future = link.publish(topic, payload, qos=1)
        assert future is not None
        try:
            async with asyncio.timeout(10.0):
                await future
        except TimeoutError:
            raise TransportError(f"{self.endpoint} did not acknowledge the command within 10s") from None


async def _leave(link: Link) -> None:
    """Disconnect cleanly, also when cancelled (the watcher is shutting down)."""
    if link.connected:
        try:
            await asyncio.shield(link.disconnect(timeout=2.0))
        except OSError:  # the broker closed the socket first
            link.abort()
        except asyncio.CancelledError:
            link.abort()
            raise
