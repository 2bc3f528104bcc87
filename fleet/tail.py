"""`fleet tail URL`: print the events of a stream as JSON lines, and optionally wait for one.

    mqtt://host:port/FILTER      MQTT (also mqtts://); the path is a topic filter, '#' by default
    ws://host:port/ws?filter=F   WebSocket (also wss://): JSON text frames, or MQTT over WebSocket
                                 when the server accepts the subprotocol 'mqtt' (a broker, as
                                 `fleet watch` and `fleet run` read ws:// URLs); '#' by default
    http://host:port/events      Server-Sent Events (also https://), JSON `data:` lines
    grpc://host:port/FILTER      our FleetBridgeService (mqtt_fleet.bridge.v1), '#' by default;
                                 grpcs:// over TLS

`-V mqttv5` speaks MQTT 5 to a broker (mqtt[s]://, and ws[s]:// when it is a broker): each event then
has a `properties` object with the message's properties (`fleet.testing.streams.envelope_properties`:
user properties as ordered [key, value] pairs, Correlation Data in base64), and the pretty format
shows them after the payload. A bridge's stream carries what the bridge passes on.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet.credentials import Credentials, split_url
from fleet.testing.streams import Expectation, StreamEvent, Transport, open_stream
from fleet.topics import validate_filter

__all__ = ["Source", "format_event", "format_properties", "tail"]

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
    version: int | None = None  # the MQTT version spoken to a broker: 4 (3.1.1, the default) or 5

    @classmethod
    def parse(
        cls,
        url: str,
        filters: Sequence[str] = (),
        credentials: Credentials | None = None,
        version: int | None = None,
    ) -> Source:
        """Raises ValueError saying what is wrong with the URL or a filter, never showing a password.

        A `user:password@` in the URL is taken out of it; `credentials` win over it, field by field.
        `version` (4 or 5) is for a broker: an mqtt[s]:// or ws[s]:// URL.
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
        if version is not None and transport not in ("mqtt", "ws"):
            raise ValueError(
                f"{url!r}: the protocol version is spoken to a broker: mqtt[s]:// or ws[s]://; "
                "a bridge's stream carries the properties the bridge passes on"
            )
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
        return cls(transport, url, tuple(wanted), credentials, version)


def format_event(event: StreamEvent, *, pretty: bool = False) -> str:
    """One event as a JSON line, or `pretty`: 'time  topic  payload', then the MQTT 5 properties, if
    any, as `name=value` items (see `format_properties`)."""
    if not pretty:
        return json.dumps(event.data, separators=(",", ":"), default=str)
    clock = time.strftime("%H:%M:%S", time.localtime(event.received_at))
    millis = int(event.received_at % 1 * 1000)
    shown = event.payload if event.topic is not None else event.data
    line = f"{clock}.{millis:03d}  {event.topic or '-'}  {json.dumps(shown, default=str)}"
    properties = format_properties(event.properties)
    return f"{line}  {properties}" if properties else line


def format_properties(properties: Mapping[str, Any]) -> str:
    """The `properties` of an envelope as text: `content_type=application/json
    user_property:tenant=a user_property:tenant=b correlation_data(base64)=AQI=` ... in the
    envelope's order; each user property is one item, in order, duplicate keys kept. Values that
    are not plain words are JSON strings."""
    items: list[str] = []
    for name, value in properties.items():
        if name == "user_properties" and isinstance(value, list):
            items += [f"user_property:{_word(str(k))}={_word(str(v))}" for k, v in value]
        elif name == "correlation_data":
            items.append(f"correlation_data(base64)={value}")
        elif name == "subscription_identifiers" and isinstance(value, list):
            items.append(f"{name}={','.join(str(number) for number in value)}")
        else:
            items.append(f"{name}={_word(str(value))}")
    return " ".join(items)


def _word(text: str) -> str:
    """`text` as it is when it is one plain word, else as a JSON string."""
    plain = text and all(c.isprintable() and not c.isspace() and c not in '"=\\' for c in text)
    return text if plain else json.dumps(text, ensure_ascii=False)


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
    async with open_stream(
        source.transport, source.url, source.filters, source.credentials, version=source.version or 4
    ) as stream:
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
