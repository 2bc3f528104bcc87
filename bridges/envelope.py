"""The one event envelope that every bridge transport delivers, encoded once per message.

    {"id": 18231, "topic": "fleet/thermo-0007/telemetry", "device": "thermo-0007", "kind": "telemetry",
     "qos": 1, "retain": false, "received_at": 1764400000.125, "payload": {"device": "thermo-0007"}}

`kind` is `telemetry`, `status`, `ack` or `raw` (topics outside the scheme), and `bridge` for the
bridge's own news about its broker connection. A payload that is not JSON is `null`, with the
bytes in `payload_base64`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Literal

from fleet.topics import classify

__all__ = ["BRIDGE_TOPIC", "Event", "Kind", "classify", "make_event"]

Kind = Literal["telemetry", "status", "ack", "raw", "bridge"]
BRIDGE_TOPIC = "$bridge/broker"


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    topic: str
    device: str | None
    kind: Kind
    qos: int
    retain: bool
    received_at: float
    payload: Any  # the decoded JSON value; None when the payload is not JSON
    raw: bytes  # the payload as received
    json: bytes  # the envelope, encoded once for every consumer

    @property
    def is_json(self) -> bool:
        return self.payload is not None or self.raw.strip() == b"null"


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
) -> Event:
    device, classified = classify(topic, prefix)
    kind = kind or classified
    envelope: dict[str, Any] = {
        "id": event_id,
        "topic": topic,
        "device": device,
        "kind": kind,
        "qos": qos,
        "retain": retain,
        "received_at": round(received_at, 6),
    }
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        payload = None
        envelope["payload"] = None
        envelope["payload_base64"] = base64.b64encode(raw).decode("ascii")
    else:
        envelope["payload"] = payload
    data = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
    return Event(event_id, topic, device, kind, qos, retain, received_at, payload, raw, data)
