"""`fleet watch`: the Textual app. It composes the views; the model holds the state.

Messages go straight from the source into the model (`FleetModel.ingest`, O(1) per message).
The screen is refreshed by one timer, at most `1 / refresh` times a second, from the model's
state at that moment, so a flood of messages never queues up redraws: the UI neither starves nor
lags behind.

The topic view is a general MQTT browser, as mqttui's users expect: `enter` on a topic shows its
last payload (pretty-printed JSON), its retained flag and QoS, and a chart of any numeric field
over time; `P` publishes any message.

The header says what the connection does (connecting, connected, lost, retrying) and whether the
watcher fell behind the broker since it attached: then `r` resyncs, reading every retained status
again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from rich.json import JSON
from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.screen import ModalScreen, Screen
from textual.widgets import (
    Button,
    Checkbox,
    Footer,
    Input,
    Label,
    RichLog,
    Select,
    Sparkline,
    Static,
    TabbedContent,
    TabPane,
)
from textual_plotext import PlotextPlot

from fleet.command import Request
from fleet.device import KNOWN_OPS
from fleet.errors import FleetError, PublishRefused
from fleet.mqtt.properties import EMPTY, Properties
from fleet.tail import format_properties
from fleet.testing.streams import envelope_properties
from fleet.watch.model import COLUMNS, DeviceState, FleetModel, LogEvent, Reason, Received, Sync, TopicNode
from fleet.watch.sources import Attachment, Source, reason_name
from fleet.watch.table import Column, VirtualTable

__all__ = ["KEYS", "WatchApp"]

KEYS = (
    ("d / t / l", "devices, topic tree, event log"),
    ("/", "filter the devices by id or group (enter: back to the table, escape: clear)"),
    ("1 … 9", "sort the devices by that column; again: reverse"),
    ("↑ ↓ PgUp PgDn Home End", "move in a table"),
    ("enter", "device: open its detail; topic: open it (payload, chart), or expand or collapse"),
    ("→ ←", "topic tree: expand, collapse"),
    ("f", "topic: chart the next numeric field"),
    ("P", "publish a message (any topic, payload, QoS, retain)"),
    ("escape", "close the detail or this help"),
    ("p", "pause the display (messages are still counted)"),
    ("r", "resync: read every retained status again (after the header says behind)"),
    ("e", "export the visible history to a JSON-lines file"),
    ("?", "this help"),
    ("q, ctrl+c", "quit"),
)
# Each is wide enough for its title and the sort arrow: at 80 columns, with the scrollbar, they fit
# exactly; a wider screen's spare width goes mostly to the ids and groups.
_DEVICE_COLUMNS = (
    Column("id", 12, grow=3),
    Column("group", 7, grow=2),
    Column("status", 8),
    Column("seen", 6, right=True),
    Column("msgs", 8, right=True),
    Column("rate/s", 8, right=True),
    Column("loss", 6, right=True),
    Column("reconn", 8, right=True),
    Column("will", 6, right=True),
)
_TOPIC_COLUMNS = (
    Column("topic", 40, grow=4),
    Column("messages", 10, right=True),
    Column("rate/s", 8, right=True),
)
_DESCENDING_FIRST = {"last seen", "msgs", "rate", "loss", "reconnects", "last will"}
_EVENT_STYLES = {
    "online": "green",
    "offline": "yellow",
    "will": "bold red",
    "command": "cyan",
    "ack": "bold cyan",
    "error": "red",
    "broker": "magenta",
}
_BUSIEST = 3  # topics highlighted among their siblings
_SYS = (
    ("clients", "clients/connected"),
    ("received", "messages/received"),
    ("sent", "messages/sent"),
    ("dropped", "publish/messages/dropped"),
)
_NEEDS_VALUE = {"set_interval", "go_offline"}
_BOOKKEEPING = {"seq", "ts"}
_ATTACHMENT_STYLES = {
    "connecting": "bold yellow",
    "connected": "bold green",
    "lost": "bold white on red",
    "retrying": "bold white on red",
}


def ago(seconds: float) -> str:
    """A short age: 0s, 42s, 3m, 5h, 2d."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def clock_text(at: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(at))


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "app.pop_screen", "close"),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Static { width: 90; height: auto; border: round $accent; padding: 1 2; background: $panel; }
    """

    def compose(self) -> ComposeResult:
        text = Text()
        text.append("fleet watch: keys\n\n", style="bold")
        for keys, what in KEYS:
            text.append(f"{keys:>22}  ", style="bold cyan")
            text.append(f"{what}\n")
        yield Static(text)


class DeviceScreen(Screen[None]):
    """One device: its latest values, a sparkline per numeric metric, raw messages, commands."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.pop_screen", "back")]
    DEFAULT_CSS = """
    DeviceScreen #summary { height: 2; padding: 0 1; background: $panel; }
    DeviceScreen #body { height: 1fr; }
    DeviceScreen #left { width: 1fr; padding: 0 1; }
    DeviceScreen #raw { width: 1fr; padding: 0 1; border-left: solid $accent; }
    DeviceScreen #sparks { height: 1fr; }
    DeviceScreen .metric { height: 1; }
    DeviceScreen .metric Label { width: 16; }
    DeviceScreen Sparkline { width: 1fr; }
    DeviceScreen #form { height: 3; }
    DeviceScreen #op { width: 20; }
    DeviceScreen #value { width: 16; }
    DeviceScreen #ack { height: 1; padding: 0 1; }
    """

    def __init__(self, device: str) -> None:
        super().__init__()
        self.device = device
        self.pending: str | None = None
        self.ready = False
        self._sparks: dict[str, Sparkline] = {}

    def compose(self) -> ComposeResult:
        yield Static(id="summary")
        with Horizontal(id="body"):
            with Vertical(id="left"):
                yield Static(id="values")
                yield VerticalScroll(id="sparks")
            yield Static(id="raw")
        with Horizontal(id="form"):
            yield Select([(op, op) for op in sorted(KNOWN_OPS)], value="ping", allow_blank=False, id="op")
            yield Input(placeholder="value (seconds)", id="value")
            yield Button("send", id="send")
        yield Static("command: pick the op, a value in seconds for set_interval and go_offline", id="ack")
        yield Footer()

    def on_mount(self) -> None:
        self.ready = True
        app = self.app
        assert isinstance(app, WatchApp)
        app.refresh_view()

    def show(self, model: FleetModel, now: float) -> None:
        state = model.devices.get(self.device)
        if state is None:
            return
        try:
            summary = self.query_one("#summary", Static)
        except NoMatches:  # the timer fired while the screen closes
            return
        summary.update(
            f"[b]{state.id}[/b]  group {state.group}  {state.status}  last seen {ago(now - state.last_seen)}"
            f" ago  {state.messages:,} msgs  {state.rate.at(now):.1f}/s  loss {state.gaps}"
            f"  reconnects {state.reconnects}  last will {_will(state, now)}"
        )
        values = Text()
        values.append("latest values\n", style="bold")
        for name, value in sorted(state.values.items()):
            values.append(f"  {name:<14} {json.dumps(value)[:40]}\n")
        _mqtt5(values, state)
        self.query_one("#values", Static).update(values)
        sparks = self.query_one("#sparks", VerticalScroll)
        for name in sorted(state.series):
            spark = self._sparks.get(name)
            if spark is None:
                spark = self._sparks[name] = Sparkline([], id=f"spark-{len(self._sparks)}")
                sparks.mount(Horizontal(Label(name), spark, classes="metric"))
            spark.data = list(state.series[name])
        raw = Text()
        raw.append("last messages\n", style="bold")
        for message in reversed(state.raw):
            raw.append(f"{clock_text(message.at)} {message.topic.rsplit('/', 1)[-1]:<9}", style="dim")
            raw.append(f" {message.payload.decode('utf-8', 'replace')[:200]}")
            if message.properties is not EMPTY:
                raw.append(f"  {_properties_text(message.properties)}", style="cyan")
            raw.append("\n")
        self.query_one("#raw", Static).update(raw)
        if self.pending is not None:
            ack = state.acks.get(self.pending)
            if ack is not None:
                ok = ack.get("ok") is True
                self.query_one("#ack", Static).update(
                    Text(f"ack {self.pending}: {json.dumps(ack)}", style="bold green" if ok else "bold red")
                )
                self.pending = None

    @on(Button.Pressed, "#send")
    @on(Input.Submitted, "#value")
    def send(self) -> None:
        op = str(self.query_one("#op", Select).value)
        text = self.query_one("#value", Input).value.strip()
        command: dict[str, Any] = {"op": op}
        if op in _NEEDS_VALUE:
            try:
                command["value"] = float(text)
            except ValueError:
                self.query_one("#ack", Static).update(Text(f"{op} needs a number of seconds", style="red"))
                return
        app = self.app
        assert isinstance(app, WatchApp)
        self.pending = app.send_command(self.device, command)
        self.query_one("#ack", Static).update(f"sent {self.pending}: {op}; waiting for the ack")


class TopicScreen(Screen[None]):
    """One topic: its last message (pretty-printed when JSON), retained flag, QoS, and a chart of
    one numeric field of its recent messages (`f` picks the next field)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "back"),
        Binding("f", "next_field", "next field"),
        Binding("P", "app.publish", "publish"),
    ]
    DEFAULT_CSS = """
    TopicScreen #summary { height: 2; padding: 0 1; background: $panel; }
    TopicScreen #body { height: 1fr; }
    TopicScreen #payload-box { width: 1fr; padding: 0 1; }
    TopicScreen #chart { width: 2fr; border-left: solid $accent; }
    TopicScreen #chart-title { height: 1; padding: 0 1; }
    """

    def __init__(self, topic: str) -> None:
        super().__init__()
        self.topic = topic
        self.field: str | None = None
        self.ready = False
        self._shown: Received | None = None
        self._plotted: tuple[str | None, int, float] | None = None  # what the chart shows

    def compose(self) -> ComposeResult:
        yield Static(id="summary")
        with Horizontal(id="body"):
            with VerticalScroll(id="payload-box"):
                yield Static(id="payload")
            with Vertical(id="chart"):
                yield Static(id="chart-title")
                yield PlotextPlot(id="plot")
        yield Footer()

    def on_mount(self) -> None:
        self.ready = True
        app = self.app
        assert isinstance(app, WatchApp)
        app.model.follow(self.topic)
        app.refresh_view()

    def on_unmount(self) -> None:
        app = self.app
        assert isinstance(app, WatchApp)
        app.model.follow(None)

    def fields(self, model: FleetModel) -> list[str]:
        """The numeric fields of the followed messages, in the order they first appear, with the
        scheme's counter and clock (`seq`, `ts`) last: the readings are what one wants to see."""
        seen: dict[str, None] = {}
        for _, numbers in model.followed:
            seen.update(dict.fromkeys(numbers))
        return sorted(seen, key=lambda field: field in _BOOKKEEPING)

    def action_next_field(self) -> None:
        app = self.app
        assert isinstance(app, WatchApp)
        fields = self.fields(app.model)
        if not fields:
            app.notify("this topic has no numeric field to chart")
            return
        index = fields.index(self.field) + 1 if self.field in fields else 0
        self.field = fields[index % len(fields)]
        app.refresh_view()

    def show(self, model: FleetModel, now: float) -> None:
        node = model.topic(self.topic)
        if node is None or node.last is None:
            return
        try:
            summary = self.query_one("#summary", Static)
        except NoMatches:  # the timer fired while the screen closes
            return
        last = node.last
        summary.update(
            Text.assemble(
                (self.topic, "bold"),
                f"\nretained {'yes' if last.retain else 'no'} · QoS {last.qos} · received"
                f" {clock_text(last.at)} ({ago(now - last.at)} ago) · {len(last.payload):,} bytes"
                f" · {node.messages:,} messages · {node.rate.at(now):.1f}/s",
            )
        )
        if last is not self._shown:
            self._shown = last
            self.query_one("#payload", Static).update(_pretty(last.payload))
        if self.field is None:
            fields = self.fields(model)
            self.field = fields[0] if fields else None
        self._plot(model)

    def _plot(self, model: FleetModel) -> None:
        field = self.field
        points = [(at, numbers[field]) for at, numbers in model.followed if field in numbers]
        latest = points[-1][0] if points else 0.0
        if (field, len(points), latest) == self._plotted:
            return
        self._plotted = (field, len(points), latest)
        plot = self.query_one("#plot", PlotextPlot)
        title = self.query_one("#chart-title", Static)
        plt = plot.plt
        plt.clear_data()
        if field is None or not points:
            title.update("no numeric field to chart")
        else:
            start = points[0][0]
            plt.plot([at - start for at, _ in points], [value for _, value in points], marker="braille")
            plt.xlabel(f"seconds since {clock_text(start)}")
            title.update(Text.assemble((field, "bold"), f": the last {len(points):,} values · f: next field"))
        plot.refresh()


class PublishScreen(ModalScreen[None]):
    """Publish any message: topic, payload, QoS and retain; the result shows under the form."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.pop_screen", "close")]
    DEFAULT_CSS = """
    PublishScreen { align: center middle; }
    PublishScreen > Vertical {
        width: 90; height: auto; border: round $accent; padding: 0 1; background: $panel;
    }
    PublishScreen Horizontal { height: auto; }
    PublishScreen #qos { width: 16; }
    PublishScreen #result { height: auto; }
    """

    def __init__(self, topic: str) -> None:
        super().__init__()
        self.topic = topic

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("publish a message", classes="title")
            yield Input(self.topic, placeholder="topic", id="topic")
            yield Input(placeholder="payload (JSON or text)", id="payload")
            with Horizontal():
                yield Select([(f"QoS {q}", q) for q in (0, 1, 2)], value=1, allow_blank=False, id="qos")
                yield Checkbox("retain", id="retain")
                yield Button("publish", id="send")
            yield Static("enter in the payload, or the button, publishes; escape closes", id="result")

    def on_mount(self) -> None:
        self.query_one("#payload", Input).focus()

    @on(Button.Pressed, "#send")
    @on(Input.Submitted, "#payload")
    def send(self) -> None:
        topic = self.query_one("#topic", Input).value.strip()
        if not topic:
            self.query_one("#result", Static).update(Text("a topic is needed", style="red"))
            return
        payload = self.query_one("#payload", Input).value.encode()
        qos = self.query_one("#qos", Select).value
        assert isinstance(qos, int)
        retain = self.query_one("#retain", Checkbox).value
        app = self.app
        assert isinstance(app, WatchApp)
        app.publish_message(topic, payload, qos=qos, retain=retain, result=self._result)
        self.query_one("#result", Static).update(f"publishing to {topic} at QoS {qos}…")

    def _result(self, text: str, ok: bool) -> None:
        self.query_one("#result", Static).update(Text(text, style="green" if ok else "bold red"))


def _pretty(payload: bytes) -> Text | JSON:
    """The payload as indented, highlighted JSON when it is JSON, else as text."""
    try:
        text = payload.decode("utf-8")
        return JSON(text, indent=2)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return Text(payload.decode("utf-8", "replace"))


def _properties_text(properties: Properties) -> str:
    """MQTT 5 properties as `fleet tail --format pretty` shows them."""
    return format_properties(envelope_properties(properties))


def _mqtt5(text: Text, state: DeviceState) -> None:
    """The device's MQTT 5 part of the detail view: by topic, the content type, response topic,
    correlation data and user properties of its latest message with properties; the reason codes
    the broker answered."""
    if not state.properties and not state.reasons:
        return
    text.append("\nMQTT 5\n", style="bold")
    for topic, properties in sorted(state.properties.items()):
        text.append(f"  {topic}\n", style="bold")
        if properties.content_type is not None:
            text.append(f"    content type   {properties.content_type}\n")
        if properties.response_topic is not None:
            text.append(f"    response topic {properties.response_topic}\n")
        if properties.correlation_data is not None:
            correlation = base64.b64encode(properties.correlation_data).decode()
            text.append(f"    correlation    {correlation} (base64)\n")
        for key, value in properties.user_properties:
            text.append(f"    user property  {key}={value}\n")
    for reason in state.reasons:
        text.append(f"  reason code {reason.code:#04x} {reason.name}: {reason.what}\n", style="red")


def _will(state: DeviceState, now: float) -> str:
    return "-" if state.last_will is None else f"{ago(now - state.last_will)} ago"


class WatchApp(App[None]):
    """The live fleet from `source`; `clock` gives receive times (fixed in tests). The app closes
    by itself when `until` (for example the fleet it shows) is done."""

    TITLE = "fleet watch"
    CSS = """
    #header { height: 3; padding: 0 1; background: $panel; text-wrap: nowrap; text-overflow: ellipsis; }
    #filter { height: 1; border: none; padding: 0 1; display: none; }
    #filter.shown { display: block; }
    TabbedContent, ContentSwitcher, TabPane { height: 1fr; }
    TabPane { padding: 0; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True),
        Binding("question_mark", "help", "help"),
        Binding("p", "pause", "pause"),
        Binding("r", "resync", "resync"),
        Binding("P", "publish", "publish"),
        Binding("e", "export", "export"),
        Binding("slash", "filter", "filter"),
        Binding("escape", "clear_filter", "clear filter", show=False),
        # The tabs name their keys, so the footer leaves them out: at 80 columns it would be cut.
        Binding("d", "tab('devices')", "devices", show=False),
        Binding("t", "tab('topics')", "topics", show=False),
        Binding("l", "tab('events')", "events", show=False),
        *(Binding(str(n), f"sort({n - 1})", f"sort {n}", show=False) for n in range(1, 10)),
    ]

    def __init__(
        self,
        source: Source,
        *,
        prefix: str = "fleet",
        clock: Callable[[], float] = time.time,
        refresh: float = 0.1,
        export_dir: Path = Path(),
        until: asyncio.Future[Any] | None = None,
    ) -> None:
        super().__init__()
        self.until = until
        self.source = source
        self.model = FleetModel(prefix)
        self.clock = clock
        self.refresh_interval = refresh
        self.export_dir = export_dir
        self.paused = False
        self.refreshes = 0
        self.sort_column = "id"
        self.sort_descending = False
        self.filter_text = ""
        self.expanded = {prefix}
        self._commands = 0
        self._events_shown = 0
        self._now = clock()
        self.attachment = Attachment(state="connecting", detail=source.description)
        self._retry_at = 0.0
        self._retry_logged = ""
        self._header_shown = Text()

    def compose(self) -> ComposeResult:
        yield Static(id="header")
        with TabbedContent(initial="devices"):
            with TabPane("devices (d)", id="devices"):
                yield Input(placeholder="filter by id or group; enter: back to the table", id="filter")
                yield VirtualTable(
                    _DEVICE_COLUMNS, self._device_cells, _device_style, key=_device_key, id="table"
                )
            with TabPane("topics (t)", id="topics"):
                yield VirtualTable(_TOPIC_COLUMNS, self._topic_cells, _topic_style, key=_topic_key, id="tree")
            with TabPane("events (l)", id="events"):
                yield RichLog(max_lines=1000, wrap=False, markup=False, id="log")
        yield Footer()

    def on_mount(self) -> None:
        self._show_sort()
        self.query_one("#table", VirtualTable).focus()
        self.run_worker(self.source.run(self._deliver, self._notify), name="watch.source", group="source")
        self.set_interval(self.refresh_interval, self.refresh_view, name="watch.refresh")
        self.refresh_view()
        if self.until is not None:
            self.until.add_done_callback(lambda _: self.exit())

    def _deliver(
        self, topic: str, payload: bytes, retain: bool, qos: int, properties: Properties = EMPTY, /
    ) -> None:
        self.model.ingest(topic, payload, retain, self.clock(), qos, properties)

    def _notify(self, attachment: Attachment) -> None:
        now = self.clock()
        was = self.attachment.state
        self.attachment = attachment
        model = self.model
        if attachment.state == "connected":
            self._retry_logged = ""
            if was != "connected":
                # A fresh subscription re-reads every retained status: count what is missed from here.
                model.synced(now, "attach")
                model.note(now, "broker", f"connected to {attachment.detail}")
        elif attachment.state == "lost":
            model.note(now, "broker", f"lost {attachment.detail}")
        elif attachment.state == "retrying":
            assert attachment.retry_in is not None
            self._retry_at = now + attachment.retry_in
            if attachment.detail != self._retry_logged:
                self._retry_logged = attachment.detail
                model.note(now, "broker", f"{attachment.detail}; retrying")

    # The coalesced refresh

    def refresh_view(self) -> None:
        """Redraw what is on screen from the model; called by the timer, at most 1/refresh a second."""
        if self.paused:
            return
        try:
            header = self.query_one("#header", Static)
        except NoMatches:  # the timer fired while the app shuts down
            return
        self.refreshes += 1
        now = self._now = self.clock()
        text = self._header(now)
        if text != self._header_shown:
            # Same size every time: no layout pass, which would cost the whole screen's.
            self._header_shown = text
            header.update(text, layout=False)
        self._show_events()
        screen = self.screen
        if isinstance(screen, DeviceScreen | TopicScreen):
            if screen.ready:
                screen.show(self.model, now)
            return
        tab = self.query_one(TabbedContent).active
        if tab == "devices":
            rows = self.model.rows(self.filter_text, self.sort_column, self.sort_descending, now)
            self.query_one("#table", VirtualTable).set_items(rows)
        elif tab == "topics":
            self.query_one("#tree", VirtualTable).set_items(self._topic_rows(now))

    def _header(self, now: float) -> Text:
        """Three lines that never wrap: the connection, the fleet, and whether the view is in sync."""
        model = self.model
        online, offline, total = model.counts()
        lost = model.lost()
        text = Text(no_wrap=True, overflow="ellipsis")
        attachment = self.attachment
        badge: str = attachment.state
        if badge == "retrying":
            wait = self._retry_at - now
            badge = f"retrying in {wait:.0f}s" if wait >= 0.5 else "retrying now"
        text.append(f" {badge} ", style=_ATTACHMENT_STYLES[attachment.state])
        if attachment.state in ("connecting", "connected"):
            text.append(f" {attachment.detail}")
        else:
            text.append(f" {attachment.detail}", style="red")
        text.append(f"  prefix {model.prefix}/")
        if self.paused:
            text.append("  PAUSED", style="bold reverse yellow")
        text.append(f"\n{total:,} devices: ")
        text.append(f"{online:,} online", style="bold green")
        text.append(f"  {offline - lost:,} offline", style="bold" if offline - lost else "")
        text.append(f"  {lost:,} lost", style="bold red" if lost else "")
        text.append(f" │ {model.rate.at(now):,.1f} msg/s │ wills {model.wills:,}")
        text.append(f" │ {model.reconnects_within(now):,} reconn/min")
        text.append("\n")
        text.append_text(_sync_text(model.sync(), attachment.state == "connected"))
        figures = [f"{name} {model.sys[key]}" for name, key in _SYS if key in model.sys]
        text.append(" │ $SYS ", style="bold")
        text.append(" · ".join(figures) if figures else "none yet")
        text.append(f" │ errors {model.errors:,}", style="red" if model.errors else "")
        return text

    def _show_events(self) -> None:
        model = self.model
        new = model.event_count - self._events_shown
        if new <= 0:
            return
        self._events_shown = model.event_count
        log = self.query_one("#log", RichLog)
        events = list(model.events)[-min(new, len(model.events)) :]
        for event in events:
            log.write(_event_line(event))

    def _topic_rows(self, now: float) -> list[tuple[int, TopicNode, bool, bool]]:
        rows: list[tuple[int, TopicNode, bool, bool]] = []

        def walk(node: TopicNode, depth: int) -> None:
            children = sorted(node.children.values(), key=lambda n: (-n.rate.at(now), n.name))
            for rank, child in enumerate(children):
                busy = rank < _BUSIEST < len(children) and child.rate.at(now) > 0
                expanded = child.path in self.expanded
                rows.append((depth, child, expanded, busy))
                if expanded:
                    walk(child, depth + 1)

        walk(self.model.topics, 0)
        return rows

    def _device_cells(self, device: DeviceState) -> tuple[str, ...]:
        now = self._now
        return (
            device.id,
            device.group,
            device.status,
            ago(now - device.last_seen) if device.last_seen else "-",
            f"{device.messages:,}",
            f"{device.rate.at(now):.1f}",
            f"{device.gaps:,}",
            f"{device.reconnects:,}",
            "-" if device.last_will is None else ago(now - device.last_will),
        )

    def _topic_cells(self, row: tuple[int, TopicNode, bool, bool]) -> tuple[str, ...]:
        depth, node, expanded, _ = row
        mark = ("▾ " if expanded else "▸ ") if node.children else "  "
        return ("  " * depth + mark + node.name, f"{node.messages:,}", f"{node.rate.at(self._now):.1f}")

    # Actions

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_pause(self) -> None:
        self.paused = not self.paused
        self.query_one("#header", Static).update(self._header(self.clock()))

    def action_resync(self) -> None:
        if self.attachment.state != "connected":
            self.notify("not connected: the retained statuses are read when the connection is back")
            return
        now = self.clock()
        self.model.synced(now, "resync")
        self.model.note(now, "broker", "resync: reading every retained status again")
        self._resync()

    @work(group="resync", exclusive=True)
    async def _resync(self) -> None:
        try:
            await self.source.resync()
        except FleetError as exc:
            self.model.note(self.clock(), "error", f"resync failed: {exc}")

    def action_filter(self) -> None:
        self.query_one(TabbedContent).active = "devices"
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        if box.has_focus or box.value:
            box.value = ""
            box.remove_class("shown")
            self.query_one("#table", VirtualTable).focus()

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        widget = {"devices": "#table", "topics": "#tree", "events": "#log"}[tab]
        self.query_one(widget).focus()
        self.refresh_view()

    def action_sort(self, index: int) -> None:
        column = COLUMNS[index]
        if column == self.sort_column:
            self.sort_descending = not self.sort_descending
        else:
            self.sort_column = column
            self.sort_descending = column in _DESCENDING_FIRST
        self._show_sort()
        self.refresh_view()

    def _show_sort(self) -> None:
        table = self.query_one("#table", VirtualTable)
        for index, column in enumerate(_DEVICE_COLUMNS):
            mark = (" ▼" if self.sort_descending else " ▲") if COLUMNS[index] == self.sort_column else ""
            table.set_title(index, column.title + mark)

    def action_export(self) -> None:
        records = self.model.visible_history(self.filter_text)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.clock()))
        path = self.export_dir / f"fleet-watch-{stamp}.jsonl"
        try:
            with path.open("w", encoding="utf-8") as out:
                for record in records:
                    out.write(json.dumps(record.as_json(), separators=(",", ":"), ensure_ascii=False) + "\n")
        except OSError as exc:
            self.notify(f"cannot export: {exc}", severity="error")
            return
        self.notify(f"exported {len(records):,} messages to {path}")

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self.refresh_view()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        box = self.query_one("#filter", Input)
        if not box.value.strip():
            box.remove_class("shown")
        self.query_one("#table", VirtualTable).focus()

    @on(VirtualTable.Selected, "#table")
    def _open_device(self, event: VirtualTable.Selected) -> None:
        self.push_screen(DeviceScreen(event.item.id))

    @on(VirtualTable.Selected, "#tree")
    def _open_topic(self, event: VirtualTable.Selected) -> None:
        node: TopicNode = event.item[1]
        if node.last is not None:
            self.push_screen(TopicScreen(node.path))
        else:
            self.expanded.symmetric_difference_update({node.path})
            self.refresh_view()

    @on(VirtualTable.Sideways, "#tree")
    def _expand_topic(self, event: VirtualTable.Sideways) -> None:
        node: TopicNode = event.item[1]
        if event.right:
            self.expanded.add(node.path)
        else:
            self.expanded.discard(node.path)
        self.refresh_view()

    def _tree_node(self) -> TopicNode | None:
        tree = self.query_one("#tree", VirtualTable)
        if self.query_one(TabbedContent).active != "topics" or not tree.items:
            return None
        node: TopicNode = tree.items[tree.cursor][1]
        return node

    def action_publish(self) -> None:
        screen = self.screen
        if isinstance(screen, TopicScreen):
            topic = screen.topic
        else:
            node = self._tree_node()
            topic = node.path if node is not None else f"{self.model.prefix}/"
        self.push_screen(PublishScreen(topic))

    def publish_message(
        self, topic: str, payload: bytes, *, qos: int, retain: bool, result: Callable[[str, bool], None]
    ) -> None:
        """Publish any message; `result(text, ok)` is called with the outcome."""
        self._publish_any(topic, payload, qos, retain, result)

    @work(group="publish")
    async def _publish_any(
        self, topic: str, payload: bytes, qos: int, retain: bool, result: Callable[[str, bool], None]
    ) -> None:
        try:
            await self.source.publish(topic, payload, qos=qos, retain=retain)
        except FleetError as exc:
            self.model.note(self.clock(), "error", f"not published to {topic}: {exc}")
            result(f"not published: {exc}", False)
            return
        what = f"published {len(payload):,} bytes to {topic} at QoS {qos}{', retained' if retain else ''}"
        self.model.note(self.clock(), "command", what)
        result(what, True)

    # Commands

    def send_command(self, device: str, command: dict[str, Any]) -> str:
        """Publish `{"id", "op", "value"}` to the device's command topic; return the command id.

        When the source speaks MQTT 5 and the device's birth says `"protocol": 5`, it is a request,
        as `fleet cmd` sends it (`fleet.command.Request`): the reply on its response topic is the
        ack, as one on cmd/ack is."""
        self._commands += 1
        request = Request(
            device=device,
            op=command["op"],
            value=command.get("value"),
            prefix=self.model.prefix,
            id=f"w{self._commands}",
        )
        state = self.model.devices.get(device)
        self._publish(device, request, self.source.version == 5 and state is not None and state.v5)
        return request.id

    @work(group="commands")
    async def _publish(self, device: str, request: Request, as_request: bool) -> None:
        payload = request.payload()
        properties = b""
        if as_request:
            properties = request.properties()
            self.model.expect(request)
        try:
            await self.source.publish(request.command_topic, payload, properties=properties)
        except PublishRefused as exc:
            name = reason_name(exc.reason_code, 4)
            reason = Reason(self.clock(), exc.reason_code, name, f"command {request.id} (PUBACK)")
            self.model.refused(self.clock(), device, reason)
            return
        except FleetError as exc:
            self.model.note(self.clock(), "error", f"command {request.id} not sent: {exc}", device)
            return
        what = f"sent {request.id}{' as an MQTT 5 request' if as_request else ''}: {payload.decode()}"
        self.model.note(self.clock(), "command", what, device)

    @contextlib.contextmanager
    def logs_in_event_log(self, level: int = logging.WARNING) -> Iterator[None]:
        """While the app runs in a terminal, log records of `level` and above go to the event log."""
        app = self

        class ToEvents(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                app.model.note(app.clock(), "error", f"{record.name}: {record.getMessage()}")

        root = logging.getLogger()
        handlers = root.handlers[:]
        handler = ToEvents(level)
        root.handlers[:] = [handler]
        try:
            yield
        finally:
            root.handlers[:] = handlers


def _sync_text(sync: Sync, connected: bool) -> Text:
    text = Text()
    if sync.since is None:
        text.append("not attached yet", style="yellow")
    elif sync.behind:
        what = [f"{sync.missed:,} missed (seq gaps)"] if sync.missed else []
        if sync.dropped:
            what.append(f"broker dropped {sync.dropped:,}")
        text.append(f" behind since {clock_text(sync.since)}: {', '.join(what)} ", style="bold white on red")
        if connected:
            text.append(" r resyncs", style="bold")
    else:
        text.append(f"in sync since {clock_text(sync.since)}", style="green")
        if sync.how == "resync":
            text.append(f" (resynced, {sync.corrected:,} corrected)")
    return text


def _device_style(device: DeviceState) -> str:
    return {"?": "dim", "online": "", "offline": "dim", "lost": "bold red"}[device.status]


def _device_key(device: DeviceState) -> str:
    return device.id


def _topic_key(row: tuple[int, TopicNode, bool, bool]) -> str:
    return row[1].path


def _topic_style(row: tuple[int, TopicNode, bool, bool]) -> str:
    return "bold yellow" if row[3] else ""


def _event_line(event: LogEvent) -> Text:
    line = Text()
    line.append(f"{clock_text(event.at)} ", style="dim")
    line.append(f"{event.kind:<8}", style=_EVENT_STYLES[event.kind])
    line.append(f"{event.device or '':<16} {event.text}")
    return line
