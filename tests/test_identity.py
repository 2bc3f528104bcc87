"""Per-device identity: simulated devices log in with their own user name, password file or client
certificate, templated in the fleet config, and a `%u` ACL lets each read only its own commands."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from broker.auth import set_password
from broker.server import Broker
from fleet.credentials import Credentials
from fleet.errors import ConfigError
from fleet.schema import FleetConfig
from fleet.testing.services import fleet_config
from tests.pki import Pki
from tests.rawmqtt import RawClient

SUBACK_FAILURE = 0x80
CONNACK_ACCEPTED = 0
DEVICES = ("door-0000", "door-0001")
ACL = "user operator\ntopic readwrite fleet/#\n\npattern readwrite fleet/%u/#\n"


def _passwords(directory: Path) -> Path:
    """A broker password file for `operator` and each door, and one file per door holding its password."""
    passwords = directory / "passwd"
    set_password(passwords, "operator", "op-secret")
    (directory / "pw").mkdir()
    for device in DEVICES:
        set_password(passwords, device, f"{device}-secret")
        (directory / "pw" / device).write_text(f"{device}-secret\n")
    return passwords


@pytest.fixture
def fleet_broker_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Mapping[str, Any]:
    """`fleet_broker` locked down: passwords and a `%u` ACL, or (param "certificates") client
    certificates whose CN is the user name."""
    (tmp_path / "acl").write_text(ACL.replace("operator", "watcher") if _certificates(request) else ACL)
    if _certificates(request):
        pki: Pki = request.getfixturevalue("pki")
        return {
            "tls_cert": pki.cert, "tls_key": pki.key, "cafile": pki.ca, "require_certificate": True,
            "use_identity_as_username": True, "acl_file": tmp_path / "acl",
        }  # fmt: skip
    return {"password_file": _passwords(tmp_path), "acl_file": tmp_path / "acl"}


def _certificates(request: pytest.FixtureRequest) -> bool:
    return "certificates" in request.node.name


def _command(client: RawClient, device: str) -> None:
    client.publish(f"fleet/{device}/cmd", json.dumps({"id": f"c-{device}", "op": "ping"}).encode(), qos=0)


async def test_devices_log_in_with_templated_user_names_and_password_files(
    fleet_broker: Broker, fleet_sim: Callable[..., Awaitable[Any]], mqtt_stream: Any, tmp_path: Path
) -> None:
    """`username = "{device}"` and `password_file = "pw/{device}"` give each device its own login."""
    operator = Credentials(username="operator", password="op-secret")
    acks = await mqtt_stream("fleet/+/cmd/ack", credentials=operator)
    config = {
        "broker": {
            "url": fleet_broker.urls[0],
            "username": "{device}",
            "password_file": f"{tmp_path}/pw/{{device}}",
        },
        "groups": [{"name": "door", "count": 2}],
    }
    fleet = await fleet_sim(config)
    assert fleet.devices == DEVICES
    client = await RawClient.open(fleet_broker.port)
    try:
        assert await client.connect("operator-1", username="operator", password="op-secret") == (False, 0)
        _command(client, "door-0001")
        event = await acks.expect(topic="fleet/door-0001/cmd/ack", within=10.0)
        assert event.payload["id"] == "c-door-0001"
        await client.disconnect()
    finally:
        await client.close()


async def test_a_device_cannot_read_another_devices_commands_with_its_client_id(fleet_broker: Broker) -> None:
    """door-0000's login with door-0001's client id gets its own commands only, not door-0001's."""
    spoof, operator = await RawClient.open(fleet_broker.port), await RawClient.open(fleet_broker.port)
    try:
        code = await spoof.connect("door-0001", username="door-0000", password="door-0000-secret")
        assert code == (False, CONNACK_ACCEPTED)
        await spoof.subscribe(("fleet/door-0001/cmd", 1), ("fleet/door-0000/cmd", 1))
        assert await operator.connect("operator-1", username="operator", password="op-secret") == (False, 0)
        # In this order: had door-0001's command reached the spoof, it would come first.
        for device in ("door-0001", "door-0000"):
            operator.publish(f"fleet/{device}/cmd", b"{}", qos=1, packet_id=operator.packet_id())
        received = await spoof.read_publish()
        assert received.topic == "fleet/door-0000/cmd"
    finally:
        await spoof.close()
        await operator.close()


async def test_devices_present_their_own_client_certificates(
    fleet_broker: Broker, fleet_sim: Callable[..., Awaitable[Any]], mqtt_stream: Any, pki: Pki
) -> None:
    """With certificates, a device's CN is its user name: each reaches only its own `cmd` topic."""
    for name in (*DEVICES, "watcher"):
        pki.client(name)
    directory = pki.ca.parent
    watcher = Credentials(cafile=pki.ca, cert=directory / "watcher.pem", key=directory / "watcher.key")
    acks = await mqtt_stream("fleet/+/cmd/ack", credentials=watcher)
    devices = Credentials(cafile=pki.ca, cert=directory / "{device}.pem", key=directory / "{device}.key")
    await fleet_sim({"groups": [{"name": "door", "count": 2}]}, credentials=devices)

    assert fleet_broker.tls_port is not None
    port = fleet_broker.tls_port

    async def open_as(credentials: Credentials) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=credentials.ssl_context())
        return RawClient(reader, writer)

    spoof = Credentials(cafile=pki.ca, cert=directory / "door-0000.pem", key=directory / "door-0000.key")
    commander, spy = await open_as(watcher), await open_as(spoof)
    try:
        assert await commander.connect("watcher-1") == (False, 0)
        # The user name it claims does not count: its certificate says door-0000.
        assert await spy.connect("spy", username="door-0001") == (False, 0)
        await spy.subscribe(("fleet/door-0001/cmd", 1), ("fleet/door-0000/cmd", 1))
        for device in ("door-0001", "door-0000"):
            _command(commander, device)
        event = await acks.expect(topic="fleet/door-0001/cmd/ack", within=10.0)
        assert event.payload["id"] == "c-door-0001"
        received = await spy.read_publish()
        assert received.topic == "fleet/door-0000/cmd"
    finally:
        await commander.close()
        await spy.close()


@pytest.mark.parametrize(
    ("broker", "message"),
    [
        ({"username": "{device}", "password": "{serial}"}, "broker.password: unknown placeholder {serial}"),
        ({"username": "{device", "password": "x"}, "broker.username: bad template '{device'"),
        ({"password_file": "pw/{device}"}, "broker.username: required with a password"),
        (
            {"username": "u", "password": "p", "password_file": "f"},
            "broker.password_file: give a password or",
        ),
        ({"client_cert": "{device}.pem"}, "broker.client_key: required with client_cert"),
    ],
)
def test_bad_credential_templates_name_the_field(broker: dict[str, str], message: str) -> None:
    """A bad per-device credential in [broker] is a ConfigError naming the field path and the reason."""
    with pytest.raises(ConfigError) as caught:
        fleet_config(
            {"broker": {"url": "mqtts://127.0.0.1:8883", **broker}, "groups": [{"name": "g", "count": 1}]}
        )
    assert message in str(caught.value)


def test_templates_are_filled_in_per_device_and_relative_to_the_config(tmp_path: Path) -> None:
    """`{device}` and `{group}` become each device's values; files are relative to the config's folder."""
    path = tmp_path / "fleet.toml"
    path.write_text(
        '[broker]\nurl = "mqtts://127.0.0.1"\nusername = "{group}/{device}"\npassword_file = "pw/{device}"\n'
        'client_cert = "certs/{device}.pem"\nclient_key = "certs/{device}.key"\n'
        '[[groups]]\nname = "g"\ncount = 1\n'
    )
    config: FleetConfig = fleet_config(path)
    assert config.broker is not None
    credentials = config.broker.credentials()
    one = credentials.for_device("g-0000", "g")
    assert (one.username, one.password_file, one.cert) == (
        "g/g-0000",
        tmp_path / "pw" / "g-0000",
        tmp_path / "certs" / "g-0000.pem",
    )
    assert credentials.shared() == Credentials()
