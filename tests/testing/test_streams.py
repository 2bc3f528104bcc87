"""The stream clients and fixtures of the plugin, used by our own suite: consumption, silence, bad input."""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest

from bridges.app import query_params
from broker.server import Broker
from fleet.errors import ConfigError, ExpectationFailed, TopicError, TransportError
from fleet.testing.services import RunningBridges
from fleet.testing.streams import with_filters
from tests.conftest import BrokerFactory
from tests.procs import free_port


@pytest.fixture
async def publisher(fleet_broker: Broker) -> AsyncIterator[aiomqtt.Client]:
    """An MQTT client of `fleet_broker` that publishes test messages."""
    async with aiomqtt.Client("127.0.0.1", fleet_broker.port, identifier="test-streams-publisher") as client:
        yield client


async def test_expect_consumes_the_events_up_to_its_match(
    mqtt_stream: Any, publisher: aiomqtt.Client
) -> None:
    """An event skipped by one expectation is gone for the next; expect_count returns events in order."""
    stream = await mqtt_stream("t/#")
    for topic in ("t/a", "t/b", "t/c", "t/c"):
        await publisher.publish(topic, b'{"n": 1}', qos=1)
    assert (await stream.expect(topic="t/b")).topic == "t/b"
    assert [event.topic for event in await stream.expect_count(2, topic="t/+")] == ["t/c", "t/c"]
    with pytest.raises(ExpectationFailed, match="it looked at 0 events"):
        await stream.expect(topic="t/a", within=0.2)


async def test_expect_silence_fails_on_a_matching_event_and_shows_it(
    mqtt_stream: Any, publisher: aiomqtt.Client
) -> None:
    """expect_silence passes while only other topics speak, and fails showing the event that broke it."""
    stream = await mqtt_stream("fleet/#")
    await publisher.publish("fleet/d1/telemetry", b'{"seq": 0}', qos=1)
    await stream.expect(topic="fleet/d1/telemetry")
    await publisher.publish("fleet/d1/telemetry", b'{"seq": 1}', qos=1)
    await stream.expect_silence(for_=0.2, topic="fleet/+/status")
    await publisher.publish("fleet/d1/status", b'{"online": false}', qos=1)
    with pytest.raises(ExpectationFailed) as failed:
        await stream.expect_silence(for_=5.0, topic="fleet/+/status")
    assert "expected no event matching topic=fleet/+/status for 5.0s, got one: " in str(failed.value)
    assert 'it looked at 1 event; the last 1:\n  {"topic":"fleet/d1/status"' in str(failed.value)


async def test_an_mqtt_payload_that_is_not_json_comes_as_base64(
    mqtt_stream: Any, publisher: aiomqtt.Client
) -> None:
    """MQTT events carry the bridges' envelope: a payload that is not JSON is null, its bytes in base64."""
    stream = await mqtt_stream("raw/#")
    await publisher.publish("raw/x", b"\xff\x00", qos=0)
    event = await stream.expect(topic="raw/x")
    assert event.data["kind"] == "raw"
    assert event.payload is None
    assert event.data["payload_base64"] == "/wA="


async def test_streams_refuse_bad_filters_and_say_why_they_cannot_open(
    ws_stream: Any, sse_stream: Any, grpc_stream: Any, fleet_bridges: RunningBridges
) -> None:
    """A bad filter fails before connecting; a refused SSE request shows the server's reason; an
    unreachable server is a TransportError naming it."""
    with pytest.raises(TopicError, match="must be the last level"):
        await ws_stream(fleet_bridges.ws, ["fleet/#/x"])
    with pytest.raises(TransportError, match="HTTP 400: at least one filter is needed"):
        await sse_stream(fleet_bridges.events)
    port = free_port()
    with pytest.raises(TransportError, match=f"cannot open ws://127.0.0.1:{port}/ws"):
        await ws_stream(f"ws://127.0.0.1:{port}/ws")
    with pytest.raises(TransportError, match=f"cannot subscribe at grpc://127.0.0.1:{port}: UNAVAILABLE"):
        await grpc_stream(f"127.0.0.1:{port}")


async def test_fleet_sim_says_what_is_wrong_with_a_config_or_a_fleet_that_cannot_connect(
    fleet_sim: Any,
) -> None:
    """A bad config names the field; a fleet whose broker is unreachable fails after `within`, saying how
    many devices connected, and is stopped."""
    with pytest.raises(ConfigError, match=r"^fleet config: groups\[0\]\.colour: unknown key$"):
        await fleet_sim({"groups": [{"name": "x", "count": 2, "colour": "red"}]})
    url = f"mqtt://127.0.0.1:{free_port()}"
    config = {"broker": {"url": url}, "groups": [{"name": "x", "count": 2}]}
    with pytest.raises(TransportError, match=f"not ready within 0.5s: 0 of 2 devices connected to {url}"):
        await fleet_sim(config, within=0.5)


async def test_mqtt_stream_reads_any_broker_also_over_websocket(
    mqtt_stream: Any, broker_factory: BrokerFactory
) -> None:
    """`url=` points mqtt_stream at another broker, here over MQTT/WebSocket; it publishes over TCP."""
    async with broker_factory(ws_port=0) as other:
        stream = await mqtt_stream("plant/#", url=f"ws://127.0.0.1:{other.ws_port}/mqtt")
        async with aiomqtt.Client("127.0.0.1", other.port, identifier="test-streams-other") as client:
            await client.publish("plant/line-1/speed", b"12.5", qos=1)
        event = await stream.expect(topic="plant/+/speed")
        assert (event.data["kind"], event.payload) == ("raw", 12.5)


def test_filters_in_a_url_keep_their_plus_and_spaces() -> None:
    """A `+` typed in a stream URL stays the wildcard, and an added filter with a space survives: the
    bridge reads both filters as they were meant."""
    url = with_filters("http://h/events?filter=fleet/+/status", ["room 1/#"])
    query = urllib.parse.urlsplit(url).query.encode()
    assert query_params({"query_string": query}).getlist("filter") == ["fleet/+/status", "room 1/#"]
