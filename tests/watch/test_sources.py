"""`MqttSource` on real brokers: it receives the fleet's topics and `$SYS`, publishes commands, and
comes back after the broker does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from fleet.endpoint import Endpoint
from fleet.errors import TransportError
from fleet.mqtt import v5
from fleet.mqtt.properties import EMPTY, Properties, encode_property_body
from fleet.transport import ClientSession, Link
from fleet.watch.sources import Attachment, MqttSource
from tests.conftest import BrokerFactory
from tests.procs import MOSQUITTO_PUB, Mosquitto, Paho, needs_mosquitto_clients, run

TIMEOUT = 10.0


class Inbox:
    """What a source delivered and said, with waits bounded by TIMEOUT."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.properties: list[Properties] = []  # of each message, in the same order
        self.notes: list[Attachment] = []
        self._changed = asyncio.Event()

    def deliver(
        self, topic: str, payload: bytes, retain: bool, qos: int, properties: Properties = EMPTY, /
    ) -> None:
        self.messages.append((topic, payload, retain))
        self.properties.append(properties)
        self._changed.set()

    def notify(self, attachment: Attachment) -> None:
        self.notes.append(attachment)
        self._changed.set()

    async def wait(self, condition: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(TIMEOUT):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"not within {TIMEOUT}s: {what}; notes: {self.notes}") from None

    def state(self) -> str | None:
        return self.notes[-1].state if self.notes else None


@contextlib.asynccontextmanager
async def attached(source: MqttSource, inbox: Inbox) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(source.run(inbox.deliver, inbox.notify), name="test.source")
    try:
        await inbox.wait(lambda: inbox.state() == "connected", "connected")
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
            await inbox.wait(lambda: inbox.state() == "connected", "connected")
        await inbox.wait(lambda: inbox.state() == "retrying", "the loss noted")
        assert [note.state for note in inbox.notes] == ["connecting", "connected", "lost", "retrying"]
        with pytest.raises(TransportError, match="not attached"):
            await source.publish("fleet/d-1/cmd", b"{}")
        async with broker_factory(port=port):
            await inbox.wait(lambda: inbox.state() == "connected", "connected again")
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_on_mosquitto_more_retained_statuses_than_its_queue_all_arrive_and_again_on_resync(
    mosquitto_broker: Mosquitto, paho_client: Callable[..., Paho]
) -> None:
    """2,000 retained statuses, beyond Mosquitto's 20 in flight + 1,000 queued: all arrive, and a resync
    delivers every one again (a QoS 1 subscription got 1,020)."""
    count = 2_000
    devices = paho_client("watch-devices")
    devices.connect(mosquitto_broker.port)
    sent = [
        devices.client.publish(f"fleet/d-{i:04d}/status", b'{"online": false}', 1, retain=True)
        for i in range(count)
    ]
    for info in sent:
        await asyncio.to_thread(info.wait_for_publish, TIMEOUT)
    inbox = Inbox()
    source = MqttSource(Endpoint("mqtt", "127.0.0.1", mosquitto_broker.port))

    def statuses() -> int:
        return sum(1 for topic, _, retain in inbox.messages if retain and topic.endswith("/status"))

    async with attached(source, inbox):
        await inbox.wait(lambda: statuses() == count, f"{count} retained statuses")
        await source.resync()
        await inbox.wait(lambda: statuses() == 2 * count, f"{count} retained statuses again")


@needs_mosquitto_clients
async def test_over_mqtt5_each_message_comes_with_its_properties(port: int) -> None:
    """With version=5, a message published by `mosquitto_pub -V mqttv5 -D publish ...` arrives with
    its user properties in order (duplicate keys kept), content type and response topic."""
    inbox = Inbox()
    source = MqttSource(Endpoint("mqtt", "127.0.0.1", port), version=5)
    assert source.description.endswith("(MQTT 5)")
    async with attached(source, inbox):
        argv = [MOSQUITTO_PUB or "mosquitto_pub", "-V", "mqttv5", "-h", "127.0.0.1", "-p", str(port)]
        argv += ["-t", "fleet/d-1/telemetry", "-m", '{"seq": 0}', "-q", "1"]
        argv += [
            "-D",
            "publish",
            "user-property",
            "tenant",
            "a",
            "-D",
            "publish",
            "user-property",
            "tenant",
            "b",
        ]
        argv += [
            "-D",
            "publish",
            "content-type",
            "application/json",
            "-D",
            "publish",
            "response-topic",
            "r/1",
        ]
        published = await asyncio.to_thread(run, argv)
        assert published.returncode == 0, published
        await inbox.wait(lambda: any(m[0] == "fleet/d-1/telemetry" for m in inbox.messages), "telemetry")
        properties = inbox.properties[[m[0] for m in inbox.messages].index("fleet/d-1/telemetry")]
        assert properties.user_properties == (("tenant", "a"), ("tenant", "b"))
        assert (properties.content_type, properties.response_topic) == ("application/json", "r/1")


async def test_over_mqtt311_messages_carry_no_properties(port: int) -> None:
    """The default version is MQTT 3.1.1: a message published with MQTT 5 properties arrives with
    EMPTY properties."""
    endpoint = Endpoint("mqtt", "127.0.0.1", port)
    device, _ = await Link.open(
        endpoint,
        v5.Connect(True, 30, "watch-test-device"),
        session=ClientSession(),
        on_message=lambda _: None,
    )
    try:
        sent = device.publish(
            "fleet/d-1/status",
            b'{"online": true}',
            1,
            True,
            encode_property_body(Properties(content_type="application/json")),
        )
        assert sent is not None
        await sent
    finally:
        await device.disconnect(timeout=2.0)
    inbox = Inbox()
    async with attached(MqttSource(endpoint), inbox):
        await inbox.wait(lambda: any(m[0] == "fleet/d-1/status" for m in inbox.messages), "the status")
        assert set(inbox.properties) == {EMPTY}


async def test_a_server_disconnect_is_noted_with_its_reason_code_and_name(
    request: pytest.FixtureRequest, port: int
) -> None:
    """A second MQTT 5 client with the watcher's client id takes its session over: the embedded
    broker's DISCONNECT is noted as lost with 'DISCONNECT 0x8e Session taken over' [MQTT-3.1.4-3];
    Mosquitto 2.0.11 closes the connection without DISCONNECT, and the note says so."""
    told = "DISCONNECT 0x8e Session taken over" if "embedded" in request.node.name else "the broker closed"
    inbox = Inbox()
    source = MqttSource(Endpoint("mqtt", "127.0.0.1", port), version=5, backoff_max=5.0)
    async with attached(source, inbox):
        taker, _ = await Link.open(
            Endpoint("mqtt", "127.0.0.1", port),
            v5.Connect(True, 30, source.client_id),
            session=ClientSession(),
            on_message=lambda _: None,
        )
        try:
            await inbox.wait(lambda: any(n.state == "lost" for n in inbox.notes), "the loss")
        finally:
            with contextlib.suppress(TransportError):
                await taker.disconnect(timeout=2.0)
    lost = next(n for n in inbox.notes if n.state == "lost")
    assert told in lost.detail, lost
