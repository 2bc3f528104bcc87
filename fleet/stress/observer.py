"""The observer: an independent MQTT client, with a persistent session at QoS 2, that subscribes to
every device's telemetry and status and writes what it receives into a `Ledger`.

It connects to the broker directly, never through the fault proxy, and reconnects with backoff when
the broker goes away; it subscribes again only when its session was not kept. Retained messages
(the status of an earlier run, say) are skipped: the ledger counts live messages only.

When a group speaks MQTT 5, so does the observer: its session then has a Session Expiry Interval
that outlasts the run, and it announces a Receive Maximum (`RECEIVE_MAXIMUM`) and acknowledges its
deliveries a few milliseconds late, so that the broker's window fills and `inflight_peak` shows
whether the broker kept to it. `away()` takes it offline for a while (the `observer-offline` stage),
so that the broker must hold, or expire, what comes meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from fleet.errors import TransportError
from fleet.mqtt import v5
from fleet.mqtt.properties import Properties
from fleet.packets import Connect, Publish
from fleet.schema import FleetConfig
from fleet.simulator import Target
from fleet.stress.accounting import Ledger
from fleet.transport import ClientSession, Link, make_connect

__all__ = ["RECEIVE_MAXIMUM", "Observer", "Route", "observing", "routes_of"]

log = logging.getLogger("fleet.stress.observer")

_KEEPALIVE = 30
_RETRY = (0.2, 0.5, 1.0, 2.0)
RECEIVE_MAXIMUM = 32  # QoS 1/2 deliveries the MQTT 5 observer lets the broker have in flight
_ACK_DELAY = 0.005  # seconds the MQTT 5 observer holds its acknowledgements
_SESSION_EXPIRY = 3600  # the MQTT 5 observer's session outlasts the run; it removes it at the end


@dataclass(frozen=True, slots=True)
class Route:
    """What a topic carries: one device's telemetry or status."""

    device: str
    telemetry: bool
    expiry: int | None = None  # the telemetry's Message Expiry Interval (MQTT 5)


def routes_of(config: FleetConfig) -> tuple[dict[str, Route], list[str]]:
    """Every device's telemetry and status topic, and the filters that cover them (a `+` for each
    level of a template that holds a placeholder)."""
    routes: dict[str, Route] = {}
    filters: list[str] = []
    for group in config.groups:
        for telemetry, template in ((True, group.topics.telemetry), (False, group.topics.status)):
            levels = ["+" if "{" in level else level for level in template.split("/")]
            topic_filter = "/".join(levels)
            if topic_filter not in filters:
                filters.append(topic_filter)
            for index in range(group.count):
                device = group.device_id(index)
                routes[template.format(device=device, group=group.name)] = Route(
                    device, telemetry, group.message_expiry if group.protocol_level == 5 else None
                )
    return routes, filters


class Observer:
    """Counts of the observer's own connection, for the report."""

    def __init__(self, ledger: Ledger, routes: Mapping[str, Route]) -> None:
        self.ledger = ledger
        self.routes = routes
        self.messages = 0
        self.last_message = time.monotonic()
        self.connects = 0
        self.sessions_lost = 0  # reconnects that found the observer's own session gone
        self.connected = asyncio.Event()
        self._connecting = asyncio.Condition()
        self.receive_maximum: int | None = None  # announced (MQTT 5)
        self.inflight_peak = 0
        self.gaps: list[tuple[float, float]] = []  # (left, back), wall clock: when it was away
        self._away: asyncio.Future[float] | None = None

    def away(self, seconds: float) -> None:
        """Disconnect now (its session stays), and connect again `seconds` later."""
        if self._away is not None and not self._away.done():
            self._away.set_result(seconds)

    async def connected_after(self, connects: int, timeout: float) -> bool:
        """Wait (at most `timeout` seconds) until the observer has connected and subscribed more than
        `connects` times in all; whether it has."""
        async with self._connecting:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._connecting.wait_for(
                        lambda: self.connects > connects and self.connected.is_set()
                    )
        return self.connects > connects

    def on_message(self, message: Publish | v5.Publish) -> None:
        if message.retain:
            return
        self.messages += 1
        self.last_message = time.monotonic()
        route = self.routes.get(message.topic)
        try:
            body = json.loads(message.payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        if route is None or not isinstance(body, dict):
            self.ledger.unknown += 1
            return
        if route.telemetry:
            seq, ts = body.get("seq"), body.get("ts")
            if not isinstance(seq, int) or not isinstance(ts, int | float):
                self.ledger.unknown += 1
                return
            # A redelivery (DUP) had started onward delivery before: its expiry no longer applies.
            expiry = None if message.dup else route.expiry
            self.ledger.telemetry(route.device, seq, time.time() - ts, ts, expiry)
        else:
            reason = body.get("reason")
            self.ledger.status(
                route.device,
                body.get("online") is True,
                reason if isinstance(reason, str) else None,
                time.monotonic(),
            )


@contextlib.asynccontextmanager
async def observing(
    target: Target, config: FleetConfig, ledger: Ledger, *, timeout: float = 30.0
) -> AsyncIterator[Observer]:
    """Run the observer until the block exits; it has connected and subscribed when the block starts.

    On exit it disconnects, then connects once more with a clean session, so that the broker keeps
    no session of it.
    """
    routes, filters = routes_of(config)
    observer = Observer(ledger, routes)
    client_id = f"fleet-stress-observer-{uuid.uuid4().hex[:8]}"
    session = ClientSession()
    login = target.login()
    mqtt5 = any(group.protocol_level == 5 for group in config.groups)
    connect: Connect | v5.Connect
    if mqtt5:
        observer.receive_maximum = RECEIVE_MAXIMUM
        connect = v5.Connect(
            False,
            _KEEPALIVE,
            client_id,
            None,
            login.username,
            login.password,
            Properties(session_expiry_interval=_SESSION_EXPIRY, receive_maximum=RECEIVE_MAXIMUM),
        )
    else:
        connect = make_connect(
            client_id,
            keepalive=_KEEPALIVE,
            clean_session=False,
            username=login.username,
            password=login.password,
        )
    topics = [(topic_filter, 2) for topic_filter in filters]
    subscribed = asyncio.Event()
    left: float | None = None

    async def run() -> None:
        nonlocal left
        attempt = 0
        while True:
            try:
                link, present = await Link.open(
                    target.endpoint,
                    connect,
                    session=session,
                    on_message=observer.on_message,
                    ssl=login.ssl,
                    ack_delay=_ACK_DELAY if mqtt5 else 0.0,
                )
            except TransportError as exc:
                if not subscribed.is_set() and attempt >= len(_RETRY):
                    raise
                log.info("observer: %s; retrying", exc)
                await asyncio.sleep(_RETRY[min(attempt, len(_RETRY) - 1)])
                attempt += 1
                continue
            attempt = 0
            observer.connects += 1
            if left is not None:
                observer.gaps.append((left, time.time()))
                left = None
            try:
                if not present:
                    if observer.connects > 1:
                        observer.sessions_lost += 1
                    await link.subscribe(topics)
                subscribed.set()
                observer.connected.set()
                async with observer._connecting:
                    observer._connecting.notify_all()
                away = observer._away = asyncio.get_running_loop().create_future()
                closed = link.closed
                await asyncio.wait((closed, away), return_when=asyncio.FIRST_COMPLETED)
                observer.connected.clear()
                observer.inflight_peak = max(observer.inflight_peak, link.inflight_peak)
                left = time.time()
                if away.done():
                    closed.cancel()
                    await link.disconnect(timeout=5.0)
                    await asyncio.sleep(away.result())
                else:
                    away.cancel()
            except asyncio.CancelledError:
                observer.inflight_peak = max(observer.inflight_peak, link.inflight_peak)
                with contextlib.suppress(TransportError, OSError, TimeoutError):
                    await link.disconnect(timeout=5.0)
                raise
            except TransportError as exc:  # no SUBACK: start over on a new connection
                log.info("observer: %s", exc)
                link.abort()

    async with asyncio.TaskGroup() as tasks:
        task = tasks.create_task(run(), name="fleet.stress.observer")
        try:
            async with asyncio.timeout(timeout):
                await subscribed.wait()  # if run() fails first, the task group raises its error
        except TimeoutError:
            task.cancel()
            raise TransportError(
                f"the observer could not subscribe at {target.endpoint} within {timeout}s"
            ) from None
        try:
            yield observer
        finally:
            task.cancel()
    with contextlib.suppress(TransportError, OSError, TimeoutError):
        clean: Connect | v5.Connect = make_connect(
            client_id, clean_session=True, username=login.username, password=login.password
        )
        if mqtt5:
            clean = v5.Connect(True, _KEEPALIVE, client_id, None, login.username, login.password)
        link, _ = await Link.open(
            target.endpoint, clean, session=ClientSession(), on_message=lambda _: None, ssl=login.ssl
        )
        await link.disconnect(timeout=5.0)
