"""What the broker logs at INFO stays readable at scale: a burst of wills is one line and a count."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import BrokerFactory
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
