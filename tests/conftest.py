"""Fixtures shared by all tests: an in-process broker on free ports, and raw clients."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from playwright.async_api import Browser, async_playwright

from broker.config import BrokerSettings
from broker.server import Broker, running
from tests.rawmqtt import RawClient

# Subprocess, paho and Mosquitto helpers with their fixtures, test certificates (`pki`); pytester runs
# the pytest plugin tests.
pytest_plugins = ["tests.procs", "tests.pki", "pytester"]

BrokerFactory = Callable[..., contextlib.AbstractAsyncContextManager[Broker]]


@pytest.fixture
def broker_factory() -> BrokerFactory:
    """Start a broker with settings overridden by keyword; every port is a free one."""

    def factory(**overrides: Any) -> contextlib.AbstractAsyncContextManager[Broker]:
        settings: dict[str, Any] = {"port": 0, "ws_port": None, "tls_port": 0, "sys_interval": 0}
        settings.update(overrides)
        return running(BrokerSettings(**settings))

    return factory


@pytest.fixture(params=["embedded", "mosquitto"])
async def port(request: pytest.FixtureRequest, broker_factory: BrokerFactory) -> AsyncIterator[int]:
    """The MQTT/TCP port of each real broker in turn: the embedded broker, then Mosquitto (both fresh)."""
    if request.param == "mosquitto":
        yield request.getfixturevalue("mosquitto_broker").port
        return
    async with broker_factory() as broker:
        yield broker.port


@pytest.fixture
async def broker(broker_factory: BrokerFactory) -> AsyncIterator[Broker]:
    """A broker with default settings on a free port."""
    async with broker_factory() as running_broker:
        yield running_broker


@pytest.fixture
async def raw_client(broker: Broker) -> AsyncIterator[Callable[[], Any]]:
    """Open raw clients to `broker`; all are closed at teardown."""
    clients: list[RawClient] = []

    async def open_client() -> RawClient:
        client = await RawClient.open(broker.port)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        await client.close()


# Browser tests (the dashboard, the HTML report)

CHROMIUM = shutil.which("chromium")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Debian Chromium; Playwright downloads no browser of its own."""
    assert CHROMIUM is not None
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            await launched.close()
