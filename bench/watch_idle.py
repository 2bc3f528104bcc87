"""`fleet watch` at a small fleet's pace: the CPU the TUI itself costs while little happens.

`fleet up` with the TUI took about 18 % of a core for the demo fleet (30 devices, 18 msg/s).
py-spy (`py-spy record -p PID -f raw`) put 73 % of that process's samples in Textual's redraw
of the device table, 10 times a second, and 27 % in `DOMNode.rich_style` alone, called once per
table line. The broker, the bridges and the simulator were a few per cent together.

This probe runs the app headless (Textual's `run_test`: the compositor renders every refresh as
it would for a terminal) on a source that delivers the demo's mix, `--devices` devices sending
`--rate` messages a second in all, paced by the loop's clock, for `--seconds` after a warm-up, in
each view. It prints the CPU of this process as a percentage of one core.

Usage::

    .venv/bin/python bench/watch_idle.py [--devices 30] [--rate 18] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import psutil

from fleet.watch.app import WatchApp
from fleet.watch.sources import Attachment, Deliver, Notify

SIZE = (120, 40)


class PacedSource:
    """`devices` devices' telemetry, `rate` messages a second in all, and a retained birth each."""

    description = "paced"

    def __init__(self, devices: int, rate: float) -> None:
        self.devices = [f"{('thermo', 'door', 'van')[i % 3]}-{i:04d}" for i in range(devices)]
        self.rate = rate

    async def run(self, deliver: Deliver, notify: Notify) -> None:
        notify(Attachment(state="connected", detail="paced"))
        for device in self.devices:
            deliver(f"fleet/{device}/status", b'{"online": true}', True, 1)
        loop = asyncio.get_running_loop()
        start, sent = loop.time(), 0
        while True:
            due = int((loop.time() - start) * self.rate)
            for index in range(sent, due):
                device = self.devices[index % len(self.devices)]
                seq = index // len(self.devices)
                body = {"device": device, "seq": seq, "values": {"temperature": 20 + seq % 7, "ok": True}}
                deliver(f"fleet/{device}/telemetry", json.dumps(body).encode(), False, 0)
            sent = due
            await asyncio.sleep(1 / self.rate)

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        raise NotImplementedError

    async def resync(self) -> None:
        raise NotImplementedError


async def measure(view: str, args: argparse.Namespace) -> float:
    """Percent of one core this process used over `seconds`, with the app on `view`."""
    app = WatchApp(PacedSource(args.devices, args.rate))
    me = psutil.Process()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(view)
        await pilot.pause(args.warmup)
        times, started = me.cpu_times(), time.monotonic()
        await pilot.pause(args.seconds)
        elapsed = time.monotonic() - started
        now = me.cpu_times()
    return 100 * (now.user + now.system - times.user - times.system) / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=30)
    parser.add_argument("--rate", type=float, default=18.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()
    print(f"fleet watch, {args.devices} devices at {args.rate:g} msg/s, {SIZE[0]}x{SIZE[1]}, headless")
    for key, view in (("d", "devices"), ("t", "topics"), ("l", "events")):
        print(f"  {view:<8} {await measure(key, args):5.1f} % of a core")


if __name__ == "__main__":
    asyncio.run(main())
