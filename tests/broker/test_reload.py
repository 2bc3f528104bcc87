"""`fleet broker` reloads its password file and ACL file on SIGHUP, against a real broker subprocess."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

from broker.auth import set_password
from tests.procs import FleetBroker
from tests.rawmqtt import RawClient

ACL = """\
user alice
topic read a/#
user bob
topic write a/#
user carol
topic write a/#
"""
# alice may no longer read a/secret/...
TIGHTER = ACL.replace("topic read a/#\n", "topic read a/#\ntopic deny a/secret/#\n")
BAD_ACL = ACL.replace("topic write a/#\n", "topic scribble a/#\n", 1)  # line 4

BAD_CREDENTIALS = 4


def _files(tmp_path: Path) -> tuple[Path, Path]:
    passwords = tmp_path / "passwd"
    for user in ("alice", "carol"):
        set_password(passwords, user, f"{user}-pw")
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    return passwords, acl


async def _client(port: int, user: str) -> tuple[RawClient, int]:
    client = await RawClient.open(port)
    _, code = await client.connect(f"{user}-client", username=user, password=f"{user}-pw")
    return client, code


async def test_sighup_applies_new_users_and_a_tighter_acl_to_new_and_existing_clients(
    tmp_path: Path, start_fleet_broker: Callable[..., FleetBroker]
) -> None:
    """After SIGHUP an added user connects, a removed user is disconnected and refused, and a
    subscription the new ACL denies stops receiving, while the broker keeps running."""
    passwords, acl = _files(tmp_path)
    broker = start_fleet_broker(
        "--port", "0", "--ws-port", "0", "--password-file", passwords, "--acl-file", acl
    )
    alice, code = await _client(broker.port, "alice")
    assert code == 0
    assert await alice.subscribe(("a/secret/#", 0), ("a/open", 0)) == [0, 0]
    carol, code = await _client(broker.port, "carol")
    assert code == 0
    refused, code = await _client(broker.port, "bob")
    assert code == BAD_CREDENTIALS
    await refused.close()

    set_password(passwords, "bob", "bob-pw")
    passwords.write_text(
        "".join(f"{line}\n" for line in passwords.read_text().splitlines() if "carol" not in line)
    )
    acl.write_text(TIGHTER)
    broker.proc.signal(signal.SIGHUP)
    broker.proc.stderr.wait_for("reload: ACL file")
    assert broker.proc.stderr.wait_for("disconnected 1 clients it no longer accepts") >= 0
    assert broker.proc.stderr.wait_for("removed 1 subscriptions it denies") >= 0

    await carol.expect_closed()
    again, code = await _client(broker.port, "carol")
    assert code == BAD_CREDENTIALS
    await again.close()
    bob, code = await _client(broker.port, "bob")
    assert code == 0
    bob.publish("a/secret/x", b"hidden")
    bob.publish("a/open", b"seen")
    received = await alice.read_publish()
    assert (received.topic, received.payload) == ("a/open", b"seen")
    for client in (alice, carol, bob):
        await client.close()
    broker.shutdown()


async def test_sighup_with_a_bad_file_keeps_the_old_rules_and_logs_one_line(
    tmp_path: Path, start_fleet_broker: Callable[..., FleetBroker]
) -> None:
    """A password file and an ACL file that fail to parse each log one line naming file:line, and
    the rules in force stay: the same users connect and the same subscription still receives."""
    passwords, acl = _files(tmp_path)
    broker = start_fleet_broker(
        "--port", "0", "--ws-port", "0", "--password-file", passwords, "--acl-file", acl
    )
    alice, code = await _client(broker.port, "alice")
    assert code == 0
    assert await alice.subscribe(("a/#", 0)) == [0]

    passwords.write_text(passwords.read_text() + "mallory\n")  # line 3: no hash
    acl.write_text(BAD_ACL)
    start = len(broker.proc.stderr.lines)
    broker.proc.signal(signal.SIGHUP)
    first = broker.proc.stderr.wait_for(f"{acl}:4:", start=start)
    lines = broker.proc.stderr.lines[start : first + 1]
    kept = [line for line in lines if "kept the previous" in line]
    assert len(kept) == 2, lines
    assert f"{passwords}:3: expected username:hash" in kept[0]
    assert len([line for line in lines if str(acl) in line]) == 1, lines

    carol, code = await _client(broker.port, "carol")
    assert code == 0
    carol.publish("a/still", b"allowed")
    received = await alice.read_publish()
    assert (received.topic, received.payload) == ("a/still", b"allowed")
    for client in (alice, carol):
        await client.close()
    broker.shutdown()


async def test_sighup_without_files_leaves_the_broker_and_its_sessions_running(
    start_fleet_broker: Callable[..., FleetBroker],
) -> None:
    """SIGHUP to a broker with no password or ACL file (it used to kill it) logs that there is nothing
    to reload, and a connected subscriber keeps receiving."""
    broker = start_fleet_broker("--port", "0", "--ws-port", "0")
    subscriber = await RawClient.open(broker.port)
    await subscriber.connect("stays")
    assert await subscriber.subscribe(("t", 0)) == [0]
    broker.proc.signal(signal.SIGHUP)
    broker.proc.stderr.wait_for("reload: no password file and no ACL file to reload")
    publisher = await RawClient.open(broker.port)
    await publisher.connect("pub")
    publisher.publish("t", b"after")
    assert (await subscriber.read_publish()).payload == b"after"
    for client in (subscriber, publisher):
        await client.close()
    broker.shutdown()
