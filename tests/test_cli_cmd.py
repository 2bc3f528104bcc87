"""`fleet cmd` as a real subprocess against simulated devices on real brokers (the embedded one and
Mosquitto): MQTT 5 request/response for v5 devices, cmd/ack for 3.1.1 ones, and its exit codes;
`fleet run -V` and the MQTT 5 rows of `fleet run`."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from broker.auth import set_password
from fleet.credentials import Credentials
from fleet.simulator import Target, simulate
from fleet.transport import Endpoint
from tests.conftest import BrokerFactory
from tests.fleet.test_mqtt5_devices import observe5
from tests.fleet.test_simulator import fleet, ids, running
from tests.procs import CHILD_ENV, FleetBroker, fleet_argv, run

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "mqtt5-fleet.toml"
TIMEOUT = 30.0


async def fleet_cmd(port: int, *args: str) -> tuple[int, str, str]:
    """Run `fleet cmd ARGS --broker mqtt://127.0.0.1:PORT` to completion (bounded); its exit status,
    stdout and stderr (the child is killed if it overruns)."""
    proc = await asyncio.create_subprocess_exec(
        *fleet_argv("cmd", *args, "--broker", f"mqtt://127.0.0.1:{port}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=CHILD_ENV,
    )
    try:
        async with asyncio.timeout(TIMEOUT):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_fleet_cmd_round_trips_with_v5_and_3_1_1_devices(port: int) -> None:
    """A v5 device answers fleet cmd on the request's response topic, a 3.1.1 device on cmd/ack."""
    config = fleet({"name": "five", "count": 1, "protocol": "5"}, {"name": "old", "count": 1})
    five, old = ids(config)
    async with observe5(port) as observer, running(config, port):
        for device in (five, old):
            await observer.wait(lambda d=device: observer.births(d), f"the birth of {device}")
        status, out, err = await fleet_cmd(port, five, "ping")
        assert status == 0, err
        ack = json.loads(out)
        assert ack["ok"] is True
        assert "pong" in ack
        (command,) = observer.of(five, "cmd")
        assert command.body == {"id": ack["id"], "op": "ping"}
        assert command.properties.ResponseTopic == f"fleet/{five}/cmd/response/{ack['id']}"
        assert command.properties.CorrelationData == ack["id"].encode()
        await observer.wait(
            lambda: observer.of(five, "cmd/response/" + ack["id"]), "the reply on the response topic"
        )
        assert observer.of(five, "ack") == []

        status, out, err = await fleet_cmd(port, old, "set_interval", "0.5")
        assert status == 0, err
        ack = json.loads(out)
        assert ack == {"id": ack["id"], "ok": True}
        await observer.wait(lambda: observer.of(old, "ack"), "the ack on cmd/ack")
        (command,) = observer.of(old, "cmd")
        assert command.body["value"] == 0.5
        assert not hasattr(command.properties, "ResponseTopic")


async def test_fleet_cmd_speaks_the_version_it_is_told(port: int) -> None:
    """-V mqttv311 commands a v5 device without request/response; -V mqttv5 sends a response topic."""
    config = fleet({"name": "five", "count": 1, "protocol": "5"})
    (five,) = ids(config)
    async with observe5(port) as observer, running(config, port):
        await observer.wait(lambda: observer.births(five), "the birth")
        status, out, err = await fleet_cmd(port, five, "ping", "-V", "mqttv311")
        assert status == 0, err
        await observer.wait(lambda: observer.of(five, "ack"), "the ack on cmd/ack")
        assert observer.of(five, "ack")[0].body["id"] == json.loads(out)["id"]
        status, out, err = await fleet_cmd(port, five, "ping", "-V", "mqttv5")
        assert status == 0, err
        assert len(observer.of(five, "ack")) == 1
        assert observer.of(five, "cmd")[1].properties.ResponseTopic.startswith(f"fleet/{five}/cmd/response/")


async def test_fleet_cmd_exits_2_on_a_refusal_and_1_without_an_ack(port: int) -> None:
    """An ack with ok false exits 2 and prints the ack; a device that never answers exits 1 at --timeout."""
    config = fleet({"name": "five", "count": 1, "protocol": "5"})
    (five,) = ids(config)
    async with observe5(port) as observer, running(config, port):
        await observer.wait(lambda: observer.births(five), "the birth")
        status, out, err = await fleet_cmd(port, five, "set_interval", "-1")
        assert status == 2, err
        assert json.loads(out)["ok"] is False
        assert "value must be more than 0" in err
    status, out, err = await fleet_cmd(port, "nobody-here", "ping", "--timeout", "0.5")
    assert status == 1, err
    assert out == ""
    assert "no ack from nobody-here within 0.5s" in err


def test_fleet_cmd_without_a_broker_fails_in_one_line() -> None:
    """A broker that cannot be reached is exit 1 with one line naming it, no traceback."""
    result = run([*fleet_argv("cmd", "d", "ping", "--broker", "mqtt://127.0.0.1:9", "--timeout", "5")])
    assert result.returncode == 1, result.stderr
    assert "127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_v_mqttv311_refuses_a_config_with_mqtt5_options(tmp_path: Path) -> None:
    """`fleet run -V mqttv311` on a config with MQTT 5 options is exit 1 naming the group's field."""
    config = tmp_path / "five.toml"
    config.write_text('[[groups]]\nname = "a"\ncount = 1\nprotocol = "5"\nwill_delay = 5\n')
    result = run([*fleet_argv("run", config, "-V", "mqttv311", "--duration", "1")])
    assert result.returncode == 1, result.stderr
    assert f"{config} with -V mqttv311: groups[0].will_delay: an MQTT 5 option" in result.stderr


def test_run_shows_what_the_mqtt5_options_did(fleet_broker_process: FleetBroker, tmp_path: Path) -> None:
    """`fleet run configs/mqtt5-fleet.toml` against a broker reports the bytes its topic aliases saved."""
    report = tmp_path / "report.json"
    url = f"mqtt://127.0.0.1:{fleet_broker_process.port}"
    result = run(
        [*fleet_argv("run", CONFIG, "--broker", url, "--duration", "5", "--report", report)], timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert "topic alias bytes saved" in result.stdout
    groups = json.loads(report.read_text())["groups"]
    assert groups["meter"]["alias_bytes_saved"] > 0
    assert groups["legacy"]["alias_bytes_saved"] == 0


async def test_fleet_cmd_logs_in_with_the_client_options(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    """Against a broker with a password file, `fleet cmd -u -P` gets its ack; without a login it exits 1."""
    passwords = tmp_path / "passwd"
    set_password(passwords, "operator", "s3cret")
    config = fleet({"name": "five", "count": 1, "protocol": "5"})
    (five,) = ids(config)
    async with broker_factory(password_file=passwords) as broker:
        login = Credentials(username="operator", password="s3cret")
        target = Target(Endpoint("mqtt", "127.0.0.1", broker.port), login)
        stop, ready = asyncio.Event(), asyncio.Event()
        fleet_run = asyncio.create_task(simulate(config, target, stop=stop, ready=ready.set))
        try:
            async with asyncio.timeout(TIMEOUT):
                await ready.wait()
            status, out, err = await fleet_cmd(broker.port, five, "ping", "-u", "operator", "-P", "s3cret")
            assert status == 0, err
            assert json.loads(out)["ok"] is True
            status, out, err = await fleet_cmd(broker.port, five, "ping")
            assert status == 1, err
            assert "not authorized" in err or "bad user name or password" in err, err
            assert "s3cret" not in out + err
        finally:
            stop.set()
            async with asyncio.timeout(TIMEOUT):
                await fleet_run
