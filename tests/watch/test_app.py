"""The TUI driven by Textual's pilot: navigation, sorting, filtering, pause, export, and a command
sent to a real simulated device on a real broker, with its ack on screen."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from textual.strip import Strip

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


def painted(table: VirtualTable, y: int) -> str:
    return "".join(segment.text for segment in table.render_line(y))


async def test_at_80_by_24_every_column_and_the_sort_arrow_fit_and_the_header_does_not_wrap() -> None:
    """At 80x24 the header keeps to its three lines, and the table shows every column whole, with the
    sort arrow on the last one."""
    app = demo_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("9")
        await settle(pilot)
        header = app.query_one("#header")
        assert header.size.height == 3
        lines = ["".join(segment.text for segment in header.render_line(y)).strip() for y in range(3)]
        assert lines[0].startswith("connected")
        assert lines[1].startswith("20 devices: 18 online  1 offline  1 lost")
        assert lines[2].startswith("behind since")
        titles = painted(table(app), 0)
        columns = ["id", "group", "status", "seen", "msgs", "rate/s", "loss", "reconn", "will", "▼"]
        assert titles.split() == columns
        assert len(titles.rstrip()) <= table(app).scrollable_content_region.width
        row = painted(table(app), 1 + ids(app).index("van-0003"))
        assert row.split()[-1] == "0s"  # the last will's age, whole


async def test_on_a_wide_terminal_the_table_takes_the_whole_width() -> None:
    """At 200 columns the device table's columns share the whole width, less the scrollbar."""
    app = demo_app()
    async with app.run_test(size=(200, 30)) as pilot:
        await settle(pilot)
        width = table(app).size.width - table(app).styles.scrollbar_size_vertical
        assert sum(w + 1 for w in table(app).widths) == width
        assert len(painted(table(app), 0).rstrip()) >= width - 2


async def test_the_filter_box_shows_only_while_filtering() -> None:
    """The filter line is hidden until /; enter on an empty filter or escape hides it again."""
    app = demo_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        box = app.query_one("#filter")
        assert not box.display
        await pilot.press("slash")
        assert box.display
        assert box.size.height == 1
        await pilot.press("enter")
        assert not box.display
        await pilot.press("slash", "v", "a", "n", "enter")
        assert box.display, "a filter in force stays on show"
        await pilot.press("escape")
        assert not box.display
        assert len(ids(app)) == 20


async def test_a_fired_will_and_a_clean_offline_look_different() -> None:
    """A device whose will fired is marked lost in bold red; one that left cleanly is offline, dimmed."""
    app = demo_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        rows = {device.id: i + 1 for i, device in enumerate(table(app).items)}
        lost = table(app).render_line(rows["van-0003"])
        clean = table(app).render_line(rows["door-0001"])
        assert "lost" in "".join(s.text for s in lost)
        assert "offline" in "".join(s.text for s in clean)
        lost_style, clean_style = next(iter(lost)).style, next(iter(clean)).style
        assert lost_style is not None
        assert clean_style is not None
        assert lost_style.bold
        assert lost_style.color != clean_style.color
        assert clean_style.dim


async def test_the_cursor_stays_on_its_topic_when_the_tree_re_sorts() -> None:
    """The topic tree is sorted by rate; when another topic gets busier, the cursor keeps its topic."""
    app = demo_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("t", "down", "down", "down")
        tree = app.query_one("#tree", VirtualTable)
        before = tree.items[tree.cursor][1].path
        quiet = [row[1] for row in tree.items if row[0] == 1][-1]
        for seq in range(200):
            app.model.ingest(f"{quiet.path}/telemetry", b'{"seq": %d}' % seq, False, NOW)
        app.refresh_view()
        await pilot.pause()
        assert tree.items[1][1].path == quiet.path, "the busy topic moved up"
        assert tree.items[tree.cursor][1].path == before


async def test_a_refresh_where_nothing_changed_paints_no_table_line() -> None:
    """With a fixed clock and no new messages, a refresh repaints nothing: an idle TUI costs little."""
    app = demo_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        painted_lines: list[int] = []
        render_line = table(app).render_line

        def counting(y: int) -> Strip:
            painted_lines.append(y)
            return render_line(y)

        table(app).render_line = counting  # type: ignore[method-assign]
        app.refresh_view()
        await pilot.pause()
        assert painted_lines == []
        app.model.ingest("fleet/door-0002/telemetry", b'{"seq": 50}', False, NOW)
        app.refresh_view()
        await pilot.pause()
        assert painted_lines, "a changed row is painted"
        assert len(set(painted_lines)) <= 2  # its line, and perhaps the one it moved from
