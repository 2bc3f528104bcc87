"""Fixtures for tests that run real processes against the broker: `fleet broker`, mosquitto_*, paho-mqtt.

Subprocesses are read by one thread per pipe, so a test can wait for a line with a timeout instead of
sleeping; every process is stopped by its PID at teardown, whatever happened in the test.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import pytest
from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage, MQTTv311
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 10.0
# mosquitto_sub -W: whole seconds to wait for its -C messages before giving up (exit code 27).
SUB_WAIT = 10

MOSQUITTO_PUB = shutil.which("mosquitto_pub")
MOSQUITTO_SUB = shutil.which("mosquitto_sub")
needs_mosquitto_clients = pytest.mark.skipif(
    MOSQUITTO_PUB is None or MOSQUITTO_SUB is None,
    reason="mosquitto_pub and mosquitto_sub not installed (apt-get install mosquitto-clients)",
)

# Children run without PYTHONUNBUFFERED, as under systemd or in a container: a `fleet` line a test waits
# for must be flushed by the command itself. They run without COLUMNS and LINES too, as in a pipe: the
# workers of pytest-xdist (`make test`) have them set (80 and 24), and rich would wrap the tables tests read.
CHILD_ENV = {
    key: value for key, value in os.environ.items() if key not in {"PYTHONUNBUFFERED", "COLUMNS", "LINES"}
}

LISTENING = re.compile(
    r"^fleet broker: listening on (?P<scheme>mqtts?|ws)://127\.0\.0\.1:(?P<port>\d+)(?P<path>/\S*)?$"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for listeners whose CLI has no 'pick one')."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def connect_packet(client_id: str, keepalive: int = 60) -> bytes:
    """An MQTT 3.1.1 CONNECT with CleanSession=1, written out byte by byte."""
    encoded = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02" + keepalive.to_bytes(2, "big") + len(encoded).to_bytes(2, "big") + encoded
    assert len(body) < 128
    return bytes([0x10, len(body)]) + body


class LineReader:
    """Collects the lines of a text stream from a thread; `wait_for` blocks with a timeout."""

    def __init__(self, stream: IO[str], name: str) -> None:
        self.lines: list[str] = []
        self.eof = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(stream,), name=name, daemon=True)
        self._thread.start()

    def _run(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                with self._changed:
                    self.lines.append(line.rstrip("\n"))
                    self._changed.notify_all()
        finally:
            stream.close()
            with self._changed:
                self.eof = True
                self._changed.notify_all()

    def wait_for(self, match: str | Callable[[str], bool], timeout: float = TIMEOUT, start: int = 0) -> int:
        """The index of the first line from `start` on that contains `match` (or satisfies it)."""
        test = match if callable(match) else (lambda line: match in line)
        deadline = time.monotonic() + timeout
        with self._changed:
            index = start
            while True:
                while index < len(self.lines):
                    if test(self.lines[index]):
                        return index
                    index += 1
                remaining = deadline - time.monotonic()
                if self.eof or remaining <= 0:
                    why = "the stream ended" if self.eof else f"{timeout}s passed"
                    raise AssertionError(f"{why} without a line matching {match!r}; got {self.lines!r}")
                self._changed.wait(remaining)

    def join(self, timeout: float = TIMEOUT) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"{self._thread.name}: the pipe is still open"

    @property
    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)


class Proc:
    """A subprocess whose stdout and stderr are read line by line in the background."""

    def __init__(
        self, argv: Sequence[str], *, stdin: Any = subprocess.DEVNULL, env: Mapping[str, str] | None = None
    ) -> None:
        self.argv = [str(arg) for arg in argv]
        self.popen = subprocess.Popen(
            self.argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
            env=CHILD_ENV | dict(env or {}), text=True, errors="replace",
        )  # fmt: skip
        name = Path(self.argv[0]).name
        assert self.popen.stdout is not None
        assert self.popen.stderr is not None
        self.stdout = LineReader(self.popen.stdout, f"{name}[{self.popen.pid}].stdout")
        self.stderr = LineReader(self.popen.stderr, f"{name}[{self.popen.pid}].stderr")

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait(self, timeout: float = TIMEOUT) -> int:
        """Wait for the process to exit and its pipes to drain; fail the test after `timeout`."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout}s:\n{self.describe()}") from None
        self.stdout.join()
        self.stderr.join()
        return code

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:  # Popen.send_signal addresses the PID only while it is ours.
            self.popen.send_signal(sig)

    def stop(self) -> None:
        """Teardown: SIGTERM, then SIGKILL if it does not exit; always reaped."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(TIMEOUT)
        self.stdout.join()
        self.stderr.join()

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.argv)}\nexit code: {self.popen.returncode}\n"
            f"--- stdout\n{self.stdout.text}\n--- stderr\n{self.stderr.text}"
        )


@pytest.fixture
def procs() -> Iterator[Callable[..., Proc]]:
    """Start subprocesses (`procs(*argv)`, `env` added to the environment); each is stopped by PID at
    teardown."""
    started: list[Proc] = []

    def start(
        *argv: str | Path | int, stdin: Any = subprocess.DEVNULL, env: Mapping[str, str] | None = None
    ) -> Proc:
        proc = Proc([str(arg) for arg in argv], stdin=stdin, env=env)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in reversed(started):
            proc.stop()


class FleetBroker:
    """A running `python -m fleet broker` subprocess and the listeners it announced."""

    def __init__(self, proc: Proc, schemes: Sequence[str]) -> None:
        self.proc = proc
        self.urls: dict[str, str] = {}
        self.ports: dict[str, int] = {}
        for scheme in schemes:
            index = proc.stdout.wait_for(_is_listening(scheme))
            found = LISTENING.match(proc.stdout.lines[index])
            assert found is not None
            self.urls[scheme] = proc.stdout.lines[index].removeprefix("fleet broker: listening on ")
            self.ports[scheme] = int(found["port"])

    @property
    def port(self) -> int:
        return self.ports["mqtt"]

    def shutdown(self, sig: int = signal.SIGTERM) -> None:
        """Signal the broker and check the clean exit: code 0 and the 'shutting down' line."""
        self.proc.signal(sig)
        code = self.proc.wait()
        assert code == 0, self.proc.describe()
        assert "fleet broker: shutting down" in self.proc.stdout.lines, self.proc.describe()


def _is_listening(scheme: str) -> Callable[[str], bool]:
    """A line test: 'fleet broker: listening on SCHEME://...'."""

    def announces(line: str) -> bool:
        found = LISTENING.match(line)
        return found is not None and found["scheme"] == scheme

    return announces


def fleet_argv(*args: str | Path | int) -> list[str]:
    return [sys.executable, "-m", "fleet", *(str(arg) for arg in args)]


@pytest.fixture
def start_fleet_broker() -> Iterator[Callable[..., FleetBroker]]:
    """Start `fleet broker ARGS`, wait (bounded) for its listener lines; SIGTERM and check it at teardown."""
    started: list[FleetBroker] = []
    procs: list[Proc] = []

    def start(*args: str | Path | int, schemes: Sequence[str] = ("mqtt",)) -> FleetBroker:
        proc = Proc(fleet_argv("broker", *args))
        procs.append(proc)
        try:
            broker = FleetBroker(proc, schemes)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{proc.describe()}") from None
        started.append(broker)
        return broker

    try:
        yield start
    finally:
        try:
            for broker in started:
                if broker.proc.popen.returncode is None:
                    broker.shutdown(signal.SIGTERM)
        finally:
            for proc in procs:
                proc.stop()


@pytest.fixture
def fleet_broker_process(start_fleet_broker: Callable[..., FleetBroker]) -> FleetBroker:
    """`fleet broker` on a free TCP port and a free WebSocket port, publishing $SYS every second."""
    return start_fleet_broker(
        "--port", "0", "--ws-port", free_port(), "--sys-interval", "1", schemes=("mqtt", "ws")
    )  # fmt: skip


class Paho:
    """A paho-mqtt 2.2 client driven by its loop_start() thread; every wait has a timeout."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.messages: queue.Queue[MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.session_present: bool | None = None
        self.connect_code: ReasonCode | None = None
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._subscribed = threading.Condition()
        self._started = False
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message

    def _on_connect(
        self,
        client: Client,
        userdata: Any,
        flags: ConnectFlags,
        code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.session_present = flags.session_present
        self.connect_code = code
        self.disconnected.clear()
        self.connected.set()

    def _on_disconnect(
        self,
        client: Client,
        userdata: Any,
        flags: DisconnectFlags,
        code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
        self.disconnected.set()

    def _on_subscribe(
        self, client: Client, userdata: Any, mid: int, codes: list[ReasonCode], properties: Properties | None
    ) -> None:
        with self._subscribed:
            self._subacks[mid] = codes
            self._subscribed.notify_all()

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        self.messages.put(message)

    def connect(self, port: int, host: str = "127.0.0.1", timeout: float = TIMEOUT) -> bool:
        """Connect from the network thread; return CONNACK's session-present flag."""
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()
        self._started = True
        assert self.connected.wait(timeout), f"paho got no CONNACK from {host}:{port} within {timeout}s"
        assert self.connect_code is not None
        assert not self.connect_code.is_failure, self.connect_code
        assert self.session_present is not None
        return self.session_present

    def subscribe(self, topic: str, qos: int, timeout: float = TIMEOUT) -> list[int]:
        """Subscribe and wait for the SUBACK; return the granted QoS values."""
        result, mid = self.client.subscribe(topic, qos)
        assert result == 0, result
        deadline = time.monotonic() + timeout
        with self._subscribed:
            while mid not in self._subacks:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no SUBACK for {topic!r} within {timeout}s"
                self._subscribed.wait(remaining)
            return [code.value for code in self._subacks.pop(mid)]

    def publish(self, topic: str, payload: bytes, qos: int, timeout: float = TIMEOUT) -> None:
        """Publish and wait until the QoS flow completes (PUBACK, or PUBREC/PUBREL/PUBCOMP)."""
        info = self.client.publish(topic, payload, qos)
        info.wait_for_publish(timeout)
        assert info.is_published(), f"publish to {topic!r} at QoS {qos} not completed within {timeout}s"

    def message(self, timeout: float = TIMEOUT) -> MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"paho received no message within {timeout}s") from None

    def close(self, timeout: float = TIMEOUT) -> None:
        """DISCONNECT (if connected) and stop the network thread."""
        if not self._started:
            return
        self._started = False
        if self.connected.is_set():
            self.client.disconnect()
            self.disconnected.wait(timeout)
        self.client.loop_stop()


@pytest.fixture
def paho_client() -> Iterator[Callable[..., Paho]]:
    """Make paho-mqtt 2.2 clients (MQTT 3.1.1, callback API v2); all are disconnected at teardown."""
    made: list[Paho] = []

    def make(client_id: str, *, clean_session: bool = True, transport: str = "tcp") -> Paho:
        client = Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=MQTTv311,
            transport=transport,  # type: ignore[arg-type]
        )
        paho = Paho(client)
        made.append(paho)
        return paho

    try:
        yield make
    finally:
        for paho in made:
            paho.close()


def mosquitto(tool: str | None, port: int, *args: str | int | Path) -> list[str]:
    """argv for mosquitto_pub/mosquitto_sub (MQTT 3.1.1) to 127.0.0.1:port."""
    assert tool is not None
    return [tool, "-V", "mqttv311", "-h", "127.0.0.1", "-p", str(port), *(str(arg) for arg in args)]


def run(
    argv: Sequence[str], *, input: str | None = None, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion with a timeout (the child is killed if it overruns)."""
    return subprocess.run(
        list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT,
        env=CHILD_ENV,
    )  # fmt: skip


# Mosquitto, the reference broker: tests that must hold against any broker run against it too.

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)


class Mosquitto:
    """A running Mosquitto on 127.0.0.1:`port`, anonymous, logging to the process's stderr."""

    def __init__(self, proc: Proc, port: int) -> None:
        self.proc = proc
        self.port = port


@pytest.fixture
def mosquitto_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """Mosquitto on a free loopback port, anonymous, fresh for each test; stopped by PID at teardown."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    conf = tmp_path_factory.mktemp("mosquitto") / "mosquitto.conf"
    started: list[Proc] = []
    try:
        for _ in range(3):  # free_port() can race with another listener: try another port
            port = free_port()
            conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest stderr\n")
            proc = Proc([MOSQUITTO, "-c", conf])
            started.append(proc)
            try:
                proc.stderr.wait_for(" running")  # stderr: its stdout is block-buffered in a pipe
            except AssertionError:
                proc.stop()
                continue
            yield Mosquitto(proc, port)
            break
        else:
            raise AssertionError(f"mosquitto did not start:\n{started[-1].describe()}")
    finally:
        for proc in started:
            proc.stop()
