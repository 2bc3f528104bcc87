"""The fleet config file: its schema, defaults and cross-field checks.

A config describes a fleet once: groups of devices with their topics, QoS, sessions, telemetry,
connectivity and command handling, and the broker they talk to. `load_fleet_config` returns a
validated, frozen `FleetConfig` or raises ConfigError naming file, field path and reason.
"""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WrapValidator, model_validator

from fleet.config import load_toml, untagged, validated
from fleet.credentials import Credentials, check_template
from fleet.errors import ConfigError, TopicError
from fleet.generators import MetricSpec
from fleet.topics import validate_topic

__all__ = [
    "V5_FIELDS",
    "Backoff",
    "BrokerTarget",
    "Connectivity",
    "Duration",
    "FleetConfig",
    "Group",
    "Topics",
    "load_fleet_config",
]


def _check_fields(name: str, template: str, allowed: set[str]) -> None:
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as exc:
        raise ValueError(f"{name}: bad template {template!r}: {exc}") from None
    unknown = sorted(fields - allowed)
    if unknown:
        raise ValueError(f"{name}: unknown placeholder {{{unknown[0]}}}; use {sorted(allowed)}")


class _Model(BaseModel):
    # strict: a TOML string is never silently turned into a number or a boolean
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Fixed(_Model):
    dist: Literal["fixed"]
    value: float = Field(ge=0)


class Uniform(_Model):
    dist: Literal["uniform"]
    min: float = Field(ge=0)
    max: float = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.min > self.max:
            raise ValueError(f"min: must not be more than max ({self.min:g} > {self.max:g})")
        return self


class Exponential(_Model):
    dist: Literal["exponential"]
    mean: float = Field(gt=0)


class Normal(_Model):
    dist: Literal["normal"]
    mean: float = Field(ge=0)
    stddev: float = Field(ge=0)


Duration = Annotated[
    Fixed | Uniform | Exponential | Normal, Field(discriminator="dist"), WrapValidator(untagged("dist"))
]
"""Seconds, drawn from a distribution; negative draws count as 0."""


class Ends(_Model):
    """Weights of the ways an online period ends."""

    clean: float = Field(default=1.0, ge=0, description="DISCONNECT")
    abrupt: float = Field(default=0.0, ge=0, description="socket closed without DISCONNECT")
    silent: float = Field(default=0.0, ge=0, description="no more packets: keepalive expires")

    @model_validator(mode="after")
    def _some(self) -> Ends:
        if self.clean + self.abrupt + self.silent <= 0:
            raise ValueError("clean: at least one weight must be positive")
        return self


class Connectivity(_Model):
    mode: Literal["always", "intermittent"] = "always"
    online: Duration | None = None
    offline: Duration | None = None
    ends: Ends = Ends()

    @model_validator(mode="after")
    def _durations(self) -> Connectivity:
        if self.mode == "intermittent" and (self.online is None or self.offline is None):
            missing = "online" if self.online is None else "offline"
            raise ValueError(f"{missing}: required when mode is 'intermittent'")
        return self


class Backoff(_Model):
    """Reconnect delays: min(max, initial * multiplier**attempt), with full jitter.

    After a connection died (lost, or ended abrupt or silent), the first retry waits attempt 0's
    delay, as device SDKs do; `first_retry = "immediate"` retries at once, as firmware without
    backoff does, and backs off from the second retry on.
    """

    initial: float = Field(default=0.5, gt=0)
    max: float = Field(default=30.0, gt=0)
    multiplier: float = Field(default=2.0, ge=1)
    jitter: Literal["full", "none"] = "full"
    first_retry: Literal["backoff", "immediate"] = "backoff"

    @model_validator(mode="after")
    def _ordered(self) -> Backoff:
        if self.initial > self.max:
            raise ValueError(f"initial: must not be more than max ({self.initial:g} > {self.max:g})")
        return self


class Topics(_Model):
    """Topic templates; `{device}` and `{group}` are replaced."""

    telemetry: str = "fleet/{device}/telemetry"
    status: str = "fleet/{device}/status"
    command: str = "fleet/{device}/cmd"
    ack: str = "fleet/{device}/cmd/ack"

    @model_validator(mode="after")
    def _valid(self) -> Topics:
        for name in ("telemetry", "status", "command", "ack"):
            template = getattr(self, name)
            _check_fields(name, template, {"device", "group"})
            sample = template.format(device="d", group="g")
            try:
                validate_topic(sample)
            except TopicError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return self


class Qos(_Model):
    telemetry: Literal[0, 1, 2] = 0
    status: Literal[0, 1, 2] = 1
    command: Literal[0, 1, 2] = 1


# The MQTT 5 options of a group: each is an error on a 3.1.1 group.
V5_FIELDS = (
    "session_expiry",
    "will_delay",
    "receive_maximum",
    "message_expiry",
    "user_properties",
    "content_type",
    "topic_alias",
)
_U32 = (1 << 32) - 1


class Group(_Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    count: int = Field(ge=0, le=1_000_000)
    id: str = "{group}-{index:04d}"
    interval: float = Field(default=5.0, gt=0, description="seconds between telemetry messages")
    jitter: float = Field(default=0.1, ge=0, lt=1, description="interval varies by ± this fraction")
    qos: Qos = Qos()
    retain: bool = Field(default=False, description="retain telemetry")
    clean_session: bool = True
    keepalive: int = Field(default=60, ge=0, le=65535)
    birth: bool = Field(default=True, description="publish a retained online status on connect")
    will: bool = Field(default=True, description="a retained last will on the status topic")
    commands: bool = Field(default=True, description="subscribe to the command topic and ack")
    payload_size: int = Field(default=0, ge=0, le=1 << 20, description="pad telemetry to this size")
    topics: Topics = Topics()
    telemetry: dict[str, MetricSpec] = Field(default_factory=dict)
    connectivity: Connectivity = Connectivity()
    backoff: Backoff = Backoff()
    protocol: Literal["3.1.1", "5"] = Field(default="3.1.1", description="the MQTT version devices speak")
    session_expiry: int | None = Field(
        default=None, ge=0, le=_U32, description="MQTT 5: seconds the broker keeps the session"
    )
    will_delay: int | None = Field(
        default=None, ge=0, le=_U32, description="MQTT 5: seconds the broker waits before the will"
    )
    receive_maximum: int | None = Field(
        default=None, ge=1, le=65535, description="MQTT 5: QoS 1/2 deliveries in flight to a device"
    )
    message_expiry: int | None = Field(
        default=None, ge=1, le=_U32, description="MQTT 5: seconds a telemetry message may wait"
    )
    user_properties: dict[str, str] = Field(
        default_factory=dict, description="MQTT 5: on telemetry; values may name {device}, {group}, {seq}"
    )
    content_type: str | None = Field(default=None, min_length=1, description="MQTT 5: of telemetry")
    topic_alias: bool = Field(default=False, description="MQTT 5: alias the telemetry topic")

    @model_validator(mode="after")
    def _check(self) -> Group:
        if self.protocol != "5":
            for name in V5_FIELDS:
                if name in self.model_fields_set:
                    raise ValueError(f'{name}: an MQTT 5 option; set protocol = "5" to use it')
        for key, value in self.user_properties.items():
            _check_fields("user_properties", key, set())
            _check_fields("user_properties", value, {"device", "group", "seq"})
        _check_fields("id", self.id, {"group", "index"})
        try:
            device = self.device_id(0)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"id: bad template {self.id!r}: {exc}") from None
        for name in ("telemetry", "status", "command", "ack"):
            topic = getattr(self.topics, name).format(device=device, group=self.name)
            try:
                validate_topic(topic)
            except TopicError as exc:
                raise ValueError(f"id: device id {device!r} makes an invalid {name} topic: {exc}") from None
        if self.connectivity.ends.silent and not self.keepalive:
            raise ValueError("keepalive: silent ends need a keepalive above 0, or the broker never notices")
        return self

    def device_id(self, index: int) -> str:
        return self.id.format(group=self.name, index=index)

    @property
    def protocol_level(self) -> int:
        """The CONNECT protocol level: 4 for MQTT 3.1.1, 5 for MQTT 5."""
        return 5 if self.protocol == "5" else 4


class BrokerTarget(_Model):
    """An external broker the devices connect to, instead of the embedded one.

    `username`, `password`, `password_file`, `client_cert` and `client_key` may name `{device}` and
    `{group}`: each device then connects with its own identity.
    """

    url: str = Field(pattern=r"^(mqtt|mqtts|ws|wss)://", description="mqtt://, mqtts://, ws:// or wss://")
    username: str | None = Field(default=None, min_length=1)
    password: str | None = Field(default=None, repr=False)
    password_file: str | None = Field(
        default=None, min_length=1, description="its first line is the password"
    )
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    insecure: bool = Field(default=False, description="TLS without verifying the broker's certificate")

    @model_validator(mode="after")
    def _credentials(self) -> BrokerTarget:
        for name in ("username", "password", "password_file", "client_cert", "client_key"):
            value = getattr(self, name)
            if value is not None:
                check_template(name, value)
        if self.password is not None and self.password_file is not None:
            raise ValueError("password_file: give a password or a password_file, not both")
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise ValueError("username: required with a password [MQTT-3.1.2-22]")
        if self.client_cert is not None and self.client_key is None:
            raise ValueError("client_key: required with client_cert")
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_cert: required with client_key")
        return self

    def credentials(self) -> Credentials:
        """The devices' credentials, `{device}` and `{group}` not yet filled in."""
        return Credentials(
            username=self.username,
            password=self.password,
            password_file=None if self.password_file is None else Path(self.password_file),
            cafile=None if self.ca_file is None else Path(self.ca_file),
            cert=None if self.client_cert is None else Path(self.client_cert),
            key=None if self.client_key is None else Path(self.client_key),
            insecure=self.insecure,
        )


class FleetConfig(_Model):
    seed: int = 0
    duration: float | None = Field(default=None, gt=0, description="seconds; none: until Ctrl-C")
    connect_rate: float = Field(default=1000.0, gt=0, description="fleet-wide connects per second")
    broker: BrokerTarget | None = None
    embedded: dict[str, Any] = Field(
        default_factory=dict, description="the [broker] table, when it configures the embedded broker"
    )
    bridge: dict[str, Any] = Field(
        default_factory=dict, description="the [bridge] table, read by `fleet up` and `fleet bridge`"
    )
    stress: dict[str, Any] = Field(
        default_factory=dict, description="the [stress] table, read by `fleet stress`"
    )
    groups: list[Group] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> FleetConfig:
        names: set[str] = set()
        owners: dict[str, int] = {}
        for number, group in enumerate(self.groups):
            if group.name in names:
                raise ValueError(f"groups: group name {group.name!r} is used twice")
            names.add(group.name)
            for index in range(group.count):
                device = group.device_id(index)
                if device in owners:
                    raise ValueError(
                        f"groups: device id {device!r} of groups[{number}] is also one of "
                        f"groups[{owners[device]}]; make the id templates differ"
                    )
                owners[device] = number
        return self

    @property
    def size(self) -> int:
        return sum(group.count for group in self.groups)

    def with_protocol(self, protocol: Literal["3.1.1", "5"], where: str) -> FleetConfig:
        """Every group speaking `protocol`; ConfigError ('where: groups[i].field') when a group has
        MQTT 5 options and `protocol` is 3.1.1."""
        data = self.model_dump(exclude_unset=True)
        data["groups"] = [{**group, "protocol": protocol} for group in data["groups"]]
        return validated(FleetConfig, data, where=where)

    @property
    def fingerprint(self) -> str:
        """Names the devices the groups describe, whatever the seed, broker or duration: the shard
        reports of one fleet share it, and `fleet report merge` refuses reports that differ."""
        groups = json.dumps([group.model_dump(mode="json") for group in self.groups], sort_keys=True)
        return hashlib.sha256(groups.encode()).hexdigest()[:16]


def load_fleet_config(path: Path) -> FleetConfig:
    """Load and validate a fleet config file.

    Its `[broker]` table either targets an external broker (it has `url`) or holds the embedded
    broker's settings, as `fleet broker --config` reads them; the command that starts the embedded
    broker validates those.
    """
    data = load_toml(path)
    if "embedded" in data:
        raise ConfigError(f"{path}: embedded", "unknown key")
    broker = data.get("broker")
    if isinstance(broker, dict) and "url" not in broker:
        data = {key: value for key, value in data.items() if key != "broker"}
        data["embedded"] = broker
    elif isinstance(broker, dict):
        # Files named in the config are relative to the config's folder.
        data["broker"] = {
            key: str(path.parent / value)
            if key in ("ca_file", "client_cert", "client_key", "password_file") and isinstance(value, str)
            else value
            for key, value in broker.items()
        }
    return validated(FleetConfig, data, where=str(path))
