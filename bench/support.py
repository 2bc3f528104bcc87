"""Helpers the benchmarks share: ports, CPU and TCP counters, fd limits, formatting.

The benchmarks run as scripts (`python bench/NAME.py`), so this module is imported by its plain name.
"""

from __future__ import annotations

import resource
import socket
from pathlib import Path

import psutil

HOST = "127.0.0.1"


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
