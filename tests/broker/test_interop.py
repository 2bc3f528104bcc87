"""Interoperability: clients we did not write (mosquitto_pub/sub, paho, websockets) against `fleet broker`.

Every test runs its own `python -m fleet broker` subprocess (TCP on a free port, WebSocket on a free
port, $SYS every second), stopped with SIGTERM at teardown, which must exit 0.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable

import pytest
from websockets.sync.client import connect as websocket_connect
from websockets.typing import Subprotocol

from tests.procs import (
    MOSQUITTO_PUB,
    MOSQUITTO_SUB,
    SUB_WAIT,
    TIMEOUT,
    FleetBroker,
    Paho,
    Proc,
    connect_packet,
    mosquitto,
    needs_mosquitto_clients,
    run,
)

pytestmark = needs_mosquitto_clients

Procs = Callable[..., Proc]
PahoFactory = Callable[..., Paho]


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this test alone."""
    return f"interop/{uuid.uuid4().hex[:12]}"


def publish(port: int, topic: str, *args: str | int) -> None:
    """mosquitto_pub to the broker; fail unless it exits 0 (QoS 1/2 exit 0 only once acknowledged)."""
    done = run(mosquitto(MOSQUITTO_PUB, port, "-t", topic, *args))
    assert done.returncode == 0, f"mosquitto_pub failed ({done.returncode}): {done.stderr}"


def subscribe(procs: Procs, port: int, *args: str | int) -> Proc:
    """Start mosquitto_sub printing 'topic qos retain payload' per message."""
    return procs(*mosquitto(MOSQUITTO_SUB, port, "-F", "%t %q %r %p", *args))


def finished(sub: Proc) -> list[str]:
    """The lines of a mosquitto_sub run with -C/-W, once it exited 0 (exit 27 would mean -W timed out)."""
    code = sub.wait(TIMEOUT + 5)
    assert code == 0, sub.describe()
    return sub.stdout.lines


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_mosquitto_sub_receives_mosquitto_pub_over_tcp(
    fleet_broker_process: FleetBroker, procs: Procs, prefix: str, qos: int
) -> None:
    """mosquitto_sub gets, in order and at the same QoS, what mosquitto_pub sends at QoS 0, 1 and 2."""
    port = fleet_broker_process.port
    # A retained marker: once mosquitto_sub prints it, its subscription is in place.
    publish(port, f"{prefix}/ready", "-r", "-q", 1, "-m", "ready")
    sub = subscribe(procs, port, "-t", f"{prefix}/#", "-q", qos, "-C", 4, "-W", SUB_WAIT)
    sub.stdout.wait_for(f"{prefix}/ready ")

    # -l: one message per line of standard input, over one connection.
    lines = "one\ntwo words\nthree\n"
    done = run(mosquitto(MOSQUITTO_PUB, port, "-t", f"{prefix}/data", "-q", qos, "-l"), input=lines)
    assert done.returncode == 0, done.stderr

    assert finished(sub) == [
        f"{prefix}/ready {min(qos, 1)} 1 ready",
        f"{prefix}/data {qos} 0 one",
        f"{prefix}/data {qos} 0 two words",
        f"{prefix}/data {qos} 0 three",
    ]


def test_retained_message_reaches_later_subscriber_and_empty_retained_publish_clears_it(
    fleet_broker_process: FleetBroker, procs: Procs, prefix: str
) -> None:
    """`mosquitto_pub -r` is delivered to a later mosquitto_sub with retain=1; `-r -n` clears it."""
    port = fleet_broker_process.port
    topic = f"{prefix}/state"
    publish(port, topic, "-r", "-q", 1, "-m", "on")

    later = subscribe(procs, port, "-t", topic, "-q", 1, "-C", 1, "-W", SUB_WAIT)
    assert finished(later) == [f"{topic} 1 1 on"]

    publish(port, topic, "-r", "-q", 1, "-n")
    # Only the marker is retained now. A live message published after the marker arrived must be the
    # very next one: a retained `state` would have been delivered on subscribe, before it.
    publish(port, f"{prefix}/marker", "-r", "-q", 1, "-m", "marker")
    after = subscribe(procs, port, "-t", f"{prefix}/#", "-q", 1, "-C", 2, "-W", SUB_WAIT)
    after.stdout.wait_for(f"{prefix}/marker ")
    publish(port, f"{prefix}/live", "-q", 1, "-m", "live")
    assert finished(after) == [f"{prefix}/marker 1 1 marker", f"{prefix}/live 1 0 live"]


def test_last_will_of_killed_mosquitto_sub_is_published(
    fleet_broker_process: FleetBroker, procs: Procs, prefix: str
) -> None:
    """A mosquitto_sub with --will-topic killed by SIGKILL makes the broker publish its will to others."""
    port = fleet_broker_process.port
    publish(port, f"{prefix}/ready", "-r", "-m", "ready")
    watcher = subscribe(
        procs, port, "-t", f"{prefix}/ready", "-t", f"{prefix}/will", "-q", 1, "-C", 2, "-W", SUB_WAIT
    )  # fmt: skip
    device = subscribe(
        procs, port, "-i", f"device-{prefix[-12:]}", "-t", f"{prefix}/ready", "-k", 60,
        "--will-topic", f"{prefix}/will", "--will-payload", "device lost", "--will-qos", 1,
    )  # fmt: skip
    watcher.stdout.wait_for(f"{prefix}/ready ")
    device.stdout.wait_for(f"{prefix}/ready ")  # its CONNECT, with the will, was accepted

    device.signal(signal.SIGKILL)
    assert device.wait() == -signal.SIGKILL

    assert finished(watcher) == [f"{prefix}/ready 0 1 ready", f"{prefix}/will 1 0 device lost"]


def test_paho_over_tcp_subscribes_and_receives_qos1_and_qos2(
    fleet_broker_process: FleetBroker, paho_client: PahoFactory, prefix: str
) -> None:
    """paho-mqtt 2.2 subscribes at QoS 2 and receives what another paho client publishes at QoS 1 and 2."""
    receiver = paho_client(f"paho-rx-{prefix[-12:]}")
    sender = paho_client(f"paho-tx-{prefix[-12:]}")
    assert receiver.connect(fleet_broker_process.port) is False
    assert sender.connect(fleet_broker_process.port) is False
    assert receiver.subscribe(f"{prefix}/#", 2) == [2]

    sender.publish(f"{prefix}/one", b"at least once", 1)
    sender.publish(f"{prefix}/two", b"exactly once", 2)

    got = [receiver.message(), receiver.message()]
    assert [(m.topic, m.payload, m.qos, m.retain) for m in got] == [
        (f"{prefix}/one", b"at least once", 1, False),
        (f"{prefix}/two", b"exactly once", 2, False),
    ]
    assert receiver.messages.empty()


def test_paho_persistent_session_receives_qos1_messages_published_while_offline(
    fleet_broker_process: FleetBroker, paho_client: PahoFactory, prefix: str
) -> None:
    """A clean_session=False paho client reconnects with session present and gets the QoS 1 it missed."""
    client_id = f"paho-persistent-{prefix[-12:]}"
    first = paho_client(client_id, clean_session=False)
    assert first.connect(fleet_broker_process.port) is False
    assert first.subscribe(f"{prefix}/cmd", 1) == [1]
    first.close()

    for payload in ("reboot", "update"):
        publish(fleet_broker_process.port, f"{prefix}/cmd", "-q", 1, "-m", payload)

    second = paho_client(client_id, clean_session=False)
    assert second.connect(fleet_broker_process.port) is True
    got = [second.message(), second.message()]
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        (f"{prefix}/cmd", b"reboot", 1),
        (f"{prefix}/cmd", b"update", 1),
    ]


def test_paho_over_websocket_receives_from_mosquitto_pub_over_tcp(
    fleet_broker_process: FleetBroker, paho_client: PahoFactory, prefix: str
) -> None:
    """paho over WebSocket (path /mqtt, subprotocol mqtt) receives what mosquitto_pub sends over TCP."""
    client = paho_client(f"paho-ws-rx-{prefix[-12:]}", transport="websockets")
    client.client.ws_set_options(path="/mqtt")
    assert client.connect(fleet_broker_process.ports["ws"]) is False
    assert client.subscribe(f"{prefix}/down", 1) == [1]

    publish(fleet_broker_process.port, f"{prefix}/down", "-q", 1, "-m", "over tcp")

    message = client.message()
    assert (message.topic, message.payload, message.qos) == (f"{prefix}/down", b"over tcp", 1)


def test_paho_over_websocket_publishes_to_mosquitto_sub_over_tcp(
    fleet_broker_process: FleetBroker, paho_client: PahoFactory, procs: Procs, prefix: str
) -> None:
    """What paho publishes over WebSocket at QoS 1 and 2 reaches mosquitto_sub over TCP."""
    publish(fleet_broker_process.port, f"{prefix}/ready", "-r", "-m", "ready")
    sub = subscribe(procs, fleet_broker_process.port, "-t", f"{prefix}/#", "-q", 2, "-C", 3, "-W", SUB_WAIT)
    sub.stdout.wait_for(f"{prefix}/ready ")

    client = paho_client(f"paho-ws-tx-{prefix[-12:]}", transport="websockets")
    client.client.ws_set_options(path="/mqtt")
    assert client.connect(fleet_broker_process.ports["ws"]) is False
    client.publish(f"{prefix}/up", b"over websocket", 1)
    client.publish(f"{prefix}/up", b"exactly once", 2)

    assert finished(sub) == [
        f"{prefix}/ready 0 1 ready",
        f"{prefix}/up 1 0 over websocket",
        f"{prefix}/up 2 0 exactly once",
    ]


@pytest.mark.parametrize("subprotocol", ["mqtt", "mqttv3.1"])
def test_websocket_listener_accepts_mqtt_subprotocol(
    fleet_broker_process: FleetBroker, subprotocol: str
) -> None:
    """The WebSocket handshake selects the offered MQTT subprotocol (paho offers `mqtt`), then CONNACKs."""
    url = fleet_broker_process.urls["ws"]
    assert url.endswith("/mqtt")
    with websocket_connect(
        url, subprotocols=[Subprotocol(subprotocol)], proxy=None, open_timeout=TIMEOUT, close_timeout=TIMEOUT
    ) as websocket:
        assert websocket.subprotocol == subprotocol
        websocket.send(connect_packet(f"ws-{subprotocol}"))
        assert websocket.recv(timeout=TIMEOUT) == b"\x20\x02\x00\x00"


def test_sys_clients_connected_is_readable_with_mosquitto_sub(
    fleet_broker_process: FleetBroker, procs: Procs
) -> None:
    """$SYS/broker/clients/connected is retained, then republished each interval counting the reader."""
    sub = subscribe(
        procs, fleet_broker_process.port, "-t", "$SYS/broker/clients/connected", "-C", 2, "-W", SUB_WAIT
    )
    retained, periodic = finished(sub)
    topic, qos, retain, value = retained.split(" ")
    assert (topic, qos, retain) == ("$SYS/broker/clients/connected", "0", "1")
    assert int(value) >= 0
    topic, qos, retain, value = periodic.split(" ")
    assert (topic, qos, retain) == ("$SYS/broker/clients/connected", "0", "0")
    assert int(value) >= 1
