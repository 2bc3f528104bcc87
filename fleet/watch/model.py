"""The fleet as `fleet watch` sees it: pure state built from MQTT messages. No I/O, no clock.

Every message is decoded once and folded into per-device state, a topic tree with counts and rates,
a bounded event log and a bounded history. The caller passes the receive time, so a test with a
fixed clock gets the same state, and the same screen, every run. Rendering reads this state at its
own pace: ingesting never waits for the screen.

It also keeps what says the watcher fell behind the broker since it last (re)read the retained
statuses: messages missing from devices' seq, and the rise of the broker's drop counter in `$SYS`.
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from fleet.command import Request
from fleet.device import speaks_v5
from fleet.mqtt.properties import EMPTY, Properties
from fleet.testing.streams import envelope_properties
from fleet.topics import classify

__all__ = [
    "COLUMNS",
    "DeviceState",
    "EventKind",
    "FleetModel",
    "LogEvent",
    "Rate",
    "Reason",
    "Received",
    "Sync",
    "TopicNode",
    "group_of",
    "numeric_fields",
]

EventKind = Literal["online", "offline", "will", "command", "ack", "error", "broker"]
# The device table's columns, in order; each is a sort key of `FleetModel.devices`.
COLUMNS = ("id", "group", "status", "last seen", "msgs", "rate", "loss", "reconnects", "last will")

RATE_WINDOW = 10.0  # seconds: the time constant of every rate
SPARK_POINTS = 60  # values kept per numeric metric
RAW_KEPT = 20  # raw messages kept per device
REASONS_KEPT = 5  # reason codes kept per device
RECONNECT_WINDOW = 60.0  # "reconnects in the last minute"
FOLLOWED_POINTS = 600  # numeric readings kept of the topic on show
MAX_FIELDS = 64  # numeric fields read from one payload
_GROUP_SUFFIX = re.compile(r"[-_.]?\d+$")
DROPPED = "publish/messages/dropped"  # the broker's drop counter under $SYS/broker/, Mosquitto's name


def group_of(device: str) -> str:
    """The group a device id names by convention: `thermo-0007` is in `thermo`, `van-03` in `van`."""
    return _GROUP_SUFFIX.sub("", device) or device


def numeric_fields(payload: bytes) -> dict[str, float]:
    """The numbers in a JSON payload, by dotted path (`values.temperature`); a bare number is
    `value`. Booleans are not numbers here; other payloads have none. At most MAX_FIELDS."""
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    fields: dict[str, float] = {}
    pending: list[tuple[str, Any]] = [("value", body)] if not isinstance(body, dict) else []
    if isinstance(body, dict):
        pending.extend(body.items())
    while pending and len(fields) < MAX_FIELDS:
        path, value = pending.pop(0)
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float) and math.isfinite(value):
            fields[path] = float(value)
        elif isinstance(value, dict):
            pending.extend((f"{path}.{key}", inner) for key, inner in value.items())
    return fields


class Rate:
    """Messages per second, decayed exponentially over RATE_WINDOW seconds: O(1) per message."""

    __slots__ = ("_at", "_value")

    def __init__(self) -> None:
        self._value = 0.0
        self._at = 0.0

    def add(self, now: float) -> None:
        if now > self._at:
            self._value *= math.exp((self._at - now) / RATE_WINDOW)
            self._at = now
        self._value += 1.0 / RATE_WINDOW

    def at(self, now: float) -> float:
        """The rate as of `now`, which decays while nothing arrives."""
        if now <= self._at:
            return self._value
        return self._value * math.exp((self._at - now) / RATE_WINDOW)


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One line of the event log."""

    at: float
    kind: EventKind
    device: str | None
    text: str


@dataclass(frozen=True, slots=True)
class Received:
    """A message as received, for a device's raw view and for export."""

    at: float
    topic: str
    retain: bool
    payload: bytes
    qos: int = 0
    properties: Properties = EMPTY  # MQTT 5

    def as_json(self) -> dict[str, Any]:
        """The JSON-lines form of the export: the payload decoded when it is JSON, else as text, and
        the MQTT 5 properties, if any, as `fleet tail` prints them."""
        record: dict[str, Any] = {
            "received_at": round(self.at, 6),
            "topic": self.topic,
            "retain": self.retain,
        }
        try:
            record["payload"] = json.loads(self.payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            record["payload_text"] = self.payload.decode("utf-8", "replace")
        if self.properties is not EMPTY:
            record["properties"] = envelope_properties(self.properties)
        return record


@dataclass(frozen=True, slots=True)
class Reason:
    """An MQTT 5 reason code the broker answered about a device: to a command sent to it (PUBACK)."""

    at: float
    code: int
    name: str
    what: str  # what it answered, e.g. "command w3 (PUBACK)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Sync:
    """How far the watcher can trust its state: what it missed since `since`, when it last attached
    or resynced. `missed` counts messages missing from devices' seq; `dropped` is the rise of the
    broker's drop counter (any client's drops: the counter is broker-wide), None without one."""

    since: float | None
    how: Literal["attach", "resync"] | None
    missed: int
    dropped: int | None
    corrected: int  # statuses a resync changed

    @property
    def behind(self) -> bool:
        return self.missed > 0 or bool(self.dropped)


class DeviceState:
    """What is known about one device; mutated by `FleetModel.ingest` only."""

    __slots__ = (
        "acks",
        "gaps",
        "group",
        "id",
        "last_seen",
        "last_will",
        "messages",
        "offline_reason",
        "online",
        "properties",
        "rate",
        "raw",
        "reasons",
        "reconnects",
        "seq_next",
        "series",
        "v5",
        "values",
    )

    def __init__(self, device: str) -> None:
        self.id = device
        self.group = group_of(device)
        self.online: bool | None = None
        self.offline_reason: str | None = None
        self.last_seen = 0.0
        self.messages = 0
        self.rate = Rate()
        self.seq_next: int | None = None
        self.gaps = 0
        self.reconnects = 0
        self.last_will: float | None = None
        self.values: dict[str, Any] = {}
        self.series: dict[str, deque[float]] = {}
        self.raw: deque[Received] = deque(maxlen=RAW_KEPT)
        self.acks: dict[str, dict[str, Any]] = {}
        # MQTT 5: the properties of its latest message with any, by topic under the device
        # ("telemetry", "status", "cmd", "cmd/ack", "cmd/response").
        self.properties: dict[str, Properties] = {}
        self.reasons: deque[Reason] = deque(maxlen=REASONS_KEPT)
        self.v5 = False  # its latest birth says `"protocol": 5`: commands to it may be requests

    @property
    def status(self) -> str:
        """online, offline (left cleanly), lost (its last will), or ? (not known yet)."""
        if self.online is None:
            return "?"
        if self.online:
            return "online"
        return "lost" if self.offline_reason == "lost" else "offline"


class TopicNode:
    """One level of the topic tree: the messages and the rate of its whole subtree, and the last
    message on this very topic (None when only topics below it had messages)."""

    __slots__ = ("children", "last", "messages", "name", "path", "rate")

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path
        self.children: dict[str, TopicNode] = {}
        self.messages = 0
        self.rate = Rate()
        self.last: Received | None = None


def _under(topic: str) -> str:
    """The topic under its device, at most two levels: `cmd/response` for `p/d/cmd/response/ID`."""
    return "/".join(topic.split("/")[2:4])


def _sort_key(column: str, now: float) -> Any:
    keys: dict[str, Any] = {
        "id": lambda d: d.id,
        "group": lambda d: (d.group, d.id),
        "status": lambda d: (d.status, d.id),
        "last seen": lambda d: d.last_seen,
        "msgs": lambda d: d.messages,
        "rate": lambda d: d.rate.at(now),
        "loss": lambda d: d.gaps,
        "reconnects": lambda d: d.reconnects,
        "last will": lambda d: d.last_will or 0.0,
    }
    try:
        return keys[column]
    except KeyError:
        raise ValueError(f"no column {column!r}; columns: {', '.join(COLUMNS)}") from None


class FleetModel:
    """The whole fleet, the topic tree, the event log, the history and the broker's `$SYS` figures."""

    def __init__(self, prefix: str = "fleet", *, history: int = 10_000, events: int = 1_000) -> None:
        self.prefix = prefix
        self.devices: dict[str, DeviceState] = {}
        self.topics = TopicNode("", "")
        self.events: deque[LogEvent] = deque(maxlen=events)
        self.history: deque[Received] = deque(maxlen=history)
        self.sys: dict[str, str] = {}
        self.messages = 0
        self.rate = Rate()
        self.wills = 0
        self.errors = 0
        self.event_count = 0  # events ever logged, so a view can tell which are new
        self._reconnects: deque[float] = deque()
        self._online = 0
        self._lost = 0
        self._sync_at: float | None = None
        self._sync_how: Literal["attach", "resync"] | None = None
        self._missed = 0
        self._dropped_base: int | None = None
        self._corrected = 0
        # The topic on show in the topic view, and the numbers of its recent messages.
        self._followed: str | None = None
        self.followed: deque[tuple[float, dict[str, float]]] = deque(maxlen=FOLLOWED_POINTS)
        # The watcher's MQTT 5 requests not answered on their response topic yet, by that topic.
        self._requests: dict[str, Request] = {}

    # Ingest

    def ingest(
        self,
        topic: str,
        payload: bytes,
        retain: bool,
        now: float,
        qos: int = 0,
        properties: Properties = EMPTY,
    ) -> None:
        """Fold one message into the state; never raises for bad payloads (they are logged as errors).
        `properties`: the message's MQTT 5 properties."""
        self.messages += 1
        self.rate.add(now)
        received = Received(now, topic, retain, payload, qos, properties)
        self.history.append(received)
        node = self.topics
        node.messages += 1
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                path = f"{node.path}/{level}" if node.path else level
                child = node.children[level] = TopicNode(level, path)
            child.messages += 1
            child.rate.add(now)
            node = child
        node.last = received
        if topic == self._followed:
            self.followed.append((now, numeric_fields(payload)))
        if topic.startswith("$SYS/broker/"):
            key = topic.removeprefix("$SYS/broker/")
            self.sys[key] = payload.decode("utf-8", "replace")
            if key == DROPPED and self._dropped_base is None:
                self._dropped_base = self._dropped()
            return
        device_id, kind = classify(topic, self.prefix)
        if device_id is None:
            return
        if kind == "raw":
            known = self.devices.get(device_id)
            if known is not None and properties is not EMPTY:
                # An MQTT 5 request to a known device, or its response: shown with the device.
                known.raw.append(received)
                known.properties[_under(topic)] = properties
            request = self._requests.get(topic)
            if known is not None and request is not None:
                self._response(known, request, payload, properties, now)
            return
        device = self.devices.get(device_id)
        if device is None:
            device = self.devices[device_id] = DeviceState(device_id)
        device.raw.append(received)
        if properties is not EMPTY:
            device.properties[_under(topic)] = properties
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            self._log(now, "error", device_id, f"{topic}: the payload is not JSON")
            return
        if not isinstance(body, dict):
            self._log(now, "error", device_id, f"{topic}: the payload is not a JSON object")
            return
        if kind == "telemetry":
            self._telemetry(device, body, now)
        elif kind == "status":
            self._status(device, body, retain, now)
        else:
            self._ack(device, body, now)

    def _telemetry(self, device: DeviceState, body: dict[str, Any], now: float) -> None:
        device.messages += 1
        device.rate.add(now)
        device.last_seen = now
        if device.online is None:
            device.online = True
            self._online += 1
        seq = body.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            expected = device.seq_next
            if expected is not None and seq > expected:
                device.gaps += seq - expected
                self._missed += seq - expected
            if expected is None or seq >= expected:
                device.seq_next = seq + 1
        values = body.get("values")
        if isinstance(values, dict):
            device.values.update(values)
            for name, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    series = device.series.get(name)
                    if series is None:
                        series = device.series[name] = deque(maxlen=SPARK_POINTS)
                    series.append(float(value))

    def _status(self, device: DeviceState, body: dict[str, Any], retain: bool, now: float) -> None:
        online = body.get("online")
        if not isinstance(online, bool):
            self._log(now, "error", device.id, "a status without a boolean 'online'")
            return
        was, was_status = device.online, device.status
        reason = body.get("reason")
        if online:
            device.v5 = speaks_v5(body)
        device.online = online
        device.offline_reason = None if online else str(reason) if reason is not None else None
        self._online += (online is True) - (was is True)
        self._lost += (device.status == "lost") - (was_status == "lost")
        if retain:
            # A retained status tells the state, not news: it is older than this session.
            if not online and reason == "lost":
                device.last_will = now
            if self._sync_how == "resync" and was_status not in ("?", device.status):
                self._corrected += 1
                self._log(now, "broker", device.id, f"resync: {device.status}, not {was_status}")
            return
        device.last_seen = now
        if online:
            if was is not None:
                device.reconnects += 1
                self._reconnects.append(now)
            self._log(now, "online", device.id, "online" if was is None else "back online")
        elif reason == "lost":
            device.last_will = now
            self.wills += 1
            self._log(now, "will", device.id, "last will: the connection was lost")
        else:
            self._log(now, "offline", device.id, f"offline ({body.get('reason', 'no reason')})")

    def _response(
        self, device: DeviceState, request: Request, payload: bytes, properties: Properties, now: float
    ) -> None:
        """A message on `request`'s response topic: its ack when `request.answered_by` says so."""
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        if isinstance(body, dict) and request.answered_by(
            request.response_topic, body, properties.correlation_data
        ):
            del self._requests[request.response_topic]
            self._ack(device, body, now)

    def _ack(self, device: DeviceState, body: dict[str, Any], now: float) -> None:
        command_id = str(body.get("id"))
        device.acks[command_id] = body
        ok = "ok" if body.get("ok") is True else f"failed: {body.get('error', 'no reason')}"
        self._log(now, "ack", device.id, f"ack {command_id}: {ok}")

    def _log(self, now: float, kind: EventKind, device: str | None, text: str) -> None:
        if kind == "error":
            self.errors += 1
        self.event_count += 1
        self.events.append(LogEvent(now, kind, device, text))

    def refused(self, now: float, device: str, reason: Reason) -> None:
        """The broker answered something sent to `device` with an error reason code: keep it on the
        device, and log it."""
        state = self.devices.get(device)
        if state is None:
            state = self.devices[device] = DeviceState(device)
        state.reasons.append(reason)
        self._log(now, "error", device, f"{reason.what}: reason code {reason.code:#04x} {reason.name}")

    def expect(self, request: Request) -> None:
        """The watcher sent `request` as an MQTT 5 request: its reply on the response topic is its
        ack (as one on cmd/ack is)."""
        self._requests[request.response_topic] = request

    def note(self, now: float, kind: EventKind, text: str, device: str | None = None) -> None:
        """Log what the watcher itself did or saw: a command sent, the broker connection, an error."""
        self._log(now, kind, device, text)

    def synced(self, now: float, how: Literal["attach", "resync"]) -> None:
        """The source subscribed afresh (`attach`) or again (`resync`): the broker re-sends every
        retained status, so what was missed before is about to be corrected; count from here."""
        self._sync_at = now
        self._sync_how = how
        self._missed = 0
        self._corrected = 0
        self._dropped_base = self._dropped() if how == "resync" else None
        if how == "attach":
            # What the devices sent while the watcher was away is the watcher's gap, not theirs:
            # count loss from the next seq on.
            for device in self.devices.values():
                device.seq_next = None

    def _dropped(self) -> int | None:
        try:
            return int(self.sys[DROPPED])
        except (KeyError, ValueError):
            return None

    def follow(self, topic: str | None) -> None:
        """Keep the numbers of `topic`'s messages in `followed`, starting from those in the history."""
        self._followed = topic
        self.followed.clear()
        if topic is not None:
            self.followed.extend((m.at, numeric_fields(m.payload)) for m in self.history if m.topic == topic)

    def topic(self, path: str) -> TopicNode | None:
        """The tree's node of `path`, if any message was on it or below it."""
        node: TopicNode | None = self.topics
        for level in path.split("/"):
            node = node.children.get(level) if node is not None else None
        return node

    # Views

    def reconnects_within(self, now: float, window: float = RECONNECT_WINDOW) -> int:
        """Reconnects (status back online) seen in the last `window` seconds."""
        recent = self._reconnects
        while recent and recent[0] < now - window:
            recent.popleft()
        return len(recent)

    def counts(self) -> tuple[int, int, int]:
        """(online, offline, total) devices."""
        total = len(self.devices)
        return self._online, total - self._online, total

    def lost(self) -> int:
        """Devices offline by their last will (a subset of the offline ones)."""
        return self._lost

    def sync(self) -> Sync:
        """What the watcher missed since it last attached or resynced."""
        now, base = self._dropped(), self._dropped_base
        dropped = None if now is None or base is None else max(0, now - base)
        return Sync(
            since=self._sync_at,
            how=self._sync_how,
            missed=self._missed,
            dropped=dropped,
            corrected=self._corrected,
        )

    def rows(self, text: str, column: str, descending: bool, now: float) -> list[DeviceState]:
        """The devices whose id or group contains `text`, sorted by `column`."""
        key = _sort_key(column, now)
        if not text:
            return sorted(self.devices.values(), key=key, reverse=descending)
        needle = text.lower()
        matching = [d for d in self.devices.values() if needle in d.id.lower() or needle in d.group]
        return sorted(matching, key=key, reverse=descending)

    def visible_history(self, text: str) -> list[Received]:
        """The history behind the filtered device table: messages of matching devices, or all."""
        if not text:
            return list(self.history)
        needle = text.lower()
        keep = {d.id for d in self.devices.values() if needle in d.id.lower() or needle in d.group}
        return [m for m in self.history if classify(m.topic, self.prefix)[0] in keep]
