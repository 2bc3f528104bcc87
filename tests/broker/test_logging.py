"""What the broker logs stays readable at scale and bounded whatever clients send: a burst is one
line and a count, and client-supplied strings are clipped."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.auth import set_password
from tests.conftest import BrokerFactory
from tests.procs import FleetBroker
from tests.rawmqtt import RawClient

DEVICES = 20


async def test_a_burst_of_wills_logs_the_first_and_then_a_count(
    broker_factory: BrokerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """20 devices dropping at once: the first will is logged with its client, the other 19 as one count."""
    with caplog.at_level(logging.INFO, logger="broker"):
        async with broker_factory() as broker:
            observer = await RawClient.open(broker.port)
            await observer.connect("observer")
            assert await observer.subscribe(("status/+", 0)) == [0]
            devices = [await RawClient.open(broker.port) for _ in range(DEVICES)]
            for index, device in enumerate(devices):
                await device.connect(f"dev-{index}", will=(f"status/dev-{index}", b"lost", 0, False))
            for device in devices:
                device.abort()
            wills = {(await observer.read_publish()).topic for _ in range(DEVICES)}
            assert wills == {f"status/dev-{index}" for index in range(DEVICES)}
            await observer.close()
    lines = [record.getMessage() for record in caplog.records if "will" in record.getMessage()]
    assert len(lines) == 3, lines
    assert lines[0].startswith("publishing the will of client 'dev-")
    assert lines[1].startswith(f"published {DEVICES - 1} more wills, the last of client 'dev-")
    assert lines[2].endswith(f"{DEVICES} wills published")


# Against `fleet broker` as a subprocess: what outsiders can add to its log (stderr).

LONG = 65_535  # the longest string MQTT can carry
PER_EVENT = 1_000  # log bytes one event may add, whatever its strings


def _log_bytes(broker: FleetBroker) -> int:
    return len(broker.proc.stderr.text.encode())


async def test_client_supplied_strings_are_clipped_in_the_log(
    tmp_path: Path, start_fleet_broker: Callable[..., FleetBroker]
) -> None:
    """A 65,535-byte will topic and client id, user name or filter each add under 1 KB of log per
    event: every client-supplied string is clipped to 200 characters with a marker."""
    passwords = tmp_path / "passwd"
    set_password(passwords, "alice", "right")
    broker = start_fleet_broker(
        "--port", "0", "--ws-port", "0", "--password-file", passwords, "--allow-anonymous"
    )  # fmt: skip
    watcher = await RawClient.open(broker.port)
    await watcher.connect("watcher")
    assert await watcher.subscribe(("w/#", 0)) == [0]
    will_topic = "w/" + "t" * (LONG - 2)
    for drop in range(2):
        before = _log_bytes(broker)
        start = len(broker.proc.stderr.lines)
        device = await RawClient.open(broker.port)
        await device.connect(f"dev{drop}-" + "c" * 60_000, will=(will_topic, b"lost", 0, False))
        device.abort()
        assert (await watcher.read_publish()).topic == will_topic
        if drop == 0:
            line = broker.proc.stderr.lines[broker.proc.stderr.wait_for("publishing the will", start=start)]
            assert "characters cut]" in line
        await device.close()
        assert _log_bytes(broker) - before < PER_EVENT, broker.proc.stderr.text[before:][:2000]

    before = _log_bytes(broker)
    start = len(broker.proc.stderr.lines)
    intruder = await RawClient.open(broker.port)
    assert (await intruder.connect("intruder", username="u" * LONG, password="wrong"))[1] == 4
    broker.proc.stderr.wait_for("authentication failed for user", start=start)
    await intruder.close()
    assert _log_bytes(broker) - before < PER_EVENT

    before = _log_bytes(broker)
    start = len(broker.proc.stderr.lines)
    assert await watcher.subscribe(("a#" + "f" * (LONG - 2), 0)) == [0x80]
    broker.proc.stderr.wait_for("refused a subscription", start=start)
    assert _log_bytes(broker) - before < PER_EVENT
    await watcher.close()
    broker.shutdown()


async def test_connections_that_never_send_connect_make_a_constant_number_of_log_lines(
    tmp_path: Path, start_fleet_broker: Callable[..., FleetBroker]
) -> None:
    """500 connections closed for sending no CONNECT log the first and then one line with the count."""
    config = tmp_path / "broker.toml"
    config.write_text("[broker]\nconnect_timeout = 0.5\n")
    broker = start_fleet_broker("--config", config, "--port", "0", "--ws-port", "0")
    start = len(broker.proc.stderr.lines)
    silent = [await RawClient.open(broker.port) for _ in range(500)]
    for client in silent:
        await client.expect_closed()
        await client.close()
    broker.shutdown()
    lines = [line for line in broker.proc.stderr.lines[start:] if "CONNECT" in line]
    assert len(lines) <= 4, lines
    counted = sum(int(line.split("closed ")[1].split()[0]) for line in lines if " more connections " in line)
    assert counted + sum(1 for line in lines if "closing " in line) == 500, lines
