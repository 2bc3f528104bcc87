"""MQTT 5 interoperability: clients we did not write against `fleet broker`.

mosquitto_pub/mosquitto_sub with `-V mqttv5 -D ...` and paho-mqtt with `protocol=MQTTv5` (over TCP and
WebSocket) run against a `python -m fleet broker` subprocess; MQTT.js (`mqtt` from npm, installed by
`npm ci --prefix tests/node`) runs against an in-process broker, over TCP and WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import queue
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.client import Client, ConnectFlags, MQTTMessage, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from fleet.mqtt import v5
from fleet.mqtt.properties import Properties
from tests.procs import (
    MOSQUITTO_PUB,
    MOSQUITTO_SUB,
    SUB_WAIT,
    TIMEOUT,
    FleetBroker,
    Proc,
    needs_mosquitto_clients,
    run,
)
from tests.rawmqtt5 import Raw5

ROOT = Path(__file__).resolve().parents[2]
NODE = shutil.which("node")
NODE_DIR = ROOT / "tests" / "node"


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this test alone."""
    return f"interop5/{uuid.uuid4().hex[:12]}"


def _mosquitto5(tool: str | None, port: int, *args: str | int) -> list[str]:
    assert tool is not None
    return [tool, "-V", "mqttv5", "-h", "127.0.0.1", "-p", str(port), *(str(arg) for arg in args)]


@needs_mosquitto_clients
def test_mosquitto_v5_properties_pass_through_the_broker(
    fleet_broker_process: FleetBroker, procs: Callable[..., Proc], prefix: str
) -> None:
    """mosquitto_sub -V mqttv5 gets what mosquitto_pub -V mqttv5 -D sends: user properties (in order),
    content type, response topic and the payload format indicator."""
    port = fleet_broker_process.port
    done = run(_mosquitto5(MOSQUITTO_PUB, port, "-t", f"{prefix}/ready", "-r", "-q", 1, "-m", "ready"))
    assert done.returncode == 0, done.stderr
    sub = procs(
        *_mosquitto5(
            MOSQUITTO_SUB, port, "-t", f"{prefix}/#", "-q", 1, "-C", 2, "-W", SUB_WAIT,
            "-D", "connect", "session-expiry-interval", 0,
            "-F", "%t|%q|%P|%C|%R|%F|%p",
        )
    )  # fmt: skip
    sub.stdout.wait_for(f"{prefix}/ready|")
    done = run(
        _mosquitto5(
            MOSQUITTO_PUB, port, "-t", f"{prefix}/data", "-q", 1, "-m", "hello",
            "-D", "publish", "user-property", "k", "2",
            "-D", "publish", "user-property", "a", "1",
            "-D", "publish", "user-property", "k", "1",
            "-D", "publish", "content-type", "text/plain",
            "-D", "publish", "response-topic", f"{prefix}/reply",
            "-D", "publish", "payload-format-indicator", 1,
        )
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sub.wait(TIMEOUT + 5) == 0, sub.describe()
    assert sub.stdout.lines[1] == f"{prefix}/data|1|k:2 a:1 k:1|text/plain|{prefix}/reply|1|hello"


@needs_mosquitto_clients
def test_mosquitto_pub_v5_to_an_acl_denied_topic_is_told_0x87(
    start_fleet_broker: Callable[..., FleetBroker], tmp_path: Path
) -> None:
    """mosquitto_pub -V mqttv5 at QoS 1 to a topic the ACL denies gets PUBACK 0x87 and says so."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite #\ntopic deny secret/#\n")
    broker = start_fleet_broker("--port", "0", "--ws-port", "0", "--acl-file", acl)
    done = run(_mosquitto5(MOSQUITTO_PUB, broker.port, "-t", "secret/x", "-q", 1, "-m", "x", "-d"))
    assert "rc135" in done.stdout + done.stderr or "not authorized" in (done.stdout + done.stderr).lower(), (
        done
    )


class Paho5:
    """A paho-mqtt 2.2 MQTT 5 client driven by its loop_start() thread; every wait has a timeout."""

    def __init__(self, client_id: str, transport: str = "tcp") -> None:
        self.client = Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTv5,
            transport=transport,  # type: ignore[arg-type]
        )
        self.messages: queue.Queue[MQTTMessage] = queue.Queue()
        self.connack: queue.Queue[tuple[ReasonCode, Any]] = queue.Queue()
        self.subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda client, userdata, message: self.messages.put(message)
        self.client.on_subscribe = lambda client, userdata, mid, codes, properties: self.subacks.put(codes)
        self._stopped = threading.Event()

    def _on_connect(
        self, client: Client, userdata: Any, flags: ConnectFlags, code: ReasonCode, properties: Any
    ) -> None:
        self.connack.put((code, properties))

    def connect(self, port: int) -> Any:
        """Connect; return the CONNACK properties (failing on a refusal)."""
        self.client.connect_async("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        code, properties = self.connack.get(timeout=TIMEOUT)
        assert not code.is_failure, code
        return properties

    def subscribe(
        self, topic: str, options: SubscribeOptions, properties: PahoProperties | None = None
    ) -> int:
        self.client.subscribe(topic, options=options, properties=properties)
        return int(self.subacks.get(timeout=TIMEOUT)[0].value)

    def message(self) -> MQTTMessage:
        return self.messages.get(timeout=TIMEOUT)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize("transport", ["tcp", "websockets"])
def test_paho_v5_gets_connack_properties_no_local_and_subscription_identifiers(
    fleet_broker_process: FleetBroker, prefix: str, transport: str
) -> None:
    """paho-mqtt MQTTv5 (TCP and WebSocket): CONNACK properties, No Local, a subscription identifier,
    and user properties passed through, between two paho clients."""
    port = fleet_broker_process.port if transport == "tcp" else fleet_broker_process.ports["ws"]
    first, second = Paho5("paho5-a", transport), Paho5("paho5-b", transport)
    try:
        connack = first.connect(port)
        assert connack.ReceiveMaximum == 20
        assert connack.TopicAliasMaximum == 10
        second.connect(port)
        sub_props = PahoProperties(PacketTypes.SUBSCRIBE)
        sub_props.SubscriptionIdentifier = 42
        assert first.subscribe(f"{prefix}/#", SubscribeOptions(qos=1, noLocal=True), sub_props) == 1
        assert second.subscribe(f"{prefix}/#", SubscribeOptions(qos=1)) == 1
        pub_props = PahoProperties(PacketTypes.PUBLISH)
        pub_props.UserProperty = ("k", "v")
        first.client.publish(f"{prefix}/from-a", b"a", 1, properties=pub_props)
        got = second.message()
        assert (got.topic, got.payload, got.properties.UserProperty) == (
            f"{prefix}/from-a",
            b"a",
            [("k", "v")],
        )
        second.client.publish(f"{prefix}/from-b", b"b", 1)
        got = first.message()
        assert got.topic == f"{prefix}/from-b"
        assert got.properties.SubscriptionIdentifier == [42]
        assert first.messages.empty()
    finally:
        first.close()
        second.close()


# MQTT.js

_node_missing = (
    "Node.js is not installed"
    if NODE is None
    else ""
    if (NODE_DIR / "node_modules" / "mqtt" / "package.json").is_file()
    else "MQTT.js is not installed: run `npm ci --prefix tests/node`"
)


@pytest.mark.skipif(bool(_node_missing), reason=_node_missing)
@pytest.mark.parametrize("scheme", ["mqtt", "ws"])
async def test_mqtt_js_v5_exchanges_properties_and_topic_aliases_with_the_broker(
    broker_factory: Any, scheme: str
) -> None:
    """MQTT.js (protocolVersion 5, mqtt:// and ws://) sees CONNACK limits, receives user properties and
    its subscription identifier through broker topic aliases, and publishes with its own aliases."""
    async with broker_factory(ws_port=0) as broker:
        url = (
            f"mqtt://127.0.0.1:{broker.port}" if scheme == "mqtt" else f"ws://127.0.0.1:{broker.ws_port}/mqtt"
        )
        watcher = await Raw5.open(broker.port)
        process = await asyncio.create_subprocess_exec(
            NODE or "node", "mqtt_client.mjs", url, "js/in", "2", "8000",
            cwd=NODE_DIR, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            assert process.stdin is not None
            async with asyncio.timeout(TIMEOUT):
                ready = json.loads(await process.stdout.readline())
            assert ready["ready"] is True, ready
            assert ready["connack"]["receiveMaximum"] == 20
            assert ready["connack"]["topicAliasMaximum"] == 10
            await watcher.connect("js-watch")
            await watcher.subscribe(v5.Subscription("js/out", 1))
            line = {
                "topic": "js/out",
                "payload": "from js",
                "qos": 1,
                "properties": {"userProperties": {"x": "y"}},
            }
            process.stdin.write(json.dumps(line).encode() + b"\n")
            await process.stdin.drain()
            for _ in range(2):
                got = await watcher.read_publish()
                watcher.ack(4, got.packet_id or 0)
                assert (got.topic, got.payload) == ("js/out", b"from js")
                assert got.properties.user_properties == (("x", "y"),)
            props = Properties(user_properties=(("k", "2"), ("k", "1")), content_type="text/plain")
            for _ in range(2):
                await watcher.publish_acked("js/in", b"to js", 1, properties=props)
            async with asyncio.timeout(TIMEOUT):
                stdout, stderr = await process.communicate()
            assert process.returncode == 0, stderr.decode()
            lines = [json.loads(raw) for raw in stdout.splitlines()]
            messages = [line for line in lines if "topic" in line]
            assert [m["topic"] for m in messages] == ["js/in", "js/in"]
            for message in messages:
                assert message["payload"] == "to js"
                assert message["properties"]["userProperties"] == {"k": ["2", "1"]}
                assert message["properties"]["contentType"] == "text/plain"
                assert message["properties"]["subscriptionIdentifier"] == 7
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await watcher.close()
