"""The one event envelope that every bridge transport delivers, encoded once per message.

    {"id": 18231, "topic": "fleet/thermo-0007/telemetry", "device": "thermo-0007", "kind": "telemetry",
     "qos": 1, "retain": false, "received_at": 1764400000.125, "payload": {"device": "thermo-0007"}}

`kind` is `telemetry`, `status`, `ack` or `raw` (topics outside the scheme), and `bridge` for the
bridge's own news: about its broker connection (`$bridge/broker`), or a message too large to bridge
(`$bridge/oversized`, payload `{"topic": …, "size": …, "max_event_bytes": …}`). A payload that is
not JSON is `null`, with the bytes in `payload_base64`; so is one with `NaN` or `Infinity`, which
Python's parser takes but JSON (and a browser's `JSON.parse`) does not.

A JSON payload is encoded once, compact, as `Event.payload_json`, and spliced into the envelope as
those very bytes: the gRPC bridge carries the same bytes, so integers stay integers and keys keep
their order on every transport. Text that UTF-8 cannot hold (a lone surrogate, from a `\\ud800`
escape) is written with `\\u` escapes instead.

A message with MQTT 5 properties has a `properties` object last, as `fleet tail` prints it
(`fleet.mqtt.properties.envelope_properties`): user properties as ordered `[key, value]` pairs,
duplicate keys kept, and Correlation Data in base64:

    {..., "payload": {"device": "thermo-0007"}, "properties": {"content_type": "application/json",
     "correlation_data": "YWJj", "user_properties": [["tenant", "a"], ["tenant", "b"]]}}

A message without properties (every MQTT 3.1.1 message) has no `properties` key. The encoded object
is kept as `Event.properties_json`, which the gRPC bridge carries as those very bytes.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Literal

from fleet.mqtt.properties import EMPTY, Properties, envelope_properties
from fleet.topics import classify

__all__ = ["BRIDGE_TOPIC", "OVERSIZED_TOPIC", "Event", "Kind", "classify", "make_event"]

Kind = Literal["telemetry", "status", "ack", "raw", "bridge"]
BRIDGE_TOPIC = "$bridge/broker"
# The bridge's notice of a message it did not bridge for its size, sent to the consumers it was for.
OVERSIZED_TOPIC = "$bridge/oversized"


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    topic: str
    device: str | None
    kind: Kind
    qos: int
    retain: bool
    received_at: float
    payload_json: bytes | None  # the payload as compact JSON, as in the envelope; None when not JSON
    raw: bytes  # the payload as received
    json: bytes  # the envelope, encoded once for every consumer
    size: int  # the bytes it holds (envelope, payload, payload as JSON): what byte limits count
    properties: Properties  # the MQTT 5 properties shown; EMPTY for none
    properties_json: bytes | None  # the envelope's `properties` object; None when it has none

    @property
    def payload(self) -> Any:
        """The payload's JSON value, decoded on each call; None when the payload is not JSON."""
        return None if self.payload_json is None else json.loads(self.payload_json)


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _compact(value: Any) -> bytes:
    """`value` as compact JSON in UTF-8; with `\\u` escapes when it holds text UTF-8 cannot encode."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()


def make_event(
    event_id: int,
    topic: str,
    raw: bytes,
    *,
    qos: int,
    retain: bool,
    received_at: float,
    prefix: str = "fleet",
    kind: Kind | None = None,
    properties: Properties = EMPTY,
) -> Event:
    device, classified = classify(topic, prefix)
    kind = kind or classified
    head = _compact(
        {
            "id": event_id,
            "topic": topic,
            "device": device,
            "kind": kind,
            "qos": qos,
            "retain": retain,
            "received_at": round(received_at, 6),
        }
    )[:-1]  # without its closing brace: the payload follows
    shown = envelope_properties(properties) if properties is not EMPTY else None
    properties_json = _compact(shown) if shown else None
    tail = b"}" if properties_json is None else b',"properties":%b}' % properties_json
    payload_json: bytes | None
    try:
        payload_json = _compact(json.loads(raw, parse_constant=_not_json))
    except (ValueError, RecursionError):  # ValueError: UnicodeDecodeError, JSONDecodeError; nesting too deep
        payload_json = None
        data = b'%b,"payload":null,"payload_base64":"%b"%b' % (head, base64.b64encode(raw), tail)
    else:
        data = b'%b,"payload":%b%b' % (head, payload_json, tail)
    size = len(data) + len(raw) + (len(payload_json) if payload_json is not None else 0)
    return Event(
        event_id, topic, device, kind, qos, retain, received_at, payload_json, raw, data, size,
        properties if properties_json is not None else EMPTY, properties_json,
    )  # fmt: skip
