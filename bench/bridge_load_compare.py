"""The two consumer runtimes of `bench/bridge_scale.py` side by side: a Node.js child
(`bench/bridge_consumers.mjs`) and a Python child (`bench/bridge_consumers.py`) with the same consumers,
against one `fleet bridge` at the same time, so that both see the same messages and the same machine.

Same rig as the bench (Mosquitto, the publisher and both children on core 1, the bridge on core 0).
Per window and child: deliveries read per transport, latency (p50 / p99 / max, publish -> read, every
delivery sampled up to 30,000 a second) and the child's CPU µs per delivery.

Usage::

    .venv/bin/python bench/bridge_load_compare.py [--rate 200] [--each 10] [--seconds 5] [--windows 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import bridge_scale
from bridge_consumers import TRANSPORTS
from bridge_rig import Rig, sample_every
from support import BenchError

SHORT = bridge_scale.SHORT


def row(name: str, a: dict[str, Any], b: dict[str, Any], cpu_s: float, window_s: float) -> str:
    read = {t: b["counts"][t] - a["counts"][t] for t in TRANSPORTS}
    total = sum(read.values())
    lat = "; ".join(
        f"{SHORT[t]} {v['p50']:.2f} / {v['p99']:.2f} / {v['max']:.2f}" for t, v in b["lat"].items() if v["n"]
    )
    us = f"{1e6 * cpu_s / total:.1f}" if total else "-"
    per_s = " / ".join(f"{read[t] / window_s:,.0f}" for t in TRANSPORTS)
    return f"  {name:6} read/s ws / sse / grpc {per_s}; {us} µs CPU a delivery; ms p50 / p99 / max: {lat}"


async def compare(args: argparse.Namespace) -> int:
    scale = bridge_scale.parse_args(["--load", "node", "--prefill", "0", "--warmup", str(args.warmup)])
    layout = {"ws": args.each, "sse": args.each, "grpc": args.each}
    consumers = bridge_scale.consumers_of([layout, layout])
    with tempfile.TemporaryDirectory(prefix="bridge-load-compare-") as tmp:
        rig = Rig(scale, Path(tmp), "compare", "fleet")
        try:
            await rig.start([layout])  # the Node child
            scale.load = "python"  # the next child: Python
            await rig.add_children([layout])
            node, python = rig.children
            assert rig.publisher is not None
            rig.publisher.set_rate(args.rate)
            await rig.sleep(args.warmup)
            every = sample_every(args.rate, consumers)
            for window in range(args.windows):
                for child in rig.children:
                    await child.request(f"record {every}")
                a = await asyncio.gather(node.request("snap"), python.request("snap"))
                cpu_a = [node.cpu_seconds(), python.cpu_seconds()]
                await rig.sleep(args.seconds)
                b = await asyncio.gather(node.request("snap"), python.request("snap"))
                cpu_b = [node.cpu_seconds(), python.cpu_seconds()]
                print(
                    f"window {window + 1}, {args.rate:g} msg/s to {args.each} consumers per transport each:"
                )
                print(row("node", a[0], b[0], cpu_b[0] - cpu_a[0], args.seconds))
                print(row("python", a[1], b[1], cpu_b[1] - cpu_a[1], args.seconds), flush=True)
        except BenchError as exc:
            print(f"! {exc}", file=sys.stderr)
            return 1
        finally:
            rig.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rate", type=float, default=200.0, help="msg/s published")
    p.add_argument("--each", type=int, default=10, help="consumers per transport in each child")
    p.add_argument("--seconds", type=float, default=5.0, help="each window (s)")
    p.add_argument("--windows", type=int, default=3, help="windows in a row")
    p.add_argument("--warmup", type=float, default=2.0, help="load before the first window (s)")
    args = p.parse_args(argv)
    return asyncio.run(compare(args))


if __name__ == "__main__":
    sys.exit(main())
