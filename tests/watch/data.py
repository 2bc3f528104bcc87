"""A deterministic fleet for the TUI's tests, snapshots and README screenshot: the same messages, the
same fixed clock, the same screen every run."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from textual.pilot import Pilot

from fleet.watch.app import WatchApp
from fleet.watch.sources import ListSource, Message

NOW = 1764400000.0  # the fixed clock: 2025-11-29 07:06:40 UTC
GROUPS = {"thermo": 8, "door": 6, "van": 6}


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def messages() -> list[Message]:
    """20 devices in three groups: births, telemetry with a few gaps, a will, a reconnect, an ack."""
    out: list[Message] = [
        Message("$SYS/broker/clients/connected", b"21", retain=True),
        Message("$SYS/broker/messages/received", b"1234", retain=True),
        Message("$SYS/broker/messages/sent", b"2345", retain=True),
        Message("$SYS/broker/publish/messages/dropped", b"0", retain=True),
    ]
    for group, count in GROUPS.items():
        for index in range(count):
            device = f"{group}-{index:04d}"
            out.append(
                Message(f"fleet/{device}/status", _json({"online": True, "ts": NOW - 60}), retain=True)
            )
            sent = 3 + (index * 7 + len(group)) % 9
            for seq in range(sent):
                if group == "van" and index == 2 and seq == 3:
                    continue  # a lost message: one seq gap
                values: dict[str, Any] = {
                    "thermo": {
                        "temperature": round(20 + index * 0.4 + seq * 0.3, 1),
                        "heating": seq % 2 == 0,
                    },
                    "door": {"open": seq % 3 == 0, "battery": 95 - index - seq * 0.1},
                    "van": {"speed_kmh": round(30 + (seq * 13 + index * 5) % 40, 1), "state": "driving"},
                }[group]
                body = {"device": device, "seq": seq, "ts": NOW, "values": values}
                out.append(Message(f"fleet/{device}/telemetry", _json(body)))
    out += [
        Message("fleet/van-0003/status", _json({"online": False, "reason": "lost"})),
        Message("fleet/door-0001/status", _json({"online": False, "ts": NOW, "reason": "clean"})),
        Message("fleet/van-0004/status", _json({"online": False, "reason": "lost"})),
        Message("fleet/van-0004/status", _json({"online": True, "ts": NOW})),
        Message("fleet/thermo-0002/cmd/ack", _json({"id": "c1", "ok": True})),
        Message("lab/sensor/raw", b"not json"),
    ]
    return out


def demo_app(**options: Any) -> WatchApp:
    """The TUI on the deterministic fleet, with the fixed clock."""
    return WatchApp(ListSource(messages()), clock=lambda: NOW, **options)


async def until(pilot: Pilot[None], condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Let the app run until `condition()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await pilot.pause(0.02)


async def settle(pilot: Pilot[None]) -> None:
    """Wait until the list source has delivered every message, then redraw once."""
    app = pilot.app
    assert isinstance(app, WatchApp)
    source = app.source
    assert isinstance(source, ListSource)
    await until(pilot, lambda: app.model.messages == len(source.messages), "all messages ingested")
    app.refresh_view()
    await pilot.pause()
