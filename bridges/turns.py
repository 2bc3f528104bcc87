"""Fair turns for the writers of every transport: under a backlog, each sends one burst per round.

A WebSocket or SSE send to a healthy client completes without suspending, while a gRPC write
completes only after grpc's poller thread has handed its completion back to the event loop, which
takes several turns of a busy loop. Yielding to the loop after each burst is not enough: under
overload the WebSocket and SSE writers then send a burst every turn, and each gRPC stream one
message every several turns (bench/README.md, "Fairness under overload").

So the writers with a backlog take turns in rounds, as a barrier: in each round each of them sends
one burst, at most `BURST` events, then waits in `Turns.next()` until every other writer of the
round has finished its own. A write that completes later (a gRPC write) `join`s the round first,
so that the round waits for it. A writer whose burst outlasts `patience` seconds (its client
stopped reading) stops holding the round back; the send watchdogs cut that client later.

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

__all__ = ["BURST", "PATIENCE", "Turns"]

# Events a writer with a backlog sends in one round: one write for SSE and gRPC, a frame each for
# WebSocket.
BURST: Final = 64
# Seconds a send in flight may hold a round back.
PATIENCE: Final = 0.1


class Turns:
    """The rounds of one hub's writers; use it from the event loop's thread only.

    A writer is any hashable object that stands for one consumer's sending task."""

    def __init__(self, patience: float = PATIENCE) -> None:
        if patience <= 0:
            raise ValueError(f"patience must be > 0, got {patience}")
        self.patience = patience
        self.rounds = 0
        self._pending: dict[object, float] = {}  # writers of this round still sending -> since when
        self._waiters: dict[object, asyncio.Future[None]] = {}
        self._timer: asyncio.TimerHandle | None = None

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
            self._pending[writer] = asyncio.get_running_loop().time()

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
            self._pending[writer] = loop.time()
            await asyncio.sleep(0)  # the writers just released run before this one sends again
            return
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters[writer] = waiter
        if self._timer is None:
            self._arm(loop)
        try:
            await waiter
        finally:
            if not waiter.done():  # cancelled while waiting
                del self._waiters[writer]

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = loop.call_at(min(self._pending.values()) + self.patience, self._expire)

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() - self.patience
        for writer, since in list(self._pending.items()):
            if since <= deadline:
                del self._pending[writer]  # its client is slow: the round goes on without it
        if self._pending:
            self._arm(loop)
        else:
            self._next_round()

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
                self._pending[writer] = now
