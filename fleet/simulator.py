"""The fleet simulator: runs every device of a config against a broker, in one asyncio loop.

Each device is one task that loops through its online periods: connect (with backoff and the
fleet-wide connect ramp), announce itself, publish telemetry, answer commands, and end the period
the way its connectivity model says (DISCONNECT, a dropped socket, or silence until keepalive
expires). Device behaviour lives in `fleet.device`; the MQTT connection is a `fleet.transport.Link`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import math
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from fleet.credentials import Credentials, split_url
from fleet.device import KNOWN_OPS, Command, Device, EndKind
from fleet.errors import ConnectRefused, TopicError, TransportError
from fleet.mqtt import v5
from fleet.packets import Publish
from fleet.report import GroupStats, Report
from fleet.schema import FleetConfig
from fleet.transport import ClientSession, Endpoint, Link

__all__ = ["Connected", "Control", "LinkEvent", "Live", "Login", "Shard", "Target", "make_target", "simulate"]

log = logging.getLogger("fleet.simulator")

CONNECT_TIMEOUT = 10.0
FREEZE_AT = 1000  # devices
# How an online period ended: the connection died (lost, or a fault ended it abrupt or silent), a
# command or a clean fault took it offline, or its scheduled end came.
_LOST, _REBOOT, _OFFLINE, _SCHEDULED = "lost", "reboot", "offline", "scheduled"


@dataclass(frozen=True, slots=True)
class Login:
    """What one client sends and presents: its user name, password and TLS context."""

    username: str | None
    password: bytes | None
    ssl: ssl.SSLContext | None


@dataclass(frozen=True, slots=True)
class Target:
    """Where the devices connect, and as whom: `credentials` may be templated per device."""

    endpoint: Endpoint
    credentials: Credentials = field(default_factory=Credentials)
    _contexts: dict[tuple[object, ...], ssl.SSLContext] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.credentials.tls and not self.endpoint.tls:
            raise ValueError(
                f"{self.endpoint} is not a TLS URL: --cafile, --cert and --insecure need mqtts:// or wss://"
            )

    def login(self, device: str | None = None, group: str = "") -> Login:
        """The login of `device`, its templated credentials filled in; None: a client that is not a
        device (an observer, a TUI, a bridge), which uses only the fields that are not templated.

        Raises ConfigError when a password file or a TLS file cannot be read.
        """
        credentials = self.credentials
        credentials = credentials.shared() if device is None else credentials.for_device(device, group)
        context = None
        if self.endpoint.tls:
            key = (credentials.cafile, credentials.cert, credentials.key, credentials.insecure)
            context = self._contexts.get(key)
            if context is None:
                context = self._contexts[key] = credentials.ssl_context()
        return Login(credentials.username, credentials.read_password(), context)


def make_target(
    config: FleetConfig, url: str | None, credentials: Credentials | None = None
) -> Target | None:
    """Where the devices connect: `url`, else the config's [broker] url; None: the embedded broker.

    A `user:password@` in the URL wins over the config's credentials, and `credentials` (from the
    command line) over both, field by field. Raises ValueError for a bad URL (never showing its
    password) or TLS settings on a plain URL.
    """
    broker = config.broker
    url = url or (broker.url if broker is not None else None)
    if url is None:
        if credentials is not None and credentials != Credentials():
            raise ValueError("credentials and TLS options need --broker: the embedded broker takes none")
        return None
    url, from_url = split_url(url)
    endpoint = Endpoint.parse(url)
    configured = broker.credentials() if broker is not None else Credentials()
    return Target(endpoint, configured.override(from_url).override(credentials or Credentials()))


@dataclass(frozen=True, slots=True)
class Shard:
    """Run every device whose fleet-wide index i has i % count == number - 1.

    Within a shard, worker w of `workers` processes runs the devices with (i // count) % workers == w.
    """

    number: int = 1
    count: int = 1
    worker: int = 0
    workers: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.number <= self.count:
            raise ValueError(f"shard {self.number}/{self.count}: need 1 <= I <= N")
        if not 0 <= self.worker < self.workers:
            raise ValueError(f"worker {self.worker} of {self.workers}: need 0 <= w < workers")

    @classmethod
    def parse(cls, text: str) -> Shard:
        number, sep, count = text.partition("/")
        if not sep or not number.isdigit() or not count.isdigit():
            raise ValueError(f"shard {text!r}: expected I/N, for example 3/8")
        return cls(int(number), int(count))

    @classmethod
    def from_index(cls, index: str, count: str) -> Shard:
        """The shard of a Kubernetes Indexed Job's pod: `index` is 0-based, so index 0 is shard 1/count."""
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"shard count {count!r}: expected a positive integer")
        if not index.isdigit() or int(index) >= int(count):
            raise ValueError(f"JOB_COMPLETION_INDEX {index!r}: expected 0 to {int(count) - 1}")
        return cls(int(index) + 1, int(count))

    def __contains__(self, index: int) -> bool:
        return index % self.count == self.number - 1 and (index // self.count) % self.workers == self.worker

    def part(self, rate: float) -> float:
        """This process's part of a fleet-wide `rate` (the connect ramp): the parts of every shard's
        workers add up to `rate`."""
        return rate / (self.count * self.workers)


@dataclass(slots=True)
class Live:
    """Running totals for the progress display; the simulator is their only writer."""

    target: int = 0
    connected: int = 0
    published: int = 0
    reconnects: int = 0
    errors: int = 0
    last_error: str = ""
    ever_connected: bool = False
    online: Counter[str] = field(default_factory=Counter)  # connected devices, by group
    report: Report | None = None  # the run's report as it fills, for the metrics (fleet.metrics)


@dataclass(frozen=True, slots=True)
class Connected:
    """One successful connect, as `Control` counts it."""

    persistent: bool  # CleanSession=0
    reconnect: bool  # not the device's first connect of the run
    present: bool  # CONNACK's session-present flag


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """A device's connection coming up (CONNACK) or going down, as `Control.history` records it."""

    at: float  # time.monotonic()
    up: bool
    clean_start: bool = False  # up: CleanSession (3.1.1) or Clean Start (5)
    present: bool = False  # up: CONNACK's session-present flag
    end: str = ""  # down: clean, abrupt, silent (when the broker closed it) or lost


class Control:
    """The stress engine's handle on a running fleet: end devices on demand, and count what happened.

    Pass one to `simulate(control=...)`. `end()` makes online devices end their online period the
    way a fault would (the device itself does it, between two messages), then stay offline for a
    while and reconnect. `ends` counts each device's ends by kind (`clean`, `abrupt`, `silent`,
    `lost`), `connects` counts connects by `Connected`, `history` holds each device's connections
    coming up and going down, in order, and `sent` is how many telemetry messages each device has
    published (its next `seq`).
    """

    __slots__ = ("_runners", "connects", "ends", "history")

    def __init__(self) -> None:
        self._runners: dict[str, _DeviceRunner] = {}
        self.ends: Counter[tuple[str, str]] = Counter()  # (device, kind)
        self.connects: Counter[Connected] = Counter()
        self.history: dict[str, list[LinkEvent]] = {}

    def record(self, device: str, event: LinkEvent) -> None:
        self.history.setdefault(device, []).append(event)

    def online(self, group: str | None = None) -> list[str]:
        """Ids of the devices (of `group`, or all) that are connected now, in fleet order."""
        return [
            device
            for device, runner in self._runners.items()
            if runner.online and (group is None or runner.device.group.name == group)
        ]

    def device(self, device: str) -> Device:
        """The device (its pure model) with id `device`."""
        return self._runners[device].device

    def end(self, devices: Iterable[str], kind: EndKind, offline_for: float = 0.0) -> None:
        """Make each device end its online period as `kind`, then stay offline `offline_for` seconds."""
        for device in devices:
            self._runners[device].inject(kind, offline_for)

    @property
    def sent(self) -> dict[str, int]:
        """Telemetry messages published so far, by device."""
        return {device: runner.device.seq for device, runner in self._runners.items()}

    def unacked(self) -> dict[str, set[int]]:
        """The seqs of each device's telemetry the broker has not acknowledged (QoS 1/2, still in
        the device's session): the broker never took responsibility for them."""
        found: dict[str, set[int]] = {}
        for device, runner in self._runners.items():
            topic = runner.device.topics.telemetry
            for message in runner.session.inflight.values():
                if message.topic == topic:
                    found.setdefault(device, set()).add(json.loads(message.payload)["seq"])
        return found


def _fleet_devices(config: FleetConfig, shard: Shard) -> list[Device]:
    devices = []
    index = 0
    for group in config.groups:
        for number in range(group.count):
            if index in shard:
                devices.append(Device(group, number, config.seed))
            index += 1
    return devices


class _Ramp:
    """A fleet-wide limit on connects per second: each connect takes the next free slot."""

    __slots__ = ("_interval", "_next")

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)


class _Wake:
    """A sleep that a command or a lost connection can cut short."""

    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    async def until(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        future = self._future = loop.create_future()
        handle = loop.call_at(when, _resolve, future)
        try:
            await future
        finally:
            handle.cancel()
            self._future = None

    def wake(self) -> None:
        if self._future is not None:
            _resolve(self._future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass(frozen=True, slots=True)
class _Run:
    config: FleetConfig
    targets: Mapping[str, Target]
    target: Target
    report: Report
    live: Live
    ramp: _Ramp
    control: Control | None
    # (group, reason code) of the broker DISCONNECTs already logged: each is logged once.
    disconnects_logged: set[tuple[str, int]] = field(default_factory=set)


async def simulate(
    config: FleetConfig,
    target: Target,
    *,
    duration: float | None = None,
    stop: asyncio.Event | None = None,
    shard: Shard = Shard(),
    live: Live | None = None,
    ready: Callable[[], None] | None = None,
    targets: Mapping[str, Target] | None = None,
    control: Control | None = None,
) -> Report:
    """Run the fleet until `duration` seconds pass or `stop` is set; return its report.

    Then every connected device publishes its clean offline status and disconnects, so no will
    fires; cancelling this coroutine does the same. The report's `meta["complete"]` is false when
    `stop` ended a run that had a `duration` before its time. `ready` is called once every device has
    connected, subscribed to its commands and announced itself once. `targets` sends the devices
    of the groups it names elsewhere (through a fault proxy, say); `control` is the stress
    engine's handle on the running fleet.
    """
    devices = _fleet_devices(config, shard)
    report = Report(
        meta={
            "config": config.fingerprint,
            "seed": config.seed,
            "shard": f"{shard.number}/{shard.count}",
            "devices": len(devices),
        }
    )
    for device in devices:
        report.group(device.group.name).devices += 1
    live = live if live is not None else Live()
    live.target = len(devices)
    live.report = report
    run = _Run(config, targets or {}, target, report, live, _Ramp(shard.part(config.connect_rate)), control)
    _freeze_long_lived(len(devices))
    started = time.time()
    stopped = False
    first_connects: set[str] = set()

    def connected(device: Device) -> None:
        if device.id not in first_connects:
            first_connects.add(device.id)
            if len(first_connects) == len(devices):
                _freeze_long_lived(len(devices))
                if ready is not None:
                    ready()

    try:
        async with asyncio.TaskGroup() as tasks:
            runners = [_DeviceRunner(run, device, connected) for device in devices]
            if control is not None:
                control._runners = {runner.device.id: runner for runner in runners}
            running = [
                tasks.create_task(runner.run(), name=f"fleet.device[{runner.device.id}]")
                for runner in runners
            ]
            if ready is not None and not devices:
                ready()
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(duration):
                        await (stop or asyncio.Event()).wait()
                        stopped = True
            finally:
                for task in running:  # cancellation is shutdown: each device leaves cleanly
                    task.cancel()
    finally:
        report.meta["duration_s"] = round(time.time() - started, 3)
        report.meta["complete"] = duration is None or not stopped
    return report


def _freeze_long_lived(devices: int) -> None:
    """Move what exists now out of the garbage collector's sight, for large fleets.

    Devices, links and sessions live as long as the run; re-scanning them in every full collection
    cost about a third of the CPU of connecting 10,000 devices (bench/fleet_scale.py).
    """
    if devices >= FREEZE_AT:
        gc.collect()
        gc.freeze()


class _DeviceRunner:
    __slots__ = (
        "_client_id",
        "_command",
        "_connected",
        "_fault",
        "_kicks",
        "_link",
        "_run",
        "_target",
        "_wake",
        "_will",
        "device",
        "session",
        "stats",
    )

    def __init__(self, run: _Run, device: Device, connected: Callable[[Device], None]) -> None:
        self._run = run
        self.device = device
        self.stats: GroupStats = run.report.group(device.group.name)
        self.session = ClientSession()
        self._wake = _Wake()
        self._link: Link | None = None
        self._command: Command | None = None
        self._fault: tuple[EndKind, float] | None = None
        self._kicks = 0  # broker DISCONNECTs in a row
        self._connected = connected
        self._target = run.targets.get(device.group.name, run.target)
        self._client_id = device.id  # or the broker's Assigned Client Identifier, once it gave one
        self._will: asyncio.TimerHandle | None = None  # a v5 will the broker holds back for its delay

    @property
    def online(self) -> bool:
        return self._link is not None and self._link.connected

    def inject(self, kind: EndKind, offline_for: float) -> None:
        """End the current online period as `kind` at the next wake-up, then stay offline a while."""
        if self.online:
            self._fault = (kind, offline_for)
            self._wake.wake()

    def _ended(self, kind: str, closed: bool = True) -> None:
        """Count an end of `kind`; `closed`: the connection is gone now (a silent end's goes later)."""
        self.stats.drops[kind] += 1
        control = self._run.control
        if control is not None:
            control.ends[self.device.id, kind] += 1
            if closed:
                control.record(self.device.id, LinkEvent(time.monotonic(), False, end=kind))

    def _owe_will(self) -> None:
        """The connection ended without DISCONNECT: a will is owed now, or, for an MQTT 5 device
        with a Will Delay Interval, once the delay (or the session, if shorter) has passed offline."""
        group = self.device.group
        delay = min(group.will_delay or 0, group.session_expiry or 0) if group.protocol == "5" else 0
        if delay:
            self._will = asyncio.get_running_loop().call_later(delay, self._will_due)
        else:
            self.stats.wills_expected += 1

    def _will_due(self) -> None:
        self._will = None
        self.stats.wills_expected += 1

    def _reconnected(self) -> None:
        """A new connection within the will delay cancels the will, unless its Clean Start ends the
        session, which publishes the will at once [MQTT-3.1.3-9, MQTT 5 §3.1.2.5]."""
        if self._will is not None:
            self._will.cancel()
            self._will = None
            if self.device.group.clean_session:
                self.stats.wills_expected += 1

    async def run(self) -> None:
        try:
            await self._run_cycles()
        finally:
            if self._will is not None:  # due after the run: not counted, as the run never saw it owed
                self._will.cancel()

    async def _run_cycles(self) -> None:
        device = self.device
        loop = asyncio.get_running_loop()
        cycle = 0
        connects = 0  # the number of each connect's backoff draws
        since: float | None = None  # when a reconnect became due
        back_off = False  # before the first retry: the connection died
        live = self._run.live
        while True:
            link, present = await self._connect(connects, since, back_off)
            connects += 1
            self._link = link
            live.connected += 1
            live.online[device.group.name] += 1
            try:
                try:
                    await self._announce(link, present)
                except TransportError as exc:  # no SUBACK, or the link died before it: a lost connection
                    self._error(f"subscribe failed: {exc}")
                    self._ended("lost")
                    link.abort()
                    outcome, offline_for = _LOST, 0.0
                else:
                    self._connected(device)
                    outcome, offline_for = await self._online(link, cycle)
            except asyncio.CancelledError:
                await self._shutdown(link)
                raise
            finally:
                self._link = None
                live.connected -= 1
                live.online[device.group.name] -= 1
                self.stats.alias_bytes_saved += link.alias_saved
            if link.disconnect_reason is None:
                self._kicks = 0
            if outcome == _SCHEDULED:
                offline_for = device.offline_for(cycle)
                cycle += 1
            if offline_for:
                await asyncio.sleep(offline_for)
            since = loop.time()
            back_off = outcome == _LOST and device.group.backoff.first_retry == "backoff"

    async def _connect(self, key: int, since: float | None, back_off: bool) -> tuple[Link, bool]:
        """Connect, retrying with backoff (from the first try when `back_off`, after a connection
        died); return the link and whether the session was present."""
        run, device, stats = self._run, self.device, self.stats
        group = device.group
        loop = asyncio.get_running_loop()
        target = self._target
        login = target.login(device.id, group.name)
        packet = device.connect(self._client_id, login.username, login.password)
        # After broker DISCONNECTs in a row, the first retry waits a later step each time.
        attempt = max(0, self._kicks - 1)
        if back_off:
            await asyncio.sleep(device.backoff(key, attempt))
            attempt += 1
        while True:
            await run.ramp.acquire()
            started = loop.time()
            try:
                link, present = await Link.open(
                    target.endpoint,
                    packet,
                    session=self.session,
                    on_message=self._on_message,
                    ssl=login.ssl,
                    timeout=CONNECT_TIMEOUT,
                )
            except ConnectRefused as exc:
                if exc.bad_login and not run.live.ever_connected:
                    raise  # bad credentials from the start: end the run with the broker's reason
                self._error(f"connect refused: {exc.reason}")
            except TransportError as exc:
                self._error(f"connect failed: {exc}")
            else:
                now = loop.time()
                self._client_id = link.client_id
                stats.connect_latency.add(now - started)
                stats.connects += 1
                self._reconnected()
                run.live.ever_connected = True
                if since is not None:
                    stats.reconnects += 1
                    run.live.reconnects += 1
                    stats.reconnect_time.add(now - since)
                if run.control is not None:
                    run.control.connects[Connected(not group.clean_session, since is not None, present)] += 1
                    run.control.record(
                        device.id, LinkEvent(time.monotonic(), True, group.clean_session, present)
                    )
                return link, present
            stats.connect_failures += 1
            await asyncio.sleep(device.backoff(key, attempt))
            attempt += 1

    async def _announce(self, link: Link, present: bool) -> None:
        device = self.device
        group = device.group
        link.closed.add_done_callback(lambda _: self._wake.wake())
        if group.commands and (group.clean_session or not present):
            await link.subscribe([(device.topics.command, group.qos.command)])
        if group.birth:
            self._publish(
                link, device.topics.status, device.status(True, None, time.time()), group.qos.status, True
            )

    def _error(self, kind: str) -> None:
        self.stats.errors[kind] += 1
        self._run.live.errors += 1
        self._run.live.last_error = f"{self.device.id}: {kind}"

    def _publish(
        self,
        link: Link,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool = False,
        properties: bytes = b"",
        alias: bool = False,
    ) -> None:
        stats = self.stats
        future = link.publish(topic, payload, qos, retain, properties, alias)
        stats.published[_QOS[qos]] += 1
        self._run.live.published += 1
        if future is not None:
            sent = time.monotonic()
            future.add_done_callback(lambda f: _count_ack(stats, qos, f, sent))

    def _on_message(self, message: Publish | v5.Publish) -> None:
        device = self.device
        link = self._link
        if link is None or message.topic != device.topics.command:
            return
        command = device.command(message.payload, time.time())
        # Anyone may publish to the command topic: count unknown ops under one key.
        self.stats.commands[command.op if command.op in KNOWN_OPS else "unknown"] += 1
        topic, properties = device.topics.ack, b""
        if isinstance(message, v5.Publish):
            topic, properties = device.reply(
                message.properties.response_topic, message.properties.correlation_data
            )
        try:
            self._publish(link, topic, command.ack, device.group.qos.command, False, properties)
        except TopicError:
            self._error("a command's response topic is not a valid topic name")
            return
        if command.reconnect or command.offline_for is not None:
            self._command = command
            self._wake.wake()

    async def _online(self, link: Link, cycle: int) -> tuple[str, float]:
        device = self.device
        group = device.group
        loop = asyncio.get_running_loop()
        online_for = device.online_for(cycle)
        deadline = math.inf if online_for is None else loop.time() + online_for
        telemetry_topic, qos, retain = device.topics.telemetry, group.qos.telemetry, group.retain
        v5_link, alias = link.version == 5, group.topic_alias
        while True:
            await self._wake.until(min(loop.time() + device.next_delay(), deadline))
            if not link.connected:  # `closed` resolves a loop turn after the socket is gone
                self._fault = None
                self._ended("lost")
                reason = link.disconnect_reason
                if reason is None:
                    self._error("connection lost")
                    return _LOST, 0.0
                self._disconnected(reason)
                self._kicks += 1
                return _LOST, 0.0
            fault, self._fault = self._fault, None
            if fault is not None:
                await self._end(link, fault[0])
                return (_OFFLINE if fault[0] == "clean" else _LOST), fault[1]
            command, self._command = self._command, None
            if command is not None:
                await self._end_clean(link)
                if self._run.control is not None:
                    self._run.control.record(device.id, LinkEvent(time.monotonic(), False, end="clean"))
                if command.reconnect:
                    return _REBOOT, 0.0
                return _OFFLINE, command.offline_for or 0.0
            if loop.time() >= deadline:
                await self._end(link, device.end_kind(cycle))
                return _SCHEDULED, 0.0
            if v5_link:
                properties = device.telemetry_properties()
                self._publish(
                    link, telemetry_topic, device.telemetry(time.time()), qos, retain, properties, alias
                )
            else:
                self._publish(link, telemetry_topic, device.telemetry(time.time()), qos, retain)

    def _disconnected(self, reason: int) -> None:
        """The broker sent DISCONNECT: count its reason, and log it once per group and reason."""
        group = self.device.group.name
        self.stats.disconnects[f"{reason:#04x}"] += 1
        self._error(f"disconnected by the broker ({reason:#04x})")
        logged = self._run.disconnects_logged
        if (group, reason) not in logged:
            logged.add((group, reason))
            log.warning(
                "group %s: the broker disconnected %s with reason code %#04x; "
                "devices reconnect with their backoff",
                group,
                self.device.id,
                reason,
            )

    async def _end(self, link: Link, kind: str) -> None:
        self._ended(kind, closed=kind != "silent")
        if kind == "clean":
            await self._end_clean(link)
            return
        if self.device.group.will:
            self._owe_will()
        if kind == "abrupt":
            link.abort()
            return
        link.go_silent()
        keepalive = self.device.group.keepalive
        try:
            async with asyncio.timeout(keepalive * 2 + 5):
                await link.closed
        except TimeoutError:
            self._error("silent: the broker never closed the connection")
            link.abort()
        control = self._run.control
        if control is not None:
            control.record(self.device.id, LinkEvent(time.monotonic(), False, end=kind))

    async def _end_clean(self, link: Link) -> None:
        device = self.device
        if device.group.birth or device.group.will:
            status = device.status(False, "clean", time.time())
            self._publish(link, device.topics.status, status, device.group.qos.status, True)
        await link.disconnect()

    async def _shutdown(self, link: Link) -> None:
        """Cancelled: leave cleanly, so that no will fires by accident."""
        if not link.closed.done():
            end = "clean"
            try:
                await asyncio.wait_for(self._end_clean(link), 5.0)
            except (TimeoutError, TransportError, OSError):
                end = "lost"  # the broker never confirmed the DISCONNECT: a will may fire
                link.abort()
            control = self._run.control
            if control is not None:
                control.ends[self.device.id, end] += 1
                control.record(self.device.id, LinkEvent(time.monotonic(), False, end=end))


_QOS = ("0", "1", "2")


def _count_ack(stats: GroupStats, qos: int, future: asyncio.Future[None], sent: float) -> None:
    if not future.cancelled() and future.exception() is None:
        stats.acked[_QOS[qos]] += 1
        stats.publish_ack.add(time.monotonic() - sent)
