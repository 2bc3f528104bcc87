"""The Host allowlist against DNS rebinding (finding 2 of issue 15): the whole bridge on a real
broker, with WebSocket and HTTP clients that send the Host a rebound browser would."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from bridges.bridge import Bridge, running
from bridges.config import BridgeConfig
from broker.server import Broker
from tests.bridges.conftest import closed_with_error, recv_json, wait_until

TIMEOUT = 5.0


@pytest.fixture
async def open_bridge(broker: Broker) -> AsyncIterator[Bridge]:
    """The whole bridge on `broker`, without tokens, with `fleet.example` in allowed_hosts."""
    config = BridgeConfig(
        broker=f"mqtt://127.0.0.1:{broker.port}", http_port=0, grpc_port=0, allowed_hosts=("fleet.example",)
    )
    async with running(config) as bridge:
        await wait_until(lambda: bridge.hub.broker_connected, "the bridge to connect to the broker")
        yield bridge


async def test_a_rebound_host_name_gets_no_websocket_and_no_publish(open_bridge: Bridge) -> None:
    """Finding 2: Host evil.example:PORT with Origin http://evil.example:PORT is refused (403), not 101."""
    port = open_bridge.http_port
    with pytest.raises(InvalidStatus) as caught:
        async with as_host(port, "evil.example", f"http://evil.example:{port}"):
            pass
    assert caught.value.response.status_code == 403
    async with as_host(port, "localhost", f"http://localhost:{port}") as conn:  # the same page, not rebound
        await conn.send(json.dumps({"type": "publish", "topic": "fleet/rebind/cmd", "payload": {}}))
        assert (await recv_json(conn))["type"] == "published"


def as_host(port: int, name: str, origin: str) -> connect:
    """A WebSocket to the bridge on 127.0.0.1 with `Host: name:port`, as a browser whose DNS said so."""
    return connect(
        f"ws://{name}:{port}/ws", host="127.0.0.1", port=port, origin=Origin(origin), open_timeout=TIMEOUT
    )


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("evil.example:{port}", 400),
        ("evil.example", 400),
        ("localhost.evil.example:{port}", 400),
        ("localhost:{port}", 200),
        ("127.0.0.1:{port}", 200),
        ("[::1]:{port}", 200),
        ("10.1.2.3:{port}", 200),
        ("fleet.example:{port}", 200),
        ("FLEET.example.", 200),
    ],
)
async def test_http_requests_are_refused_for_a_foreign_host(
    open_bridge: Bridge, host: str, status: int
) -> None:
    """A request whose Host is not loopback, an IP literal, the bind address or allowed_hosts gets 400."""
    port = open_bridge.http_port
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.get(
            f"http://127.0.0.1:{port}/healthz", headers={"Host": host.format(port=port)}
        )
    assert response.status_code == status, response.text
    if status == 400:
        assert "allowed_hosts" in response.text


async def test_an_allowed_host_still_needs_an_allowed_origin(open_bridge: Bridge) -> None:
    """The Origin check stays: Host fleet.example is allowed, but a page from another origin is refused."""
    port = open_bridge.http_port
    async with as_host(port, "fleet.example", "http://other.example") as conn:
        assert "may not use this bridge" in await closed_with_error(conn)
    async with as_host(port, "fleet.example", f"http://fleet.example:{port}") as conn:
        await conn.send(json.dumps({"type": "publish", "topic": "fleet/d1/cmd", "payload": {}}))
        assert (await recv_json(conn))["type"] == "published"
