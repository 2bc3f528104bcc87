"""SIGINT at any moment stops `fleet run` cleanly: a real `fleet run` subprocess against a real
`fleet broker`, with a paho subscriber counting the wills."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.procs import FleetBroker, Paho, Proc, fleet_argv

# From before the interpreter runs `main` to a fleet connecting, reconnecting and publishing.
MOMENTS = (0.0, 0.3, 0.6, 1.0, 1.5, 2.0)
STOP_WITHIN = 10.0  # seconds: the bound on a shutdown; a clean one takes well under a second here

# `flaky` devices end each short online period cleanly or abruptly, so some are reconnecting at any
# moment, and the report expects a will for each abrupt end; `steady` ones connect slowly (the
# connect ramp), so some are connecting during the first second of the fleet.
CONFIG = """\
seed = 4
duration = 60
connect_rate = 40

[[groups]]
name = "flaky"
count = 10
id = "flaky-{tag}-{{index}}"
interval = 0.2
keepalive = 5

[groups.connectivity]
mode = "intermittent"
online = {{ dist = "uniform", min = 0.1, max = 0.4 }}
offline = {{ dist = "uniform", min = 0.05, max = 0.2 }}
ends = {{ clean = 1, abrupt = 1 }}

[[groups]]
name = "steady"
count = 30
id = "steady-{tag}-{{index}}"
interval = 0.2
keepalive = 5
"""


def wills_after_exit(observer: Paho, tag: str) -> int:
    """The wills of the devices tagged `tag`, once the broker has let every one of them go.

    A marker published now comes after the fleet's exit; a `$SYS` count of 1 client (the observer)
    routed after the marker comes after the broker closed every device's connection, which is
    when it publishes a will. Messages on one connection arrive in order, so every will is in.
    """
    marker = f"test/marker/{tag}"
    observer.subscribe(marker, 1)
    observer.publish(marker, b"", 1)
    wills, marked = 0, False
    deadline = time.monotonic() + STOP_WITHIN
    while True:
        assert time.monotonic() < deadline, "the broker still counts devices of the fleet as connected"
        message = observer.message()
        if message.topic == marker:
            marked = True
        elif message.topic == "$SYS/broker/clients/connected":
            if marked and message.payload == b"1":
                return wills
        elif tag in message.topic and json.loads(message.payload) == {"online": False, "reason": "lost"}:
            wills += 1


@pytest.fixture(autouse=True)
def sigint_as_from_a_terminal() -> Iterator[None]:
    """The `fleet` children start with SIGINT at its default, as from a terminal. Run from a
    background job (`make test &`, `nohup`), the test runner ignores SIGINT, its children inherit
    that across exec, and a SIGINT sent before `fleet` installs its handler would be discarded by
    the kernel: a property of the shell's background job, not of `fleet`."""
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigint_at_any_moment_stops_the_fleet_with_only_the_expected_wills(
    tmp_path: Path,
    start_fleet_broker: Callable[..., FleetBroker],
    paho_client: Callable[..., Paho],
    procs: Callable[..., Proc],
) -> None:
    """SIGINT 0 to 2 s after `fleet run` starts: it stops within seconds every time, says the run
    was cut short (130), and the wills published are exactly the ones its report expects."""
    broker = start_fleet_broker("--port", 0, "--ws-port", 0, "--sys-interval", "0.2")
    observer = paho_client(f"observer-{uuid.uuid4().hex[:6]}")
    observer.connect(broker.port)
    observer.subscribe("fleet/+/status", 1)
    observer.subscribe("$SYS/broker/clients/connected", 1)
    for number, moment in enumerate(MOMENTS):
        tag = uuid.uuid4().hex[:6]
        config = tmp_path / f"fleet-{number}.toml"
        config.write_text(CONFIG.format(tag=tag))
        report = tmp_path / f"report-{number}.json"
        proc = procs(
            *fleet_argv("run", config, "--broker", f"mqtt://127.0.0.1:{broker.port}", "--report", report)
        )
        time.sleep(moment)  # the moment is what this test varies, not a wait for a condition

        proc.signal(signal.SIGINT)

        code = proc.wait(STOP_WITHIN)
        if code == -signal.SIGINT or "KeyboardInterrupt" in proc.stderr.text:
            # Python's own ending (killed, or its KeyboardInterrupt): it came before `main` ran.
            assert code in (-signal.SIGINT, 1), proc.describe()
            assert not report.exists(), proc.describe()
        else:
            assert code == 128 + signal.SIGINT, proc.describe()
            assert "Traceback" not in proc.stderr.text, proc.describe()
            assert "fleet: stopped by SIGINT before the command started its work" in proc.stderr.text or (
                "fleet: the run was cut short by SIGINT after" in proc.stderr.text
            ), proc.describe()
        expected = json.loads(report.read_text())["fleet"]["wills_expected"] if report.exists() else 0
        assert wills_after_exit(observer, tag) == expected, f"SIGINT after {moment}s\n{proc.describe()}"
