"""The local broker as a process: the embedded broker run as a child (`fleet broker`), or an
external broker that `fleet stress --broker-cmd` launches, which the restart-broker and crash-broker
stages stop (SIGTERM or SIGKILL) and start again; and the CPU and memory of a local broker process.

The embedded broker runs in its own process so that its CPU and RSS are its own, not the fleet's,
and so that a restart is a real one: a new process, which keeps only what its store kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import FleetError

__all__ = [
    "BrokerProcess",
    "ExternalBroker",
    "Usage",
    "UsageMeter",
    "embedded_broker",
    "external_broker",
    "read_usage",
]

_LISTENING = re.compile(r"^fleet broker: listening on mqtt://(?P<host>[^\s]+):(?P<port>\d+)$")
_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 10.0
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Usage:
    """A process's CPU seconds (user + system) and resident memory (bytes), read from /proc."""

    cpu_s: float
    rss: int


def read_usage(pid: int) -> Usage | None:
    """The usage of process `pid` now; None when it is gone (or there is no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime: fields 14 and 15 of stat
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return Usage(cpu, int(found[1]) * 1024 if found else 0)


class UsageMeter:
    """CPU seconds and peak RSS of a broker over a run, across restarts (one process after another)."""

    def __init__(self) -> None:
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self.peak_rss = 0

    def sample(self, pid: int) -> None:
        usage = read_usage(pid)
        if usage is None:
            return
        self._first.setdefault(pid, usage.cpu_s)
        self._last[pid] = usage.cpu_s
        self.peak_rss = max(self.peak_rss, usage.rss)

    @property
    def cpu_s(self) -> float:
        return sum(self._last[pid] - self._first[pid] for pid in self._last)

    @property
    def sampled(self) -> bool:
        return bool(self._last)

    async def watch(self, pid: Callable[[], int | None], every: float = 0.5) -> None:
        """Sample the process `pid()` names every `every` seconds, until cancelled."""
        while True:
            current = pid()
            if current is not None:
                self.sample(current)
            await asyncio.sleep(every)


class BrokerProcess:
    """A running `fleet broker` child; `restart()` stops it and starts a new one on the same port.

    `store`: the folder of its persistent store (`--persistence`), if this class gives it one;
    `persistent`: whether the broker keeps sessions across a restart (its own store or the config's).
    """

    def __init__(
        self, config: Path | None, host: str, *, store: Path | None = None, persistent: bool = False
    ) -> None:
        self._config = config
        self.host = host
        self.port = 0
        self.process: asyncio.subprocess.Process | None = None
        self.meter = UsageMeter()
        self.restarts = 0
        self.store = store
        self.persistent = persistent or store is not None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    async def start(self) -> None:
        argv = [sys.executable, "-m", "fleet", "--log-level", "warning", "broker"]
        argv += ["--host", self.host, "--port", str(self.port), "--ws-port", "0", "--sys-interval", "0"]
        if self._config is not None:
            argv += ["--config", str(self._config)]
        if self.store is not None:
            argv += ["--persistence", str(self.store)]
        # stderr goes to a file: a pipe nobody reads would fill up and stall the broker. Its own
        # process group keeps a terminal's Ctrl-C from it: the broker stops after the fleet has left.
        with tempfile.TemporaryFile() as errors:
            process = self.process = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=errors, process_group=0
            )
            assert process.stdout is not None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_START_TIMEOUT):
                    while line := (await process.stdout.readline()).decode(errors="replace"):
                        found = _LISTENING.match(line.strip())
                        if found:
                            self.port = int(found["port"])
                            return
            await self.stop()
            errors.seek(0)
            reason = errors.read().decode(errors="replace").strip().splitlines()
        raise FleetError(f"the embedded broker did not start: {reason[-1] if reason else 'no output'}")

    async def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (or with `kill` SIGKILL: a crash), then SIGKILL if it lingers; always reaped.
        Interrupted, it can be called again."""
        process = self.process
        if process is None:
            return
        self.meter.sample(process.pid)
        if process.returncode is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                async with asyncio.timeout(_STOP_TIMEOUT):
                    await process.communicate()
            except TimeoutError:
                process.kill()
                await process.wait()
        self.process = None

    async def restart(self, down: float, *, kill: bool = False) -> None:
        """Stop the broker (with `kill`: SIGKILL), wait `down` seconds, and start a new one on the same
        port."""
        await self.stop(kill=kill)
        await asyncio.sleep(down)
        await self.start()
        self.restarts += 1


class ExternalBroker(BrokerProcess):
    """An external broker that `fleet stress --broker-cmd` runs: `argv` started as a child, ready once
    `host:port` (the --broker URL's) accepts a TCP connection. It is expected to keep its sessions
    across a restart (Mosquitto with `persistence true`, say): a session lost is reported as such."""

    def __init__(self, argv: Sequence[str], host: str, port: int) -> None:
        super().__init__(None, host, persistent=True)
        self._argv = list(argv)
        self.port = port

    async def start(self) -> None:
        with tempfile.TemporaryFile() as output:
            try:
                # Its own process group, as the embedded broker's: it stops after the fleet has left.
                process = self.process = await asyncio.create_subprocess_exec(
                    *self._argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=output,
                    stderr=output,
                    process_group=0,
                )
            except OSError as exc:
                raise FleetError(f"--broker-cmd: cannot run {self._argv[0]!r}: {exc}") from None
            deadline = time.monotonic() + _START_TIMEOUT
            while process.returncode is None and time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection(self.host, self.port)
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await process.wait()
            await self.stop()
            output.seek(0)
            lines = output.read().decode(errors="replace").strip().splitlines()
        why = (
            lines[-1] if lines else f"nothing listened on {self.host}:{self.port} within {_START_TIMEOUT:g}s"
        )
        raise FleetError(f"--broker-cmd: the broker did not start: {why}")


@contextlib.asynccontextmanager
async def embedded_broker(
    config: Path | None, host: str = "127.0.0.1", *, store: Path | None = None, persistent: bool = False
) -> AsyncIterator[BrokerProcess]:
    """Run `fleet broker` (with the [broker] table of `config`, and the store `store`) on a free port
    until the block exits."""
    async with _running(BrokerProcess(config, host, store=store, persistent=persistent)) as broker:
        yield broker


@contextlib.asynccontextmanager
async def external_broker(argv: Sequence[str], host: str, port: int) -> AsyncIterator[BrokerProcess]:
    """Run the external broker `argv` until the block exits; it listens on `host:port`."""
    async with _running(ExternalBroker(argv, host, port)) as broker:
        yield broker


@contextlib.asynccontextmanager
async def _running(broker: BrokerProcess) -> AsyncIterator[BrokerProcess]:
    try:
        await broker.start()
        async with asyncio.TaskGroup() as tasks:
            watcher = tasks.create_task(
                broker.meter.watch(lambda: broker.pid), name="fleet.stress.broker.usage"
            )
            try:
                yield broker
            finally:
                watcher.cancel()
    finally:
        await broker.stop()
