"""Tests of broker.auth: Mosquitto-compatible password files, checked against the real Mosquitto tools."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker.auth import PasswordFile, hash_password, set_password
from fleet.errors import ConfigError

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
MOSQUITTO_PUB = shutil.which("mosquitto_pub")

needs_passwd = pytest.mark.skipif(
    MOSQUITTO_PASSWD is None, reason="mosquitto_passwd not installed (apt-get install mosquitto)"
)
needs_broker = pytest.mark.skipif(
    MOSQUITTO is None or MOSQUITTO_PUB is None,
    reason="mosquitto and mosquitto_pub not installed (apt-get install mosquitto mosquitto-clients)",
)

# A hash made once by `mosquitto_passwd -b pw alice secret` (Mosquitto 2.0.11).
ALICE_7 = (
    "$7$101$K9TAglM+0o5itjkM$EVCNNWU5zWpGtAoh4TYvklnwzFx4qcMNbbBMomkTu8p3Rn4MUjYBgtA4vv/pHxB7moz469rMjS"
    "tnNG6a1db6Ng=="
)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "passwd"
    path.write_text(text, encoding="utf-8")
    return path


def _mosquitto_passwd(*args: str) -> None:
    assert MOSQUITTO_PASSWD is not None
    subprocess.run([MOSQUITTO_PASSWD, *args], check=True, capture_output=True, timeout=30)


def test_hash_password_writes_mosquitto_7_format() -> None:
    """hash_password gives $7$<iterations>$<12-byte salt>$<64-byte hash> with a fresh salt each time."""
    first, second = hash_password("pw"), hash_password("pw")
    kind, iterations, salt, digest = first.split("$")[1:]
    assert (kind, iterations, len(salt), len(digest)) == ("7", "101", 16, 88)
    assert first != second
    assert hash_password("pw", iterations=5).startswith("$7$5$")
    with pytest.raises(ValueError, match="iterations"):
        hash_password("pw", iterations=0)


def test_verify_known_mosquitto_hash_and_password_types(tmp_path: Path) -> None:
    """A stored Mosquitto $7$ hash verifies for str and bytes, not for a wrong, missing or unknown one."""
    passwords = PasswordFile.load(_write(tmp_path, f"alice:{ALICE_7}\n"))
    assert passwords.verify("alice", "secret")
    assert passwords.verify("alice", b"secret")
    assert not passwords.verify("alice", "Secret")
    assert not passwords.verify("alice", None)
    assert not passwords.verify("alice", "")
    assert not passwords.verify("bob", "secret")


@needs_passwd
def test_file_made_by_mosquitto_passwd_verifies(tmp_path: Path) -> None:
    """Users written by the real mosquitto_passwd ($7$ default, $7$ with -I, $6$ with -H sha512) verify."""
    path = tmp_path / "passwd"
    _mosquitto_passwd("-c", "-b", str(path), "alice", "secret")
    _mosquitto_passwd("-b", "-I", "7", str(path), "carol", "pässwörd")
    _mosquitto_passwd("-b", "-H", "sha512", str(path), "bob", "hunter2")
    text = path.read_text()
    assert "alice:$7$101$" in text
    assert "carol:$7$7$" in text
    assert "bob:$6$" in text

    passwords = PasswordFile.load(path)
    assert passwords.verify("alice", "secret")
    assert passwords.verify("carol", "pässwörd")
    assert passwords.verify("bob", "hunter2")
    assert not passwords.verify("alice", "hunter2")
    assert not passwords.verify("bob", "secret")


@needs_passwd
def test_mosquitto_passwd_and_set_password_edit_each_others_files(tmp_path: Path) -> None:
    """set_password replaces one user in place in a mosquitto_passwd file, and mosquitto_passwd edits ours."""
    path = tmp_path / "passwd"
    _mosquitto_passwd("-c", "-b", str(path), "alice", "secret")
    _mosquitto_passwd("-b", str(path), "bob", "hunter2")

    set_password(path, "alice", "new secret")
    set_password(path, "dave", "d4ve")
    assert [line.split(":")[0] for line in path.read_text().splitlines()] == ["alice", "bob", "dave"]

    _mosquitto_passwd("-b", str(path), "erin", "3rin")
    _mosquitto_passwd("-b", str(path), "dave", "d4ve again")
    passwords = PasswordFile.load(path)
    assert passwords.verify("alice", "new secret")
    assert not passwords.verify("alice", "secret")
    assert passwords.verify("bob", "hunter2")
    assert passwords.verify("dave", "d4ve again")
    assert passwords.verify("erin", "3rin")


def test_set_password_keeps_comments_blank_lines_and_mode(tmp_path: Path) -> None:
    """set_password keeps comments, blank lines, order and the file's mode, replacing the user's line."""
    path = _write(tmp_path, f"# fleet users\n\nalice:{ALICE_7}\n# devices\nbob:{ALICE_7}\n")
    path.chmod(0o640)
    set_password(path, "alice", "new secret")
    lines = path.read_text().splitlines()
    assert lines[:2] == ["# fleet users", ""]
    assert lines[2].startswith("alice:$7$101$")
    assert lines[3:] == ["# devices", f"bob:{ALICE_7}"]
    assert path.stat().st_mode & 0o777 == 0o640
    assert PasswordFile.load(path).verify("alice", "new secret")
    assert list(tmp_path.iterdir()) == [path]


def test_set_password_creates_private_file(tmp_path: Path) -> None:
    """set_password creates a missing file with mode 0o600 holding one $7$ line."""
    path = tmp_path / "passwd"
    set_password(path, "alice", "secret")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text().startswith("alice:$7$101$")
    assert PasswordFile.load(path).verify("alice", "secret")
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("username", ["a:b", "tab\there", "", " alice", "#alice"])
def test_set_password_refuses_usernames_that_do_not_round_trip(tmp_path: Path, username: str) -> None:
    """set_password refuses usernames with ':', control characters, outer spaces or a leading '#'."""
    with pytest.raises(ConfigError):
        set_password(tmp_path / "passwd", username, "pw")
    assert not (tmp_path / "passwd").exists()


def test_blank_lines_and_comments_are_ignored(tmp_path: Path) -> None:
    """Blank lines and '#' comments, indented or not, are skipped."""
    path = _write(tmp_path, f"# users\n\n   \n  # indented comment\nalice:{ALICE_7}\n")
    passwords = PasswordFile.load(path)
    assert set(passwords.users) == {"alice"}
    assert passwords.verify("alice", "secret")


def test_plain_text_password_is_refused(tmp_path: Path) -> None:
    """A plain-text password line raises ConfigError at file:line telling to run `fleet passwd`."""
    path = _write(tmp_path, f"alice:{ALICE_7}\n# next one is plain\nbob:hunter2\n")
    with pytest.raises(ConfigError) as caught:
        PasswordFile.load(path)
    assert caught.value.where == f"{path}:3"
    assert "not hashed: run `fleet passwd`" in caught.value.reason


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("alice", "expected username:hash"),
        (f":{ALICE_7}", "empty username"),
        ("alice:", "no password hash"),
        ("alice:$5$abc$def", "unsupported hash type $5$"),
        ("alice:$7$abc$def", "$7$<iterations>$<salt>$<hash>"),
        ("alice:$7$0$" + ALICE_7.split("$", 3)[3], "iterations '0'"),
        ("alice:$7$x$" + ALICE_7.split("$", 3)[3], "iterations 'x'"),
        ("alice:$7$101$c2FsdA==$" + ALICE_7.split("$")[4], "salt is 4 bytes, expected 12"),
        ("alice:$7$101$!!!notbase64!!!!$" + ALICE_7.split("$")[4], "salt is not valid base64"),
        ("alice:$7$101$K9TAglM+0o5itjkM$c2hvcnQ=", "hash is 5 bytes, expected 64"),
        ("alice:$6$K9TAglM+0o5itjkM", "$6$<salt>$<hash>"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    """Each kind of malformed line raises ConfigError with where='file:line' and a precise reason."""
    path = _write(tmp_path, f"# header\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        PasswordFile.load(path)
    assert caught.value.where == f"{path}:2"
    assert reason in caught.value.reason


def test_duplicate_user_is_refused(tmp_path: Path) -> None:
    """A user defined twice raises ConfigError at the second line, naming the first."""
    path = _write(tmp_path, f"alice:{ALICE_7}\nalice:{ALICE_7}\n")
    with pytest.raises(ConfigError, match="already defined on line 1") as caught:
        PasswordFile.load(path)
    assert caught.value.where == f"{path}:2"


def test_set_password_refuses_to_rewrite_a_malformed_file(tmp_path: Path) -> None:
    """set_password raises ConfigError instead of rewriting a file with a bad line, leaving it as is."""
    path = _write(tmp_path, "bob:hunter2\n")
    with pytest.raises(ConfigError, match="not hashed"):
        set_password(path, "alice", "secret")
    assert path.read_text() == "bob:hunter2\n"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def mosquitto_with(tmp_path: Path) -> Iterator[Callable[[Path], int]]:
    """Start the real mosquitto on a free loopback port using a password file; stop it by PID after."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(password_file: Path) -> int:
        assert MOSQUITTO is not None
        port = _free_port()
        conf = tmp_path / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\n"
            "allow_anonymous false\n"
            f"password_file {password_file}\n"
            # When run as root mosquitto drops to user 'mosquitto', who could not read our 0o600 file.
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            "persistence false\n"
        )
        log = (tmp_path / "mosquitto.log").open("wb")
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        procs.append(proc)
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                log_text = (tmp_path / "mosquitto.log").read_text()
                pytest.fail(f"mosquitto exited with {proc.returncode}: {log_text}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return port
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"mosquitto did not listen on 127.0.0.1:{port} within 10 s")
                time.sleep(0.05)

    try:
        yield start
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _publish(port: int, username: str, password: str) -> subprocess.CompletedProcess[str]:
    assert MOSQUITTO_PUB is not None
    return subprocess.run(
        [MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(port), "-i", "auth-test",
         "-u", username, "-P", password, "-t", "fleet/test", "-m", "hello"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@needs_broker
def test_file_written_by_set_password_is_accepted_by_real_mosquitto(
    tmp_path: Path, mosquitto_with: Callable[[Path], int]
) -> None:
    """Real mosquitto lets a set_password user connect, and refuses a wrong password or unknown user."""
    path = tmp_path / "passwd"
    set_password(path, "alice", "s3cret pässword")
    set_password(path, "bob", "hunter2")
    port = mosquitto_with(path)

    ok = _publish(port, "alice", "s3cret pässword")
    assert ok.returncode == 0, ok.stderr
    assert _publish(port, "bob", "hunter2").returncode == 0

    for username, password in [("alice", "wrong"), ("bob", "s3cret pässword"), ("mallory", "hunter2")]:
        refused = _publish(port, username, password)
        assert refused.returncode != 0
        assert "not authorised" in refused.stderr.lower()
