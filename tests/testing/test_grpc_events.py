"""The gRPC stream client decodes FleetBridgeService items to the JSON the other bridges send."""

from __future__ import annotations

import json

import pytest

from bridges.envelope import make_event
from bridges.grpc_service import event_message
from bridges.proto.mqtt_fleet.bridge.v1 import bridge_pb2 as pb
from fleet.testing.streams import grpc_events


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("fleet/thermo-0007/telemetry", b'{"device":"thermo-0007","seq":42,"values":{"t":21.4}}'),
        ("fleet/thermo-0007/status", b'{"online":false,"reason":"lost"}'),
        ("plant/line-1/raw", b"\x00\xffnot json"),
        ("fleet/x/cmd/ack", b"[1, null, true]"),
    ],
    ids=["telemetry", "status", "binary", "array"],
)
def test_a_grpc_event_decodes_to_the_json_envelope(topic: str, payload: bytes) -> None:
    """An event over gRPC reads as the same dict as its JSON envelope on WebSocket and SSE."""
    event = make_event(17, topic, payload, qos=1, retain=True, received_at=1764400000.125)
    response = pb.SubscribeResponse(events=pb.EventBatch(events=[event_message(event)]))
    assert grpc_events(response) == [json.loads(event.json)]


def test_a_batch_decodes_to_its_envelopes_in_order() -> None:
    """A response carrying a batch of events reads as their envelopes, in the bridge's order."""
    events = [
        make_event(n, f"fleet/d-{n}/status", b'{"online":true}', qos=1, retain=True, received_at=1.0)
        for n in (3, 4, 5)
    ]
    response = pb.SubscribeResponse(events=pb.EventBatch(events=[event_message(e) for e in events]))
    assert grpc_events(response) == [json.loads(e.json) for e in events]


def test_dropped_and_reset_items_decode_to_typed_notices() -> None:
    """Dropped and Reset items read as WebSocket's notices: `type` says which."""
    dropped = pb.SubscribeResponse(dropped=pb.Dropped(count=3, total=5))
    reset = pb.SubscribeResponse(reset=pb.Reset(after_id=1, oldest_id=9))
    assert grpc_events(dropped) == [{"type": "dropped", "count": 3, "total": 5}]
    assert grpc_events(reset) == [{"type": "reset", "after_id": 1, "oldest_id": 9}]
