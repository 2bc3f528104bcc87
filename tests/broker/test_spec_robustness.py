"""Bad input closes only its sender: malformed packets, garbage, absurd lengths, MQTT 5, timeouts."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from broker.server import Broker
from tests.rawmqtt import RawClient


async def _assert_others_unaffected(broker: Broker) -> None:
    subscriber = await RawClient.open(broker.port)
    publisher = await RawClient.open(broker.port)
    try:
        await subscriber.connect("bystander")
        await subscriber.subscribe(("ok/t", 0))
        await publisher.connect("bystander-pub")
        publisher.publish("ok/t", b"still fine")
        assert (await subscriber.read_publish()).payload == b"still fine"
    finally:
        await subscriber.close()
        await publisher.close()


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("garbage bytes", b"\xff\x00\x13\x37garbage" * 4),
        ("a 5-byte remaining length", b"\x10\xff\xff\xff\xff\x7f"),
        ("an absurd remaining length (268 MB)", b"\x30\xff\xff\xff\x7f" + b"x" * 64),
        ("a PUBLISH before CONNECT", b"\x30\x05\x00\x01ab\x00"),
        ("a CONNECT with reserved flag set", b"\x10\x0c\x00\x04MQTT\x04\x03\x00\x3c\x00\x00"),
    ],
)
async def test_mqtt_4_8_0_1_malformed_input_closes_only_that_connection(
    broker: Broker, name: str, data: bytes
) -> None:
    """Malformed input makes the broker close that connection; other clients keep working."""
    bystander = await RawClient.open(broker.port)
    await bystander.connect("watching")
    offender = await RawClient.open(broker.port)
    offender.send_bytes(data)
    await offender.expect_closed()
    await offender.close()
    bystander.pingreq()
    assert type(await bystander.read()).__name__ == "PingRespPacket"
    await bystander.close()
    await _assert_others_unaffected(broker)


async def test_packet_larger_than_max_packet_size_is_refused_before_it_is_buffered(
    broker_factory: Any,
) -> None:
    """A PUBLISH announcing more than max_packet_size closes the connection at once, without waiting."""
    async with broker_factory(max_packet_size=1024) as broker:
        client = await RawClient.open(broker.port)
        await client.connect("big")
        client.send_bytes(b"\x30\x80\x10")  # remaining length 2048, body never sent
        await client.expect_closed(timeout=2)
        await client.close()
        await _assert_others_unaffected(broker)


async def test_mqtt_3_1_2_2_unknown_protocol_level_is_refused_with_a_clear_log_line(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """A CONNECT for protocol level 6 gets CONNACK 0x01 (unacceptable protocol version) and a log line."""
    client = await RawClient.open(broker.port)
    # CONNECT, protocol level 6, clean start, keepalive 60, client id "v6".
    client.send_bytes(b"\x10\x0e\x00\x04MQTT\x06\x02\x00\x3c\x00\x02v6")
    with caplog.at_level(logging.WARNING, logger="broker"):
        connack = await client.read()
        assert connack.variable_header.return_code == 1
        await client.expect_closed()
    assert "speaks MQTT 3.1, 3.1.1 and 5" in caplog.text
    await client.close()


async def test_mqtt_3_1_0_2_second_connect_is_a_protocol_violation(raw_client: Any) -> None:
    """A second CONNECT on the same connection closes it."""
    client: RawClient = await raw_client()
    await client.connect("again")
    client.send_bytes(b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01x")
    await client.expect_closed()


async def test_connection_without_connect_is_closed_after_the_connect_timeout(broker_factory: Any) -> None:
    """A TCP connection that never sends CONNECT is closed after connect_timeout."""
    async with broker_factory(connect_timeout=0.3) as broker:
        client = await RawClient.open(broker.port)
        await client.expect_closed(timeout=3)
        await client.close()


async def test_invalid_subscribe_filter_is_refused_with_a_reason_and_the_connection_stays(
    raw_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A SUBSCRIBE with an invalid filter gets return code 0x80 per filter, a logged reason, and no close."""
    client: RawClient = await raw_client()
    await client.connect("filters")
    with caplog.at_level(logging.WARNING, logger="broker"):
        codes = await client.subscribe(("a/#/b", 1), ("ok/+", 1), ("a+/b", 0))
    assert codes == [0x80, 1, 0x80]
    assert "'#' must be the last level" in caplog.text
    client.pingreq()
    assert type(await client.read()).__name__ == "PingRespPacket"


async def test_publish_to_sys_topics_is_ignored(raw_client: Any) -> None:
    """Clients cannot publish into $SYS: the publish is acknowledged and not delivered."""
    watcher: RawClient = await raw_client()
    await watcher.connect("sys-watcher")
    await watcher.subscribe(("$SYS/fake", 0))
    client: RawClient = await raw_client()
    await client.connect("faker")
    client.publish("$SYS/fake", b"x", qos=1)
    assert type(await client.read()).__name__ == "PubackPacket"
    await watcher.expect_nothing(0.3)


async def test_mqtt_3_1_2_24_silent_client_is_disconnected_and_its_will_fires(raw_client: Any) -> None:
    """A client silent for 1.5 x keepalive is disconnected by the broker, which publishes its will."""
    watcher: RawClient = await raw_client()
    await watcher.connect("will-watcher")
    await watcher.subscribe(("status/silent", 1))
    silent: RawClient = await raw_client()
    await silent.connect("silent", keepalive=1, will=("status/silent", b"lost", 1, False))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await silent.expect_closed(timeout=5)
    assert loop.time() - started >= 1.4
    will = await watcher.read_publish()
    assert will.payload == b"lost"


async def test_mqtt_3_1_2_23_pingreq_keeps_a_quiet_client_connected(raw_client: Any) -> None:
    """A client that sends PINGREQ within its keepalive stays connected past 1.5 x keepalive."""
    client: RawClient = await raw_client()
    await client.connect("pinger", keepalive=1)
    for _ in range(4):
        await asyncio.sleep(0.6)  # paces the pings: the client's own keepalive schedule
        client.pingreq()
        assert type(await client.read()).__name__ == "PingRespPacket"


async def test_mqtt_3_14_4_3_clean_disconnect_discards_the_will(raw_client: Any) -> None:
    """After DISCONNECT the will is not published."""
    watcher: RawClient = await raw_client()
    await watcher.connect("w")
    await watcher.subscribe(("status/clean", 0))
    device: RawClient = await raw_client()
    await device.connect("clean-dev", will=("status/clean", b"lost", 0, False))
    await device.disconnect()
    await watcher.expect_nothing(0.3)


async def test_mqtt_3_1_2_8_abrupt_close_publishes_the_will(raw_client: Any) -> None:
    """A connection dropped without DISCONNECT gets its will published."""
    watcher: RawClient = await raw_client()
    await watcher.connect("w2")
    await watcher.subscribe(("status/abrupt", 0))
    device: RawClient = await raw_client()
    await device.connect("abrupt-dev", will=("status/abrupt", b"lost", 0, False))
    device.abort()
    assert (await watcher.read_publish()).payload == b"lost"


async def test_a_consumer_that_stops_reading_loses_qos0_messages_counted_while_others_get_all(
    broker: Broker,
) -> None:
    """A subscriber that stops reading has its QoS 0 messages dropped and counted; others miss nothing."""
    stalled = await RawClient.open(broker.port)
    await stalled.connect("stalled")
    await stalled.subscribe(("firehose", 0))
    stalled.writer.transport.pause_reading()  # type: ignore[attr-defined]
    healthy = await RawClient.open(broker.port)
    await healthy.connect("healthy")
    await healthy.subscribe(("firehose", 0))
    publisher = await RawClient.open(broker.port)
    await publisher.connect("firehose-pub")

    payload = b"x" * 4096
    batch, batches = 100, 40  # 16 MB: more than the kernel's socket buffers plus the 1 MB allowance
    for start in range(0, batch * batches, batch):
        for index in range(start, start + batch):
            publisher.publish("firehose", index.to_bytes(4, "big") + payload)
        # The healthy subscriber reads each batch in full, in order, before the next is sent.
        for index in range(start, start + batch):
            message = await healthy.read_publish()
            assert int.from_bytes(message.payload[:4], "big") == index
    assert int(broker.sys_values()["$SYS/broker/publish/messages/dropped"]) > 0
    for client in (stalled, healthy, publisher):
        await client.close()
