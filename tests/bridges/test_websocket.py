"""The WebSocket bridge `/ws` end to end: a real broker, MqttSource, uvicorn and a websockets client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiomqtt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from tests.bridges.conftest import (
    QUIET_BURST,
    TIMEOUT,
    BridgeFactory,
    RunningBridge,
    consumers,
    free_port,
    publish_and_wait,
    recv_json,
    recv_text,
    running_bridge,
    server_connections,
    small_window_socket,
    trickle_until_cut,
    wait_until,
)


def _burst(bridge: RunningBridge, count: int, topic: str = "fleet/d/telemetry") -> None:
    """Ingest `count` events in one go, faster than any writer can send (as when MQTT floods in)."""
    for seq in range(count):
        bridge.hub.ingest(topic, json.dumps({"seq": seq}).encode(), qos=0, retain=False)


async def _expect_closed(ws: ClientConnection, timeout: float = TIMEOUT) -> ConnectionClosed:
    """Read until the server closes the connection; return how it closed."""
    async with asyncio.timeout(timeout):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as closed:
            return closed


async def test_events_arrive_as_the_envelope_text(bridge: RunningBridge, mqtt: aiomqtt.Client) -> None:
    """With ?filter= an event arrives as its envelope JSON in a text frame, and only matching ones."""
    async with connect(bridge.ws(filter="fleet/+/telemetry")) as ws:
        # Compression is off on purpose (BRIDGE-NOTES): the client offered it, the bridge declined.
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        await publish_and_wait(mqtt, bridge.hub, [("fleet/dev-1/status", {"online": True})])
        await publish_and_wait(mqtt, bridge.hub, [("fleet/dev-1/telemetry", {"seq": 7})])
        text = await recv_text(ws)
        assert text.encode() == bridge.hub.ring[-1].json
        envelope = json.loads(text)
        assert envelope["topic"] == "fleet/dev-1/telemetry"
        assert envelope["device"] == "dev-1"
        assert envelope["kind"] == "telemetry"
        assert envelope["payload"] == {"seq": 7}


async def test_an_unencoded_plus_in_the_query_is_the_wildcard(
    bridge: RunningBridge, mqtt: aiomqtt.Client
) -> None:
    """`/ws?filter=fleet/+/status`, typed as is, subscribes to the statuses, not to `fleet/ /status`."""
    async with connect(f"ws://127.0.0.1:{bridge.port}/ws?filter=fleet/+/status") as ws:
        await publish_and_wait(mqtt, bridge.hub, [("fleet/dev-1/status", {"online": True})])
        assert (await recv_json(ws))["topic"] == "fleet/dev-1/status"


async def test_subscribe_and_unsubscribe_change_the_filter_set(
    bridge: RunningBridge, mqtt: aiomqtt.Client
) -> None:
    """Without ?filter= nothing arrives until a subscribe; unsubscribe removes; replies give the whole set."""
    async with connect(bridge.ws()) as ws:
        await ws.send(json.dumps({"type": "subscribe", "filters": ["fleet/a/#"]}))
        assert await recv_json(ws) == {"type": "subscribed", "filters": ["fleet/a/#"]}
        await ws.send(json.dumps({"type": "subscribe", "filters": ["fleet/b/#", "fleet/a/#"]}))
        assert await recv_json(ws) == {"type": "subscribed", "filters": ["fleet/a/#", "fleet/b/#"]}
        assert consumers(bridge.hub, "websocket") == 1
        await publish_and_wait(
            mqtt, bridge.hub, [("fleet/a/status", 1), ("fleet/c/status", 2), ("fleet/b/status", 3)]
        )
        assert [(await recv_json(ws))["payload"] for _ in range(2)] == [1, 3]

        await ws.send(json.dumps({"type": "unsubscribe", "filters": ["fleet/a/#"]}))
        assert await recv_json(ws) == {"type": "subscribed", "filters": ["fleet/b/#"]}
        await publish_and_wait(mqtt, bridge.hub, [("fleet/a/status", 4), ("fleet/b/status", 5)])
        assert (await recv_json(ws))["payload"] == 5

        await ws.send(json.dumps({"type": "unsubscribe", "filters": ["fleet/b/#"]}))
        assert await recv_json(ws) == {"type": "subscribed", "filters": []}
        await wait_until(
            lambda: consumers(bridge.hub, "websocket") == 0, "the last consumer to leave the hub"
        )


async def test_a_filter_change_keeps_queued_events_in_order(bridge: RunningBridge) -> None:
    """Events queued before a filter change still arrive, in order, if the new set matches them."""
    async with connect(bridge.ws(filter="fleet/a/#")) as ws:
        # Queued but not yet written: the burst and the subscribe run before the writer gets a turn.
        _burst(bridge, 3, "fleet/a/status")
        session = next(iter(bridge.app.state.bridge.streams))
        session.resubscribe(("fleet/a/#", "fleet/b/#"))
        _burst(bridge, 2, "fleet/b/status")
        got = [(await recv_json(ws))["topic"] for _ in range(5)]
        assert got == ["fleet/a/status"] * 3 + ["fleet/b/status"] * 2
        # Queued for a filter that is then dropped: not delivered after the change.
        _burst(bridge, 3, "fleet/a/status")
        session.resubscribe(("fleet/b/#",))
        _burst(bridge, 1, "fleet/b/telemetry")
        got = await recv_json(ws)
        assert (got["topic"], got["payload"]) == ("fleet/b/telemetry", {"seq": 0})
        assert consumers(bridge.hub, "websocket") == 1


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "a control message must be a JSON object"),
        ('{"type": "hello"}', "unknown message type 'hello'"),
        ('{"type": "subscribe"}', "subscribe needs 'filters'"),
        ('{"type": "subscribe", "filters": "fleet/#"}', "subscribe needs 'filters'"),
        ('{"type": "subscribe", "filters": ["fleet/#/x"]}', "'#' must be the last level [MQTT-4.7.1-2]"),
        ('{"type": "unsubscribe", "filters": ["a+"]}', "'+' must occupy a whole level [MQTT-4.7.1-3]"),
        ('{"type": "publish", "payload": 1}', "publish needs a 'topic' string"),
        ('{"type": "publish", "topic": "fleet/d/cmd", "qos": 3}', "qos must be 0, 1 or 2"),
        ('{"type": "publish", "topic": "fleet/d/cmd", "qos": true}', "qos must be 0, 1 or 2"),
        (
            '{"type": "publish", "topic": "fleet/d/telemetry"}',
            "publishing to 'fleet/d/telemetry' is not allowed",
        ),
        ('{"type": "publish", "topic": "fleet/+/cmd"}', "must not contain wildcards"),
        (b"\x00binary", "binary frames are not supported"),
    ],
)
async def test_a_bad_message_gets_an_error_and_the_socket_stays_open(
    bridge: RunningBridge, mqtt: aiomqtt.Client, message: str | bytes, reason: str
) -> None:
    """A malformed, unknown or forbidden control message is answered with an error; the socket lives on."""
    async with connect(bridge.ws(filter="fleet/#")) as ws:
        await ws.send(message)
        reply = await recv_json(ws)
        assert reply["type"] == "error"
        assert reason in reply["error"]
        await publish_and_wait(mqtt, bridge.hub, [("fleet/d/status", {"still": "open"})])
        assert (await recv_json(ws))["payload"] == {"still": "open"}


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({"filter": "fleet/#/x"}, "'#' must be the last level [MQTT-4.7.1-2]"),
        ({"filter": "fleet/#", "policy": "block"}, "policy must be 'drop-oldest' or 'disconnect'"),
        ({"filter": "fleet/#", "queue": "0"}, "queue must be an integer from 1 to"),
    ],
)
async def test_a_bad_query_is_refused_with_a_reason(
    bridge: RunningBridge, query: dict[str, Any], reason: str
) -> None:
    """A bad ?filter=, ?policy= or ?queue= gets an error message, then close code 1008 (policy violation)."""
    async with connect(bridge.ws(**query)) as ws:
        reply = await recv_json(ws)
        assert reply["type"] == "error"
        assert reason in reply["error"]
        closed = await _expect_closed(ws)
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1008
    assert consumers(bridge.hub, "websocket") == 0


async def test_a_page_from_another_origin_is_refused_and_the_bridge_own_is_not(bridge: RunningBridge) -> None:
    """A browser page from a foreign Origin cannot open /ws (1008 with the reason); the bridge's own can."""
    async with connect(bridge.ws(filter="fleet/#"), origin=Origin("http://evil.example")) as ws:
        reply = await recv_json(ws)
        assert reply["type"] == "error"
        assert "http://evil.example may not use this bridge" in reply["error"]
        closed = await _expect_closed(ws)
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1008
    async with connect(bridge.ws(filter="fleet/#"), origin=Origin(bridge.http)) as ws:
        await ws.send(json.dumps({"type": "subscribe", "filters": ["a/#"]}))
        assert (await recv_json(ws))["type"] == "subscribed"


async def test_allowed_origins_admit_a_listed_page(bridge_factory: BridgeFactory) -> None:
    """An origin listed in allowed_origins may open /ws; one that is not listed still may not."""
    async with bridge_factory(allowed_origins=("https://dash.example/",)) as bridge:
        async with connect(bridge.ws(filter="fleet/#"), origin=Origin("https://dash.example")) as ws:
            await ws.send(json.dumps({"type": "subscribe", "filters": ["a/#"]}))
            assert (await recv_json(ws))["type"] == "subscribed"
        async with connect(bridge.ws(filter="fleet/#"), origin=Origin("https://other.example")) as ws:
            assert (await recv_json(ws))["type"] == "error"


async def test_publish_reaches_an_mqtt_subscriber(bridge: RunningBridge, mqtt: aiomqtt.Client) -> None:
    """A publish message reaches MQTT subscribers: JSON payloads compactly encoded, text as UTF-8."""
    await mqtt.subscribe("fleet/+/cmd", qos=1)
    async with connect(bridge.ws()) as ws:
        command = {"id": "c1", "op": "set_interval", "value": 0.5}
        await ws.send(
            json.dumps({"type": "publish", "topic": "fleet/dev-1/cmd", "payload": command, "qos": 1})
        )
        assert await recv_json(ws) == {"type": "published", "topic": "fleet/dev-1/cmd"}
        await ws.send(
            json.dumps({"type": "publish", "topic": "fleet/dev-2/cmd", "payload": "reboot ✓", "qos": 0})
        )
        assert await recv_json(ws) == {"type": "published", "topic": "fleet/dev-2/cmd"}
        received = []
        async with asyncio.timeout(TIMEOUT):
            async for message in mqtt.messages:
                received.append((message.topic.value, message.payload))
                if len(received) == 2:
                    break
    assert received == [
        ("fleet/dev-1/cmd", b'{"id":"c1","op":"set_interval","value":0.5}'),
        ("fleet/dev-2/cmd", "reboot ✓".encode()),
    ]


async def test_publish_without_a_broker_gets_an_error() -> None:
    """While the bridge has no broker connection, a publish is answered with an error, not a hang."""
    async with running_bridge(free_port(), wait_connected=False) as bridge, connect(bridge.ws()) as ws:
        await ws.send(json.dumps({"type": "publish", "topic": "fleet/dev-1/cmd", "payload": {}}))
        reply = await recv_json(ws)
        assert reply == {"type": "error", "error": "the bridge is not connected to its broker"}
        await ws.send(json.dumps({"type": "subscribe", "filters": ["fleet/#"]}))
        assert (await recv_json(ws))["type"] == "subscribed"


async def test_a_tiny_queue_drops_oldest_and_says_so(bridge: RunningBridge) -> None:
    """With ?queue=2, a burst in one loop turn (faster than any writer) gives `dropped`, then the
    newest two; another client gets everything."""
    async with (
        connect(bridge.ws(filter="fleet/#", queue=2)) as small,
        connect(bridge.ws(filter="fleet/#")) as large,
    ):
        _burst(bridge, 20)
        assert await recv_json(small) == {"type": "dropped", "count": 18, "total": 18}
        assert [(await recv_json(small))["payload"]["seq"] for _ in range(2)] == [18, 19]
        assert [(await recv_json(large))["payload"]["seq"] for _ in range(20)] == list(range(20))
        _burst(bridge, 5)
        assert await recv_json(small) == {"type": "dropped", "count": 3, "total": 21}
        assert [(await recv_json(small))["payload"]["seq"] for _ in range(2)] == [3, 4]
        assert bridge.hub.drops["websocket"] == 21


async def test_disconnect_policy_closes_only_the_slow_client(bridge: RunningBridge) -> None:
    """Under ?policy=disconnect an overflowing client is closed with 1008 and the reason; others go on."""
    async with (
        connect(bridge.ws(filter="fleet/#", queue=2, policy="disconnect")) as slow,
        connect(bridge.ws(filter="fleet/#")) as steady,
    ):
        _burst(bridge, 5)
        closed = await _expect_closed(slow)
        assert closed.rcvd is not None
        assert closed.rcvd.code == 1008
        assert "too slow" in closed.rcvd.reason
        assert [(await recv_json(steady))["payload"]["seq"] for _ in range(5)] == list(range(5))
        assert consumers(bridge.hub, "websocket") == 1


async def test_a_stalled_client_is_cut_by_the_send_timeout(bridge_factory: BridgeFactory) -> None:
    """A client that stops reading is cut once a send waits longer than send_timeout, released, and its
    connection aborted (a close handshake would wait for the full buffers to drain)."""
    async with bridge_factory(send_timeout=0.3) as bridge:
        # max_queue=1: the client library stops reading from its socket after one unread message.
        ws = await connect(bridge.ws(filter="fleet/#"), max_queue=1, max_size=None)
        try:
            payload = json.dumps({"blob": "x" * 60_000}).encode()
            for _ in range(2_000):
                if consumers(bridge.hub, "websocket") == 0:
                    break
                bridge.hub.ingest("fleet/d/telemetry", payload, qos=0, retain=False)
                await wait_until(
                    lambda: all(c.queued == 0 for c in bridge.hub.consumers),
                    "the writer to take it",
                    timeout=2.0,
                )
            assert consumers(bridge.hub, "websocket") == 0, "the stalled client was never cut"
            assert bridge.hub.send_timeouts == {"websocket": 1}
            await wait_until(lambda: server_connections(bridge.port) == 0, "the connection to be aborted")
        finally:
            ws.transport.abort()


async def test_a_client_that_stops_reading_is_cut_though_no_send_to_it_waits(
    bridge_factory: BridgeFactory, mqtt: aiomqtt.Client
) -> None:
    """A client that stops reading is cut once it has taken none of the bytes waiting for it for
    send_timeout, though they wait in the kernel and no send to it waits; another client reads on."""
    async with bridge_factory(send_timeout=0.5) as bridge:
        stalled = await connect(
            bridge.ws(filter="fleet/quiet/#"), sock=await small_window_socket(bridge.port)
        )
        try:
            async with connect(bridge.ws(filter="fleet/#")) as reader:
                stalled.transport.pause_reading()
                await publish_and_wait(mqtt, bridge.hub, QUIET_BURST)
                for seq in range(len(QUIET_BURST)):
                    assert (await recv_json(reader))["payload"]["seq"] == seq

                async def received() -> Any:
                    return (await recv_json(reader))["payload"]

                await trickle_until_cut(bridge, "websocket", mqtt, received)
        finally:
            stalled.transport.abort()


async def test_a_peer_that_stops_answering_pings_is_cut(bridge_factory: BridgeFactory) -> None:
    """uvicorn pings every ws_ping_interval; a peer that answers no ping within the same time is dropped."""
    async with bridge_factory(ws_ping_interval=0.2) as bridge:
        ws = await connect(bridge.ws(filter="fleet/#"))
        try:
            assert consumers(bridge.hub, "websocket") == 1
            ws.transport.pause_reading()  # a dead peer: it never sees the ping, so never answers it
            await wait_until(lambda: consumers(bridge.hub, "websocket") == 0, "the silent peer to be cut")
        finally:
            ws.transport.abort()
