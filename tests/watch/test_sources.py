"""`MqttSource` on real brokers: it receives the fleet's topics and `$SYS`, publishes commands, and
comes back after the broker does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from fleet.endpoint import Endpoint
from fleet.errors import TransportError
from fleet.watch.sources import MqttSource
from tests.conftest import BrokerFactory
from tests.procs import Mosquitto, Paho

TIMEOUT = 10.0


class Inbox:
    """What a source delivered and said, with waits bounded by TIMEOUT."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.notes: list[str] = []
        self._changed = asyncio.Event()

    def deliver(self, topic: str, payload: bytes, retain: bool) -> None:
        self.messages.append((topic, payload, retain))
        self._changed.set()

    def notify(self, text: str) -> None:
        self.notes.append(text)
        self._changed.set()

    async def wait(self, condition: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(TIMEOUT):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"not within {TIMEOUT}s: {what}; notes: {self.notes}") from None

    def last_note(self, start: str) -> bool:
        return bool(self.notes) and self.notes[-1].startswith(start)


@contextlib.asynccontextmanager
async def attached(source: MqttSource, inbox: Inbox) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(source.run(inbox.deliver, inbox.notify), name="test.source")
    try:
        await inbox.wait(lambda: inbox.last_note("attached"), "attached")
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_on_mosquitto_it_gets_the_prefix_and_sys_and_publishes_commands(
    mosquitto_broker: Mosquitto, paho_client: Callable[..., Paho]
) -> None:
    """On Mosquitto, retained and live messages under the prefix and $SYS arrive; a command is published."""
    device = paho_client("watch-device")
    device.connect(mosquitto_broker.port)
    device.subscribe("fleet/d-1/cmd", 1)
    device.publish("fleet/d-1/status", b'{"online": true}', 1)
    device.client.publish("fleet/d-1/status", b'{"online": true}', 1, retain=True).wait_for_publish(TIMEOUT)
    inbox = Inbox()
    source = MqttSource(Endpoint("mqtt", "127.0.0.1", mosquitto_broker.port))
    async with attached(source, inbox):
        await inbox.wait(
            lambda: ("fleet/d-1/status", b'{"online": true}', True) in inbox.messages, "retained"
        )
        await asyncio.to_thread(device.publish, "fleet/d-1/telemetry", b'{"seq": 0}', 0)
        await inbox.wait(lambda: any(m[0] == "fleet/d-1/telemetry" for m in inbox.messages), "telemetry")
        await inbox.wait(lambda: any(m[0].startswith("$SYS/broker/") for m in inbox.messages), "$SYS")
        await source.publish("fleet/d-1/cmd", b'{"id":"w1","op":"ping"}')
        command = await asyncio.to_thread(device.message)
        assert (command.topic, command.payload) == ("fleet/d-1/cmd", b'{"id":"w1","op":"ping"}')


async def test_it_reattaches_when_the_broker_comes_back(broker_factory: BrokerFactory) -> None:
    """The broker's loss is noted and commands fail with a reason; after its restart the source is back."""
    inbox = Inbox()
    task: asyncio.Task[None] | None = None
    try:
        async with broker_factory() as first:
            port = first.port
            source = MqttSource(Endpoint("mqtt", "127.0.0.1", port), backoff_max=0.2)
            task = asyncio.create_task(source.run(inbox.deliver, inbox.notify), name="test.source")
            await inbox.wait(lambda: inbox.last_note("attached"), "attached")
        await inbox.wait(lambda: inbox.last_note("lost"), "the loss noted")
        with pytest.raises(TransportError, match="not attached"):
            await source.publish("fleet/d-1/cmd", b"{}")
        async with broker_factory(port=port):
            await inbox.wait(lambda: inbox.last_note("attached"), "attached again")
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
