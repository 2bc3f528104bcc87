"""Bridge scale benchmark: `fleet bridge` (MQTT -> WebSocket, SSE, gRPC) and a naive bridge
(`bench/naive_bridge.py`) in the same run, each pinned to one core, against Mosquitto, with the load
generator (publisher, Mosquitto, consumers) on the other core.  The targets are ratios: to the
machine (the ceiling measured in the same run) and to the naive bridge.

Every phase gets a fresh Mosquitto and a fresh bridge, started with ``taskset -c 0``.  The publisher
(this process) sends QoS 0, 140-byte JSON payloads to ``fleet/dev-NNN/telemetry`` (100 devices) at a
paced rate; each payload starts with ``{"ts":<microseconds since the epoch>``.  The consumers live in
child processes and subscribe to ``#``: one published message is one delivery per consumer.  The
children are Node.js (``bench/bridge_consumers.mjs``) or Python asyncio (``bench/bridge_consumers.py``)
by ``--load``: a run is valid only while the load generator's core stays under 80 %, and a Node
consumer costs a fraction of a Python one's CPU a delivery, so that on a 2-core machine the bridge's
core can fill first.  Consumers that stall (the stall phase) are Python in any case.  The
processes and instruments are in ``bench/bridge_rig.py``.

Phases (``--phases``), each run for every bridge of ``--bridges`` (the stall phase: ``fleet`` only):

1. ``mixed``: ``--consumers`` (100), a third per transport: 34 WebSocket + 33 SSE (one process) and 33
   gRPC (another).
   - The ascent offers ``--rates`` in turn.  The *carried* rate of a step is its deliveries per second
     over the consumers (at most the offered rate).  The **ceiling** is the highest carried rate of
     a step at which the bridge's pinned core was >= 95 % busy while the load generator's core stayed
     under 80 %.  The ascent stops once the bridge, saturated, carries under 95 % of the offered rate.
     A run where the load generator's core reaches 80 % first is INVALID; a bridge that sheds load
     with its core not full FAILs.
   - Then, on fresh processes (the ascent's overloaded end leaves a backlog), at 50 % of the
     ceiling (``--latency-seconds``): p99 per transport.  At 90 %
     (``--drift-seconds``): the per-second p99 of each transport, and its slope (Theil-Sen).
   - Then the overload steps, offered ``--overload`` times the ceiling (1.5, 2 and 2.5: past twice
     the ceiling).  During the 2x step ``/healthz`` is probed every 0.2 s.
2. ``grpc``: 100 gRPC consumers (two processes of 50), the same ascent over ``--grpc-rates``.
3. ``ingest``: 3 consumers (one per transport) over ``--ingest-rates``: does the bridge's MQTT side
   keep up while it has CPU left?
4. ``stall`` (``fleet bridge`` only): ``[bridge] send_timeout = --send-timeout``; the mixed consumers
   plus one per transport that stops reading, at 50 % of the mixed ceiling (``--latency-rate`` without
   a mixed phase): the bridge's RSS, its cuts, and the others' latency against a baseline window.

The machine's speed is measured before and after (``support.calibrate``: µs per model step).

Usage::

    .venv/bin/python bench/bridge_scale.py [--json FILE] [--quick] [--bridges fleet,naive] [--phases ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import json
import os
import platform
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import support
from bridge_consumers import TRANSPORTS
from bridge_rig import (
    BRIDGES,
    CLIENT_BOUND_PCT,
    DEVICES,
    HEALTHZ_CAP_S,
    LOADS,
    MOSQUITTO_BIN,
    OVERLOAD_SHARE,
    PAYLOAD_BYTES,
    SATURATED_PCT,
    TASKSET,
    Rig,
    Sample,
    Step,
    _sum,
    node_missing,
    node_version,
    sample_every,
    step_from,
)
from support import BenchError, Proc, fmt

ROOT = Path(__file__).resolve().parent.parent
SHORT = {"websocket": "ws", "sse": "sse", "grpc": "grpc"}
BRIDGE_CORE, CLIENT_CORE = 0, 1
OTHER_CPU_WARN = 25.0
STALL_SETTLE = 1.0  # s after the stall before the others' latency window opens


def mixed_layout(consumers: int) -> list[dict[str, int]]:
    """The mixed phase's consumers, a third per transport (WebSocket takes the remainder): WebSocket and
    SSE in one process, gRPC in another. 100 gives 34 / 33 / 33."""
    third = consumers // 3
    return [{"ws": consumers - 2 * third, "sse": third}, {"grpc": third}]


CARRIED_SHARE = 0.95  # a saturated bridge that carries less than this share of the offered rate: stop

# Acceptance targets (bench/README.md, "bridge scale"): ratios to the machine and to the naive bridge.
TARGET_FAIRNESS = 0.5  # each transport's per-consumer rate >= 0.5 of the best one's, every overloaded step
TARGET_P99_MS = 10.0  # at 50 % of the ceiling, every transport
HALF, NINETY = 0.5, 0.9  # of the ceiling: the latency steps
# No upward drift at 90 %: the fitted line rises by at most 5 ms over the window, plus 25 % of the
# median p99 up to 5 ms more (so 5-10 ms).  A queue that grows without bound rises by
# (1 - capacity / load) seconds per second, 10 ms/s for a 1 % shortfall: 200 ms over a 20 s window.
# A plateau set by queue sizes does not trend; the allowance covers the noise of per-second p99s on
# a shared machine.  It is absolute, not relative: a latency that has grown for minutes has a large
# median, and must not earn a large allowance.
DRIFT_FLOOR_MS, DRIFT_SHARE = 5.0, 0.25
TARGET_NO_COLLAPSE = 0.8  # at 2x the ceiling, deliveries/s >= 0.8 of the ceiling's
TARGET_ACCOUNTED = 0.05  # at 2x: undelivered and not in the bridge's counters <= 5 % of what was due
TARGET_HEALTHZ_MS = 100.0  # max /healthz response time during the 2x step
TARGET_INGEST = 0.99  # received / published while the bridge has CPU left
TARGET_VS_NAIVE = 2.0  # deliveries per bridge CPU-second at the ceiling, fleet / naive (mixed, grpc)
RSS_GROWTH_MB = 20.0  # during the stall phase
RSS_SLOPE_MB_S = 0.1  # over the stall phase's second half
NOISE_FACTOR, NOISE_MS = 1.5, 1.0  # "within noise": p99 <= baseline * 1.5 + 1 ms


def sources_fingerprint() -> dict[str, str]:
    """sha256 of bridges/*.py and bench/naive_bridge.py (others edit them in parallel), git HEAD."""
    digest = hashlib.sha256()
    for path in [*sorted((ROOT / "bridges").glob("*.py")), ROOT / "bench" / "naive_bridge.py"]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    out = {"bridges_sha256": digest.hexdigest()[:12]}
    head = support.git_head("bridges")
    if head is not None:
        out["git_head"] = head
    return out


def listed(consumers: dict[str, int]) -> str:
    return ", ".join(f"{n} {SHORT[t]}" for t, n in consumers.items() if n)


def consumers_of(layout: list[dict[str, int]]) -> dict[str, int]:
    return {
        t: sum(c.get(k, 0) for c in layout)
        for t, k in (("websocket", "ws"), ("sse", "sse"), ("grpc", "grpc"))
    }


def carried(st: Step) -> float:
    """Messages per second the bridge carried to every consumer: deliveries/s over the consumers."""
    n = sum(st.consumers.values())
    return min(st.rate, st.deliveries_per_s / n) if n else 0.0


def shed(st: Step) -> bool:
    """The step is overloaded: queues dropped >= 1 %, or the bridge carried < 95 % of the offer."""
    return st.overloaded or carried(st) < CARRIED_SHARE * st.rate


# --------------------------------------------------------------------------------------------
# The ascent: shared by the mixed, grpc and ingest phases.
# --------------------------------------------------------------------------------------------


@dataclass
class Sweep:
    phase: str
    bridge: str
    consumers: dict[str, int]
    steps: list[Step] = field(default_factory=list)  # the ascent
    ceiling_rate: float | None = None  # msg/s carried with the bridge's core >= 95 % busy
    ceiling_deliveries_per_s: float | None = None
    ceiling_per_cpu_s: float | None = None  # deliveries per bridge CPU-second at the ceiling step
    ceiling_offered: float | None = None  # the offered rate of that step
    invalid: str | None = None  # why no valid ceiling was found: the load generator, or the rates
    failed: str | None = None  # why there is no ceiling: the bridge shed load with its core not full
    published_total: int = 0
    events_in_total: int = 0
    error: str | None = None

    @property
    def ceiling_step(self) -> Step | None:
        return next((s for s in self.steps if s.rate == self.ceiling_offered), None)

    @property
    def best_valid(self) -> Step | None:
        """The step with the most deliveries per bridge CPU-second, the load generator's core < 80 %."""
        valid = [s for s in self.steps if not s.client_bound and s.deliveries_per_cpu_s]
        return max(valid, key=lambda s: s.deliveries_per_cpu_s or 0, default=None)


async def ascend(rig: Rig, sweep: Sweep, rates: list[float]) -> None:
    """Offer `rates` in turn until the saturated bridge no longer carries the offer; set the ceiling."""
    best: Step | None = None
    short = 0  # consecutive steps that carried < 95 % of the offer
    for rate in rates:
        st = await rig.measure(sweep.phase, rate, sweep.consumers)
        sweep.steps.append(st)
        print(step_line(st), flush=True)
        if st.client_bound:
            if best is None:
                sweep.invalid = (
                    f"the load generator's core was {st.loadgen_core_busy_pct:.0f} % busy (>= "
                    f"{CLIENT_BOUND_PCT:.0f} %) at {rate:,.0f} msg/s, the bridge's "
                    f"{st.bridge_core_busy_pct:.0f} %: "
                    f"no step had the bridge's core >= {SATURATED_PCT:.0f} % and the load generator's < "
                    f"{CLIENT_BOUND_PCT:.0f} %"
                )
            break
        if st.saturated and not st.client_bound and (best is None or carried(st) > carried(best)):
            best = st
        short = short + 1 if carried(st) < CARRIED_SHARE * rate else 0
        if (st.saturated and short) or short >= 2:
            break
    if best is None:
        if sweep.invalid is None:
            last = sweep.steps[-1]
            why = (
                f"the bridge's core never reached {SATURATED_PCT:.0f} % with the load generator's under "
                f"{CLIENT_BOUND_PCT:.0f} % (the last step: {last.rate:,.0f} msg/s offered, "
                f"{carried(last):,.0f} carried, the bridge's core {last.bridge_core_busy_pct:.0f} % busy, "
                "the bridge itself "
                f"{last.bridge_cpu_pct:.0f} %)"
            )
            if shed(last):  # it sheds with CPU left: the bridge's fault, not the run's
                sweep.failed = why + ": it shed load with CPU left"
            else:
                sweep.invalid = why + ": add higher rates"
        print(f"  no ceiling: {sweep.failed or sweep.invalid}", flush=True)
        return
    sweep.ceiling_rate = carried(best)
    sweep.ceiling_deliveries_per_s = best.deliveries_per_s
    sweep.ceiling_per_cpu_s = best.deliveries_per_cpu_s
    sweep.ceiling_offered = best.rate
    if sweep.invalid is None and not shed(sweep.steps[-1]):
        print(f"  (the bridge still carried {rates[-1]:,.0f} msg/s: the ceiling may be higher)", flush=True)


async def finish(rig: Rig, sweep: Sweep) -> None:
    sweep.published_total, sweep.events_in_total = await rig.drain()
    lost = sweep.published_total - sweep.events_in_total
    print(
        f"  total: published {sweep.published_total:,}, the bridge received {sweep.events_in_total:,}"
        + (f" ({lost:,} never arrived)" if lost else ""),
        flush=True,
    )


async def run_sweep(
    args: argparse.Namespace,
    workdir: Path,
    phase: str,
    bridge: str,
    layout: list[dict[str, int]],
    rates: list[float],
) -> Sweep:
    sweep = Sweep(phase, bridge, consumers_of(layout))
    print(
        f"\n- {phase}, {bridge} bridge: {listed(sweep.consumers)} consumers; offered up to {rates} msg/s",
        flush=True,
    )
    rig = Rig(args, workdir, f"{phase}-{bridge}", bridge)
    try:
        await rig.start(layout)
        await ascend(rig, sweep, rates)
        await finish(rig, sweep)
    except BenchError as exc:
        sweep.error = str(exc)
        print(f"  ! {exc}", flush=True)
    finally:
        rig.stop()
    return sweep


# --------------------------------------------------------------------------------------------
# The mixed phase: ceiling, latency at 50 % and 90 % of it, overload past twice it.
# --------------------------------------------------------------------------------------------


@dataclass
class Drift:
    """The per-second p99 of one transport over the 90 % window, and its fitted slope."""

    slope_ms_per_s: float | None
    rise_ms: float | None  # slope x window: how much the fitted line rises over the window
    median_p99_ms: float | None
    limit_ms: float | None
    points: list[list[float]]  # [second, p99 ms]


@dataclass
class Mixed:
    sweep: Sweep
    half: Step | None = None
    ninety: Step | None = None
    drift: dict[str, Drift] = field(default_factory=dict)
    overload: list[Step] = field(default_factory=list)


def theil_sen(points: list[tuple[float, float]]) -> float | None:
    """The median of the pairwise slopes: a fitted slope that one spike cannot tilt."""
    slopes = [
        (y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points) for x2, y2 in points[i + 1 :] if x2 != x1
    ]
    return statistics.median(slopes) if slopes else None


def drift_of(st: Step, window_s: float) -> dict[str, Drift]:
    out = {}
    for t, rows in st.timeline.items():
        # Whole seconds only: the first and the last bucket of the window are partial.
        pts = [(r[0], r[2]) for r in rows[1:-1] if r[1] > 0]
        sl = theil_sen(pts)
        med = statistics.median(p for _, p in pts) if pts else None
        limit = None if med is None else DRIFT_FLOOR_MS + min(DRIFT_SHARE * med, DRIFT_FLOOR_MS)
        out[t] = Drift(sl, None if sl is None else sl * window_s, med, limit, [[x, y] for x, y in pts])
    return out


async def run_mixed(args: argparse.Namespace, workdir: Path, bridge: str) -> Mixed:
    layout = mixed_layout(args.consumers)
    sweep = Sweep("mixed", bridge, consumers_of(layout))
    res = Mixed(sweep)
    print(
        f"\n- mixed, {bridge} bridge: {listed(sweep.consumers)} consumers; ascent over {args.rates} msg/s, "
        f"then {HALF:.0%} and {NINETY:.0%} of the ceiling, then {args.overload} x the ceiling",
        flush=True,
    )
    rig = Rig(args, workdir, f"mixed-{bridge}", bridge)
    try:
        await rig.start(layout)
        await ascend(rig, sweep, args.rates)
        await finish(rig, sweep)
    except BenchError as exc:
        sweep.error = str(exc)
        print(f"  ! {exc}", flush=True)
    finally:
        rig.stop()
    ceiling = sweep.ceiling_rate
    if sweep.error or ceiling is None:
        return res
    # A fresh Mosquitto, bridge and consumers: the overloaded end of the ascent leaves a backlog (in
    # Mosquitto, in the bridge) that would otherwise show as latency at 50 % of the ceiling.
    print(
        f"  ceiling: {ceiling:,.0f} msg/s ({sweep.ceiling_deliveries_per_s:,.0f} deliveries/s); "
        "fresh processes for the rest",
        flush=True,
    )
    rig = Rig(args, workdir, f"mixed-{bridge}-2", bridge)
    try:
        await rig.start(layout)
        res.half = await rig.measure(
            "mixed 50%", HALF * ceiling, sweep.consumers, seconds=args.latency_seconds, latency=True
        )
        print(step_line(res.half) + "\n    latency " + latency_line(res.half), flush=True)
        res.ninety = await rig.measure(
            "mixed 90%", NINETY * ceiling, sweep.consumers, seconds=args.drift_seconds, latency=True
        )
        res.drift = drift_of(res.ninety, args.drift_seconds)
        print(step_line(res.ninety) + "\n    latency " + latency_line(res.ninety), flush=True)
        print("    p99 ms per second: " + timeline_line(res.ninety.timeline), flush=True)
        for factor in args.overload:
            st = await rig.measure(
                f"mixed {factor:g}x", factor * ceiling, sweep.consumers, healthz=factor == 2.0
            )
            res.overload.append(st)
            print(step_line(st), flush=True)
        published, events_in = sweep.published_total, sweep.events_in_total
        await finish(rig, sweep)
        sweep.published_total += published
        sweep.events_in_total += events_in
    except BenchError as exc:
        sweep.error = str(exc)
        print(f"  ! {exc}", flush=True)
    finally:
        rig.stop()
    return res


# --------------------------------------------------------------------------------------------
# The stall phase (fleet bridge only).
# --------------------------------------------------------------------------------------------


@dataclass
class StallResult:
    rate: float
    send_timeout: float
    baseline: Step | None = None
    stalled: Step | None = None
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (s since the stall, MB)
    cut_after_s: dict[str, float | None] = field(default_factory=dict)
    queued: dict[str, float] = field(default_factory=dict)  # the stalled consumers' queues at the end
    rss_growth_mb: float | None = None
    rss_slope_mb_s: float | None = None
    normal_closed: dict[str, int] = field(default_factory=dict)
    stalled_read: dict[str, int] = field(default_factory=dict)  # events the stalled ones read after it
    # Established connections the bridge holds at the end, beyond those it had before the stallers
    # came: after the cuts, sockets it still keeps open for the cut consumers.
    sockets_held: dict[str, int] = field(default_factory=dict)
    error: str | None = None


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else None


async def run_stall(args: argparse.Namespace, workdir: Path, rate: float) -> StallResult:
    res = StallResult(rate, args.send_timeout)
    config = workdir / "bridge-stall.toml"
    config.write_text(f"[bridge]\nsend_timeout = {float(args.send_timeout)}\n")
    layout = mixed_layout(args.consumers)
    consumers = consumers_of(layout)
    print(
        f"\n- stall, fleet bridge: {listed(consumers)} consumers, {rate:,.0f} msg/s; then one more per "
        f"transport that stops reading, [bridge] send_timeout = {args.send_timeout:g}",
        flush=True,
    )
    rig = Rig(args, workdir, "stall", "fleet", config)
    try:
        await rig.start(layout)
        res.baseline = await rig.measure(
            "stall baseline", rate, consumers, seconds=args.stall_seconds, latency=True
        )
        print(step_line(res.baseline) + "\n    latency " + latency_line(res.baseline), flush=True)
        # Three more consumers, in a process of their own, read for --stall-lead seconds, then stop.
        held0 = rig.bridge.connections()
        (stallers,) = await rig.add_children([{"stall_ws": 1, "stall_sse": 1, "stall_grpc": 1}])
        await rig.sleep(args.stall_lead)
        before = dict(rig.want)
        await stallers.request("stall")
        t0 = time.perf_counter()
        rss0 = rig.bridge.rss() / 2**20
        res.cut_after_s = dict.fromkeys(TRANSPORTS)
        metrics: dict[str, float] = {}
        a: Sample | None = None
        watch = STALL_SETTLE + args.stall_seconds
        for _ in range(int(watch / 0.5) + 2):
            now = time.perf_counter() - t0
            if now >= watch:
                break
            if a is None and now >= STALL_SETTLE:
                # The others' window opens once the stallers' process has started (it shares the core).
                for child in rig.children[:-1]:
                    await child.request(f"record {sample_every(rate, consumers)}")
                a = await rig.sample()
            await rig.sleep(min(0.5, watch - now))
            now = time.perf_counter() - t0
            res.rss_mb.append((now, rig.bridge.rss() / 2**20))
            metrics = await rig.bridge.metrics()
            for t in TRANSPORTS:
                if res.cut_after_s[t] is None and metrics.get(f"fleet_bridge_consumers:{t}", 0) < before[t]:
                    res.cut_after_s[t] = now
        if a is None:
            raise BenchError("the stall phase ended before its latency window opened")
        b = await rig.sample()
        res.stalled = step_from("stall", rate, consumers, a, b, rig.cores)
        res.normal_closed = _sum(b.snaps, "closed")
        held1 = rig.bridge.connections()
        res.sockets_held = {k: held1.get(k, 0) - held0.get(k, 0) for k in ("http", "grpc")}
        sa, sb = _sum(a.snaps, "stalled_counts"), _sum(b.snaps, "stalled_counts")
        res.stalled_read = {t: sb[t] - sa[t] for t in TRANSPORTS}
        res.queued = {t: metrics.get(f"fleet_bridge_queued_events:{t}", 0.0) for t in TRANSPORTS}
        res.rss_growth_mb = max(mb for _, mb in res.rss_mb) - rss0 if res.rss_mb else None
        res.rss_slope_mb_s = slope([p for p in res.rss_mb if p[0] >= watch / 2])
        print(step_line(res.stalled) + "\n    latency (the others) " + latency_line(res.stalled), flush=True)
        cuts = ", ".join(
            f"{SHORT[t]} {'not cut' if v is None else f'cut after {v:.1f} s'}"
            for t, v in res.cut_after_s.items()
        )
        print(
            f"  stalled consumers: {cuts}; bridge RSS {rss0:.0f} MB at the stall, max "
            f"{rss0 + (res.rss_growth_mb or 0):.0f} MB, slope over the second half "
            f"{fmt(res.rss_slope_mb_s, '+.3f')} MB/s; their hub queues "
            + ", ".join(f"{SHORT[t]} {res.queued[t]:,.0f}" for t in TRANSPORTS)
            + "; events they read after the stall "
            + ", ".join(f"{SHORT[t]} {res.stalled_read[t]:,}" for t in TRANSPORTS)
            + f"; TCP connections the bridge still holds for them: HTTP {res.sockets_held.get('http')}, "
            f"gRPC {res.sockets_held.get('grpc')}",
            flush=True,
        )
    except BenchError as exc:
        res.error = str(exc)
        print(f"  ! {exc}", flush=True)
    finally:
        rig.stop()
    return res


# --------------------------------------------------------------------------------------------
# Lines and tables.
# --------------------------------------------------------------------------------------------


def step_line(st: Step) -> str:
    rec = " / ".join(f"{SHORT[t]} {st.per_consumer_per_s[t]:,.0f}" for t in TRANSPORTS if st.consumers.get(t))
    marks = (
        (" SATURATED" if st.saturated else "")
        + (" OVERLOADED" if shed(st) else "")
        + (" LOADGEN-BOUND" if st.client_bound else "")
    )
    health = f", /healthz max {max(st.healthz_ms):.0f} ms" if st.healthz_ms else ""
    return (
        f"  {st.phase} {st.rate:>7,.0f} msg/s: in {st.events_in_per_s:,.0f}/s "
        f"({fmt(st.ingest_ratio and 100 * st.ingest_ratio, '.1f')} %), "
        f"delivered {st.deliveries_per_s:,.0f}/s (per consumer {rec}), "
        f"dropped {sum(st.drops_per_s.values()):,.0f}/s, bridge {st.bridge_cpu_pct:.0f} % "
        f"(its core {st.bridge_core_busy_pct:.0f} %), {fmt(st.deliveries_per_cpu_s, ',.0f')} per CPU-s, load "
        f"generator {st.client_core_pct:.0f} % (its core {st.loadgen_core_busy_pct:.0f} %; consumers "
        f"{fmt(st.consumers_us_per_delivery, '.1f')} µs a delivery), other "
        f"{st.other_cpu_pct:.0f} %, RSS {st.bridge_rss_mb:.0f} MB{health}{marks}"
    )


def latency_line(st: Step) -> str:
    parts = []
    for t in TRANSPORTS:
        v, o, i = st.latency_ms.get(t), st.latency_out_ms.get(t), st.latency_in_ms.get(t)
        if v and o and i:
            parts.append(
                f"{SHORT[t]} p50 {v['p50']:.1f} / p99 {v['p99']:.1f} / max {v['max']:.1f} ms "
                f"(to the bridge p99 {i['p99']:.1f}, from it {o['p99']:.1f}; n {v['n']:,})"
            )
    return "; ".join(parts) or "no samples"


def timeline_line(timeline: dict[str, list[list[float]]]) -> str:
    return "; ".join(f"{SHORT[t]} " + " ".join(f"{r[2]:.0f}" for r in rows) for t, rows in timeline.items())


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join([line, sep, *body])


def steps_table(steps: list[Step]) -> str:
    ts = [t for t in TRANSPORTS if steps[0].consumers.get(t)]
    rows = []
    for st in steps:
        flags = (("S", st.saturated), ("O", shed(st)), ("L", st.client_bound))
        rows.append(
            [
                st.phase,
                f"{st.rate:,.0f}",
                fmt(st.ingest_ratio and 100 * st.ingest_ratio, ".1f"),
                f"{st.deliveries_per_s:,.0f}",
                " / ".join(f"{st.per_consumer_per_s[t]:,.0f}" for t in ts),
                f"{sum(st.drops_per_s.values()):,.0f}",
                f"{st.bridge_cpu_pct:.0f} / {st.bridge_core_busy_pct:.0f}",
                fmt(st.deliveries_per_cpu_s, ",.0f"),
                f"{st.client_core_pct:.0f} / {st.loadgen_core_busy_pct:.0f}",
                f"{st.other_cpu_pct:.0f}",
                " / ".join(fmt(st.latency_ms.get(t, {}).get("p99"), ".1f") for t in ts),
                "".join(m for m, on in flags if on),
            ]
        )
    return table(
        [
            "step",
            "offered msg/s",
            "in %",
            "delivered/s",
            "per consumer/s " + " / ".join(SHORT[t] for t in ts),
            "dropped/s",
            "bridge / its core %",
            "deliv/CPU-s",
            "loadgen / its core %",
            "other%",
            "p99 ms",
            "",
        ],
        rows,
    )


# --------------------------------------------------------------------------------------------
# Verdicts: one line per target, marked PASS, FAIL, INVALID or n/a.
# --------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    target: str
    mark: str  # PASS, FAIL, INVALID, n/a, info
    text: str

    def line(self) -> str:
        return f"[{self.mark:>7}] {self.target}: {self.text}"


def ok_mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def overloaded_steps(mx: Mixed) -> list[Step]:
    return [s for s in [*mx.sweep.steps, *mx.overload] if shed(s)]


def step_at(mx: Mixed, factor: float) -> Step | None:
    return next((s for s in mx.overload if s.phase == f"mixed {factor:g}x"), None)


def mixed_verdicts(mx: Mixed, naive: Mixed | None) -> list[Verdict]:
    sw, out = mx.sweep, []
    if sw.error:
        return [Verdict("mixed", "FAIL", f"the phase failed: {sw.error}")]
    if sw.failed is not None:
        return [Verdict("ceiling", "FAIL", sw.failed)]
    if sw.invalid is not None or sw.ceiling_rate is None:
        return [Verdict("ceiling", "INVALID", sw.invalid or "no ceiling")]
    top = sw.ceiling_step
    assert top is not None
    nv = naive.sweep if naive is not None and naive.sweep.ceiling_rate else None
    vs = (
        f"; naive {nv.ceiling_rate:,.0f} msg/s, {nv.ceiling_deliveries_per_s:,.0f}/s, "
        f"{fmt(nv.ceiling_per_cpu_s, ',.0f')} per CPU-s"
        if nv is not None and nv.ceiling_deliveries_per_s is not None
        else ""
    )
    out.append(
        Verdict(
            "ceiling",
            "info",
            f"{sw.ceiling_rate:,.0f} msg/s carried ({sw.ceiling_deliveries_per_s:,.0f} deliveries/s, "
            f"{fmt(sw.ceiling_per_cpu_s, ',.0f')} per bridge CPU-s), its core "
            f"{top.bridge_core_busy_pct:.0f} % busy, "
            f"load generator {top.client_core_pct:.0f} %{vs}",
        )
    )
    if nv is not None:
        r = ratio(sw.ceiling_per_cpu_s, nv.ceiling_per_cpu_s)
        out.append(
            Verdict(
                "mixed deliveries per CPU-s vs naive",
                ok_mark(r is not None and r >= TARGET_VS_NAIVE),
                f">= {TARGET_VS_NAIVE:g}x: {fmt(r, '.2f')}x; "
                f"ceiling {fmt(ratio(sw.ceiling_rate, nv.ceiling_rate), '.2f')}x",
            )
        )
    # 1. Fairness at every overloaded step (those where the load generator was the limit aside).
    over = overloaded_steps(mx)
    judged = [s for s in over if not s.client_bound]
    bad = [s for s in judged if s.fairness is None or s.fairness < TARGET_FAIRNESS]
    worst = min(judged, key=lambda s: s.fairness or 0, default=None)
    shown = (
        ""
        if worst is None
        else f"; least fair {worst.phase} at {worst.rate:,.0f} msg/s: "
        + ", ".join(f"{SHORT[t]} {v:,.0f}" for t, v in worst.per_consumer_per_s.items())
        + f" per consumer/s, min/max {fmt(worst.fairness, '.2f')}"
    )
    aside = len(over) - len(judged)
    out.append(
        Verdict(
            "fairness at overload",
            "INVALID" if not judged else ok_mark(not bad),
            f"each transport >= {TARGET_FAIRNESS:g} of the best per consumer, in every overloaded step: "
            f"{len(judged) - len(bad)} of {len(judged)} pass{shown}"
            + (
                f"; {aside} left aside, the load generator's core >= {CLIENT_BOUND_PCT:.0f} %"
                if aside
                else ""
            )
            + ("; no step overloaded: the bridge carried even 2.5x its ceiling" if not over else ""),
        )
    )
    # 3. Latency at 50 % and drift at 90 %.
    if mx.half is not None:
        p99 = {t: mx.half.latency_ms.get(t, {}).get("p99") for t in TRANSPORTS}
        good = all(v is not None and v <= TARGET_P99_MS for v in p99.values())
        nvh = naive.half if naive is not None else None
        out.append(
            Verdict(
                f"p99 at {HALF:.0%} of the ceiling",
                ok_mark(good),
                f"<= {TARGET_P99_MS:g} ms every transport at {mx.half.rate:,.0f} msg/s: "
                + ", ".join(f"{SHORT[t]} {fmt(v, '.1f')}" for t, v in p99.items())
                + " ms"
                + (
                    "; naive at its own 50 %: "
                    + ", ".join(
                        f"{SHORT[t]} {fmt(nvh.latency_ms.get(t, {}).get('p99'), '.1f')}" for t in TRANSPORTS
                    )
                    if nvh is not None
                    else ""
                ),
            )
        )
        low, high = mx.half.deliveries_per_cpu_s, sw.ceiling_per_cpu_s
        out.append(
            Verdict(
                "cost at 50 % vs at the ceiling",
                "info",
                f"{fmt(low and 1e6 / low, '.1f')} vs {fmt(high and 1e6 / high, '.1f')} µs of bridge CPU per "
                f"delivery ({fmt(ratio(high, low), '.2f')}x)",
            )
        )
    if mx.ninety is not None:
        rising = [
            t
            for t, d in mx.drift.items()
            if d.rise_ms is None or d.limit_ms is None or d.rise_ms > d.limit_ms
        ]
        missing = [t for t in TRANSPORTS if t not in mx.drift]
        out.append(
            Verdict(
                f"no drift at {NINETY:.0%} of the ceiling",
                ok_mark(not rising and not missing),
                f"p99 rise over {mx.ninety.window_s:.0f} s <= "
                f"{DRIFT_FLOOR_MS:g} ms + min({DRIFT_SHARE:.0%} of the median p99, {DRIFT_FLOOR_MS:g} ms) "
                f"at {mx.ninety.rate:,.0f} msg/s: "
                + ", ".join(
                    f"{SHORT[t]} {fmt(d.slope_ms_per_s, '+.2f')} ms/s = {fmt(d.rise_ms, '+.1f')} ms "
                    f"(median {fmt(d.median_p99_ms, '.1f')}, limit {fmt(d.limit_ms, '.1f')})"
                    for t, d in mx.drift.items()
                )
                + (f"; no samples from {', '.join(missing)}" if missing else ""),
            )
        )
    # 4. No collapse at 2x.
    two = step_at(mx, 2.0)
    if two is not None and sw.ceiling_deliveries_per_s:
        share = two.deliveries_per_s / sw.ceiling_deliveries_per_s
        lg = f"; load generator {two.client_core_pct:.0f} %" if two.client_bound else ""
        out.append(
            Verdict(
                "no collapse at 2x",
                "INVALID" if two.client_bound else ok_mark(share >= TARGET_NO_COLLAPSE),
                f"deliveries >= {TARGET_NO_COLLAPSE:.0%} of the ceiling's: {two.deliveries_per_s:,.0f}/s = "
                f"{share:.0%} at {two.rate:,.0f} msg/s{lg}",
            )
        )
        # The bridge's counters: queue drops, which include the messages its intake shed (one drop
        # for every consumer each was for), and the change of its queues.
        due = two.published_per_s * sum(two.consumers.values())
        drops = sum(two.drops_per_s.values())
        unaccounted = due - two.deliveries_per_s - drops - two.queued_change / max(two.window_s, 1e-9)
        out.append(
            Verdict(
                "shed and counted at 2x",
                ok_mark(due > 0 and unaccounted <= TARGET_ACCOUNTED * due),
                f"undelivered and not in the bridge's counters <= {TARGET_ACCOUNTED:.0%} "
                "of the deliveries due: "
                f"{100 * unaccounted / due if due else 0:.1f} % (per s: due {due:,.0f}, delivered "
                f"{two.deliveries_per_s:,.0f}, dropped {drops:,.0f}); MQTT intake per s: "
                f"published {two.published_per_s:,.0f}, received by the bridge {two.events_in_per_s:,.0f} "
                f"(of which shed {two.intake_shed_per_s:,.0f}), "
                f"dropped by Mosquitto {fmt(two.mosquitto_dropped_per_s, ',.0f')}",
            )
        )
        h = two.healthz_ms
        out.append(
            Verdict(
                "/healthz at 2x",
                ok_mark(bool(h) and max(h) < TARGET_HEALTHZ_MS),
                f"max response < {TARGET_HEALTHZ_MS:g} ms: "
                + (
                    f"max {max(h):.0f} ms, median {statistics.median(h):.1f} ms over {len(h)} probes"
                    + (
                        f" ({sum(x >= 1000 * HEALTHZ_CAP_S for x in h)} unanswered)"
                        if max(h) >= 1000 * HEALTHZ_CAP_S
                        else ""
                    )
                    if h
                    else "no probes"
                ),
            )
        )
    return out


def ingest_verdict(sweeps: list[Sweep]) -> Verdict | None:
    checked = [s for sw in sweeps for s in sw.steps if not s.saturated and s.ingest_ratio is not None]
    if not checked:
        return None
    worst = min(checked, key=lambda s: s.ingest_ratio or 0)
    return Verdict(
        "ingest with CPU left",
        ok_mark((worst.ingest_ratio or 0) >= TARGET_INGEST),
        f"received >= {TARGET_INGEST:.0%} of published while the bridge's core < {SATURATED_PCT:.0f} %, "
        f"{len(checked)} steps; worst {100 * (worst.ingest_ratio or 0):.1f} % "
        f"({worst.phase} at {worst.rate:,.0f} "
        f"msg/s, bridge {worst.bridge_cpu_pct:.0f} %)",
    )


def grpc_verdict(fleet: Sweep, naive: Sweep | None) -> Verdict:
    """100 gRPC readers load their core more than the bridge's (grpc.aio costs a reader more per
    message than the bridge per event): judged at the best step of each with the load generator's
    core < 80 %, saturated or not."""
    title = "grpc deliveries per CPU-s vs naive"
    mine = fleet.best_valid
    if fleet.error or mine is None:
        why = fleet.error or "no step with the load generator < 80 %"
        return Verdict(title, "FAIL" if fleet.error else "INVALID", why)
    theirs = naive.best_valid if naive is not None else None
    if theirs is None:
        return Verdict(
            title, "n/a", f"{mine.deliveries_per_cpu_s:,.0f} at {mine.rate:,.0f} msg/s; no naive step"
        )
    r = ratio(mine.deliveries_per_cpu_s, theirs.deliveries_per_cpu_s) or 0.0
    return Verdict(
        title,
        ok_mark(r >= TARGET_VS_NAIVE),
        f">= {TARGET_VS_NAIVE:g}x at the best step of each with the load generator "
        f"< {CLIENT_BOUND_PCT:.0f} %: "
        f"{r:.2f}x ({mine.deliveries_per_cpu_s:,.0f} at {mine.rate:,.0f} msg/s, bridge core "
        f"{mine.bridge_core_busy_pct:.0f} %, vs {theirs.deliveries_per_cpu_s:,.0f} at {theirs.rate:,.0f}, "
        f"{theirs.bridge_core_busy_pct:.0f} %)",
    )


def stall_verdicts(stall: StallResult) -> list[Verdict]:
    if stall.error or stall.baseline is None or stall.stalled is None:
        return [Verdict("stall", "FAIL", f"the phase failed: {stall.error}")]
    out = []
    grew, sl = stall.rss_growth_mb, stall.rss_slope_mb_s
    out.append(
        Verdict(
            "stall: RSS bounded",
            ok_mark(grew is not None and grew <= RSS_GROWTH_MB and (sl is None or sl <= RSS_SLOPE_MB_S)),
            f"growth <= {RSS_GROWTH_MB:g} MB, second-half slope <= {RSS_SLOPE_MB_S} MB/s: "
            f"+{fmt(grew, '.1f')} MB, "
            f"{fmt(sl, '+.3f')} MB/s",
        )
    )
    for t in TRANSPORTS:
        cut = stall.cut_after_s.get(t)
        out.append(
            Verdict(
                f"stall: the stalled {SHORT[t]} consumer is cut",
                ok_mark(cut is not None),
                ("not cut" if cut is None else f"after {cut:.1f} s")
                + f" (send_timeout {stall.send_timeout:g} s)",
            )
        )
    base, during = stall.baseline.latency_ms, stall.stalled.latency_ms
    parts, good = [], True
    for t in TRANSPORTS:
        p0, p1 = base.get(t, {}).get("p99"), during.get(t, {}).get("p99")
        good = good and p0 is not None and p1 is not None and p1 <= p0 * NOISE_FACTOR + NOISE_MS
        parts.append(f"{SHORT[t]} {fmt(p0, '.1f')} -> {fmt(p1, '.1f')}")
    closed = sum(stall.normal_closed.values())
    out.append(
        Verdict(
            "stall: the others unaffected",
            ok_mark(good and closed == 0),
            f"p99 within {NOISE_FACTOR}x + {NOISE_MS:g} ms of the baseline, none cut: "
            f"{', '.join(parts)} ms; {closed} cut",
        )
    )
    return out


def load_generator(args: argparse.Namespace) -> dict[str, str | None]:
    """Which consumer children the run used, and why (the report and the JSON say it)."""
    if args.load == "node":
        text = (
            f"consumers in Node.js {args.node_version} (bench/bridge_consumers.mjs; {args.load_why}), "
            "the stall phase's stalling ones in Python"
        )
    else:
        text = f"consumers in Python (bench/bridge_consumers.py; {args.load_why})"
    return {"runtime": args.load, "node": args.node_version, "why": args.load_why, "text": text}


@dataclass
class Results:
    load: dict[str, str | None] = field(default_factory=dict)  # load_generator()
    calibration: list[dict[str, float]] = field(default_factory=list)
    mixed: dict[str, Mixed] = field(default_factory=dict)
    sweeps: dict[str, dict[str, Sweep]] = field(default_factory=dict)  # phase -> bridge -> sweep
    stall: StallResult | None = None
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)


def verdicts(res: Results) -> dict[str, list[Verdict]]:
    """Per bridge: the fleet bridge's are the targets; the naive bridge's are its figures."""
    out: dict[str, list[Verdict]] = {}
    for bridge in BRIDGES:
        vs: list[Verdict] = []
        other = res.mixed.get("naive") if bridge == "fleet" else None
        if bridge in res.mixed:
            vs += mixed_verdicts(res.mixed[bridge], other)
        grpc = res.sweeps.get("grpc", {})
        if bridge == "fleet" and "fleet" in grpc:
            vs.append(grpc_verdict(grpc["fleet"], grpc.get("naive")))
        own = [sw for phase in res.sweeps.values() for b, sw in phase.items() if b == bridge]
        own += [res.mixed[bridge].sweep] if bridge in res.mixed else []
        ing = ingest_verdict(own)
        if ing is not None:
            vs.append(ing)
        if bridge == "fleet" and res.stall is not None:
            vs += stall_verdicts(res.stall)
        for phase, by in res.sweeps.items():
            sw = by.get(bridge)
            if sw is not None and sw.error and phase != "grpc":  # grpc_verdict names its error
                vs.append(Verdict(phase, "FAIL", f"the phase failed: {sw.error}"))
        if vs:
            out[bridge] = vs
    return out


def overall(vs: list[Verdict]) -> str:
    marks = {v.mark for v in vs}
    if "INVALID" in marks:
        return "INVALID"
    if "FAIL" in marks:
        return "FAIL"
    return "PASS" if "PASS" in marks else "n/a"


def report(res: Results) -> str:
    out = []
    for bridge, mx in res.mixed.items():
        steps = [*mx.sweep.steps, *(s for s in (mx.half, mx.ninety) if s), *mx.overload]
        if steps:
            out += [
                f"\nmixed, {bridge} bridge (S = the bridge's core >= {SATURATED_PCT:.0f} %, "
                f"O = overloaded: queues dropped >= {OVERLOAD_SHARE:.0%} or it carried < "
                f"{CARRIED_SHARE:.0%} of the offer, L = load generator >= "
                f"{CLIENT_BOUND_PCT:.0f} %: the step is invalid)",
                steps_table(steps),
            ]
    for phase, by in res.sweeps.items():
        for bridge, sw in by.items():
            if sw.steps:
                out += [f"\n{phase}, {bridge} bridge", steps_table(sw.steps)]
    if res.load:
        out.append(f"\nload generator: {res.load['text']}")
    cal = res.calibration
    if cal:
        out.append(
            "\nmachine speed: "
            + ", ".join(f"{c['us_per_model_step']:.2f}" for c in cal)
            + " µs per model step (before, after); load average "
            + " ".join(f"{x:.2f}" for x in res.load_before)
            + " before, "
            + " ".join(f"{x:.2f}" for x in res.load_after)
            + " after"
        )
    table_of = verdicts(res)
    for bridge, vs in table_of.items():
        title = "acceptance targets, fleet bridge" if bridge == "fleet" else "the naive bridge, for reference"
        out.append(f"\n{title}:")
        out += ["  " + v.line() for v in vs]
    if "fleet" in table_of:
        out.append(f"\nRESULT: {overall(table_of['fleet'])}")
    busy = [f"{s.phase}@{s.rate:,.0f}" for s in all_steps(res) if s.other_cpu_pct > OTHER_CPU_WARN]
    if busy:
        out.append(
            f"\nWARNING: other processes used > {OTHER_CPU_WARN:.0f} % of a core during {len(busy)} steps "
            f"({', '.join(busy[:8])}{', ...' if len(busy) > 8 else ''}): those figures are disturbed."
        )
    return "\n".join(out)


def all_steps(res: Results) -> list[Step]:
    steps: list[Step] = []
    for mx in res.mixed.values():
        steps += [*mx.sweep.steps, *(s for s in (mx.half, mx.ninety) if s), *mx.overload]
    for by in res.sweeps.values():
        for sw in by.values():
            steps += sw.steps
    if res.stall is not None:
        steps += [s for s in (res.stall.baseline, res.stall.stalled) if s]
    return steps


# --------------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------------

PHASES = ("mixed", "grpc", "ingest", "stall")
QUICK = {
    "seconds": 2.0,
    "warmup": 1.0,
    "latency_seconds": 3.0,
    "drift_seconds": 6.0,
    "stall_seconds": 4.0,
    "prefill": 2000,
    "rates": "200,500,1000,2000,4000,8000",
    "grpc_rates": "100,300,1000,3000",
    "ingest_rates": "2000,10000,20000",
}


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    p.add_argument(
        "--quick", action="store_true", help=f"a smoke test: short windows, coarse steps ({QUICK})"
    )
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {','.join(PHASES)}")
    p.add_argument("--bridges", default=",".join(BRIDGES), help="comma-separated, of fleet,naive")
    p.add_argument(
        "--consumers",
        type=int,
        default=100,
        help="mixed and stall: consumers, a third per transport (fewer if they fill the load generator)",
    )
    p.add_argument("--seconds", type=float, default=5.0, help="measurement window of each ascent step (s)")
    p.add_argument("--warmup", type=float, default=2.0, help="load before each window opens (s)")
    p.add_argument(
        "--rates", default="100,200,400,700,1000,1500,2200,3200,4500,6400", help="mixed: ascent, msg/s"
    )
    p.add_argument("--grpc-rates", default="100,200,400,700,1000,1400,2000,2800", help="grpc: ascent, msg/s")
    p.add_argument(
        "--ingest-rates", default="2000,5000,10000,15000,20000,30000", help="ingest: ascent, msg/s"
    )
    p.add_argument(
        "--overload", default="1.5,2,2.5", help="mixed: overload steps, x the ceiling (2 is judged)"
    )
    p.add_argument("--latency-seconds", type=float, default=10.0, help="window at 50 %% of the ceiling (s)")
    p.add_argument("--drift-seconds", type=float, default=20.0, help="window at 90 %% of the ceiling (s)")
    p.add_argument("--latency-rate", type=float, default=300.0, help="stall: msg/s without a mixed ceiling")
    p.add_argument("--send-timeout", type=float, default=2.0, help="[bridge] send_timeout in the stall phase")
    p.add_argument(
        "--stall-seconds", type=float, default=10.0, help="stall: baseline and stalled windows (s)"
    )
    p.add_argument(
        "--stall-lead", type=float, default=0.0, help="the stalling consumers read this long first"
    )
    p.add_argument("--prefill", type=int, default=12_000, help="messages that fill the ring first (0: none)")
    p.add_argument(
        "--ready-timeout", type=float, default=30.0, help="cap on Mosquitto's / the bridge's start"
    )
    p.add_argument("--connect-timeout", type=float, default=30.0, help="cap on connecting the consumers")
    p.add_argument("--no-pin", action="store_true", help="do not pin the bridge and the clients to cores")
    p.add_argument(
        "--bridge-python",
        default=sys.executable,
        help="interpreter that runs the bridges (e.g. a venv with uvloop/httptools, to measure them)",
    )
    p.add_argument(
        "--load",
        choices=("auto", *LOADS),
        default="auto",
        help="the consumer children's runtime: node (bench/bridge_consumers.mjs, cheaper a delivery, so "
        "that the bridge's core fills first) or python (bench/bridge_consumers.py); auto: node when it "
        "and tests/node's packages are installed. Consumers that stall are Python in any case",
    )
    p.add_argument("--log-dir", type=Path, help="keep logs and configs here (default: a temp dir)")
    p.add_argument(
        "--judge-by",
        choices=("cores", "processes"),
        default="cores",
        help="busy = the whole pinned cores (the targets' definition), or only this bench's processes "
        "on them (a shared machine, during development: not for the official figures)",
    )
    given = {
        a.split("=")[0].lstrip("-").replace("-", "_") for a in (argv if argv is not None else sys.argv[1:])
    }
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if key not in given:
                setattr(args, key, value)
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    bad = [x for x in args.phases if x not in PHASES]
    if bad or not args.phases:
        p.error(f"--phases: unknown {bad}; known: {list(PHASES)}")
    args.bridges = [x.strip() for x in args.bridges.split(",") if x.strip()]
    bad = [x for x in args.bridges if x not in BRIDGES]
    if bad or not args.bridges:
        p.error(f"--bridges: unknown {bad}; known: {list(BRIDGES)}")
    try:
        args.rates, args.grpc_rates, args.ingest_rates, args.overload = (
            floats(args.rates),
            floats(args.grpc_rates),
            floats(args.ingest_rates),
            floats(args.overload),
        )
    except ValueError as exc:
        p.error(f"rates: {exc}")
    if not (args.rates and args.grpc_rates and args.ingest_rates):
        p.error("--rates, --grpc-rates and --ingest-rates need at least one rate each")
    if (
        min(args.seconds, args.send_timeout, args.stall_seconds, args.latency_seconds, args.drift_seconds)
        <= 0
    ):
        p.error(
            "--seconds, --latency-seconds, --drift-seconds, --send-timeout and --stall-seconds "
            "must be positive"
        )
    if not Path(MOSQUITTO_BIN).exists():
        p.error(f"mosquitto not found at {MOSQUITTO_BIN} (apt-get install mosquitto)")
    args.node_version = node_version() if args.load != "python" else None
    missing = node_missing(args.node_version) if args.load != "python" else None
    if missing and args.load == "node":
        p.error(f"--load node: {missing}")
    if missing:
        args.load_why = f"--load auto, and {missing}"
    elif args.load == "auto":
        args.load_why = "--load auto: node and tests/node's packages are installed"
    else:
        args.load_why = f"--load {args.load}"
    args.load = "python" if args.load == "python" or missing else "node"
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    args.bridge_core = BRIDGE_CORE if pin else None
    args.client_core = CLIENT_CORE if pin else None
    # A consumer child lives through one phase: bound it generously but finitely.
    steps = max(len(args.rates), len(args.grpc_rates), len(args.ingest_rates)) + len(args.overload)
    args.child_deadline = (
        120
        + steps * (args.warmup + args.seconds + 5)
        + args.latency_seconds
        + args.drift_seconds
        + 2 * args.stall_seconds
    )
    return args


async def amain(args: argparse.Namespace, res: Results) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.ExitStack() as stack:
        workdir = support.workdir(stack, args.log_dir, "bridge_scale-")
        for phase in args.phases:
            for bridge in args.bridges:
                if phase == "mixed":
                    res.mixed[bridge] = await run_mixed(args, workdir, bridge)
                elif phase == "grpc":
                    sw = await run_sweep(
                        args, workdir, phase, bridge, [{"grpc": 50}, {"grpc": 50}], args.grpc_rates
                    )
                    res.sweeps.setdefault(phase, {})[bridge] = sw
                elif phase == "ingest":
                    sw = await run_sweep(
                        args, workdir, phase, bridge, [{"ws": 1, "sse": 1, "grpc": 1}], args.ingest_rates
                    )
                    res.sweeps.setdefault(phase, {})[bridge] = sw
                elif phase == "stall" and bridge == "fleet":
                    fleet = res.mixed.get("fleet")
                    ceiling = fleet.sweep.ceiling_rate if fleet is not None else None
                    rate = HALF * ceiling if ceiling else args.latency_rate
                    res.stall = await run_stall(args, workdir, rate)


def to_json(
    res: Results, args: argparse.Namespace, started: datetime.datetime, command: str, source: dict[str, str]
) -> dict[str, Any]:
    table_of = verdicts(res)
    return {
        **support.run_record(started, command, args),
        "source": source,
        "load_generator": res.load,
        "calibration": res.calibration,
        "load_average": {"before": res.load_before, "after": res.load_after},
        "targets": {
            "saturated_pct": SATURATED_PCT,
            "loadgen_max_pct": CLIENT_BOUND_PCT,
            "carried_share": CARRIED_SHARE,
            "fairness": TARGET_FAIRNESS,
            "p99_ms_at_half": TARGET_P99_MS,
            "drift_floor_ms": DRIFT_FLOOR_MS,
            "drift_share": DRIFT_SHARE,
            "no_collapse_at_2x": TARGET_NO_COLLAPSE,
            "unaccounted_at_2x": TARGET_ACCOUNTED,
            "healthz_ms_at_2x": TARGET_HEALTHZ_MS,
            "ingest": TARGET_INGEST,
            "vs_naive_per_cpu_s": TARGET_VS_NAIVE,
            "stall_rss_growth_mb": RSS_GROWTH_MB,
            "stall_rss_slope_mb_s": RSS_SLOPE_MB_S,
        },
        "result": overall(table_of["fleet"]) if "fleet" in table_of else None,
        "verdicts": {b: [asdict(v) for v in vs] for b, vs in table_of.items()},
        "mixed": {b: asdict(m) for b, m in res.mixed.items()},
        "sweeps": {p: {b: asdict(s) for b, s in by.items()} for p, by in res.sweeps.items()},
        "stall": asdict(res.stall) if res.stall else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.client_core is not None:
        os.sched_setaffinity(0, {args.client_core})  # the publisher shares the load generator's core
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.monotonic()
    command = " ".join(
        [".venv/bin/python", "bench/bridge_scale.py", *(argv if argv is not None else sys.argv[1:])]
    )
    source = sources_fingerprint()
    res = Results(load=load_generator(args), load_before=[round(x, 2) for x in os.getloadavg()])
    res.calibration.append(support.calibrate())
    print(f"bridge_scale {started:%Y-%m-%d %H:%M} UTC: {command}")
    pins = (
        f"bridges on core {args.bridge_core} ({'taskset' if TASKSET else 'not pinned: no taskset'}), "
        f"consumers, publisher and Mosquitto on core {args.client_core}"
        if args.bridge_core is not None
        else "nothing pinned"
    )
    print(
        f"  {os.cpu_count()} CPUs, Python {platform.python_version()}, {pins}; "
        f"payload {PAYLOAD_BYTES} B JSON, QoS 0, "
        f"{DEVICES} device topics; window {args.seconds:g} s after {args.warmup:g} s warm-up; "
        f"{res.calibration[0]['us_per_model_step']:.2f} µs per model step; load average "
        + " ".join(f"{x:.2f}" for x in res.load_before)
    )
    print(f"  bridges sha256 {source['bridges_sha256']}, git {source.get('git_head', '?')}")
    print(f"  load generator: {res.load['text']}")
    try:
        asyncio.run(amain(args, res))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted: every process stopped; NOT a result", file=sys.stderr)
        print("results so far:" + report(res))
        return 130
    finally:
        for proc in list(Proc.LIVE):  # last resort: whatever a phase could not stop itself
            proc.stop()
    res.calibration.append(support.calibrate())
    res.load_after = [round(x, 2) for x in os.getloadavg()]
    print(report(res))
    print(f"\nthe run took {time.monotonic() - t0:.0f} s")
    after = sources_fingerprint()["bridges_sha256"]
    changed = after != source["bridges_sha256"]
    if changed:
        print(
            f"\nWARNING: the bridges' sources changed during the run ({source['bridges_sha256']} -> {after})"
        )
    if args.json:
        doc = to_json(res, args, started, command, source)
        doc["duration_s"] = round(time.monotonic() - t0, 1)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    errors = (
        any(m.sweep.error for m in res.mixed.values())
        or any(sw.error for by in res.sweeps.values() for sw in by.values())
        or (res.stall is not None and res.stall.error is not None)
    )
    if errors or changed:
        return 1
    table_of = verdicts(res)
    return 0 if "fleet" not in table_of or overall(table_of["fleet"]) in ("PASS", "n/a") else 2


if __name__ == "__main__":
    sys.exit(main())
