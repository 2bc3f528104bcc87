"""A running bridge: the MQTT source, the Hub, the HTTP server and the gRPC server together.

async with running(BridgeConfig(http_port=0, grpc_port=0)) as bridge:
    print(bridge.urls)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from bridges.app import create_app
from bridges.auth import Access, is_loopback
from bridges.config import BridgeConfig
from bridges.grpc_service import grpc_server
from bridges.hub import Hub
from bridges.server import serve_http
from bridges.source import MqttSource, SourceSettings
from bridges.tls import TlsFiles

__all__ = ["Bridge", "running"]

log = logging.getLogger("bridges")


@dataclass(slots=True)
class Bridge:
    hub: Hub
    source: MqttSource
    http_port: int = 0
    grpc_port: int = 0
    urls: list[str] = field(default_factory=list)
    dashboard_url: str = ""


@contextlib.asynccontextmanager
async def running(config: BridgeConfig) -> AsyncIterator[Bridge]:
    """Serve all bridge transports until the block exits; the MQTT side reconnects on its own.

    ConfigError for a tokens file or TLS file that cannot be read."""
    endpoint = config.endpoint
    access = Access.from_file(config.tokens_file)
    if not access.required and not is_loopback(config.host):
        log.warning(
            "NO AUTHENTICATION (--no-auth) on %s: anyone who reaches the bridge can read the fleet "
            "and command its devices",
            config.host,
        )
    tls = TlsFiles.of(config.tls_cert, config.tls_key, config.tls_client_ca)
    hub = Hub(
        ring_size=config.ring_size,
        queue_size=config.queue_size,
        retained_bytes=config.retained_bytes,
        retained_topics=config.retained_topics,
        ring_bytes=config.ring_bytes,
        queue_bytes=config.queue_bytes,
        max_event_bytes=config.max_event_bytes,
        max_lag=config.max_lag,
        write_interval=config.write_interval,
    )
    source = MqttSource(
        hub,
        SourceSettings(
            host=endpoint.host,
            port=endpoint.port,
            transport="websockets" if endpoint.websocket else "tcp",
            websocket_path=endpoint.path if endpoint.websocket else None,
            username=config.username,
            password=config.password,
            tls=ssl.create_default_context() if endpoint.tls else None,
            subscriptions=config.subscriptions,
            publish_allowed=config.publish_allowed,
            max_publish_bytes=config.max_publish_bytes,
            protocol=config.protocol,
            shared_group=config.shared_group,
            retained_topics=config.retained_topics,
        ),
    )
    app = create_app(
        hub,
        source,
        sse_retry_ms=config.sse_retry_ms,
        keepalive=config.keepalive,
        ws_ping_interval=config.ws_ping_interval,
        send_timeout=config.send_timeout,
        allowed_origins=config.allowed_origins,
        access=access,
        host=config.host,
        allowed_hosts=config.allowed_hosts,
    )
    bridge = Bridge(hub, source)
    host = f"[{config.host}]" if ":" in config.host else config.host
    async with asyncio.TaskGroup() as tasks:
        feeding = tasks.create_task(source.run(), name="bridges.source")
        try:
            async with (
                serve_http(
                    app,
                    config.host,
                    config.http_port,
                    tls=tls,
                    max_connections=config.max_connections,
                    request_timeout=config.request_timeout,
                ) as bridge.http_port,
                grpc_server(
                    hub,
                    source,
                    config.host,
                    config.grpc_port,
                    policy=config.policy,
                    send_timeout=config.send_timeout,
                    access=access,
                    credentials=tls.grpc_credentials() if tls is not None else None,
                    max_publish_bytes=config.max_publish_bytes,
                    max_calls=config.max_connections,
                    handshake_timeout=config.request_timeout,
                ) as bridge.grpc_port,
            ):
                s = "s" if tls is not None else ""
                bridge.dashboard_url = f"http{s}://{host}:{bridge.http_port}/"
                bridge.urls += [
                    f"http{s}://{host}:{bridge.http_port}/events",
                    f"ws{s}://{host}:{bridge.http_port}/ws",
                    f"http{s}://{host}:{bridge.http_port}/metrics",
                    f"grpc{s}://{host}:{bridge.grpc_port}",
                    bridge.dashboard_url,
                ]
                yield bridge
        finally:
            feeding.cancel()
            hub.close("the bridge is shutting down")
