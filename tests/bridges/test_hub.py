"""The Hub and the envelope: one encoding per message, filters, bounded queues, replay and reset."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from bridges.envelope import Event, classify
from bridges.hub import WRITE_BYTES, ConsumerClosed, Dropped, Hub, Reset
from fleet.errors import TopicError
from tests.bridges.conftest import wait_until


def test_envelope_has_the_architecture_fields_and_is_encoded_once() -> None:
    """An event carries id, topic, device, kind, qos, retain, received_at and the decoded payload."""
    hub = Hub()
    event = hub.ingest("fleet/thermo-0007/telemetry", b'{"seq": 42}', qos=1, retain=False)
    envelope = json.loads(event.json)
    assert {k: envelope[k] for k in ("id", "topic", "device", "kind", "qos", "retain", "payload")} == {
        "id": event.id,
        "topic": "fleet/thermo-0007/telemetry",
        "device": "thermo-0007",
        "kind": "telemetry",
        "qos": 1,
        "retain": False,
        "payload": {"seq": 42},
    }
    assert isinstance(envelope["received_at"], float)
    assert Hub().ingest("t", b"1", qos=0, retain=False).id > event.id  # ids grow across restarts


def test_a_payload_that_is_not_json_is_carried_as_base64() -> None:
    """Binary payloads become payload null plus payload_base64."""
    event = Hub().ingest("sensors/raw", b"\xff\x00binary", qos=0, retain=True)
    envelope = json.loads(event.json)
    assert envelope["payload"] is None
    assert base64.b64decode(envelope["payload_base64"]) == b"\xff\x00binary"
    assert (envelope["kind"], envelope["device"], envelope["retain"]) == ("raw", None, True)


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("fleet/d1/telemetry", ("d1", "telemetry")),
        ("fleet/d1/status", ("d1", "status")),
        ("fleet/d1/cmd/ack", ("d1", "ack")),
        ("fleet/d1/cmd", ("d1", "raw")),
        ("other/d1/telemetry", (None, "raw")),
        ("fleet", (None, "raw")),
    ],
)
def test_kinds_follow_the_topic_scheme(topic: str, expected: tuple[str | None, str]) -> None:
    """Topics of the default scheme get their kind and device; anything else is raw."""
    assert classify(topic) == expected


async def test_consumers_get_only_what_their_filters_match() -> None:
    """Each consumer receives the events its MQTT-style filters match, in order."""
    hub = Hub()
    status = hub.add(["fleet/+/status"], transport="test")
    everything = hub.add(["#"], transport="test")
    hub.ingest("fleet/a/telemetry", b"1", qos=0, retain=False)
    hub.ingest("fleet/a/status", b"2", qos=0, retain=False)
    got = await status.get()
    assert getattr(got, "topic", None) == "fleet/a/status"
    assert status.queued == 0
    first = hub.ring[0].id
    assert [getattr(await everything.get(), "id", None) for _ in range(2)] == [first, first + 1]


def test_bad_filters_are_refused_with_the_rule() -> None:
    """A consumer with an invalid filter is refused with a TopicError naming the rule."""
    with pytest.raises(TopicError, match="must be the last level"):
        Hub().add(["fleet/#/x"], transport="test")
    with pytest.raises(TopicError, match="at least one"):
        Hub().add([], transport="test")


async def test_drop_oldest_keeps_the_newest_and_tells_the_consumer() -> None:
    """A full queue drops its oldest events, and the consumer learns how many before the next event."""
    hub = Hub(queue_size=3)
    slow = hub.add(["#"], transport="test")
    fast = hub.add(["#"], transport="test", size=100)
    for index in range(5):
        hub.ingest("t", str(index).encode(), qos=0, retain=False)
    assert await slow.get() == Dropped(2, 2)
    assert [getattr(await slow.get(), "payload", None) for _ in range(3)] == [2, 3, 4]
    assert [getattr(await fast.get(), "payload", None) for _ in range(5)] == [0, 1, 2, 3, 4]
    assert hub.drops == {"test": 2}


async def test_disconnect_policy_closes_a_slow_consumer_with_a_reason() -> None:
    """Under the disconnect policy a full queue closes the consumer; the others are untouched."""
    hub = Hub(queue_size=2)
    slow = hub.add(["#"], transport="test", policy="disconnect")
    other = hub.add(["#"], transport="test")
    for index in range(3):
        hub.ingest("t", str(index).encode(), qos=0, retain=False)
    with pytest.raises(ConsumerClosed, match="too slow"):
        await slow.get()
    assert slow not in hub.consumers
    assert other.queued == 2


async def test_resume_replays_inside_the_ring_and_resets_outside_it() -> None:
    """after_id inside the ring replays exactly the missed events; older than the ring gives a Reset first."""
    hub = Hub(ring_size=4)
    ids = [hub.ingest("fleet/d/telemetry", str(i).encode(), qos=0, retain=False).id for i in range(6)]
    resumed = hub.add(["#"], transport="test", after_id=ids[3])
    assert [getattr(await resumed.get(), "id", None) for _ in range(2)] == ids[4:]
    assert resumed.queued == 0
    late = hub.add(["#"], transport="test", after_id=ids[0])
    assert await late.get() == Reset(after_id=ids[0], oldest_id=ids[2])
    assert [getattr(await late.get(), "id", None) for _ in range(4)] == ids[2:]


async def test_broker_status_reaches_every_consumer_whatever_its_filters() -> None:
    """A broker status change is an event of kind 'bridge' for every consumer."""
    hub = Hub()
    narrow = hub.add(["fleet/x/status"], transport="test")
    hub.broker_status(False, "broker down")
    event = await asyncio.wait_for(narrow.get(), 1)
    assert getattr(event, "kind", None) == "bridge"
    assert getattr(event, "payload", None) == {"connected": False, "reason": "broker down"}


async def test_a_consumer_joining_while_the_broker_is_down_hears_it_at_once() -> None:
    """A new consumer gets the current 'broker down' status first; resume replays bridge events too."""
    hub = Hub()
    before = hub.ingest("fleet/d/telemetry", b"1", qos=0, retain=False)
    hub.broker_status(False, "broker down")
    joined = hub.add(["fleet/#"], transport="test")
    assert getattr(await joined.get(), "kind", None) == "bridge"
    resumed = hub.add(["fleet/#"], transport="test", after_id=before.id)
    assert getattr(await resumed.get(), "kind", None) == "bridge"  # replayed once, not repeated
    assert resumed.queued == 0


async def test_a_disconnect_consumer_overflowed_by_its_replay_is_not_registered() -> None:
    """A resume backlog larger than a disconnect-policy queue closes the consumer before it joins."""
    hub = Hub()
    ids = [hub.ingest("t", b"x", qos=0, retain=False).id for _ in range(5)]
    consumer = hub.add(["#"], transport="test", policy="disconnect", size=2, after_id=ids[0] - 1)
    assert consumer.closed is not None
    assert consumer not in hub.consumers


async def test_a_shed_message_is_counted_and_told_as_a_drop_to_each_consumer_it_was_for() -> None:
    """A message the intake sheds counts as received and shed at once, and as a drop told to each
    consumer whose filters match it within SHED_COUNT_INTERVAL; it takes no id and no place in the
    ring."""
    hub = Hub()
    fleet = hub.add(["fleet/#"], transport="test")
    other = hub.add(["other/#"], transport="test")
    for _ in range(3):
        hub.shed("fleet/d/telemetry")
    assert (hub.events_in, hub.shed_total, len(hub.ring)) == (3, 3, 0)
    await wait_until(lambda: hub.drops == {"test": 3}, "the shed messages' drops to be counted")
    assert await fleet.get() == Dropped(3, 3)
    assert (fleet.queued, other.queued) == (0, 0)


def test_the_hub_is_overflowing_when_half_of_its_consumers_have_half_full_queues() -> None:
    """overflowing() is the intake's sign that the writers do not keep up: half of the consumers'
    queues at least half full."""
    hub = Hub(queue_size=4)
    behind = [hub.add([f"slow/{n}"], transport="test") for n in range(2)]
    hub.add(["quiet/#"], transport="test")
    hub.add(["quiet/#"], transport="test")
    hub.ingest("slow/0", b"1", qos=0, retain=False)
    hub.ingest("slow/0", b"2", qos=0, retain=False)
    assert not hub.overflowing()
    hub.ingest("slow/1", b"1", qos=0, retain=False)
    hub.ingest("slow/1", b"2", qos=0, retain=False)
    assert hub.overflowing()
    assert [c.queued for c in behind] == [2, 2]


async def test_a_consumer_that_dropped_events_since_the_last_look_counts_as_overflowing() -> None:
    """A writer that takes its whole queue each turn may leave it empty at any moment: a consumer
    that dropped events since the hub's last look counts as not keeping up, once."""
    hub = Hub(queue_size=2)
    slow = hub.add(["slow/#"], transport="test")
    hub.add(["quiet/#"], transport="test")
    for n in range(3):
        hub.ingest("slow/0", str(n).encode(), qos=0, retain=False)
    assert len(await slow.get_batch(10)) == 3  # the drop notice and the two newest
    assert slow.queued == 0
    assert hub.overflowing()
    assert not hub.overflowing()
    slow.lose(5)  # shed by the intake: never offered, so no sign of a writer behind
    assert not hub.overflowing()


async def test_a_waiting_writer_gets_a_turns_events_through_its_sink_in_one_write_at_the_turns_end() -> None:
    """While its writer waits, the events a consumer gets in one loop turn are written through its
    sink together once the turn's callbacks have run, without waking the writer; events the sink
    refuses stay queued in order, and the writer wakes for them."""
    hub = Hub()
    consumer = hub.add(["fleet/#"], transport="test")
    writes: list[list[int]] = []
    accept = True

    def sink(events: list[Event]) -> bool:
        if accept:
            writes.append([event.payload["seq"] for event in events])
        return accept

    consumer.sink = sink
    getting = asyncio.create_task(consumer.get_batch(10))
    await asyncio.sleep(0)  # the writer now waits in get
    for seq in range(3):
        hub.ingest("fleet/d/telemetry", json.dumps({"seq": seq}).encode(), qos=0, retain=False)
    assert writes == []
    assert consumer.queued == 3
    await asyncio.sleep(0)
    assert writes == [[0, 1, 2]]
    assert consumer.queued == 0
    assert not getting.done()

    accept = False
    hub.ingest("fleet/d/telemetry", b'{"seq": 3}', qos=0, retain=False)
    hub.ingest("fleet/d/telemetry", b'{"seq": 4}', qos=0, retain=False)
    assert [item.payload["seq"] for item in await getting if isinstance(item, Event)] == [3, 4]
    assert writes == [[0, 1, 2]]


async def test_events_within_the_write_interval_go_out_together_and_a_full_queue_is_written_at_once() -> None:
    """After a write through the sinks, the events of the next `write_interval` seconds wait and go out
    in one write when it ends; a queue that fills meanwhile is written at once instead of dropping."""
    hub = Hub(write_interval=0.5, queue_size=3)  # far longer than the two turns it must outlast
    consumer = hub.add(["fleet/#"], transport="test")
    writes: list[list[int]] = []
    consumer.sink = lambda events: writes.append([event.payload["seq"] for event in events]) is None
    getting = asyncio.create_task(consumer.get_batch(10))
    await asyncio.sleep(0)  # the writer now waits in get

    def ingest(seq: int) -> None:
        hub.ingest("fleet/d/telemetry", json.dumps({"seq": seq}).encode(), qos=0, retain=False)

    ingest(0)
    await asyncio.sleep(0)
    assert writes == [[0]]  # the first write goes at the end of its turn
    ingest(1)
    await asyncio.sleep(0)
    ingest(2)
    await asyncio.sleep(0)
    assert writes == [[0]]  # within the interval: they wait
    await wait_until(lambda: len(writes) == 2, "the interval to end")
    assert writes[1] == [1, 2]
    for seq in range(3, 7):  # in the next interval, one more than the queue holds
        ingest(seq)
    assert writes[2:] == [[3, 4, 5]]  # written at once when the queue filled
    await wait_until(lambda: len(writes) == 4, "the interval to end")
    assert writes[3] == [6]
    assert consumer.dropped == 0
    assert not getting.done()
    getting.cancel()


async def test_a_sink_write_stops_growing_past_write_bytes_and_the_writer_takes_the_rest() -> None:
    """One write through a sink holds events up to WRITE_BYTES, the one that crosses it included, so
    that what a connection holds in flight stays bounded; the events after it go to the writer, in
    order."""
    hub = Hub(write_interval=0)
    consumer = hub.add(["fleet/#"], transport="test")
    writes: list[list[Event]] = []
    consumer.sink = lambda events: writes.append(events) is None
    getting = asyncio.create_task(consumer.get_batch(100))
    await asyncio.sleep(0)  # the writer now waits in get
    blob = json.dumps({"blob": "x" * 60_000}).encode()
    ids = [hub.ingest("fleet/d/telemetry", blob, qos=0, retain=False).id for _ in range(8)]
    await asyncio.sleep(0)
    (written,) = writes
    assert sum(event.size for event in written[:-1]) < WRITE_BYTES <= sum(event.size for event in written)
    rest = await getting
    assert [event.id for event in written] + [getattr(item, "id", None) for item in rest] == ids


async def test_a_consumer_that_falls_behind_by_max_lag_loses_the_old_events_and_is_told() -> None:
    """A queued live event older than max_lag behind the newest is dropped and told, not sent late."""
    hub = Hub(max_lag=0.05)
    slow = hub.add(["#"], transport="test")
    hub.ingest("t", b"0", qos=0, retain=False)
    hub.ingest("t", b"1", qos=0, retain=False)
    await asyncio.sleep(0.1)  # the queued events are now more than max_lag older than the next
    hub.ingest("t", b"2", qos=0, retain=False)
    assert await slow.get() == Dropped(2, 2)
    assert getattr(await slow.get(), "payload", None) == 2
    assert hub.drops == {"test": 2}


async def test_under_the_disconnect_policy_a_consumer_behind_by_max_lag_is_cut() -> None:
    """With policy disconnect, a consumer max_lag behind is closed with a reason, and counted."""
    hub = Hub(max_lag=0.05)
    slow = hub.add(["#"], transport="test", policy="disconnect")
    hub.ingest("t", b"0", qos=0, retain=False)
    await asyncio.sleep(0.1)
    hub.ingest("t", b"1", qos=0, retain=False)
    with pytest.raises(ConsumerClosed, match="behind"):
        await slow.get()
    assert slow not in hub.consumers
    assert hub.drops == {"test": 1}


async def test_replayed_events_are_not_dropped_for_their_age() -> None:
    """Events a consumer asked to replay are old by design: a live event behind them drops none."""
    hub = Hub(max_lag=0.05)
    ids = [hub.ingest("t", str(i).encode(), qos=0, retain=False).id for i in range(3)]
    await asyncio.sleep(0.1)
    resumed = hub.add(["#"], transport="test", after_id=ids[0])
    live = hub.ingest("t", b"3", qos=0, retain=False)
    assert [getattr(await resumed.get(), "id", None) for _ in range(3)] == [*ids[1:], live.id]
