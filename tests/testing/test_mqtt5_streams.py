"""`fleet tail -V mqttv5` and the plugin's MQTT 5 stream on real brokers (the embedded one and
Mosquitto): messages published by `mosquitto_pub -V mqttv5 -D publish ...` come with their properties."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from fleet.errors import ExpectationFailed
from tests.conftest import BrokerFactory
from tests.procs import MOSQUITTO_PUB, fleet_argv, needs_mosquitto_clients, run
from tests.testing.test_tail import fleet_tail

pytestmark = needs_mosquitto_clients

# Two user properties with the same key, in an order that is not sorted, and every other property
# of a message that tail prints.
PROPERTIES = (
    *("-D", "publish", "user-property", "tenant", "b"),
    *("-D", "publish", "user-property", "site", "north"),
    *("-D", "publish", "user-property", "tenant", "a"),
    *("-D", "publish", "content-type", "application/json"),
    *("-D", "publish", "response-topic", "replies/1"),
    *("-D", "publish", "correlation-data", "req-7"),
    *("-D", "publish", "payload-format-indicator", "1"),
    *("-D", "publish", "message-expiry-interval", "3600"),
)


async def publish_v5(port: int, topic: str, payload: str, *properties: str) -> None:
    """`mosquitto_pub -V mqttv5 -q 1` with `properties` (its -D options); fails the test if it fails."""
    argv = [MOSQUITTO_PUB or "mosquitto_pub", "-V", "mqttv5", "-h", "127.0.0.1", "-p", str(port)]
    done = await asyncio.to_thread(run, [*argv, "-q", "1", "-t", topic, "-m", payload, *properties])
    assert done.returncode == 0, done


async def test_tail_over_mqtt5_prints_every_property_as_json(port: int) -> None:
    """`fleet tail -V mqttv5` prints a `properties` object: user properties as ordered pairs with the
    duplicate key kept, correlation data in base64, and the subscription identifier of the filter."""
    url = f"mqtt://127.0.0.1:{port}/sensors/%23"
    async with fleet_tail(url, "-V", "mqttv5", "--filter", "other/#", "--count", "1") as running:
        await publish_v5(port, "sensors/t1", '{"t": 21.5}', *PROPERTIES)
        tail = await running.finished()
    assert tail.code == 0, tail
    assert "mqttv5 stream" in tail.stderr[0], tail
    event = json.loads(tail.stdout[0])
    assert event["payload"] == {"t": 21.5}
    properties = event["properties"]
    assert properties["user_properties"] == [["tenant", "b"], ["site", "north"], ["tenant", "a"]]
    assert properties["content_type"] == "application/json"
    assert properties["response_topic"] == "replies/1"
    assert properties["correlation_data"] == "cmVxLTc="  # base64 of req-7
    assert properties["payload_format_indicator"] == 1
    assert 3590 <= properties["message_expiry_interval"] <= 3600  # what is left of it [MQTT-3.3.2-6]
    assert properties["subscription_identifiers"] == [1]  # sensors/#, the first of the filters


async def test_tail_over_mqtt5_pretty_prints_the_properties_after_the_payload(port: int) -> None:
    """`--format pretty` shows one `user_property:KEY=VALUE` item per user property, in order, and
    says the correlation data is base64."""
    url = f"mqtt://127.0.0.1:{port}/sensors/%23"
    async with fleet_tail(url, "-V", "mqttv5", "--format", "pretty", "--count", "1") as running:
        await publish_v5(port, "sensors/t1", '{"t": 21.5}', *PROPERTIES)
        tail = await running.finished()
    assert tail.code == 0, tail
    _, topic, rest = tail.stdout[0].split("  ", 2)
    assert topic == "sensors/t1"
    assert rest.startswith('{"t": 21.5}  ')
    assert "correlation_data(base64)=cmVxLTc= " in rest
    assert "user_property:tenant=b user_property:site=north user_property:tenant=a" in rest


async def test_tail_over_mqtt311_prints_no_properties(port: int) -> None:
    """Without -V, tail speaks MQTT 3.1.1, and the JSON lines have no `properties`."""
    async with fleet_tail(f"mqtt://127.0.0.1:{port}/sensors/%23", "--count", "1") as running:
        await publish_v5(port, "sensors/t1", '{"t": 21.5}', *PROPERTIES)
        tail = await running.finished()
    assert tail.code == 0, tail
    assert "properties" not in json.loads(tail.stdout[0])


async def test_tail_expects_a_user_property_and_a_content_type(port: int) -> None:
    """`--expect user_property.tenant=a,content_type=application/json` skips a message without them
    and exits 0 on the one that has both."""
    url = f"mqtt://127.0.0.1:{port}/sensors/%23"
    expect = "user_property.tenant=a,content_type=application/json"
    async with fleet_tail(url, "-V", "mqttv5", "--expect", expect, "--timeout", "10") as running:
        await publish_v5(port, "sensors/t0", "{}", "-D", "publish", "user-property", "tenant", "b")
        await publish_v5(port, "sensors/t1", '{"t": 21.5}', *PROPERTIES)
        tail = await running.finished()
    assert tail.code == 0, tail
    assert [json.loads(line)["topic"] for line in tail.stdout] == ["sensors/t0", "sensors/t1"]


def test_tail_refuses_a_protocol_version_for_a_bridges_stream() -> None:
    """-V is spoken to a broker: with an http:// (SSE) or grpc:// URL it is a usage error (2)."""
    for url in ("http://127.0.0.1:8080/events", "grpc://127.0.0.1:50051/#"):
        result = run(fleet_argv("tail", url, "-V", "mqttv5"))
        assert result.returncode == 2, result
        assert "the protocol version is spoken to a broker" in result.stderr, result


async def test_the_plugins_mqtt5_stream_expects_user_properties_and_a_content_type(
    port: int, mqtt_stream: Any
) -> None:
    """`mqtt_stream(..., version=5)` on either broker: `expect(user_properties=...)` matches when each
    given pair is present, in any order; a pair that is absent fails the expectation."""
    stream = await mqtt_stream("sensors/#", url=f"mqtt://127.0.0.1:{port}", version=5)
    await publish_v5(port, "sensors/t1", '{"t": 21.5}', *PROPERTIES)
    event = await stream.expect(
        topic="sensors/+",
        user_properties=[("tenant", "a"), ("tenant", "b")],
        content_type="application/json",
    )
    assert event.user_properties == [("tenant", "b"), ("site", "north"), ("tenant", "a")]
    assert event.properties["response_topic"] == "replies/1"
    await publish_v5(port, "sensors/t2", "{}", *PROPERTIES)
    with pytest.raises(ExpectationFailed, match=r"user_property\.tenant=c"):
        await stream.expect(topic="sensors/t2", user_properties=[("tenant", "c")], within=1.0)


async def test_tail_over_mqtt5_reads_a_brokers_websocket_listener(broker_factory: BrokerFactory) -> None:
    """`-V mqttv5` with a broker's ws:// URL reads MQTT 5 over WebSocket, properties included."""
    async with broker_factory(ws_port=0) as broker:
        url = f"ws://127.0.0.1:{broker.ws_port}/mqtt?filter=sensors/%23"
        async with fleet_tail(url, "-V", "mqttv5", "--count", "1") as running:
            await publish_v5(broker.port, "sensors/t1", '{"t": 21.5}', *PROPERTIES)
            tail = await running.finished()
    assert tail.code == 0, tail
    assert tail.stderr[0].startswith(
        f"fleet tail: reading mqttv5 stream ws://127.0.0.1:{broker.ws_port}/mqtt"
    )
    properties = json.loads(tail.stdout[0])["properties"]
    assert properties["user_properties"] == [["tenant", "b"], ["site", "north"], ["tenant", "a"]]
