"""The `fleet` command as a real subprocess (`python -m fleet`): listeners, signals, config errors, passwd."""

from __future__ import annotations

import errno
import signal
import socket
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker.auth import PasswordFile
from tests.procs import (
    CHILD_ENV,
    LISTENING,
    MOSQUITTO_PUB,
    MOSQUITTO_SUB,
    ROOT,
    SUB_WAIT,
    TIMEOUT,
    Proc,
    connect_packet,
    fleet_argv,
    free_port,
    mosquitto,
    needs_mosquitto_clients,
    run,
)

Fleet = Callable[..., Proc]

TEST_NET_1 = "192.0.2.1"  # RFC 5737: documentation only, never assigned to a host.


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    """Start `python -m fleet ARGS` subprocesses; each is stopped by PID at teardown."""
    started: list[Proc] = []

    def start(*args: str | Path | int) -> Proc:
        proc = Proc(fleet_argv(*args))
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


def fleet_run(*args: str | Path | int, input: str | None = None) -> tuple[int, str, str]:
    """Run `python -m fleet ARGS` to completion (bounded); return (exit code, stdout, stderr)."""
    done = run(fleet_argv(*args), input=input, timeout=30)
    return done.returncode, done.stdout, done.stderr


def listening_port(proc: Proc, scheme: str = "mqtt", *, on_stderr: bool = False) -> int:
    """Wait (bounded) for the 'listening on SCHEME://127.0.0.1:PORT' line; return PORT."""
    stream = proc.stderr if on_stderr else proc.stdout

    def announces(line: str) -> bool:
        found = LISTENING.match(line)
        return found is not None and found["scheme"] == scheme

    try:
        index = stream.wait_for(announces)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{proc.describe()}") from None
    found = LISTENING.match(stream.lines[index])
    assert found is not None
    return int(found["port"])


def assert_mqtt_accepts(port: int) -> None:
    """A raw MQTT 3.1.1 CONNECT to 127.0.0.1:port is answered with CONNACK 'accepted'."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(connect_packet("cli-probe"))
        data = b""
        while len(data) < 4 and (chunk := sock.recv(4 - len(data))):
            data += chunk
    assert data == b"\x20\x02\x00\x00"


def assert_clean_exit(proc: Proc) -> None:
    code = proc.wait()
    assert code == 0, proc.describe()
    assert proc.stdout.lines[-1] == "fleet broker: shutting down", proc.describe()
    assert "Traceback" not in proc.stderr.text, proc.describe()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_broker_prints_listener_url_and_stops_cleanly_on_signal(fleet: Fleet, sig: signal.Signals) -> None:
    """`fleet broker --port 0 --ws-port 0` prints its mqtt:// URL, serves it, exits 0 on SIGINT/SIGTERM."""
    proc = fleet("broker", "--port", 0, "--ws-port", 0)
    port = listening_port(proc)
    assert port != 0
    assert_mqtt_accepts(port)

    proc.signal(sig)
    assert_clean_exit(proc)
    assert proc.stdout.lines == [
        f"fleet broker: listening on mqtt://127.0.0.1:{port}",
        "fleet broker: shutting down",
    ]


def test_config_value_of_wrong_type_names_file_field_and_reason(tmp_path: Path) -> None:
    """A `[broker] port = "x"` file exits non-zero with 'FILE: broker.port: <reason>', no traceback."""
    config = tmp_path / "fleet.toml"
    config.write_text('[broker]\nport = "x"\n')
    code, stdout, stderr = fleet_run("broker", "--config", config)
    assert code != 0
    assert f"{config}: broker.port: Input should be a valid integer" in stderr
    assert "Traceback" not in stderr
    assert "listening" not in stdout


def test_config_unknown_key_is_reported_as_unknown_key(tmp_path: Path) -> None:
    """A misspelt key, `[broker] prot = 1`, is refused as 'FILE: broker.prot: unknown key'."""
    config = tmp_path / "fleet.toml"
    config.write_text("[broker]\nprot = 1\n")
    code, _, stderr = fleet_run("broker", "--config", config)
    assert code != 0
    assert f"{config}: broker.prot: unknown key" in stderr
    assert "Traceback" not in stderr


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    """`--config` naming a file that does not exist exits non-zero with 'FILE: no such file'."""
    config = tmp_path / "absent.toml"
    code, stdout, stderr = fleet_run("broker", "--config", config)
    assert code != 0
    assert f"{config}: no such file" in stderr
    assert "Traceback" not in stderr
    assert stdout == ""


def _bind_errno(host: str) -> int | None:
    with socket.socket() as sock:
        try:
            sock.bind((host, 0))
        except OSError as exc:
            return exc.errno
    return None


def test_non_loopback_host_without_credentials_refuses_to_start_unless_anonymous_is_allowed(
    fleet: Fleet,
) -> None:
    """`--host 192.0.2.1` with no password file exits 1 naming --allow-anonymous, before binding anything."""
    proc = fleet("broker", "--host", TEST_NET_1, "--port", 0, "--ws-port", 0)
    assert proc.wait(30) == 1, proc.describe()
    error = proc.stderr.text
    assert "broker.allow_anonymous: listening on 192.0.2.1 without a password_file" in error
    assert "--allow-anonymous" in error
    assert "--password-file" in error
    assert "cannot listen" not in error
    assert "Traceback" not in error
    assert proc.stdout.lines == []


def test_non_loopback_host_warns_about_allowed_anonymous_access_before_failing_to_bind(fleet: Fleet) -> None:
    """`--host 192.0.2.1 --allow-anonymous` logs the anonymous-access warning, then 'cannot listen'."""
    if _bind_errno(TEST_NET_1) != errno.EADDRNOTAVAIL:
        pytest.skip(f"binding {TEST_NET_1} does not fail with EADDRNOTAVAIL on this machine")

    proc = fleet("broker", "--host", TEST_NET_1, "--allow-anonymous", "--port", 0, "--ws-port", 0)
    code = proc.wait(30)
    assert code != 0, proc.describe()
    lines = proc.stderr.lines
    loud = f"WARNING broker: !!! listening on {TEST_NET_1} with anonymous access"
    warning = next(i for i, line in enumerate(lines) if loud in line)
    assert "--password-file" in lines[warning]
    failure = next(i for i, line in enumerate(lines) if "cannot listen" in line)
    assert warning < failure, proc.describe()
    assert not any(line.startswith("fleet broker: listening") for line in proc.stdout.lines)
    assert "Traceback" not in proc.stderr.text


@needs_mosquitto_clients
def test_passwd_file_lets_user_in_and_keeps_wrong_password_and_anonymous_out(
    tmp_path: Path, fleet: Fleet
) -> None:
    """`fleet passwd` users can publish with mosquitto_pub; a wrong password and anonymous are refused."""
    password_file = tmp_path / "passwd"
    code, stdout, stderr = fleet_run("passwd", password_file, "user", "--password-stdin", input="secret\n")
    assert code == 0, stderr
    assert stdout == f"fleet passwd: user set in {password_file}\n"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert password_file.read_text().startswith("user:$7$")

    proc = fleet("broker", "--password-file", password_file, "--port", 0, "--ws-port", 0)
    port = listening_port(proc)

    def pub(topic: str, payload: str, *credentials: str) -> tuple[int, str]:
        done = run(mosquitto(MOSQUITTO_PUB, port, *credentials, "-t", topic, "-r", "-q", 1, "-m", payload))
        return done.returncode, done.stderr

    assert pub("auth/ok", "let in", "-u", "user", "-P", "secret") == (0, "")
    code, stderr = pub("auth/wrong", "wrong password", "-u", "user", "-P", "Secret")
    assert code != 0
    assert "bad user name or password" in stderr.lower()
    code, stderr = pub("auth/anonymous", "anonymous")
    assert code != 0
    assert "not authori" in stderr.lower()

    # Only the accepted message was retained: after it, the next message must be the live one.
    user = ("-u", "user", "-P", "secret")
    sub = Proc(mosquitto(MOSQUITTO_SUB, port, *user, "-t", "auth/#", "-v", "-C", 2, "-W", SUB_WAIT))
    try:
        sub.stdout.wait_for("auth/ok ")
        assert pub("auth/live", "live", "-u", "user", "-P", "secret")[0] == 0
        assert sub.wait(TIMEOUT + 5) == 0, sub.describe()
        assert sub.stdout.lines == ["auth/ok let in", "auth/live live"]
    finally:
        sub.stop()

    proc.signal(signal.SIGTERM)
    assert_clean_exit(proc)


def test_passwd_reads_a_piped_password_without_a_warning(tmp_path: Path) -> None:
    """Without a terminal (no controlling tty, stdin a pipe), `fleet passwd FILE USER` takes the first
    line of stdin as the password, once, and prints no GetPassWarning."""
    password_file = tmp_path / "passwd"
    done = subprocess.run(
        fleet_argv("passwd", password_file, "user"),
        input="s3cret\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=CHILD_ENV,
        start_new_session=True,  # no controlling terminal, as in CI or under cron
    )
    assert (done.returncode, done.stderr) == (0, ""), done
    assert done.stdout == f"fleet passwd: user set in {password_file}\n"
    assert PasswordFile.load(password_file).verify("user", "s3cret")


def test_up_runs_the_broker_and_the_fleet_and_stops_cleanly_on_sigterm(tmp_path: Path, fleet: Fleet) -> None:
    """`fleet up` runs the broker, fleet and bridges, names the dashboard and the TUI; SIGTERM: summary, 0."""
    config = tmp_path / "demo.toml"
    config.write_text(
        "[broker]\nport = 0\nws_port = 0\nsys_interval = 0\n\n"
        "[bridge]\nhttp_port = 0\ngrpc_port = 0\n\n"
        '[[groups]]\nname = "probe"\ncount = 2\ninterval = 0.2\n'
    )
    proc = fleet("up", "--config", config)
    index = proc.stderr.wait_for(lambda line: LISTENING.match(line) is not None)
    found = LISTENING.match(proc.stderr.lines[index])
    assert found is not None
    births = run(
        mosquitto(MOSQUITTO_SUB, int(found["port"]), "-t", "fleet/+/status", "-C", 2, "-W", SUB_WAIT)
    )
    assert births.stdout.count('"online":true') == 2, births
    index = proc.stderr.wait_for(lambda line: line.startswith("fleet bridge: serving http://"))
    events_url = proc.stderr.lines[index].removeprefix("fleet bridge: serving ")
    index = proc.stderr.wait_for(lambda line: line.startswith("fleet up: the dashboard is at "))
    dashboard = proc.stderr.lines[index].removeprefix("fleet up: the dashboard is at ")
    assert dashboard == events_url.removesuffix("events"), proc.describe()
    hint = f"fleet up: no terminal, so no TUI; `fleet watch --broker mqtt://127.0.0.1:{found['port']}`"
    proc.stderr.wait_for(lambda line: line.startswith(hint))  # stdin and stdout are pipes here
    sse = run(["curl", "-sN", "--max-time", "3", f"{events_url}?filter=fleet/%2B/telemetry"])
    assert "event: telemetry" in sse.stdout, sse  # the fleet, bridged to Server-Sent Events

    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0, proc.describe()
    assert proc.stdout.lines[0].strip() == "fleet up", proc.describe()  # the summary's title
    assert "Traceback" not in proc.stderr.text, proc.describe()


def test_up_help_shows_no_path_of_the_machine_it_runs_on() -> None:
    """`fleet up --help` names the demo config as configs/demo.toml, not as an absolute path."""
    code, stdout, _ = fleet_run("up", "--help")
    assert code == 0
    assert "[default: configs/demo.toml]" in stdout
    assert str(ROOT) not in stdout


def test_up_port_flags_move_every_listener_off_taken_ports(tmp_path: Path, fleet: Fleet) -> None:
    """With the config's MQTT and HTTP ports taken, `fleet up --port 0 --ws-port W --http-port 0
    --grpc-port G` serves on other ports, without a copy of the config."""
    with socket.socket() as mqtt_taken, socket.socket() as http_taken:
        for sock in (mqtt_taken, http_taken):
            sock.bind(("127.0.0.1", 0))
            sock.listen()
        taken = {sock.getsockname()[1] for sock in (mqtt_taken, http_taken)}
        mqtt, http = (sock.getsockname()[1] for sock in (mqtt_taken, http_taken))
        config = tmp_path / "demo.toml"
        config.write_text(
            f"[broker]\nport = {mqtt}\nws_port = 0\nsys_interval = 0\n\n"
            f"[bridge]\nhttp_port = {http}\ngrpc_port = 0\n\n"
            '[[groups]]\nname = "probe"\ncount = 2\ninterval = 0.2\n'
        )
        ws_port, grpc_port = free_port(), free_port()
        proc = fleet(
            "up",
            "--config",
            config,
            "--port",
            0,
            "--ws-port",
            ws_port,
            "--http-port",
            0,
            "--grpc-port",
            grpc_port,
        )
        assert listening_port(proc, "ws", on_stderr=True) == ws_port
        port = listening_port(proc, on_stderr=True)
        index = proc.stderr.wait_for(lambda line: line.startswith("fleet up: the dashboard is at "))
        dashboard = proc.stderr.lines[index].removeprefix("fleet up: the dashboard is at ")
        proc.stderr.wait_for(f"fleet bridge: serving grpc://127.0.0.1:{grpc_port}")
        assert port not in taken
        assert dashboard.startswith("http://127.0.0.1:")
        assert int(dashboard.removeprefix("http://127.0.0.1:").rstrip("/")) not in taken
        assert_mqtt_accepts(port)
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0, proc.describe()


@pytest.mark.parametrize(
    ("url", "suggestion"),
    [("127.0.0.1:1883", "mqtt://127.0.0.1:1883"), ("tcp://127.0.0.1:1883", "mqtt://127.0.0.1:1883")],
    ids=["host-port", "tcp"],
)
@pytest.mark.parametrize("command", ["run", "watch"])
def test_run_and_watch_suggest_the_mqtt_url_for_host_port_and_tcp(
    tmp_path: Path, command: str, url: str, suggestion: str
) -> None:
    """`--broker host:port` and `--broker tcp://…` are refused with 'did you mean mqtt://host:port?'."""
    config = tmp_path / "fleet.toml"
    config.write_text('[[groups]]\nname = "a"\ncount = 1\n')
    args = ("run", config, "--duration", 1) if command == "run" else ("watch",)
    code, stdout, stderr = fleet_run(*args, "--broker", url)
    assert code in (1, 2), stderr
    assert f"did you mean {suggestion}?" in stderr
    assert "Traceback" not in stderr
    assert stdout == ""
