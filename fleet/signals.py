"""SIGINT and SIGTERM for the `fleet` command, handled from its first line to its exit.

`fleet.__main__` installs the handler before it imports the command: asyncio and click take most
of a second to import on a busy machine, and a Ctrl-C in that time must not be lost. Then:

- before a command's event loop runs (imports, options, config), a signal is kept, and `run`
  raises `Interrupted` instead of starting the loop: nothing has started yet. The handler does
  not raise where it lands, inside an import or a C extension that may turn the exception into
  its own error; only a second signal does, for a command blocked on input (`fleet passwd`);
- while `run` runs a command, the first signal sets the command's stop event, so that it shuts
  down in order (the devices leave cleanly, then the bridges, then the broker); a second one
  cancels the command, which is still a shutdown, and `run` raises `Interrupted`;
- after that loop, a signal is noted and changes nothing: the command is printing its results.

This module imports only the standard library's `signal` when it loads, so that installing it is
the first thing the command does.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import asyncio

__all__ = ["SIGNALS", "Interrupted", "Signals", "signal_name"]

_T = TypeVar("_T")


class Interrupted(BaseException):
    """A signal stopped the command; `str()` says when. Not a KeyboardInterrupt, which click would
    turn into 'Aborted!' and exit code 1."""

    def __init__(self, signum: int, when: str) -> None:
        super().__init__(f"stopped by {signal_name(signum)} {when}")
        self.signum = signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class Signals:
    """The process's handler of SIGINT and SIGTERM; `SIGNALS` is the one instance."""

    HANDLED = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.stopped_by: int | None = None  # the first signal while a command ran: what stopped it
        self._last: int | None = None
        self._pending: int | None = None  # a signal before any command loop ran
        self._running: tuple[asyncio.AbstractEventLoop, asyncio.Event, asyncio.Task[Any]] | None = None
        self._started = False

    def install(self) -> None:
        """Handle both signals from now on, even where the parent left them ignored (a background
        job of a shell script): a signal sent to `fleet` always stops it."""
        for signum in self.HANDLED:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self._last = signum
        if not self._started:
            if self._pending is not None:
                raise Interrupted(self._pending, "while the command waited")
            self._pending = signum
            return
        if self._running is None:
            return
        loop, stop, task = self._running
        first = self.stopped_by is None
        if first:
            self.stopped_by = signum
        # A handler runs between two bytecodes of the main thread, possibly while the loop waits in
        # its selector: only the thread-safe call both schedules the work and wakes the loop.
        loop.call_soon_threadsafe(stop.set if first else task.cancel)

    def raise_pending(self) -> None:
        """Raise `Interrupted` for a signal that came before any command loop ran."""
        if self._pending is not None and not self._started:
            raise Interrupted(self._pending, "before the command started its work")

    def run(self, command: Callable[[asyncio.Event], Awaitable[_T]]) -> _T:
        """Run `command(stop)` in a new event loop, where a signal sets `stop` (see the module)."""
        import asyncio

        self.raise_pending()
        try:
            return asyncio.run(self._serve(command))
        except asyncio.CancelledError:
            raise Interrupted(self._last or signal.SIGINT, "again, which cut the shutdown short") from None

    async def _serve(self, command: Callable[[asyncio.Event], Awaitable[_T]]) -> _T:
        import asyncio
        import socket

        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        # The kernel may deliver a signal to any thread (an executor's, say); Python runs the handler
        # in the main thread only once it runs again. The wakeup socket wakes the loop's selector.
        wake, woken = socket.socketpair()
        wake.setblocking(False)
        woken.setblocking(False)
        previous = signal.set_wakeup_fd(wake.fileno(), warn_on_full_buffer=False)
        loop.add_reader(woken.fileno(), woken.recv, 512)
        self._running = (loop, stop, task)
        self._started = True
        try:
            # A signal after `run`'s check and before `_started` was kept as pending: nothing has
            # started yet, so it stops the command here, as one before `run` does.
            if self._pending is not None:
                raise Interrupted(self._pending, "before the command started its work")
            return await command(stop)
        finally:
            self._running = None
            loop.remove_reader(woken.fileno())
            signal.set_wakeup_fd(previous)
            wake.close()
            woken.close()


SIGNALS = Signals()
