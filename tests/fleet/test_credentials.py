"""Client credentials: `user:password@` in URLs, redaction, templates per device, and TLS files."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.credentials import Credentials, redact, split_url
from fleet.endpoint import Endpoint
from fleet.errors import ConfigError


@pytest.mark.parametrize(
    ("url", "rest", "username", "password"),
    [
        ("mqtt://host:1883/fleet/%23", "mqtt://host:1883/fleet/%23", None, None),
        ("mqtt://op:pw@host:1883/fleet/%23", "mqtt://host:1883/fleet/%23", "op", "pw"),
        ("mqtts://op@host", "mqtts://host", "op", None),
        ("ws://op:p%40ss%3Aw@host:8083/mqtt", "ws://host:8083/mqtt", "op", "p@ss:w"),
        ("mqtt://op:p@ss@host", "mqtt://host", "op", "p@ss"),
    ],
)
def test_split_url_takes_user_and_password_out(url: str, rest: str, username: str, password: str) -> None:
    """The URL loses its `user:password@`; both are percent-decoded, and an '@' in the password survives."""
    stripped, credentials = split_url(url)
    assert stripped == rest
    assert (credentials.username, credentials.password) == (username, password)


def test_a_password_never_shows() -> None:
    """Neither repr, nor redact, nor the errors of split_url and Endpoint.parse show the password."""
    assert "hunter2" not in repr(Credentials(username="op", password="hunter2"))
    assert redact("mqtt://op:hunter2@host:1/x") == "mqtt://***@host:1/x"
    with pytest.raises(ValueError, match=r"\*\*\*@host") as caught:
        split_url("mqtt://:hunter2@host")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ValueError, match="user name or password") as parsed:
        Endpoint.parse("mqtt://op:hunter2@host:1")
    assert "hunter2" not in str(parsed.value)


def test_override_takes_the_fields_the_other_sets() -> None:
    """Options win over a URL field by field; a password file replaces a password."""
    from_url = Credentials(username="op", password="pw")
    merged = from_url.override(Credentials(cafile=Path("ca.pem")))
    assert (merged.username, merged.password, merged.cafile) == ("op", "pw", Path("ca.pem"))
    filed = from_url.override(Credentials(username="op", password_file=Path("pw.txt")))
    assert (filed.password, filed.password_file) == (None, Path("pw.txt"))


def test_shared_drops_what_names_a_device() -> None:
    """A client that is not a device keeps only the fields that are not templated."""
    credentials = Credentials(
        username="{device}", password="x", cafile=Path("ca.pem"), cert=Path("{device}.pem"), key=Path("k.pem")
    )
    assert credentials.shared() == Credentials(cafile=Path("ca.pem"))


def test_read_password_takes_the_first_line_and_names_a_missing_file(tmp_path: Path) -> None:
    """A password file's first line is the password; an unreadable one is a ConfigError naming it."""
    (tmp_path / "pw").write_text("first\nsecond\n")
    assert Credentials(username="u", password_file=tmp_path / "pw").read_password() == b"first"
    with pytest.raises(ConfigError, match="cannot read the password file"):
        Credentials(username="u", password_file=tmp_path / "missing").read_password()


def test_ssl_context_names_a_missing_certificate(tmp_path: Path) -> None:
    """A client certificate that cannot be loaded is a ConfigError naming the file."""
    with pytest.raises(ConfigError) as caught:
        Credentials(cert=tmp_path / "c.pem", key=tmp_path / "k.pem").ssl_context()
    assert str(caught.value).startswith(f"{tmp_path / 'c.pem'}: cannot load the client certificate")


def test_for_device_fills_in_only_device_and_group() -> None:
    """`{device}` and `{group}` are filled in; other braces (a password from the command line) stay."""
    credentials = Credentials(
        username="{group}.{device}", password="p{x}{", cert=Path("{device}.pem"), key=Path("k")
    )
    one = credentials.for_device("d-1", "g")
    assert (one.username, one.password, one.cert) == ("g.d-1", "p{x}{", Path("d-1.pem"))
    assert credentials.shared() == Credentials()
