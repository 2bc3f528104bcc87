"""Delivery rules: retained messages, delivered QoS, overlapping subscriptions, '$' topics, QoS 2."""

from __future__ import annotations

from typing import Any

from tests.rawmqtt import RawClient


async def test_mqtt_3_3_1_6_retained_messages_go_only_to_subscribers_of_matching_filters(
    raw_client: Any,
) -> None:
    """A new subscriber gets the retained messages of its own filters, never those of others' filters."""
    owner: RawClient = await raw_client()
    await owner.connect("owner")
    await owner.subscribe(("secret/#", 1))
    owner.publish("secret/key", b"hunter2", qos=1, retain=True)
    owner.publish("public/news", b"hello", qos=1, retain=True)

    stranger: RawClient = await raw_client()
    await stranger.connect("stranger")
    assert await stranger.subscribe(("public/#", 1)) == [1]
    news = await stranger.read_publish()
    assert (news.topic, news.payload, news.retain) == ("public/news", b"hello", True)
    stranger.puback(news.packet_id)
    await stranger.expect_nothing(0.3)


async def test_mqtt_3_3_1_9_live_delivery_clears_retain_and_mqtt_3_3_1_10_empty_payload_clears(
    raw_client: Any,
) -> None:
    """Retain is 0 on live delivery, 1 for a stored message on subscribe; an empty retained clears it."""
    live: RawClient = await raw_client()
    await live.connect("live")
    await live.subscribe(("r/t", 0))
    publisher: RawClient = await raw_client()
    await publisher.connect("pub")
    publisher.publish("r/t", b"v1", retain=True)
    assert (await live.read_publish()).retain is False

    late: RawClient = await raw_client()
    await late.connect("late")
    await late.subscribe(("r/+", 0))
    assert (await late.read_publish()).retain is True

    publisher.publish("r/t", b"", retain=True)
    await live.read_publish()
    later: RawClient = await raw_client()
    await later.connect("later")
    await later.subscribe(("r/#", 0))
    await later.expect_nothing(0.3)


async def test_mqtt_3_8_4_delivered_qos_is_the_minimum_of_publish_and_granted_qos(raw_client: Any) -> None:
    """A QoS 0 publish reaches a QoS 2 subscriber at QoS 0; a QoS 2 publish reaches a QoS 1 one at QoS 1."""
    high: RawClient = await raw_client()
    await high.connect("high")
    await high.subscribe(("q/t", 2))
    low: RawClient = await raw_client()
    await low.connect("low")
    await low.subscribe(("q/t", 1))
    publisher: RawClient = await raw_client()
    await publisher.connect("pub")

    publisher.publish("q/t", b"zero", qos=0)
    assert (await high.read_publish()).qos == 0
    assert (await low.read_publish()).qos == 0

    publisher.publish("q/t", b"two", qos=2)
    assert (await high.read_publish()).qos == 2
    assert (await low.read_publish()).qos == 1


async def test_mqtt_3_3_5_1_overlapping_subscriptions_deliver_one_copy_at_the_highest_qos(
    raw_client: Any,
) -> None:
    """Two matching filters of one client yield a single delivery at the higher granted QoS."""
    client: RawClient = await raw_client()
    await client.connect("overlap")
    assert await client.subscribe(("o/#", 2), ("o/+", 1)) == [2, 1]
    client.publish("o/x", b"once", qos=2, packet_id=77)
    packets = [await client.read(), await client.read()]
    assert sorted(type(p).__name__ for p in packets) == ["PublishPacket", "PubrecPacket"]
    delivery = next(p for p in packets if type(p).__name__ == "PublishPacket")
    assert delivery.qos == 2
    client.pubrel(77)
    assert type(await client.read()).__name__ == "PubcompPacket"
    client.pubrec(delivery.packet_id)
    assert type(await client.read()).__name__ == "PubrelPacket"
    await client.expect_nothing(0.3)


async def test_mqtt_4_7_2_1_wildcards_do_not_match_dollar_topics(raw_client: Any) -> None:
    """'#' and '+/+' do not match topics starting with '$'; an explicit '$' filter does."""
    wild: RawClient = await raw_client()
    await wild.connect("wild")
    await wild.subscribe(("#", 0), ("+/+", 0))
    explicit: RawClient = await raw_client()
    await explicit.connect("explicit")
    await explicit.subscribe(("$app/+", 0))
    explicit.publish("$app/x", b"dollar")
    assert (await explicit.read_publish()).topic == "$app/x"
    await wild.expect_nothing(0.3)


async def test_mqtt_4_3_3_qos2_duplicate_publish_is_delivered_exactly_once(raw_client: Any) -> None:
    """A re-sent QoS 2 PUBLISH (DUP=1, same packet id) before PUBREL is not routed a second time."""
    subscriber: RawClient = await raw_client()
    await subscriber.connect("sub")
    await subscriber.subscribe(("x/once", 0))
    publisher: RawClient = await raw_client()
    await publisher.connect("pub")
    publisher.publish("x/once", b"1", qos=2, packet_id=9)
    await publisher.read()
    publisher.publish("x/once", b"1", qos=2, packet_id=9, dup=True)
    assert type(await publisher.read()).__name__ == "PubrecPacket"
    publisher.pubrel(9)
    assert type(await publisher.read()).__name__ == "PubcompPacket"
    assert (await subscriber.read_publish()).payload == b"1"
    await subscriber.expect_nothing(0.3)


async def test_unsubscribe_stops_delivery(raw_client: Any) -> None:
    """After UNSUBSCRIBE is acknowledged, messages on that filter are no longer delivered."""
    client: RawClient = await raw_client()
    await client.connect("unsub")
    await client.subscribe(("u/t", 0))
    await client.unsubscribe("u/t")
    client.publish("u/t", b"gone")
    await client.expect_nothing(0.3)
