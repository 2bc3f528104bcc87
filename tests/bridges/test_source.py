"""The bridge's MQTT intake: a real MqttSource on the embedded broker, fed by a raw MQTT publisher."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Coroutine, Generator
from typing import Any

import pytest

from bridges.hub import Hub
from bridges.source import (
    _BEHIND_BYTES,
    _LATE_AFTER,
    MqttSource,
    SourceSettings,
    _BufferedSocket,
    _frame,
    _Intake,
    _unread_bytes,
)
from broker.server import Broker
from fleet.errors import TopicError
from tests.bridges.conftest import wait_until
from tests.rawmqtt import RawClient


async def test_messages_reach_the_hub_in_order_without_a_task_each(broker: Broker) -> None:
    """A burst of 500 messages reaches the hub complete and in order, and the intake creates no task
    per message (aiomqtt's message iterator would create 500)."""
    hub = Hub()
    source = MqttSource(hub, SourceSettings(port=broker.port))
    loop = asyncio.get_running_loop()
    created = 0

    def counting_factory(
        loop: asyncio.AbstractEventLoop, coro: Generator[Any, None, Any] | Coroutine[Any, Any, Any], **kw: Any
    ) -> asyncio.Future[Any]:
        nonlocal created
        created += 1
        return asyncio.Task(coro, loop=loop, **kw)

    task = asyncio.create_task(source.run(), name="test.source")
    publisher = await RawClient.open(broker.port)
    try:
        await wait_until(lambda: hub.broker_connected, "the source to connect")
        await publisher.connect("test-publisher")
        loop.set_task_factory(counting_factory)
        try:
            for seq in range(500):
                publisher.publish("fleet/dev-1/telemetry", json.dumps({"seq": seq}).encode(), qos=0)
            await wait_until(lambda: hub.events_in == 500, "all 500 messages to arrive")
        finally:
            loop.set_task_factory(None)
        assert [e.payload["seq"] for e in hub.ring if e.kind == "telemetry"] == list(range(500))
        assert created < 50, f"{created} tasks for 500 messages"
    finally:
        await publisher.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_one_readable_event_takes_every_message_already_received(broker: Broker) -> None:
    """A burst that arrives together is ingested in one go (paho alone reads one packet per readable
    event), so a consumer wakes once for many messages instead of once for each."""
    hub = Hub()
    task = asyncio.create_task(MqttSource(hub, SourceSettings(port=broker.port)).run(), name="test.source")
    publisher = await RawClient.open(broker.port)
    try:
        await wait_until(lambda: hub.broker_connected, "the source to connect")
        consumer = hub.add(["fleet/#"], transport="test", size=1_000)
        await publisher.connect("test-publisher")
        for seq in range(300):
            publisher.publish("fleet/dev-1/telemetry", json.dumps({"seq": seq}).encode(), qos=0)
        batches: list[int] = []
        async with asyncio.timeout(5):
            while sum(batches) < 300:
                batches.append(len(await consumer.get_batch(1_000)))
        assert sum(batches) == 300
        assert len(batches) <= 30, f"woken {len(batches)} times for 300 messages"
    finally:
        await publisher.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_a_bridge_that_allows_no_publishing_says_so() -> None:
    """With publish_allowed empty, a publish is refused with a reason that says nothing is allowed."""
    source = MqttSource(Hub(), SourceSettings(publish_allowed=()))
    with pytest.raises(TopicError, match=r"allowed: nothing \(publish_allowed is empty\)"):
        source.check_publish("fleet/d/cmd")


async def test_the_intake_fans_out_one_read_of_the_socket_per_turn_of_the_loop(broker: Broker) -> None:
    """A burst of 600 KB arrives whole, and no turn of the loop fans out more than one 64 KB read of
    it, so the other tasks get the loop between reads (receive livelock); every message is either
    fanned out or counted as shed."""
    hub = Hub(ring_size=5_000)
    task = asyncio.create_task(MqttSource(hub, SourceSettings(port=broker.port)).run(), name="test.source")
    publisher = await RawClient.open(broker.port)
    payload = json.dumps({"pad": "x" * 260}).encode()  # a 300-byte PUBLISH packet
    per_read = 65536 // 300 + 1
    try:
        await wait_until(lambda: hub.broker_connected, "the source to connect")
        await publisher.connect("test-publisher")
        fanned: list[int] = []
        async with asyncio.timeout(10):
            for _ in range(2_000):
                publisher.publish("fleet/dev-1/telemetry", payload, qos=0)
            while hub.events_in < 2_000:
                before = hub.events_in - hub.shed_total
                await asyncio.sleep(0)
                fanned.append(hub.events_in - hub.shed_total - before)
        assert hub.events_in == 2_000
        assert max(fanned) <= per_read, f"{max(fanned)} messages fanned out in one turn"
    finally:
        await publisher.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _publish(topic: str, payload: bytes, qos: int) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic.encode() + (b"\x00\x01" if qos else b"") + payload
    assert len(body) < 128
    return bytes([0x30 | qos << 1, len(body)]) + body


def test_the_intake_frames_whole_packets_and_sheds_qos0_publishes_before_paho_parses_them() -> None:
    """The intake hands paho whole packets only, keeping a partial one for the next read; while it
    sheds, the QoS 0 PUBLISH packets go to the shedder by topic, and the others stay for paho."""
    qos0, qos1 = _publish("fleet/a/telemetry", b"{}", 0), _publish("fleet/b/cmd", b"{}", 1)
    ping = b"\xd0\x00"
    buf = bytearray(qos0 + qos1 + ping + qos0[:5])
    end, data = _frame(buf, None)
    assert (end, data) == (len(qos0 + qos1 + ping), qos0 + qos1 + ping)
    shed: list[str] = []
    end, data = _frame(buf, shed.append)
    assert (end, data, shed) == (len(qos0 + qos1 + ping), qos1 + ping, ["fleet/a/telemetry"])


def test_the_intake_sheds_once_the_fan_out_has_not_kept_up_on_a_busy_bridge_for_two_seconds() -> None:
    """While the consumers overflow on a busy bridge, the turn's first read is shed once that has
    held for 2 s (a burst is fanned out), and only while both hold; calm gaps shorter than 2 s do
    not start the count again, 2 s of calm do; slow consumers on a bridge with CPU to spare never
    make it shed."""
    intake = _Intake(Hub())
    assert [intake.pressed(True, False, t) for t in (0.0, 1.0, 2.5, 5.0)] == [False] * 4  # not busy
    assert [intake.pressed(True, True, t) for t in (20.0, 21.0, 21.9, 22.0)] == [False] * 3 + [True]
    assert not intake.pressed(True, False, 22.1)  # shedding freed CPU: fanned out
    assert not intake.pressed(False, True, 22.2)  # the consumers keep up: fanned out
    assert intake.pressed(True, True, 23.0)  # 0.8 s of calm: still pressed
    assert not intake.pressed(False, False, 24.0)
    assert not intake.pressed(False, False, 26.0)  # 2 s of calm: the count starts again
    assert [intake.pressed(True, True, t) for t in (27.0, 28.0, 29.0)] == [False, False, True]


def test_the_bridge_is_busy_when_its_process_used_95_percent_of_a_core_over_half_a_second() -> None:
    """busy() judges the process's CPU time over windows of at least 0.5 s: 95 % of the window or
    more is busy; a shorter look keeps the last window's answer."""
    intake = _Intake(Hub())
    assert not intake.busy(10.0, 100.0)  # the first look opens a window
    assert not intake.busy(10.3, 100.3)  # 0.3 s: too short to judge
    assert intake.busy(11.0, 100.96)
    assert intake.busy(11.2, 101.0)  # within the window: as it was
    assert not intake.busy(12.0, 101.9)  # 0.94 s of CPU in 1 s


def test_the_intake_is_late_once_a_first_read_has_left_a_backlog_for_late_after_seconds() -> None:
    """Bytes left in the kernel after a turn's first read make the intake late only once they have
    been left for _LATE_AFTER seconds (a burst is fanned out in full), and a read that empties the
    kernel ends it."""
    intake = _Intake(Hub())
    assert not intake.late(_BEHIND_BYTES + 1, 10.0)
    assert not intake.late(_BEHIND_BYTES + 1, 10.0 + _LATE_AFTER / 2)
    assert intake.late(_BEHIND_BYTES + 1, 10.0 + _LATE_AFTER)
    assert not intake.late(_BEHIND_BYTES, 10.0 + _LATE_AFTER + 0.1)
    assert not intake.is_late()


async def test_a_late_intake_reads_on_in_the_same_turn_and_sheds_what_it_reads() -> None:
    """Once late, the turn's first read is fanned out; then `pending()` asks aiomqtt's reader for
    more while more than _BEHIND_BYTES wait, and what those reads bring is shed and counted before
    paho parses it, until no more than that is left for the next turn."""
    hub = Hub()
    intake = _Intake(hub)
    intake.late_since = 0.0  # late, as after _LATE_AFTER seconds of backlog
    packet = _publish("fleet/d/telemetry", b"x" * 100, 0)
    sent = packet * (150_000 // len(packet))
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = socket.socket()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * len(sent))  # room for all of it
        ours.connect(server.getsockname())
        broker, _ = server.accept()
    with ours, broker:
        ours.setblocking(False)
        broker.sendall(sent)
        await wait_until(lambda: _unread_bytes(ours) == len(sent), "all of it to wait in our socket")
        sock = _BufferedSocket(ours, asyncio.get_running_loop(), intake)
        fanned = sock.recv(sock.pending() or 1)  # the turn's first read, as paho takes it
        fanned += sock.recv(sock.pending())
        assert not intake.behind
        assert sock.pending() == 1  # nothing buffered, but the turn is to read on
        with pytest.raises(BlockingIOError):
            sock.recv(1)  # the reads on shed all they bring, and stop once the kernel is nearly empty
        assert hub.shed_total > 0
        left = len(sent) // len(packet) - len(fanned) // len(packet) - hub.shed_total
        assert 0 <= left <= _BEHIND_BYTES // len(packet) + 1  # left for the next turn
        assert sock.pending() == 0
