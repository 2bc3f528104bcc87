"""The SSE bridge `/events` end to end: a real broker, MqttSource, uvicorn, httpx-sse and curl clients."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiomqtt
import httpx
import pytest
from httpx_sse import aconnect_sse

from bridges.hub import Hub
from tests.bridges.conftest import (
    QUIET_BURST,
    BridgeFactory,
    Curl,
    RunningBridge,
    SseReader,
    consumers,
    publish_and_wait,
    server_connections,
    small_window_socket,
    trickle_until_cut,
    wait_until,
)


async def test_events_carry_id_kind_and_the_envelope(bridge: RunningBridge, mqtt: aiomqtt.Client) -> None:
    """Each event has `id:` the envelope id as text, `event:` its kind, and `data:` the envelope JSON."""
    async with (
        httpx.AsyncClient(base_url=bridge.http) as client,
        aconnect_sse(client, "GET", "/events", params={"filter": ["fleet/#", "other/#"]}) as source,
    ):
        assert source.response.headers["content-type"].startswith("text/event-stream")
        reader = SseReader(source)
        messages = [
            ("fleet/dev-1/telemetry", {"seq": 1}),
            ("fleet/dev-1/status", {"online": True}),
            ("fleet/dev-1/cmd/ack", {"id": "c1", "ok": True}),
            ("other/thing", b"\x00\xff"),
        ]
        await publish_and_wait(mqtt, bridge.hub, messages)
        kinds = []
        for topic, _ in messages:
            sse = await reader.next()
            envelope = json.loads(sse.data)
            assert envelope["topic"] == topic
            assert sse.id == str(envelope["id"])
            assert sse.event == envelope["kind"]
            kinds.append(sse.event)
        assert kinds == ["telemetry", "status", "ack", "raw"]
        assert envelope["payload"] is None
        assert envelope["payload_base64"] == "AP8="
        assert reader.retry == 3000


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({"filter": "fleet/#/x"}, "'#' must be the last level [MQTT-4.7.1-2]"),
        ({"filter": "fleet/a+"}, "'+' must occupy a whole level [MQTT-4.7.1-3]"),
        ({}, "at least one filter is needed"),
        ({"filter": "fleet/#", "policy": "block"}, "policy must be 'drop-oldest' or 'disconnect'"),
        ({"filter": "fleet/#", "queue": "0"}, "queue must be an integer from 1 to"),
        ({"filter": "fleet/#", "queue": "lots"}, "queue must be an integer from 1 to"),
        ({"filter": "fleet/#", "last_event_id": "-3"}, "Last-Event-ID must be an event id"),
    ],
)
async def test_a_bad_query_is_a_400_with_the_reason(
    bridge: RunningBridge, query: dict[str, str], reason: str
) -> None:
    """An invalid filter, policy, queue size or resume point is refused with 400 and the reason as text."""
    async with httpx.AsyncClient(base_url=bridge.http) as client:
        response = await client.get("/events", params=query)
    assert response.status_code == 400
    assert reason in response.text
    assert consumers(bridge.hub, "sse") == 0


async def test_resume_with_last_event_id_loses_nothing_inside_the_ring(
    bridge_factory: BridgeFactory, mqtt: aiomqtt.Client
) -> None:
    """A client that reconnects with Last-Event-ID gets exactly the events it missed, then live ones."""
    async with (
        bridge_factory(hub=Hub(ring_size=16)) as bridge,
        httpx.AsyncClient(base_url=bridge.http) as client,
    ):
        params = {"filter": "fleet/+/telemetry"}
        async with aconnect_sse(client, "GET", "/events", params=params) as source:
            reader = SseReader(source)
            await publish_and_wait(mqtt, bridge.hub, [("fleet/d/telemetry", {"seq": n}) for n in range(3)])
            first = [await reader.next() for _ in range(3)]
        assert [json.loads(sse.data)["payload"]["seq"] for sse in first] == [0, 1, 2]
        last_id = int(first[-1].id)
        await wait_until(lambda: consumers(bridge.hub, "sse") == 0, "the first stream to be released")

        # Missed while away: telemetry inside the ring, and a status the filter does not match.
        missed = [("fleet/d/telemetry", {"seq": n}) for n in range(3, 6)] + [
            ("fleet/d/status", {"online": True})
        ]
        await publish_and_wait(mqtt, bridge.hub, missed)
        async with aconnect_sse(
            client, "GET", "/events", params=params, headers={"Last-Event-ID": str(last_id)}
        ) as source:
            reader = SseReader(source)
            replayed = [await reader.next() for _ in range(3)]
            await publish_and_wait(mqtt, bridge.hub, [("fleet/d/telemetry", {"seq": 6})])
            live = await reader.next()
        ids = [int(sse.id) for sse in (*replayed, live)]
        assert [json.loads(sse.data)["payload"]["seq"] for sse in (*replayed, live)] == [3, 4, 5, 6]
        assert ids == sorted(ids)
        assert ids[0] > last_id


async def test_resume_older_than_the_ring_gets_a_reset_then_continues(
    bridge_factory: BridgeFactory, mqtt: aiomqtt.Client
) -> None:
    """A resume point that fell out of the ring gives a `reset` event, then the ring's events, then live."""
    async with (
        bridge_factory(hub=Hub(ring_size=4)) as bridge,
        httpx.AsyncClient(base_url=bridge.http) as client,
    ):
        await publish_and_wait(mqtt, bridge.hub, [("fleet/d/telemetry", {"seq": 0})])
        after_id = bridge.hub.ring[-1].id
        await publish_and_wait(mqtt, bridge.hub, [("fleet/d/telemetry", {"seq": n}) for n in range(1, 11)])
        oldest = bridge.hub.ring[0].id
        assert oldest > after_id + 1
        # The query form of the resume point, for clients that cannot set headers.
        params = {"filter": "fleet/#", "last_event_id": str(after_id)}
        async with aconnect_sse(client, "GET", "/events", params=params) as source:
            reader = SseReader(source)
            reset = await reader.next()
            assert reset.event == "reset"
            assert reset.id == ""
            assert json.loads(reset.data) == {"after_id": after_id, "oldest_id": oldest}
            ring = [json.loads((await reader.next()).data)["payload"]["seq"] for _ in range(4)]
            assert ring == [7, 8, 9, 10]
            await publish_and_wait(mqtt, bridge.hub, [("fleet/d/telemetry", {"seq": 11})])
            assert json.loads((await reader.next()).data)["payload"]["seq"] == 11


async def test_an_unencoded_plus_in_a_filter_is_the_wildcard(
    bridge: RunningBridge, mqtt: aiomqtt.Client
) -> None:
    """`curl -N '/events?filter=fleet/+/telemetry'`, with `+` as users type it, streams the telemetry."""
    async with Curl.stream(f"{bridge.http}/events?filter=fleet/+/telemetry") as curl:
        assert await curl.line() == "retry: 3000"
        await wait_until(lambda: consumers(bridge.hub, "sse") == 1, "curl's stream to open")
        assert next(iter(bridge.hub.consumers)).filters == ("fleet/+/telemetry",)
        await publish_and_wait(mqtt, bridge.hub, [("fleet/dev-2/telemetry", {"seq": 7})])
        assert await curl.line_starting("event: ") == "event: telemetry"


async def test_a_plus_meant_as_a_space_is_refused_with_a_hint(bridge: RunningBridge) -> None:
    """A form-encoded space (`a+b`) reads as a misplaced wildcard: a 400 that says to write %20."""
    async with httpx.AsyncClient(base_url=bridge.http) as client:
        response = await client.get("/events?filter=room+1/%23")
        async with client.stream("GET", "/events?filter=room%201/%23") as spaced:
            assert spaced.status_code == 200
            await wait_until(lambda: consumers(bridge.hub, "sse") == 1, "the stream to open")
            assert next(iter(bridge.hub.consumers)).filters == ("room 1/#",)
    assert response.status_code == 400
    assert "'room+1/#': '+' must occupy a whole level" in response.text
    assert "write a space as %20" in response.text


async def test_curl_sees_the_retry_hint_events_and_keepalive_comments(
    bridge_factory: BridgeFactory, mqtt: aiomqtt.Client
) -> None:
    """A plain `curl -N` gets `retry:` first, then id/event/data lines, and `: keepalive` comments."""
    async with bridge_factory(keepalive=0.2, sse_retry_ms=1500) as bridge:
        async with Curl.stream(bridge.events(filter="fleet/#")) as curl:
            assert await curl.line() == "retry: 1500"
            await wait_until(lambda: consumers(bridge.hub, "sse") == 1, "curl's stream to open")
            await publish_and_wait(mqtt, bridge.hub, [("fleet/dev-9/status", {"online": True})])
            event_id = await curl.line_starting("id: ")
            assert await curl.line() == "event: status"
            data = await curl.line()
            assert data.startswith("data: ")
            envelope = json.loads(data.removeprefix("data: "))
            assert event_id == f"id: {envelope['id']}"
            assert envelope["device"] == "dev-9"
            assert await curl.line_starting(": keepalive", timeout=2.0) == ": keepalive"
        await wait_until(lambda: consumers(bridge.hub, "sse") == 0, "curl's consumer to be released")


async def test_a_tiny_queue_drops_oldest_and_says_so(bridge: RunningBridge) -> None:
    """A consumer with queue=2 that falls behind gets a `dropped` event with counts; another gets all."""
    async with (
        httpx.AsyncClient(base_url=bridge.http) as client,
        aconnect_sse(client, "GET", "/events", params={"filter": "fleet/#", "queue": "2"}) as small,
        aconnect_sse(client, "GET", "/events", params={"filter": "fleet/#"}) as large,
    ):
        small_reader, large_reader = SseReader(small), SseReader(large)
        bridge.hub.ingest("fleet/d/telemetry", b'{"seq": 0}', qos=0, retain=False)
        first = await small_reader.next()
        assert json.loads(first.data)["payload"]["seq"] == 0
        # A burst faster than any writer: the hub ingests it in one loop turn, as when MQTT floods in.
        for n in range(1, 20):
            bridge.hub.ingest("fleet/d/telemetry", json.dumps({"seq": n}).encode(), qos=0, retain=False)
        dropped = await small_reader.next()
        assert dropped.event == "dropped"
        assert dropped.id == first.id  # it has none of its own: the resume point stays on the last event
        assert json.loads(dropped.data) == {"count": 17, "total": 17}
        kept = [json.loads((await small_reader.next()).data)["payload"]["seq"] for _ in range(2)]
        assert kept == [18, 19]
        everything = [json.loads((await large_reader.next()).data)["payload"]["seq"] for _ in range(20)]
        assert everything == list(range(20))


async def test_disconnect_policy_ends_only_the_slow_stream(bridge: RunningBridge) -> None:
    """Under policy=disconnect an overflowing stream is ended (to resume later); the other continues."""
    async with httpx.AsyncClient(base_url=bridge.http) as client:
        query = {"filter": "fleet/#", "queue": "2", "policy": "disconnect"}
        async with (
            aconnect_sse(client, "GET", "/events", params=query) as slow,
            aconnect_sse(client, "GET", "/events", params={"filter": "fleet/#"}) as steady,
        ):
            slow_reader, steady_reader = SseReader(slow), SseReader(steady)
            for n in range(5):
                bridge.hub.ingest("fleet/d/telemetry", json.dumps({"seq": n}).encode(), qos=0, retain=False)
            assert await slow_reader.ended()
            got = [json.loads((await steady_reader.next()).data)["payload"]["seq"] for _ in range(5)]
            assert got == list(range(5))
            assert consumers(bridge.hub, "sse") == 1
            assert bridge.hub.drops["sse"] == 1


async def test_a_stalled_client_is_cut_by_the_send_timeout(bridge_factory: BridgeFactory) -> None:
    """A client that stops reading is cut once a write waits longer than send_timeout, released, and its
    connection aborted (a close would wait for the full buffers to drain)."""
    async with (
        bridge_factory(send_timeout=0.3) as bridge,
        httpx.AsyncClient(base_url=bridge.http) as client,
        client.stream("GET", "/events", params={"filter": "fleet/#"}) as response,
    ):
        assert response.status_code == 200
        await wait_until(lambda: consumers(bridge.hub, "sse") == 1, "the stream to open")
        # Never read: the socket buffers fill, then a send waits, and the timeout cuts the stream.
        payload = json.dumps({"blob": "x" * 60_000}).encode()

        async def flood_until_cut() -> bool:
            for _ in range(2_000):
                if consumers(bridge.hub, "sse") == 0:
                    return True
                bridge.hub.ingest("fleet/d/telemetry", payload, qos=0, retain=False)
                await wait_until(lambda: _drained(bridge.hub), "the writer to take the event", timeout=2.0)
            return False

        assert await flood_until_cut(), "the stalled stream was never cut"
        await wait_until(lambda: bridge.hub.send_timeouts == {"sse": 1}, "the cut to be counted")
        await wait_until(lambda: server_connections(bridge.port) == 0, "the connection to be aborted")


async def test_a_client_that_stops_reading_is_cut_though_no_write_to_it_waits(
    bridge_factory: BridgeFactory, mqtt: aiomqtt.Client
) -> None:
    """A client that stops reading is cut once it has taken none of the bytes waiting for it for
    send_timeout, though they wait in the kernel and no write to it waits; another client reads on."""
    async with (
        bridge_factory(send_timeout=0.5) as bridge,
        httpx.AsyncClient(base_url=bridge.http) as client,
        aconnect_sse(client, "GET", "/events", params={"filter": "fleet/#"}) as source,
    ):
        reader = SseReader(source)
        loop = asyncio.get_running_loop()
        stalled = await small_window_socket(bridge.port)
        try:
            request = (
                b"GET /events?filter=fleet/quiet/%%23 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % bridge.port
            )
            await loop.sock_sendall(stalled, request)
            await wait_until(lambda: consumers(bridge.hub, "sse") == 2, "the stream that will stall to open")
            # From here on the stalled client reads nothing.
            await publish_and_wait(mqtt, bridge.hub, QUIET_BURST)
            for seq in range(len(QUIET_BURST)):
                assert json.loads((await reader.next()).data)["payload"]["seq"] == seq

            async def received() -> Any:
                return json.loads((await reader.next()).data)["payload"]

            await trickle_until_cut(bridge, "sse", mqtt, received)
        finally:
            stalled.close()


def _drained(hub: Hub) -> bool:
    return all(consumer.queued == 0 for consumer in hub.consumers)


async def test_a_resume_backlog_beyond_a_disconnect_queue_ends_the_stream_cleanly(
    bridge: RunningBridge,
) -> None:
    """Resuming under policy=disconnect with more missed events than the queue holds ends the stream at
    once, and leaves no consumer behind in the hub."""
    for n in range(5):
        bridge.hub.ingest("fleet/d/telemetry", json.dumps({"seq": n}).encode(), qos=0, retain=False)
    query = {"filter": "fleet/#", "queue": "2", "policy": "disconnect", "last_event_id": "0"}
    async with (
        httpx.AsyncClient(base_url=bridge.http) as client,
        aconnect_sse(client, "GET", "/events", params=query) as source,
    ):
        assert await SseReader(source).ended()
    await wait_until(lambda: consumers(bridge.hub, "sse") == 0, "the closed consumer to leave the hub")
