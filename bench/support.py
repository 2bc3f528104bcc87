"""Helpers the benchmarks share: ports, CPU and TCP counters, fd limits, formatting, run records.

The benchmarks run as scripts (`python bench/NAME.py`), so this module is imported by its plain name.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import resource
import socket
import subprocess
import tempfile
import time
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


def raise_fd_limit(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
        soft = hard
    if need > soft:
        raise SystemExit(f"need ~{need} file descriptors, the limit is {soft} (hard {hard})")
    return soft


def git_head(package: str) -> str | None:
    """`git rev-parse --short HEAD`, marked when `package`/ has uncommitted changes; None without git."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):

        def git(*argv: str) -> str:
            done = subprocess.run(
                ["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
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
