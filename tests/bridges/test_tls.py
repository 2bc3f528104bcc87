"""TLS on the bridges: HTTPS/WSS through uvicorn and gRPC over TLS, with and without client
certificates, using certificates made in the test (tests/pki.py)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from websockets.asyncio.client import connect

from bridges.bridge import Bridge, running
from bridges.config import BridgeConfig, load_bridge_config
from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2 as pb
from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2_grpc
from broker.server import Broker
from fleet.errors import ConfigError
from tests.bridges.conftest import recv_json, wait_until
from tests.pki import Pki

TIMEOUT = 5.0


def _client_context(pki: Pki, client: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca)
    if client is not None:
        cert, key = pki.client(client)
        context.load_cert_chain(cert, key)
    return context


@pytest.fixture
async def tls_bridge(broker: Broker, pki: Pki) -> AsyncIterator[Bridge]:
    """The whole bridge on `broker`, serving TLS with the test CA's server certificate."""
    config = BridgeConfig(
        broker=f"mqtt://127.0.0.1:{broker.port}", http_port=0, grpc_port=0, tls_cert=pki.cert, tls_key=pki.key
    )
    async with running(config) as bridge:
        await wait_until(lambda: bridge.hub.broker_connected, "the bridge to connect to the broker")
        yield bridge


@pytest.fixture
async def mtls_bridge(broker: Broker, pki: Pki) -> AsyncIterator[Bridge]:
    """The whole bridge on `broker`, serving TLS and requiring client certificates of the test CA."""
    config = BridgeConfig(
        broker=f"mqtt://127.0.0.1:{broker.port}",
        http_port=0,
        grpc_port=0,
        tls_cert=pki.cert,
        tls_key=pki.key,
        tls_client_ca=pki.ca,
    )
    async with running(config) as bridge:
        await wait_until(lambda: bridge.hub.broker_connected, "the bridge to connect to the broker")
        yield bridge


async def test_https_wss_and_grpcs_are_served_with_the_given_certificate(
    tls_bridge: Bridge, pki: Pki
) -> None:
    """With tls_cert and tls_key the bridge announces https/wss/grpcs URLs and serves each over TLS."""
    assert tls_bridge.dashboard_url.startswith("https://")
    assert any(url.startswith("wss://") for url in tls_bridge.urls)
    assert any(url.startswith("grpcs://") for url in tls_bridge.urls)
    port = tls_bridge.http_port
    async with httpx.AsyncClient(verify=_client_context(pki), timeout=TIMEOUT) as http:
        assert (await http.get(f"https://localhost:{port}/healthz")).status_code == 200
    async with connect(f"wss://localhost:{port}/ws", ssl=_client_context(pki), open_timeout=TIMEOUT) as conn:
        await conn.send(json.dumps({"type": "publish", "topic": "fleet/d1/cmd", "payload": {}}))
        assert (await recv_json(conn))["type"] == "published"
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    async with grpc.aio.secure_channel(f"localhost:{tls_bridge.grpc_port}", credentials) as channel:
        stub = bridge_pb2_grpc.FleetBridgeServiceStub(channel)
        await stub.Publish(pb.PublishRequest(topic="fleet/d1/cmd", payload=b"{}", qos=1), timeout=TIMEOUT)
    # Plain HTTP on the TLS port gets no answer that a client could take for the bridge's.
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        with pytest.raises(httpx.HTTPError):
            await http.get(f"http://127.0.0.1:{port}/healthz")


async def test_mtls_refuses_a_client_without_a_certificate(mtls_bridge: Bridge, pki: Pki) -> None:
    """With tls_client_ca, HTTPS and gRPC take a client certificate of that CA, and refuse none."""
    port = mtls_bridge.http_port
    async with httpx.AsyncClient(verify=_client_context(pki, "operator"), timeout=TIMEOUT) as http:
        assert (await http.get(f"https://localhost:{port}/healthz")).status_code == 200
    async with httpx.AsyncClient(verify=_client_context(pki), timeout=TIMEOUT) as http:
        with pytest.raises((httpx.HTTPError, ssl.SSLError)):
            await http.get(f"https://localhost:{port}/healthz")
    cert, key = pki.client("operator")
    with_cert = grpc.ssl_channel_credentials(pki.ca.read_bytes(), key.read_bytes(), cert.read_bytes())
    without = grpc.ssl_channel_credentials(pki.ca.read_bytes())
    request = pb.PublishRequest(topic="fleet/d1/cmd", payload=b"{}", qos=1)
    async with grpc.aio.secure_channel(f"localhost:{mtls_bridge.grpc_port}", with_cert) as channel:
        await bridge_pb2_grpc.FleetBridgeServiceStub(channel).Publish(request, timeout=TIMEOUT)
    async with grpc.aio.secure_channel(f"localhost:{mtls_bridge.grpc_port}", without) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await bridge_pb2_grpc.FleetBridgeServiceStub(channel).Publish(request, timeout=TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_missing_certificate_is_a_config_error_naming_the_file(
    broker: Broker, tmp_path: Path
) -> None:
    """A TLS file that cannot be loaded stops the bridge before it listens, naming the file."""
    missing = tmp_path / "nope.pem"
    config = BridgeConfig(
        broker=f"mqtt://127.0.0.1:{broker.port}", http_port=0, grpc_port=0, tls_cert=missing, tls_key=missing
    )
    with pytest.raises(ConfigError) as caught:
        async with asyncio.timeout(TIMEOUT), running(config):
            pass
    assert str(missing) in str(caught.value)


def test_tls_and_tokens_files_in_a_config_are_relative_to_it(tmp_path: Path) -> None:
    """[bridge] tls_cert, tls_key, tls_client_ca and tokens_file are found beside the config file;
    a certificate without its key is an error naming the field."""
    config = tmp_path / "bridge.toml"
    config.write_text(
        '[bridge]\ntls_cert = "server.pem"\ntls_key = "server.key"\ntls_client_ca = "ca.pem"\n'
        'tokens_file = "tokens.toml"\n'
    )
    settings = load_bridge_config(config, {})
    assert settings.tls_cert == tmp_path / "server.pem"
    assert settings.tls_key == tmp_path / "server.key"
    assert settings.tls_client_ca == tmp_path / "ca.pem"
    assert settings.tokens_file == tmp_path / "tokens.toml"
    config.write_text('[bridge]\ntls_cert = "server.pem"\n')
    with pytest.raises(ConfigError) as caught:
        load_bridge_config(config, {})
    assert f"{config}: bridge.tls_key" in str(caught.value)
