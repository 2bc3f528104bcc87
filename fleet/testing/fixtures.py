"""The fixtures of the mqtt-fleet pytest plugin: a broker, a fleet, the bridges, and stream clients.

Everything runs in the test's event loop (pytest-asyncio, function scope), listens on 127.0.0.1 on
free ports, and is stopped at teardown. Subsystems are imported when a fixture first runs.

    @pytest.mark.asyncio
    async def test_door_goes_offline(fleet_sim, mqtt_stream):
        status = await mqtt_stream("fleet/+/status")
        await fleet_sim({"groups": [{"name": "door", "count": 1}]})
        await status.expect(topic="fleet/door-0000/status", match={"online": True}, within=5.0)

A test module (or conftest) locks the broker down by overriding `fleet_broker_settings`; clients
then log in with `credentials=Credentials(...)` (fleet.credentials), the settings of mosquitto_sub's
-u, -P, --cafile, --cert and --key:

    @pytest.fixture
    def fleet_broker_settings(tmp_path):
        return {"password_file": make_passwords(tmp_path), "acl_file": make_acl(tmp_path)}
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

if TYPE_CHECKING:
    from broker.server import Broker
    from fleet.credentials import Credentials
    from fleet.testing.services import RunningBridges, RunningFleet
    from fleet.testing.streams import Stream, Transport

__all__ = [
    "fleet_bridges",
    "fleet_broker",
    "fleet_broker_settings",
    "fleet_sim",
    "grpc_stream",
    "mqtt_stream",
    "sse_stream",
    "ws_stream",
]

READY_WITHIN = 10.0  # seconds for a fleet or the bridges to be ready


@pytest.fixture
def fleet_broker_settings() -> Mapping[str, Any]:
    """The `[broker]` settings of `fleet_broker` (none by default); override it to set
    `password_file`, `acl_file`, `tls_cert`, `tls_key`, `cafile`, `require_certificate`..."""
    return {}


@pytest_asyncio.fixture(loop_scope="function")
async def fleet_broker(fleet_broker_settings: Mapping[str, Any]) -> AsyncIterator[Broker]:
    """The embedded MQTT 3.1.1 and 5 broker on 127.0.0.1 and a free port: `.port`, `.urls[0]` (and an
    mqtts:// URL, `.tls_port`, when `fleet_broker_settings` has a certificate)."""
    from broker.config import BrokerSettings
    from broker.server import running

    settings = {"port": 0, "ws_port": None, "tls_port": 0, "sys_interval": 0, **fleet_broker_settings}
    async with running(BrokerSettings(**settings)) as broker:
        yield broker


@pytest_asyncio.fixture(loop_scope="function")
async def fleet_sim(fleet_broker: Broker) -> AsyncIterator[Callable[..., Awaitable[RunningFleet]]]:
    """Start fleets: `await fleet_sim(config, within=10.0, credentials=None)` with a TOML file or a
    dict shaped like one.

    It returns once every device has connected and announced itself. Devices connect to the
    config's `[broker] url`, else to `fleet_broker`, with the config's credentials and then
    `credentials` (whose user name, password file and certificate may name `{device}` and
    `{group}`). Every fleet stops cleanly at teardown.
    """
    from fleet.credentials import Credentials
    from fleet.simulator import Target, make_target
    from fleet.testing.services import fleet_config, running_fleet
    from fleet.transport import Endpoint

    async with contextlib.AsyncExitStack() as stack:

        async def start(
            config: Path | str | Mapping[str, Any],
            *,
            within: float = READY_WITHIN,
            credentials: Credentials | None = None,
        ) -> RunningFleet:
            loaded = fleet_config(config)
            target = make_target(loaded, None, credentials) if loaded.broker is not None else None
            if target is None:
                credentials = credentials or Credentials()
                if credentials.tls and fleet_broker.tls_port is not None:
                    endpoint = Endpoint("mqtts", "127.0.0.1", fleet_broker.tls_port)
                else:
                    endpoint = Endpoint("mqtt", "127.0.0.1", fleet_broker.port)
                target = Target(endpoint, credentials)
            return await stack.enter_async_context(running_fleet(loaded, target, within=within))

        yield start


@pytest_asyncio.fixture(loop_scope="function")
async def fleet_bridges(fleet_broker: Broker) -> AsyncIterator[RunningBridges]:
    """The WebSocket, SSE and gRPC bridges of `fleet_broker`: `.ws`, `.events`, `.grpc`, `.http`."""
    from fleet.testing.services import running_bridges

    async with running_bridges(fleet_broker.urls[0], within=READY_WITHIN) as bridges:
        yield bridges


@contextlib.asynccontextmanager
async def _streams() -> AsyncIterator[Callable[..., Awaitable[Stream]]]:
    """Open streams of any transport; all are closed when the block exits."""
    from fleet.testing.streams import open_stream

    async with contextlib.AsyncExitStack() as stack:

        async def open_one(
            transport: Transport,
            url: str,
            filters: Sequence[str] = (),
            credentials: Credentials | None = None,
            *,
            version: int = 4,
        ) -> Stream:
            opened = open_stream(transport, url, filters, credentials, version=version)
            return await stack.enter_async_context(opened)

        yield open_one


@pytest_asyncio.fixture(loop_scope="function")
async def mqtt_stream(fleet_broker: Broker) -> AsyncIterator[Callable[..., Awaitable[Stream]]]:
    """Subscribe: `await mqtt_stream("fleet/+/status", ..., url=None, credentials=None, version=4)`;
    url: any mqtt[s]:// broker (it may carry `user:password@`), default `fleet_broker` (its mqtts://
    listener when `credentials` has TLS settings). `version=5` speaks MQTT 5: events then carry the
    messages' properties, and `expect(..., user_properties=[("tenant", "a")], content_type=...)`
    can ask for them. Returns once the broker has acknowledged the subscription."""
    async with _streams() as open_one:

        async def open_mqtt(
            *filters: str, url: str | None = None, credentials: Credentials | None = None, version: int = 4
        ) -> Stream:
            if url is None:
                tls = credentials is not None and credentials.tls and fleet_broker.tls_port is not None
                url = f"mqtts://127.0.0.1:{fleet_broker.tls_port}" if tls else fleet_broker.urls[0]
            return await open_one("mqtt", url, filters or ("#",), credentials, version=version)

        yield open_mqtt


@pytest_asyncio.fixture(loop_scope="function")
async def ws_stream() -> AsyncIterator[Callable[..., Awaitable[Stream]]]:
    """Open WebSocket streams: `await ws_stream(url, filters=(), credentials=None)`; filters become
    `?filter=` params; `Credentials(token=..., cafile=...)` reach a bridge with tokens and TLS."""
    async with _streams() as open_one:
        yield functools.partial(open_one, "ws")


@pytest_asyncio.fixture(loop_scope="function")
async def sse_stream() -> AsyncIterator[Callable[..., Awaitable[Stream]]]:
    """Open Server-Sent Events streams: `await sse_stream(url, filters=(), credentials=None)`; JSON
    `data:` lines; `Credentials(token=..., cafile=...)` reach a bridge with tokens and TLS."""
    async with _streams() as open_one:
        yield functools.partial(open_one, "sse")


@pytest_asyncio.fixture(loop_scope="function")
async def grpc_stream() -> AsyncIterator[Callable[..., Awaitable[Stream]]]:
    """Subscribe to a FleetBridgeService: `await grpc_stream("host:port", filters=("#",),
    credentials=None)`; grpcs://host:port with `Credentials(cafile=...)`, and `token=...`."""
    async with _streams() as open_one:
        yield functools.partial(open_one, "grpc")
