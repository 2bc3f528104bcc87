"""MQTT 5 devices against real brokers (the embedded one and Mosquitto), watched by an independent
aiomqtt MQTT 5 client: telemetry properties and topic aliases, will delay, session expiry, a broker's
DISCONNECT, Assigned Client Identifiers and request/response commands."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties

from fleet.errors import ServerDisconnected
from fleet.mqtt import v5
from fleet.simulator import Connected, Control
from fleet.transport import ClientSession, Endpoint, Link
from tests.conftest import BrokerFactory
from tests.fleet.test_simulator import fleet, ids, running
from tests.procs import MOSQUITTO, Proc, free_port

TIMEOUT = 10.0


@dataclass(frozen=True)
class Seen5:
    topic: str
    device: str
    kind: str
    body: Any
    properties: Any  # paho's Properties


@dataclass
class Observer5:
    """Everything the broker delivered on fleet/# to an MQTT 5 subscriber, in arrival order."""

    client: aiomqtt.Client
    seen: list[Seen5] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def _read(self) -> None:
        async for message in self.client.messages:
            parts = message.topic.value.split("/")
            assert isinstance(message.payload, bytes)
            kind = "/".join(parts[2:]).replace("cmd/ack", "ack")
            body = json.loads(message.payload)
            async with self.changed:
                self.seen.append(Seen5(message.topic.value, parts[1], kind, body, message.properties))
                self.changed.notify_all()

    async def wait(self, predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
        try:
            async with asyncio.timeout(timeout), self.changed:
                return await self.changed.wait_for(predicate)
        except TimeoutError:
            raise AssertionError(f"{timeout}s passed without {what}; seen: {self.seen!r}") from None

    def of(self, device: str, kind: str) -> list[Seen5]:
        return [s for s in self.seen if s.device == device and s.kind == kind]

    def births(self, device: str) -> list[Seen5]:
        return [s for s in self.of(device, "status") if s.body["online"] is True]

    def wills(self, device: str) -> list[Seen5]:
        return [s for s in self.of(device, "status") if s.body.get("reason") == "lost"]


@contextlib.asynccontextmanager
async def observe5(port: int, topic: str = "fleet/#") -> AsyncIterator[Observer5]:
    """An aiomqtt MQTT 5 client subscribed to `topic` at QoS 1 before the fleet starts."""
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=f"observer5-{uuid.uuid4().hex[:8]}", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe(topic, qos=1)
        observer = Observer5(client)
        reader = asyncio.create_task(observer._read(), name="observer5.read")
        try:
            yield observer
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


@pytest.fixture
async def embedded_port(broker_factory: BrokerFactory) -> AsyncIterator[int]:
    """The embedded broker only."""
    async with broker_factory() as broker:
        yield broker.port


def v5_group(name: str, **options: Any) -> dict[str, Any]:
    return {"name": name, "count": 1, "protocol": "5", **options}


async def test_v5_telemetry_carries_the_groups_properties_and_aliases_its_topic(port: int) -> None:
    """v5 telemetry carries the group's properties, and its topic alias saves bytes without losing a seq."""
    config = fleet(
        v5_group(
            "g",
            count=2,
            interval=0.05,
            content_type="application/json",
            message_expiry=60,
            topic_alias=True,
            user_properties={"tenant": "acme", "serial": "{group}/{device}/{seq}"},
        )
    )
    devices = ids(config)
    async with observe5(port) as observer, running(config, port) as run:
        for device in devices:
            await observer.wait(
                lambda d=device: len(observer.of(d, "telemetry")) >= 6, f"telemetry of {device}"
            )
    assert run.report is not None
    for device in devices:
        assert observer.births(device)[0].body["protocol"] == 5
        telemetry = observer.of(device, "telemetry")
        assert [s.body["seq"] for s in telemetry] == list(range(len(telemetry)))
        for seen in telemetry:
            assert seen.topic == f"fleet/{device}/telemetry"
            assert seen.properties.ContentType == "application/json"
            assert 0 < seen.properties.MessageExpiryInterval <= 60
            assert seen.properties.UserProperty == [
                ("tenant", "acme"),
                ("serial", f"g/{device}/{seen.body['seq']}"),
            ]
    stats = run.report.group("g")
    topic_bytes = len(f"fleet/{devices[0]}/telemetry")
    assert stats.alias_bytes_saved >= 2 * (5 * (topic_bytes - 3) - 3), stats.alias_bytes_saved
    assert not stats.disconnects, stats.disconnects


async def test_reconnect_within_the_will_delay_fires_no_will(port: int) -> None:
    """A v5 device back within its will delay sends no will; one offline past a longer delay does."""
    session = {"clean_session": False, "session_expiry": 60}
    config = fleet(
        v5_group("quick", will_delay=2, **session),
        v5_group("slow", will_delay=4, **session),
    )
    quick, slow = ids(config)
    control = Control()
    async with observe5(port) as observer, running(config, port, control=control) as run:
        for device in (quick, slow):
            await observer.wait(lambda d=device: observer.births(d), f"the birth of {device}")
        ended = asyncio.get_running_loop().time()
        control.end([quick], "abrupt", offline_for=0.2)
        control.end([slow], "abrupt", offline_for=8.0)
        await observer.wait(lambda: len(observer.births(quick)) == 2, "the quick device's reconnect")
        await observer.wait(lambda: observer.wills(slow), "the slow device's will", timeout=4 + 8)
        assert observer.wills(quick) == []
        # The report owes the slow device's will once its 4 s delay has passed since the end.
        await asyncio.sleep(max(0.0, ended + 4.5 - asyncio.get_running_loop().time()))
    assert control.ends[quick, "abrupt"] == 1
    assert run.report is not None
    assert run.report.group("quick").wills_expected == 0
    assert run.report.group("slow").wills_expected == 1


@pytest.mark.parametrize(("expiry", "offline", "present"), [(60, 0.2, True), (1, 3.0, False)])
async def test_session_expiry_decides_whether_the_session_is_resumed(
    port: int, expiry: int, offline: float, present: bool
) -> None:
    """A persistent v5 session is resumed after a short drop within its expiry, and gone after it expired."""
    config = fleet(v5_group("s", clean_session=False, session_expiry=expiry, will=False))
    (device,) = ids(config)
    control = Control()
    async with observe5(port) as observer, running(config, port, control=control):
        await observer.wait(lambda: observer.births(device), "the birth")
        control.end([device], "abrupt", offline_for=offline)
        await observer.wait(
            lambda: len(observer.births(device)) == 2, "the reconnect", timeout=offline + TIMEOUT
        )
    assert control.connects[Connected(persistent=True, reconnect=True, present=present)] == 1, (
        control.connects
    )


# Mosquitto 2.0.11 closes a taken-over MQTT 5 connection without DISCONNECT 0x8E; the next test makes
# both brokers send one.
async def test_a_takeover_disconnects_the_device_with_0x8e_and_it_reconnects(
    embedded_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A takeover's DISCONNECT 0x8E (embedded broker) is counted and logged once; the device reconnects."""
    config = fleet(v5_group("t", backoff={"initial": 0.1, "max": 0.2}))
    (device,) = ids(config)
    caplog.set_level(logging.WARNING, "fleet.simulator")
    async with observe5(embedded_port) as observer, running(config, embedded_port) as run:
        await observer.wait(lambda: observer.births(device), "the birth")
        taker, _ = await Link.open(
            Endpoint("mqtt", "127.0.0.1", embedded_port),
            v5.Connect(True, 60, device),
            session=ClientSession(),
            on_message=lambda _: None,
        )
        await observer.wait(lambda: len(observer.births(device)) == 2, "the device's reconnect")
        async with asyncio.timeout(TIMEOUT):
            lost = await taker.closed
        assert isinstance(lost, ServerDisconnected), lost
        assert lost.reason_code == 0x8E
    assert run.report is not None
    assert run.report.group("t").disconnects["0x8e"] == 1
    logged = [r.getMessage() for r in caplog.records if "0x8e" in r.getMessage()]
    assert len(logged) == 1, logged
    assert "group t" in logged[0]


@pytest.fixture(params=["embedded", "mosquitto"])
async def small_packet_port(
    request: pytest.FixtureRequest, broker_factory: BrokerFactory
) -> AsyncIterator[int]:
    """Each real broker, with a Maximum Packet Size of 500 bytes."""
    if request.param == "embedded":
        async with broker_factory(max_packet_size=500) as broker:
            yield broker.port
        return
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    port = free_port()
    conf = request.getfixturevalue("tmp_path") / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_packet_size 500\nlog_dest stderr\n"
    )
    proc = Proc([MOSQUITTO, "-c", str(conf)])
    try:
        proc.stderr.wait_for(" running")
        yield port
    finally:
        proc.stop()


async def test_each_brokers_disconnect_is_counted_by_reason_and_logged_once(
    small_packet_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Each DISCONNECT 0x95 (packet too large) is counted, logged once per group, and then reconnected."""
    port = small_packet_port
    config = fleet(v5_group("big", payload_size=1000, backoff={"initial": 0.1, "max": 0.2}))
    (device,) = ids(config)
    caplog.set_level(logging.WARNING, "fleet.simulator")
    async with observe5(port) as observer, running(config, port) as run:
        await observer.wait(lambda: len(observer.births(device)) >= 3, "two reconnects")
    assert run.report is not None
    stats = run.report.group("big")
    assert stats.disconnects["0x95"] >= 2, stats.disconnects
    assert stats.reconnects >= 2
    logged = [r.getMessage() for r in caplog.records if "0x95" in r.getMessage()]
    assert len(logged) == 1, logged
    assert "group big" in logged[0]


async def test_the_broker_assigns_a_client_identifier_to_an_empty_one(port: int) -> None:
    """A v5 link that connects with an empty client id learns the id the broker assigned."""
    link, _ = await Link.open(
        Endpoint("mqtt", "127.0.0.1", port),
        v5.Connect(True, 60, ""),
        session=ClientSession(),
        on_message=print,
    )
    try:
        assert link.version == 5
        assert link.client_id, link.properties
        assert link.client_id == link.properties.assigned_client_identifier
    finally:
        await link.disconnect()


async def test_a_v5_device_answers_a_request_on_its_response_topic(port: int) -> None:
    """A request is acked on its response topic with its correlation data; a plain command on cmd/ack."""
    config = fleet(v5_group("r"))
    (device,) = ids(config)
    replies = f"replies/{uuid.uuid4().hex[:8]}"
    async with observe5(port) as observer, observe5(port, f"{replies}/#") as answers, running(config, port):
        await observer.wait(lambda: observer.births(device), "the birth")
        properties = PahoProperties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ResponseTopic = f"{replies}/1"
        properties.CorrelationData = b"\x00corr-1"
        request = json.dumps({"id": "c1", "op": "ping"})
        await answers.client.publish(f"fleet/{device}/cmd", request, qos=1, properties=properties)
        await answers.wait(lambda: answers.seen, "the reply")
        (reply,) = answers.seen
        assert reply.topic == f"{replies}/1"
        assert reply.body["id"] == "c1"
        assert reply.body["ok"] is True
        assert reply.properties.CorrelationData == b"\x00corr-1"
        await observer.client.publish(f"fleet/{device}/cmd", json.dumps({"id": "c2", "op": "ping"}), qos=1)
        await observer.wait(lambda: observer.of(device, "ack"), "the ack on cmd/ack")
        assert [s.body["id"] for s in observer.of(device, "ack")] == ["c2"]
