"""The simulator against real brokers (the embedded one and Mosquitto), watched by an independent aiomqtt
client: wills, seq across reconnects, persistent sessions, command acks, the report and clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import pytest

from fleet.report import Report
from fleet.schema import FleetConfig
from fleet.simulator import Shard, Target, simulate
from fleet.stress.proxy import fault_proxy
from fleet.transport import Endpoint
from tests.conftest import BrokerFactory

TIMEOUT = 10.0  # the bound on every wait; a passing test waits far less


# Brokers


@pytest.fixture
async def embedded_port(broker_factory: BrokerFactory) -> AsyncIterator[int]:
    """The embedded broker only, for tests of the simulator itself rather than of broker behaviour."""
    async with broker_factory() as broker:
        yield broker.port


def target(port: int) -> Target:
    return Target(Endpoint("mqtt", "127.0.0.1", port))


def fleet(*groups: dict[str, Any], seed: int = 1) -> FleetConfig:
    """A config whose device ids are unique to this test, so that nothing retained elsewhere can match."""
    tag = uuid.uuid4().hex[:6]
    made = []
    for group in groups:
        made.append({"id": f"{group['name']}-{tag}-{{index}}", "interval": 0.1, "jitter": 0, **group})
    return FleetConfig.model_validate({"seed": seed, "groups": made})


def ids(config: FleetConfig, name: str | None = None) -> list[str]:
    return [
        group.device_id(index)
        for group in config.groups
        if name is None or group.name == name
        for index in range(group.count)
    ]


def intermittent(online: float, offline: float, **ends: float) -> dict[str, Any]:
    return {
        "mode": "intermittent",
        "online": {"dist": "fixed", "value": online},
        "offline": {"dist": "fixed", "value": offline},
        "ends": {"clean": 0, **ends},
    }


# The observer: an independent MQTT client


@dataclass(frozen=True)
class Seen:
    topic: str
    device: str
    kind: str  # telemetry, status, cmd, ack
    body: Any
    retain: bool
    at: float  # time.monotonic() on arrival

    def __repr__(self) -> str:
        return f"<{self.at:.3f} {self.topic} {json.dumps(self.body)}>"


@dataclass
class Observer:
    """Everything the broker delivered on fleet/#, in arrival order."""

    client: aiomqtt.Client
    seen: list[Seen] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def _read(self) -> None:
        async for message in self.client.messages:
            parts = message.topic.value.split("/")
            assert isinstance(message.payload, bytes)
            body = json.loads(message.payload)
            kind = "/".join(parts[2:]).replace("cmd/ack", "ack")
            async with self.changed:
                self.seen.append(
                    Seen(message.topic.value, parts[1], kind, body, message.retain, time.monotonic())
                )
                self.changed.notify_all()

    async def wait(self, predicate: Callable[[], Any], timeout: float = TIMEOUT, what: str = "") -> Any:
        """Wait (bounded) until `predicate()` is truthy; return its value."""
        try:
            async with asyncio.timeout(timeout), self.changed:
                return await self.changed.wait_for(predicate)
        except TimeoutError:
            raise AssertionError(
                f"{timeout}s passed without {what or predicate}; seen: {self.seen!r}"
            ) from None

    def of(self, device: str, kind: str | None = None) -> list[Seen]:
        return [s for s in self.seen if s.device == device and (kind is None or s.kind == kind)]

    def births(self, device: str) -> list[Seen]:
        return [s for s in self.of(device, "status") if s.body["online"] is True]

    def offline(self, device: str, reason: str) -> list[Seen]:
        return [
            s for s in self.of(device, "status") if s.body == {**s.body, "online": False, "reason": reason}
        ]

    def wills(self, device: str | None = None) -> list[Seen]:
        devices = {s.device for s in self.seen} if device is None else {device}
        return [s for d in sorted(devices) for s in self.offline(d, "lost")]

    def seqs(self, device: str) -> list[int]:
        return [s.body["seq"] for s in self.of(device, "telemetry")]

    async def command(self, device: str, body: dict[str, Any]) -> None:
        await self.client.publish(f"fleet/{device}/cmd", json.dumps(body), qos=1)

    async def ack(self, device: str, command_id: str) -> dict[str, Any]:
        """Wait for the device's ack of command `command_id`; return its body."""

        def find() -> Any:
            return next((s.body for s in self.of(device, "ack") if s.body.get("id") == command_id), None)

        body: dict[str, Any] = await self.wait(find, what=f"an ack of {command_id!r} from {device}")
        return body


@contextlib.asynccontextmanager
async def observe(port: int) -> AsyncIterator[Observer]:
    """An aiomqtt client subscribed to fleet/# at QoS 1 before the fleet starts."""
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"observer-{uuid.uuid4().hex[:8]}") as client:
        await client.subscribe("fleet/#", qos=1)
        observer = Observer(client)
        reader = asyncio.create_task(observer._read(), name="observer.read")
        try:
            yield observer
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def retained_statuses(port: int, devices: list[str], timeout: float = 3.0) -> dict[str, Any]:
    """What a client subscribing now gets as each device's retained status; a device with none is missing.

    Retained messages come right after the SUBACK, so `timeout` bounds only the failure case.
    """
    statuses: dict[str, Any] = {}
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe("fleet/+/status", qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                async for message in client.messages:
                    device = message.topic.value.split("/")[1]
                    if device in devices:
                        assert message.retain
                        assert isinstance(message.payload, bytes)
                        statuses[device] = json.loads(message.payload)
                        if len(statuses) == len(devices):
                            break
    return statuses


@dataclass
class Run:
    stop: asyncio.Event
    task: asyncio.Task[Report]
    report: Report | None = None


@contextlib.asynccontextmanager
async def running(config: FleetConfig, port: int, **options: Any) -> AsyncIterator[Run]:
    """Run `config` until the block ends; entering waits (bounded) for `ready`, every device connected."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        simulate(config, target(port), stop=stop, ready=ready.set, **options), name="test.simulate"
    )
    run = Run(stop, task)
    try:
        async with asyncio.timeout(TIMEOUT):
            waiter = asyncio.create_task(ready.wait())
            await asyncio.wait([waiter, task], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        if task.done():
            task.result()  # raises what ended the run early
            raise AssertionError("the fleet stopped before it was ready")
        yield run
    finally:
        stop.set()
        async with asyncio.timeout(TIMEOUT):
            run.report = await task


def until(*conditions: Callable[[], bool]) -> Callable[[], bool]:
    return lambda: all(condition() for condition in conditions)


async def subscribed(observer: Observer, device: str) -> None:
    """Wait for the device's birth: it comes after its SUBACK, so commands sent from now on reach it.

    (`ready` fires on CONNACK, before the device subscribes to its command topic.)
    """
    await observer.wait(lambda: observer.births(device), what=f"the birth of {device}")


def assert_increasing_and_continued(observer: Observer, device: str) -> None:
    """The device's telemetry seqs start at 0, only increase, and never restart after a reconnect."""
    seqs = observer.seqs(device)
    assert seqs[0] == 0, seqs
    assert all(a < b for a, b in itertools.pairwise(seqs)), seqs


# Clean shutdown


async def test_clean_shutdown_after_duration_leaves_clean_status_and_no_will(port: int) -> None:
    """At the end of a run (duration) every device's retained status is clean offline, and no will fires."""
    config = fleet({"name": "t", "count": 3, "qos": {"telemetry": 1}})
    devices = ids(config)
    async with observe(port) as observer:
        report = await asyncio.wait_for(simulate(config, target(port), duration=1.0), TIMEOUT)
        statuses = await retained_statuses(port, devices)
        await observer.wait(
            lambda: all(observer.offline(d, "clean") for d in devices), what="every device's clean status"
        )
    assert statuses == {d: {**statuses[d], "online": False, "reason": "clean"} for d in devices}
    assert observer.wills() == []
    for device in devices:
        assert len(observer.births(device)) == 1
        assert observer.seqs(device)
    fleet_stats = report.fleet()
    assert fleet_stats.wills_expected == 0
    assert fleet_stats.connects == 3
    assert fleet_stats.reconnects == 0
    assert 0.9 <= report.meta["duration_s"] < 5


async def test_stop_event_shuts_down_cleanly_even_mid_cycle(port: int) -> None:
    """Setting stop while devices come and go leaves every device clean offline, with only scheduled wills."""
    config = fleet({"name": "f", "count": 4, "connectivity": intermittent(0.3, 0.1, clean=1)})
    devices = ids(config)
    async with observe(port) as observer:
        async with running(config, port) as run:
            await observer.wait(lambda: all(len(observer.births(d)) >= 2 for d in devices), what="reconnects")
        statuses = await retained_statuses(port, devices)
    assert all(status["online"] is False and status["reason"] == "clean" for status in statuses.values()), (
        statuses
    )
    assert observer.wills() == []
    assert run.report is not None
    assert run.report.fleet().wills_expected == 0


# Wills


@pytest.mark.parametrize("kind", ["clean", "abrupt"])
async def test_will_fires_for_abrupt_end_and_never_for_clean_end(port: int, kind: str) -> None:
    """An abrupt end (socket closed, no DISCONNECT) fires the will 'lost'; a clean end: 'clean', no will."""
    config = fleet({"name": "w", "count": 2, "connectivity": intermittent(0.3, 0.2, **{kind: 1})})
    devices = ids(config)
    async with observe(port) as observer, running(config, port) as run:
        # The second birth comes after the first period ended; a will would have come before it.
        await observer.wait(lambda: all(len(observer.births(d)) >= 2 for d in devices), what="a reconnect")
        for device in devices:
            second_birth = observer.births(device)[1].at
            ended = [
                s for s in observer.of(device, "status") if s.body["online"] is False and s.at < second_birth
            ]
            expected = "lost" if kind == "abrupt" else "clean"
            assert [s.body["reason"] for s in ended] == [expected], ended
            if kind == "abrupt":
                assert ended[0].body == {"online": False, "reason": "lost"}
    assert run.report is not None
    stats = run.report.group("w")
    assert stats.drops[kind] >= 2
    assert stats.wills_expected == (stats.drops["abrupt"] if kind == "abrupt" else 0)
    if kind == "clean":
        assert observer.wills() == []


async def test_silent_end_fires_will_only_after_one_and_a_half_keepalives(
    request: pytest.FixtureRequest, port: int
) -> None:
    """A silent device (no DISCONNECT, no PINGREQ) gets its will only after the broker's 1.5 x keepalive."""
    keepalive = 1
    config = fleet(
        {
            "name": "s",
            "count": 1,
            "interval": 0.1,
            "keepalive": keepalive,
            "connectivity": intermittent(0.5, 30.0, silent=1),
        }
    )
    (device,) = ids(config)
    async with observe(port) as observer, running(config, port) as run:
        # Mosquitto 2.0 checks keepalives only every 5 s or so (keepalive.c); the embedded broker, on time.
        late = 6.5 if "mosquitto" in request.node.callspec.id else 1.5
        await observer.wait(
            lambda: observer.wills(device), timeout=1.5 * keepalive + late + 1, what="the will"
        )
        will = observer.wills(device)[0]
        last_heard = max(s.at for s in observer.of(device) if s.at < will.at)
        quiet = will.at - last_heard
        assert quiet >= 1.5 * keepalive - 0.1, quiet
        assert quiet <= 1.5 * keepalive + late, quiet
        assert will.body == {"online": False, "reason": "lost"}
        assert observer.offline(device, "clean") == []
    assert run.report is not None
    stats = run.report.group("s")
    assert stats.drops["silent"] == 1
    assert stats.wills_expected == 1
    assert not any(kind.startswith("silent") for kind in stats.errors), stats.errors


async def test_group_without_will_leaves_no_lost_status(embedded_port: int) -> None:
    """With will = false an abrupt end publishes nothing on the status topic and expects no will."""
    config = fleet({"name": "n", "count": 1, "will": False, "connectivity": intermittent(0.2, 0.1, abrupt=1)})
    (device,) = ids(config)
    async with observe(embedded_port) as observer, running(config, embedded_port) as run:
        await observer.wait(lambda: len(observer.births(device)) >= 3, what="two reconnects")
    assert observer.wills() == []
    assert run.report is not None
    assert run.report.group("n").drops["abrupt"] >= 2
    assert run.report.group("n").wills_expected == 0


# Seq across reconnects


async def test_seq_continues_across_reconnects(port: int) -> None:
    """Per device, telemetry seqs start at 0, only increase, and continue after each reconnect."""
    config = fleet(
        {
            "name": "q",
            "count": 3,
            "interval": 0.05,
            "qos": {"telemetry": 1},
            "connectivity": intermittent(0.3, 0.1, clean=1, abrupt=1),
        }
    )
    devices = ids(config)

    def reconnected_twice_and_sent(device: str) -> bool:
        births = observer.births(device)
        return len(births) >= 3 and any(s.at > births[2].at for s in observer.of(device, "telemetry"))

    async with observe(port) as observer, running(config, port):
        await observer.wait(lambda: all(reconnected_twice_and_sent(d) for d in devices), what="2 reconnects")
    for device in devices:
        assert_increasing_and_continued(observer, device)
        births = observer.births(device)
        for birth in births[1:3]:
            before = [s.body["seq"] for s in observer.of(device, "telemetry") if s.at < birth.at]
            after = [s.body["seq"] for s in observer.of(device, "telemetry") if s.at > birth.at]
            assert before, birth
            assert after, birth
            assert after[0] > before[-1] > 0, (before[-3:], after[:3])


# Reconnect timing


@pytest.mark.parametrize("first_retry", ["backoff", "immediate"])
async def test_the_first_retry_after_a_lost_connection_follows_the_backoff(
    embedded_port: int, first_retry: str
) -> None:
    """A connection the network drops (a fault proxy resets it): the device's first retry waits the
    group's backoff (1 s here, no jitter), as device SDKs do; with first_retry = "immediate" it goes
    at once, where a 60 s backoff would outlast the test."""
    initial = 1.0 if first_retry == "backoff" else 60.0
    backoff = {"initial": initial, "max": initial, "jitter": "none", "first_retry": first_retry}
    config = fleet({"name": "r", "count": 1, "interval": 0.5, "backoff": backoff})
    (device,) = ids(config)
    async with fault_proxy("127.0.0.1", embedded_port) as proxy:
        through_proxy = {"r": target(proxy.port)}
        async with observe(embedded_port) as observer, running(config, embedded_port, targets=through_proxy):
            await subscribed(observer, device)
            lost = time.monotonic()
            assert proxy.reset(1.0) == 1
            await observer.wait(lambda: len(observer.births(device)) == 2, what="a reconnect")
    waited = observer.births(device)[1].at - lost
    if first_retry == "backoff":
        assert waited >= initial
    assert len(observer.wills(device)) == 1


async def _read_packet(reader: asyncio.StreamReader) -> int:
    """Read one MQTT packet off the wire; return its type (the high nibble of the first byte)."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    await reader.readexactly(length)
    return first >> 4


async def test_a_connection_lost_before_its_suback_is_retried_and_the_run_goes_on() -> None:
    """A broker that accepts CONNECT but drops the connection on SUBSCRIBE: the device counts the
    failure and reconnects with its backoff; the run is not ended by one device's lost SUBACK."""
    connections = 0
    retried = asyncio.Event()

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        if connections == 3:
            retried.set()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            assert await _read_packet(reader) == 1  # CONNECT
            writer.write(b"\x20\x02\x00\x00")  # CONNACK, accepted, no session
            await writer.drain()
            assert await _read_packet(reader) == 8  # SUBSCRIBE: drop the connection instead of SUBACK
        writer.close()

    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backoff = {"initial": 0.05, "max": 0.05, "jitter": "none"}
    config = fleet({"name": "s", "count": 1, "interval": 0.5, "backoff": backoff})
    stop = asyncio.Event()
    async with server:
        task = asyncio.create_task(simulate(config, target(port), stop=stop), name="test.simulate")
        waiter = asyncio.create_task(retried.wait())
        async with asyncio.timeout(TIMEOUT):
            await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stop.set()
        async with asyncio.timeout(TIMEOUT):
            report = await task
    (group,) = report.groups.values()
    failed = sum(count for kind, count in group.errors.items() if kind.startswith("subscribe failed"))
    assert failed >= 2
    assert group.drops["lost"] == failed


# Commands


async def test_command_acks_carry_the_command_id(port: int) -> None:
    """set_interval, ping, reboot and an unknown op are each acked on fleet/<id>/cmd/ack with the same id."""
    config = fleet({"name": "c", "count": 1, "interval": 1.0, "qos": {"telemetry": 1}})
    (device,) = ids(config)
    async with observe(port) as observer, running(config, port) as run:
        await subscribed(observer, device)
        await observer.command(device, {"id": "p-1", "op": "ping"})
        pong = await observer.ack(device, "p-1")
        assert pong["ok"] is True
        assert abs(pong["pong"] - time.time()) < 5

        await observer.command(device, {"id": "i-1", "op": "set_interval", "value": 0.05})
        assert await observer.ack(device, "i-1") == {"id": "i-1", "ok": True}
        # At the old 1 s interval, 8 more messages would take 8 s; at 0.05 s they take under 1.5 s.
        sent = len(observer.of(device, "telemetry"))
        await observer.wait(
            lambda: len(observer.of(device, "telemetry")) >= sent + 8, timeout=3, what="faster"
        )

        await observer.command(device, {"id": "r-1", "op": "reboot"})
        assert await observer.ack(device, "r-1") == {"id": "r-1", "ok": True}
        await observer.wait(lambda: len(observer.births(device)) == 2, what="the birth after the reboot")
        assert len(observer.offline(device, "clean")) == 1  # a reboot is a clean restart, not a loss

        await observer.command(device, {"id": "x-1", "op": "explode"})
        refused = await observer.ack(device, "x-1")
        assert refused["ok"] is False
        assert refused.get("error") or refused.get("reason")
    assert observer.wills() == []
    assert_increasing_and_continued(observer, device)
    assert run.report is not None
    stats = run.report.group("c")
    assert stats.commands == Counter({"ping": 1, "set_interval": 1, "reboot": 1, "unknown": 1})
    assert (stats.connects, stats.reconnects) == (2, 1)


async def test_persistent_session_gets_commands_sent_while_offline(port: int) -> None:
    """A clean_session=false device receives, on reconnect, a QoS 1 command published while it was offline."""
    config = fleet(
        {
            "name": "p",
            "count": 1,
            "interval": 0.2,
            "clean_session": False,
            "qos": {"telemetry": 1, "command": 1},
        }
    )
    (device,) = ids(config)
    async with observe(port) as observer, running(config, port):
        await subscribed(observer, device)
        await observer.command(device, {"id": "off", "op": "go_offline", "value": 1.0})
        assert (await observer.ack(device, "off"))["ok"] is True
        await observer.wait(lambda: observer.offline(device, "clean"), what="the clean offline status")
        await observer.command(device, {"id": "queued", "op": "ping"})
        assert (await observer.ack(device, "queued"))["ok"] is True
        assert len(observer.births(device)) == 2
        queued_ack = next(s for s in observer.of(device, "ack") if s.body["id"] == "queued")
        assert queued_ack.at > observer.offline(device, "clean")[0].at
    assert observer.wills() == []


async def test_clean_session_device_does_not_get_commands_sent_while_offline(embedded_port: int) -> None:
    """A clean_session=true device starts afresh on reconnect: a command sent while it was offline is gone."""
    config = fleet({"name": "e", "count": 1, "interval": 0.2, "clean_session": True})
    (device,) = ids(config)
    async with observe(embedded_port) as observer, running(config, embedded_port):
        await subscribed(observer, device)
        await observer.command(device, {"id": "off", "op": "go_offline", "value": 0.5})
        await observer.wait(lambda: observer.offline(device, "clean"), what="the clean offline status")
        await observer.command(device, {"id": "lost", "op": "ping"})
        await observer.wait(lambda: len(observer.births(device)) == 2, what="the reconnect")
        # A command sent after the reconnect is answered; the one sent while offline never is.
        await observer.command(device, {"id": "after", "op": "ping"})
        await observer.ack(device, "after")
    assert [s.body["id"] for s in observer.of(device, "ack")] == ["off", "after"]


# The report


async def test_report_counts_what_the_observer_saw(port: int) -> None:
    """The report's published (per QoS), acked, connects, reconnects, drops and wills match what was seen."""
    config = fleet(
        {"name": "steady", "count": 2, "interval": 0.05},
        {
            "name": "flaky",
            "count": 2,
            "interval": 0.05,
            "qos": {"telemetry": 1},
            "connectivity": intermittent(0.25, 0.1, abrupt=1),
            "backoff": {"initial": 0.05, "max": 0.2},
        },
    )
    steady, flaky = ids(config, "steady"), ids(config, "flaky")

    def sent_qos1(devices: list[str]) -> int:
        """QoS 1 messages seen from `devices`: telemetry, births, clean statuses (the broker sends wills)."""
        return sum(len(observer.of(d, "telemetry")) + len(observer.of(d, "status")) for d in devices) - sum(
            len(observer.wills(d)) for d in devices
        )

    async with observe(port) as observer:
        async with running(config, port) as run:
            await observer.wait(lambda: all(len(observer.births(d)) >= 3 for d in flaky), what="2 reconnects")
            await observer.command(steady[0], {"id": "p", "op": "ping"})
            await observer.ack(steady[0], "p")
        assert run.report is not None
        report = run.report
        s, f = report.group("steady"), report.group("flaky")
        # The broker delivers the last messages (and any will) after the run returns: wait for them.
        await observer.wait(
            lambda: (
                sum(len(observer.of(d, "telemetry")) for d in steady) >= s.published["0"]
                and sum(len(observer.wills(d)) for d in flaky) >= f.wills_expected
                and sent_qos1(flaky) >= f.acked["1"]
                and all(observer.offline(d, "clean") for d in steady)
            ),
            what="every message the report counts",
        )

    def seen(devices: list[str], kind: str) -> int:
        return sum(len(observer.of(d, kind)) for d in devices)

    # steady: QoS 0 telemetry; QoS 1 birth, clean status and the ping's ack.
    assert s.devices == 2
    assert s.published["0"] == seen(steady, "telemetry") > 0
    assert s.published["1"] == seen(steady, "status") + seen(steady, "ack") == 2 + 2 + 1
    assert s.acked["1"] == s.published["1"]
    assert (s.connects, s.reconnects, s.wills_expected) == (2, 0, 0)
    assert s.drops == Counter()
    assert s.commands == Counter({"ping": 1})
    # flaky: QoS 1 telemetry and births; every period ended abruptly, each with a will.
    births = sum(len(observer.births(d)) for d in flaky)
    assert f.devices == 2
    assert f.published["0"] == 0
    assert f.connects == births
    assert f.reconnects == births - 2
    assert f.reconnect_time.count == f.reconnects
    assert f.connect_latency.count == f.connects
    assert f.drops["abrupt"] == f.wills_expected == len(observer.wills()) >= 4
    assert set(f.drops) == {"abrupt"}
    # A QoS 1 message the broker acknowledged reached the observer; one in flight at an abrupt end may not.
    assert f.published["1"] >= sent_qos1(flaky) >= f.acked["1"] > 0
    fleet_stats = report.fleet()
    assert fleet_stats.devices == 4
    assert fleet_stats.connects == s.connects + f.connects
    assert report.meta["devices"] == 4
    assert report.meta["seed"] == 1


async def test_shards_partition_the_fleet(embedded_port: int) -> None:
    """Shards 1/2 and 2/2 run disjoint parts of the fleet (by fleet-wide index) whose union is the fleet."""
    config = fleet({"name": "a", "count": 3}, {"name": "b", "count": 2})
    devices = ids(config)
    expected = [devices[0::2], devices[1::2]]  # fleet-wide index i runs in shard i % 2 + 1
    reports = []
    async with observe(embedded_port) as observer:
        for number, members in zip((1, 2), expected, strict=True):

            def all_born(members: list[str] = members) -> bool:
                return all(observer.births(d) for d in members)

            async with running(config, embedded_port, shard=Shard(number, 2)) as run:
                await observer.wait(all_born, what="births")
            assert run.report is not None
            reports.append(run.report)
            born = {s.device for s in observer.seen if s.kind == "status" and s.body["online"]}
            assert born == set(members) | set(expected[0] if number == 2 else ())
    assert [r.fleet().devices for r in reports] == [3, 2]
    assert [r.meta["shard"] for r in reports] == ["1/2", "2/2"]
    assert [r.meta["devices"] for r in reports] == [3, 2]


async def test_cancelling_simulate_shuts_down_cleanly(port: int) -> None:
    """Cancelling the simulate() task (like Ctrl-C) leaves every device clean offline, with no will."""
    config = fleet({"name": "k", "count": 3})
    devices = ids(config)
    async with observe(port) as observer:
        task = asyncio.create_task(simulate(config, target(port)))
        await observer.wait(lambda: all(observer.of(d, "telemetry") for d in devices), what="telemetry")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(TIMEOUT):
                await task
        statuses = await retained_statuses(port, devices)
    assert statuses == {d: {**statuses[d], "online": False, "reason": "clean"} for d in devices}
    assert observer.wills() == []


async def test_stop_while_devices_are_still_connecting_leaves_no_connection_open(port: int) -> None:
    """Stopping the instant the last device has connected (before its birth) still ends every device clean."""
    config = fleet({"name": "r", "count": 5})
    devices = ids(config)
    stop = asyncio.Event()
    async with observe(port) as observer:
        # `ready` fires when the last device's CONNACK arrives, while it still subscribes and announces.
        report = await asyncio.wait_for(simulate(config, target(port), stop=stop, ready=stop.set), TIMEOUT)
        statuses = await retained_statuses(port, devices)
    assert report.fleet().connects == 5
    # No device may be left connected: a connection nobody closes ends in a will once the process exits.
    assert statuses == {d: {**statuses.get(d, {}), "online": False, "reason": "clean"} for d in devices}
    assert observer.wills() == []


async def test_stopping_while_waiting_for_connack_closes_the_sockets() -> None:
    """Devices stopped while a mute broker has not answered their CONNECT close their sockets, every one."""
    accepted: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    connected = asyncio.Condition()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with connected:
            accepted.append((reader, writer))
            connected.notify_all()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    try:
        config = fleet({"name": "m", "count": 3})
        stop = asyncio.Event()
        task = asyncio.create_task(simulate(config, target(server.sockets[0].getsockname()[1]), stop=stop))
        async with asyncio.timeout(TIMEOUT), connected:
            await connected.wait_for(lambda: len(accepted) == 3)
        for reader, _ in accepted:  # each device has sent its CONNECT and now waits for the CONNACK
            async with asyncio.timeout(TIMEOUT):
                assert (await reader.read(1))[0] == 0x10
        stop.set()
        async with asyncio.timeout(TIMEOUT):
            report = await task
        assert report.fleet().connects == 0
        for number, (reader, _) in enumerate(accepted):  # the device closed: the broker reads EOF
            try:
                async with asyncio.timeout(3):
                    while await reader.read(1024):
                        pass
            except TimeoutError:
                raise AssertionError(f"connection {number} is still open after simulate() returned") from None
    finally:
        for _, writer in accepted:
            writer.close()
        server.close()
        async with asyncio.timeout(TIMEOUT):
            await server.wait_closed()
