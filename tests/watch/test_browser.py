"""The topic view as a general MQTT browser: a topic's last payload, retained flag and QoS, a chart
of any numeric field, and publishing any message, on the fixed fleet and on a real broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from textual.widgets import Checkbox, Input, Select, Static
from textual_plotext import PlotextPlot

from broker.server import Broker
from fleet.endpoint import Endpoint
from fleet.packets import Publish
from fleet.transport import ClientSession, Link, make_connect
from fleet.watch.app import PublishScreen, TopicScreen, WatchApp
from fleet.watch.sources import ListSource, MqttSource
from fleet.watch.table import VirtualTable
from tests.watch.data import demo_app, settle, until

SIZE = (120, 40)


def text(app: WatchApp, selector: str) -> str:
    """What the widget shows on screen, line by line."""
    widget = app.screen.query_one(selector)
    lines = ("".join(segment.text for segment in widget.render_line(y)) for y in range(widget.size.height))
    return "\n".join(line.rstrip() for line in lines)


async def test_enter_on_a_topic_shows_its_payload_retained_flag_qos_and_a_chart() -> None:
    """A telemetry topic shows its last payload as indented JSON, retain and QoS, and a chart with axes
    of its first reading; f charts the next field."""
    app = demo_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("t")
        tree = app.query_one("#tree", VirtualTable)
        levels = ["fleet", "fleet/thermo-0002"]
        app.expanded.update(levels)
        app.refresh_view()
        await pilot.pause()
        tree.cursor = next(i for i, r in enumerate(tree.items) if r[1].path == "fleet/thermo-0002/telemetry")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, TopicScreen), "the topic screen")
        screen = app.screen
        assert isinstance(screen, TopicScreen)
        await until(pilot, lambda: "retained no · QoS 0" in text(app, "#summary"), "the summary")
        payload = text(app, "#payload")
        assert '"temperature": 22.0' in payload
        assert payload.count("\n") > 3, "indented, one field a line"
        await until(pilot, lambda: screen.field == "values.temperature", "the first reading charted")
        assert "values.temperature: the last 5 values" in text(app, "#chart-title")
        chart = str(screen.query_one("#plot", PlotextPlot).render())
        assert "seconds since 07:06:40" in chart
        assert "22.00┤" in chart
        assert "20.80┤" in chart, "a y axis from the least to the greatest value"
        await pilot.press("f")
        assert screen.field == "seq"
        await pilot.press("escape")
        assert not isinstance(app.screen, TopicScreen)


async def test_a_retained_status_shows_as_retained_at_its_qos() -> None:
    """The retained birth of a device shows retained yes with the QoS it came at."""
    app = demo_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.model.ingest("fleet/solo-1/status", b'{"online": true}', True, app.clock(), 1)
        await pilot.press("t")
        app.expanded.update({"fleet", "fleet/solo-1"})
        app.refresh_view()
        tree = app.query_one("#tree", VirtualTable)
        tree.cursor = next(i for i, r in enumerate(tree.items) if r[1].path == "fleet/solo-1/status")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, TopicScreen), "the topic screen")
        await until(pilot, lambda: "retained yes · QoS 1" in text(app, "#summary"), "retained, QoS 1")
        assert "no numeric field to chart" in text(app, "#chart-title")


async def test_right_and_left_expand_and_collapse_a_topic() -> None:
    """In the topic tree, right expands the topic under the cursor and left collapses it."""
    app = demo_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("t", "down")
        tree = app.query_one("#tree", VirtualTable)
        path = tree.items[tree.cursor][1].path
        await pilot.press("right")
        assert path in app.expanded
        await pilot.press("left")
        assert path not in app.expanded


async def test_p_publishes_any_message_with_its_qos_and_retain_flag() -> None:
    """P opens a form with the topic under the cursor; enter publishes the payload at the QoS and
    retain chosen, and the form says so."""
    app = demo_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("t", "P")
        screen = app.screen
        assert isinstance(screen, PublishScreen)
        assert screen.query_one("#topic", Input).value == "fleet"
        screen.query_one("#topic", Input).value = "lab/lamp/set"
        screen.query_one("#qos", Select).value = 2
        screen.query_one("#retain", Checkbox).value = True
        await pilot.press(*'{"on":true}', "enter")
        source = app.source
        assert isinstance(source, ListSource)
        await until(pilot, lambda: bool(source.published), "published")
        assert source.published == [("lab/lamp/set", b'{"on":true}', 2, True)]
        result = screen.query_one("#result", Static)
        await until(pilot, lambda: "published 11 bytes" in str(result.render()), "the result shown")
        assert "retained" in str(result.render())


@contextlib.asynccontextmanager
async def subscriber(broker: Broker, topic: str) -> AsyncIterator[asyncio.Queue[Publish]]:
    """A plain MQTT client subscribed to `topic`; what arrives goes into the queue."""
    inbox: asyncio.Queue[Publish] = asyncio.Queue()
    link, _ = await Link.open(
        Endpoint("mqtt", "127.0.0.1", broker.port),
        make_connect("browser-test-reader", keepalive=30),
        session=ClientSession(),
        on_message=inbox.put_nowait,
    )
    try:
        await link.subscribe([(topic, 1)])
        yield inbox
    finally:
        await link.disconnect(timeout=5)


async def test_a_message_published_from_the_tui_reaches_the_broker_retained(broker: Broker) -> None:
    """Published from the form at QoS 1 with retain, the message is on the broker: a client that
    subscribes later gets it retained, and the TUI's own tree shows it."""
    app = WatchApp(MqttSource(Endpoint("mqtt", "127.0.0.1", broker.port)))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.attachment.state == "connected", "connected")
        await pilot.press("P")
        screen = app.screen
        assert isinstance(screen, PublishScreen)
        screen.query_one("#topic", Input).value = "fleet/lamp-1/set"
        screen.query_one("#retain", Checkbox).value = True
        await pilot.press(*'{"on":true}', "enter")
        result = screen.query_one("#result", Static)
        await until(pilot, lambda: "published" in str(result.render()), "the broker acknowledged it")
        await until(pilot, lambda: app.model.topic("fleet/lamp-1/set") is not None, "seen by the TUI")
        async with subscriber(broker, "fleet/lamp-1/set") as inbox:
            message = await asyncio.wait_for(inbox.get(), 10)
        assert (message.topic, json.loads(message.payload), message.retain) == (
            "fleet/lamp-1/set",
            {"on": True},
            True,
        )
