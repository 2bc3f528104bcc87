"""Bridge profile: where `fleet bridge`'s event loop spends its turns, under the bench's own load.

It runs `fleet bridge` pinned to core 0 with instruments in its event loop, against Mosquitto and the
consumers of `bench/bridge_scale.py` (`bench/bridge_rig.py`) on core 1, offers each rate of
`--rates` in turn, and prints per step:

- **deliv/s, µs/deliv**: deliveries the consumers read per second, and bridge CPU (every thread) per
  delivery: a cost that rises as load falls shows here;
- **turns/s, turn p50/p99/max**: event-loop turns (`_run_once`) per second, and how long a turn's
  callbacks took (the lag that a callback made ready in one turn waits before the next runs);
- **idle %**: the share of the window the loop spent waiting in its selector;
- **gRPC write p50/p99/max (turns, ms)**: from the moment a `Subscribe` stream hands grpc a message
  to the moment grpc asks for the next one, or from the fan-out's write (`_sink`) to its completion:
  the completion delay of a gRPC write, in loop turns and ms;
- **wake-up bytes**: bytes left unread in grpc.aio's completion-queue wake-up socket at the start of a
  turn (mean and max): each is one more `_handle_events` call on a later turn;
- **ingest/turn max, reads/turn max**: the most MQTT messages ingested, and reads of the MQTT
  socket, in a single turn (a turn that ingests for seconds is receive livelock);
- **shed/s**: messages the bridge's intake shed (`fleet_bridge_shed_total`);
- a second line: of **the µs a delivery, in the kernel** (the process's system time: system calls,
  and the loopback network stack they run); and **the fan-out's writes per s**: per transport, the
  writes of the fan-out through the consumers' sinks (`Consumer.write_due`), and the writers it woke
  instead (a sink refused, or a notice was queued); a transport with none is written by its woken
  writers, in rounds.

    .venv/bin/python bench/bridge_profile.py [--rates 300,1500,6000] [--seconds 5] [--json FILE]
    .venv/bin/python bench/bridge_profile.py --layout grpc=100 --cprofile /tmp/bridge.prof
    .venv/bin/python bench/bridge_profile.py --layout grpc=90 --rates 50 --syscalls
    .venv/bin/python bench/bridge_profile.py --load python   # the consumers in Python, as before

`--syscalls` also counts, with `perf stat` over each window, the system calls and context switches
of each of the bridge's threads per delivery: the loop's, grpc.aio's poller thread (which waits on
grpc's completion queue and writes a wake-up byte per completion) and grpc's own threads. It needs
`perf` and access to the kernel's syscall tracepoints (root, or a low `perf_event_paranoid`).

`--cprofile FILE` also runs cProfile on the bridge's event-loop thread and writes its stats to FILE
(read them with `python -m pstats FILE`, then `sort tottime`, `stats 30`). The instruments themselves
cost about 1 µs a turn and a few per gRPC write: compare µs/deliv between runs of this tool, and
with `bench/bridge_scale.py` for absolute figures.

Internally the same script is the bridge (`serve`): it patches the loop's `_run_once` and the
selector's `select`, wraps `FleetBridgeServicer.Subscribe` and `_sink` (a write from the fan-out),
counts `Hub.ingest` and the MQTT socket's
reads, then runs `fleet bridge`; a thread writes the counters to a JSON file every 0.2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import fcntl
import json
import math
import os
import signal
import struct
import sys
import tempfile
import termios
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

SHED = "fleet_bridge_shed_total"
SCRIPT = Path(__file__).resolve()
# Histogram buckets: bucket i holds values in [1.1**(i-1), 1.1**i) of the unit (µs, or turns).
_BUCKETS = 260
_LOG_STEP = math.log(1.1)


def _bucket(value: float) -> int:
    return 0 if value < 1 else min(_BUCKETS - 1, 1 + int(math.log(value) / _LOG_STEP))


def _quantile(hist: list[int], q: float) -> float:
    """The value of quantile `q` of a histogram (the upper bound of its bucket)."""
    total = sum(hist)
    if not total:
        return 0.0
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= q * total:
            return 0.0 if i == 0 else 1.1**i
    return 1.1 ** (_BUCKETS - 1)


class Counters:
    """The bridge's instruments; written by the event loop's thread, copied by the dump thread."""

    def __init__(self) -> None:
        self.turns = 0
        self.busy_s = 0.0
        self.idle_s = 0.0
        self.turn_us = [0] * _BUCKETS  # a turn's callbacks, µs
        self.turn_max_us = 0.0
        self.writes = 0
        self.write_turns = [0] * _BUCKETS
        self.write_us = [0] * _BUCKETS
        self.write_max_turns = 0
        self.write_max_us = 0.0
        self.wakeup_bytes = 0  # summed over the turns sampled
        self.wakeup_samples = 0
        self.wakeup_max = 0
        self.ingested = 0
        self.ingest_turn_max = 0
        self.reads = 0
        self.reads_turn_max = 0
        self._ingest_turn = 0  # this turn's
        self._reads_turn = 0
        # By transport: the fan-out's writes through a consumer's sink (`Consumer.write_due`), and
        # the writers it woke instead (the sink refused, or a notice was queued).
        self.fanout_writes: dict[str, int] = {}
        self.fanout_wakes: dict[str, int] = {}

    def snapshot(self) -> dict[str, Any]:
        return {
            "t": time.perf_counter(),
            "cpu": time.process_time(),
            "cpu_system": os.times().system,  # of it, in the kernel (system calls, the network stack)
            "threads": _thread_roles(),
            # Copies, each taken whole under the GIL: the loop's thread goes on counting meanwhile.
            **{
                k: (v.copy() if isinstance(v, list | dict) else v)
                for k, v in vars(self).items()
                if k[0] != "_"
            },
        }


def _thread_roles() -> dict[str, str]:
    """The native ids of the loop's thread and of grpc.aio's poller thread (its target is
    `PollerCompletionQueue._poll_wrapper`, an internal of the pinned grpcio), by role."""
    roles = {str(threading.main_thread().native_id): "loop"}
    for thread in threading.enumerate():
        if getattr(getattr(thread, "_target", None), "__name__", "") == "_poll_wrapper":
            roles[str(thread.native_id)] = "grpc poller"
    return roles


def _wakeup_fd(loop: asyncio.AbstractEventLoop) -> int | None:
    """The fd of grpc.aio's completion-queue wake-up socket: the reader whose callback is grpc's
    `_handle_events` (an internal of the pinned grpcio; None when grpc has not bound it yet)."""
    selector = getattr(loop, "_selector", None)
    if selector is None:
        return None
    for key in list(selector.get_map().values()):
        reader = key.data[0] if key.data else None
        callback = getattr(reader, "_callback", None)
        name = getattr(callback, "__name__", "") or getattr(getattr(callback, "func", None), "__name__", "")
        if "handle_events" in name:
            return int(key.fd)
    return None


def _unread(fd: int) -> int:
    buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", buf)[0])


def instrument(counters: Counters) -> None:
    """Patch asyncio's loop, the gRPC Subscribe handler, the Hub and the MQTT socket with counters."""
    from asyncio import base_events

    from bridges import grpc_service, source
    from bridges.grpc_service import FleetBridgeServicer
    from bridges.hub import Consumer, Hub

    run_once = base_events.BaseEventLoop._run_once  # type: ignore[attr-defined]
    found: dict[str, int | None] = {}

    def timed_run_once(loop: Any) -> None:
        c = counters
        if "fd" not in found or (found["fd"] is None and c.turns % 1000 == 0):
            selector = loop._selector
            if not getattr(selector, "_profiled", False):
                select = selector.select

                def timed_select(timeout: float | None = None) -> Any:
                    t = time.perf_counter()
                    try:
                        return select(timeout)
                    finally:
                        c.idle_s += time.perf_counter() - t

                selector.select = timed_select
                selector._profiled = True
            found["fd"] = _wakeup_fd(loop)
        fd = found["fd"]
        if fd is not None and c.turns % 8 == 0:
            with contextlib.suppress(OSError):
                unread = _unread(fd)
                c.wakeup_bytes += unread
                c.wakeup_samples += 1
                c.wakeup_max = max(c.wakeup_max, unread)
        idle = c.idle_s
        t = time.perf_counter()
        c._ingest_turn = c._reads_turn = 0
        run_once(loop)
        busy = time.perf_counter() - t - (c.idle_s - idle)
        c.turns += 1
        c.busy_s += busy
        us = busy * 1e6
        c.turn_us[_bucket(us)] += 1
        c.turn_max_us = max(c.turn_max_us, us)
        c.ingest_turn_max = max(c.ingest_turn_max, c._ingest_turn)
        c.reads_turn_max = max(c.reads_turn_max, c._reads_turn)

    base_events.BaseEventLoop._run_once = timed_run_once  # type: ignore[attr-defined]

    ingest = Hub.ingest

    def counted_ingest(self: Hub, *args: Any, **kwargs: Any) -> Any:
        counters.ingested += 1
        counters._ingest_turn += 1
        return ingest(self, *args, **kwargs)

    Hub.ingest = counted_ingest  # type: ignore[method-assign]

    write_due = Consumer.write_due

    def counted_write_due(self: Consumer) -> None:
        queued, waiter = self.queued, self._waiter
        waiting = waiter is not None and not waiter.done()
        write_due(self)
        if waiting and self.closed is None:
            c, t = counters, self.transport
            if self.queued < queued:
                c.fanout_writes[t] = c.fanout_writes.get(t, 0) + 1
            if waiter is not None and waiter.done():
                c.fanout_wakes[t] = c.fanout_wakes.get(t, 0) + 1

    Consumer.write_due = counted_write_due  # type: ignore[method-assign]

    buffered = source._BufferedSocket
    recv: Callable[..., bytes] = buffered.recv

    def counted_recv(self: Any, size: int) -> bytes:
        reads = self.intake.reads
        try:
            return recv(self, size)
        finally:
            if self.intake.reads != reads:  # this one read the kernel's socket
                counters.reads += 1
                counters._reads_turn += 1

    buffered.recv = counted_recv  # type: ignore[method-assign]

    def written(turn: int, t: float) -> None:
        """A gRPC write handed to grpc at `turn` and time `t` has completed."""
        c = counters
        turns, us = c.turns - turn, (time.perf_counter() - t) * 1e6
        c.writes += 1
        c.write_turns[_bucket(turns)] += 1
        c.write_us[_bucket(us)] += 1
        c.write_max_turns = max(c.write_max_turns, turns)
        c.write_max_us = max(c.write_max_us, us)

    subscribe = FleetBridgeServicer.Subscribe

    async def timed_subscribe(self: Any, request: Any, context: Any) -> AsyncIterator[bytes]:
        responses = subscribe(self, request, context)
        try:
            async for data in responses:
                turn, t = counters.turns, time.perf_counter()
                yield data
                written(turn, t)
        finally:
            await responses.aclose()

    FleetBridgeServicer.Subscribe = timed_subscribe  # type: ignore[method-assign,assignment]

    # The fan-out's writes, timed from `_sink` to `_written` without a callback of their own (absent
    # from commits before the fan-out wrote to gRPC streams: this script can profile those too, with
    # PYTHONPATH pointing at their tree).
    sink = getattr(FleetBridgeServicer, "_sink", None)
    if sink is not None:
        started: dict[int, tuple[int, float]] = {}  # by id of the stream
        done = grpc_service._written

        def timed_sink(self: Any, stream: Any, events: Any) -> bool:
            if not sink(self, stream, events):
                return False
            started[id(stream)] = (counters.turns, time.perf_counter())
            return True

        def timed_written(stream: Any, write: Any, future: Any) -> None:
            done(stream, write, future)
            if (start := started.pop(id(stream), None)) is not None:
                written(*start)

        FleetBridgeServicer._sink = timed_sink  # type: ignore[method-assign]
        grpc_service._written = timed_written


def serve(stats: Path, cprofile: Path | None, bridge_args: list[str]) -> int:
    """Run `fleet bridge bridge_args` with the instruments; dump the counters to `stats`."""
    counters = Counters()
    instrument(counters)
    stop = threading.Event()

    def dump() -> None:
        while not stop.wait(0.2):
            tmp = stats.with_suffix(".tmp")
            tmp.write_text(json.dumps(counters.snapshot()))
            tmp.replace(stats)

    threading.Thread(target=dump, name="bridge-profile-dump", daemon=True).start()
    from fleet.cli import cli

    if cprofile is not None:
        profiler = cProfile.Profile()
        # The driver asks for the stats with SIGUSR1 before it stops the bridge: the handler runs
        # on the loop's thread, the one profiled.
        signal.signal(signal.SIGUSR1, lambda signum, frame: profiler.dump_stats(str(cprofile)))
        profiler.enable()
    try:
        cli.main(args=["bridge", *bridge_args], prog_name="fleet", standalone_mode=False)
    finally:
        stop.set()
    return 0


# --------------------------------------------------------------------------------------------
# The driver: Mosquitto, the bridge above, the consumers; one window per rate.
# --------------------------------------------------------------------------------------------


def _delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    seconds = b["t"] - a["t"]
    turns = b["turns"] - a["turns"]
    hist = [y - x for x, y in zip(a["turn_us"], b["turn_us"], strict=True)]
    wt = [y - x for x, y in zip(a["write_turns"], b["write_turns"], strict=True)]
    wu = [y - x for x, y in zip(a["write_us"], b["write_us"], strict=True)]
    samples = b["wakeup_samples"] - a["wakeup_samples"]
    return {
        "turns_per_s": turns / seconds,
        "turn_p50_us": _quantile(hist, 0.5),
        "turn_p99_us": _quantile(hist, 0.99),
        "idle_pct": 100 * (b["idle_s"] - a["idle_s"]) / seconds,
        "writes_per_s": (b["writes"] - a["writes"]) / seconds,
        "write_p50_turns": _quantile(wt, 0.5),
        "write_p99_turns": _quantile(wt, 0.99),
        "write_p50_ms": _quantile(wu, 0.5) / 1000,
        "write_p99_ms": _quantile(wu, 0.99) / 1000,
        "wakeup_bytes_mean": (b["wakeup_bytes"] - a["wakeup_bytes"]) / samples if samples else 0.0,
        "ingested_per_s": (b["ingested"] - a["ingested"]) / seconds,
        "reads_per_s": (b["reads"] - a["reads"]) / seconds,
        # Maxima since the bridge started (the counters keep no per-window maximum).
        "turn_max_ms": b["turn_max_us"] / 1000,
        "write_max_turns": b["write_max_turns"],
        "wakeup_bytes_max": b["wakeup_max"],
        "ingest_turn_max": b["ingest_turn_max"],
        "reads_turn_max": b["reads_turn_max"],
        "fanout_writes_per_s": {
            t: (n - a["fanout_writes"].get(t, 0)) / seconds for t, n in b["fanout_writes"].items()
        },
        "fanout_wakes_per_s": {
            t: (n - a["fanout_wakes"].get(t, 0)) / seconds for t, n in b["fanout_wakes"].items()
        },
    }


# What `--syscalls` counts per thread.
_PERF_EVENTS = (
    "context-switches",
    *(
        f"syscalls:sys_enter_{name}"
        for name in (
            "write",
            "read",
            "sendmsg",
            "sendto",
            "recvmsg",
            "recvfrom",
            "epoll_wait",
            "futex",
            "getpid",
        )
    ),
)


async def _count_syscalls(pid: int, seconds: float, out: Path) -> dict[str, dict[str, int]]:
    """`perf stat`'s counts of `_PERF_EVENTS` for each thread of `pid` over `seconds`, by "comm-tid"."""
    perf = await asyncio.create_subprocess_exec(
        "perf", "stat", "--per-thread", "-x", ",", "-o", str(out), "-e", ",".join(_PERF_EVENTS),
        "-p", str(pid), "--", "sleep", f"{seconds:g}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    if await perf.wait() != 0:
        raise RuntimeError(f"perf stat failed (exit {perf.returncode}); is perf installed and allowed?")
    return _perf_counts(out)


def _perf_counts(out: Path) -> dict[str, dict[str, int]]:
    """The counts of `perf stat --per-thread -x ,` output, by thread ("comm-tid") and event."""
    counts: dict[str, dict[str, int]] = {}
    for line in out.read_text().splitlines():
        fields = line.split(",")
        if len(fields) > 3 and fields[1].isdigit():
            event = fields[3].removeprefix("syscalls:sys_enter_")
            counts.setdefault(fields[0], {})[event] = int(fields[1])
    return counts


def _per_delivery(
    counts: dict[str, dict[str, int]], roles: dict[str, str], deliveries: float
) -> dict[str, dict[str, float]]:
    """Counts per delivery, summed by role: "loop", "grpc poller", or "other threads"."""
    out: dict[str, dict[str, float]] = {}
    for thread, events in counts.items():
        role = roles.get(thread.rpartition("-")[2], "other threads")
        into = out.setdefault(role, {})
        for event, n in events.items():
            into[event] = into.get(event, 0.0) + n / deliveries
    return out


def _syscalls_text(per: dict[str, dict[str, float]]) -> str:
    lines = []
    for role in ("loop", "grpc poller", "other threads"):
        events = per.get(role, {})
        shown = ", ".join(f"{k} {v:.2f}" for k, v in events.items() if v >= 0.005)
        lines.append(f"    per delivery, {role}: {shown or '-'}")
    return "\n".join(lines)


def _layout(text: str) -> list[dict[str, int]]:
    counts = dict.fromkeys(("ws", "sse", "grpc"), 0)
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in counts:
            raise ValueError(f"--layout: unknown transport {key!r} (ws, sse, grpc)")
        counts[key.strip()] = int(value)
    http = {k: counts[k] for k in ("ws", "sse") if counts[k]}
    return [x for x in (http, {"grpc": counts["grpc"]} if counts["grpc"] else {}) if x]


async def drive(args: argparse.Namespace) -> list[dict[str, Any]]:
    import bridge_scale
    from bridge_rig import Rig, pinned

    scale = bridge_scale.parse_args(
        ["--prefill", str(args.prefill), "--warmup", str(args.warmup), "--load", args.load]
    )
    scale.seconds = args.seconds
    print(f"load generator: {bridge_scale.load_generator(scale)['text']}", flush=True)
    layout = _layout(args.layout)
    consumers = bridge_scale.consumers_of(layout)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bridge-profile-") as tmp:
        workdir = args.log_dir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        stats = workdir / "profile.json"
        rig = Rig(scale, workdir, "profile", "fleet")
        fleet_args = rig.bridge.cmd[rig.bridge.cmd.index("bridge") + 1 :]
        if args.write_interval is not None:
            config = workdir / "bridge.toml"
            config.write_text(f"[bridge]\nwrite_interval = {args.write_interval}\n")
            fleet_args += ["--config", str(config)]
        own = [sys.executable, str(SCRIPT), "serve", "--stats", str(stats)]
        if args.cprofile is not None:
            own += ["--cprofile", str(args.cprofile.resolve())]
        rig.bridge.cmd = pinned(scale.bridge_core, [*own, "--", *fleet_args])
        try:
            await rig.start(layout)
            for rate in args.rates:
                assert rig.publisher is not None
                rig.publisher.set_rate(rate)
                await rig.sleep(args.warmup)
                before = json.loads(stats.read_text())
                m0 = await rig.bridge.metrics()
                counting = None
                if args.syscalls and rig.bridge.proc is not None:
                    counting = asyncio.create_task(
                        _count_syscalls(rig.bridge.proc.pid, args.warmup + args.seconds, workdir / "perf.csv")
                    )
                st = await rig.measure("profile", rate, consumers, seconds=args.seconds)
                m1 = await rig.bridge.metrics()
                after = json.loads(stats.read_text())
                window = after["t"] - before["t"]
                delivered = st.deliveries_per_s
                cpu_us = (after["cpu"] - before["cpu"]) / window * 1e6
                system_us = (after["cpu_system"] - before["cpu_system"]) / window * 1e6
                row = {
                    "rate": rate,
                    "deliveries_per_s": delivered,
                    "per_consumer_per_s": st.per_consumer_per_s,
                    "bridge_cpu_pct": st.bridge_cpu_pct,
                    "us_per_delivery": cpu_us / delivered if delivered else None,
                    "system_us_per_delivery": system_us / delivered if delivered else None,
                    "shed_per_s": (m1.get(SHED, 0) - m0.get(SHED, 0)) / window,
                    **_delta(before, after),
                }
                if counting is not None:
                    deliveries = delivered * (args.warmup + args.seconds)
                    row["syscalls"] = _per_delivery(await counting, after["threads"], deliveries)
                rows.append(row)
                print(_row_text(row), flush=True)
                print(_second_line(row), flush=True)
                if "syscalls" in row:
                    print(_syscalls_text(row["syscalls"]), flush=True)
            if args.cprofile is not None and rig.bridge.proc is not None:
                rig.bridge.proc.send_signal(signal.SIGUSR1)
                for _ in range(100):
                    if args.cprofile.exists():
                        break
                    await asyncio.sleep(0.1)
                print(f"cProfile stats of the bridge's loop thread: {args.cprofile}", flush=True)
        finally:
            rig.stop()
    return rows


def _second_line(r: dict[str, Any]) -> str:
    def per(key: str) -> str:
        return " / ".join(f"{r[key].get(t, 0):,.0f}" for t in ("websocket", "sse", "grpc"))

    system = r["system_us_per_delivery"]
    return (
        f"    of the µs a delivery, in the kernel: {'-' if system is None else f'{system:.1f}'}; "
        f"the fan-out's writes per s, ws / sse / grpc: {per('fanout_writes_per_s')}; "
        f"writers it woke instead: {per('fanout_wakes_per_s')}"
    )


_HEADER = (
    f"{'rate':>6} {'deliv/s':>8} {'µs/deliv':>8} {'cpu%':>5} {'turns/s':>8} {'turn p50/p99 µs':>16} "
    f"{'idle%':>5} {'gRPC write p50/p99 turns':>24} {'ms p50/p99':>12} {'wake-up bytes':>14} "
    f"{'ingest/turn':>11} {'shed/s':>7}  per consumer/s ws/sse/grpc"
)


def _row_text(r: dict[str, Any]) -> str:
    cost = f"{r['us_per_delivery']:.1f}" if r["us_per_delivery"] is not None else "-"
    pc = r["per_consumer_per_s"]
    shares = "/".join(f"{pc.get(t, 0):.0f}" for t in ("websocket", "sse", "grpc"))
    return (
        f"{r['rate']:>6.0f} {r['deliveries_per_s']:>8.0f} {cost:>8} {r['bridge_cpu_pct']:>5.0f} "
        f"{r['turns_per_s']:>8.0f} {r['turn_p50_us']:>7.0f}/{r['turn_p99_us']:<8.0f} {r['idle_pct']:>5.0f} "
        f"{r['write_p50_turns']:>11.0f}/{r['write_p99_turns']:<12.0f} "
        f"{r['write_p50_ms']:>5.1f}/{r['write_p99_ms']:<6.1f} "
        f"{r['wakeup_bytes_mean']:>6.1f}/{r['wakeup_bytes_max']:<7} {r['ingest_turn_max']:>11} "
        f"{r['shed_per_s']:>7.0f}  {shares}"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        p = argparse.ArgumentParser(prog="bridge_profile.py serve")
        p.add_argument("--stats", type=Path, required=True)
        p.add_argument("--cprofile", type=Path)
        p.add_argument("bridge_args", nargs=argparse.REMAINDER)
        a = p.parse_args(argv[1:])
        rest = a.bridge_args[1:] if a.bridge_args[:1] == ["--"] else a.bridge_args
        return serve(a.stats, a.cprofile, rest)
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--rates", default="300,1500,6000", help="msg/s offered, one window each")
    p.add_argument("--layout", default="ws=34,sse=33,grpc=33", help="consumers per transport")
    p.add_argument("--seconds", type=float, default=5.0, help="measurement window per rate (s)")
    p.add_argument("--warmup", type=float, default=2.0, help="load before each window opens (s)")
    p.add_argument("--prefill", type=int, default=2000, help="messages published before consumers join")
    p.add_argument("--cprofile", type=Path, help="also profile the bridge's loop thread into this file")
    p.add_argument("--syscalls", action="store_true", help="also count syscalls per thread (perf stat)")
    p.add_argument(
        "--write-interval",
        type=float,
        help="the bridge's [bridge] write_interval, seconds (default: the bridge's own, 0.008)",
    )
    p.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    p.add_argument("--log-dir", type=Path, help="keep the logs here (default: a temp dir)")
    p.add_argument(
        "--load",
        choices=("auto", "node", "python"),
        default="auto",
        help="the consumers' runtime, as bench/bridge_scale.py's --load (the figures in bench/README.md "
        "before the Node.js consumers: python)",
    )
    args = p.parse_args(argv)
    args.rates = [float(x) for x in args.rates.split(",") if x.strip()]
    if args.cprofile is not None:
        args.cprofile = args.cprofile.resolve()
        args.cprofile.unlink(missing_ok=True)
    print(_HEADER, flush=True)
    rows = asyncio.run(drive(args))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
