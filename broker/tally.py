"""A log line for events that come in bursts, such as the wills of a reconnect storm: the first at
once, with its details, and those that follow as one line per interval with their count."""

from __future__ import annotations

import asyncio
import logging

__all__ = ["Tally"]


class Tally:
    """Log the first event at once (`first % details`), and the events of the next `interval`
    seconds as one line (`more % (count, *details of the last)`), as long as they keep coming.

    Each event is also logged at DEBUG with its details. `close()` logs what is still counted.
    """

    def __init__(self, logger: logging.Logger, first: str, more: str, *, interval: float = 5.0) -> None:
        self._logger = logger
        self._first = first
        self._more = more
        self._interval = interval
        self._count = 0
        self._last: tuple[object, ...] = ()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, *details: object) -> None:
        if self._timer is None:
            self._logger.info(self._first, *details)
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._tick)
            return
        self._logger.debug(self._first, *details)
        self._count += 1
        self._last = details

    def _tick(self) -> None:
        if not self._count:
            self._timer = None  # a quiet interval: the next event is logged at once again
            return
        self._flush()
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._tick)

    def _flush(self) -> None:
        self._logger.info(self._more, self._count, *self._last)
        self._count = 0

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._count:
            self._flush()
