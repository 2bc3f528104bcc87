"""`[bridge] shared_group`: bridges of one group split a broker's messages through `$share/NAME/…`,
and each still gets every status, retained or live, from a subscription of its own; against the
embedded broker and Mosquitto."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import aiomqtt
import pytest

from bridges.bridge import Bridge, running
from bridges.config import BridgeConfig, load_bridge_config
from fleet.errors import ConfigError
from tests.bridges.conftest import wait_until

MESSAGES = 60


def topics(bridge: Bridge, kind: str) -> list[str]:
    """The topic and payload `seq` of each event of `kind` the bridge has ingested, from its ring."""
    return [
        f"{event.topic}#{json.loads(event.raw).get('seq')}" for event in bridge.hub.ring if event.kind == kind
    ]


async def test_two_bridges_of_one_shared_group_split_the_telemetry_and_each_gets_every_status(
    port: int,
) -> None:
    """Two bridges with one shared_group each get a share of the telemetry, together all of it and
    none twice; each gets the retained statuses and every live status, once."""
    async with aiomqtt.Client("127.0.0.1", port, identifier="test-shared-publisher") as publisher:
        await publisher.publish("fleet/d0/status", b'{"online":true,"seq":0}', qos=1, retain=True)
        config = BridgeConfig(
            broker=f"mqtt://127.0.0.1:{port}", http_port=0, grpc_port=0, protocol="5", shared_group="g"
        )
        async with contextlib.AsyncExitStack() as stack:
            bridges = [await stack.enter_async_context(running(config)) for _ in range(2)]
            await wait_until(
                lambda: all([e.topic for e in b.hub.retained] == ["fleet/d0/status"] for b in bridges),
                "each bridge to connect and get the retained status from its own subscription",
            )
            await publisher.publish("fleet/d1/status", b'{"online":true,"seq":1}', qos=1, retain=True)
            for seq in range(MESSAGES):
                await publisher.publish(
                    f"fleet/d{seq % 7}/telemetry", json.dumps({"seq": seq}).encode(), qos=1
                )
            expected = sorted(f"fleet/d{seq % 7}/telemetry#{seq}" for seq in range(MESSAGES))
            await wait_until(
                lambda: (
                    sorted(set(topics(bridges[0], "telemetry")) | set(topics(bridges[1], "telemetry")))
                    == expected
                ),
                "the two bridges to get every telemetry message between them",
            )
            shares = [topics(bridge, "telemetry") for bridge in bridges]
            assert all(shares), f"a bridge got no share: {[len(share) for share in shares]}"
            assert sorted(shares[0] + shares[1]) == expected, "a message reached both bridges, or one twice"
            for bridge in bridges:
                assert topics(bridge, "status") == ["fleet/d0/status#0", "fleet/d1/status#1"]
                assert sorted(e.topic for e in bridge.hub.retained) == ["fleet/d0/status", "fleet/d1/status"]
        await publisher.publish("fleet/d0/status", b"", qos=1, retain=True)
        await publisher.publish("fleet/d1/status", b"", qos=1, retain=True)


def test_shared_group_needs_protocol_5_and_a_share_name_without_wildcards(tmp_path: Path) -> None:
    """shared_group is refused, naming the field, over MQTT 3.1.1 and for a name with '/', '+' or '#'."""
    path = tmp_path / "bridge.toml"
    path.write_text('[bridge]\nprotocol = "5"\nshared_group = "bridges"\n')
    assert load_bridge_config(path, {}).shared_group == "bridges"
    path.write_text('[bridge]\nshared_group = "bridges"\n')
    with pytest.raises(ConfigError, match=r'shared_group: needs protocol = "5"'):
        load_bridge_config(path, {})
    for name in ("a/b", "a+", "#", ""):
        path.write_text(f'[bridge]\nprotocol = "5"\nshared_group = "{name}"\n')
        with pytest.raises(ConfigError, match=r"bridge\.shared_group"):
            load_bridge_config(path, {})
