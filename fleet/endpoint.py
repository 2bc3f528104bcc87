"""Where a broker listens: a parsed mqtt://, mqtts://, ws:// or wss:// URL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from fleet.credentials import redact

__all__ = ["DEFAULT_PORTS", "Endpoint", "Scheme"]

Scheme = Literal["mqtt", "mqtts", "ws", "wss"]
DEFAULT_PORTS: dict[str, int] = {"mqtt": 1883, "mqtts": 8883, "ws": 8083, "wss": 443}
DEFAULT_WS_PATH = "/mqtt"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a broker listens, parsed from a URL: mqtt://, mqtts:// (TLS), ws:// or wss:// (WebSocket)."""

    scheme: Scheme
    host: str
    port: int
    path: str = DEFAULT_WS_PATH

    def __post_init__(self) -> None:
        if self.scheme not in DEFAULT_PORTS:
            raise ValueError(f"scheme must be mqtt, mqtts, ws or wss, got {self.scheme!r}")
        if not self.host:
            raise ValueError("host must not be empty")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be 1-65535, got {self.port}")
        if not self.path.startswith("/"):
            raise ValueError(f"path must start with '/', got {self.path!r}")

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """Parse a broker URL; default ports are 1883, 8883, 8083 (ws) and 443 (wss).

        Raises ValueError saying what is wrong with the URL, which shows no password.
        """
        shown = redact(url)
        text = url.strip()
        scheme, sep, rest = text.partition("://")
        if not sep:
            guess = redact(f"mqtt://{text}")
            raise ValueError(
                f"broker URL {guess.removeprefix('mqtt://')!r} has no scheme; did you mean {guess}?"
            )
        if scheme.lower() == "tcp":
            raise ValueError(
                f"broker URL {shown!r}: MQTT over TCP is mqtt://; did you mean {redact(f'mqtt://{rest}')}?"
            )
        if scheme.lower() == "ssl":
            raise ValueError(
                f"broker URL {shown!r}: MQTT over TLS is mqtts://; did you mean {redact(f'mqtts://{rest}')}?"
            )
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise ValueError(f"broker URL {shown!r}: the scheme must be mqtt, mqtts, ws or wss")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                f"broker URL {shown!r}: a user name or password goes in the client's credentials "
                "(-u, -P), not here"
            )
        host = parts.hostname
        if not host:
            raise ValueError(f"broker URL {shown!r} has no host")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"broker URL {shown!r}: the port must be a number from 1 to 65535") from None
        if port == 0:
            raise ValueError(f"broker URL {shown!r}: the port must be a number from 1 to 65535")
        if parts.query or parts.fragment:
            raise ValueError(f"broker URL {shown!r} must not have a query or fragment")
        path = parts.path
        if scheme in ("mqtt", "mqtts"):
            if path not in ("", "/"):
                raise ValueError(f"broker URL {shown!r}: an {scheme}:// URL has no path")
            path = DEFAULT_WS_PATH
        elif not path:
            path = DEFAULT_WS_PATH
        return cls(scheme, host, DEFAULT_PORTS[scheme] if port is None else port, path)  # type: ignore[arg-type]

    @property
    def tls(self) -> bool:
        return self.scheme in ("mqtts", "wss")

    @property
    def websocket(self) -> bool:
        return self.scheme in ("ws", "wss")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = self.path if self.websocket else ""
        return f"{self.scheme}://{host}:{self.port}{path}"
