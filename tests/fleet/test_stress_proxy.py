"""The fault proxy between a real client (`Link`) and the embedded broker: bytes pass unchanged, and
each fault does what it says: latency, a bandwidth cap, a blackhole that heals, resets, half-open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from broker.server import Broker
from fleet.errors import ConnectionLost
from fleet.packets import Publish
from fleet.stress.proxy import FaultProxy, Shaping, fault_proxy
from fleet.transport import ClientSession, Endpoint, Link, make_connect

TIMEOUT = 10.0


class Inbox:
    """The messages a link received; `arrived` is set by the first."""

    def __init__(self) -> None:
        self.messages: list[Publish] = []
        self.arrived = asyncio.Event()

    def __call__(self, message: Publish) -> None:
        self.messages.append(message)
        self.arrived.set()


Opener = Callable[[str], Coroutine[Any, Any, tuple[Link, Inbox]]]


@pytest.fixture
async def proxy(broker: Broker) -> AsyncIterator[FaultProxy]:
    """A fault proxy on a free port in front of the embedded broker."""
    async with fault_proxy("127.0.0.1", broker.port) as running:
        yield running


@pytest.fixture
async def open_link(proxy: FaultProxy) -> AsyncIterator[Opener]:
    """Open links through the proxy, each with its list of received messages; aborted at teardown."""
    links: list[Link] = []

    async def open_one(client_id: str) -> tuple[Link, Inbox]:
        received = Inbox()
        link, _ = await Link.open(
            Endpoint("mqtt", "127.0.0.1", proxy.port),
            make_connect(client_id),
            session=ClientSession(),
            on_message=received,
            timeout=TIMEOUT,
        )
        links.append(link)
        return link, received

    yield open_one
    for link in links:
        link.abort()


async def round_trip(link: Link) -> float:
    """Seconds for one QoS 1 publish to be acknowledged."""
    started = time.monotonic()
    future = link.publish("t/rtt", b"x", qos=1)
    assert future is not None
    await asyncio.wait_for(future, TIMEOUT)
    return time.monotonic() - started


async def test_bytes_pass_both_ways_unchanged(open_link: Opener) -> None:
    """Without faults a subscriber behind the proxy gets what a publisher behind it sends, byte for byte."""
    subscriber, received = await open_link("sub")
    await subscriber.subscribe([("t/#", 1)])
    publisher, _ = await open_link("pub")
    payload = bytes(range(256)) * 40
    future = publisher.publish("t/data", payload, qos=1)
    assert future is not None
    await asyncio.wait_for(future, TIMEOUT)
    await asyncio.wait_for(received.arrived.wait(), TIMEOUT)
    assert received.messages[0].payload == payload


async def test_latency_delays_each_way(proxy: FaultProxy, open_link: Opener) -> None:
    """100 ms of one-way latency makes a PUBLISH/PUBACK round trip take at least 200 ms."""
    link, _ = await open_link("slow")
    proxy.shape(Shaping(latency=0.1))
    assert await round_trip(link) >= 0.2
    proxy.shape(None)
    assert await round_trip(link) < 0.2


async def test_bandwidth_cap_paces_the_bytes(proxy: FaultProxy, open_link: Opener) -> None:
    """At 20,000 bytes/s a 10,000-byte message takes at least half a second to get through."""
    link, _ = await open_link("narrow")
    proxy.shape(Shaping(rate=20_000))
    started = time.monotonic()
    future = link.publish("t/big", b"x" * 10_000, qos=1)
    assert future is not None
    await asyncio.wait_for(future, TIMEOUT)
    assert time.monotonic() - started >= 0.45


async def test_blackhole_holds_bytes_until_it_heals(proxy: FaultProxy, open_link: Opener) -> None:
    """In a blackhole a PUBACK cannot come and the link stays open; once healed, it comes."""
    link, _ = await open_link("cut")
    proxy.blackhole(True)
    future = link.publish("t/held", b"x", qos=1)
    assert future is not None
    done, _ = await asyncio.wait({future}, timeout=0.5)
    assert not done
    assert link.connected
    proxy.blackhole(False)
    await asyncio.wait_for(future, TIMEOUT)


async def test_reset_kills_the_chosen_connections(proxy: FaultProxy, open_link: Opener) -> None:
    """reset(1.0) closes every proxied connection at once: each link ends with ConnectionLost."""
    links = [(await open_link(f"r{index}"))[0] for index in range(3)]
    assert proxy.reset(1.0) == 3
    for link in links:
        reason = await asyncio.wait_for(link.closed, TIMEOUT)
        assert isinstance(reason, ConnectionLost)


async def test_half_open_connections_stay_open_and_silent(proxy: FaultProxy, open_link: Opener) -> None:
    """half_open(1.0) stops forwarding without closing: no PUBACK, no close, even after blackhole heals."""
    link, _ = await open_link("ghost")
    assert proxy.half_open(1.0) == 1
    proxy.blackhole(True)
    proxy.blackhole(False)
    future = link.publish("t/void", b"x", qos=1)
    assert future is not None
    done, _ = await asyncio.wait({future, link.closed}, timeout=0.5)
    assert not done
    fresh, _ = await open_link("fresh")
    assert await round_trip(fresh) < TIMEOUT
