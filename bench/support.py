"""Helpers the benchmarks share: ports, CPU and TCP counters, fd limits, formatting, run records, and
subprocesses stopped by their own PIDs.

The benchmarks run as scripts (`python bench/NAME.py`), so this module is imported by its plain name.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def host_busy_seconds() -> float:
    """CPU seconds all CPUs of the host spent busy (not idle, not waiting for I/O) so far."""
    t = psutil.cpu_times()
    idle = t.idle + sum(getattr(t, k, 0.0) for k in ("iowait", "steal", "guest", "guest_nice"))
    return float(sum(t) - idle)


def tcp_counters() -> dict[str, int]:
    """Host-wide TCP counters that explain slow connects: accept-queue overflows, SYN retransmits."""
    want = ("ListenOverflows", "TCPSynRetrans")
    try:
        rows = [
            ln.split()
            for ln in Path("/proc/net/netstat").read_text().splitlines()
            if ln.startswith("TcpExt:")
        ]
        return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:], strict=True) if k in want}
    except (OSError, IndexError, ValueError):
        return {}


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x" if a / b >= 0.1 else f"{a / b:.3f}x"


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join("    | " + line for line in text.splitlines()[-lines:])


def raise_fd_limit(need: int, cap: int | None = None) -> int:
    """Raise the soft fd limit, which children inherit, to the hard one, or to `cap` if that is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if cap is None else cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft != want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    if need > soft:
        raise SystemExit(f"need ~{need} file descriptors, the limit is {soft} (hard {hard})")
    return soft


def git_head(package: str, root: Path = ROOT) -> str | None:
    """`git rev-parse --short HEAD` of the checkout at `root`, marked when `package`/ has uncommitted
    changes; None without git."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):

        def git(*argv: str) -> str:
            done = subprocess.run(
                ["git", *argv], cwd=root, capture_output=True, text=True, timeout=10, check=False
            )
            return done.stdout.strip()

        dirty = git("status", "--porcelain", "--", package)
        return git("rev-parse", "--short", "HEAD") + (f" + uncommitted {package}/ changes" if dirty else "")
    return None


def run_record(started: datetime.datetime, command: str, args: argparse.Namespace) -> dict[str, Any]:
    """The head of a benchmark's JSON: when, the command, the machine and every setting."""
    return {
        "date": started.isoformat(timespec="seconds"),
        "command": command,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }


def workdir(stack: contextlib.ExitStack, log_dir: Path | None, prefix: str) -> Path:
    """`log_dir` (kept), or a temporary directory removed with `stack`; readable by a broker that
    drops to its own user."""
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir
    else:
        path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))
    os.chmod(path, 0o755)
    return path


def fsync_latency(folder: Path, seconds: float) -> float:
    """Mean seconds of a 4 KB write plus fsync on a file in `folder` (the disk's durability cost)."""
    path = folder / "fsync.probe"
    count = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        start = time.perf_counter()
        while count == 0 or time.perf_counter() - start < seconds:
            os.pwrite(fd, os.urandom(4096), 0)
            os.fsync(fd)
            count += 1
        return (time.perf_counter() - start) / count
    finally:
        os.close(fd)
        path.unlink()


def stop_pid(
    proc: subprocess.Popen[bytes], name: str, timeout: float = 10.0, *, signalled: bool = False
) -> None:
    """SIGTERM (unless `signalled` already), then SIGKILL after `timeout` s: only this process's own PID."""
    if proc.poll() is not None:
        return
    if not signalled:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f"  ! {name} ignored SIGTERM for {timeout:.0f} s: killing pid {proc.pid}", flush=True)
        proc.kill()
        proc.wait(5)


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Best effort: the child gets SIGTERM if this process dies without cleaning up (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class BenchError(Exception):
    """Something failed that makes the rest of a phase (or run) meaningless."""


class Proc:
    """A subprocess in its own session, its output in a log file; stop() signals only its PID."""

    LIVE: set[Proc] = set()  # noqa: RUF012 - every started process, for the last-resort cleanup

    def __init__(
        self,
        name: str,
        cmd: list[str],
        log_path: Path,
        *,
        pipes: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.cmd = cmd
        self.log_path = log_path
        self.pipes = pipes
        self.env = None if env is None else {**os.environ, **env}  # the child's: ours, plus `env`
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None
        self.terminated = False

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.PIPE if self.pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.pipes else log,
                stderr=log if self.pipes else subprocess.STDOUT,
                cwd=ROOT,
                env=self.env,
                start_new_session=True,  # Ctrl-C reaches this script only; it stops the others
                preexec_fn=die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            )
        Proc.LIVE.add(self)
        self.ps = psutil.Process(self.proc.pid)

    def check_alive(self) -> None:
        if self.proc is None:
            return
        rc = self.proc.poll()
        if rc is not None:
            raise BenchError(f"{self.name} exited with code {rc}; log tail:\n{log_tail(self.log_path)}")

    def cpu_seconds(self) -> float:
        if self.ps is not None:
            with contextlib.suppress(psutil.Error):
                return cpu_seconds(self.ps)
        return 0.0

    def rss(self) -> int:
        if self.ps is not None:
            with contextlib.suppress(psutil.Error):
                return int(self.ps.memory_info().rss)
        return 0

    def terminate(self) -> None:
        """SIGTERM, once: a second one may cut a clean shutdown short."""
        if self.proc is not None and self.proc.poll() is None and not self.terminated:
            self.proc.terminate()
            self.terminated = True

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (unless sent already), then SIGKILL after `timeout` s: only this process's own PID."""
        Proc.LIVE.discard(self)
        proc = self.proc
        if proc is None:
            return
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        stop_pid(proc, self.name, timeout, signalled=self.terminated)


CALIBRATION_CONFIG: dict[str, Any] = {
    "seed": 1,
    "groups": [
        {
            "name": "calibration",
            "count": 1,
            "payload_size": 140,
            "telemetry": {
                "temperature": {"kind": "gaussian", "mean": 21.0, "stddev": 0.5},
                "battery": {"kind": "uniform", "min": 10.0, "max": 100.0},
            },
        }
    ],
}


def calibrate(seconds: float = 1.0, rounds: int = 5) -> dict[str, float]:
    """The machine's speed: µs per model step, one `Device.telemetry()` of a seeded device (two
    metrics, a 140-byte JSON payload), the best of `rounds` rounds of about `seconds` / `rounds`
    each (the best, because other processes only ever slow a round down). Comparable across runs
    and machines; a slower machine shows a larger figure."""
    from fleet.device import Device
    from fleet.schema import FleetConfig

    config = FleetConfig.model_validate(CALIBRATION_CONFIG)
    device = Device(config.groups[0], 0, config.seed)
    best = float("inf")
    steps = 0
    for _ in range(rounds):
        count = 0
        start = time.perf_counter()
        while count == 0 or time.perf_counter() - start < seconds / rounds:
            for _ in range(100):
                device.telemetry(1_764_400_000.0)
            count += 100
        best = min(best, (time.perf_counter() - start) / count)
        steps += count
    return {"us_per_model_step": round(best * 1e6, 3), "steps": steps, "seconds": seconds}
