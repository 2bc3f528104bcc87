"""Broker settings: secure defaults, the [broker] table of a file, and errors naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import BrokerSettings, is_loopback, load_broker_settings
from fleet.errors import ConfigError


def test_defaults_listen_on_loopback_with_websocket_on_8083_not_the_tls_port() -> None:
    """By default the broker binds 127.0.0.1, MQTT on 1883, WebSocket on 8083, TLS (when asked) on 8883."""
    settings = BrokerSettings()
    assert (settings.host, settings.port, settings.ws_port, settings.tls_port) == (
        "127.0.0.1",
        1883,
        8083,
        8883,
    )
    assert is_loopback(settings.host)
    assert settings.anonymous
    assert (settings.max_queued, settings.max_inflight) == (1000, 20)


def test_a_password_file_turns_anonymous_access_off_unless_asked(tmp_path: Path) -> None:
    """With a password file, anonymous clients are refused unless allow_anonymous is set."""
    passwords = tmp_path / "passwd"
    assert not BrokerSettings(password_file=passwords).anonymous
    assert BrokerSettings(password_file=passwords, allow_anonymous=True).anonymous


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_hosts_stay_anonymous_by_default(host: str) -> None:
    """On a loopback address, anonymous access stays the default without a password file."""
    assert BrokerSettings(host=host).anonymous


def test_off_loopback_anonymous_access_must_be_asked_for(tmp_path: Path) -> None:
    """Off loopback, no password file and no allow_anonymous is an error naming the field; either fixes it."""
    config = tmp_path / "open.toml"
    config.write_text('[broker]\nhost = "0.0.0.0"\n')
    with pytest.raises(ConfigError) as caught:
        load_broker_settings(config, {})
    assert str(caught.value).startswith(f"{config}: broker.allow_anonymous: listening on 0.0.0.0 without")
    assert load_broker_settings(config, {"allow_anonymous": True}).anonymous
    locked = load_broker_settings(config, {"password_file": tmp_path / "passwd"})
    assert not locked.anonymous


def test_file_table_with_relative_paths_and_command_line_overrides(tmp_path: Path) -> None:
    """[broker] keys load, paths are relative to the file, ws_port = 0 turns WebSocket off, options win."""
    config = tmp_path / "fleet.toml"
    config.write_text('[broker]\nport = 1999\nws_port = 0\nacl_file = "acl"\nmax_queued = 5\n')
    settings = load_broker_settings(config, {"max_queued": 7})
    assert (settings.port, settings.ws_port, settings.max_queued) == (1999, None, 7)
    assert settings.acl_file == tmp_path / "acl"


def test_persistence_is_off_by_default_and_its_folder_is_relative_to_the_file(tmp_path: Path) -> None:
    """No store by default; `persistence = "DIR"` is taken from the file's folder, with its sync mode."""
    assert BrokerSettings().persistence is None
    config = tmp_path / "fleet.toml"
    config.write_text('[broker]\npersistence = "store"\nsync = "interval"\nsync_interval = 250\n')
    settings = load_broker_settings(config, {})
    assert (settings.persistence, settings.sync, settings.sync_interval) == (
        tmp_path / "store",
        "interval",
        250,
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("max_inflight = 0", "broker.max_inflight: Input should be greater than or equal to 1"),
        ("port = 70000", "broker.port: Input should be less than or equal to 65535"),
        ('tls_cert = "c.pem"', "broker.tls_key: required with tls_cert"),
        ("allow_anonymous = false", "broker.allow_anonymous: false without a password_file"),
        ("colour = 1", "broker.colour: unknown key"),
        ('sync = "sometimes"', "broker.sync: Input should be 'always', 'interval' or 'never'"),
        ('cafile = "ca.pem"', "broker.cafile: checks client certificates on the TLS listener"),
        (
            'tls_cert = "c.pem"\ntls_key = "k.pem"\nrequire_certificate = true',
            "broker.require_certificate: needs a cafile",
        ),
        (
            'tls_cert = "c.pem"\ntls_key = "k.pem"\ncafile = "ca.pem"\nuse_identity_as_username = true',
            "broker.use_identity_as_username: needs require_certificate",
        ),
    ],
)
def test_bad_settings_name_the_file_and_field(tmp_path: Path, table: str, message: str) -> None:
    """Each invalid [broker] table raises ConfigError naming the file, the field and the reason."""
    config = tmp_path / "bad.toml"
    config.write_text(f"[broker]\n{table}\n")
    with pytest.raises(ConfigError) as caught:
        load_broker_settings(config, {})
    assert str(caught.value).startswith(f"{config}: ")
    assert message in str(caught.value)
