"""`fleet watch` ingest benchmark: the message rate the TUI takes in at 10,000 devices while it
keeps its refresh rate, against a naive per-message render measured in the same run.

The app runs headless (Textual's `run_test`, so the compositor renders every refresh as it would
for a terminal) on a flood source: `--devices` devices whose telemetry (JSON, two metrics, like
`fleet run`'s) is delivered at an offered rate, paced by the event loop's clock in batches of at
most 50 ms of messages. When the loop cannot keep up, messages are delivered late and the
ingested rate falls below the offered one, as a socket's backlog would grow.

Two apps, each at rising offered rates (doubling from `--start`) until one fails:

- `coalesced`: `WatchApp` as `fleet watch` runs it: each message goes into the model, the screen
  is redrawn by a timer every `--refresh` s.
- `per-message`: the same app, but every message redraws the screen at once (the naive design).

A rate is *sustained* when, at the end of `--seconds` measured after a warm-up, the app is at
most 0.5 s of messages behind the offered stream (`lag`), and it redrew at >= 90 % of the rate
the coalesced app redraws at when idle (1 msg/s), measured first in the same run, so that a busy
host lowers the bar for both apps alike. `ingested` is the rate it took messages in over the
window; `per cpu-s` is ingested messages per CPU-second of this process (messages and redraws
together), what one free core would take at that load. The device table is sorted by rate
(`--sort`), its costliest order: every refresh computes every device's decayed rate.
`model alone` is `FleetModel.ingest` without any app, the ceiling.

`over MQTT` is the real path at `--mqtt-rates`: `fleet broker` on a free port, a publisher child
(the lean `Link`, QoS 0, `--seconds` worth of telemetry at the rate, pausing while its socket is
congested) and the coalesced app on `MqttSource` (a QoS 0 subscription). It
counts what arrived under `fleet/`; `lag` is how long after the publisher's last message the app
had all of them (none: some never came, dropped by the broker for a slow reader). The broker and
the publisher share the host's cores with the app. A step is sustained by the same rule.

Usage::

    .venv/bin/python bench/watch_ingest.py [--devices 10000] [--seconds 3] [--start 2500]
        [--mqtt-rates 10000,20000] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from support import cpu_seconds, fmt, host_busy_seconds, ratio

from fleet.endpoint import Endpoint
from fleet.transport import ClientSession, Link, make_connect
from fleet.watch.app import WatchApp
from fleet.watch.model import COLUMNS, FleetModel
from fleet.watch.sources import Deliver, MqttSource, Notify

SIZE = (160, 50)
MAX_LAG = 0.5  # seconds
MIN_REFRESHES = 0.9


def payloads(devices: int, per_device: int) -> list[tuple[str, bytes]]:
    """Telemetry of every device, `per_device` messages each, interleaved as a fleet sends them."""
    out = []
    for seq in range(per_device):
        for index in range(devices):
            device = f"dev-{index:05d}"
            body = {
                "device": device,
                "seq": seq,
                "ts": 1764400000.0 + seq,
                "values": {"temperature": round(20 + (index % 70) / 10, 1), "humidity": 40 + seq % 20},
            }
            out.append((f"fleet/{device}/telemetry", json.dumps(body, separators=(",", ":")).encode()))
    return out


class FloodSource:
    """Delivers `messages` in a loop at `rate` per second, paced by the loop clock; counts deliveries."""

    description = "flood"

    def __init__(self, messages: list[tuple[str, bytes]], rate: float) -> None:
        self.messages = messages
        self.rate = rate
        self.delivered = 0
        self._due: Callable[[], int] = lambda: 0

    @property
    def lag(self) -> float:
        """Seconds of messages due but not yet delivered: how far the app is behind the fleet."""
        return (self._due() - self.delivered) / self.rate

    async def run(self, deliver: Deliver, notify: Notify) -> None:
        loop = asyncio.get_running_loop()
        messages = self.messages
        count = len(messages)
        for topic, payload in messages[: count // 2]:  # every device known before the clock starts
            deliver(topic, payload, False, 0)
        position = count // 2
        self.delivered = 0
        rate = self.rate
        start = loop.time()
        self._due = lambda: int((loop.time() - start) * rate)
        while True:
            await asyncio.sleep(0.002)
            batch = min(self._due() - self.delivered, max(1, int(rate * 0.05)))
            for _ in range(batch):
                topic, payload = messages[position]
                deliver(topic, payload, False, 0)
                position = (position + 1) % count
            self.delivered += batch

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        raise NotImplementedError

    async def resync(self) -> None:
        raise NotImplementedError


class PerMessageApp(WatchApp):
    """The naive design: every message redraws the screen."""

    def _deliver(self, topic: str, payload: bytes, retain: bool, qos: int) -> None:
        super()._deliver(topic, payload, retain, qos)
        self.refresh_view()


@dataclass
class Step:
    app: str
    offered: float
    ingested: float
    lag: float
    refreshes: float
    cpu: float
    other_cpu: float
    sustained: bool


async def measure(
    kind: type[WatchApp],
    messages: list[tuple[str, bytes]],
    rate: float,
    args: argparse.Namespace,
    idle: float,
) -> Step:
    source = FloodSource(messages, rate)
    app = kind(source, refresh=args.refresh)
    app.sort_column = args.sort
    app.sort_descending = True
    me = psutil.Process()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(args.warmup)
        delivered, refreshes = source.delivered, app.refreshes
        cpu, busy, started = cpu_seconds(me), host_busy_seconds(), time.monotonic()
        await pilot.pause(args.seconds)
        elapsed = time.monotonic() - started
        ingested = (source.delivered - delivered) / elapsed
        redraws = (app.refreshes - refreshes) / elapsed
        used = (cpu_seconds(me) - cpu) / elapsed
        other = (host_busy_seconds() - busy) / elapsed - used
        lag = source.lag
    ok = lag <= MAX_LAG and redraws >= MIN_REFRESHES * idle
    name = "per-message" if kind is PerMessageApp else "coalesced"
    return Step(name, rate, ingested, lag, redraws, 100 * used, 100 * max(0.0, other), ok)


def model_alone(messages: list[tuple[str, bytes]]) -> float:
    """CPU microseconds per message of `FleetModel.ingest` alone, over every message twice."""
    model = FleetModel()
    clock: Callable[[], float] = time.time
    started = time.process_time()
    for _ in range(2):
        for topic, payload in messages:
            model.ingest(topic, payload, False, clock())
    return (time.process_time() - started) / (2 * len(messages)) * 1e6


async def ladder(
    kind: type[WatchApp],
    messages: list[tuple[str, bytes]],
    rate: float,
    args: argparse.Namespace,
    idle: float,
) -> list[Step]:
    steps: list[Step] = []
    while rate <= args.max_rate:
        step = await measure(kind, messages, rate, args, idle)
        steps.append(step)
        print(
            f"  {step.app:<12} offered {step.offered:>9,.0f}/s  ingested {step.ingested:>9,.0f}/s"
            f"  lag {step.lag:>5.2f}s"
            f"  refreshes {step.refreshes:>6.1f}/s  cpu {step.cpu:>4.0f}%  other {step.other_cpu:>4.0f}%"
            f"  per cpu-s {step.ingested / max(step.cpu / 100, 1e-9):>9,.0f}"
            f"  {'ok' if step.sustained else 'FAILS'}",
            flush=True,
        )
        if not step.sustained:
            break
        rate *= 2
    return steps


def best(steps: list[Step]) -> float | None:
    sustained = [step.offered for step in steps if step.sustained]
    return max(sustained) if sustained else None


# Over MQTT: the real path, `fleet broker` -> MqttSource (the lean Link) -> the app.


async def publish(port: int, devices: int, rate: float, count: int) -> None:
    """The publisher child: `count` QoS 0 telemetry messages at `rate`, then its achieved rate."""
    messages = payloads(devices, 4)
    endpoint = Endpoint("mqtt", "127.0.0.1", port)
    link, _ = await Link.open(
        endpoint, make_connect("bench-publisher"), session=ClientSession(), on_message=print
    )
    loop = asyncio.get_running_loop()
    start, sent = loop.time(), 0
    while sent < count:
        await asyncio.sleep(0.002)
        if link.congested:
            continue
        batch = min(int((loop.time() - start) * rate) - sent, max(1, int(rate * 0.05)), count - sent)
        for index in range(sent, sent + batch):
            topic, payload = messages[index % len(messages)]
            link.publish(topic, payload)
        sent += batch
    elapsed = loop.time() - start
    await link.disconnect()
    print(f"sent {sent} in {elapsed:.3f}", flush=True)


@contextlib.contextmanager
def fleet_broker() -> Iterator[int]:
    """`fleet broker` on a free port, stopped by its PID; yields the port."""
    argv = [sys.executable, "-m", "fleet", "broker", "--port", "0", "--ws-port", "0", "--sys-interval", "0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"mqtt://127\.0\.0\.1:(\d+)", line)
        if found is None:
            raise SystemExit(f"fleet broker did not start: {line!r}")
        yield int(found[1])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class MqttStep:
    offered: float
    ingested: int
    sent: int
    lag: float | None
    refreshes: float
    cpu: float
    other_cpu: float  # the broker and the publisher included
    sustained: bool


def fleet_messages(app: WatchApp) -> int:
    """Messages the app received under `fleet/` ($SYS aside)."""
    node = app.model.topics.children.get("fleet")
    return 0 if node is None else node.messages


async def mqtt_step(port: int, rate: float, args: argparse.Namespace, idle: float) -> MqttStep:
    count = int(rate * args.seconds)
    app = WatchApp(MqttSource(Endpoint("mqtt", "127.0.0.1", port)), refresh=args.refresh)
    app.sort_column, app.sort_descending = args.sort, True
    me = psutil.Process()
    async with app.run_test(size=SIZE) as pilot:
        while not any(e.text.startswith("attached") for e in app.model.events):
            await pilot.pause(0.01)
        before = fleet_messages(app)
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--publish", str(port), "--devices", str(args.devices),
            "--rate", str(rate), "--count", str(count), stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        # The window opens with the first message, after the publisher's start-up.
        async with asyncio.timeout(30):
            while fleet_messages(app) == before:
                await pilot.pause(0.005)
        refreshes, cpu, busy, started = app.refreshes, cpu_seconds(me), host_busy_seconds(), time.monotonic()
        out, _ = await asyncio.wait_for(child.communicate(), args.seconds * 10 + 30)
        ended = time.monotonic()
        redraws = (app.refreshes - refreshes) / (ended - started)
        sent, elapsed = (float(x) for x in out.decode().split()[1::2])
        while fleet_messages(app) - before < sent and time.monotonic() - ended < 5:
            await pilot.pause(0.01)
        got = fleet_messages(app) - before
        lag = time.monotonic() - ended if got >= sent else None
        window = time.monotonic() - started
        used = (cpu_seconds(me) - cpu) / window
        other = (host_busy_seconds() - busy) / window - used
    ok = lag is not None and lag <= MAX_LAG and redraws >= MIN_REFRESHES * idle
    return MqttStep(sent / elapsed, got, int(sent), lag, redraws, 100 * used, 100 * max(0.0, other), ok)


async def over_mqtt(args: argparse.Namespace, idle: float) -> list[MqttStep]:
    steps = []
    with fleet_broker() as port:
        for rate in args.mqtt_rates:
            step = await mqtt_step(port, rate, args, idle)
            steps.append(step)
            print(
                f"  over MQTT    offered {step.offered:>9,.0f}/s  received {step.ingested:,} of {step.sent:,}"
                f"  lag {fmt(step.lag, '5.2f')}s  refreshes {step.refreshes:>6.1f}/s  cpu {step.cpu:>4.0f}%"
                f"  other {step.other_cpu:>4.0f}% (broker and publisher too)"
                f"  {'ok' if step.sustained else 'FAILS'}",
                flush=True,
            )
    return steps


async def main(args: argparse.Namespace) -> int:
    messages = payloads(args.devices, 4)
    print(
        f"fleet watch ingest: {args.devices:,} devices, refresh every {args.refresh}s, table sorted by"
        f" {args.sort}, {SIZE[0]}x{SIZE[1]} headless terminal, {args.seconds}s per step",
        flush=True,
    )
    per_message = model_alone(messages)
    print(f"  model alone: {per_message:.1f} us per message ({1e6 / per_message:,.0f} msg/s on one core)")
    idle = (await measure(WatchApp, messages, 1.0, args, 0.0)).refreshes
    print(f"  coalesced app, idle (1 msg/s): {idle:.1f} refreshes/s, the bar for every step")
    coalesced = await ladder(WatchApp, messages, args.start, args, idle)
    naive = await ladder(PerMessageApp, messages, args.baseline_start, args, idle) if args.baseline else []
    mqtt = await over_mqtt(args, idle) if args.mqtt_rates else []
    good, bad = best(coalesced), best(naive)
    print(
        f"\nsustained: coalesced {fmt(good, ',.0f')} msg/s, per-message render {fmt(bad, ',.0f')} msg/s"
        f" ({ratio(good, bad)}); model alone {1e6 / per_message:,.0f} msg/s"
    )
    if any(step.other_cpu > 25 for step in coalesced + naive):
        print("WARNING: other processes used > 25% CPU during a step: rerun on a quiet machine")
    if args.json:
        report = {
            "devices": args.devices,
            "refresh": args.refresh,
            "sort": args.sort,
            "model_us_per_message": per_message,
            "steps": [asdict(step) for step in coalesced + naive],
            "mqtt": [asdict(step) for step in mqtt],
            "sustained": {"coalesced": good, "per_message": bad},
        }
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if good is not None else 1


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per step")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each measurement")
    parser.add_argument("--start", type=float, default=2500, help="first offered rate, msg/s")
    parser.add_argument("--baseline-start", type=float, default=100, help="per-message: first rate")
    parser.add_argument("--max-rate", type=float, default=320_000, help="stop doubling here")
    parser.add_argument("--refresh", type=float, default=0.1, help="the coalesced app's redraw period, s")
    parser.add_argument("--sort", choices=COLUMNS, default="rate")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip per-message")
    parser.add_argument(
        "--mqtt-rates",
        type=lambda text: [float(rate) for rate in text.split(",") if rate],
        default=[10_000.0, 20_000.0],
        help="offered rates over fleet broker, comma-separated; empty: skip",
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--publish", type=int, help=argparse.SUPPRESS)  # the publisher child: its port
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    if arguments.publish is not None:
        asyncio.run(publish(arguments.publish, arguments.devices, arguments.rate, arguments.count))
    else:
        sys.exit(asyncio.run(main(arguments)))
