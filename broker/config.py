"""Settings of the embedded broker: defaults, validation, and the `[broker]` table of a TOML file."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleet.config import load_table, validated

__all__ = ["BrokerSettings", "is_loopback", "load_broker_settings"]


class BrokerSettings(BaseModel):
    """Everything `fleet broker` can be told. Ports: 0 picks a free port; None turns a listener off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=0, le=65535)
    ws_port: int | None = Field(default=8083, ge=0, le=65535)
    tls_port: int = Field(default=8883, ge=0, le=65535)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    cafile: Path | None = Field(
        default=None, description="CA certificates that client certificates are checked against"
    )
    require_certificate: bool = Field(default=False, description="TLS clients must present a certificate")
    use_identity_as_username: bool = Field(
        default=False, description="a TLS client's user name is its certificate's CN"
    )
    password_file: Path | None = None
    acl_file: Path | None = None
    allow_anonymous: bool | None = Field(
        default=None,
        description="default: true without a password file on loopback, false with one; off loopback "
        "without a password file it must be given",
    )
    max_queued: int = Field(default=1000, ge=0, description="messages queued per session")
    max_inflight: int = Field(default=20, ge=1, le=65535, description="unacknowledged QoS 1/2 per session")
    max_packet_size: int = Field(default=1 << 20, ge=128, le=268_435_455)
    max_keepalive: int = Field(
        default=65535,
        ge=1,
        le=65535,
        description="seconds; longer keepalives are cut to it (Server Keep Alive)",
    )
    max_topic_alias: int = Field(default=10, ge=0, le=65535, description="MQTT 5 topic aliases per client")
    max_session_expiry: int = Field(
        default=0xFFFFFFFF,
        ge=0,
        le=0xFFFFFFFF,
        description="seconds an offline MQTT 5 session is kept at most",
    )
    shared_subscriptions: bool = Field(default=True, description="whether $share/{group}/{filter} is served")
    connect_timeout: float = Field(default=10.0, gt=0)
    sys_interval: float = Field(default=10.0, ge=0, description="seconds between $SYS updates; 0: off")
    persistence: Path | None = Field(default=None, description="folder of the persistent store; none: off")
    sync: Literal["always", "interval", "never"] = Field(
        default="always", description="when the store is made durable (with persistence)"
    )
    sync_interval: int = Field(
        default=1000, ge=1, le=3_600_000, description="milliseconds, for sync interval"
    )

    @model_validator(mode="after")
    def _check(self) -> BrokerSettings:
        if self.tls_cert is not None and self.tls_key is None:
            raise ValueError("tls_key: required with tls_cert")
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError("tls_cert: required with tls_key")
        if self.cafile is not None and self.tls_cert is None:
            raise ValueError(
                "cafile: checks client certificates on the TLS listener; give tls_cert and tls_key"
            )
        if self.require_certificate and self.cafile is None:
            raise ValueError("require_certificate: needs a cafile to check client certificates against")
        if self.use_identity_as_username and not self.require_certificate:
            raise ValueError("use_identity_as_username: needs require_certificate")
        if self.allow_anonymous is False and self.password_file is None:
            raise ValueError("allow_anonymous: false without a password_file would let nobody connect")
        if self.allow_anonymous is None and self.password_file is None and not is_loopback(self.host):
            # As Mosquitto 2.0: off loopback, anonymous access must be asked for by name.
            raise ValueError(
                f"allow_anonymous: listening on {self.host} without a password_file would let any "
                "machine that reaches it publish and subscribe; give a password_file (--password-file), "
                "or set allow_anonymous = true (--allow-anonymous) to allow that explicitly"
            )
        return self

    @property
    def anonymous(self) -> bool:
        """Whether clients without a user name are let in."""
        if self.allow_anonymous is None:
            return self.password_file is None
        return self.allow_anonymous


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_PATH_KEYS = ("tls_cert", "tls_key", "cafile", "password_file", "acl_file", "persistence")


def load_broker_settings(path: Path | None, overrides: dict[str, Any]) -> BrokerSettings:
    """Settings from the `[broker]` table of `path` (if any), with `overrides` on top.

    In files and on the command line `ws_port = 0` turns the WebSocket listener off. Relative paths
    in a file are relative to that file.
    """
    table: dict[str, Any] = {}
    if path is not None:
        table.update(load_table(path, "broker"))
        for key in _PATH_KEYS:
            value = table.get(key)
            if isinstance(value, str) and not Path(value).is_absolute():
                table[key] = str(path.parent / value)
    table.update(overrides)
    if table.get("ws_port") == 0:
        table["ws_port"] = None
    where = f"{path}" if path is not None else "command line"
    return validated(BrokerSettings, table, where=where, prefix="broker")
