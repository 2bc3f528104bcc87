"""Who may use the bridges' HTTP transports, and from which Host.

`Access` turns what a client presents into a `Grant` (bridges.tokens): without a tokens file every
client gets everything (the bridges then listen on loopback, or were started with --no-auth); with
one, a client must present a known token.

Where an HTTP client puts its token (`http_token`), first found wins:
- `Authorization: Bearer TOKEN`: what programs should send (fleet tail, curl, the WebSocket and SSE
  clients of any language).
- the cookie `fleet_token`, set by `POST /login` (the dashboard's login form): a browser's
  EventSource and WebSocket cannot set headers, and sends the cookie by itself. The cookie is
  HttpOnly and SameSite=Strict, so another site's page neither reads it nor has it sent.
- the query parameter `access_token` (RFC 6750): for a client that can set neither. A URL ends up in
  logs, shell history and browser history, so prefer the header or the cookie.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Final

from starlette.datastructures import Headers
from starlette.types import Scope

from bridges.tokens import Grant, Tokens

__all__ = [
    "COOKIE",
    "QUERY_PARAMETER",
    "Access",
    "bearer",
    "http_token",
    "is_loopback",
]

COOKIE: Final = "fleet_token"
QUERY_PARAMETER: Final = "access_token"


def is_loopback(host: str) -> bool:
    """Whether `host` (a bind address or a name) is this machine only: localhost or a loopback IP."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Access:
    """The tokens a bridge checks (None: no authentication, every client may do everything)."""

    tokens: Tokens | None = None

    @classmethod
    def from_file(cls, path: Path | None) -> Access:
        return cls(Tokens.load(path) if path is not None else None)

    @property
    def required(self) -> bool:
        return self.tokens is not None

    def grant(self, token: str | None) -> Grant | None:
        """What a client presenting `token` may do; None when it must authenticate (or try again)."""
        if self.tokens is None:
            return Grant.everything()
        if not token:
            return None
        return self.tokens.grant(token)


def bearer(value: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` value (the scheme in any case), else None."""
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def http_token(scope: Scope, query_token: str | None) -> str | None:
    """The token an HTTP or WebSocket client presents: the Authorization header, the cookie, or the
    query's `access_token` (passed in, parsed by the caller), in that order."""
    headers = Headers(scope=scope)
    token = bearer(headers.get("authorization"))
    if token is not None:
        return token
    cookie_header = headers.get("cookie")
    if cookie_header:
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(cookie_header)
        except ValueError:  # http.cookies.CookieError
            cookies = SimpleCookie()
        morsel = cookies.get(COOKIE)
        if morsel is not None and morsel.value:
            return morsel.value
    return query_token or None
