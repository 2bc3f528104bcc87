"""What the pytest fixtures run: a simulated fleet that is ready, and bridges connected to their broker.

Each is an async context manager: the fleet stops (every device leaves cleanly) and the bridges shut
down when the block exits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.config import validated
from fleet.errors import FleetError, TransportError
from fleet.schema import FleetConfig, load_fleet_config

if TYPE_CHECKING:
    from fleet.simulator import Target

__all__ = ["RunningBridges", "RunningFleet", "fleet_config", "running_bridges", "running_fleet"]


def fleet_config(config: Path | str | Mapping[str, Any]) -> FleetConfig:
    """A fleet config from a TOML file, or from a dict shaped like one; ConfigError when invalid."""
    if isinstance(config, Mapping):
        return validated(FleetConfig, config, where="fleet config")
    return load_fleet_config(Path(config))


@dataclass(frozen=True, slots=True)
class RunningFleet:
    config: FleetConfig
    devices: tuple[str, ...]  # the device ids, group by group


@contextlib.asynccontextmanager
async def running_fleet(config: FleetConfig, target: Target, *, within: float) -> AsyncIterator[RunningFleet]:
    """Run the fleet of `config` against `target`; enter once every device has connected and
    announced itself, or raise TransportError after `within` seconds saying how far it got."""
    from fleet.simulator import Live, simulate

    live = Live()
    stop = asyncio.Event()
    settled = asyncio.Event()  # every device is ready, or the simulation ended
    task = asyncio.create_task(
        simulate(config, target, duration=config.duration, stop=stop, live=live, ready=settled.set),
        name="fleet.testing.fleet",
    )
    task.add_done_callback(lambda _: settled.set())
    try:
        try:
            async with asyncio.timeout(within):
                await settled.wait()
        except TimeoutError:
            raise TransportError(
                f"the fleet was not ready within {within}s: {live.connected} of {live.target} devices "
                f"connected to {target.endpoint}; last error: {live.last_error or 'none'}"
            ) from None
        if task.done():
            task.result()
            raise FleetError("the fleet ended before every device was ready (is its duration that short?)")
        devices = tuple(group.device_id(index) for group in config.groups for index in range(group.count))
        yield RunningFleet(config, devices)
    finally:
        stop.set()
        await task


@dataclass(frozen=True, slots=True)
class RunningBridges:
    """Where the bridges serve: pass these to the stream clients."""

    http: str  # http://127.0.0.1:PORT, for /healthz, /readyz and /metrics
    ws: str  # ws://127.0.0.1:PORT/ws
    events: str  # http://127.0.0.1:PORT/events, Server-Sent Events
    grpc: str  # 127.0.0.1:PORT, FleetBridgeService


@contextlib.asynccontextmanager
async def running_bridges(broker_url: str, *, within: float) -> AsyncIterator[RunningBridges]:
    """WebSocket, SSE and gRPC bridges of `broker_url` on free loopback ports; entered once they are
    subscribed to the broker, or TransportError after `within` seconds."""
    from bridges.bridge import running
    from bridges.config import BridgeConfig
    from bridges.envelope import BRIDGE_TOPIC

    async with running(BridgeConfig(broker=broker_url, http_port=0, grpc_port=0)) as bridge:
        hub = bridge.hub
        if not hub.broker_connected:
            probe = hub.add([BRIDGE_TOPIC], transport="fleet_bridges")  # told when the broker is reached
            try:
                async with asyncio.timeout(within):
                    while not hub.broker_connected:
                        await probe.get()
            except TimeoutError:
                raise TransportError(f"the bridges did not reach {broker_url} within {within}s") from None
            finally:
                probe.close("the bridges are ready")
        http = f"http://127.0.0.1:{bridge.http_port}"
        yield RunningBridges(
            http=http,
            ws=f"ws://127.0.0.1:{bridge.http_port}/ws",
            events=f"{http}/events",
            grpc=f"127.0.0.1:{bridge.grpc_port}",
        )
