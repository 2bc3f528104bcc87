"""Stress scenarios as values: the `[stress]` table of a config, its timeline of stages, and the
built-in scenarios. Pure: no I/O beyond reading the config file.

A stage happens `at` seconds into the run, to a `fraction` of one `group` (or of every group):

    [[stress.stages]]
    at = 10
    action = "drop"        # drop, flap, restart-broker, crash-broker, latency, bandwidth, blackhole,
                           # reset, half-open, takeover, observer-offline
    group = "thermo"       # omit: every group
    fraction = 0.3
    end = "abrupt"         # drop and flap: abrupt, silent or clean
    offline = 1.0          # seconds offline before reconnecting (restart/crash-broker: seconds down)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleet.config import load_table, validated
from fleet.errors import ConfigError
from fleet.schema import FleetConfig, Group
from fleet.stress.mqtt5 import MARGIN

__all__ = [
    "FAULTS",
    "MQTT5_SCENARIOS",
    "RESTARTS",
    "SCENARIOS",
    "Action",
    "Stage",
    "StressSettings",
    "builtin_stages",
    "load_stress_settings",
    "proxied_groups",
]

Action = Literal[
    "drop",
    "flap",
    "restart-broker",
    "crash-broker",
    "latency",
    "bandwidth",
    "blackhole",
    "reset",
    "half-open",
    "takeover",
    "observer-offline",
]
# Actions that stop the broker and start it again: SIGTERM, or SIGKILL for a crash.
RESTARTS: frozenset[str] = frozenset({"restart-broker", "crash-broker"})
# Actions the fault proxy carries out: the groups they name connect through it.
FAULTS: frozenset[str] = frozenset({"latency", "bandwidth", "blackhole", "reset", "half-open"})
# The fields each action takes (`duration`: lasting faults, lifted after that many seconds).
_FIELDS: dict[str, frozenset[str]] = {
    action: frozenset({"at", "action", *extra})
    for action, extra in {
        "drop": ("group", "fraction", "end", "offline"),
        "flap": ("group", "fraction", "end", "offline", "period", "duration"),
        "restart-broker": ("offline",),
        "crash-broker": ("offline",),
        "latency": ("group", "latency_ms", "jitter_ms", "duration"),
        "bandwidth": ("group", "rate", "duration"),
        "blackhole": ("group", "duration"),
        "reset": ("group", "fraction"),
        "half-open": ("group", "fraction"),
        "takeover": ("group", "fraction"),
        "observer-offline": ("offline",),
    }.items()
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Stage(_Model):
    """One event of the timeline."""

    at: float = Field(ge=0, description="seconds from the start of the run")
    action: Action
    group: str | None = Field(default=None, description="the group it hits; none: every group")
    fraction: float = Field(default=1.0, gt=0, le=1, description="of the group's devices (connections)")
    end: Literal["abrupt", "silent", "clean"] = Field(default="abrupt", description="drop and flap")
    offline: float = Field(
        default=0.0,
        ge=0,
        description="seconds offline; restart/crash-broker: seconds down; observer-offline: the observer's",
    )
    duration: float | None = Field(default=None, gt=0, description="flap and proxy faults; none: to the end")
    period: float = Field(default=2.0, gt=0, description="flap: seconds between two drops")
    latency_ms: float = Field(default=0.0, ge=0, description="latency: added one-way delay")
    jitter_ms: float = Field(default=0.0, ge=0, description="latency: ± uniform jitter")
    rate: int | None = Field(default=None, gt=0, description="bandwidth: bytes per second per direction")

    @model_validator(mode="after")
    def _check(self) -> Stage:
        fields = _FIELDS[self.action]
        foreign = sorted(self.model_fields_set - fields)
        if foreign:
            raise ValueError(f"{foreign[0]}: {self.action} stages take only {', '.join(sorted(fields))}")
        if self.action == "latency" and not self.latency_ms and not self.jitter_ms:
            raise ValueError("latency_ms: latency needs latency_ms or jitter_ms above 0")
        if self.action == "bandwidth" and self.rate is None:
            raise ValueError("rate: bandwidth needs a rate in bytes per second")
        if self.jitter_ms > self.latency_ms:
            raise ValueError(
                f"jitter_ms: must not be more than latency_ms ({self.jitter_ms:g} > {self.latency_ms:g})"
            )
        return self

    @property
    def until(self) -> float | None:
        """When a lasting stage ends; None: at the end of the run."""
        return None if self.duration is None else self.at + self.duration


class StressSettings(_Model):
    """The `[stress]` table."""

    scenario: str | None = Field(default=None, description="a built-in scenario, when there are no stages")
    duration: float = Field(default=30.0, gt=0, description="seconds the fleet runs")
    drain: float = Field(default=10.0, ge=0, description="most seconds to wait for the last deliveries")
    fraction: float = Field(default=0.3, gt=0, le=1, description="of every group, for built-in scenarios")
    stages: tuple[Stage, ...] = Field(default=(), strict=False, description="the timeline")
    persistence: bool = Field(
        default=True,
        description="the embedded broker keeps a store: a fresh temporary one, unless [broker] names one",
    )

    @model_validator(mode="after")
    def _check(self) -> StressSettings:
        if self.scenario is not None and self.scenario not in SCENARIOS:
            raise ValueError(
                f"scenario: unknown scenario {self.scenario!r}; built in: {', '.join(SCENARIOS)}"
            )
        if self.scenario is not None and self.stages:
            raise ValueError("scenario: give a built-in scenario or stages, not both")
        for index, stage in enumerate(self.stages):
            if stage.at >= self.duration:
                raise ValueError(
                    f"stages: stage {index} at {stage.at:g}s is not before duration {self.duration:g}s"
                )
        return self

    @property
    def timeline(self) -> tuple[Stage, ...]:
        """The stages to run: the built-in scenario's, or the table's own."""
        if self.scenario is not None:
            return builtin_stages(self.scenario, self.duration, self.fraction)
        return self.stages


def builtin_stages(name: str, duration: float, fraction: float) -> tuple[Stage, ...]:
    """The stages of the built-in scenario `name`, for a run of `duration` seconds."""
    third = round(duration / 3, 3)
    stages: dict[str, list[Stage]] = {
        "clean": [],
        "storm": [Stage(at=third, action="drop", fraction=fraction, end="abrupt")],
        "flapping": [
            Stage(at=third, action="flap", fraction=fraction, period=2.0, offline=0.5, duration=third),
        ],
        "silent": [Stage(at=third, action="drop", fraction=fraction, end="silent")],
        "broker-restart": [Stage(at=third, action="restart-broker", offline=1.0)],
        "broker-crash": [Stage(at=third, action="crash-broker", offline=1.0)],
        "latency": [Stage(at=third, action="latency", latency_ms=200, jitter_ms=100, duration=third)],
        "bandwidth": [Stage(at=third, action="bandwidth", rate=2000, duration=third)],
        "partition": [Stage(at=third, action="blackhole", duration=round(min(third, 5.0), 3))],
        "reset": [Stage(at=third, action="reset", fraction=fraction)],
        "half-open": [Stage(at=third, action="half-open", fraction=fraction)],
        "flapping-within-will-delay": [
            Stage(
                at=third, action="flap", fraction=fraction, period=2.0, offline=_FLAP_OFFLINE, duration=third
            ),
        ],
        "session-expiry": [Stage(at=third, action="drop", fraction=fraction, end="abrupt", offline=third)],
        "takeover": [Stage(at=third, action="takeover", fraction=fraction)],
        "message-expiry": [Stage(at=third, action="observer-offline", offline=third)],
    }
    return tuple(stages[name])


SCENARIOS = (
    "clean",
    "storm",
    "flapping",
    "silent",
    "broker-restart",
    "broker-crash",
    "latency",
    "bandwidth",
    "partition",
    "reset",
    "half-open",
    "flapping-within-will-delay",
    "session-expiry",
    "takeover",
    "message-expiry",
)
# The MQTT 5 scenarios: every group they hit must speak MQTT 5 (-V mqttv5 makes it so).
MQTT5_SCENARIOS = ("flapping-within-will-delay", "session-expiry", "takeover", "message-expiry")
_FLAP_OFFLINE = 0.5  # flapping-within-will-delay: seconds offline per flap


def proxied_groups(stages: tuple[Stage, ...], config: FleetConfig) -> frozenset[str]:
    """Groups whose devices connect through the fault proxy: those a proxy fault names."""
    names: set[str] = set()
    for stage in stages:
        if stage.action in FAULTS:
            names.update([stage.group] if stage.group is not None else (g.name for g in config.groups))
    return frozenset(names)


def load_stress_settings(
    path: Path, config: FleetConfig, scenario: str | None = None, duration: float | None = None
) -> StressSettings:
    """The `[stress]` table of `path`, checked against the config's groups; `scenario` (a built-in)
    replaces its stages, `duration` its duration. Raises ConfigError naming file, field path and reason."""
    table = dict(load_table(path, "stress"))
    if duration is not None:
        table["duration"] = duration
    if scenario is not None:
        if scenario not in SCENARIOS:
            raise ConfigError(
                "--scenario", f"unknown scenario {scenario!r}; built in: {', '.join(SCENARIOS)}"
            )
        table.pop("stages", None)
        table["scenario"] = scenario
    settings = validated(StressSettings, table, where=str(path), prefix="stress")
    groups = [group.name for group in config.groups]
    for index, stage in enumerate(settings.stages):
        if stage.group is not None and stage.group not in groups:
            raise ConfigError(
                f"{path}: stress.stages[{index}].group",
                f"no group {stage.group!r}; groups: {', '.join(groups)}",
            )
    if settings.scenario in MQTT5_SCENARIOS:
        _check_mqtt5(path, settings, config)
    for index, stage in enumerate(settings.timeline):
        if stage.action not in ("drop", "flap") or stage.end != "silent":
            continue
        where = "stress.scenario" if settings.scenario is not None else f"stress.stages[{index}].end"
        for group in config.groups:
            if stage.group not in (None, group.name):
                continue
            noticed = stage.at + 1.5 * group.keepalive
            if not group.keepalive or noticed >= settings.duration:
                raise ConfigError(
                    f"{path}: {where}",
                    f"silent devices of group {group.name!r} (keepalive {group.keepalive} s) would not be "
                    f"noticed before the run ends at {settings.duration:g} s; make the run longer or the "
                    "keepalive shorter",
                )
    return settings


def _check_mqtt5(path: Path, settings: StressSettings, config: FleetConfig) -> None:
    """An MQTT 5 scenario must be able to fail: ConfigError naming the group's field when a group
    lacks what the scenario tests."""
    name = settings.scenario
    third = settings.duration / 3
    for number, group in enumerate(config.groups):

        def need(field: str, ok: bool, why: str, number: int = number, group: Group = group) -> None:
            if not ok:
                raise ConfigError(
                    f"{path}: groups[{number}].{field}", f"the {name} scenario {why} (group {group.name!r})"
                )

        need("protocol", group.protocol_level == 5, 'needs MQTT 5 groups: protocol = "5", or -V mqttv5')
        expiry = group.session_expiry or 0
        delay = group.will_delay or 0
        if name == "flapping-within-will-delay":
            need("will", group.will, "counts wills: the devices need one")
            need("clean_session", not group.clean_session, "needs devices that reconnect with Clean Start 0")
            back = _FLAP_OFFLINE + group.backoff.max + 2 * MARGIN
            need(
                "will_delay",
                delay > back,
                f"needs a will delay above {back:g} s, the flap's time offline, the longest backoff and "
                f"twice the {MARGIN:g} s margin",
            )
            need("session_expiry", expiry >= delay, "needs a session expiry of at least the will delay")
        elif name == "session-expiry":
            need("clean_session", not group.clean_session, "needs devices that reconnect with Clean Start 0")
            need(
                "session_expiry",
                0 < expiry < third - 2 * MARGIN,
                f"needs a session expiry above 0 and below {third - 2 * MARGIN:g} s (a third of the "
                f"duration, less twice the {MARGIN:g} s margin), so that devices stay offline past it",
            )
        elif name == "message-expiry":
            need("qos", group.qos.telemetry > 0, "needs QoS 1 or 2 telemetry, which the broker queues")
            need(
                "message_expiry",
                group.message_expiry is not None and group.message_expiry < third - 2 * MARGIN,
                f"needs a message expiry below {third - 2 * MARGIN:g} s (a third of the duration, less "
                f"twice the {MARGIN:g} s margin), so that telemetry expires while the observer is away",
            )
