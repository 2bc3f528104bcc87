"""The clients of a secured broker: `fleet tail`, `fleet watch`, `fleet run --broker` and `fleet stress
--broker` log in with mosquitto_sub's options (-u, -P, --password-file, FLEET_PASSWORD, --cafile,
--cert/--key, --insecure) or `user:password@` in the URL, against `fleet broker` and Mosquitto, and
never show the password."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.auth import set_password
from fleet.credentials import Credentials
from fleet.endpoint import Endpoint
from fleet.simulator import Target
from fleet.watch.sources import Attachment, MqttSource
from tests.conftest import BrokerFactory
from tests.pki import Pki
from tests.procs import (
    CHILD_ENV,
    MOSQUITTO,
    MOSQUITTO_PUB,
    ROOT,
    FleetBroker,
    Proc,
    fleet_argv,
    free_port,
    mosquitto,
    needs_mosquitto_clients,
    run,
)

pytestmark = needs_mosquitto_clients

SECRET = "s3cret-pw"
RUN_TIMEOUT = 60.0
FLEET = """\
[stress]
duration = 1
drain = 5

[[groups]]
name = "lock"
count = 3
interval = 0.2
"""


def _passwd(tmp_path: Path) -> Path:
    passwords = tmp_path / "passwd"
    set_password(passwords, "operator", SECRET)
    return passwords


def _password_file(tmp_path: Path) -> Path:
    path = tmp_path / "operator.pw"
    path.write_text(f"{SECRET}\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def secured(start_fleet_broker: Callable[..., FleetBroker], pki: Pki, tmp_path: Path) -> FleetBroker:
    """`fleet broker` with a password file (operator / SECRET), on plain TCP and on TLS, with a
    retained message on `held/one`."""
    broker = start_fleet_broker(
        "--password-file", _passwd(tmp_path), "--tls-cert", pki.cert, "--tls-key", pki.key,
        "--tls-port", 0, "--port", 0, "--ws-port", 0, schemes=("mqtt", "mqtts"),
    )  # fmt: skip
    done = run(
        mosquitto(
            MOSQUITTO_PUB, broker.port, "-u", "operator", "-P", SECRET, "-t", "held/one", "-r", "-m", "1"
        )
    )
    assert done.returncode == 0, done.stderr
    return broker


def tail(*args: str | int | Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    argv = fleet_argv("tail", *args, "--count", 1, "--timeout", 10)
    done = run(argv, timeout=30) if env is None else _run_env(argv, env)
    assert "Traceback" not in done.stderr, done.stderr
    assert SECRET not in done.stdout + done.stderr
    return done.returncode, done.stdout, done.stderr


def _run_env(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=30, check=False, cwd=ROOT, env={**CHILD_ENV, **env}
    )


def test_tail_logs_in_with_user_and_password_in_the_url(secured: FleetBroker) -> None:
    """`fleet tail 'mqtt://operator:PW@host:port/held/#'` reads, and shows the password nowhere."""
    code, stdout, stderr = tail(f"mqtt://operator:{SECRET}@127.0.0.1:{secured.port}/held/%23")
    assert code == 0, stderr
    assert json.loads(stdout)["topic"] == "held/one"
    assert "mqtt://127.0.0.1" in stderr


def test_tail_with_a_wrong_password_fails_in_one_line_without_showing_it(secured: FleetBroker) -> None:
    """A refused login is one error line (exit 1), not a traceback, and does not echo the password."""
    code, stdout, stderr = tail(f"mqtt://operator:{SECRET}x@127.0.0.1:{secured.port}/held/%23")
    assert code == 1
    assert stdout == ""
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert f"{SECRET}x" not in stderr


def test_tail_over_tls_with_cafile_and_a_password_file_or_fleet_password(
    secured: FleetBroker, pki: Pki, tmp_path: Path
) -> None:
    """-u with --password-file, or with FLEET_PASSWORD, and --cafile read from the mqtts:// listener."""
    url = f"mqtts://127.0.0.1:{secured.ports['mqtts']}/held/%23"
    code, stdout, stderr = tail(
        url, "-u", "operator", "--password-file", _password_file(tmp_path), "--cafile", pki.ca
    )
    assert code == 0, stderr
    assert json.loads(stdout)["payload"] == 1
    code, stdout, stderr = tail(url, "-u", "operator", "--cafile", pki.ca, env={"FLEET_PASSWORD": SECRET})
    assert code == 0, stderr


def test_tail_needs_cafile_or_insecure_for_a_self_signed_broker(secured: FleetBroker, tmp_path: Path) -> None:
    """Without --cafile the certificate is not trusted (one line); --insecure skips the check."""
    url = f"mqtts://127.0.0.1:{secured.ports['mqtts']}/held/%23"
    login = ("-u", "operator", "--password-file", _password_file(tmp_path))
    code, _, stderr = tail(url, *login)
    assert code == 1
    assert "CERTIFICATE_VERIFY_FAILED" in stderr
    code, stdout, stderr = tail(url, *login, "--insecure")
    assert code == 0, stderr
    assert json.loads(stdout)["topic"] == "held/one"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cafile", "ca.pem"], "--cafile, --cert and --insecure need an mqtts://"),
        (["--cert", "c.pem"], "a client certificate (--cert) and its key (--key) go together"),
        (["-P", "x"], "a password needs a user name"),
        (["-u", "u", "--password-file", "/nonexistent/pw"], "/nonexistent/pw: cannot read the password file"),
    ],
)
def test_tail_refuses_bad_client_options_in_one_line(args: list[str], message: str) -> None:
    """Inconsistent or unreadable client options are one error line naming the option or file."""
    done = run(fleet_argv("tail", f"mqtt://u:{SECRET}@127.0.0.1:1/x", *args, "--timeout", 5), timeout=30)
    assert done.returncode in (1, 2), done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert SECRET not in done.stderr


def test_tail_presents_a_client_certificate(
    start_fleet_broker: Callable[..., FleetBroker], pki: Pki, tmp_path: Path
) -> None:
    """--cert/--key log in to a broker that requires certificates and takes the CN as user name."""
    acl = tmp_path / "acl"
    acl.write_text("pattern readwrite things/%u/#\n")
    broker = start_fleet_broker(
        "--tls-cert", pki.cert, "--tls-key", pki.key, "--tls-port", 0, "--port", 0, "--ws-port", 0,
        "--cafile", pki.ca, "--require-certificate", "--use-identity-as-username", "--acl-file", acl,
        schemes=("mqtt", "mqtts"),
    )  # fmt: skip
    cert, key = pki.client("reader-1")
    tls = ("--cafile", pki.ca, "--cert", cert, "--key", key)
    port = broker.ports["mqtts"]
    done = run(mosquitto(MOSQUITTO_PUB, port, *tls, "-t", "things/reader-1/x", "-r", "-m", "mine"))
    assert done.returncode == 0, done.stderr
    code, stdout, stderr = tail(f"mqtts://127.0.0.1:{port}/things/%23", *tls)
    assert code == 0, stderr
    assert json.loads(stdout)["topic"] == "things/reader-1/x"


def test_run_and_stress_log_in_to_a_secured_broker(secured: FleetBroker, pki: Pki, tmp_path: Path) -> None:
    """`fleet run --broker mqtts://... --cafile -u --password-file` and `fleet stress --broker
    mqtt://user:pw@...` connect every device (and the observer); reports hold no password."""
    config = tmp_path / "fleet.toml"
    config.write_text(FLEET)
    report = tmp_path / "run.json"
    argv = fleet_argv(
        "run", config, "--broker", f"mqtts://127.0.0.1:{secured.ports['mqtts']}", "--cafile", pki.ca,
        "-u", "operator", "--password-file", _password_file(tmp_path), "--duration", 1, "--report", report,
    )  # fmt: skip
    done = run(argv, timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert json.loads(report.read_text())["fleet"]["connects"] == 3

    stress_report = tmp_path / "stress.json"
    argv = fleet_argv(
        "stress", config, "--broker", f"mqtt://operator:{SECRET}@127.0.0.1:{secured.port}",
        "--report", stress_report, "--max-loss-qos1", 0,
    )  # fmt: skip
    done = run(argv, timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stderr
    text = stress_report.read_text()
    assert SECRET not in text + done.stdout + done.stderr
    assert json.loads(text)["meta"]["broker"] == f"mqtt://127.0.0.1:{secured.port}"


def test_run_without_credentials_is_refused_with_the_brokers_reason(
    secured: FleetBroker, tmp_path: Path
) -> None:
    """Devices without a login get the broker's refusal in one line."""
    config = tmp_path / "fleet.toml"
    config.write_text(FLEET)
    done = run(
        fleet_argv("run", config, "--broker", f"mqtt://127.0.0.1:{secured.port}", "--duration", 1),
        timeout=RUN_TIMEOUT,
    )
    assert done.returncode == 1
    assert "the broker refused the devices" in done.stderr


def test_watch_refuses_tls_options_on_a_plain_url_without_showing_the_password() -> None:
    """`fleet watch --broker mqtt://u:PW@... --cafile F` exits 2 naming --broker, not echoing PW."""
    done = run(fleet_argv("watch", "--broker", f"mqtt://u:{SECRET}@127.0.0.1:1883", "--cafile", "ca.pem"))
    assert done.returncode == 2, done.stderr
    assert "need mqtts:// or wss://" in done.stderr
    assert SECRET not in done.stderr


def test_tail_logs_in_to_mosquitto_with_a_password_file(tmp_path: Path) -> None:
    """Against Mosquitto with a password file (made by `fleet passwd`), -u and -P read what was retained."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\n"
        f"password_file {_passwd(tmp_path)}\nlog_dest stderr\n"
        # Run as root, mosquitto drops to user 'mosquitto', who could not read our 0o600 file.
        f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
    )
    proc = Proc([MOSQUITTO, "-c", conf])
    try:
        proc.stderr.wait_for(" running")
        done = run(
            mosquitto(MOSQUITTO_PUB, port, "-u", "operator", "-P", SECRET, "-t", "held/m", "-r", "-m", "2")
        )
        assert done.returncode == 0, done.stderr
        code, stdout, stderr = tail(f"mqtt://127.0.0.1:{port}/held/%23", "-u", "operator", "-P", SECRET)
        assert code == 0, stderr
        assert json.loads(stdout)["topic"] == "held/m"
    finally:
        proc.stop()


async def test_watch_attaches_to_a_tls_broker_with_a_password(
    broker_factory: BrokerFactory, pki: Pki, tmp_path: Path
) -> None:
    """`fleet watch`'s source logs in with the credentials of `fleet watch -u -P --cafile` over mqtts://."""
    async with broker_factory(password_file=_passwd(tmp_path), tls_cert=pki.cert, tls_key=pki.key) as broker:
        assert broker.tls_port is not None
        endpoint = Endpoint.parse(f"mqtts://127.0.0.1:{broker.tls_port}")
        login = Target(endpoint, Credentials(username="operator", password=SECRET, cafile=pki.ca)).login()
        source = MqttSource(endpoint, username=login.username, password=login.password, ssl=login.ssl)
        news: asyncio.Queue[Attachment] = asyncio.Queue()
        task = asyncio.create_task(source.run(lambda *_: None, news.put_nowait))
        try:
            async with asyncio.timeout(10):
                while (attachment := await news.get()).state != "connected":
                    assert attachment.state in ("connecting", "retrying"), attachment
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def test_tail_refuses_a_login_for_a_stream_that_is_not_a_brokers() -> None:
    """-u for an SSE or gRPC URL is refused (exit 2): those logins belong to a broker."""
    done = run(fleet_argv("tail", "http://127.0.0.1:1/events", "-u", "op", "--timeout", 5), timeout=30)
    assert done.returncode == 2
    assert "a user name and password log in to a broker" in done.stderr
