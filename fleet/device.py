"""Pure device behaviour: telemetry payloads, schedules, backoff and commands. No I/O, no clocks.

Everything random comes from generators seeded by (fleet seed, device id), so the same seed and
config give the same ids, value sequences and online/offline schedules, whatever the timing, the
worker or the shard a device runs in. Values are drawn from one stream per device (a fixed number
of draws per sample); schedules and backoff are drawn from their own streams, keyed by cycle and
attempt, so that a reconnect's timing never shifts the values. An MQTT 5 group draws the same
streams: only the packets differ (CONNECT and will properties, telemetry properties, request/response
command replies).
"""

from __future__ import annotations

import json
import math
import random
import string
from dataclasses import dataclass
from typing import Any, Literal

from fleet.generators import Generator, make_generator
from fleet.mqtt import v5
from fleet.mqtt.properties import EMPTY, Properties, encode_property_body
from fleet.packets import Connect, Will
from fleet.schema import Duration, Exponential, Fixed, Group, Normal, Uniform

__all__ = ["KNOWN_OPS", "Command", "Device", "DeviceTopics", "EndKind", "draw_duration", "speaks_v5"]

EndKind = Literal["clean", "abrupt", "silent"]
KNOWN_OPS = frozenset({"set_interval", "reboot", "go_offline", "ping"})
_END_KINDS: tuple[EndKind, ...] = ("clean", "abrupt", "silent")


def speaks_v5(status: Any) -> bool:
    """Whether a device's status (its retained birth, decoded) says it speaks MQTT 5, as
    `Device.status` marks it, so that a command to it may be a request."""
    return isinstance(status, dict) and status.get("protocol") == 5


@dataclass(frozen=True, slots=True)
class DeviceTopics:
    telemetry: str
    status: str
    command: str
    ack: str

    @classmethod
    def of(cls, group: Group, device: str) -> DeviceTopics:
        def fill(template: str) -> str:
            return template.format(device=device, group=group.name)

        topics = group.topics
        return cls(fill(topics.telemetry), fill(topics.status), fill(topics.command), fill(topics.ack))


@dataclass(frozen=True, slots=True)
class Command:
    """What a command asks of the device; `ack` is the payload to publish on the ack topic."""

    op: str
    ack: bytes
    interval: float | None = None
    offline_for: float | None = None
    reconnect: bool = False


def draw_duration(duration: Duration, rng: random.Random) -> float:
    if isinstance(duration, Fixed):
        return duration.value
    if isinstance(duration, Uniform):
        return rng.uniform(duration.min, duration.max)
    if isinstance(duration, Exponential):
        return rng.expovariate(1.0 / duration.mean)
    assert isinstance(duration, Normal)
    return max(0.0, rng.gauss(duration.mean, duration.stddev))


class Device:
    """One simulated device's behaviour and state; `seq` survives reconnects."""

    __slots__ = (
        "_generators",
        "_properties",
        "_rng",
        "_seed",
        "_seq_properties",
        "clock",
        "group",
        "id",
        "index",
        "interval",
        "seq",
        "topics",
    )

    def __init__(self, group: Group, index: int, seed: int) -> None:
        self.group = group
        self.index = index
        self.id = group.device_id(index)
        self.topics = DeviceTopics.of(group, self.id)
        self._seed = seed
        self._rng = random.Random(f"{seed}/{self.id}/values")
        self._generators: list[tuple[str, Generator]] = [
            (name, make_generator(spec, self._rng)) for name, spec in group.telemetry.items()
        ]
        self.seq = 0
        self.clock = 0.0  # device time: the sum of scheduled intervals, which sine generators follow
        self.interval = group.interval
        # MQTT 5 telemetry properties, encoded once; user properties naming {seq} are encoded per message.
        templates = tuple(group.user_properties.items())
        per_seq = any("seq" in _fields(value) for _, value in templates)
        self._seq_properties: tuple[tuple[str, str], ...] = templates if per_seq else ()
        static = (
            ()
            if per_seq
            else tuple((key, value.format(device=self.id, group=group.name)) for key, value in templates)
        )
        self._properties = encode_property_body(
            Properties(
                message_expiry_interval=group.message_expiry,
                content_type=group.content_type,
                user_properties=static,
            )
        )

    def values(self) -> dict[str, Any]:
        """The next sample of every metric, without consuming a sequence number."""
        return {name: generator.sample(self.clock) for name, generator in self._generators}

    def telemetry(self, ts: float) -> bytes:
        """The next telemetry payload; `ts` is the send time (wall clock) the caller supplies."""
        body: dict[str, Any] = {
            "device": self.id,
            "seq": self.seq,
            "ts": round(ts, 3),
            "values": self.values(),
        }
        self.seq += 1
        data = json.dumps(body, separators=(",", ":")).encode()
        size = self.group.payload_size
        if size > len(data):
            body["pad"] = "x" * max(0, size - len(data) - 9)
            data = json.dumps(body, separators=(",", ":")).encode()
        return data

    def telemetry_properties(self) -> bytes:
        """The encoded MQTT 5 properties of the next telemetry message (call before `telemetry()`)."""
        templated = self._seq_properties
        if not templated:
            return self._properties
        device, group, seq = self.id, self.group.name, self.seq
        user = tuple((key, value.format(device=device, group=group, seq=seq)) for key, value in templated)
        return self._properties + encode_property_body(Properties(user_properties=user))

    def connect(self, client_id: str, username: str | None, password: bytes | None) -> Connect | v5.Connect:
        """The device's CONNECT: MQTT 3.1.1, or MQTT 5 with the group's session and will properties."""
        group = self.group
        will_qos = group.qos.status
        if group.protocol_level == 4:
            will = Will(self.topics.status, self.will_payload(), will_qos, True) if group.will else None
            return Connect(
                "MQTT", 4, group.clean_session, group.keepalive, client_id, will, username, password
            )
        will5 = None
        if group.will:
            delay = EMPTY if group.will_delay is None else Properties(will_delay_interval=group.will_delay)
            will5 = v5.Will(self.topics.status, self.will_payload(), will_qos, True, delay)
        properties = Properties(
            session_expiry_interval=group.session_expiry or None,
            receive_maximum=group.receive_maximum,
        )
        return v5.Connect(
            group.clean_session,
            group.keepalive,
            client_id,
            will5,
            username,
            password,
            EMPTY if properties == EMPTY else properties,
        )

    def reply(self, response_topic: str | None, correlation: bytes | None) -> tuple[str, bytes]:
        """Where a command's ack goes, and its encoded properties: the command's Response Topic with
        its Correlation Data (MQTT 5 request/response), else the ack topic."""
        if response_topic is None:
            return self.topics.ack, b""
        if correlation is None:
            return response_topic, b""
        return response_topic, encode_property_body(Properties(correlation_data=correlation))

    def next_delay(self) -> float:
        """Seconds until the next telemetry message: the interval ± jitter. Advances device time."""
        jitter = self.group.jitter
        delay = self.interval * (1.0 + self._rng.uniform(-jitter, jitter)) if jitter else self.interval
        self.clock += delay
        return delay

    def _stream(self, *key: object) -> random.Random:
        return random.Random("/".join(map(str, (self._seed, self.id, *key))))

    def online_for(self, cycle: int) -> float | None:
        """How long online period `cycle` lasts; None: until the fleet stops."""
        connectivity = self.group.connectivity
        if connectivity.mode == "always" or connectivity.online is None:
            return None
        return draw_duration(connectivity.online, self._stream("online", cycle))

    def offline_for(self, cycle: int) -> float:
        offline = self.group.connectivity.offline
        return 0.0 if offline is None else draw_duration(offline, self._stream("offline", cycle))

    def end_kind(self, cycle: int) -> EndKind:
        ends = self.group.connectivity.ends
        weights = (ends.clean, ends.abrupt, ends.silent)
        return self._stream("end", cycle).choices(_END_KINDS, weights)[0]

    def backoff(self, key: int, attempt: int) -> float:
        """Delay before reconnect attempt `attempt` (0 is the first retry); each `key` (the
        simulator numbers the device's connects) has draws of its own."""
        backoff = self.group.backoff
        # Compare exponents, not powers: multiplier**attempt overflows long before attempts run out.
        if attempt * math.log(backoff.multiplier) >= math.log(backoff.max / backoff.initial):
            ceiling = backoff.max
        else:
            ceiling = backoff.initial * backoff.multiplier**attempt
        if backoff.jitter == "none":
            return ceiling
        return self._stream("backoff", key, attempt).uniform(0.0, ceiling)

    def status(self, online: bool, reason: str | None, ts: float) -> bytes:
        body: dict[str, Any] = {"online": online, "ts": round(ts, 3)}
        if reason is not None:
            body["reason"] = reason
        if online and self.group.protocol_level == 5:
            body["protocol"] = 5  # so that tools know to command it with request/response
        return json.dumps(body, separators=(",", ":")).encode()

    @staticmethod
    def will_payload() -> bytes:
        return b'{"online":false,"reason":"lost"}'

    def command(self, payload: bytes, ts: float) -> Command:
        """Interpret a command; unknown or malformed commands get an ack with ok false and a reason."""
        try:
            message = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _refuse(None, "?", "payload is not JSON")
        if not isinstance(message, dict):
            return _refuse(None, "?", "payload is not a JSON object")
        command_id = message.get("id")
        op = message.get("op")
        value = message.get("value")
        if op == "ping":
            return Command("ping", _ack(command_id, True, pong=round(ts, 3)))
        if op == "reboot":
            return Command("reboot", _ack(command_id, True), reconnect=True)
        if op in ("set_interval", "go_offline"):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                return _refuse(command_id, str(op), "value must be a number of seconds")
            if op == "set_interval":
                if value <= 0:
                    return _refuse(command_id, op, "value must be more than 0")
                self.interval = float(value)
                return Command(op, _ack(command_id, True), interval=float(value))
            if value < 0:
                return _refuse(command_id, op, "value must not be negative")
            return Command(op, _ack(command_id, True), offline_for=float(value))
        return _refuse(command_id, str(op), f"unknown op {op!r}; known: {', '.join(sorted(KNOWN_OPS))}")


def _fields(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


def _ack(command_id: Any, ok: bool, **extra: Any) -> bytes:
    return json.dumps({"id": command_id, "ok": ok, **extra}, separators=(",", ":")).encode()


def _refuse(command_id: Any, op: str, reason: str) -> Command:
    return Command(op, _ack(command_id, False, error=reason))
