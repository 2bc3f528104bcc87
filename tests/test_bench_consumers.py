"""The consumer children of `bench/bridge_scale.py`: the Node.js one (`bench/bridge_consumers.mjs`)
speaks the Python one's protocol (`bench/bridge_consumers.py`) and counts and samples the same
deliveries. Both run at once against one real `fleet bridge` process on the embedded broker; no timing
is asserted. Without node and tests/node's packages (`make node-deps`) the Node tests are skipped."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from broker.server import Broker
from tests.procs import ROOT, Proc

TIMEOUT = 10.0
PREFIX = "BRIDGE-BENCH "
TRANSPORTS = ("websocket", "sse", "grpc")
SERVING = re.compile(r"fleet bridge: serving (http|grpc)://127\.0\.0\.1:(\d+)")
NODE = shutil.which("node")
NODE_PACKAGES = ("ws", "@grpc/grpc-js")
MESSAGES = 40
EACH = 2  # consumers per transport in each child

_missing = [
    p for p in NODE_PACKAGES if not (ROOT / "tests" / "node" / "node_modules" / p / "package.json").is_file()
]
needs_node = pytest.mark.skipif(
    NODE is None or bool(_missing),
    reason="node or tests/node's packages missing (make node-deps)",
)


class Child:
    """A consumer child: commands on its stdin, the `BRIDGE-BENCH ` lines of its stdout read in order."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.next_line = 0

    async def event(self) -> dict[str, Any]:
        index = await asyncio.to_thread(
            self.proc.stdout.wait_for, lambda line: line.startswith(PREFIX), TIMEOUT, self.next_line
        )
        self.next_line = index + 1
        event: dict[str, Any] = json.loads(self.proc.stdout.lines[index].removeprefix(PREFIX))
        return event

    def send(self, command: str) -> None:
        stdin = self.proc.popen.stdin
        assert stdin is not None
        stdin.write(command + "\n")
        stdin.flush()

    async def request(self, command: str) -> dict[str, Any]:
        self.send(command)
        return await self.event()

    def close(self) -> None:
        """Close its stdin (the child quits at its end, as on `quit`)."""
        if self.proc.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.popen.stdin.close()


@pytest.fixture
def start_child(procs: Callable[..., Proc]) -> Iterator[Callable[..., Child]]:
    """Start a consumer child (`procs(*argv)` with a stdin pipe); its stdin is closed at teardown."""
    started: list[Child] = []

    def start(*argv: str | Path | int) -> Child:
        child = Child(procs(*argv, stdin=subprocess.PIPE))
        started.append(child)
        return child

    try:
        yield start
    finally:
        for child in started:
            child.close()


async def bridge_ports(proc: Proc) -> dict[str, int]:
    """The HTTP and gRPC ports `fleet bridge` prints, once /readyz says it is connected to its broker."""
    await asyncio.to_thread(proc.stdout.wait_for, "fleet bridge: serving grpc://", TIMEOUT)
    await asyncio.to_thread(proc.stdout.wait_for, "fleet bridge: serving http://", TIMEOUT)
    ports = {kind: int(port) for kind, port in SERVING.findall(proc.stdout.text)}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['http']}", timeout=TIMEOUT) as client:
        await poll(lambda: client.get("/readyz"), lambda r: r.status_code == 200, "/readyz")
    return ports


CONSUMERS = re.compile(r'^fleet_bridge_consumers\{transport="(\w+)"\} (\S+)$', re.MULTILINE)


async def metrics(client: httpx.AsyncClient) -> str:
    return (await client.get("/metrics")).text


def consumers(text: str) -> dict[str, float]:
    """fleet_bridge_consumers per transport, from the bridge's /metrics."""
    return {t: float(v) for t, v in CONSUMERS.findall(text)}


async def poll(get: Callable[[], Any], done: Callable[[Any], bool], what: str) -> Any:
    """Await `get()` until `done` holds of its result; fails after TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    value = None
    while time.monotonic() < deadline:
        value = await get()
        if done(value):
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} never matched: {value}")


@needs_node
async def test_node_and_python_consumers_read_and_sample_the_same_deliveries(
    broker: Broker, procs: Callable[..., Proc], start_child: Callable[..., Child]
) -> None:
    """Against one fleet bridge, the Node child and the Python child each count every message once per
    consumer on every transport, sample a latency for each, and answer every command alike."""
    bridge = procs(
        sys.executable, "-m", "fleet", "bridge", "--broker", f"mqtt://127.0.0.1:{broker.port}",
        "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
    )  # fmt: skip
    ports = await bridge_ports(bridge)
    layout = ["--http-port", ports["http"], "--grpc-port", ports["grpc"], "--ws", EACH, "--sse", EACH]
    layout += ["--grpc", EACH, "--connect-timeout", TIMEOUT]
    python = [sys.executable, ROOT / "bench" / "bridge_consumers.py"]
    node = [NODE, ROOT / "bench" / "bridge_consumers.mjs"]
    children = {"python": start_child(*python, *layout), "node": start_child(*node, *layout)}
    for child in children.values():
        ready = await child.event()
        assert (ready["event"], ready["consumers"]) == ("ready", 3 * EACH), ready
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['http']}", timeout=TIMEOUT) as client:
        want = dict.fromkeys(TRANSPORTS, float(2 * EACH))
        await poll(lambda: metrics(client), lambda m: consumers(m) == want, "fleet_bridge_consumers")
    for child in children.values():
        assert (await child.request("record 1"))["event"] == "recording"

    async with aiomqtt.Client("127.0.0.1", broker.port) as mqtt:
        for seq in range(MESSAGES):
            ts = time.time_ns() // 1000
            payload = b'{"ts":%d,"seq":%d,"device":"dev-%03d","pad":"xxxx"}' % (ts, seq, seq % 7)
            await mqtt.publish(f"fleet/dev-{seq % 7:03d}/telemetry", payload)

    every = {t: EACH * MESSAGES for t in TRANSPORTS}
    snaps = {
        name: await poll(
            lambda c=child: c.request("snap"), lambda s: s["counts"] == every, f"{name}'s counts"
        )
        for name, child in children.items()
    }
    assert set(snaps["node"]) == set(snaps["python"])
    for snap in snaps.values():
        assert snap["per"] == {t: [MESSAGES] * EACH for t in TRANSPORTS}
        assert snap["closed"] == snap["stalled_counts"] == snap["notes"] == dict.fromkeys(TRANSPORTS, 0)
        assert snap["errors"] == snap["closed_reasons"] == []
        assert snap["cpu"] > 0
        for key in ("lat", "lat_out", "lat_in"):
            assert {t: v["n"] for t, v in snap[key].items()} == every
            assert all(set(v) == {"n", "p50", "p99", "p999", "max"} for v in snap[key].values())
        assert {t: sum(row[1] for row in rows) for t, rows in snap["timeline"].items()} == every
    for name, child in children.items():
        replies = [(await child.request(c))["event"] for c in ("unrecord", "stall", "bogus")]
        assert replies == ["unrecorded", "stalled", "unknown"], name
        assert (await child.request("snap"))["lat"] == {}, name
        child.send("quit")
        assert child.proc.wait() == 0, child.proc.describe()


@needs_node
def test_node_consumers_take_no_stalling_consumer(procs: Callable[..., Proc]) -> None:
    """The Node child refuses --stall-ws (it cannot shrink a socket's receive buffer): the bench keeps
    stalling consumers in a Python child."""
    child = procs(
        NODE, ROOT / "bench" / "bridge_consumers.mjs", "--http-port", 1, "--grpc-port", 2, "--stall-ws", 1
    )
    assert child.wait() == 1
    (line,) = [x for x in child.stdout.lines if x.startswith(PREFIX)]
    failed = json.loads(line.removeprefix(PREFIX))
    assert failed["event"] == "failed"
    assert "stall-ws" in failed["error"]


@pytest.mark.skipif(not os.path.exists("/usr/sbin/mosquitto"), reason="bridge_scale.py needs mosquitto")
def test_bridge_scale_falls_back_to_python_consumers_without_node(tmp_path: Path) -> None:
    """`bench/bridge_scale.py` picks the Python consumers when node is not on PATH, says why, and
    refuses `--load node` there."""
    code = (
        "import sys; sys.path.insert(0, 'bench'); import bridge_scale; "
        "a = bridge_scale.parse_args(sys.argv[1:]); print(bridge_scale.load_generator(a)['text'])"
    )
    env = {**os.environ, "PATH": str(tmp_path)}  # nothing on it: no node, and no mosquitto but Debian's
    auto = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert auto.returncode == 0, auto.stderr
    assert auto.stdout.strip() == (
        "consumers in Python (bench/bridge_consumers.py; --load auto, and no working `node` on PATH)"
    )
    node = subprocess.run(
        [sys.executable, "-c", code, "--load", "node"],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert node.returncode == 2
    assert "--load node: no working `node` on PATH" in node.stderr
