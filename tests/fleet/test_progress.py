"""The progress line of `fleet run` and `fleet stress` as a log reads it: without a terminal."""

from __future__ import annotations

import asyncio
import io

from rich.console import Console

from fleet.progress import progress
from fleet.simulator import Live


class _Log(io.StringIO):
    """A log file that says when the first whole line is in."""

    def __init__(self) -> None:
        super().__init__()
        self.printed = asyncio.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        if self.getvalue().endswith("\n"):
            self.printed.set()
        return written


# A fleet at scale: its progress line is wider than 80 columns.
AT_SCALE = Live(target=10_000, connected=9_876, published=12_345_678, reconnects=1_234, errors=56)


async def test_the_progress_line_stays_one_line_when_piped() -> None:
    """Piped into an 80-column log, a progress line wider than 80 columns is printed as one line."""
    out = _Log()
    console = Console(file=out, width=80, force_terminal=False)
    async with progress(console, lambda: AT_SCALE), asyncio.timeout(15):
        await out.printed.wait()  # one line every 5 s without a terminal
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("connected 9,876/10,000  offline 124  ")
    assert lines[0].endswith("errors 56  5s")
    assert len(lines[0]) > 80
