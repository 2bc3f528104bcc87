"""The embedded broker's own CPU per MQTT 3.1.1 delivery, without the network: this checkout against
another one (``--base-worktree``), interleaved, so that a 5 % difference shows on a shared machine.
``--protocol 5`` makes this side's clients MQTT 5 ones: with ``--base-worktree .`` that is the cost
of an MQTT 5 delivery against a 3.1.1 one in the same checkout.

Why: ``broker_scale.py`` measures broker CPU per delivery end to end, over loopback, with a load
generator beside the broker on a 2-core machine. There the figure also moves with the scheduler:
a broker that gets less CPU reads fewer packets per event-loop turn, and pays each turn's fixed cost
over fewer deliveries. Two runs of the same code differed by 40 % there. This bench drives the
broker's real `Connection` objects in one process, through a transport that only keeps what is
written, with the same batches every time: each step the publisher sends ``--batch`` QoS 1
PUBLISHes to random devices in one read, one event-loop turn writes the deliveries and the
PUBACKs, and each device answers its PUBLISH with a PUBACK in a read of its own. Only the broker's
calls are timed (process CPU time); building packets and reading what the broker wrote are not.

Each measurement runs in a fresh process of the checkout it measures (the checkout's directory
first on ``sys.path``): ``--warmup`` deliveries, then ``--repeat`` timings of ``--messages``
deliveries each, of which the fastest is kept (outside load only ever adds). The rounds alternate
which checkout goes first. Reported: per checkout the median [min-max] over the rounds, and the
per-round ratio this/base with its spread. An A/A run (``--base-worktree .``) shows the noise floor.

Usage::

    .venv/bin/python bench/broker_hotpath.py --base-worktree /work/wt/base-c42ada3 [--rounds 8]
    .venv/bin/python bench/broker_hotpath.py --base-worktree .      # A/A: the noise floor
    .venv/bin/python bench/broker_hotpath.py --base-worktree . --protocol 5    # MQTT 5 / 3.1.1
    .venv/bin/python bench/broker_hotpath.py --base-worktree /work/wt/base-c42ada3 --opcodes --messages 2000
    .venv/bin/python bench/broker_hotpath.py --checkout DIR --base-worktree /work/wt/base-c42ada3
    .venv/bin/python bench/broker_hotpath.py --base-worktree /work/wt/base-c42ada3 --ccalls --messages 2000
    .venv/bin/python bench/broker_hotpath.py --base-worktree /work/wt/base-c42ada3 --instructions
    .venv/bin/python bench/broker_hotpath.py --profile out.prof [--checkout DIR]  # cProfile of its path

``--opcodes``, ``--ccalls`` and ``--instructions`` count instead of timing, so one run of each says
it, whatever the load: Python bytecodes (sys.settrace), calls of C functions by their Python caller
(sys.setprofile; calling a type, a slot wrapper such as ``object.__setattr__`` or a memoryview slice
is no such call), and, under valgrind's callgrind, the machine instructions of the broker's calls
alone (a ctypes call wraps them; callgrind collects inside ``ffi_call`` only), with the instructions
of each C function and the objects made per delivery. The instruction count is the one that follows
CPU time: it sees the C work the bytecode count does not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = bytes(200)
OPCODE_ROWS = 15
_U16 = struct.Struct("!H")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def _text(s: str) -> bytes:
    raw = s.encode()
    return _U16.pack(len(raw)) + raw


def _connect(client_id: str, protocol: int) -> bytes:
    # Clean session, no keepalive: no timer fires during a slow, traced run. MQTT 5: no properties.
    level = b"\x05\x02" if protocol == 5 else b"\x04\x02"
    return _packet(
        0x10, _text("MQTT") + level + _U16.pack(0) + (b"\x00" if protocol == 5 else b"") + _text(client_id)
    )


def _topic(i: int) -> str:
    return f"fleet/dev-{i}/cmd"


class Transport(asyncio.WriteTransport):
    """The part of an asyncio transport the broker uses; keeps what is written, unparsed."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.written: list[bytes] = []

    def get_extra_info(self, name: Any, default: Any = None) -> Any:
        return ("127.0.0.1", self.port) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _feed(conn: Any, data: bytes) -> None:
    """Hand `data` to the connection as asyncio's socket transport does: into get_buffer() and
    buffer_updated() for a BufferedProtocol (recv_into), else data_received() (recv). The copy into
    the buffer is one slice assignment per read, the least Python can do of what recv_into does in C
    (a `bytes` slice that is the whole of `data` is `data` itself, not a copy)."""
    buffered = isinstance(conn, asyncio.BufferedProtocol)
    if not buffered:
        conn.data_received(data)
        return
    while data:
        buffer = conn.get_buffer(-1)
        n = len(data) if len(data) <= len(buffer) else len(buffer)
        buffer[:n] = data[:n]
        conn.buffer_updated(n)
        data = data[n:]


def _publish_ids(chunks: list[bytes]) -> list[int]:
    """The packet identifiers of the QoS 1 PUBLISHes written to one device."""
    ids = []
    for data in chunks:
        pos = 0
        while pos < len(data):
            first = data[pos]
            i, length, shift = pos + 1, 0, 0
            while True:
                byte = data[i]
                i += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            if first >> 4 == 3:
                tlen = _U16.unpack_from(data, i)[0]
                ids.append(_U16.unpack_from(data, i + 2 + tlen)[0])
            pos = i + length
    return ids


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    from broker.config import BrokerSettings
    from broker.connection import Connection
    from broker.server import Broker

    broker = Broker(BrokerSettings())
    # An MQTT 5 SUBSCRIBE and PUBLISH carry a property length (0 here); a PUBACK of reason 0 need not.
    no_properties = b"\x00" if args.protocol == 5 else b""
    rng = random.Random(1)
    devices = []
    for i in range(args.clients):
        conn = Connection(broker)
        transport = Transport(10000 + i)
        conn.connection_made(transport)
        _feed(conn, _connect(f"dev-{i}", args.protocol))
        _feed(conn, _packet(0x82, _U16.pack(1) + no_properties + _text(_topic(i)) + b"\x01"))
        devices.append((conn, transport))
    pub = Connection(broker)
    pub_transport = Transport(9999)
    pub.connection_made(pub_transport)
    _feed(pub, _connect("bench-pub", args.protocol))
    await asyncio.sleep(0)
    prefixes = [_text(_topic(i)) for i in range(args.clients)]
    clock = time.process_time_ns
    next_id = 0

    def batch() -> bytes:
        """The publisher's next read: `--batch` QoS 1 PUBLISHes to random devices."""
        nonlocal next_id
        parts = []
        for _ in range(args.batch):
            next_id = next_id % 65535 + 1
            body = prefixes[rng.randrange(args.clients)] + _U16.pack(next_id) + no_properties + PAYLOAD
            parts.append(_packet(0x32, body))
        return b"".join(parts)

    def acks_due() -> list[tuple[Any, bytes]]:
        """Each device's PUBACKs for what the broker wrote to it; what was written is cleared."""
        pub_transport.written.clear()
        acks = []
        for conn, transport in devices:
            if transport.written:
                acks += [(conn, _packet(0x40, _U16.pack(pid))) for pid in _publish_ids(transport.written)]
                transport.written.clear()
        return acks

    async def step() -> int:
        """One batch: PUBLISHes in, one loop turn, each device's PUBACK; the broker's CPU ns."""
        data = batch()
        t0 = clock()
        _feed(pub, data)
        await asyncio.sleep(0)  # the turn's end: every connection's queued packets are written
        spent = clock() - t0
        acks = acks_due()
        t0 = clock()
        for conn, ack in acks:
            _feed(conn, ack)
        await asyncio.sleep(0)
        return spent + clock() - t0

    async def run(deliveries: int) -> float:
        before = broker.stats.messages_sent
        spent = 0
        while broker.stats.messages_sent - before < deliveries:
            spent += await step()
        return spent / 1000 / (broker.stats.messages_sent - before)

    await run(args.warmup)
    if args.opcodes:
        counts: Counter[str] = Counter()
        here = Path(__file__).name

        def tracer(frame: FrameType, event: str, arg: Any) -> Any:
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
            if event == "opcode":
                code = frame.f_code
                if not code.co_filename.endswith(here):
                    counts[f"{'/'.join(Path(code.co_filename).parts[-2:])}:{code.co_name}"] += 1
            return tracer

        sys.settrace(tracer)
        try:
            await run(args.messages)
        finally:
            sys.settrace(None)
        n = args.messages
        return {
            "opcodes": sum(counts.values()) / n,
            "by_function": {k: v / n for k, v in counts.most_common()},
        }
    if args.ccalls:
        calls: Counter[str] = Counter()
        here = Path(__file__).name

        def on_call(frame: FrameType, event: str, arg: Any) -> None:
            if event == "c_call":
                code = frame.f_code
                if not code.co_filename.endswith(here):
                    where = f"{'/'.join(Path(code.co_filename).parts[-2:])}:{code.co_name}"
                    calls[f"{where} -> {getattr(arg, '__qualname__', arg)}"] += 1

        sys.setprofile(on_call)
        try:
            await run(args.messages)
        finally:
            sys.setprofile(None)
        n = args.messages
        return {"ccalls": sum(calls.values()) / n, "by_call": {k: v / n for k, v in calls.most_common()}}
    if args.instructions:
        import ctypes

        # Under callgrind (--toggle-collect=ffi_call), only what runs inside this ctypes call is
        # counted: the broker's own calls and its end-of-turn flush, not the harness's packet
        # building and parsing or the event loop's turns.
        reads: list[tuple[Any, bytes]] = []

        def feed_all() -> None:
            for conn, data in reads:
                _feed(conn, data)
            broker._flush()

        callback = ctypes.CFUNCTYPE(None)(feed_all)
        address = ctypes.cast(callback, ctypes.c_void_p).value
        assert address is not None
        measured = ctypes.CFUNCTYPE(None)(address)
        before = broker.stats.messages_sent
        while broker.stats.messages_sent - before < args.messages:
            reads[:] = [(pub, batch())]
            measured()
            reads[:] = acks_due()
            measured()
            await asyncio.sleep(0)  # the turn ends: the flush the broker scheduled finds nothing left
        return {"deliveries": broker.stats.messages_sent - before}
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        await run(args.messages)
        profiler.disable()
        profiler.dump_stats(args.profile)
        return {}
    timings = [await run(args.messages) for _ in range(args.repeat)]
    return {"us_per_delivery": min(timings), "timings": timings}


def _child(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(args.child))
    result = asyncio.run(_measure(args))
    print(json.dumps(result))
    return 0


def _run_child(
    root: Path, args: argparse.Namespace, protocol: int, wrapper: list[str] | None = None
) -> dict[str, Any]:
    modes = [f"--{mode}" for mode in ("opcodes", "ccalls", "instructions") if getattr(args, mode)]
    argv = [
        *(wrapper or []), sys.executable, __file__, "--child", str(root), "--clients", str(args.clients),
        "--batch", str(args.batch), "--messages", str(args.messages), "--warmup", str(args.warmup),
        "--repeat", str(args.repeat), "--protocol", str(protocol), *modes,
    ]  # fmt: skip
    # One hash seed for every process: the layout of dicts and sets, and so the instructions that
    # look things up in them, is then the same from run to run.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=args.timeout, check=False, cwd=root, env=env
    )
    if done.returncode != 0:
        raise SystemExit(f"broker_hotpath: the run of {root} failed (exit {done.returncode}):\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def _diff_rows(a: dict[str, float], b: dict[str, float], spec: str = "8.1f") -> None:
    """The OPCODE_ROWS largest differences this - base, with both figures."""
    for key in sorted(set(a) | set(b), key=lambda k: -abs(a.get(k, 0) - b.get(k, 0)))[:OPCODE_ROWS]:
        this, base = a.get(key, 0), b.get(key, 0)
        print(f"  {this - base:+{spec}}  {this:{spec}} / {base:{spec}}  {key}")


def _opcodes(this: Path, base: Path, args: argparse.Namespace) -> int:
    """Bytecodes the interpreter runs per delivery in each checkout: no noise, so one run says it."""
    got = {"this": _run_child(this, args, args.protocol), "base": _run_child(base, args, args.base_protocol)}
    a, b = got["this"]["by_function"], got["base"]["by_function"]
    print(
        f"\nPython bytecodes per delivery ({_versions(args)}; asyncio's included), "
        f"{args.messages} deliveries traced:"
    )
    print(
        f"  this {got['this']['opcodes']:.1f}, base {got['base']['opcodes']:.1f}, "
        f"this/base {got['this']['opcodes'] / got['base']['opcodes']:.3f}"
    )
    print("  the largest differences (this - base, per delivery):")
    _diff_rows(a, b)
    return 0


def _ccalls(this: Path, base: Path, args: argparse.Namespace) -> int:
    """Calls of C functions (builtins, methods of C types) per delivery, by the Python caller."""
    got = {"this": _run_child(this, args, args.protocol), "base": _run_child(base, args, args.base_protocol)}
    a, b = got["this"]["by_call"], got["base"]["by_call"]
    print(
        f"\nC function calls per delivery ({_versions(args)}; sys.setprofile c_call), "
        f"{args.messages} deliveries:"
    )
    print(
        f"  this {got['this']['ccalls']:.2f}, base {got['base']['ccalls']:.2f}, "
        f"this/base {got['this']['ccalls'] / got['base']['ccalls']:.3f}"
    )
    print("  the largest differences (this - base, per delivery), caller -> C function:")
    _diff_rows(a, b, "6.2f")
    return 0


# CPython's allocators: every object, and every buffer of PyMem_Malloc, comes through one of these.
_ALLOCATORS = ("_PyObject_Malloc", "_PyObject_Calloc", "_PyObject_Realloc")


# callgrind's names of the simulated cache's events (--cache-sim=yes); LL is the last-level cache.
_CACHE_EVENTS = {
    "Dr": "data reads",
    "Dw": "data writes",
    "I1mr": "L1 instruction cache misses",
    "D1mr": "L1 data cache read misses",
    "D1mw": "L1 data cache write misses",
    "ILmr": "LL instruction misses",
    "DLmr": "LL data read misses",
    "DLmw": "LL data write misses",
}


def _callgrind(path: Path) -> tuple[dict[str, int], Counter[str], Counter[str]]:
    """The totals of a callgrind output file by event (Ir: instructions; with --cache, also the
    simulated cache misses I1mr, D1mr, D1mw...), the instructions spent in each C function itself and
    the calls each C function received."""
    names: dict[str, str] = {}
    own: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    events: list[str] = []
    total: dict[str, int] = {}
    fn = callee = ""
    after_calls = False

    def name(spec: str) -> str:
        ident, _, rest = spec.partition(")")
        if rest.strip():
            # Without the recursion depth callgrind appends ("f'2"), which varies from run to run.
            names[ident] = rest.strip().split("'")[0]
        return names.get(ident, spec)

    for line in path.read_text().splitlines():
        if line.startswith("fn="):
            fn = name(line[3:])
        elif line.startswith("cfn="):
            callee = name(line[4:])
        elif line.startswith("calls="):
            calls[callee] += int(line[6:].split()[0])
            after_calls = True
        elif line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("summary:") or line.startswith("totals:"):
            total = dict(zip(events, map(int, line.split()[1:]), strict=False))
        elif line[:1].isdigit() or line[:1] in "+-*":
            parts = line.split()
            if after_calls:
                after_calls = False  # the inclusive cost of the call just named
            elif len(parts) > 1:
                own[fn] += int(parts[1])
    return total, own, calls


def _instructions(this: Path, base: Path, args: argparse.Namespace) -> int:
    """Instructions per delivery under callgrind (no noise: the same run gives the same count), the
    C functions whose own instructions differ most, and the allocations.

    Only the broker's calls are collected (--toggle-collect), but callgrind counts calls all the time,
    so the calls per delivery are the difference between a run of 2 x --messages and one of
    --messages: the harness's calls (building the packets, reading what the broker wrote, the event
    loop's turns) are in both checkouts' counts alike.
    """
    if shutil.which("valgrind") is None:
        raise SystemExit("broker_hotpath --instructions: needs valgrind (Debian: apt-get install valgrind)")
    got = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, root, protocol in (("this", this, args.protocol), ("base", base, args.base_protocol)):
            runs = []
            for messages in (args.messages, 2 * args.messages):
                out = Path(tmp) / f"{name}-{messages}.callgrind"
                wrapper = [
                    "valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=ffi_call",
                    f"--callgrind-out-file={out}", *(["--cache-sim=yes"] if args.cache else []),
                ]  # fmt: skip
                run_args = argparse.Namespace(**{**vars(args), "messages": messages})
                runs.append((_run_child(root, run_args, protocol, wrapper)["deliveries"], *_callgrind(out)))
            (n1, _, _, calls1), (n2, total, own, calls2) = runs
            got[name] = (
                {event: count / n2 for event, count in total.items()},
                {k: v / n2 for k, v in own.items()},
                {k: (calls2[k] - calls1[k]) / (n2 - n1) for k in calls2},
            )
    (tev, town, tcalls), (bev, bown, bcalls) = got["this"], got["base"]
    ti, bi = tev["Ir"], bev["Ir"]
    ta, ba = (sum(calls.get(f, 0) for f in _ALLOCATORS) for calls in (tcalls, bcalls))
    to, bo = (calls.get("_Py_NewReference", 0) for calls in (tcalls, bcalls))
    print(f"\nper delivery ({_versions(args)}) under callgrind, {2 * args.messages} deliveries:")
    print(f"  instructions, the broker's calls only: this {ti:,.0f}, base {bi:,.0f}, this/base {ti / bi:.3f}")
    print(f"  objects made (_Py_NewReference), harness included: this {to:.2f}, base {bo:.2f}")
    print(f"  allocator calls ({', '.join(_ALLOCATORS)}), harness included: this {ta:.2f}, base {ba:.2f}")
    for event in (e for e in tev if e != "Ir"):
        print(f"  {_CACHE_EVENTS.get(event, event)}: this {tev[event]:.1f}, base {bev[event]:.1f}")
    print("  instructions in each C function itself, the largest differences (this - base):")
    _diff_rows(town, bown, "8.0f")
    print("  calls received by each C function, harness included, the largest differences (this - base):")
    _diff_rows(tcalls, bcalls, "8.2f")
    return 0


def _versions(args: argparse.Namespace) -> str:
    name = {4: "3.1.1", 5: "MQTT 5"}
    return f"this {name[args.protocol]}, base {name[args.base_protocol]}"


def _spread(values: list[float], spec: str) -> str:
    return f"{statistics.median(values):{spec}} [{min(values):{spec}}-{max(values):{spec}}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--base-worktree", type=Path, help="the checkout to compare with (. for an A/A run)")
    p.add_argument("--rounds", type=int, default=8, help="rounds, each measuring both checkouts")
    p.add_argument("--clients", type=int, default=1000, help="subscribed devices, one topic each")
    p.add_argument("--batch", type=int, default=10, help="PUBLISHes per read of the publisher")
    p.add_argument("--messages", type=int, default=20000, help="deliveries per timing")
    p.add_argument("--warmup", type=int, default=5000, help="deliveries before the first timing")
    p.add_argument("--repeat", type=int, default=3, help="timings per process; the fastest is kept")
    p.add_argument("--timeout", type=float, default=120.0, help="cap on one measuring process (s)")
    p.add_argument("--profile", type=Path, help="write a cProfile of one checkout's delivery path here")
    p.add_argument(
        "--checkout", type=Path, default=ROOT, help="the checkout measured (or profiled) against base"
    )
    p.add_argument(
        "--opcodes",
        action="store_true",
        help="count the Python bytecodes run per delivery instead of timing (sys.settrace, slow, exact)",
    )
    p.add_argument(
        "--ccalls",
        action="store_true",
        help="count the calls of C functions per delivery, by Python caller (sys.setprofile, exact)",
    )
    p.add_argument(
        "--instructions",
        action="store_true",
        help="count machine instructions and allocations per delivery of the broker's calls alone "
        "(valgrind's callgrind: slow, deterministic)",
    )
    p.add_argument(
        "--protocol", type=int, choices=(4, 5), default=4, help="the MQTT version of every client, this side"
    )
    p.add_argument("--base-protocol", type=int, choices=(4, 5), default=4, help="the same on the base side")
    p.add_argument(
        "--cache",
        action="store_true",
        help="with --instructions: also the cache misses per delivery callgrind simulates (slower)",
    )
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        return _child(args)
    if args.profile is not None:
        sys.path.insert(0, str(args.checkout))
        asyncio.run(_measure(args))
        print(f"wrote {args.profile} ({args.messages} deliveries): python -m pstats {args.profile}")
        return 0
    if args.base_worktree is None or not (args.base_worktree / "broker").is_dir():
        p.error("--base-worktree: give a checkout with a broker/ package (. for an A/A run)")
    base = args.base_worktree.resolve()
    this = args.checkout.resolve()
    command = " ".join([".venv/bin/python", "bench/broker_hotpath.py", *sys.argv[1:]])
    print(f"broker_hotpath {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC: {command}")
    print("  load average (1, 5, 15 min) at the start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(
        f"  {args.clients} devices, batches of {args.batch}, best of {args.repeat} x {args.messages} "
        f"deliveries per process; this: {this}, base: {base}",
        flush=True,
    )
    if args.opcodes:
        return _opcodes(this, base, args)
    if args.ccalls:
        return _ccalls(this, base, args)
    if args.instructions:
        return _instructions(this, base, args)
    figures: dict[str, list[float]] = {"this": [], "base": []}
    ratios = []
    for r in range(args.rounds):
        order = [("this", this, args.protocol), ("base", base, args.base_protocol)]
        if r % 2:
            order.reverse()
        got = {name: float(_run_child(root, args, v)["us_per_delivery"]) for name, root, v in order}
        for name, value in got.items():
            figures[name].append(value)
        ratios.append(got["this"] / got["base"])
        print(
            f"  round {r + 1}: this {got['this']:.2f} us, base {got['base']:.2f} us, ratio {ratios[-1]:.3f}",
            flush=True,
        )
    print(f"\nbroker CPU per delivery ({_versions(args)}), in process (median [min-max] over the rounds):")
    for name, values in figures.items():
        print(f"  {name}: {_spread(values, '.2f')} us")
    print(f"  this/base per round: {_spread(ratios, '.3f')}")
    print("  load average (1, 5, 15 min) at the end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
