"""What the broker logs about its clients, kept bounded whatever the clients send.

- `clip` is the one way a client-supplied string (client id, user name, topic, filter, will topic,
  or an error message quoting one) reaches the log: at most `CLIP` characters of it.
- `Tally` makes events that come in bursts (wills of a reconnect storm, connections that never send
  CONNECT, protocol violations, refused CONNECTs) one line per interval with a count, and `Noise`
  holds the broker's tallies.
"""

from __future__ import annotations

import asyncio
import logging

__all__ = ["CLIP", "Noise", "Tally", "clip"]

# Characters of one client-supplied string that reach the log; the rest is replaced by a marker.
CLIP = 200
_TAIL = 40


def clip(text: str) -> str:
    """`text` as logged: itself if at most CLIP characters, else its first and last characters around
    a marker that says how many were cut (the end often names the spec statement or the device)."""
    if len(text) <= CLIP:
        return text
    head = CLIP - _TAIL
    return f"{text[:head]}...[{len(text) - CLIP} characters cut]...{text[-_TAIL:]}"


class Tally:
    """Log the first event at once (`first % details`), and the events of the next `interval`
    seconds as one line (`more % (count, *details of the last)`), as long as they keep coming.

    Each event is also logged at DEBUG with its details. `close()` logs what is still counted.
    """

    def __init__(
        self,
        logger: logging.Logger,
        first: str,
        more: str,
        *,
        level: int = logging.INFO,
        interval: float = 5.0,
    ) -> None:
        self._logger = logger
        self._first = first
        self._more = more
        self._level = level
        self._interval = interval
        self._count = 0
        self._last: tuple[object, ...] = ()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, *details: object) -> None:
        if self._timer is None:
            self._logger.log(self._level, self._first, *details)
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
        self._logger.log(self._level, self._more, self._count, *self._last)
        self._count = 0

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._count:
            self._flush()


class Noise:
    """The broker's per-connection events that outsiders can repeat at will, each a `Tally`."""

    def __init__(self, logger: logging.Logger) -> None:
        # A storm ends hundreds of connections at once: their wills make one line per interval.
        self.wills = Tally(
            logger,
            "publishing the will of client %r on %r",
            "published %d more wills, the last of client %r on %r",
        )
        self.no_connect = Tally(
            logger,
            "closing %s: no CONNECT within %ss",
            "closed %d more connections that sent no CONNECT, the last %s (within %ss)",
        )
        self.silent = Tally(
            logger,
            "closing %s (client %r): silent for %.1fs, over 1.5 x keepalive [MQTT-3.1.2-24]",
            "closed %d more silent connections, the last %s (client %r): silent for %.1fs",
        )
        self.violations = Tally(
            logger,
            "closing %s (client %r): protocol violation: %s",
            "closed %d more connections for protocol violations, the last %s (client %r): %s",
            level=logging.WARNING,
        )
        self.refused = Tally(
            logger,
            "refused CONNECT from %s (client %r): %s",
            "refused %d more CONNECTs, the last from %s (client %r): %s",
            level=logging.WARNING,
        )
        # Refused publishes and subscriptions, and dropped messages: one line per interval.
        self.denied = Tally(
            logger,
            "%s",
            "%d more messages or subscriptions refused or dropped, the last: %s",
            level=logging.WARNING,
        )

    def close(self) -> None:
        for tally in (self.wills, self.no_connect, self.silent, self.violations, self.refused, self.denied):
            tally.close()
