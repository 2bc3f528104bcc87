"""Settings of `fleet bridge`: the `[bridge]` table of a TOML file, with command-line overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bridges.auth import is_loopback
from bridges.hub import (
    MAX_EVENT_BYTES,
    MAX_LAG,
    QUEUE_BYTES,
    RETAINED_BYTES,
    RETAINED_TOPICS,
    RING_BYTES,
    WRITE_INTERVAL,
)
from bridges.server import MAX_CONNECTIONS, REQUEST_TIMEOUT
from bridges.source import MAX_PUBLISH_BYTES
from fleet.config import load_table, validated
from fleet.endpoint import Endpoint
from fleet.topics import validate_filter

__all__ = ["BridgeConfig", "load_bridge_config"]


class BridgeConfig(BaseModel):
    """Everything `fleet bridge` can be told. Ports: 0 picks a free port."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    broker: str = Field(default="mqtt://127.0.0.1:1883", description="the broker to bridge from")
    protocol: Literal["3.1.1", "5"] = Field(
        default="3.1.1", description='MQTT version of the broker link; "5" brings the messages\' properties'
    )
    shared_group: str | None = Field(
        default=None,
        min_length=1,
        description="subscribe through $share/NAME/…: bridges of one group split the messages (protocol 5)",
    )
    username: str | None = None
    password: str | None = None
    host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535, description="SSE, WebSocket, /metrics")
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    subscriptions: tuple[str, ...] = Field(default=("#",), min_length=1)
    publish_allowed: tuple[str, ...] = ("fleet/+/cmd",)
    max_publish_bytes: int = Field(
        default=MAX_PUBLISH_BYTES,
        ge=128,
        le=268_435_455,
        description="the largest PUBLISH packet sent for a consumer; at most the broker's limit",
    )
    ring_size: int = Field(default=10_000, ge=1, description="events kept for SSE and gRPC resume")
    queue_size: int = Field(default=1_000, ge=1, description="events queued per consumer")
    max_lag: float = Field(
        default=MAX_LAG, gt=0, description="seconds a consumer's queue may fall behind before it drops"
    )
    write_interval: float = Field(
        default=WRITE_INTERVAL,
        ge=0,
        le=1,
        description="seconds between the fan-out's writes to a consumer at least; 0: a write each loop turn",
    )
    ring_bytes: int = Field(default=RING_BYTES, ge=1, description="bytes the replay ring's events may hold")
    queue_bytes: int = Field(
        default=QUEUE_BYTES, ge=1, description="bytes of queued events the ring no longer holds, per consumer"
    )
    max_event_bytes: int = Field(
        default=MAX_EVENT_BYTES, ge=1, description="larger payloads are not bridged: consumers get a notice"
    )
    retained_bytes: int = Field(
        default=RETAINED_BYTES, ge=0, description="bytes of retained messages kept for new consumers; 0: none"
    )
    retained_topics: tuple[str, ...] = Field(
        default=RETAINED_TOPICS, description="topics whose every message is published retained"
    )
    max_connections: int = Field(
        default=MAX_CONNECTIONS,
        ge=1,
        description="open HTTP connections, and gRPC calls, before 503 / RESOURCE_EXHAUSTED",
    )
    request_timeout: float = Field(
        default=REQUEST_TIMEOUT,
        gt=0,
        description="seconds a client has to send a whole request (headers, body)",
    )
    policy: Literal["drop-oldest", "disconnect"] = "drop-oldest"
    sse_retry_ms: int = Field(default=3000, ge=0)
    keepalive: float = Field(default=15.0, ge=0, description="SSE keep-alive comment interval")
    ws_ping_interval: float = Field(default=20.0, ge=0)
    send_timeout: float = Field(default=10.0, gt=0)
    allowed_origins: tuple[str, ...] = Field(
        default=(), description="browser origins besides the bridge's own whose pages may open /ws; * for any"
    )
    tokens_file: Path | None = Field(
        default=None, description="tokens clients must present (fleet token add)"
    )
    no_auth: bool = Field(default=False, description="serve without tokens off loopback: anyone may publish")
    allowed_hosts: tuple[str, ...] = Field(
        default=(), description="Host names besides loopback, IP addresses and `host` that clients may use"
    )
    tls_cert: Path | None = Field(
        default=None, description="serve HTTPS and gRPC over TLS with this certificate"
    )
    tls_key: Path | None = None
    tls_client_ca: Path | None = Field(
        default=None, description="require client certificates signed by this CA"
    )

    @model_validator(mode="after")
    def _secure(self) -> BridgeConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_key: tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca: client certificates need tls_cert and tls_key")
        if self.shared_group is not None and self.protocol != "5":
            raise ValueError(
                'shared_group: needs protocol = "5": the bridge tells the messages of its own retained-topic '
                "subscription from those of the shared one by their Subscription Identifiers"
            )
        if self.tokens_file is not None and self.no_auth:
            raise ValueError("no_auth: contradicts tokens_file: give one of them")
        if not is_loopback(self.host) and self.tokens_file is None and not self.no_auth:
            raise ValueError(
                f"host: {self.host!r} is not loopback: anyone who reaches it could command the devices; "
                "give a tokens_file (--tokens-file, see `fleet token add`), or no_auth (--no-auth) to serve "
                "without authentication"
            )
        return self

    @field_validator("shared_group")
    @classmethod
    def _share_name(cls, value: str | None) -> str | None:
        if value is not None and any(char in value for char in "/+#"):
            raise ValueError(f"{value!r}: a share name holds no '/', '+' or '#' [MQTT-4.8.2-2]")
        return value

    @field_validator("broker")
    @classmethod
    def _url(cls, value: str) -> str:
        Endpoint.parse(value)
        return value

    @field_validator("subscriptions", "publish_allowed", "retained_topics")
    @classmethod
    def _filters(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for topic_filter in value:
            validate_filter(topic_filter)
        return value

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint.parse(self.broker)


def load_bridge_config(path: Path | None, overrides: dict[str, Any]) -> BridgeConfig:
    """The `[bridge]` table of `path` (if any) with `overrides` on top; ConfigError when invalid."""
    table: dict[str, Any] = dict(load_table(path, "bridge")) if path is not None else {}
    table.update(overrides)
    base = path.parent if path is not None else Path()
    for key in ("tokens_file", "tls_cert", "tls_key", "tls_client_ca"):
        if isinstance(table.get(key), str):
            table[key] = base / table[key] if key not in overrides else Path(table[key])
    for key in ("subscriptions", "publish_allowed", "retained_topics", "allowed_origins", "allowed_hosts"):
        if isinstance(table.get(key), list):
            table[key] = tuple(table[key])
    return validated(BridgeConfig, table, where=str(path) if path else "command line", prefix="bridge")
