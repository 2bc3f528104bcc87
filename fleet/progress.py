"""The live progress line of `fleet run` (stderr) and the summary table at the end (rich)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

from rich.console import Console
from rich.live import Live as RichLive
from rich.table import Table
from rich.text import Text

from fleet.report import GroupStats, Report
from fleet.simulator import Live

__all__ = ["progress", "summary_table"]


def _line(live: Live, rate: float, elapsed: float) -> Text:
    offline = max(0, live.target - live.connected)
    text = Text.assemble(
        ("connected ", "bold"),
        (f"{live.connected:,}/{live.target:,}", "green" if live.connected == live.target else "yellow"),
        f"  offline {offline:,}  {rate:,.0f} msg/s  published {live.published:,}",
        f"  reconnects {live.reconnects:,}  ",
        (f"errors {live.errors:,}", "red" if live.errors else ""),
        f"  {elapsed:,.0f}s",
    )
    if live.last_error:
        text.append(f"\n  last error: {live.last_error}", style="red")
    return text


@contextlib.asynccontextmanager
async def progress(console: Console, snapshot: Callable[[], Live]) -> AsyncIterator[None]:
    """Show a live progress line while the block runs; a plain line every 5 s when not a terminal."""
    started = time.monotonic()
    interval = 0.5 if console.is_terminal else 5.0

    async def render(view: RichLive | None) -> None:
        last, last_at = snapshot().published, time.monotonic()
        while True:
            await asyncio.sleep(interval)
            live = snapshot()
            now = time.monotonic()
            line = _line(live, (live.published - last) / (now - last_at), now - started)
            last, last_at = live.published, now
            if view is not None:
                view.update(line)
            else:
                console.print(line, soft_wrap=True)  # one line per tick in a log, however narrow

    with contextlib.ExitStack() as stack:
        view = None
        if console.is_terminal:
            view = stack.enter_context(RichLive(console=console, refresh_per_second=4, transient=True))
        async with asyncio.TaskGroup() as tasks:
            task = tasks.create_task(render(view), name="fleet.progress")
            try:
                yield
            finally:
                task.cancel()


def _column(stats: GroupStats) -> list[str]:
    latency = stats.connect_latency.summary()
    reconnect = stats.reconnect_time.summary()

    def ms(value: float | int | None) -> str:
        return "-" if value is None else f"{value * 1000:,.1f}"

    def counts(counter: Counter[str], keys: tuple[str, ...] | None = None) -> str:
        if keys is not None:
            return " / ".join(f"{counter.get(key, 0):,}" for key in keys)
        return ", ".join(f"{key} {value:,}" for key, value in counter.most_common()) or "-"

    return [
        f"{stats.devices:,}",
        counts(stats.published, ("0", "1", "2")),
        counts(stats.acked, ("1", "2")),
        f"{stats.connects:,}",
        f"{stats.reconnects:,}",
        counts(stats.drops),
        f"{stats.wills_expected:,}",
        f"{ms(latency['p50'])} / {ms(latency['p99'])}",
        f"{ms(reconnect['p50'])} / {ms(reconnect['p99'])}",
        counts(stats.commands),
        counts(stats.errors),
    ]


def _reasons(counter: Counter[str]) -> str:
    return ", ".join(f"{reason} {count:,}" for reason, count in sorted(counter.items())) or "-"


_ROWS = (
    "devices",
    "published QoS 0 / 1 / 2",
    "acked QoS 1 / 2",
    "connects",
    "reconnects",
    "drops",
    "wills expected",
    "connect ms p50 / p99",
    "reconnect ms p50 / p99",
    "commands",
    "errors",
)


def summary_table(report: Report, title: str = "fleet run") -> Table:
    """One column per group (and the fleet), one row per figure, under `title` (the command)."""
    groups = dict(sorted(report.groups.items()))
    if len(groups) != 1:
        groups["fleet"] = report.fleet()
    columns = {name: _column(stats) for name, stats in groups.items()}
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for name in columns:
        table.add_column(name, justify="right", style="bold" if name == "fleet" else None)
    for index, row in enumerate(_ROWS):
        table.add_row(row, *(values[index] for values in columns.values()))
    # MQTT 5 rows, only when they say something, so that a 3.1.1 fleet's table stays as it was.
    if any(stats.disconnects for stats in groups.values()):
        table.add_row("broker DISCONNECTs", *(_reasons(stats.disconnects) for stats in groups.values()))
    if any(stats.alias_bytes_saved for stats in groups.values()):
        table.add_row("topic alias bytes saved", *(f"{s.alias_bytes_saved:,}" for s in groups.values()))
    return table
