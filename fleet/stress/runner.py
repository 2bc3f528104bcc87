"""Run a stress scenario: the broker, the observer, the fault proxies, the fleet and the timeline of
stages, then the drain and the account.

    result = await run_stress(config, settings, target=None, config_path=path)   # None: embedded

The order is fixed: the broker (the embedded one as a child process, or the external one), then
the observer (subscribed before the first device connects), then one fault proxy per group a fault
names, then the fleet with the stage engine beside it for `settings.duration` seconds. When the
fleet has stopped (every device leaves cleanly), the observer gets up to `settings.drain` seconds
for the last deliveries and wills.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.config import load_table
from fleet.errors import FleetError, TransportError
from fleet.mqtt import v5
from fleet.report import Report
from fleet.schema import FleetConfig
from fleet.simulator import Control, Live, Target, simulate
from fleet.stress.accounting import Account, DeviceSpec, Ledger, account
from fleet.stress.mqtt5 import Device5, Span, spans
from fleet.stress.observer import Observer, observing
from fleet.stress.process import BrokerProcess, UsageMeter, embedded_broker, external_broker
from fleet.stress.proxy import FaultProxy, Shaping, fault_proxy
from fleet.stress.scenario import RESTARTS, Stage, StressSettings, proxied_groups
from fleet.transport import ClientSession, Endpoint, Link

__all__ = ["StressResult", "run_stress"]

_QUIET = 2.0  # drain: seconds without a message after which nothing more is coming
_OBSERVER_BACK = 30.0  # after a broker restart: the most seconds to wait for the observer's reconnect


@dataclass(frozen=True, slots=True)
class StressResult:
    """What a stress run found: the delivery account, the fleet's own report, and the broker's usage.

    `complete` is false when `stop` cut the run (or its drain) short: its account covers only part
    of the scenario, so no gate can pass on it."""

    account: Account
    fleet: Report
    meta: dict[str, Any]
    broker_cpu_s: float | None
    broker_peak_rss: int | None
    complete: bool = True


def _specs(config: FleetConfig) -> dict[str, DeviceSpec]:
    return {
        group.device_id(index): DeviceSpec(
            group.name, group.qos.telemetry, not group.clean_session, group.will
        )
        for group in config.groups
        for index in range(group.count)
    }


def _specs5(config: FleetConfig) -> dict[str, Device5]:
    return {
        group.device_id(index): Device5(
            group.will,
            group.will_delay or 0,
            group.session_expiry or 0,
            group.message_expiry or 0,
            group.interval,
        )
        for group in config.groups
        if group.protocol_level == 5
        for index in range(group.count)
    }


class _Stages:
    """The stage engine: carries out each stage at its time, on the running fleet, proxies and broker."""

    def __init__(
        self,
        config: FleetConfig,
        control: Control,
        proxies: Mapping[str, FaultProxy],
        broker: BrokerProcess | None,
        observer: Observer,
        started: float,
        target: Target,
    ) -> None:
        self._config = config
        self._target = target
        # Takeovers: the connections the engine made with devices' client ids, and when each began.
        self.others: dict[str, list[Span]] = {}
        self.taken_over: dict[str, list[float]] = {}
        self.takeovers5 = 0  # of MQTT 5 devices: each should have got DISCONNECT 0x8E
        self._control = control
        self._proxies = proxies
        self._broker = broker
        self._observer = observer
        # The observer's connect count when the broker last went down: it must reconnect after that.
        self.observer_gone: int | None = None
        self._started = started
        self.log: list[str] = []

    async def _until(self, at: float) -> None:
        await asyncio.sleep(max(0.0, self._started + at - time.monotonic()))

    def _note(self, text: str) -> None:
        self.log.append(f"t={time.monotonic() - self._started:.1f}s {text}")

    def _proxies_of(self, stage: Stage) -> list[FaultProxy]:
        return [proxy for name, proxy in self._proxies.items() if stage.group in (None, name)]

    def _drop(self, stage: Stage, number: int, rng: random.Random) -> None:
        online = self._control.online(stage.group)
        chosen = rng.sample(online, round(len(online) * stage.fraction))
        self._control.end(chosen, stage.end, stage.offline)
        self._note(
            f"{stage.action} #{number}: {len(chosen):,} of {len(online):,} online devices end {stage.end}"
        )

    async def run(self, number: int, stage: Stage) -> None:
        rng = random.Random(f"{self._config.seed}/stage/{number}")
        await self._until(stage.at)
        action = stage.action
        if action == "drop":
            self._drop(stage, number, rng)
        elif action == "flap":
            until = stage.until
            while until is None or time.monotonic() - self._started < until:
                self._drop(stage, number, rng)
                await asyncio.sleep(stage.period)
        elif action in RESTARTS:
            assert self._broker is not None
            how = "killing (SIGKILL)" if action == "crash-broker" else "stopping"
            self._note(f"{action} #{number}: {how} the broker for {stage.offline:g}s")
            self.observer_gone = self._observer.connects
            await self._broker.restart(stage.offline, kill=action == "crash-broker")
            self._note(f"{action} #{number}: the broker is back")
        elif action == "takeover":
            online = self._control.online(stage.group)
            chosen = rng.sample(online, round(len(online) * stage.fraction))
            async with asyncio.TaskGroup() as tasks:
                for index, device in enumerate(chosen):
                    tasks.create_task(self._take_over(device, clean=index % 2 == 1))
            made = sum(1 for device in chosen if device in self.taken_over)
            self._note(
                f"takeover #{number}: {made:,} of {len(online):,} online devices taken over by a second "
                "connection with their client id (every other one with Clean Start 1)"
            )
        elif action == "observer-offline":
            self._observer.away(stage.offline)
            self._note(f"observer-offline #{number}: the observer leaves for {stage.offline:g}s")
        elif action in ("reset", "half-open"):
            for proxy in self._proxies_of(stage):
                hit = proxy.reset(stage.fraction) if action == "reset" else proxy.half_open(stage.fraction)
                self._note(f"{action} #{number}: {hit:,} connections")
        else:
            self._fault(stage, True)
            self._note(f"{action} #{number}: on")
            if stage.until is not None:
                await self._until(stage.until)
                self._fault(stage, False)
                self._note(f"{action} #{number}: off")

    async def _take_over(self, device_id: str, clean: bool) -> None:
        """Connect with the device's client id and CONNECT (without its will; Clean Start 1 when
        `clean`), then leave at once with DISCONNECT, for the device to come back."""
        device = self._control.device(device_id)
        login = self._target.login(device_id, device.group.name)
        packet = device.connect(device_id, login.username, login.password)
        if isinstance(packet, v5.Connect):
            packet = dataclasses.replace(packet, clean_start=clean, will=None)
            self.takeovers5 += 1
        else:
            packet = dataclasses.replace(packet, clean_session=clean, will=None)
        at = time.monotonic()
        try:
            link, present = await Link.open(
                self._target.endpoint, packet, session=ClientSession(), on_message=_ignore, ssl=login.ssl
            )
        except TransportError as exc:
            if isinstance(packet, v5.Connect):
                self.takeovers5 -= 1
            self._note(f"takeover of {device_id} failed: {exc}")
            return
        self.taken_over.setdefault(device_id, []).append(at)
        with contextlib.suppress(TransportError, OSError):
            await link.disconnect(timeout=5.0)
        self.others.setdefault(device_id, []).append(Span(at, time.monotonic(), "clean", clean, present))

    def _fault(self, stage: Stage, on: bool) -> None:
        for proxy in self._proxies_of(stage):
            if stage.action == "blackhole":
                proxy.blackhole(on)
            elif on:
                proxy.shape(Shaping(stage.latency_ms / 1000, stage.jitter_ms / 1000, stage.rate))
            else:
                proxy.shape(None)


async def _drain(
    observer: Observer,
    control: Control,
    specs: Mapping[str, DeviceSpec],
    mqtt5: Mapping[str, Device5],
    limit: float,
    stop: asyncio.Event,
) -> None:
    """Wait until every persistent QoS 1/2 message and every expected will has come, or nothing has
    come for a while, or `limit` seconds pass, or `stop` is set."""
    ledger = observer.ledger
    deadline = time.monotonic() + limit
    sent = control.sent
    while time.monotonic() < deadline and not stop.is_set():
        complete = all(
            len(ledger.received(device)) >= sent[device]
            for device, spec in specs.items()
            if spec.qos and spec.persistent
        ) and all(
            ledger.wills[device] >= control.ends[device, "abrupt"] + control.ends[device, "silent"]
            for device, spec in specs.items()
            if spec.will and device not in mqtt5  # whether an MQTT 5 will is due depends on its delay
        )
        if complete or time.monotonic() - observer.last_message > _QUIET:
            return
        await asyncio.sleep(0.1)


def _mqtt5_groups(config: FleetConfig) -> set[str]:
    return {group.name for group in config.groups if group.protocol_level == 5}


def _ignore(_: object) -> None:
    return None


async def run_stress(
    config: FleetConfig,
    settings: StressSettings,
    *,
    target: Target | None,
    config_path: Path | None = None,
    broker_pid: int | None = None,
    live: Live | None = None,
    stop: asyncio.Event | None = None,
    broker_cmd: Sequence[str] | None = None,
) -> StressResult:
    """Run the scenario of `settings` with the fleet of `config` against `target` (None: the embedded
    broker, as a child process with the [broker] table of `config_path`, and a fresh temporary store
    unless that table names one or `settings.persistence` is off). With `broker_cmd`, the run starts
    that external broker itself (listening at `target`) and can restart it. Setting `stop` ends the
    fleet early, and the drain with it; the account follows, marked incomplete."""
    stages = settings.timeline
    restarting = [stage.action for stage in stages if stage.action in RESTARTS]
    if target is not None and broker_cmd is None and restarting:
        raise FleetError(
            f"{restarting[0]} needs the embedded broker, or --broker-cmd to run the --broker one"
        )
    if broker_cmd is not None and target is None:
        raise FleetError("--broker-cmd needs --broker: the URL the command's broker listens on")
    specs = _specs(config)
    specs5 = _specs5(config)
    stop = stop or asyncio.Event()
    ledger = Ledger()
    control = Control()
    meter: UsageMeter | None = None
    broker: BrokerProcess | None = None
    async with contextlib.AsyncExitStack() as stack:
        if target is None:
            named = config_path is not None and "persistence" in load_table(config_path, "broker")
            store = None
            if settings.persistence and not named:
                store = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fleet-stress-store-")))
            broker = await stack.enter_async_context(
                embedded_broker(config_path, store=store, persistent=named)
            )
            meter = broker.meter
            target = Target(Endpoint("mqtt", broker.host, broker.port))
        elif broker_cmd is not None:
            endpoint = target.endpoint
            broker = await stack.enter_async_context(
                external_broker(broker_cmd, endpoint.host, endpoint.port)
            )
            meter = broker.meter
        tasks = await stack.enter_async_context(asyncio.TaskGroup())
        if broker_pid is not None:
            meter = UsageMeter()
            meter.sample(broker_pid)
            watcher = tasks.create_task(meter.watch(lambda: broker_pid), name="fleet.stress.usage")
            stack.callback(watcher.cancel)
        observer = await stack.enter_async_context(observing(target, config, ledger))
        proxies: dict[str, FaultProxy] = {}
        targets: dict[str, Target] = {}
        for name in sorted(proxied_groups(stages, config)):
            endpoint = target.endpoint
            proxy = await stack.enter_async_context(
                fault_proxy(endpoint.host, endpoint.port, seed=config.seed)
            )
            proxies[name] = proxy
            targets[name] = dataclasses.replace(
                target, endpoint=dataclasses.replace(endpoint, host="127.0.0.1", port=proxy.port)
            )
        started_wall = time.time()
        started = time.monotonic()
        engine = _Stages(config, control, proxies, broker, observer, started, target)
        async with asyncio.TaskGroup() as timeline:
            running = [
                timeline.create_task(engine.run(number, stage), name=f"fleet.stress.stage[{number}]")
                for number, stage in enumerate(stages)
            ]
            try:
                report = await simulate(
                    config,
                    target,
                    duration=settings.duration,
                    stop=stop,
                    live=live,
                    targets=targets,
                    control=control,
                )
            finally:
                for task in running:
                    task.cancel()
        fleet_s = time.monotonic() - started
        # What the observer reports of a restart (its own session kept or lost) must be in before the
        # account: it reconnects with backoff, and the run may have ended just after the broker came back.
        # A run cut short by a signal does not wait.
        interrupted = stop is not None and stop.is_set()
        if (
            engine.observer_gone is not None
            and not interrupted
            and not await observer.connected_after(engine.observer_gone, _OBSERVER_BACK)
        ):
            engine.log.append(f"the observer had not reconnected {_OBSERVER_BACK:g}s after the run")
        for proxy in proxies.values():  # faults end with the run: what they held may still arrive
            proxy.shape(None)
            proxy.blackhole(False)
        await _drain(observer, control, specs, specs5, settings.drain, stop)
        until = time.monotonic()
        drained_s = time.monotonic() - started - fleet_s
        if meter is not None and broker is not None and broker.pid is not None:
            meter.sample(broker.pid)
        elif meter is not None and broker_pid is not None:
            meter.sample(broker_pid)
    connects: Counter[tuple[bool, bool, bool]] = Counter()
    for device, events in control.history.items():
        if device in specs5:
            continue
        ups = [event for event in events if event.up]
        for index, event in enumerate(ups):
            connects[not event.clean_start, index > 0, event.present] += 1
    links = {
        device: spans(control.history.get(device, ()), engine.taken_over.get(device, ())) for device in specs5
    }
    told = sum(
        stats.disconnects["0x8e"] for name, stats in report.groups.items() if name in _mqtt5_groups(config)
    )
    result = account(
        ledger,
        specs,
        control.sent,
        control.unacked(),
        control.ends,
        connects,
        report.fleet().reconnect_time,
        broker_restarted=broker is not None and broker.restarts > 0,
        broker_persistent=broker is not None and broker.persistent,
        mqtt5=specs5,
        links=links,
        others=engine.others,
        until=until,
        observer_gaps=observer.gaps,
        receive_maximum=observer.receive_maximum,
        inflight_peak=observer.inflight_peak,
        takeovers=engine.takeovers5,
        taken_over_told=told,
    )
    complete = not stop.is_set()
    meta: dict[str, Any] = {
        "scenario": settings.scenario or "config",
        "complete": complete,
        "broker": "embedded" if broker is not None and broker_cmd is None else str(target.endpoint),
        "broker_persistent": broker is not None and broker.persistent,
        "devices": config.size,
        "seed": config.seed,
        "started": round(started_wall, 3),
        "duration_s": round(fleet_s, 3),
        "drain_s": round(drained_s, 3),
        "stages": [stage.model_dump(exclude_defaults=True) for stage in stages],
        "timeline": engine.log,
        "proxied_groups": sorted(proxies),
        "proxy": {
            name: {"resets": proxy.resets, "half_open": proxy.half_opened} for name, proxy in proxies.items()
        },
        "observer": {
            "messages": observer.messages,
            "connects": observer.connects,
            "sessions_lost": observer.sessions_lost,
            "protocol": "5" if observer.receive_maximum is not None else "3.1.1",
            "away_s": [round(back - left, 3) for left, back in observer.gaps],
        },
    }
    sampled = meter is not None and meter.sampled
    return StressResult(
        result,
        report,
        meta,
        round(meter.cpu_s, 3) if sampled and meter is not None else None,
        meter.peak_rss if sampled and meter is not None else None,
        complete,
    )
