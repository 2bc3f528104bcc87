"""The watcher knows when it fell behind the broker and when it is not attached: the header says so,
and `r` reads every retained status again. On the embedded broker, through a fault proxy that
stalls the watcher's connection until the broker drops messages for it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

from textual.pilot import Pilot
from textual.widgets import Static

from broker.server import Broker
from fleet.endpoint import Endpoint
from fleet.stress.proxy import fault_proxy
from fleet.transport import ClientSession, Link, make_connect
from fleet.watch.app import WatchApp
from fleet.watch.model import DROPPED
from fleet.watch.sources import ListSource, MqttSource
from tests.conftest import BrokerFactory
from tests.procs import free_port
from tests.watch.data import demo_app, settle, until

SIZE = (120, 40)
DEVICES = [f"d-{i}" for i in range(10)]
PAD = "x" * 16_384  # telemetry this big fills the stalled connection's buffers in a few hundred messages
FLOOD_MAX = 5_000


def header(app: WatchApp) -> str:
    return str(app.query_one("#header", Static).render())


@contextlib.asynccontextmanager
async def publisher(port: int) -> AsyncIterator[Link]:
    """A plain MQTT client on the broker, playing the devices."""
    link, _ = await Link.open(
        Endpoint("mqtt", "127.0.0.1", port),
        make_connect("watch-sync-devices", keepalive=30),
        session=ClientSession(),
        on_message=lambda _: None,
    )
    try:
        yield link
    finally:
        await link.disconnect(timeout=5)


async def publish(link: Link, topic: str, body: dict[str, object], retain: bool = False) -> None:
    future = link.publish(topic, json.dumps(body).encode(), qos=1, retain=retain)
    assert future is not None
    await asyncio.wait_for(future, 10)


async def test_r_resyncs_and_the_header_says_in_sync_again() -> None:
    """The demo fleet has a seq gap, so the header says behind; r re-reads the retained statuses."""
    app = demo_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert "behind since 07:06:40: 1 missed (seq gaps)" in header(app)
        assert "r resyncs" in header(app)
        await pilot.press("r")
        source = app.source
        assert isinstance(source, ListSource)
        await until(pilot, lambda: source.resyncs == 1, "the source resynced")
        app.refresh_view()
        await pilot.pause()
        assert "in sync since 07:06:40 (resynced, 0 corrected)" in header(app)


async def test_an_unreachable_broker_shows_retrying_not_an_empty_fleet() -> None:
    """With nothing listening at the broker's address, the header says retrying and why."""
    port = free_port()
    app = WatchApp(MqttSource(Endpoint("mqtt", "127.0.0.1", port), backoff_max=0.2))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: " retrying " in header(app), "retrying in the header")
        text = header(app)
        assert f"cannot connect to mqtt://127.0.0.1:{port}" in text
        assert "not attached yet" in text
        assert any("retrying" in event.text for event in app.model.events)


async def test_a_watcher_that_missed_statuses_is_behind_and_r_restores_them(
    broker_factory: BrokerFactory,
) -> None:
    """The broker drops messages for a stalled watcher, offline statuses among them: the view is stale
    and says behind (seq gaps, $SYS drops); r reads the retained statuses again and the view is right."""
    async with (
        broker_factory(sys_interval=0.2) as broker,
        fault_proxy("127.0.0.1", broker.port) as proxy,
        publisher(broker.port) as devices,
    ):
        for device in DEVICES:
            await publish(devices, f"fleet/{device}/status", {"online": True}, retain=True)
        app = WatchApp(MqttSource(Endpoint("mqtt", "127.0.0.1", proxy.port)))
        async with app.run_test(size=SIZE) as pilot:
            model = app.model
            await until(pilot, lambda: model.counts() == (10, 0, 10), "ten devices online")
            await until(pilot, lambda: DROPPED in model.sys, "the broker's drop counter")
            proxy.blackhole(True)
            await flood_until_dropped(broker, devices)
            for device in DEVICES:
                await publish(devices, f"fleet/{device}/status", {"online": False, "reason": "clean"}, True)
            proxy.blackhole(False)
            await flows_again(pilot, app, devices)
            dropped = str(broker.stats.messages_dropped)
            await until(pilot, lambda: model.sys[DROPPED] == dropped, "the broker's drops seen in $SYS")
            assert model.counts() == (11, 0, 11), "the missed offline statuses leave a stale view"
            sync = model.sync()
            assert sync.behind
            assert sync.missed > 0
            assert sync.dropped is not None
            assert sync.dropped > 0
            app.refresh_view()
            await pilot.pause()
            assert "behind since" in header(app)
            await pilot.press("r")
            await until(pilot, lambda: model.counts() == (1, 10, 11), "the retained statuses re-read")
            assert model.sync().corrected == 10
            assert not model.sync().behind
            app.refresh_view()
            await pilot.pause()
            assert "in sync since" in header(app)
            assert "(resynced, 10 corrected)" in header(app)


async def flood_until_dropped(broker: Broker, devices: Link) -> None:
    """Publish big telemetry until the broker drops messages for the stalled watcher (bounded)."""
    before = broker.stats.messages_dropped
    deadline = time.monotonic() + 30
    for seq in range(FLOOD_MAX):
        await publish(devices, "fleet/noise-0/telemetry", {"seq": seq, "values": {"pad": PAD}})
        if broker.stats.messages_dropped > before:
            return
        assert time.monotonic() < deadline, "the broker dropped nothing within 30s"
    raise AssertionError(f"the broker dropped nothing in {FLOOD_MAX} messages")


async def flows_again(pilot: Pilot[None], app: WatchApp, devices: Link) -> None:
    """Publish telemetry after the flood until the watcher gets one: the stalled backlog is through."""
    deadline = time.monotonic() + 20
    for seq in range(FLOOD_MAX, 2 * FLOOD_MAX):
        noise = app.model.devices.get("noise-0")
        if noise is not None and noise.seq_next is not None and noise.seq_next > FLOOD_MAX:
            return
        assert time.monotonic() < deadline, "the watcher got nothing within 20s of the stall's end"
        await publish(devices, "fleet/noise-0/telemetry", {"seq": seq, "values": {}})
        await pilot.pause(0.05)
    raise AssertionError("the watcher got none of the telemetry after the stall")
