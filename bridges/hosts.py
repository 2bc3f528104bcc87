"""The Host allowlist of the bridges' HTTP listener, against DNS rebinding.

`HostGuard` refuses a request whose Host header is not one of the bridge's own names. A page on
`evil.example` whose name re-resolves to 127.0.0.1 reaches the bridge with `Host: evil.example:PORT`
and `Origin: http://evil.example:PORT`: the Origin check alone lets it through, since the two agree.
Accepted: loopback names and IP
addresses, any IP address literal (a page must be served from that very address to send it, so it
cannot be rebound), the bind address, and `allowed_hosts`. Anything else gets 400 (HTTP) or a
refused WebSocket handshake (403).
"""

from __future__ import annotations

import ipaddress
import logging

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from bridges.auth import is_loopback

__all__ = ["HostGuard"]

log = logging.getLogger("bridges.hosts")


class HostGuard:
    """ASGI middleware: HTTP requests and WebSocket handshakes with a foreign Host are refused."""

    def __init__(self, app: ASGIApp, bind_host: str, allowed_hosts: tuple[str, ...]) -> None:
        self.app = app
        self._names = frozenset(
            name for name in (_hostname(bind_host), *(_hostname(h) for h in allowed_hosts)) if name
        )

    def allowed(self, host_header: str) -> bool:
        name = _hostname(host_header)
        if not name:
            return False
        if name in self._names or is_loopback(name):
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = Headers(scope=scope).get("host", "")
            if not self.allowed(host):
                log.warning(
                    "refused a request for Host %r from %s: see allowed_hosts", host, scope.get("client")
                )
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                reason = f"Host {host!r} is not a name of this bridge; add it to [bridge] allowed_hosts"
                await PlainTextResponse(reason, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _hostname(host: str) -> str:
    """The host part of a Host header or address, lowercased: no port, no brackets, no final dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")
