"""`fleet tail URL`: print the events of a stream as JSON lines, and optionally wait for one.

    mqtt://host:port/FILTER      MQTT (also mqtts://); the path is a topic filter, '#' by default
    ws://host:port/ws?filter=F   WebSocket (also wss://): JSON text frames, or MQTT over WebSocket
                                 when the server accepts the subprotocol 'mqtt' (a broker, as
                                 `fleet watch` and `fleet run` read ws:// URLs); '#' by default
    http://host:port/events      Server-Sent Events (also https://), JSON `data:` lines
    grpc://host:port/FILTER      our FleetBridgeService (mqtt_fleet.bridge.v1), '#' by default;
                                 grpcs:// over TLS

`--filter` adds topic filters: MQTT and gRPC subscribe to them, WebSocket and SSE URLs get them as
`filter` query parameters (how our bridges take them, and what MQTT over WebSocket subscribes to).
An http:// answer that is not an event stream is an error naming what it was. A bridge with a
tokens file takes the token (`--token`) on ws[s]://, http[s]:// and grpc[s]:// URLs, and the TLS
forms take --cafile and --cert/--key (and, except gRPC, --insecure).
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fleet.credentials import Credentials, split_url
from fleet.testing.streams import Expectation, StreamEvent, Transport, open_stream
from fleet.topics import validate_filter

__all__ = ["Source", "format_event", "tail"]

_SCHEMES: dict[str, Transport] = {
    "mqtt": "mqtt",
    "mqtts": "mqtt",
    "ws": "ws",
    "wss": "ws",
    "http": "sse",
    "https": "sse",
    "grpc": "grpc",
    "grpcs": "grpc",
}


@dataclass(frozen=True, slots=True)
class Source:
    """What to read: a transport, the URL its client opens, and topic filters."""

    transport: Transport
    url: str
    filters: tuple[str, ...]
    credentials: Credentials = field(default_factory=Credentials)

    @classmethod
    def parse(cls, url: str, filters: Sequence[str] = (), credentials: Credentials | None = None) -> Source:
        """Raises ValueError saying what is wrong with the URL or a filter, never showing a password.

        A `user:password@` in the URL is taken out of it; `credentials` win over it, field by field.
        """
        url, from_url = split_url(url)
        credentials = from_url.override(credentials or Credentials())
        scheme, sep, rest = url.partition("://")
        transport = _SCHEMES.get(scheme.lower())
        if not sep or transport is None:
            raise ValueError(f"{url!r}: the URL must start with {', '.join(f'{s}://' for s in _SCHEMES)}")
        if credentials.tls and scheme.lower() not in ("mqtts", "wss", "https", "grpcs"):
            raise ValueError(
                f"{url!r}: --cafile, --cert and --insecure need an mqtts://, wss://, https:// or grpcs:// URL"
            )
        if credentials.insecure and scheme.lower() == "grpcs":
            raise ValueError(
                f"{url!r}: gRPC cannot skip certificate verification: give --cafile, not --insecure"
            )
        if credentials.token is not None and transport == "mqtt":
            raise ValueError(
                f"{url!r}: --token is for a bridge (ws[s]://, http[s]://, grpc[s]://); a broker takes -u/-P"
            )
        if credentials.username is not None and transport not in ("mqtt", "ws"):
            raise ValueError(f"{url!r}: a user name and password log in to a broker: mqtt[s]:// or ws[s]://")
        wanted = list(filters)
        if transport in ("mqtt", "grpc"):
            # The path is a topic filter, '#' and '+' as they are or percent-encoded.
            address, _, path = rest.partition("/")
            if not address:
                raise ValueError(f"{url!r} has no host")
            if path:
                wanted.insert(0, urllib.parse.unquote(path))
            url = f"{scheme.lower()}://{address}"
            wanted = wanted or ["#"]
        for topic_filter in wanted:
            validate_filter(topic_filter)
        return cls(transport, url, tuple(wanted), credentials)


def format_event(event: StreamEvent, *, pretty: bool = False) -> str:
    """One event as a JSON line, or `pretty`: 'time  topic  payload'."""
    if not pretty:
        return json.dumps(event.data, separators=(",", ":"), default=str)
    clock = time.strftime("%H:%M:%S", time.localtime(event.received_at))
    millis = int(event.received_at % 1 * 1000)
    shown = event.payload if event.topic is not None else event.data
    return f"{clock}.{millis:03d}  {event.topic or '-'}  {json.dumps(shown, default=str)}"


async def tail(
    source: Source,
    *,
    count: int | None,
    timeout: float | None,
    expectation: Expectation | None,
    write: Callable[[StreamEvent], None],
    note: Callable[[str], None],
) -> str | None:
    """Read `source`, `write` each event, until `count` events, `timeout` seconds, the end of the
    stream, or an event that meets `expectation`. Returns None, or why the run failed: the
    expectation was not met, or fewer than `count` events came (the timeout passed or the stream
    ended first).

    `note` gets one line when the stream is open (everything sent after that is read), and one if
    the stream ends on its own. Raises TransportError when the stream cannot be opened.
    """
    async with open_stream(source.transport, source.url, source.filters, source.credentials) as stream:
        note(f"reading {stream.name} (filters: {', '.join(stream.filters) or 'none'})")
        seen = 0
        async for event in stream.events(timeout):
            write(event)
            seen += 1
            if expectation is not None and expectation.matches(event):
                return None
            if seen == count:
                break
        if stream.ended is not None:
            note(f"the stream ended: {stream.ended}")
        if expectation is not None:
            unmet = f"expectation not met: no event matching {expectation}"
            if seen == count:
                return f"{unmet} among the first {count} events"
            if stream.ended is not None:
                return f"{unmet} before the stream ended ({seen} events)"
            return f"{unmet} within {timeout}s ({seen} events)"
        if count is not None and seen < count:
            if stream.ended is not None:
                return f"the stream ended after {seen} of {count} events: {stream.ended}"
            return f"timed out: {seen} of {count} events within {timeout}s"
        return None
