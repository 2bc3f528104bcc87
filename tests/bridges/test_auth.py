"""Tokens on all three bridge transports (WebSocket, SSE, gRPC), and the refusal to serve off
loopback without authentication: a real broker, the whole bridge (`bridges.bridge.running`), real clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import grpc
import httpx
import pytest
from click.testing import CliRunner
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from bridges.bridge import Bridge, running
from bridges.config import BridgeConfig, load_bridge_config
from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2 as pb
from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2_grpc
from broker.server import Broker
from fleet.cli import cli
from fleet.errors import ConfigError
from tests.bridges.conftest import add_token, recv_json, wait_until

TIMEOUT = 5.0


@dataclass
class Tokens3:
    reader: str  # may subscribe to fleet/+/status only
    commander: str  # may publish to fleet/{device}/cmd only
    nobody: str  # no rights


@pytest.fixture
def tokens_file(tmp_path: Path) -> tuple[Path, Tokens3]:
    """A tokens file made with `fleet token add`: a reader, a commander and a token without rights."""
    path = tmp_path / "tokens.toml"
    tokens = Tokens3(
        reader=add_token(path, "reader", "--subscribe", "fleet/+/status"),
        commander=add_token(path, "commander", "--publish", "fleet/{device}/cmd"),
        nobody=add_token(path, "nobody"),
    )
    return path, tokens


@pytest.fixture
async def secured(broker: Broker, tokens_file: tuple[Path, Tokens3]) -> AsyncIterator[tuple[Bridge, Tokens3]]:
    """The whole bridge on `broker`, with the tokens file."""
    config = BridgeConfig(
        broker=f"mqtt://127.0.0.1:{broker.port}", http_port=0, grpc_port=0, tokens_file=tokens_file[0]
    )
    async with running(config) as bridge:
        await wait_until(lambda: bridge.hub.broker_connected, "the bridge to connect to the broker")
        yield bridge, tokens_file[1]


# WebSocket


def _ws_url(bridge: Bridge, **query: str) -> str:
    suffix = urllib.parse.urlencode(query, safe="/+")
    return f"ws://127.0.0.1:{bridge.http_port}/ws" + (f"?{suffix}" if suffix else "")


@contextlib.asynccontextmanager
async def ws(bridge: Bridge, token: str | None, **query: str) -> AsyncIterator[ClientConnection]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else None
    async with connect(_ws_url(bridge, **query), additional_headers=headers, open_timeout=TIMEOUT) as conn:
        yield conn


async def test_websocket_refuses_a_client_without_a_token_or_with_an_unknown_one(
    secured: tuple[Bridge, Tokens3],
) -> None:
    """The /ws handshake without a token, or with a wrong one, is refused with 401 and the reason."""
    bridge, _ = secured
    for token in (None, "not-a-token"):
        response = await refused(ws(bridge, token, filter="fleet/x/status"))
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert b"authentication required" in (response.body or b"")


async def refused(connecting: contextlib.AbstractAsyncContextManager[ClientConnection]) -> Response:
    """The HTTP answer that refused a WebSocket handshake."""
    with pytest.raises(InvalidStatus) as caught:
        async with connecting:
            pass
    return caught.value.response


async def test_websocket_checks_subscribe_and_publish_rights_separately(
    secured: tuple[Bridge, Tokens3],
) -> None:
    """On /ws a reader may subscribe within its filter, not publish; a commander may publish, not read."""
    bridge, tokens = secured
    async with ws(bridge, tokens.reader, filter="fleet/+/status") as conn:
        await conn.send(json.dumps({"type": "subscribe", "filters": ["fleet/#"]}))
        assert "may not subscribe to 'fleet/#'" in (await recv_json(conn))["error"]
        await conn.send(json.dumps({"type": "subscribe", "filters": ["fleet/d1/status"]}))
        assert (await recv_json(conn))["type"] == "subscribed"
        await conn.send(json.dumps({"type": "publish", "topic": "fleet/d1/cmd", "payload": {"op": "ping"}}))
        assert "may not publish to 'fleet/d1/cmd'" in (await recv_json(conn))["error"]
    response = await refused(ws(bridge, tokens.reader, filter="fleet/#"))
    assert response.status_code == 403
    assert b"may not subscribe to 'fleet/#'" in (response.body or b"")
    async with ws(bridge, tokens.commander) as conn:
        await conn.send(json.dumps({"type": "publish", "topic": "fleet/d1/cmd", "payload": {"op": "ping"}}))
        assert (await recv_json(conn)) == {"type": "published", "topic": "fleet/d1/cmd"}
        await conn.send(json.dumps({"type": "publish", "topic": "fleet/d1/telemetry", "payload": 1}))
        assert "may not publish" in (await recv_json(conn))["error"]
        await conn.send(json.dumps({"type": "subscribe", "filters": ["fleet/d1/cmd"]}))
        assert "may not subscribe" in (await recv_json(conn))["error"]
    async with ws(bridge, tokens.nobody) as conn:
        await conn.send(json.dumps({"type": "publish", "topic": "fleet/d1/cmd", "payload": {}}))
        assert "may publish to: nothing" in (await recv_json(conn))["error"]


async def test_websocket_takes_the_token_from_the_query_or_the_login_cookie(
    secured: tuple[Bridge, Tokens3],
) -> None:
    """A client that cannot set headers passes ?access_token=, or the cookie that POST /login sets."""
    bridge, tokens = secured
    async with ws(bridge, None, filter="fleet/+/status", access_token=tokens.reader) as conn:
        await conn.send(json.dumps({"type": "subscribe", "filters": ["fleet/d2/status"]}))
        assert (await recv_json(conn))["type"] == "subscribed"
    base = f"http://127.0.0.1:{bridge.http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
        refused = await http.post("/login", json={"token": "wrong"})
        assert refused.status_code == 401
        login = await http.post("/login", json={"token": tokens.reader})
        assert login.status_code == 204
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert (await http.get("/whoami")).json()["name"] == "reader"
    value = cookie.split(";")[0]
    async with connect(
        _ws_url(bridge, filter="fleet/+/status"), additional_headers={"Cookie": value}, open_timeout=TIMEOUT
    ) as conn:
        await conn.send(json.dumps({"type": "subscribe", "filters": ["fleet/d3/status"]}))
        assert (await recv_json(conn))["type"] == "subscribed"


# Server-Sent Events


async def test_sse_refuses_without_a_token_and_beyond_the_tokens_filters(
    secured: tuple[Bridge, Tokens3],
) -> None:
    """/events is 401 without a known token, 403 for a filter outside the token's, and streams within it."""
    bridge, tokens = secured
    base = f"http://127.0.0.1:{bridge.http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
        anonymous = await http.get("/events", params={"filter": "fleet/x/status"})
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == "Bearer"
        wrong = await http.get("/events", params={"filter": "fleet/x/status"}, headers=_bearer("nope"))
        assert wrong.status_code == 401
        for token in (tokens.commander, tokens.nobody):
            denied = await http.get("/events", params={"filter": "fleet/x/status"}, headers=_bearer(token))
            assert denied.status_code == 403, denied.text
        beyond = await http.get("/events", params={"filter": "fleet/#"}, headers=_bearer(tokens.reader))
        assert beyond.status_code == 403
        assert "may not subscribe to 'fleet/#'" in beyond.text
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/metrics", headers=_bearer(tokens.nobody))).status_code == 403
        assert (await http.get("/metrics", headers=_bearer(tokens.reader))).status_code == 200
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/")).status_code == 200
        for auth in ({"headers": _bearer(tokens.reader)}, {"cookies": {"fleet_token": tokens.reader}}):
            async with http.stream("GET", "/events", params={"filter": "fleet/+/status"}, **auth) as stream:
                assert stream.status_code == 200
                assert stream.headers["content-type"].startswith("text/event-stream")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# gRPC


async def test_grpc_answers_unauthenticated_and_permission_denied(
    secured: tuple[Bridge, Tokens3], mqtt: aiomqtt.Client
) -> None:
    """gRPC Subscribe and Publish: UNAUTHENTICATED without a known token, PERMISSION_DENIED beyond it."""
    bridge, tokens = secured
    async with grpc.aio.insecure_channel(f"127.0.0.1:{bridge.grpc_port}") as channel:
        stub = bridge_pb2_grpc.FleetBridgeServiceStub(channel)

        async def subscribe(token: str | None, *filters: str) -> grpc.StatusCode:
            call = stub.Subscribe(pb.SubscribeRequest(filters=list(filters)), metadata=_metadata(token))
            async with asyncio.timeout(TIMEOUT):
                code = await call.code()
            assert code is not None
            return code

        async def publish(token: str | None, topic: str) -> grpc.StatusCode:
            try:
                await stub.Publish(
                    pb.PublishRequest(topic=topic, payload=b"{}", qos=1),
                    metadata=_metadata(token),
                    timeout=TIMEOUT,
                )
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        assert await subscribe(None, "fleet/+/status") == grpc.StatusCode.UNAUTHENTICATED
        assert await subscribe("wrong", "fleet/+/status") == grpc.StatusCode.UNAUTHENTICATED
        assert await publish(None, "fleet/d1/cmd") == grpc.StatusCode.UNAUTHENTICATED
        assert await subscribe(tokens.reader, "fleet/#") == grpc.StatusCode.PERMISSION_DENIED
        assert await subscribe(tokens.commander, "fleet/+/status") == grpc.StatusCode.PERMISSION_DENIED
        assert await subscribe(tokens.nobody, "fleet/+/status") == grpc.StatusCode.PERMISSION_DENIED
        assert await publish(tokens.reader, "fleet/d1/cmd") == grpc.StatusCode.PERMISSION_DENIED
        assert await publish(tokens.commander, "fleet/d1/telemetry") == grpc.StatusCode.PERMISSION_DENIED
        assert await publish(tokens.commander, "fleet/d1/cmd") == grpc.StatusCode.OK
        allowed = stub.Subscribe(
            pb.SubscribeRequest(filters=["fleet/d1/status"]), metadata=_metadata(tokens.reader)
        )
        async with asyncio.timeout(TIMEOUT):
            await allowed.initial_metadata()  # sent once the subscription is registered
            await mqtt.publish("fleet/d1/status", b'{"online": true}', qos=1)
            response = await allowed.read()
        assert isinstance(response, pb.SubscribeResponse)
        assert [event.topic for event in response.events.events] == ["fleet/d1/status"]
        allowed.cancel()


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token is not None else ()


# Off loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "bridge.example"])
def test_off_loopback_without_tokens_is_refused_unless_no_auth_is_given(host: str, tmp_path: Path) -> None:
    """Listening beyond loopback without a tokens file is a config error naming host; --no-auth allows it."""
    with pytest.raises(ConfigError) as caught:
        load_bridge_config(None, {"host": host})
    assert "bridge.host" in str(caught.value)
    assert "--no-auth" in str(caught.value)
    assert load_bridge_config(None, {"host": host, "no_auth": True}).no_auth
    tokens = tmp_path / "tokens.toml"
    assert load_bridge_config(None, {"host": host, "tokens_file": str(tokens)}).tokens_file == tokens
    for loopback in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert load_bridge_config(None, {"host": loopback}).host == loopback


def test_fleet_bridge_refuses_to_start_off_loopback_without_auth() -> None:
    """`fleet bridge --host 0.0.0.0` exits 1 before listening, saying what to give."""
    result = CliRunner().invoke(cli, ["bridge", "--host", "0.0.0.0", "--http-port", "0", "--grpc-port", "0"])
    assert result.exit_code == 1
    assert "not loopback" in result.output
    assert "--tokens-file" in result.output
    assert "--no-auth" in result.output


# Host allowlist (DNS rebinding)


def test_fleet_bridge_names_a_tokens_file_it_cannot_read(tmp_path: Path) -> None:
    """`fleet bridge --tokens-file MISSING` exits 1 before listening, naming the file and why."""
    missing = tmp_path / "tokens.toml"
    result = CliRunner().invoke(
        cli, ["bridge", "--tokens-file", str(missing), "--http-port", "0", "--grpc-port", "0"]
    )
    assert result.exit_code == 1, result.output
    assert f"{missing}: cannot read the tokens file" in result.output


async def test_no_auth_off_loopback_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """With --no-auth off loopback the bridge warns loudly before it listens (here on an address this
    machine does not have, so nothing is bound)."""
    config = BridgeConfig(host="192.0.2.7", http_port=0, grpc_port=0, no_auth=True)
    failed: list[BaseException] = []
    with caplog.at_level(logging.WARNING, logger="bridges"):
        try:
            async with asyncio.timeout(TIMEOUT), running(config):
                pass
        except* OSError as group:  # 192.0.2.7 is TEST-NET-1: not this machine's
            failed.extend(group.exceptions)
    assert failed, "the bridge listened on an address this machine does not have"
    assert any("NO AUTHENTICATION" in record.getMessage() for record in caplog.records), caplog.text
