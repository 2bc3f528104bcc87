"""`--html FILE`: one self-contained HTML page of a run, with charts and tables.

The charts are Plotly's. Its Python package carries plotly.js itself, so the page inlines the script
and needs nothing from the network: it opens from a CI artifact, a mail attachment or an air-gapped
lab, and still zooms and shows values on hover. The price is size: about 5 MB per page, nearly all
of it plotly.js. (Vega-Lite through Altair would need a second package to inline its scripts.)

The page is built from what the run already keeps: the report's log-bucketed histograms (so a merged
shard report renders the same way), a `Timeline` of the live totals sampled once a second while the
run goes, and for `fleet stress` the delivery account, the stages and the gates.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import html
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from fleet.report import GroupStats, Histogram, Report
from fleet.simulator import Live

__all__ = ["Gate", "Point", "Timeline", "render", "write_html"]

SAMPLE_INTERVAL = 1.0
_STAGE = re.compile(r"^t=(?P<t>[0-9.]+)s (?P<text>.*)$")


@dataclass(frozen=True, slots=True)
class Point:
    """The fleet's live totals at `t` seconds into the run."""

    t: float
    online: int
    published: int
    reconnects: int
    wills_expected: int
    errors: int


@dataclass(slots=True)
class Timeline:
    """Samples of a run's live totals, once a second while `following` runs."""

    points: list[Point] = field(default_factory=list)

    def sample(self, live: Live, t: float) -> None:
        wills = live.report.fleet().wills_expected if live.report is not None else 0
        self.points.append(
            Point(round(t, 3), live.connected, live.published, live.reconnects, wills, live.errors)
        )

    @contextlib.asynccontextmanager
    async def following(self, live: Live) -> AsyncIterator[None]:
        started = time.monotonic()

        async def sample() -> None:
            while True:
                self.sample(live, time.monotonic() - started)
                await asyncio.sleep(SAMPLE_INTERVAL)

        try:
            async with asyncio.TaskGroup() as tasks:
                task = tasks.create_task(sample(), name="fleet.html.timeline")
                try:
                    yield
                finally:
                    task.cancel()
        finally:
            self.sample(live, time.monotonic() - started)


@dataclass(frozen=True, slots=True)
class Gate:
    name: str
    passed: bool
    detail: str


# Display bins, in seconds: 1-2-5 steps from 1 µs to 100 s, so that each bar is wide and labelled.
_EDGES = (*(m * 10.0**e for e in range(-6, 2) for m in (1, 2, 5)), 100.0)


def _label(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:g} µs"
    return f"{seconds * 1e3:g} ms" if seconds < 1 else f"{seconds:g} s"


def _bins(histograms: Mapping[str, Histogram]) -> tuple[list[str], dict[str, list[int]]]:
    """Each histogram's counts in the display bins (by bucket midpoint; values beyond the edges go in
    the first or last bin), trimmed to the bins that hold anything; and the bins' labels."""
    binned: dict[str, list[int]] = {}
    for name, histogram in histograms.items():
        counts = [0] * (len(_EDGES) - 1)
        for value, count in histogram.midpoints().items():
            index = bisect.bisect_right(_EDGES, value) - 1
            counts[min(max(index, 0), len(counts) - 1)] += count
        binned[name] = counts
    used = [i for i in range(len(_EDGES) - 1) if any(counts[i] for counts in binned.values())]
    if not used:
        return [], {name: [] for name in binned}
    span = range(used[0], used[-1] + 1)
    labels = [f"{_label(_EDGES[i])} to {_label(_EDGES[i + 1])}" for i in span]
    return labels, {name: [counts[i] for i in span] for name, counts in binned.items()}


def _histogram_figure(title: str, histograms: Mapping[str, Histogram]) -> go.Figure:
    figure = go.Figure()
    shown = {name: histogram for name, histogram in histograms.items() if histogram.count}
    labels, binned = _bins(shown)
    for name, counts in binned.items():
        figure.add_trace(go.Bar(x=labels, y=counts, name=f"{name} ({shown[name].count:,})"))
    figure.update_layout(title=title, barmode="group", xaxis={"title": "time"}, yaxis={"title": "count"})
    return figure


def _timeline_figure(points: Sequence[Point], stages: Sequence[str]) -> go.Figure:
    figure = go.Figure()
    t = [p.t for p in points]
    for name, values in (
        ("devices online", [p.online for p in points]),
        ("reconnects", [p.reconnects for p in points]),
        ("wills expected", [p.wills_expected for p in points]),
        ("errors", [p.errors for p in points]),
    ):
        figure.add_trace(go.Scatter(x=t, y=values, name=name, mode="lines"))
    for stage in stages:
        found = _STAGE.match(stage)
        if found is not None:
            figure.add_vline(x=float(found["t"]), line_dash="dot", line_color="grey")
            figure.add_annotation(
                x=float(found["t"]), y=1, yref="paper", text=html.escape(found["text"][:40]), showarrow=False,
                textangle=-90, xanchor="right", yanchor="top",
            )  # fmt: skip
    figure.update_layout(title="Timeline", xaxis={"title": "seconds"}, yaxis={"title": "devices / events"})
    return figure


def _ms(value: float | int | None) -> str:
    return "-" if value is None else f"{value * 1000:,.1f}"


def _group_row(name: str, stats: GroupStats) -> list[str]:
    connect, reconnect, ack = (
        h.summary() for h in (stats.connect_latency, stats.reconnect_time, stats.publish_ack)
    )
    return [
        name,
        f"{stats.devices:,}",
        " / ".join(f"{stats.published.get(q, 0):,}" for q in ("0", "1", "2")),
        " / ".join(f"{stats.acked.get(q, 0):,}" for q in ("1", "2")),
        f"{stats.connects:,}",
        f"{stats.reconnects:,}",
        f"{stats.wills_expected:,}",
        f"{_ms(connect['p50'])} / {_ms(connect['p99'])}",
        f"{_ms(reconnect['p50'])} / {_ms(reconnect['p99'])}",
        f"{_ms(ack['p50'])} / {_ms(ack['p99'])}",
        f"{sum(stats.errors.values()):,}",
    ]


_GROUP_HEADERS = (
    "group",
    "devices",
    "published QoS 0 / 1 / 2",
    "acked QoS 1 / 2",
    "connects",
    "reconnects",
    "wills expected",
    "connect ms p50 / p99",
    "reconnect ms p50 / p99",
    "ack ms p50 / p99",
    "errors",
)


def _table(
    table_id: str, headers: Sequence[str], rows: Sequence[Sequence[str]], classes: Sequence[str] = ()
) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        f'<tr class="{classes[i] if i < len(classes) else ""}">'
        + "".join(f"<td>{html.escape(cell)}</td>" for cell in row)
        + "</tr>"
        for i, row in enumerate(rows)
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render(
    title: str,
    report: Report,
    *,
    timeline: Sequence[Point] = (),
    stages: Sequence[str] = (),
    latency: Mapping[str, Histogram] | None = None,
    latency_title: str = "",
    gates: Sequence[Gate] = (),
    promises: Sequence[tuple[str, str]] = (),
) -> str:
    """The page: charts of latency (per QoS, or given), reconnect times and the timeline, then a table
    per group, the gates, and `promises` ((what, verdict) rows: the stress account's violations and
    MQTT 5 figures). Without `latency`, the chart shows each group's publish-to-ack times."""
    if latency is None:
        latency = {name: stats.publish_ack for name, stats in sorted(report.groups.items())}
        latency_title = "Publish to PUBACK / PUBCOMP, by group"
    figures = [
        ("latency", _histogram_figure(latency_title, latency)),
        (
            "reconnects",
            _histogram_figure(
                "Reconnect time, by group",
                {name: stats.reconnect_time for name, stats in sorted(report.groups.items())},
            ),
        ),
    ]
    if timeline:
        figures.append(("timeline", _timeline_figure(timeline, stages)))
    charts = "".join(
        f'<section class="chart" id="chart-{name}">'
        + figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{name}")
        + "</section>"
        for name, figure in figures
    )
    groups = [_group_row(name, stats) for name, stats in sorted(report.groups.items())]
    if len(report.groups) != 1:
        groups.append(_group_row("fleet", report.fleet()))
    gate_table = ""
    if gates:
        rows = [[gate.name, "PASS" if gate.passed else "FAIL", gate.detail] for gate in gates]
        classes = ["pass" if gate.passed else "fail" for gate in gates]
        gate_table = "<h2>Gates</h2>" + _table("gates", ("gate", "verdict", "detail"), rows, classes)
    if promises:
        rows = [[name, text] for name, text in promises]
        gate_table += "<h2>MQTT promises</h2>" + _table("promises", ("what", "account"), rows)
    stage_list = ""
    if stages:
        stage_list = "<h2>Stages</h2><ol id=\"stages\">" + "".join(
            f"<li>{html.escape(stage)}</li>" for stage in stages
        ) + "</ol>"  # fmt: skip
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1.5rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }}
th:first-child, td:first-child, #gates td:last-child {{ text-align: left; }}
tr.pass td:nth-child(2) {{ color: #176b2c; font-weight: bold; }}
tr.fail td:nth-child(2) {{ color: #b3261e; font-weight: bold; }}
.chart {{ max-width: 1100px; }}
</style>
<script>{get_plotlyjs()}</script>
</head><body>
<h1>{html.escape(title)}</h1>
{gate_table}
{charts}
<h2>Groups</h2>
{_table("groups", _GROUP_HEADERS, groups)}
{stage_list}
</body></html>
"""


def write_html(path: Path, page: str) -> None:
    path.write_text(page, encoding="utf-8")
