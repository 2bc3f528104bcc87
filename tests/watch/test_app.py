"""The TUI driven by Textual's pilot: navigation, sorting, filtering, pause, export, and a command
sent to a real simulated device on a real broker, with its ack on screen."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from broker.server import Broker
from fleet.endpoint import Endpoint
from fleet.schema import FleetConfig
from fleet.simulator import Target, simulate
from fleet.watch.app import DeviceScreen, HelpScreen, WatchApp
from fleet.watch.model import DeviceState
from fleet.watch.sources import ListSource, Message, MqttSource
from fleet.watch.table import VirtualTable
from tests.watch.data import NOW, demo_app, settle, until

SIZE = (120, 40)


def table(app: WatchApp) -> VirtualTable:
    return app.query_one("#table", VirtualTable)


def ids(app: WatchApp) -> list[str]:
    return [device.id for device in table(app).items]


def read_export(directory: Path) -> tuple[str, list[dict[str, Any]]]:
    (path,) = directory.iterdir()
    return path.name, [json.loads(line) for line in path.read_text().splitlines()]


async def test_tabs_detail_and_help_are_reached_by_their_keys() -> None:
    """t, l and d switch tabs; enter opens the device under the cursor, escape closes it; ? shows help."""
    app = demo_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("t")
        assert app.query_one("TabbedContent").active == "topics"  # type: ignore[attr-defined]
        tree = app.query_one("#tree", VirtualTable)
        children = app.model.topics.children["fleet"].children.values()
        busiest = min(children, key=lambda n: (-n.messages, n.name))
        assert [row[1].path for row in tree.items][:2] == ["fleet", busiest.path]
        assert tree.items[1][3], "the busiest topic is highlighted"
        await pilot.press("enter")
        assert "fleet" not in app.expanded
        await pilot.press("l")
        assert app.query_one("TabbedContent").active == "events"  # type: ignore[attr-defined]
        await pilot.press("d", "down", "down", "enter")
        assert isinstance(app.screen, DeviceScreen)
        assert app.screen.device == ids(app)[2]
        await pilot.press("escape", "question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen | DeviceScreen)


async def test_number_keys_sort_by_their_column_and_again_reverse_it() -> None:
    """5 sorts by message count (most first), 5 again reverses it; 1 sorts by id."""
    app = demo_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert ids(app) == sorted(ids(app))
        await pilot.press("5")
        counts = [device.messages for device in table(app).items]
        assert counts == sorted(counts, reverse=True)
        assert counts[0] > counts[-1]
        await pilot.press("5")
        assert [device.messages for device in table(app).items] == sorted(counts)
        await pilot.press("1")
        assert ids(app) == sorted(ids(app))


async def test_typing_after_slash_filters_the_table_and_enter_returns_to_it() -> None:
    """/ focuses the filter; each typed character narrows the rows to matching ids or groups."""
    app = demo_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert len(ids(app)) == 20
        await pilot.press("slash", "v", "a", "n")
        assert ids(app) == [f"van-{i:04d}" for i in range(6)]
        await pilot.press("minus", "0", "0", "0", "3", "enter")
        assert ids(app) == ["van-0003"]
        assert app.focused is table(app)


async def test_pause_freezes_the_screen_while_messages_are_still_counted() -> None:
    """p stops redrawing; the model keeps ingesting, and the next p shows everything that came."""
    app = demo_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("p")
        refreshes = app.refreshes
        app.model.ingest("fleet/new-0001/status", b'{"online": true}', False, app.clock())
        app.refresh_view()
        assert app.refreshes == refreshes
        assert "new-0001" not in ids(app)
        await pilot.press("p")
        app.refresh_view()
        assert "new-0001" in ids(app)


async def test_export_writes_the_filtered_history_as_json_lines(tmp_path: Path) -> None:
    """e writes the messages behind the visible rows, one decoded JSON object per line."""
    app = demo_app(export_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("slash", "d", "o", "o", "r", "enter", "e")
        name, lines = read_export(tmp_path)
        assert name == "fleet-watch-20251129T070640Z.jsonl"
        assert lines
        assert {line["topic"].split("/")[1].split("-")[0] for line in lines} == {"door"}
        assert lines[-1] == {
            "received_at": app.clock(),
            "topic": "fleet/door-0001/status",
            "retain": False,
            "payload": {"online": False, "ts": app.clock(), "reason": "clean"},
        }


async def test_a_command_form_with_a_bad_value_says_why_and_sends_nothing() -> None:
    """set_interval without a number is refused in the form; nothing is published."""
    app = demo_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, DeviceScreen)
        screen.query_one("#op").value = "set_interval"  # type: ignore[attr-defined]
        await pilot.click("#send")
        assert "set_interval needs a number of seconds" in str(screen.query_one("#ack").render())
        source = app.source
        assert isinstance(source, ListSource)
        assert source.published == []


async def test_a_command_reaches_a_real_device_and_its_ack_is_shown(broker: Broker) -> None:
    """From the detail of a simulated device on the embedded broker, set_interval 0.5 is sent and acked."""
    name = f"probe{uuid.uuid4().hex[:6]}"
    config = FleetConfig.model_validate(
        {"seed": 1, "groups": [{"name": name, "count": 2, "interval": 0.2, "id": f"{name}-{{index}}"}]}
    )
    stop = asyncio.Event()
    ready = asyncio.Event()
    endpoint = Endpoint("mqtt", "127.0.0.1", broker.port)
    fleet = asyncio.create_task(simulate(config, Target(endpoint), stop=stop, ready=ready.set))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        app = WatchApp(MqttSource(endpoint))
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: len(app.model.devices) >= 2, "both devices seen")
            await pilot.press("slash", *name, "-", "1", "enter")
            await until(pilot, lambda: ids(app) == [f"{name}-1"], "the filter matched one device")
            await pilot.press("enter")
            screen = app.screen
            assert isinstance(screen, DeviceScreen)
            screen.query_one("#op").value = "set_interval"  # type: ignore[attr-defined]
            await pilot.click("#value")
            await pilot.press("0", "full_stop", "5", "enter")
            ack = screen.query_one("#ack")
            await until(pilot, lambda: "ack w1" in str(ack.render()), "the ack on screen")
            assert '"ok": true' in str(ack.render())
            kinds = [(e.kind, e.device) for e in app.model.events if e.kind in ("command", "ack")]
            assert kinds == [("command", f"{name}-1"), ("ack", f"{name}-1")]
    finally:
        stop.set()
        await asyncio.wait_for(fleet, 10)


class CountingApp(WatchApp):
    """Counts the device rows it formats."""

    formatted = 0

    def _device_cells(self, device: DeviceState) -> tuple[str, ...]:
        self.formatted += 1
        return super()._device_cells(device)


async def test_ten_thousand_devices_format_only_the_rows_on_screen() -> None:
    """With 10,000 devices a redraw formats only the visible rows; end, sort and filter still work."""
    messages = [
        Message(f"fleet/dev-{i:05d}/telemetry", b'{"seq": %d, "values": {"t": 1}}' % (i % 7))
        for i in range(10_000)
    ]
    app = CountingApp(ListSource(messages), clock=lambda: NOW)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        rows = table(app).size.height - 1
        app.formatted = 0
        app.refresh_view()
        await pilot.pause()
        assert 0 < app.formatted <= 2 * rows
        await pilot.press("end")
        assert table(app).cursor == 9_999
        await pilot.press("4")
        assert len(ids(app)) == 10_000
        await pilot.press("slash", *"dev-0999", "enter")
        assert ids(app) == [f"dev-0999{i}" for i in range(10)]


async def test_the_app_closes_itself_when_what_it_shows_is_done() -> None:
    """With `until` (fleet up passes its fleet), the app exits once that is done, even if done at start."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    app = demo_app(until=done)
    async with asyncio.timeout(10):
        await app.run_async(headless=True, size=SIZE)
    assert app.return_code == 0
