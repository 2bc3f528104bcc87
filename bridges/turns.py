"""Fair turns for the writers of every transport: under a backlog, each sends one burst per round.

A WebSocket or SSE send to a healthy client completes without suspending, while a gRPC write
completes only after grpc's poller thread has handed its completion back to the event loop, which
takes several turns of a busy loop. Yielding to the loop after each burst is not enough: under
overload the WebSocket and SSE writers then send a burst every turn, and each gRPC stream one
message every several turns (bench/README.md, "Fairness under overload").

So the writers with a backlog take turns in rounds, as a barrier: in each round each of them sends
one burst, at most `BURST` events, then waits in `Turns.next()` until every other writer of the
round has finished its own. A write that completes later (a gRPC write) `join`s the round first,
so that the round waits for it. A writer whose burst outlasts both `patience` seconds and
`patience_turns` turns of the loop (its client stopped reading) stops holding the round back; the
send watchdogs cut that client later. The bound in turns is what keeps gRPC's share on a slow
machine: bounded by seconds alone, a round whose turns each take longer than a tenth of `patience`
went on without the gRPC writes still completing, and gRPC got one burst every few rounds, or none.

    turns.join(stream)            # before a write that completes after some turns of the loop
    ...
    if consumer.queued:
        await turns.next(writer)  # after a burst, with a backlog left
    else:
        turns.leave(writer)       # nothing left to send: the round does not wait for this writer
"""

from __future__ import annotations

import asyncio
from typing import Final

__all__ = ["BURST", "PATIENCE", "PATIENCE_TURNS", "Turns"]

# Events a writer with a backlog sends in one round: one write for SSE and gRPC, a frame each for
# WebSocket.
BURST: Final = 64
# A send in flight holds a round back for at most this many seconds and turns of the loop, whichever
# is later: a gRPC write completes two or three turns after it starts, and a turn of a saturated loop
# on a slow machine can take longer than the seconds (bench/bridge_profile.py shows both).
PATIENCE: Final = 0.1
PATIENCE_TURNS: Final = 32


class Turns:
    """The rounds of one hub's writers; use it from the event loop's thread only.

    A writer is any hashable object that stands for one consumer's sending task."""

    def __init__(self, patience: float = PATIENCE, patience_turns: int = PATIENCE_TURNS) -> None:
        if patience <= 0:
            raise ValueError(f"patience must be > 0, got {patience}")
        if patience_turns < 1:
            raise ValueError(f"patience_turns must be >= 1, got {patience_turns}")
        self.patience = patience
        self.patience_turns = patience_turns
        self.rounds = 0
        self.turns = 0  # turns of the loop counted while writers waited for a round
        # Writers of this round still sending -> since when (loop time, and self.turns).
        self._pending: dict[object, tuple[float, int]] = {}
        self._waiters: dict[object, asyncio.Future[None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._ticking = False

    @property
    def pending(self) -> int:
        """Writers of the current round that have not finished their burst."""
        return len(self._pending)

    @property
    def waiting(self) -> int:
        """Writers waiting for the next round."""
        return len(self._waiters)

    def join(self, writer: object) -> None:
        """`writer` starts a burst that completes after some turns of the loop: the round waits for it."""
        if writer not in self._pending:
            self._pending[writer] = (asyncio.get_running_loop().time(), self.turns)

    def leave(self, writer: object) -> None:
        """`writer` has nothing left to send, or has ended: the round no longer waits for it."""
        if self._pending.pop(writer, None) is not None and not self._pending:
            self._next_round()

    async def next(self, writer: object) -> None:
        """`writer` finished its burst and has a backlog left: wait for the next round, in which it
        sends again. The last writer of a round to finish starts the next one."""
        self._pending.pop(writer, None)
        loop = asyncio.get_running_loop()
        if not self._pending:
            self._next_round()
            self._pending[writer] = (loop.time(), self.turns)
            await asyncio.sleep(0)  # the writers just released run before this one sends again
            return
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters[writer] = waiter
        if self._timer is None:
            self._arm(loop)
        if not self._ticking:
            self._ticking = True
            loop.call_soon(self._tick)
        try:
            await waiter
        finally:
            if not waiter.done():  # cancelled while waiting
                del self._waiters[writer]

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        since = min(t for t, _ in self._pending.values())
        self._timer = loop.call_at(since + self.patience, self._expire)

    def _tick(self) -> None:
        """One turn of the loop while writers wait; stops once every pending writer has had its
        `patience_turns` (the timer alone then ends its patience)."""
        self.turns += 1
        if self._waiters and self._pending:
            oldest = min(turn for _, turn in self._pending.values())
            if self.turns - oldest < self.patience_turns:
                asyncio.get_running_loop().call_soon(self._tick)
                return
            self._ticking = False
            self._expire()
            return
        self._ticking = False

    def _expire(self) -> None:
        """Let the round go on without the writers out of patience: sending for `patience` seconds
        and for `patience_turns` turns of the loop (a slow loop cannot starve a writer whose sends
        complete a few turns later, and a client that stopped reading holds nobody back for long)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = asyncio.get_running_loop()
        deadline, last_turn = loop.time() - self.patience, self.turns - self.patience_turns
        for writer, (since, turn) in list(self._pending.items()):
            if since <= deadline and turn <= last_turn:
                del self._pending[writer]  # its client is slow: the round goes on without it
        if not self._pending:
            self._next_round()
        elif self._waiters:
            if any(since > deadline for since, _ in self._pending.values()):
                self._arm(loop)
            if not self._ticking and any(turn > last_turn for _, turn in self._pending.values()):
                self._ticking = True
                loop.call_soon(self._tick)

    def _next_round(self) -> None:
        """Release the waiting writers into a new round."""
        self.rounds += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = asyncio.get_running_loop().time()
        waiters, self._waiters = self._waiters, {}
        for writer, waiter in waiters.items():
            if not waiter.done():
                waiter.set_result(None)
                self._pending[writer] = (now, self.turns)
