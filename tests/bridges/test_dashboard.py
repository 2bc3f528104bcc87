"""The dashboard page at `/`, in a real headless Chromium (Debian's `chromium`, driven by Playwright),
against a real broker, a real bridge and a real simulated fleet.

`make screenshot` runs `test_screenshot_of_the_demo_fleet` with DASHBOARD_SCREENSHOT=docs/dashboard.png:
the picture in the README. Without it the screenshot goes to the test's temporary folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from bridges.app import SSE_TRANSPORT, WS_TRANSPORT
from bridges.auth import Access
from bridges.hub import Hub
from broker.server import Broker
from fleet.config import load_toml
from fleet.endpoint import Endpoint
from fleet.report import Report
from fleet.schema import FleetConfig
from fleet.simulator import Target, simulate
from tests.bridges.conftest import (
    RunningBridge,
    add_token,
    consumers,
    publish_and_wait,
    running_bridge,
    wait_until,
)
from tests.conftest import CHROMIUM
from tests.procs import ROOT
from tests.rawmqtt import RawClient

TIMEOUT = 10.0
TIMEOUT_MS = TIMEOUT * 1000
expect.set_options(timeout=TIMEOUT_MS)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A page whose script errors fail the test."""
    opened = await browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
    finally:
        await opened.close()
    assert not errors, f"the page raised: {errors}"


@pytest.fixture
async def bridge(broker: Broker) -> AsyncIterator[RunningBridge]:
    """A bridge whose SSE clients reconnect after 100 ms instead of 3 s."""
    async with running_bridge(broker.port, sse_retry_ms=100) as running:
        yield running


async def open_dashboard(page: Page, bridge: RunningBridge, transport: str = "sse") -> None:
    """Load `/` and wait until its stream is live."""
    await page.goto(f"{bridge.http}/?transport={transport}")
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")


def fleet_config(groups: list[dict[str, Any]]) -> FleetConfig:
    return FleetConfig.model_validate({"seed": 7, "connect_rate": 10_000, "groups": groups})


@contextlib.asynccontextmanager
async def running_fleet(broker: Broker, config: FleetConfig) -> AsyncIterator[asyncio.Task[Report]]:
    """The simulator on `broker`, once every device has announced itself; stopped (cleanly) on exit."""
    ready = asyncio.Event()
    stop = asyncio.Event()
    target = Target(Endpoint("mqtt", "127.0.0.1", broker.port))
    task = asyncio.create_task(simulate(config, target, stop=stop, ready=ready.set), name="test.fleet")
    try:
        async with asyncio.timeout(TIMEOUT):
            await ready.wait()
        yield task
    finally:
        stop.set()
        async with asyncio.timeout(TIMEOUT):
            await task


def cell(page: Page, device: str) -> Any:
    return page.locator(f'#grid .cell[data-device="{device}"]')


def card(page: Page, device: str) -> Any:
    return page.locator(f'#cards .card[data-device="{device}"]')


async def test_the_page_and_its_files_are_served(bridge: RunningBridge) -> None:
    """`/` is the HTML page, and its script and style come from the bridge itself, not from a CDN."""
    async with httpx.AsyncClient(base_url=bridge.http) as client:
        index = await client.get("/")
        assert index.status_code == 200
        assert index.headers["content-type"].startswith("text/html")
        assets = re.findall(r'(?:src|href)="([^"]+)"', index.text)
        assert sorted(assets) == ["dashboard/app.js", "dashboard/style.css"]
        for asset in assets:
            response = await client.get(f"/{asset}")
            assert response.status_code == 200, asset
            assert "http://" not in response.text
            assert "https://" not in response.text


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_the_page_loads_and_devices_appear(
    broker: Broker, bridge: RunningBridge, page: Page, transport: str
) -> None:
    """Over either transport, each device of a running fleet appears online with its live values."""
    await open_dashboard(page, bridge, transport)
    temperature = {"kind": "random_walk", "start": 21, "min": 16, "max": 27, "step": 0.3}
    config = fleet_config(
        [{"name": "thermo", "count": 3, "interval": 0.1, "telemetry": {"temperature": temperature}}]
    )
    async with running_fleet(broker, config):
        for index in range(3):
            await expect(cell(page, f"thermo-{index:04d}")).to_have_attribute("data-state", "online")
        thermo = card(page, "thermo-0000")
        await expect(thermo.locator(".metric .name")).to_have_text("temperature")
        await expect(thermo.locator("canvas.spark")).to_have_count(1)
        await expect(page.locator("#stat-online")).to_have_text("3")
    await expect(page.locator("#stat-gaps")).to_have_text("0")


async def test_the_transport_switch_moves_the_page_to_the_other_stream(
    bridge: RunningBridge, page: Page, mqtt: aiomqtt.Client
) -> None:
    """Choosing WebSocket closes the EventSource and opens /ws (and back); events keep arriving."""
    await open_dashboard(page, bridge)
    await page.check('input[name="transport"][value="ws"]')
    await expect(page.locator("#connection")).to_have_text("WebSocket: live")
    await wait_until(lambda: consumers(bridge.hub, SSE_TRANSPORT) == 0, "the EventSource to close")
    assert consumers(bridge.hub, WS_TRANSPORT) == 1
    assert page.url.endswith("?transport=ws")
    await publish_and_wait(mqtt, bridge.hub, [telemetry("pump-3", 0)])
    await expect(card(page, "pump-3").locator(".seq")).to_have_text("seq 0")

    await page.check('input[name="transport"][value="sse"]')
    # The switch back resumes after the last event the WebSocket delivered: the ids are the hub's.
    await expect(page.locator("#connection")).to_have_attribute("data-state", "resuming")
    await wait_until(lambda: consumers(bridge.hub, WS_TRANSPORT) == 0, "the WebSocket to close")
    await publish_and_wait(mqtt, bridge.hub, [telemetry("pump-3", 1)])
    await expect(card(page, "pump-3").locator(".seq")).to_have_text("seq 1")
    await expect(page.locator("#connection")).to_contain_text("nothing missed")


async def test_an_abrupt_drop_turns_the_device_offline_through_its_will(
    broker: Broker, bridge: RunningBridge, page: Page
) -> None:
    """A device whose socket dies without DISCONNECT turns red on the page: the broker fired its will."""
    await open_dashboard(page, bridge)
    device = await RawClient.open(broker.port)
    try:
        will = b'{"online": false, "reason": "lost"}'
        await device.connect("meter-0001", will=("fleet/meter-0001/status", will, 1, True))
        device.publish("fleet/meter-0001/status", b'{"online": true}', 0, retain=True)
        await expect(cell(page, "meter-0001")).to_have_attribute("data-state", "online")
    finally:
        device.abort()
    await expect(cell(page, "meter-0001")).to_have_attribute("data-state", "lost")
    await expect(cell(page, "meter-0001")).to_have_attribute("title", re.compile("last will"))
    await expect(page.locator('#log-list li[data-kind="will"]')).to_contain_text("meter-0001 offline")
    await expect(page.locator("#stat-lost")).to_have_text("1")


async def test_a_page_opened_later_starts_with_the_bridge_s_recent_events(
    broker: Broker, bridge: RunningBridge, page: Page, mqtt: aiomqtt.Client
) -> None:
    """Over SSE the page begins with the bridge's replay ring: a will that fired before it opened shows."""
    device = await RawClient.open(broker.port)
    will = b'{"online": false, "reason": "lost"}'
    await device.connect("meter-0002", will=("fleet/meter-0002/status", will, 1, True))
    device.publish("fleet/meter-0002/status", b'{"online": true}', 0, retain=True)
    await publish_and_wait(mqtt, bridge.hub, [telemetry("meter-0002", seq) for seq in range(3)])
    events_in = bridge.hub.events_in
    device.abort()
    await wait_until(lambda: bridge.hub.events_in > events_in, "the will to reach the bridge")

    await open_dashboard(page, bridge)
    await expect(cell(page, "meter-0002")).to_have_attribute("data-state", "lost")
    await expect(card(page, "meter-0002").locator(".seq")).to_have_text("seq 2")
    await expect(page.locator("#log-list")).to_contain_text("history from the bridge, from event")
    await expect(page.locator("#stat-gaps")).to_have_text("0")


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_a_command_from_the_page_reaches_the_device_and_its_ack_is_shown(
    broker: Broker, bridge: RunningBridge, page: Page, transport: str
) -> None:
    """The form publishes a command through the bridge; the simulated device runs it, and its ack shows."""
    await open_dashboard(page, bridge, transport)
    config = fleet_config([{"name": "thermo", "count": 2, "interval": 0.5}])
    async with running_fleet(broker, config) as fleet:
        await expect(cell(page, "thermo-0001")).to_have_attribute("data-state", "online")
        await cell(page, "thermo-0001").click()  # addresses the form to it
        await expect(page.locator('#command-form input[name="device"]')).to_have_value("thermo-0001")
        await page.select_option('#command-form select[name="op"]', "set_interval")
        await page.fill('#command-form input[name="value"]', "0.2")
        await page.click('#command-form button[type="submit"]')
        row = page.locator("#command-table tbody tr").first
        await expect(row).to_have_attribute("data-state", "ack")
        await expect(row.locator("td").last).to_have_text("ack: ok")
        command_id = await row.get_attribute("data-command")
        acks = page.locator('#log-list li[data-kind="ack"]')
        await expect(acks).to_contain_text(f"thermo-0001 {command_id}")
    report = fleet.result()
    assert dict(report.group("thermo").commands) == {"set_interval": 1}


async def test_a_command_the_bridge_refuses_shows_the_reason(bridge: RunningBridge, page: Page) -> None:
    """A command to a topic the bridge may not publish to is marked failed with the bridge's reason."""
    await open_dashboard(page, bridge)
    await page.fill('#command-form input[name="device"]', "a/b")  # fleet/a/b/cmd is not fleet/+/cmd
    await page.click('#command-form button[type="submit"]')
    row = page.locator("#command-table tbody tr").first
    await expect(row).to_have_attribute("data-state", "failed")
    await expect(row.locator("td").last).to_contain_text("refused: ")


async def test_a_command_nobody_acks_goes_from_waiting_to_no_ack(bridge: RunningBridge, page: Page) -> None:
    """A command to a device that does not exist is published, shown as waiting for its ack, and
    marked "no ack" once the ack timeout (10 s, fast-forwarded) passes, instead of "sending" forever."""
    await page.clock.install()
    await open_dashboard(page, bridge)
    await page.fill('#command-form input[name="device"]', "ghost-0009")
    await page.click('#command-form button[type="submit"]')
    row = page.locator("#command-table tbody tr").first
    await expect(row).to_have_attribute("data-state", "waiting")
    await expect(row.locator("td").last).to_have_text("published, waiting for the ack")
    await page.clock.fast_forward("00:11")
    await expect(row).to_have_attribute("data-state", "no-ack")
    await expect(row.locator("td").last).to_contain_text("no ack within 10 s")


async def test_the_log_stamps_replayed_history_with_the_bridge_s_receive_time(
    bridge: RunningBridge, page: Page, mqtt: aiomqtt.Client
) -> None:
    """A status from before the page opened is logged at the time the bridge received it, not at the
    time the page did (here the page's clock runs three hours ahead)."""
    await publish_and_wait(mqtt, bridge.hub, [("fleet/meter-0003/status", {"online": True})])
    received_at = bridge.hub.ring[-1].received_at
    await page.clock.install(time=received_at + 3 * 3600)
    await open_dashboard(page, bridge)
    entry = page.locator('#log-list li[data-kind="status"]', has_text="meter-0003 online")
    shown = await page.evaluate("(at) => new Date(at * 1000).toLocaleTimeString()", received_at)
    await expect(entry.locator("time")).to_have_text(shown)
    stamp = await entry.locator("time").get_attribute("datetime")
    assert stamp is not None
    assert abs(datetime.fromisoformat(stamp).timestamp() - received_at) < 0.002, (stamp, received_at)


async def test_over_websocket_the_page_starts_with_the_retained_statuses(
    bridge: RunningBridge, page: Page, mqtt: aiomqtt.Client
) -> None:
    """The bridge's retained statuses colour the grid of a WebSocket page at once; being state, not
    news, they are neither logged nor counted as reconnects."""
    await mqtt.publish("fleet/meter-0005/status", b'{"online": false, "reason": "lost"}', qos=1, retain=True)
    await wait_until(lambda: len(bridge.hub.retained) == 1, "the status in the bridge's cache")
    await open_dashboard(page, bridge, "ws")
    await expect(cell(page, "meter-0005")).to_have_attribute("data-state", "lost")
    await publish_and_wait(mqtt, bridge.hub, [("fleet/meter-0006/status", {"online": True})])
    await expect(page.locator("#log-list")).to_contain_text("meter-0006 online")  # logged after it
    await expect(page.locator("#log-list")).not_to_contain_text("meter-0005")
    await expect(page.locator("#stat-device-reconnects")).to_have_text("0")


async def test_device_reconnects_count_births_after_a_will_not_the_page_s_streams(
    broker: Broker, bridge: RunningBridge, page: Page
) -> None:
    """A device that comes back online after its will fired counts as one device reconnect; the page's
    own stream reconnects are counted apart."""
    await open_dashboard(page, bridge)
    will = ("fleet/meter-0004/status", b'{"online": false, "reason": "lost"}', 1, True)
    for attempt in range(2):
        device = await RawClient.open(broker.port)
        await device.connect("meter-0004", will=will)
        device.publish("fleet/meter-0004/status", b'{"online": true}', 0, retain=True)
        await expect(cell(page, "meter-0004")).to_have_attribute("data-state", "online")
        await expect(page.locator("#stat-device-reconnects")).to_have_text(str(attempt))
        device.abort()
        await expect(cell(page, "meter-0004")).to_have_attribute("data-state", "lost")
    await expect(page.locator("#log-list")).to_contain_text("meter-0004 back online (was offline, will)")
    await expect(page.locator("#stat-stream-reconnects")).to_have_text("0")


def telemetry(device: str, seq: int) -> tuple[str, dict[str, Any]]:
    return f"fleet/{device}/telemetry", {"device": device, "seq": seq, "values": {"level": seq % 7}}


def cut_sse_streams(bridge: RunningBridge) -> None:
    """End every SSE stream from the server side, as a `disconnect` policy or a shutdown does."""
    for consumer in [c for c in bridge.hub.consumers if c.transport == SSE_TRANSPORT]:
        consumer.close("cut by the test")


async def test_after_the_server_drops_the_stream_the_page_resumes_without_a_gap(
    bridge: RunningBridge, page: Page, mqtt: aiomqtt.Client
) -> None:
    """EventSource reconnects with Last-Event-ID: events sent while it was away arrive, seq has no gap,
    and the page says so."""
    await open_dashboard(page, bridge)
    await publish_and_wait(mqtt, bridge.hub, [telemetry("pump-1", seq) for seq in range(5)])
    await expect(card(page, "pump-1").locator(".seq")).to_have_text("seq 4")

    cut_sse_streams(bridge)
    # In the same loop turn as the cut, so the page cannot be connected: these exist only in the ring.
    for topic, payload in (telemetry("pump-1", seq) for seq in range(5, 10)):
        bridge.hub.ingest(topic, json.dumps(payload).encode(), qos=1, retain=False)
    await wait_until(lambda: consumers(bridge.hub, SSE_TRANSPORT) == 1, "the page to reconnect", TIMEOUT)
    await publish_and_wait(mqtt, bridge.hub, [telemetry("pump-1", seq) for seq in range(10, 12)])

    await expect(card(page, "pump-1").locator(".seq")).to_have_text("seq 11")
    await expect(page.locator("#connection")).to_have_attribute("data-state", "resumed")
    await expect(page.locator("#connection")).to_contain_text("nothing missed")
    await expect(page.locator("#stat-gaps")).to_have_text("0")
    await expect(page.locator("#stat-stream-reconnects")).to_have_text("1")
    await expect(page.locator("#stat-device-reconnects")).to_have_text("0")  # the page's, not a device's


async def test_a_dropped_websocket_reconnects_and_says_events_were_missed(
    bridge: RunningBridge, page: Page, mqtt: aiomqtt.Client
) -> None:
    """A WebSocket the bridge closes cannot resume: the page says so, reconnects, and goes on."""
    await open_dashboard(page, bridge, "ws")
    for consumer in [c for c in bridge.hub.consumers if c.transport == WS_TRANSPORT]:
        consumer.close("cut by the test")  # the bridge closes the socket with code 1008
    await expect(page.locator("#log-list")).to_contain_text("WebSocket closed (1008: cut by the test)")
    await expect(page.locator("#connection")).to_have_text("WebSocket: live")
    await expect(page.locator("#stat-stream-reconnects")).to_have_text("1")
    await publish_and_wait(mqtt, bridge.hub, [telemetry("pump-4", 0)])
    await expect(card(page, "pump-4").locator(".seq")).to_have_text("seq 0")


async def test_a_resume_beyond_the_replay_ring_shows_the_reset(
    broker: Broker, page: Page, mqtt: aiomqtt.Client
) -> None:
    """When the bridge no longer holds the missed events, the page says 'reset' and counts the seq gap."""
    async with running_bridge(broker.port, hub=Hub(ring_size=4), sse_retry_ms=100) as bridge:
        await open_dashboard(page, bridge)
        await publish_and_wait(mqtt, bridge.hub, [telemetry("pump-2", 0)])
        await expect(card(page, "pump-2").locator(".seq")).to_have_text("seq 0")
        cut_sse_streams(bridge)
        for topic, payload in (telemetry("pump-2", seq) for seq in range(1, 11)):
            bridge.hub.ingest(topic, json.dumps(payload).encode(), qos=1, retain=False)
        await expect(page.locator("#connection")).to_have_attribute("data-state", "reset")
        await expect(card(page, "pump-2").locator(".seq")).to_have_text("seq 10")
        await expect(page.locator("#stat-gaps")).to_have_text("6")  # seq 1..6 fell out of a ring of 4


async def test_screenshot_of_the_demo_fleet(
    broker: Broker, bridge: RunningBridge, page: Page, tmp_path: Path
) -> None:
    """The demo fleet (configs/demo.toml, faster) on the page, with wills fired and a command acked,
    saved as a PNG."""
    path = Path(os.environ.get("DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
    demo = load_toml(ROOT / "configs" / "demo.toml")
    for group in demo["groups"]:
        group["interval"] = 0.25
    vans = demo["groups"][-1]
    # Vans drop after 2 s, some abruptly (their will fires), and stay away for the rest of the test.
    vans["connectivity"] = {
        "mode": "intermittent",
        "online": {"dist": "fixed", "value": 2},
        "offline": {"dist": "fixed", "value": 60},
        "ends": {"clean": 1, "abrupt": 1},
    }
    config = fleet_config(demo["groups"])
    await open_dashboard(page, bridge)
    async with running_fleet(broker, config):
        for device in ("van-00", "door-0000", "thermo-0000"):
            await cell(page, device).click()  # charted first
        await page.select_option('#command-form select[name="op"]', "ping")
        await page.click('#command-form button[type="submit"]')
        await expect(page.locator("#command-table tbody tr").first).to_have_attribute("data-state", "ack")
        await expect(page.locator("#stat-lost")).not_to_have_text("0")
        await expect(card(page, "thermo-0000").locator(".seq")).to_have_text(
            re.compile(r"seq (1\d|[2-9]\d)"), timeout=TIMEOUT_MS
        )
        await page.screenshot(path=path, full_page=True)


@pytest.mark.alone  # it times the page: `make test` runs it after the others, with none beside it
async def test_the_page_stays_responsive_with_the_10k_fleet(bridge: RunningBridge, page: Page) -> None:
    """The 10,000 devices of configs/fleet-10k.toml at their rate (10,000 telemetry messages/s) all show,
    while the page keeps drawing frames and answers a click within a second."""
    fleet_10k = FleetConfig.model_validate(load_toml(ROOT / "configs" / "fleet-10k.toml"))
    group = fleet_10k.groups[0]
    ids = [group.device_id(index) for index in range(group.count)]
    await open_dashboard(page, bridge)
    await page.evaluate(FRAME_GAPS)
    hub = bridge.hub
    chunk = 1000  # messages per 0.1 s: the config's rate
    for start in range(0, len(ids), chunk):
        for device in ids[start : start + chunk]:
            hub.ingest(f"fleet/{device}/status", b'{"online": true}', qos=1, retain=True)
        await asyncio.sleep(0.1)
    for seq in range(3):
        for start in range(0, len(ids), chunk):
            for device in ids[start : start + chunk]:
                payload = {
                    "device": device,
                    "seq": seq,
                    "values": {"temperature": 21.0 + seq, "humidity": 50},
                }
                hub.ingest(f"fleet/{device}/telemetry", json.dumps(payload).encode(), qos=0, retain=False)
            await asyncio.sleep(0.1)
        if seq == 1:  # a click while the stream is in full flow
            await page.locator(f'#grid .cell[data-device="{ids[4321]}"]').click(timeout=1000)
            await expect(page.locator('#command-form input[name="device"]')).to_have_value(
                ids[4321], timeout=1000
            )
    await expect(page.locator("#stat-devices")).to_have_text("10000")
    await expect(page.locator("#stat-online")).to_have_text("10000")
    await expect(page.locator("#grid.compact .cell")).to_have_count(10_000)
    await expect(card(page, ids[4321])).to_contain_text("temperature")
    max_gap = await page.evaluate("window.maxFrameGap")
    assert max_gap < 1000, f"the page stalled for {max_gap:.0f} ms"


# Records the longest time between two animation frames, in ms, as window.maxFrameGap.
FRAME_GAPS = """() => {
  let last = performance.now();
  window.maxFrameGap = 0;
  const tick = (now) => {
    window.maxFrameGap = Math.max(window.maxFrameGap, now - last);
    last = now;
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}"""


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_with_tokens_the_page_logs_in_and_then_streams_and_commands(
    broker: Broker, page: Page, mqtt: aiomqtt.Client, tmp_path: Path, transport: str
) -> None:
    """A bridge with a tokens file shows the login form; a wrong token is refused, and after the right
    one the page streams (EventSource or WebSocket, by the login cookie) and its commands are published."""
    tokens = tmp_path / "tokens.toml"
    add_token(tokens, "reader", "--subscribe", "fleet/#")
    token = add_token(tokens, "operator", "--subscribe", "fleet/#", "--publish", "fleet/{device}/cmd")
    access = Access.from_file(tokens)
    async with running_bridge(broker.port, sse_retry_ms=100, access=access) as bridge:
        await page.goto(f"{bridge.http}/?transport={transport}")
        login = page.locator("#login")
        await expect(login).to_be_visible()
        await expect(page.locator("#connection")).to_have_attribute("data-state", "down")
        assert consumers(bridge.hub, SSE_TRANSPORT) + consumers(bridge.hub, WS_TRANSPORT) == 0
        await login.locator('input[name="token"]').fill("not-a-token")
        await login.locator('button[type="submit"]').click()
        await expect(page.locator("#login-error")).to_have_text("unknown token")
        await login.locator('input[name="token"]').fill(token)
        await login.locator('button[type="submit"]').click()
        await expect(login).to_be_hidden()
        await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        await publish_and_wait(mqtt, bridge.hub, [telemetry("pump-7", 0)])
        await expect(card(page, "pump-7").locator(".seq")).to_have_text("seq 0")
        await page.fill('#command-form input[name="device"]', "pump-7")
        await page.click('#command-form button[type="submit"]')
        row = page.locator("#command-table tbody tr").first
        await expect(row).to_have_attribute("data-state", "waiting")
        cookies = await page.context.cookies()
        kept = [(cookie["name"], cookie["httpOnly"], cookie["sameSite"]) for cookie in cookies]
        assert kept == [("fleet_token", True, "Strict")]
