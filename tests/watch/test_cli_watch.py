"""`fleet watch` refuses bad options with a message that says what is wrong, before it draws anything."""

from __future__ import annotations

import pytest

from tests.procs import fleet_argv, run


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--broker", "http://127.0.0.1:1883"), "the scheme must be mqtt, mqtts, ws or wss"),
        (("--broker", "mqtt://127.0.0.1:0"), "the port must be a number from 1 to 65535"),
        (("--prefix", "fleet/a"), "one topic level, without '/', '+' or '#'"),
        (("--password", "secret"), "a password needs a user name"),
        (("-V", "mqttv4"), "'mqttv4' is not one of 'mqttv311', 'mqttv5'"),
    ],
)
def test_bad_options_are_refused_with_the_reason(args: tuple[str, ...], message: str) -> None:
    """Each bad option exits with code 2 and names the option and the reason."""
    done = run(fleet_argv("watch", *args))
    assert done.returncode == 2, done
    assert message in done.stderr
