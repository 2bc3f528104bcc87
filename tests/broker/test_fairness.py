"""A client that floods `fleet broker` cannot starve the others: they still connect and get their
messages. How fast is measured in the bench (`bench/broker_scale.py --flood`), not here."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.procs import TIMEOUT, FleetBroker, connect_packet
from tests.rawmqtt import RawClient
from tests.rawmqtt5 import wait_until

FLOOD_SECONDS = 60.0  # the flooder's own cap, in case the test's stop is never reached


def _qos0_publish(topic: bytes, payload: bytes) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + payload
    assert len(body) < 128
    return bytes([0x30, len(body)]) + body


class Flooder:
    """A thread writing QoS 0 PUBLISHes to the broker as fast as it takes them, until stopped."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.sendall(connect_packet("flooder"))
        assert self.sock.recv(4)[:1] == b"\x20", "the flooder got no CONNACK"
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="flooder", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        batch = _qos0_publish(b"flood/x", b"\x00" * 64) * 1000
        deadline = time.monotonic() + FLOOD_SECONDS
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                self.sock.sendall(batch)
            except TimeoutError:
                continue
            except OSError:
                return
            self.sent += 1000

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a sendall blocked on a full buffer
        self.thread.join(TIMEOUT)
        self.sock.close()


@pytest.fixture
def flooder() -> Iterator[Callable[[int], Flooder]]:
    started: list[Flooder] = []

    def start(port: int) -> Flooder:
        flood = Flooder(port)
        started.append(flood)
        return flood

    try:
        yield start
    finally:
        for flood in started:
            flood.close()


@pytest.mark.xdist_group("heavy")  # `make test` runs the heavy tests one at a time, on one worker
async def test_a_flooding_client_does_not_starve_a_new_connect_or_the_other_clients(
    start_fleet_broker: Callable[..., FleetBroker], flooder: Callable[[int], Flooder]
) -> None:
    """While one client floods QoS 0 at full speed (to a subscriber that stops reading), a new
    client's CONNECT is answered and another client's message arrives, each within the timeout."""
    broker = start_fleet_broker("--port", "0", "--ws-port", "0")
    sink = await RawClient.open(broker.port)
    await sink.connect("sink")
    assert await sink.subscribe(("flood/#", 0)) == [0]
    watcher = await RawClient.open(broker.port)
    await watcher.connect("watcher")
    assert await watcher.subscribe(("calm/t", 0)) == [0]

    flood = flooder(broker.port)
    assert (await sink.read_publish()).topic == "flood/x"
    # The sink reads no more: the broker drops QoS 0 for it once its buffer is full, and carries on.
    # A bound, not a speed: beside other tests on a loaded machine the flood takes longer to get going.
    await wait_until(lambda: flood.sent >= 100_000, "the flood to get going", timeout=FLOOD_SECONDS / 2)

    newcomer = await RawClient.open(broker.port)
    assert await newcomer.connect("newcomer") == (False, 0)
    newcomer.publish("calm/t", b"still here")
    received = await watcher.read_publish()
    assert (received.topic, received.payload) == ("calm/t", b"still here")
    flood.close()
    for client in (sink, watcher, newcomer):
        await client.close()
    broker.shutdown()
