"""Sessions: persistent state, offline queues, redelivery, takeover and clean sessions (MQTT 3.1.1)."""

from __future__ import annotations

from typing import Any

from broker.server import Broker
from tests.rawmqtt import RawClient


async def test_mqtt_3_1_2_4_anonymous_persistent_session_queues_offline_qos1_and_qos2(
    raw_client: Any,
) -> None:
    """An anonymous client with CleanSession=0 gets the QoS 1 and 2 messages sent while it was offline."""
    device: RawClient = await raw_client()
    assert await device.connect("dev-1", clean=False) == (False, 0)
    assert await device.subscribe(("fleet/dev-1/cmd", 2)) == [2]
    await device.disconnect()

    publisher: RawClient = await raw_client()
    await publisher.connect("pub")
    for index in range(6):
        publisher.publish("fleet/dev-1/cmd", f"m{index}".encode(), qos=1 + index % 2)
    for _ in range(6):
        await publisher.read()  # PUBACK or PUBREC
    device = await raw_client()
    assert await device.connect("dev-1", clean=False) == (True, 0)
    got = [await device.read_publish() for _ in range(6)]
    assert [g.payload for g in got] == [f"m{i}".encode() for i in range(6)]
    assert [g.qos for g in got] == [1, 2, 1, 2, 1, 2]


async def test_mqtt_4_4_0_1_unacknowledged_publish_is_resent_on_reconnect(raw_client: Any) -> None:
    """A QoS 1 PUBLISH never acknowledged is re-sent with DUP=1 and its packet id after reconnect."""
    device: RawClient = await raw_client()
    await device.connect("dev-2", clean=False)
    await device.subscribe(("cmd/dev-2", 1))
    publisher: RawClient = await raw_client()
    await publisher.connect("pub")
    publisher.publish("cmd/dev-2", b"reboot", qos=1)
    first = await device.read_publish()
    assert (first.dup, first.qos) == (False, 1)
    device.abort()

    device = await raw_client()
    assert await device.connect("dev-2", clean=False) == (True, 0)
    again = await device.read_publish()
    assert (again.payload, again.dup, again.packet_id) == (b"reboot", True, first.packet_id)
    device.puback(again.packet_id)
    await device.expect_nothing(0.3)


async def test_mqtt_4_4_0_1_unacknowledged_pubrel_is_resent_on_reconnect(raw_client: Any) -> None:
    """A QoS 2 delivery acknowledged with PUBREC but not completed gets its PUBREL re-sent on reconnect."""
    device: RawClient = await raw_client()
    await device.connect("dev-3", clean=False)
    await device.subscribe(("cmd/dev-3", 2))
    publisher: RawClient = await raw_client()
    await publisher.connect("pub")
    publisher.publish("cmd/dev-3", b"x", qos=2)
    message = await device.read_publish()
    device.pubrec(message.packet_id)
    assert type(await device.read()).__name__ == "PubrelPacket"
    device.abort()

    device = await raw_client()
    await device.connect("dev-3", clean=False)
    resent = await device.read()
    assert type(resent).__name__ == "PubrelPacket"
    assert resent.variable_header.packet_id == message.packet_id


async def test_mqtt_3_1_2_6_clean_session_discards_previous_state(raw_client: Any) -> None:
    """Connecting with CleanSession=1 discards the old session: no session present, no old subscription."""
    device: RawClient = await raw_client()
    await device.connect("dev-4", clean=False)
    await device.subscribe(("cmd/dev-4", 1))
    await device.disconnect()
    device = await raw_client()
    assert await device.connect("dev-4", clean=True) == (False, 0)
    publisher: RawClient = await raw_client()
    await publisher.connect("pub")
    publisher.publish("cmd/dev-4", b"lost", qos=1)
    await publisher.read()
    await device.expect_nothing(0.3)


async def test_mqtt_3_1_4_2_second_connect_with_same_id_disconnects_the_first(raw_client: Any) -> None:
    """A second CONNECT with the same client id closes the first connection."""
    first: RawClient = await raw_client()
    await first.connect("twin")
    second: RawClient = await raw_client()
    assert await second.connect("twin") == (False, 0)
    await first.expect_closed()
    second.pingreq()
    assert type(await second.read()).__name__ == "PingRespPacket"


async def test_mqtt_3_1_4_2_takeover_of_persistent_session_keeps_state_and_fires_will_once(
    raw_client: Any,
) -> None:
    """Takeover carries a persistent session over; the old will fires once, before the new birth."""
    watcher: RawClient = await raw_client()
    await watcher.connect("watcher")
    await watcher.subscribe(("status/dev-5", 1))

    old: RawClient = await raw_client()
    await old.connect("dev-5", clean=False, will=("status/dev-5", b"lost", 1, False))
    await old.subscribe(("cmd/dev-5", 1))
    new: RawClient = await raw_client()
    assert await new.connect("dev-5", clean=False, will=("status/dev-5", b"lost", 1, False)) == (True, 0)
    new.publish("status/dev-5", b"online", qos=1)
    await new.read()  # PUBACK
    await old.expect_closed()

    will = await watcher.read_publish()
    watcher.puback(will.packet_id)
    birth = await watcher.read_publish()
    watcher.puback(birth.packet_id)
    assert (will.payload, birth.payload) == (b"lost", b"online")

    watcher.publish("cmd/dev-5", b"still subscribed", qos=1)
    assert type(await watcher.read()).__name__ == "PubackPacket"
    command = await new.read_publish()
    assert command.payload == b"still subscribed"
    new.puback(command.packet_id)
    await new.disconnect()
    await watcher.expect_nothing(0.3)


async def test_offline_queue_is_bounded_and_drops_are_counted(broker_factory: Any) -> None:
    """A session's offline queue holds max_queued messages; the rest are dropped and counted in $SYS."""
    async with broker_factory(max_queued=5) as broker:
        device = await RawClient.open(broker.port)
        await device.connect("slow", clean=False)
        await device.subscribe(("cmd/slow", 1))
        await device.disconnect()
        publisher = await RawClient.open(broker.port)
        await publisher.connect("pub")
        for index in range(12):
            publisher.publish("cmd/slow", str(index).encode(), qos=1)
            await publisher.read()
        assert broker.sys_values()["$SYS/broker/publish/messages/dropped"] == "7"

        device = await RawClient.open(broker.port)
        await device.connect("slow", clean=False)
        got = []
        for _ in range(5):
            message = await device.read_publish()
            device.puback(message.packet_id)
            got.append(message.payload)
        assert got == [b"0", b"1", b"2", b"3", b"4"]
        await device.expect_nothing(0.3)
        for client in (device, publisher):
            await client.close()


async def test_inflight_window_limits_unacknowledged_deliveries(broker_factory: Any) -> None:
    """At most max_inflight QoS 1 messages are unacknowledged at once; each PUBACK releases the next."""
    async with broker_factory(max_inflight=2) as broker:
        device = await RawClient.open(broker.port)
        await device.connect("windowed")
        await device.subscribe(("cmd/w", 1))
        publisher = await RawClient.open(broker.port)
        await publisher.connect("pub")
        for index in range(4):
            publisher.publish("cmd/w", str(index).encode(), qos=1)
        first = await device.read_publish()
        second = await device.read_publish()
        await device.expect_nothing(0.3)
        device.puback(first.packet_id)
        third = await device.read_publish()
        assert [m.payload for m in (first, second, third)] == [b"0", b"1", b"2"]
        for client in (device, publisher):
            await client.close()


async def test_mqtt_3_1_3_8_empty_client_id_needs_clean_session(raw_client: Any, broker: Broker) -> None:
    """An empty client id with CleanSession=0 is refused with return code 2; with CleanSession=1 it works."""
    refused: RawClient = await raw_client()
    assert await refused.connect("", clean=False) == (False, 2)
    await refused.expect_closed()
    accepted: RawClient = await raw_client()
    assert await accepted.connect("", clean=True) == (False, 0)
