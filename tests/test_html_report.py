"""`fleet run --html` and `fleet stress --html` write one self-contained page: opened from disk in a real
headless Chromium (Debian's, driven by Playwright) with the network cut, it loads without a console
error and shows its charts and tables with the figures of the run's JSON report."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from tests.conftest import CHROMIUM
from tests.procs import fleet_argv, run
from tests.test_metrics import FLEET, STRESS

RUN_TIMEOUT = 60.0
expect.set_options(timeout=10_000)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A page that may fetch nothing from anywhere, whose console errors and script errors fail the test."""
    context = await browser.new_context(viewport={"width": 1300, "height": 1000})
    opened = await context.new_page()
    errors: list[str] = []
    fetched: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)

    async def refuse(route: Any) -> None:
        fetched.append(route.request.url)
        await route.abort()

    await context.route(lambda url: not url.startswith("file:"), refuse)
    try:
        yield opened
    finally:
        await context.close()
    assert not errors, f"the page logged errors: {errors}"
    assert not fetched, f"the page fetched: {fetched}"


async def trace_sums(page: Page, plot: str) -> dict[str, float]:
    """The sum of each trace's y values in the Plotly chart `plot`, by trace name."""
    sums: dict[str, float] = await page.evaluate(
        """(id) => Object.fromEntries(document.getElementById(id).data.map(
            (t) => [t.name, Array.from(t.y).reduce((a, b) => a + b, 0)]))""",
        plot,
    )
    return sums


async def trace_max(page: Page, plot: str, name: str) -> float:
    found: float = await page.evaluate(
        """([id, name]) => Math.max(...Array.from(
            document.getElementById(id).data.find((t) => t.name === name).y))""",
        [plot, name],
    )
    return found


def counts(counter: dict[str, int], keys: tuple[str, ...]) -> str:
    return " / ".join(f"{counter.get(key, 0):,}" for key in keys)


async def test_run_page_shows_the_report_s_figures(tmp_path: Path, page: Page) -> None:
    """The `fleet run --html` page draws its three charts: the publish-to-ack histogram holds every
    acknowledged publish, the timeline reaches the fleet's size online, and the group table shows the
    report's published and acked counts."""
    config = tmp_path / "fleet.toml"
    config.write_text(FLEET)
    out, page_path = tmp_path / "report.json", tmp_path / "report.html"
    argv = fleet_argv("run", config, "--duration", 3, "--report", out, "--html", page_path)
    done = run(argv, timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert f"HTML report written to {page_path}" in done.stderr
    report = json.loads(out.read_text())

    await page.goto(page_path.as_uri())
    await expect(page.locator(".js-plotly-plot")).to_have_count(3)
    acks = await trace_sums(page, "plot-latency")
    assert sum(acks.values()) == report["fleet"]["publish_ack_s"]["count"] > 0
    assert await trace_max(page, "plot-timeline", "devices online") == report["fleet"]["devices"] == 9
    for group, stats in report["groups"].items():
        row = page.locator("#groups tbody tr", has=page.locator("td", has_text=group))
        await expect(row.locator("td").nth(1)).to_have_text(str(stats["devices"]))
        await expect(row.locator("td").nth(2)).to_have_text(counts(stats["published"], ("0", "1", "2")))
        await expect(row.locator("td").nth(3)).to_have_text(counts(stats["acked"], ("1", "2")))


async def test_stress_page_shows_gates_latency_and_stages(tmp_path: Path, page: Page) -> None:
    """The `fleet stress --html` page shows a failed gate as FAIL, a delivery-latency histogram per QoS
    holding every delivered message of the account, the reconnect-time distribution with every
    reconnect, and the scenario's stages."""
    config = tmp_path / "stress.toml"
    config.write_text(STRESS.format(tag=uuid.uuid4().hex[:6]))
    out, page_path = tmp_path / "report.json", tmp_path / "report.html"
    argv = fleet_argv("stress", config, "--report", out, "--html", page_path, "--max-reconnect-p99", "0ms")
    done = run(argv, timeout=RUN_TIMEOUT)
    assert done.returncode == 3, done.stderr
    report = json.loads(out.read_text())

    await page.goto(page_path.as_uri())
    await expect(page.locator(".js-plotly-plot")).to_have_count(3)
    gate = page.locator("#gates tbody tr", has=page.locator("td", has_text="reconnect"))
    await expect(gate.locator("td").nth(1)).to_have_text("FAIL")
    delivered = sum(row["delivered"] for row in report["delivery"]["telemetry"].values())
    assert sum((await trace_sums(page, "plot-latency")).values()) == delivered > 0
    reconnects = report["fleet"]["fleet"]["reconnects"]
    assert sum((await trace_sums(page, "plot-reconnects")).values()) == reconnects > 0
    stages = report["meta"]["timeline"]
    assert stages
    await expect(page.locator("#stages li")).to_have_count(len(stages))


async def test_a_merged_shard_report_renders_the_same_page(tmp_path: Path, page: Page) -> None:
    """`fleet report html` renders the merged report of two shards: its charts hold every shard's acks
    and reconnect times, and its table counts the whole fleet (there is no timeline in a report)."""
    config = tmp_path / "fleet.toml"
    config.write_text(FLEET)
    shards = [tmp_path / f"shard-{n}.json" for n in (1, 2)]
    for number, path in enumerate(shards, start=1):
        argv = fleet_argv("run", config, "--shard", f"{number}/2", "--duration", 2, "--report", path)
        done = run(argv, timeout=RUN_TIMEOUT)
        assert done.returncode == 0, done.stderr
    merged, page_path = tmp_path / "merged.json", tmp_path / "merged.html"
    done = run(fleet_argv("report", "merge", *shards, "-o", merged), timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stderr
    done = run(fleet_argv("report", "html", merged, "-o", page_path), timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stderr
    report = json.loads(merged.read_text())

    await page.goto(page_path.as_uri())
    await expect(page.locator(".js-plotly-plot")).to_have_count(2)
    assert sum((await trace_sums(page, "plot-latency")).values()) == report["fleet"]["publish_ack_s"]["count"]
    fleet_row = page.locator("#groups tbody tr", has=page.locator("td", has_text="fleet"))
    await expect(fleet_row.locator("td").nth(1)).to_have_text(str(report["fleet"]["devices"]))
    assert report["fleet"]["devices"] == 9
