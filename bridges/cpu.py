"""The share of a core the bridge's process has used lately: the intake's shedding and grpc's poller
thread follow it."""

from __future__ import annotations

import math

__all__ = ["CpuShare"]


class CpuShare:
    """The process's CPU time over windows of at least `window` seconds, as a share of one core.

    `update(now, cpu)` takes the loop's clock and `time.process_time()`; it returns the share of the
    window that has just ended, or None while the current one is shorter than `window` (the first
    call only opens one)."""

    __slots__ = ("_cpu_at", "_window_at", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self._window_at = -math.inf
        self._cpu_at = 0.0

    def update(self, now: float, cpu: float) -> float | None:
        elapsed = now - self._window_at
        if elapsed < self.window:
            return None
        share = None if elapsed == math.inf else (cpu - self._cpu_at) / elapsed
        self._window_at, self._cpu_at = now, cpu
        return share
