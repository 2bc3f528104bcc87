"""The device view's command form over MQTT 5 (`fleet watch -V mqttv5`), driven by Textual's pilot
against real brokers (the embedded one and Mosquitto) and a simulated device: to a v5 device the
command is a request (as `fleet cmd` sends it) acked on its response topic; otherwise it goes out
as before and is acked on cmd/ack."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from textual.pilot import Pilot

from fleet.endpoint import Endpoint
from fleet.schema import FleetConfig
from fleet.simulator import Target, simulate
from fleet.watch.app import DeviceScreen, WatchApp
from fleet.watch.sources import MqttSource
from fleet.watch.table import VirtualTable
from tests.conftest import BrokerFactory
from tests.watch.data import until
from tests.watch.test_mqtt5 import SIZE, TIMEOUT, broker_port, text_of


@asynccontextmanager
async def device_of(port: int, protocol: str) -> AsyncIterator[str]:
    """One simulated device speaking `protocol` ("3.1.1" or "5"), connected, until the block ends."""
    name = f"c{uuid.uuid4().hex[:6]}"
    config = FleetConfig.model_validate(
        {
            "seed": 1,
            "groups": [
                {"name": name, "count": 1, "interval": 0.5, "id": f"{name}-{{index}}", "protocol": protocol}
            ],
        }
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    endpoint = Endpoint("mqtt", "127.0.0.1", port)
    fleet = asyncio.create_task(simulate(config, Target(endpoint), stop=stop, ready=ready.set))
    try:
        await asyncio.wait_for(ready.wait(), TIMEOUT)
        yield f"{name}-0"
    finally:
        stop.set()
        await asyncio.wait_for(fleet, TIMEOUT)


async def command_from_the_device_view(app: WatchApp, pilot: Pilot[None], device: str) -> DeviceScreen:
    """Open `device`'s view, send the form's command (ping), and wait for its ack there."""
    table = app.query_one("#table", VirtualTable)
    devices = app.model.devices
    await until(pilot, lambda: device in devices and devices[device].online is True, "the birth")
    await pilot.press("slash", *device, "enter")
    await until(pilot, lambda: [d.id for d in table.items] == [device], "the filter matched")
    await pilot.press("enter")
    screen = app.screen
    assert isinstance(screen, DeviceScreen)
    await pilot.click("#send")
    await until(pilot, lambda: "ack w1" in text_of(screen, "#ack"), "the ack in the device view", TIMEOUT)
    return screen


@pytest.mark.parametrize("kind", ["embedded", "mosquitto"])
async def test_the_command_form_sends_a_request_to_a_v5_device_and_takes_its_reply_as_the_ack(
    kind: str, broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    """Over MQTT 5, the form's command to a v5 device carries a Response Topic and Correlation Data,
    and the device's reply on that response topic shows as the command's ack."""
    async with broker_port(kind, broker_factory, tmp_path) as port, device_of(port, "5") as device:
        app = WatchApp(MqttSource(Endpoint("mqtt", "127.0.0.1", port), version=5))
        async with app.run_test(size=SIZE) as pilot:
            screen = await command_from_the_device_view(app, pilot, device)
            assert '"ok": true' in text_of(screen, "#ack")
            state = app.model.devices[device]
            response = f"fleet/{device}/cmd/response/w1"
            assert state.properties["cmd"].response_topic == response
            assert state.properties["cmd"].correlation_data == b"w1"
            assert state.properties["cmd/response"].correlation_data == b"w1"
            assert response in {received.topic for received in state.raw}
            sent = [e.text for e in app.model.events if e.device == device and e.kind == "command"]
            assert [text.split(":")[0] for text in sent] == ["sent w1 as an MQTT 5 request"]


@pytest.mark.parametrize("kind", ["embedded", "mosquitto"])
@pytest.mark.parametrize(("version", "protocol"), [(5, "3.1.1"), (4, "5")], ids=["v5-watch", "v311-watch"])
async def test_without_mqtt_5_at_both_ends_the_command_form_s_command_is_acked_on_cmd_ack(
    kind: str, version: int, protocol: str, broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    """A watcher on MQTT 5 with a 3.1.1 device, or on 3.1.1 with a v5 device, sends a plain
    command, and the device's ack on cmd/ack shows as before."""
    async with broker_port(kind, broker_factory, tmp_path) as port, device_of(port, protocol) as device:
        app = WatchApp(MqttSource(Endpoint("mqtt", "127.0.0.1", port), version=version))
        async with app.run_test(size=SIZE) as pilot:
            await command_from_the_device_view(app, pilot, device)
            state = app.model.devices[device]
            assert "cmd" not in state.properties
            assert f"fleet/{device}/cmd/ack" in {received.topic for received in state.raw}
            sent = [e.text for e in app.model.events if e.device == device and e.kind == "command"]
            assert [text.split(":")[0] for text in sent] == ["sent w1"]
