"""The MQTT 5 part of the delivery account: will delay, session expiry, message expiry and Receive
Maximum. Pure: no I/O, no clocks; times are what the runner and the observer measured.

Every connection of an MQTT 5 device's client id is a `Span`, the device's own and those the stress
engine made with its id (a takeover). From them, for each device:

- **wills**: a connection that ended without DISCONNECT owes a will once the Will Delay Interval
  has passed, or at once when its session ends first (session expiry, or a Clean Start connection);
  a new connection within the delay cancels it [MQTT-3.1.3-9]. A will expected and missing, a will
  before its delay passed (`early`), and a will after a reconnect within the delay
  (`after_reconnect`) are violations;
- **sessions**: a Clean Start 0 connection must find its session present when it comes within the
  Session Expiry Interval of the last close, and absent after it; `resumed_after_expiry` and
  `lost_before_expiry` are violations;
- **message expiry**: a telemetry message lost while the observer was away, and older than its
  Message Expiry Interval when the observer came back, is `expired`, not lost; a message delivered
  later than its expiry (`expired_delivered`) is a violation. Both allow `ROUNDING`: brokers count
  these intervals in whole seconds.

Within `MARGIN` seconds of a deadline, the clocks of the fleet, the observer and the broker cannot
tell which side it fell: such a case is `undecided`, and counts neither way.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

__all__ = [
    "MARGIN",
    "ROUNDING",
    "Device5",
    "Mqtt5Account",
    "SessionTally",
    "Span",
    "WillTally",
    "expired",
    "sessions5",
    "spans",
    "wills5",
]

MARGIN = 0.5  # seconds either side of a deadline where the account decides nothing
# Message Expiry Intervals are whole seconds, and brokers keep time in whole seconds (Mosquitto): a
# message may expire, or still be delivered, up to a second either side of its interval.
ROUNDING = 1.0
_SLACK = 0.5  # a will may reach the observer before the device sees its own connection closed


@dataclass(frozen=True, slots=True)
class Device5:
    """What the MQTT 5 account needs of a device (0: none, for the intervals)."""

    will: bool
    will_delay: int
    session_expiry: int
    message_expiry: int
    interval: float


@dataclass(frozen=True, slots=True)
class Span:
    """One network connection of a client id: up at CONNACK (a takeover: when its CONNECT went),
    down when it closed (None: open at the end), and how it ended."""

    up: float
    down: float | None
    end: str  # clean, abrupt, silent, lost, taken-over; "" while open
    clean_start: bool
    present: bool


class _Event(Protocol):
    @property
    def at(self) -> float: ...
    @property
    def up(self) -> bool: ...
    @property
    def clean_start(self) -> bool: ...
    @property
    def present(self) -> bool: ...
    @property
    def end(self) -> str: ...


def spans(events: Iterable[_Event], taken_over: Iterable[float] = ()) -> list[Span]:
    """A device's own connections from its up and down events, in order; a connection open when a
    time of `taken_over` came ended then, taken over by another connection with its client id."""
    found: list[Span] = []
    takeovers = sorted(taken_over)
    open_: Span | None = None
    for event in events:
        if event.up:
            if open_ is not None:  # no down event: it ended when the next one came up
                found.append(Span(open_.up, event.at, "clean", open_.clean_start, open_.present))
            open_ = Span(event.at, None, "", event.clean_start, event.present)
        elif open_ is not None:
            found.append(Span(open_.up, event.at, event.end, open_.clean_start, open_.present))
            open_ = None
    if open_ is not None:
        found.append(open_)
    result = []
    for span in found:
        cut = [t for t in takeovers if span.up < t and (span.down is None or t < span.down + _SLACK)]
        if not cut:
            result.append(span)
            continue
        down = min(cut[0], span.down or math.inf)
        result.append(Span(span.up, down, "taken-over", span.clean_start, span.present))
    return result


class _Tally:
    def add(self, other: Any) -> None:
        for item in fields(self):  # type: ignore[arg-type]
            setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))

    def to_json(self) -> dict[str, int]:
        return {item.name: getattr(self, item.name) for item in fields(self)}  # type: ignore[arg-type]


@dataclass(slots=True)
class WillTally(_Tally):
    """Wills of MQTT 5 devices, by what the spec says of each connection's end."""

    expected: int = 0  # ends that owe a will: offline past the delay, or the session ended
    within_delay: int = 0  # ends followed by a new connection within the delay: no will allowed
    received: int = 0
    missing: int = 0
    early: int = 0  # before the Will Delay Interval passed
    after_reconnect: int = 0  # although a new connection came within the delay
    spurious: int = 0  # after a clean end, or a second one for one end
    undecided: int = 0  # ends too close to their deadline, or lost connections: either way
    not_due: int = 0  # ends whose will was due only after the observer stopped


@dataclass(slots=True)
class _Window:
    down: float
    due: float
    kind: str  # expected, forbidden, undecided, not-due, clean
    reconnect: float
    matched: bool = False


def _windows(device: Device5, own: Sequence[Span], others: Sequence[Span], until: float) -> list[_Window]:
    every = sorted([*own, *others], key=lambda span: span.up)
    windows = []
    for span in own:
        if span.down is None:
            continue
        if span.end == "clean" or not device.will:
            windows.append(_Window(span.down, span.down, "clean", math.inf))
            continue
        following = [t for t in every if t is not span and t.up >= span.down - 0.05]
        after = following[0] if following else None
        delay = float(min(device.will_delay, device.session_expiry))
        gap = math.inf if after is None else after.up - span.down
        session_ends = after is not None and after.clean_start and gap < delay
        if session_ends:
            delay = max(0.0, gap)
        due = span.down + delay
        if span.end == "lost":
            kind = "undecided"
        elif session_ends or (delay == 0 and span.end != "taken-over") or gap > delay + MARGIN:
            kind = "expected"
        elif gap < delay - MARGIN:
            kind = "forbidden"
        else:
            kind = "undecided"
        if kind == "expected" and due > until - MARGIN:
            kind = "not-due" if due > until + MARGIN else "undecided"
        windows.append(_Window(span.down, due, kind, span.down + gap))
    return windows


def wills5(
    device: Device5, own: Sequence[Span], others: Sequence[Span], wills: Sequence[float], until: float
) -> WillTally:
    """The will account of one device: its own connections, the others with its client id, the times
    its wills reached the observer, and when the observer stopped (all `time.monotonic()`)."""
    tally = WillTally()
    windows = _windows(device, own, others, until)
    for window in windows:
        if window.kind == "expected":
            tally.expected += 1
        elif window.kind == "forbidden":
            tally.within_delay += 1
        elif window.kind == "undecided":
            tally.undecided += 1
        elif window.kind == "not-due":
            tally.not_due += 1
    for will in sorted(wills):
        tally.received += 1
        before = [window for window in windows if window.down <= will + _SLACK]
        if not before or before[-1].kind == "clean":
            tally.spurious += 1
            continue
        window = before[-1]
        if window.kind in ("expected", "not-due"):
            if window.matched:
                tally.spurious += 1
            elif will < window.due - MARGIN:
                tally.early += 1
            window.matched = True
        elif window.kind == "forbidden":
            if will >= window.reconnect - _SLACK:
                tally.after_reconnect += 1
            else:
                tally.early += 1
    tally.missing = sum(1 for window in windows if window.kind == "expected" and not window.matched)
    return tally


@dataclass(slots=True)
class SessionTally(_Tally):
    """Clean Start 0 reconnects of MQTT 5 devices, against their Session Expiry Interval."""

    resumed: int = 0  # present, within the expiry
    expired: int = 0  # absent, after the expiry
    resumed_after_expiry: int = 0
    lost_before_expiry: int = 0
    undecided: int = 0


def sessions5(device: Device5, own: Sequence[Span], others: Sequence[Span]) -> SessionTally:
    """Whether each Clean Start 0 reconnect (the device's, or another connection with its id) found
    its session as the Session Expiry Interval says."""
    tally = SessionTally()
    every = sorted([*own, *others], key=lambda span: span.up)
    expiry = device.session_expiry
    for index, span in enumerate(every):
        closed = [t.down for t in every[:index] if t.down is not None and t.down <= span.up + 0.05]
        if not index or span.clean_start or not closed:
            continue
        gap = span.up - max(closed)
        expected: bool | None
        if expiry == 0 and gap <= 0.05:  # a takeover: the old connection was still open
            expected = None
        elif expiry == 0 or gap > expiry + MARGIN:
            expected = False
        elif gap < expiry - MARGIN:
            expected = True
        else:
            expected = None
        if expected is None:
            tally.undecided += 1
        elif span.present:
            if expected:
                tally.resumed += 1
            else:
                tally.resumed_after_expiry += 1
        elif expected:
            tally.lost_before_expiry += 1
        else:
            tally.expired += 1
    return tally


def expired(
    device: Device5, lost: Iterable[int], received: dict[int, float], gaps: Sequence[tuple[float, float]]
) -> int:
    """How many of the `lost` seqs expired: sent (by the nearest received seq's `ts` and the
    device's interval) while the observer was away, and older than the Message Expiry Interval when
    it came back. `gaps` are the observer's absences, (left, back) in wall-clock seconds."""
    if not device.message_expiry or not gaps or not received:
        return 0
    known = sorted(received)
    count = 0
    for seq in lost:
        at = bisect.bisect_left(known, seq)
        nearest = min(known[max(0, at - 1) : at + 1], key=lambda k: abs(k - seq))
        sent = received[nearest] + (seq - nearest) * device.interval
        if any(
            left - MARGIN <= sent and sent + device.message_expiry <= back + ROUNDING + MARGIN
            for left, back in gaps
        ):
            count += 1
    return count


@dataclass(slots=True)
class Mqtt5Account:
    """The MQTT 5 account of a run: its tallies, and the Receive Maximum the observer measured."""

    devices: int = 0
    wills: WillTally = field(default_factory=WillTally)
    sessions: SessionTally = field(default_factory=SessionTally)
    receive_maximum: int | None = None  # what the observer announced
    inflight_peak: int = 0  # the most QoS 1/2 deliveries the broker had unacknowledged at it
    takeovers: int = 0  # connections the stress engine made with a device's client id
    taken_over_told: int = 0  # devices that got DISCONNECT 0x8E (Session taken over)
