"""`fleet watch` for real: in a tmux terminal, against `fleet broker` and a small `fleet run`."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.procs import CHILD_ENV, ROOT, FleetBroker, Proc, fleet_argv

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install tmux)")

FLEET = """
seed = 3
[[groups]]
name = "probe"
count = 3
id = "probe-{index:02d}"
interval = 0.2
[groups.telemetry.level]
kind = "random_walk"
start = 5.0
min = 0.0
max = 10.0
step = 0.5
"""


class Terminal:
    """A tmux server of its own (its own socket), running one command in a 140x40 window."""

    def __init__(self, socket: str) -> None:
        assert TMUX is not None
        self.base = [TMUX, "-L", socket]

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.base, *args], capture_output=True, text=True, timeout=10, check=False, env=CHILD_ENV
        )

    def start(self, argv: list[str]) -> None:
        command = f"cd {shlex.quote(str(ROOT))} && exec {shlex.join(argv)}"
        done = self.tmux("new-session", "-d", "-s", "watch", "-x", "140", "-y", "40", command)
        assert done.returncode == 0, done.stderr

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "watch").stdout

    def wait_for(self, test: Callable[[str], bool], what: str, timeout: float = 20.0) -> str:
        """Poll the screen until `test(screen)` holds; fail with the last screen after `timeout`."""
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if test(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"not on screen within {timeout}s: {what}\n{screen}")

    def alive(self) -> bool:
        return self.tmux("has-session", "-t", "watch").returncode == 0


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    """A private tmux server; killed at teardown, with whatever still runs in it."""
    term = Terminal(f"fleet-watch-test-{uuid.uuid4().hex[:8]}")
    try:
        yield term
    finally:
        term.tmux("kill-server")


def test_fleet_watch_shows_a_running_fleet_and_quits_on_q(
    start_fleet_broker: Callable[..., FleetBroker],
    procs: Callable[..., Proc],
    terminal: Terminal,
    tmp_path: Path,
) -> None:
    """The devices of a real fleet appear online with their messages, the topic tree shows them, q quits."""
    broker = start_fleet_broker("--port", "0", "--ws-port", "0", "--sys-interval", "1")
    url = f"mqtt://127.0.0.1:{broker.port}"
    config = tmp_path / "probe.toml"
    config.write_text(FLEET)
    fleet = procs(*fleet_argv("run", config, "--broker", url, "--duration", "60"))
    fleet.stderr.wait_for("3 devices")
    terminal.start(fleet_argv("watch", "--broker", url))
    screen = terminal.wait_for(
        lambda s: "3 devices: 3 online" in s and "probe-02" in s, "three probes online"
    )
    assert f"connected  {url}" in screen
    terminal.wait_for(lambda s: "$SYS clients" in s, "the broker's $SYS figures")
    terminal.tmux("send-keys", "-t", "watch", "t")
    terminal.wait_for(lambda s: "▾ fleet" in s and "▸ probe-01" in s, "the topic tree")
    terminal.tmux("send-keys", "-t", "watch", "q")
    deadline = time.monotonic() + 10
    while terminal.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not terminal.alive(), terminal.screen()


def test_fleet_up_in_a_terminal_shows_the_tui_and_q_stops_it(terminal: Terminal, tmp_path: Path) -> None:
    """In a terminal, `fleet up` shows the TUI on its own broker; q ends the fleet, which prints a summary."""
    config = tmp_path / "up.toml"
    config.write_text(
        "[broker]\nport = 0\nws_port = 0\nsys_interval = 1\n\n[bridge]\nhttp_port = 0\ngrpc_port = 0\n\n"
        '[[groups]]\nname = "probe"\ncount = 2\ninterval = 0.2\n'
    )
    up = shlex.join(fleet_argv("up", "--config", config))
    # The shell stays after `fleet up` exits, so that its summary and exit code can be read.
    terminal.start(["sh", "-c", f'{up}; echo "exit code $?"; sleep 60'])
    terminal.wait_for(lambda s: "2 devices: 2 online" in s and "probe-0001" in s, "the fleet in the TUI")
    terminal.tmux("send-keys", "-t", "watch", "q")
    screen = terminal.wait_for(lambda s: "exit code" in s, "fleet up exits")
    assert "exit code 0" in screen
    assert "fleet up" in [line.strip() for line in screen.splitlines()]  # the summary table's title
    assert "Traceback" not in screen


FLEET_V5 = """
seed = 3
[[groups]]
name = "meter"
count = 2
id = "meter-{index:02d}"
interval = 0.2
protocol = "5"
content_type = "application/json"
[groups.user_properties]
tenant = "acme"
"""


def test_fleet_watch_over_mqtt5_shows_a_devices_properties(
    start_fleet_broker: Callable[..., FleetBroker],
    procs: Callable[..., Proc],
    terminal: Terminal,
    tmp_path: Path,
) -> None:
    """`fleet watch -V mqttv5` says MQTT 5 in its header, and a v5 device's view shows its content
    type and user properties."""
    broker = start_fleet_broker("--port", "0", "--ws-port", "0")
    url = f"mqtt://127.0.0.1:{broker.port}"
    config = tmp_path / "meters.toml"
    config.write_text(FLEET_V5)
    fleet = procs(*fleet_argv("run", config, "--broker", url, "--duration", "60"))
    fleet.stderr.wait_for("2 devices")
    terminal.start(fleet_argv("watch", "--broker", url, "-V", "mqttv5"))
    screen = terminal.wait_for(lambda s: "2 devices: 2 online" in s, "two meters online")
    assert f"connected  {url} (MQTT 5)" in screen
    terminal.tmux("send-keys", "-t", "watch", "Enter")
    screen = terminal.wait_for(lambda s: "user property  tenant=acme" in s, "the device's properties")
    assert "content type   application/json" in screen
    terminal.tmux("send-keys", "-t", "watch", "Escape", "q")
