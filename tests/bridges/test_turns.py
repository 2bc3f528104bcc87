"""Turns: writers with a backlog send one burst per round, whatever their transport."""

from __future__ import annotations

import asyncio

import pytest

from bridges.hub import Consumer, Hub
from bridges.turns import BURST, PATIENCE_TURNS, Turns

TIMEOUT = 5.0


async def test_a_writer_with_a_backlog_waits_for_the_round() -> None:
    """next() returns only once every writer of the round has finished its burst, not after one loop turn."""
    turns = Turns(patience=60)
    turns.join("grpc stream")
    waiter = asyncio.create_task(turns.next("websocket"))
    for _ in range(50):
        await asyncio.sleep(0)
    assert not waiter.done()
    assert (turns.pending, turns.waiting) == (1, 1)
    turns.leave("grpc stream")
    await asyncio.wait_for(waiter, TIMEOUT)
    assert (turns.rounds, turns.pending, turns.waiting) == (1, 1, 0)  # the websocket writer's round


async def test_the_last_writer_of_a_round_starts_the_next() -> None:
    """A writer that finds nobody else sending goes on after one turn of the loop."""
    turns = Turns()
    await asyncio.wait_for(turns.next("websocket"), TIMEOUT)
    assert (turns.rounds, turns.pending, turns.waiting) == (1, 1, 0)
    turns.leave("websocket")
    assert turns.pending == 0


async def test_a_burst_that_outlasts_the_patience_stops_holding_the_round() -> None:
    """A client that stopped reading does not hold the other writers back for longer than the patience."""
    turns = Turns(patience=0.05)
    turns.join("stalled stream")
    await asyncio.wait_for(turns.next("websocket"), TIMEOUT)
    assert turns.waiting == 0
    turns.leave("stalled stream")  # its write ends at last: it was no longer waited for
    assert turns.pending == 1


async def test_a_cancelled_waiter_leaves_the_round() -> None:
    """A writer cancelled while it waits (its connection ended) is not released into the next round."""
    turns = Turns(patience=60)
    turns.join("grpc stream")
    waiter = asyncio.create_task(turns.next("websocket"))
    for _ in range(10):
        await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    turns.leave("grpc stream")
    assert (turns.pending, turns.waiting) == (0, 0)


async def test_a_backlog_on_a_transport_with_instant_sends_cannot_take_more_than_its_share() -> None:
    """Under a backlog, a writer whose sends never suspend stays within two bursts of one whose every
    write takes ten turns of the loop (a gRPC stream); yielding one turn per burst, it would get ten."""
    turns = Turns()
    sent, ahead = await _share(turns_per_write=10, turns=turns)
    assert sent == {"websocket": 40 * BURST, "grpc": 40 * BURST}
    assert max(ahead) <= 2 * BURST  # one burst of its own round, one from before the other joined
    assert turns.rounds >= 39


async def _share(turns_per_write: int, turns: Turns) -> tuple[dict[str, int], list[int]]:
    """Two writers taking `turns` with a backlog of 40 bursts each, one whose writes complete at
    once, one whose every write completes `turns_per_write` turns of the loop later."""
    hub = Hub(queue_size=100_000)
    hub.turns = turns
    instant = hub.add(["#"], transport="websocket")
    delayed = hub.add(["#"], transport="grpc")
    for n in range(40 * BURST):
        hub.ingest(f"fleet/d{n % 10}/telemetry", b"{}", qos=0, retain=False)
    sent = {"websocket": 0, "grpc": 0}
    ahead: list[int] = []

    async def write(consumer: Consumer, turns_per_write: int) -> None:
        while consumer.queued:
            sent[consumer.transport] += len(await consumer.get_batch(BURST))
            ahead.append(sent["websocket"] - sent["grpc"])
            if turns_per_write:
                hub.turns.join(consumer)
                for _ in range(turns_per_write):
                    await asyncio.sleep(0)
            if consumer.queued:
                await hub.turns.next(consumer)
        hub.turns.leave(consumer)

    async with asyncio.timeout(TIMEOUT), asyncio.TaskGroup() as writers:
        writers.create_task(write(instant, 0))
        writers.create_task(write(delayed, turns_per_write))
    return sent, ahead


async def test_a_slow_loop_cannot_starve_a_writer_whose_writes_complete_turns_later() -> None:
    """A gRPC writer whose writes complete 10 turns later keeps its share even when every turn
    outlasts the patience in seconds: the round waits for it up to PATIENCE_TURNS turns."""
    # A patience of a nanosecond, as on a machine whose every turn outlasts `PATIENCE`.
    sent, ahead = await _share(turns_per_write=10, turns=Turns(patience=1e-9, patience_turns=PATIENCE_TURNS))
    assert sent == {"websocket": 40 * BURST, "grpc": 40 * BURST}
    assert max(ahead) <= 2 * BURST


async def test_bounded_by_seconds_alone_a_slow_loop_starves_the_delayed_writer() -> None:
    """The same writers with a patience of one turn: the instant writer runs ahead by many bursts
    (the starvation that the bound in turns prevents)."""
    sent, ahead = await _share(turns_per_write=10, turns=Turns(patience=1e-9, patience_turns=1))
    assert sent == {"websocket": 40 * BURST, "grpc": 40 * BURST}
    assert max(ahead) >= 10 * BURST


async def test_a_write_that_never_completes_holds_the_others_back_for_patience_turns_only() -> None:
    """A writer whose client stopped reading never finishes its burst; a writer with a backlog still
    gets a round once the stalled one has held it for PATIENCE_TURNS turns (and the seconds)."""
    turns = Turns(patience=1e-9, patience_turns=PATIENCE_TURNS)
    turns.join("stalled stream")
    await asyncio.wait_for(turns.next("websocket"), TIMEOUT)
    assert turns.rounds == 1
    assert turns.turns >= PATIENCE_TURNS
    assert (turns.pending, turns.waiting) == (1, 0)  # the websocket writer, in its new round
