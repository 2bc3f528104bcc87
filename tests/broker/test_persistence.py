"""Persistence: what `fleet broker --persistence DIR` keeps across a restart (SIGTERM) and a crash
(SIGKILL), in each sync mode; and a store it must refuse."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from broker.store import FILENAME, SCHEMA_VERSION
from fleet.mqtt import v5
from fleet.mqtt.properties import Properties
from tests.procs import FleetBroker, Proc, fleet_argv
from tests.rawmqtt import RawClient
from tests.rawmqtt5 import Raw5

TIMEOUT = 10.0
QUEUED = 10


def _start(start_fleet_broker: Callable[..., FleetBroker], store: Path, sync: str) -> FleetBroker:
    return start_fleet_broker(
        "--port", "0", "--ws-port", "0", "--sys-interval", "0",
        "--persistence", store, "--sync", sync, "--sync-interval", "50",
    )  # fmt: skip


@pytest.fixture
async def clients() -> AsyncIterator[Callable[[int], asyncio.Future[RawClient]]]:
    """Open raw MQTT 3.1.1 clients to a port; all are closed at teardown."""
    opened: list[RawClient] = []

    async def open_(port: int) -> RawClient:
        client = await RawClient.open(port)
        opened.append(client)
        return client

    try:
        yield open_  # type: ignore[misc]
    finally:
        for client in opened:
            await client.close()


async def _fill(port: int, clients: Callable[[int], asyncio.Future[RawClient]], tag: str) -> None:
    """A persistent session subscribed at QoS 1 and offline, 10 QoS 1 messages queued for it (each
    PUBACKed), and a retained message."""
    keeper = await clients(port)
    assert await keeper.connect("keeper", clean=False) == (False, 0)
    assert await keeper.subscribe(("store/queue", 1)) == [1]
    await keeper.disconnect()
    publisher = await clients(port)
    await publisher.connect("publisher")
    for index in range(QUEUED):
        publisher.publish("store/queue", f"{tag}-{index:02}".encode(), qos=1)
    publisher.publish("store/retained", f"{tag}-retained".encode(), qos=1, retain=True)
    for _ in range(QUEUED + 1):
        assert type(await publisher.read()).__name__ == "PubackPacket"


async def _kept(port: int, clients: Callable[[int], asyncio.Future[RawClient]], tag: str) -> None:
    """The session, its 10 queued messages (in order) and the retained message are all there."""
    keeper = await clients(port)
    assert await keeper.connect("keeper", clean=False) == (True, 0)
    got = [await keeper.read_publish() for _ in range(QUEUED)]
    assert [g.payload for g in got] == [f"{tag}-{i:02}".encode() for i in range(QUEUED)]
    assert {g.qos for g in got} == {1}
    for g in got:
        assert g.packet_id is not None
        keeper.puback(g.packet_id)
    reader = await clients(port)
    await reader.connect("reader")
    await reader.subscribe(("store/retained", 1))
    retained = await reader.read_publish()
    assert (retained.payload, retained.retain) == (f"{tag}-retained".encode(), True)


def _durable(store: Path, needle: bytes) -> bool:
    """Whether `needle` was written to the store's files (the database or its write-ahead log)."""
    return any(
        needle in path.read_bytes() for path in (store / FILENAME, store / f"{FILENAME}-wal") if path.exists()
    )


async def _await_durable(store: Path, needle: bytes) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not _durable(store, needle):
        assert time.monotonic() < deadline, f"{needle!r} not written to {store} within {TIMEOUT}s"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("sync", ["always", "interval", "never"])
async def test_a_restart_keeps_the_session_its_queue_and_the_retained_message(
    start_fleet_broker: Callable[..., FleetBroker], clients: Callable[..., asyncio.Future[RawClient]],
    tmp_path: Path, sync: str,
) -> None:  # fmt: skip
    """SIGTERM then start: the persistent session, its 10 queued QoS 1 messages and the retained message
    are all kept, in every sync mode."""
    store = tmp_path / "store"
    first = _start(start_fleet_broker, store, sync)
    await _fill(first.port, clients, sync)
    first.shutdown(signal.SIGTERM)
    second = _start(start_fleet_broker, store, sync)
    await _kept(second.port, clients, sync)


async def test_a_crash_with_sync_always_loses_nothing_acknowledged(
    start_fleet_broker: Callable[..., FleetBroker], clients: Callable[..., asyncio.Future[RawClient]],
    tmp_path: Path,
) -> None:  # fmt: skip
    """SIGKILL right after the last PUBACK: with sync always, everything acknowledged is kept."""
    store = tmp_path / "store"
    first = _start(start_fleet_broker, store, "always")
    await _fill(first.port, clients, "always")
    first.proc.signal(signal.SIGKILL)
    assert first.proc.wait() == -signal.SIGKILL
    second = _start(start_fleet_broker, store, "always")
    await _kept(second.port, clients, "always")


async def test_a_crash_with_sync_interval_keeps_what_the_interval_wrote(
    start_fleet_broker: Callable[..., FleetBroker], clients: Callable[..., asyncio.Future[RawClient]],
    tmp_path: Path,
) -> None:  # fmt: skip
    """SIGKILL after the interval's commit has written the last message: everything is kept."""
    store = tmp_path / "store"
    first = _start(start_fleet_broker, store, "interval")
    await _fill(first.port, clients, "interval")
    await _await_durable(store, b"interval-retained")
    await _await_durable(store, f"interval-{QUEUED - 1:02}".encode())
    first.proc.signal(signal.SIGKILL)
    assert first.proc.wait() == -signal.SIGKILL
    second = _start(start_fleet_broker, store, "interval")
    await _kept(second.port, clients, "interval")


async def test_a_crash_with_sync_never_keeps_what_the_last_shutdown_saved(
    start_fleet_broker: Callable[..., FleetBroker], clients: Callable[..., asyncio.Future[RawClient]],
    tmp_path: Path,
) -> None:  # fmt: skip
    """With sync never, a crash loses what came since the start; what the last shutdown saved stays."""
    store = tmp_path / "store"
    first = _start(start_fleet_broker, store, "never")
    await _fill(first.port, clients, "saved")
    first.shutdown(signal.SIGTERM)
    second = _start(start_fleet_broker, store, "never")
    publisher = await clients(second.port)
    await publisher.connect("late")
    publisher.publish("store/retained", b"lost-in-the-crash", qos=1, retain=True)
    assert type(await publisher.read()).__name__ == "PubackPacket"
    second.proc.signal(signal.SIGKILL)
    assert second.proc.wait() == -signal.SIGKILL
    third = _start(start_fleet_broker, store, "never")
    await _kept(third.port, clients, "saved")


async def test_qos2_state_survives_a_crash_in_both_directions(
    start_fleet_broker: Callable[..., FleetBroker], clients: Callable[..., asyncio.Future[RawClient]],
    tmp_path: Path,
) -> None:  # fmt: skip
    """A QoS 2 PUBLISH received (PUBREC sent, PUBREL awaited) is not routed twice after a crash, and a
    QoS 2 delivery the subscriber PUBRECed gets its PUBREL re-sent."""
    store = tmp_path / "store"
    first = _start(start_fleet_broker, store, "always")
    receiver = await clients(first.port)
    await receiver.connect("receiver", clean=False)
    assert await receiver.subscribe(("store/q2", 2)) == [2]
    sender = await clients(first.port)
    await sender.connect("sender", clean=False)
    packet_id = sender.publish("store/q2", b"exactly-once", qos=2)
    assert type(await sender.read()).__name__ == "PubrecPacket"
    delivered = await receiver.read_publish()
    assert delivered.packet_id is not None
    receiver.pubrec(delivered.packet_id)
    assert type(await receiver.read()).__name__ == "PubrelPacket"
    first.proc.signal(signal.SIGKILL)
    assert first.proc.wait() == -signal.SIGKILL

    second = _start(start_fleet_broker, store, "always")
    sender = await clients(second.port)
    assert await sender.connect("sender", clean=False) == (True, 0)
    sender.publish("store/q2", b"exactly-once", qos=2, packet_id=packet_id, dup=True)
    assert type(await sender.read()).__name__ == "PubrecPacket"
    assert packet_id is not None
    sender.pubrel(packet_id)
    assert type(await sender.read()).__name__ == "PubcompPacket"
    receiver = await clients(second.port)
    assert await receiver.connect("receiver", clean=False) == (True, 0)
    again = await receiver.read()
    assert (type(again).__name__, again.packet_id) == ("PubrelPacket", delivered.packet_id)
    receiver.pubcomp(delivered.packet_id)
    await receiver.expect_nothing(0.3)


async def test_an_mqtt5_session_keeps_its_subscription_options_and_expiry(
    start_fleet_broker: Callable[..., FleetBroker], tmp_path: Path
) -> None:
    """An MQTT 5 session's subscription identifier and expiry survive a restart, and the session expiry
    and the retained messages' Message Expiry count the time the broker was down."""
    store = tmp_path / "store"
    first = _start(start_fleet_broker, store, "always")
    lasting = await Raw5.open(first.port)
    brief = await Raw5.open(first.port)
    try:
        await lasting.connect("lasting", clean=False, properties=Properties(session_expiry_interval=3600))
        assert await lasting.subscribe(v5.Subscription("store/v5", 1, no_local=True), identifier=7) == (1,)
        await lasting.disconnect()
        await brief.connect("brief", clean=False, properties=Properties(session_expiry_interval=1))
        await brief.disconnect()
    finally:
        await lasting.close()
        await brief.close()
    publisher = await Raw5.open(first.port)
    try:
        await publisher.connect("publisher5")
        await publisher.publish_acked("store/v5", b"for-lasting", qos=1)
        for topic, expiry in (("store/retained/long", 3600), ("store/retained/short", 1)):
            expiring = Properties(message_expiry_interval=expiry)
            await publisher.publish_acked(topic, topic.encode(), 1, retain=True, properties=expiring)
    finally:
        await publisher.close()
    first.shutdown(signal.SIGTERM)
    # The broker stays down for longer than the brief session's expiry of 1 s.
    await asyncio.sleep(1.5)

    second = _start(start_fleet_broker, store, "always")
    lasting = await Raw5.open(second.port)
    brief = await Raw5.open(second.port)
    try:
        hour = Properties(session_expiry_interval=3600)
        connack = await lasting.connect("lasting", clean=False, properties=hour)
        assert connack.session_present
        message = await lasting.read_publish()
        assert (message.payload, message.properties.subscription_identifiers) == (b"for-lasting", (7,))
        connack = await brief.connect("brief", clean=False, properties=Properties(session_expiry_interval=1))
        assert not connack.session_present
        assert await brief.subscribe(v5.Subscription("store/retained/#", 1)) == (1,)
        retained = await brief.read_publish()
        assert retained.payload == b"store/retained/long"
        remaining = retained.properties.message_expiry_interval
        assert remaining is not None
        assert 3600 - 60 < remaining <= 3600
        await brief.expect_nothing(0.3)
    finally:
        await lasting.close()
        await brief.close()


def test_a_corrupt_store_stops_the_broker_with_one_line_naming_the_file(tmp_path: Path) -> None:
    """A store that is not a database stops `fleet broker` with one error line naming the file."""
    store = tmp_path / "store"
    store.mkdir()
    (store / FILENAME).write_bytes(b"this is not an SQLite database, whatever the name says" * 100)
    proc = Proc(fleet_argv("broker", "--port", "0", "--ws-port", "0", "--persistence", store))
    try:
        assert proc.wait() != 0
        errors = [line for line in proc.stderr.lines if line.strip()]
        assert len(errors) == 1, proc.describe()
        assert str(store / FILENAME) in errors[0]
        assert not any("listening" in line for line in proc.stdout.lines)
    finally:
        proc.stop()


def test_a_store_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    """A store written by a newer mqtt-fleet (higher schema version) is refused, never overwritten."""
    store = tmp_path / "store"
    store.mkdir()
    db = sqlite3.connect(store / FILENAME)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    proc = Proc(fleet_argv("broker", "--port", "0", "--ws-port", "0", "--persistence", store))
    try:
        assert proc.wait() != 0
        errors = [line for line in proc.stderr.lines if line.strip()]
        assert len(errors) == 1, proc.describe()
        assert str(store / FILENAME) in errors[0]
        assert f"schema version {SCHEMA_VERSION + 1} is newer" in errors[0]
    finally:
        proc.stop()
