"""MQTT 5 promises of the embedded broker, each test named after the MQTT 5.0 statement it proves.

Clients are raw MQTT 5 clients (tests/rawmqtt5.py) against an in-process broker on a free port.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from broker.auth import set_password
from broker.server import Broker
from fleet.mqtt import v5
from fleet.mqtt.properties import Properties
from tests.rawmqtt import RawClient
from tests.rawmqtt5 import Raw5, wait_until

Open = Callable[..., Awaitable[Raw5]]
Sub = v5.Subscription


@contextlib.asynccontextmanager
async def _clients(broker: Broker) -> AsyncIterator[Open]:
    opened: list[Raw5] = []

    async def open_client() -> Raw5:
        client = await Raw5.open(broker.port)
        opened.append(client)
        return client

    try:
        yield open_client
    finally:
        for client in opened:
            await client.close()


@pytest.fixture
async def open5(broker: Broker) -> AsyncIterator[Open]:
    """Open raw MQTT 5 clients to the default broker; all closed at teardown."""
    async with _clients(broker) as open_client:
        yield open_client


# CONNECT and CONNACK


async def test_mqtt_3_2_2_connack_announces_the_brokers_limits(open5: Open) -> None:
    """CONNACK carries Receive Maximum (max_inflight), Maximum Packet Size and Topic Alias Maximum."""
    client = await open5()
    connack = await client.connect("limits")
    assert connack.reason == 0
    assert not connack.session_present
    props = connack.properties
    assert (props.receive_maximum, props.maximum_packet_size, props.topic_alias_maximum) == (20, 1 << 20, 10)
    assert props.assigned_client_identifier is None
    assert props.server_keep_alive is None


async def test_mqtt_3_2_2_16_empty_client_id_gets_an_assigned_client_identifier(open5: Open) -> None:
    """An empty client id is accepted even with Clean Start 0, and CONNACK names the id assigned."""
    client = await open5()
    connack = await client.connect("", clean=False)
    assert connack.reason == 0
    assert connack.properties.assigned_client_identifier


async def test_mqtt_3_2_2_21_server_keep_alive_caps_a_longer_keepalive(broker_factory: Any) -> None:
    """With max_keepalive 60, a client asking for 120 s is told Server Keep Alive 60 in CONNACK."""
    async with broker_factory(max_keepalive=60) as broker, _clients(broker) as open_client:
        client = await open_client()
        connack = await client.connect("ka", keepalive=120)
        assert connack.properties.server_keep_alive == 60
        short = await open_client()
        assert (await short.connect("ka-short", keepalive=30)).properties.server_keep_alive is None


async def test_mqtt_4_12_0_1_unsupported_authentication_method_is_refused_with_0x8c(open5: Open) -> None:
    """CONNECT with an Authentication Method gets CONNACK 0x8C; AUTH on a session gets DISCONNECT 0x82."""
    client = await open5()
    connack = await client.connect("auth", properties=Properties(authentication_method="SCRAM-SHA-1"))
    assert connack.reason == 0x8C
    await client.expect_closed()
    other = await open5()
    await other.connect("auth-2")
    other.send_bytes(v5.encode_auth(0x19, Properties(authentication_method="SCRAM-SHA-1")))
    assert await other.read_disconnect() == 0x82


async def test_mqtt_3_2_2_bad_password_is_refused_with_0x86(tmp_path: Path, broker_factory: Any) -> None:
    """A wrong password gets CONNACK 0x86 (bad user name or password) for an MQTT 5 client."""
    passwords = tmp_path / "passwd"
    set_password(passwords, "alice", "right")
    async with broker_factory(password_file=passwords) as broker, _clients(broker) as open_client:
        client = await open_client()
        connack = await client.connect("pw", username="alice", password=b"wrong")
        assert connack.reason == 0x86


# Sessions


async def test_mqtt_3_1_2_11_session_expiry_0_ends_the_session_at_disconnect(open5: Open) -> None:
    """Session Expiry Interval 0: after DISCONNECT a reconnect with Clean Start 0 finds no session."""
    client = await open5()
    await client.connect("exp0", properties=Properties(session_expiry_interval=0))
    await client.subscribe(Sub("exp0/t", 1))
    await client.disconnect()
    again = await open5()
    assert not (await again.connect("exp0", clean=False)).session_present


async def test_mqtt_3_1_2_11_session_expiry_keeps_the_session_that_long_then_ends_it(
    broker: Broker, open5: Open
) -> None:
    """A session with expiry 1 s is present on a quick reconnect, and gone once 1 s offline has passed."""
    client = await open5()
    await client.connect("exp1", properties=Properties(session_expiry_interval=1))
    await client.subscribe(Sub("exp1/t", 1))
    await client.disconnect()
    again = await open5()
    assert (
        await again.connect("exp1", clean=False, properties=Properties(session_expiry_interval=1))
    ).session_present
    await again.disconnect()
    await wait_until(lambda: "exp1" not in broker.sessions, "the session to expire")
    last = await open5()
    assert not (await last.connect("exp1", clean=False)).session_present


async def test_mqtt_3_14_2_disconnect_may_change_the_session_expiry(broker: Broker, open5: Open) -> None:
    """DISCONNECT with Session Expiry 0 ends a session that CONNECT gave 0xFFFFFFFF (never expires)."""
    client = await open5()
    await client.connect("expd", properties=Properties(session_expiry_interval=0xFFFFFFFF))
    await client.disconnect()
    kept = await open5()
    assert (
        await kept.connect("expd", clean=False, properties=Properties(session_expiry_interval=0xFFFFFFFF))
    ).session_present
    await kept.disconnect(properties=Properties(session_expiry_interval=0))
    last = await open5()
    assert not (await last.connect("expd", clean=False)).session_present


async def test_mqtt_3_14_2_2_disconnect_cannot_raise_a_zero_session_expiry(open5: Open) -> None:
    """DISCONNECT setting a Session Expiry after CONNECT gave 0 is a protocol error: DISCONNECT 0x82."""
    client = await open5()
    await client.connect("exp-raise")
    client.send_bytes(v5.encode_disconnect(0, Properties(session_expiry_interval=10)))
    assert await client.read_disconnect() == 0x82


async def test_mqtt_3_1_4_3_takeover_sends_disconnect_0x8e_to_the_old_connection(open5: Open) -> None:
    """A second CONNECT with the same client id: the first connection gets DISCONNECT 0x8E, then EOF."""
    first = await open5()
    await first.connect("twin")
    second = await open5()
    await second.connect("twin")
    assert await first.read_disconnect() == 0x8E


async def test_mqtt_3_1_2_24_keepalive_timeout_sends_disconnect_0x8d(open5: Open) -> None:
    """A v5 client silent for 1.5 x keepalive gets DISCONNECT 0x8D before the broker closes."""
    client = await open5()
    await client.connect("silent5", keepalive=1)
    assert await client.read_disconnect() == 0x8D


async def test_mqtt_4_13_shutdown_sends_disconnect_0x8b(broker_factory: Any) -> None:
    """When the broker stops, connected MQTT 5 clients get DISCONNECT 0x8B (server shutting down)."""
    async with broker_factory() as broker:
        client = await Raw5.open(broker.port)
        await client.connect("stay")
    try:
        assert await client.read_disconnect() == 0x8B
    finally:
        await client.close()


# Will Delay Interval


def _will(topic: str, delay: int) -> v5.Will:
    return v5.Will(topic, b"gone", 1, False, Properties(will_delay_interval=delay))


async def test_mqtt_3_1_3_9_reconnect_within_the_will_delay_publishes_no_will(open5: Open) -> None:
    """A client that reconnects within its Will Delay Interval has no will published."""
    watcher = await open5()
    await watcher.connect("will-watch")
    await watcher.subscribe(Sub("will/quick", 1))
    device = await open5()
    await device.connect(
        "quick", will=_will("will/quick", 60), properties=Properties(session_expiry_interval=60)
    )
    device.abort()
    back = await open5()
    assert (
        await back.connect("quick", clean=False, properties=Properties(session_expiry_interval=60))
    ).session_present
    await back.disconnect()
    await watcher.expect_nothing(0.5)


async def test_mqtt_3_1_3_9_will_is_published_when_the_delay_ends(open5: Open) -> None:
    """A will with delay 1 s (session expiry 60 s) arrives after the client's abrupt close."""
    watcher = await open5()
    await watcher.connect("will-watch-2")
    await watcher.subscribe(Sub("will/late", 1))
    device = await open5()
    await device.connect(
        "late", will=_will("will/late", 1), properties=Properties(session_expiry_interval=60)
    )
    device.abort()
    message = await watcher.read_publish(timeout=5)
    assert (message.topic, message.payload) == ("will/late", b"gone")


async def test_mqtt_3_1_2_8_will_is_published_at_session_end_if_that_comes_first(open5: Open) -> None:
    """Will delay 60 s with session expiry 0: the will is published at once, when the session ends."""
    watcher = await open5()
    await watcher.connect("will-watch-3")
    await watcher.subscribe(Sub("will/end", 1))
    device = await open5()
    await device.connect("ends", will=_will("will/end", 60))
    device.abort()
    assert (await watcher.read_publish()).topic == "will/end"


@pytest.mark.parametrize("delay", [0, 60])
async def test_mqtt_3_1_2_8_takeover_with_clean_start_1_ends_the_session_and_publishes_the_will(
    open5: Open, delay: int
) -> None:
    """A takeover with Clean Start 1 ends the old session, so its will (delayed or not) is published."""
    watcher = await open5()
    await watcher.connect(f"will-watch-clean-{delay}")
    await watcher.subscribe(Sub("will/clean", 1))
    device = await open5()
    await device.connect(
        "clean-twin", will=_will("will/clean", delay), properties=Properties(session_expiry_interval=60)
    )
    twin = await open5()
    connack = await twin.connect("clean-twin", clean=True, properties=Properties(session_expiry_interval=60))
    assert not connack.session_present
    assert await device.read_disconnect() == 0x8E
    message = await watcher.read_publish()
    assert (message.topic, message.payload) == ("will/clean", b"gone")


async def test_mqtt_3_1_3_9_takeover_with_clean_start_0_within_the_will_delay_publishes_no_will(
    open5: Open,
) -> None:
    """A takeover with Clean Start 0 continues the session: no will within its delay, and 0x8E to the old."""
    watcher = await open5()
    await watcher.connect("will-watch-resume")
    await watcher.subscribe(Sub("will/resume", 1), Sub("after/resume", 1))
    device = await open5()
    await device.connect(
        "resume-twin", will=_will("will/resume", 60), properties=Properties(session_expiry_interval=60)
    )
    twin = await open5()
    connack = await twin.connect(
        "resume-twin", clean=False, properties=Properties(session_expiry_interval=60)
    )
    assert connack.session_present
    assert await device.read_disconnect() == 0x8E
    # A will would have been routed during the takeover, so before this marker.
    assert await twin.publish_acked("after/resume", b"marker", 1) == 0
    assert (await watcher.read_publish()).topic == "after/resume"


async def test_mqtt_3_1_2_8_clean_start_1_ends_an_offline_session_and_publishes_its_delayed_will(
    open5: Open,
) -> None:
    """A will waiting for its delay is published when a Clean Start 1 connection ends its session."""
    watcher = await open5()
    await watcher.connect("will-watch-offline")
    await watcher.subscribe(Sub("will/offline", 1))
    device = await open5()
    await device.connect(
        "offline-twin", will=_will("will/offline", 60), properties=Properties(session_expiry_interval=60)
    )
    device.abort()
    back = await open5()
    assert not (await back.connect("offline-twin", clean=True)).session_present
    message = await watcher.read_publish()
    assert (message.topic, message.payload) == ("will/offline", b"gone")


async def test_mqtt_3_14_4_3_disconnect_with_reason_0x04_publishes_the_will(open5: Open) -> None:
    """DISCONNECT 0x04 (disconnect with will message) publishes the will; a normal one does not."""
    watcher = await open5()
    await watcher.connect("will-watch-4")
    await watcher.subscribe(Sub("will/+", 1))
    normal = await open5()
    await normal.connect("normal", will=v5.Will("will/normal", b"x", 0, False))
    await normal.disconnect()
    device = await open5()
    await device.connect("with-will", will=v5.Will("will/asked", b"bye", 0, False))
    await device.disconnect(0x04)
    assert (await watcher.read_publish()).topic == "will/asked"


# Message Expiry Interval


async def test_mqtt_3_3_2_5_an_expired_queued_message_is_never_delivered(broker: Broker, open5: Open) -> None:
    """A queued message whose expiry passed is not delivered and is counted; a live one carries the rest."""
    sub = await open5()
    await sub.connect("expiring", properties=Properties(session_expiry_interval=60))
    await sub.subscribe(Sub("exp/t", 1))
    await sub.disconnect()
    pub = await open5()
    await pub.connect("exp-pub")
    await pub.publish_acked("exp/t", b"short", 1, properties=Properties(message_expiry_interval=1))
    await pub.publish_acked("exp/t", b"long", 1, properties=Properties(message_expiry_interval=60))
    queued = next(iter(broker.sessions["expiring"].queue)).message
    assert queued.expires is not None
    expires = queued.expires
    await wait_until(lambda: time.monotonic() > expires, "the short expiry to pass")
    back = await open5()
    await back.connect("expiring", clean=False, properties=Properties(session_expiry_interval=60))
    message = await back.read_publish()
    assert message.payload == b"long"
    assert message.properties.message_expiry_interval is not None
    assert message.properties.message_expiry_interval <= 60
    assert broker.stats.messages_expired == 1
    back.ack(4, message.packet_id or 0)
    await back.expect_nothing(0.3)


async def test_mqtt_3_3_2_3_3_an_in_flight_message_is_redelivered_after_its_expiry(
    broker: Broker, open5: Open
) -> None:
    """A QoS 1 message sent but not acknowledged is re-sent on reconnect even once its expiry passed:
    only copies whose onward delivery has not started are deleted [MQTT 5.0 3.3.2.3.3]."""
    sub = await open5()
    await sub.connect("inflight-exp", properties=Properties(session_expiry_interval=60))
    await sub.subscribe(Sub("infl/t", 1))
    pub = await open5()
    await pub.connect("inflight-pub")
    await pub.publish_acked("infl/t", b"sent", 1, properties=Properties(message_expiry_interval=1))
    first = await sub.read_publish()
    assert first.payload == b"sent"
    sub.abort()
    session = broker.sessions["inflight-exp"]
    await wait_until(lambda: session.outlet is None, "the subscriber's connection to end")
    expires = next(iter(session.inflight.values())).message.expires
    assert expires is not None
    await wait_until(lambda: time.monotonic() > expires, "the expiry to pass")
    back = await open5()
    await back.connect("inflight-exp", clean=False, properties=Properties(session_expiry_interval=60))
    again = await back.read_publish()
    assert (again.payload, again.dup, again.packet_id) == (b"sent", True, first.packet_id)
    assert again.properties.message_expiry_interval == 0
    assert broker.stats.messages_expired == 0


async def test_mqtt_3_3_2_5_an_expired_retained_message_is_not_sent_to_new_subscribers(
    open5: Open, broker: Broker
) -> None:
    """A retained message with an expiry that has passed is not sent on subscribe."""
    pub = await open5()
    await pub.connect("ret-exp")
    await pub.publish_acked(
        "retexp/t", b"old", 1, retain=True, properties=Properties(message_expiry_interval=1)
    )
    stored = next(iter(broker.retained.matching("retexp/t")))
    assert stored.expires is not None
    expires = stored.expires
    await wait_until(lambda: time.monotonic() > expires, "the expiry to pass")
    sub = await open5()
    await sub.connect("ret-exp-sub")
    await sub.subscribe(Sub("retexp/#", 1))
    await sub.expect_nothing(0.3)


# Flow control and Maximum Packet Size


async def test_mqtt_3_3_4_9_the_broker_never_exceeds_the_clients_receive_maximum(open5: Open) -> None:
    """With Receive Maximum 2, the broker sends two QoS 1 messages and the third only after a PUBACK."""
    sub = await open5()
    await sub.connect("slow", properties=Properties(receive_maximum=2))
    await sub.subscribe(Sub("flow/t", 1))
    pub = await open5()
    await pub.connect("flow-pub")
    for index in range(3):
        await pub.publish_acked("flow/t", b"%d" % index, 1)
    first = await sub.read_publish()
    second = await sub.read_publish()
    await sub.expect_nothing(0.3)
    sub.ack(4, first.packet_id or 0)
    third = await sub.read_publish()
    assert [first.payload, second.payload, third.payload] == [b"0", b"1", b"2"]


async def test_mqtt_3_3_4_8_a_client_exceeding_the_brokers_receive_maximum_gets_0x93(open5: Open) -> None:
    """A client with 21 unreleased QoS 2 messages (Receive Maximum 20) gets DISCONNECT 0x93, and still reads
    it when it answers the PUBRECs before it with PUBRELs (the broker half-closes, it does not reset)."""
    client = await open5()
    await client.connect("greedy")
    for _ in range(21):
        client.publish("flood/t", b"x", 2)
    while True:
        packet = await client.read()
        if isinstance(packet, v5.Disconnect):
            break
        assert isinstance(packet, v5.Ack), packet
        client.ack(6, packet.packet_id)
        await client.writer.drain()
    assert packet.reason == 0x93
    await client.expect_closed()


async def test_mqtt_3_1_2_25_a_delivery_too_large_for_the_client_is_dropped_and_counted(
    broker: Broker, open5: Open
) -> None:
    """A message larger than the client's Maximum Packet Size is never sent, and is counted."""
    sub = await open5()
    await sub.connect("small", properties=Properties(maximum_packet_size=64))
    await sub.subscribe(Sub("size/t", 1))
    pub = await open5()
    await pub.connect("size-pub")
    await pub.publish_acked("size/t", b"." * 64, 1)
    await pub.publish_acked("size/t", b"fits", 1)
    assert (await sub.read_publish()).payload == b"fits"
    assert broker.stats.messages_oversize == 1


async def test_mqtt_3_2_2_15_a_packet_over_the_brokers_maximum_gets_disconnect_0x95(
    broker_factory: Any,
) -> None:
    """A PUBLISH larger than the Maximum Packet Size in CONNACK gets DISCONNECT 0x95 (packet too large)."""
    async with broker_factory(max_packet_size=1024) as broker, _clients(broker) as open_client:
        client = await open_client()
        assert (await client.connect("big")).properties.maximum_packet_size == 1024
        client.publish("big/t", b"x" * 2048, 0)
        assert await client.read_disconnect() == 0x95


# Topic aliases


async def test_mqtt_3_3_2_12_a_client_topic_alias_maps_later_publishes_to_the_topic(open5: Open) -> None:
    """Alias 1 set with a topic is used by a PUBLISH with an empty topic; both arrive on the topic."""
    sub = await open5()
    await sub.connect("alias-sub")
    await sub.subscribe(Sub("alias/t", 0))
    pub = await open5()
    await pub.connect("alias-pub")
    pub.publish("alias/t", b"one", 0, properties=Properties(topic_alias=1))
    pub.publish("", b"two", 0, properties=Properties(topic_alias=1))
    assert [(await sub.read_publish()).topic for _ in range(2)] == ["alias/t", "alias/t"]


async def test_mqtt_3_3_2_9_an_alias_over_the_topic_alias_maximum_gets_disconnect_0x94(open5: Open) -> None:
    """Topic Alias 11 (the maximum is 10) gets DISCONNECT 0x94; an unknown alias gets 0x82."""
    client = await open5()
    await client.connect("alias-over")
    client.publish("a/t", b"x", 0, properties=Properties(topic_alias=11))
    assert await client.read_disconnect() == 0x94
    other = await open5()
    await other.connect("alias-unknown")
    other.publish("", b"x", 0, properties=Properties(topic_alias=3))
    assert await other.read_disconnect() == 0x82


async def test_mqtt_3_3_2_11_the_broker_sends_topic_aliases_to_clients_that_allow_them(open5: Open) -> None:
    """With Topic Alias Maximum 1, the first delivery sets alias 1 and later ones send an empty topic."""
    sub = await open5()
    await sub.connect("alias-in", properties=Properties(topic_alias_maximum=1))
    await sub.subscribe(Sub("ain/+", 0))
    pub = await open5()
    await pub.connect("alias-in-pub")
    for topic in ("ain/a", "ain/a", "ain/b"):
        pub.publish(topic, b"x", 0)
    first, second, third = [await sub.read_publish() for _ in range(3)]
    assert (first.topic, first.properties.topic_alias) == ("ain/a", 1)
    assert (second.topic, second.properties.topic_alias) == ("", 1)
    assert (third.topic, third.properties.topic_alias) == ("ain/b", None)


# Subscription options and identifiers


async def test_mqtt_3_8_3_3_no_local_keeps_a_clients_own_messages_from_it(open5: Open) -> None:
    """With No Local, a client does not get what it publishes; another subscriber does."""
    client = await open5()
    await client.connect("nolocal")
    await client.subscribe(Sub("nl/t", 0, no_local=True))
    other = await open5()
    await other.connect("nolocal-other")
    await other.subscribe(Sub("nl/t", 0))
    client.publish("nl/t", b"mine", 0)
    assert (await other.read_publish()).payload == b"mine"
    await client.expect_nothing(0.3)


async def test_mqtt_3_3_1_12_retain_as_published_keeps_the_retain_flag(open5: Open) -> None:
    """Retain As Published forwards RETAIN as published; without it, RETAIN is 0 on live messages."""
    rap = await open5()
    await rap.connect("rap")
    await rap.subscribe(Sub("rap/t", 0, retain_as_published=True))
    plain = await open5()
    await plain.connect("no-rap")
    await plain.subscribe(Sub("rap/t", 0))
    pub = await open5()
    await pub.connect("rap-pub")
    await pub.publish_acked("rap/t", b"r", 1, retain=True)
    assert (await rap.read_publish()).retain is True
    assert (await plain.read_publish()).retain is False


@pytest.mark.parametrize(("handling", "first", "again"), [(0, 1, 1), (1, 1, 0), (2, 0, 0)])
async def test_mqtt_3_3_1_9_to_11_retain_handling(open5: Open, handling: int, first: int, again: int) -> None:
    """Retain Handling 0 sends retained messages on every subscribe, 1 only on a new one, 2 never."""
    pub = await open5()
    await pub.connect(f"rh-pub-{handling}")
    await pub.publish_acked(f"rh{handling}/t", b"kept", 1, retain=True)
    client = await open5()
    await client.connect(f"rh-{handling}")
    for expected in (first, again):
        await client.subscribe(Sub(f"rh{handling}/#", 1, retain_handling=handling))
        for _ in range(expected):
            message = await client.read_publish()
            assert message.retain
            assert message.payload == b"kept"
            client.ack(4, message.packet_id or 0)
        await client.expect_nothing(0.2)


async def test_mqtt_3_3_4_overlapping_subscriptions_give_one_copy_with_every_identifier(open5: Open) -> None:
    """Two matching subscriptions with identifiers 2 and 3 give one copy carrying both identifiers."""
    client = await open5()
    await client.connect("subids")
    await client.subscribe(Sub("sid/t", 1), identifier=2)
    await client.subscribe(Sub("sid/#", 1), identifier=3)
    pub = await open5()
    await pub.connect("subids-pub")
    await pub.publish_acked("sid/t", b"x", 1)
    message = await client.read_publish()
    assert sorted(message.properties.subscription_identifiers) == [2, 3]
    client.ack(4, message.packet_id or 0)
    await client.expect_nothing(0.2)


# Shared subscriptions


async def test_mqtt_4_8_2_each_message_of_a_shared_subscription_goes_to_one_member(open5: Open) -> None:
    """Ten messages to $share/g/f with two connected members: each arrives once, five at each member."""
    members = [await open5(), await open5()]
    for index, member in enumerate(members):
        await member.connect(f"shared-{index}")
        assert await member.subscribe(Sub("$share/g/sh/t", 0)) == (0,)
    pub = await open5()
    await pub.connect("shared-pub")
    for index in range(10):
        pub.publish("sh/t", b"%d" % index, 0)
    # Both members are connected, so they take turns: five messages each.
    got = [(await member.read_publish()).payload for member in members for _ in range(5)]
    assert sorted(got) == sorted(b"%d" % i for i in range(10))
    for member in members:
        await member.expect_nothing(0.2)


async def test_mqtt_4_8_2_a_leaving_members_unacknowledged_messages_go_to_another_member(open5: Open) -> None:
    """A shared member leaving (session expiry 0) with an unacknowledged QoS 1 message: another gets it."""
    leaver = await open5()
    await leaver.connect("leaver", properties=Properties(receive_maximum=1))
    await leaver.subscribe(Sub("$share/g/lv/t", 1))
    pub = await open5()
    await pub.connect("leave-pub")
    await pub.publish_acked("lv/t", b"first", 1)
    assert (await leaver.read_publish()).payload == b"first"
    stayer = await open5()
    await stayer.connect("stayer")
    await stayer.subscribe(Sub("$share/g/lv/t", 1))
    leaver.abort()
    message = await stayer.read_publish()
    assert message.payload == b"first"


async def test_mqtt_3_8_3_4_no_local_on_a_shared_subscription_is_a_protocol_error(open5: Open) -> None:
    """SUBSCRIBE with No Local on $share/... gets DISCONNECT 0x82 (protocol error)."""
    client = await open5()
    await client.connect("shared-nl")
    client.send_bytes(v5.encode_subscribe(1, [Sub("$share/g/x", 0, no_local=True)]))
    assert await client.read_disconnect() == 0x82


async def test_shared_subscriptions_can_be_turned_off_0x9e(broker_factory: Any) -> None:
    """With shared_subscriptions false, CONNACK says so and $share/... gets SUBACK 0x9E."""
    async with broker_factory(shared_subscriptions=False) as broker, _clients(broker) as open_client:
        client = await open_client()
        assert (await client.connect("noshare")).properties.shared_subscription_available == 0
        assert await client.subscribe(Sub("$share/g/x", 0)) == (0x9E,)


# Passed through unchanged, and reason codes


async def test_mqtt_3_3_2_17_to_20_properties_are_forwarded_unchanged(open5: Open) -> None:
    """User properties (in order, duplicates kept), Content Type, Response Topic, Correlation Data and the
    Payload Format Indicator reach the subscriber unchanged."""
    sub = await open5()
    await sub.connect("props-sub")
    await sub.subscribe(Sub("props/t", 1))
    pub = await open5()
    await pub.connect("props-pub")
    sent = Properties(
        payload_format_indicator=1,
        content_type="application/json",
        response_topic="props/reply",
        correlation_data=b"\x00\x01",
        user_properties=(("k", "2"), ("a", "1"), ("k", "1")),
    )
    await pub.publish_acked("props/t", b'{"a": 1}', 1, properties=sent)
    assert (await sub.read_publish()).properties == sent


async def test_payload_format_indicator_utf8_with_invalid_payload_is_refused_with_0x99(open5: Open) -> None:
    """Payload Format Indicator 1 with a non-UTF-8 payload: PUBACK 0x99 at QoS 1, DISCONNECT 0x99 at QoS 0."""
    client = await open5()
    await client.connect("pfi")
    assert (
        await client.publish_acked("pfi/t", b"\xff\xfe", 1, properties=Properties(payload_format_indicator=1))
        == 0x99
    )
    client.publish("pfi/t", b"\xff\xfe", 0, properties=Properties(payload_format_indicator=1))
    assert await client.read_disconnect() == 0x99


async def test_reason_codes_on_acknowledgements(open5: Open) -> None:
    """PUBACK 0x10 without subscribers, SUBACK 0x8F for a bad filter, UNSUBACK 0x11 for no subscription,
    PUBACK 0x90 for a $SYS topic, PUBCOMP 0x92 for an unknown PUBREL."""
    client = await open5()
    await client.connect("codes")
    assert await client.publish_acked("nobody/here", b"x", 1) == 0x10
    assert await client.subscribe(Sub("a/#/b", 0), Sub("ok/+", 1)) == (0x8F, 1)
    assert await client.unsubscribe("never/subscribed", "ok/+") == (0x11, 0)
    assert await client.publish_acked("$SYS/fake", b"x", 1) == 0x90
    client.ack(6, 77)
    comp = await client.read()
    assert isinstance(comp, v5.Ack)
    assert (comp.kind, comp.reason) == (7, 0x92)


async def test_acl_refusals_give_0x87(tmp_path: Path, broker_factory: Any) -> None:
    """An ACL-refused subscription gets SUBACK 0x87, an ACL-refused publish PUBACK 0x87 (not authorized)."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite #\ntopic deny test/nosubscribe\n")
    async with broker_factory(acl_file=acl) as broker, _clients(broker) as open_client:
        client = await open_client()
        await client.connect("acl5")
        assert await client.subscribe(Sub("test/nosubscribe", 1)) == (0x87,)
        assert await client.publish_acked("test/nosubscribe", b"x", 1) == 0x87


# Mixing versions


async def test_mqtt_3_1_1_and_5_clients_exchange_messages_with_properties_dropped_toward_3_1_1(
    open5: Open, raw_client: Any
) -> None:
    """A 3.1.1 publisher reaches a v5 subscriber, and a v5 publisher with properties a 3.1.1 subscriber."""
    new = await open5()
    await new.connect("v5-side")
    await new.subscribe(Sub("mix/from4", 1))
    old: RawClient = await raw_client()
    await old.connect("v4-side")
    await old.subscribe(("mix/from5", 1))
    old.publish("mix/from4", b"hello v5", 1)
    assert type(await old.read()).__name__ == "PubackPacket"
    message = await new.read_publish()
    assert (message.payload, message.properties) == (b"hello v5", Properties())
    await new.publish_acked("mix/from5", b"hello v4", 1, properties=Properties(user_properties=(("a", "b"),)))
    received = await old.read_publish()
    assert (received.topic, received.payload, received.qos) == ("mix/from5", b"hello v4", 1)


async def test_mqtt_3_1_1_clients_see_share_filters_as_ordinary_filters(open5: Open, raw_client: Any) -> None:
    """A 3.1.1 client's `$share/x` is an ordinary filter: it gets what is published to `$share/x`, and its
    session ends cleanly at disconnect (no shared group is involved)."""
    old: RawClient = await raw_client()
    await old.connect("v4-share")
    assert await old.subscribe(("$share/x", 1)) == [1]
    pub = await open5()
    await pub.connect("v4-share-pub")
    await pub.publish_acked("$share/x", b"literal", 1)
    assert (await old.read_publish()).payload == b"literal"
    await old.disconnect()
    again: RawClient = await raw_client()
    assert await again.connect("v4-share") == (False, 0)
