"""`fleet stress` end to end on small fleets: the embedded broker (a `fleet broker` child process) and
Mosquitto, the fault proxy in the path, the observer's account, and the gates of the real CLI."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fleet.errors import FleetError
from fleet.schema import FleetConfig
from fleet.simulator import Target
from fleet.stress.accounting import Account
from fleet.stress.runner import StressResult, run_stress
from fleet.stress.scenario import SCENARIOS, Stage, StressSettings
from fleet.transport import Endpoint
from tests.procs import MOSQUITTO, FleetBroker, Mosquitto, Paho, Proc, fleet_argv, free_port, run

RUN_TIMEOUT = 60.0  # the bound on one whole stress run; a passing run takes a few seconds


def fleet(*groups: dict[str, Any]) -> FleetConfig:
    """Groups with ids unique to this test, fast telemetry, short keepalive and quick backoff."""
    tag = uuid.uuid4().hex[:6]
    made = [
        {
            "id": f"{group['name']}-{tag}-{{index}}",
            "interval": 0.1,
            "jitter": 0,
            "keepalive": 5,
            "backoff": {"initial": 0.05, "max": 0.5},
            **group,
        }
        for group in groups
    ]
    return FleetConfig.model_validate({"seed": 5, "groups": made})


PERSISTENT = {"name": "p", "count": 12, "qos": {"telemetry": 1}, "clean_session": False}
EXACTLY_ONCE = {"name": "x", "count": 4, "qos": {"telemetry": 2}, "clean_session": False}
AT_MOST_ONCE = {"name": "z", "count": 4}


def settings(
    scenario: str | None = None, *stages: Stage, duration: float = 3.0, persistence: bool = True
) -> StressSettings:
    return StressSettings(
        scenario=scenario, duration=duration, drain=5.0, fraction=0.5, stages=stages, persistence=persistence
    )


async def stress(
    config: FleetConfig, plan: StressSettings, target: Target | None = None, **options: Any
) -> StressResult:
    async with asyncio.timeout(RUN_TIMEOUT):
        return await run_stress(config, plan, target=target, **options)


def on(mosquitto: Mosquitto) -> Target:
    return Target(Endpoint("mqtt", "127.0.0.1", mosquitto.port))


async def test_clean_run_reports_zero_violations() -> None:
    """Without faults every message of every QoS arrives once, in order, and nothing is a violation."""
    config = fleet(PERSISTENT, EXACTLY_ONCE, AT_MOST_ONCE)
    result = await stress(config, settings("clean"))
    account = result.account
    assert account.violations == []
    assert [row.key for row in account.telemetry] == ["qos0-clean", "qos1-persistent", "qos2-persistent"]
    for row in account.telemetry:
        assert row.sent > row.devices * 10, row
        assert (row.delivered, row.lost, row.duplicated, row.out_of_order) == (row.sent, 0, 0, 0), row
        assert row.latency.count == row.sent
    assert (account.wills_expected, account.wills_received, account.wills_spurious) == (0, 0, 0)
    assert result.broker_cpu_s is not None
    assert result.broker_cpu_s > 0
    assert result.broker_peak_rss is not None
    assert result.broker_peak_rss > 1_000_000
    assert result.meta["observer"] == {
        "messages": result.meta["observer"]["messages"],
        "connects": 1,
        "sessions_lost": 0,
        "protocol": "3.1.1",
        "away_s": [],
    }


@pytest.mark.parametrize("broker", ["embedded", "mosquitto"])
async def test_storm_keeps_every_promise(broker: str, request: pytest.FixtureRequest) -> None:
    """Half the devices drop abruptly at once: one will each, sessions resumed, no QoS 1/2 message lost."""
    config = fleet(PERSISTENT, EXACTLY_ONCE)
    target, options = None, {}
    if broker == "mosquitto":
        mosquitto: Mosquitto = request.getfixturevalue("mosquitto_broker")
        target, options = on(mosquitto), {"broker_pid": mosquitto.proc.pid}
    result = await stress(config, settings("storm"), target, **options)
    account = result.account
    dropped = round(16 * 0.5)
    assert account.violations == []
    assert (account.wills_expected, account.wills_received, account.wills_missing) == (dropped, dropped, 0)
    assert account.sessions_resumed == dropped
    assert account.reconnect.count == dropped
    assert all(row.lost == 0 for row in account.telemetry)
    assert result.broker_cpu_s is not None


async def test_loss_injected_by_the_proxy_is_caught() -> None:
    """Connections made half-open by the proxy swallow telemetry: the report counts each lost seq, as
    allowed at QoS 0, and at QoS 1 as never acknowledged by the broker, so not its violation."""
    config = fleet({**AT_MOST_ONCE, "count": 6}, {**PERSISTENT, "count": 4})
    result = await stress(config, settings(None, Stage(at=1.0, action="half-open", fraction=1.0)))
    qos0, qos1 = result.account.telemetry
    assert result.meta["proxied_groups"] == ["p", "z"]
    assert result.meta["proxy"]["z"]["half_open"] == 6
    assert qos0.sent > qos0.delivered > 0
    assert qos0.lost == qos0.sent - qos0.delivered
    assert qos0.lost >= 6 * 10  # 2 s of 10 messages a second each, at least
    assert not qos0.loss_is_violation
    assert qos1.lost >= 4 * 10
    assert qos1.unacked == qos1.lost
    assert qos1.lost_by_broker == 0
    assert result.account.violations == []


async def test_proxy_latency_shows_in_the_delivery_latency() -> None:
    """200 ms of added latency through the proxy moves the median delivery latency above 200 ms."""
    config = fleet({**PERSISTENT, "count": 4})
    result = await stress(
        config, settings(None, Stage(at=0.0, action="latency", latency_ms=200), duration=2.0)
    )
    (row,) = result.account.telemetry
    p50 = row.latency.percentile(50)
    assert p50 is not None
    assert 0.2 * 0.97 <= p50 < 1.0  # percentiles are histogram bucket midpoints, within about 2%
    assert row.lost == 0


async def test_broker_restart_reports_that_the_embedded_broker_loses_sessions() -> None:
    """Without persistence the embedded broker keeps sessions in memory only: after a restart none is
    present, as reported, and that is not counted as a violation."""
    config = fleet({**PERSISTENT, "count": 6})
    # The restart comes at a third of the run; a new broker process can take 2 s or more to listen on
    # a busy machine, and the devices and the observer must reconnect after that, before the run ends.
    result = await stress(config, settings("broker-restart", duration=9.0, persistence=False))
    account = result.account
    assert account.broker_restarted
    assert not account.broker_persistent
    assert account.sessions_lost == 6, result.meta["timeline"]
    assert account.sessions_resumed == 0
    assert account.reconnect.count == 6
    assert result.meta["observer"]["sessions_lost"] == 1
    assert not any("sessions were not present" in violation for violation in account.violations)


def check_flapping(account: Account) -> None:
    assert account.wills_expected >= 8  # half the online devices, each round
    assert account.wills_received == account.wills_expected
    assert account.sessions_resumed == account.reconnect.count >= 8


def check_silent(account: Account) -> None:
    assert account.wills_expected == 8
    assert account.wills_received == 8  # the broker noticed each silence within 1.5 x keepalive


def check_reset(account: Account) -> None:
    assert account.lost_connections == 8
    assert account.sessions_resumed == 8


def check_no_loss(account: Account) -> None:
    assert all(row.lost == 0 for row in account.telemetry)


@pytest.mark.parametrize(
    ("scenario", "check"),
    [
        ("flapping", check_flapping),
        ("silent", check_silent),
        ("reset", check_reset),
        ("partition", check_no_loss),
        ("bandwidth", check_no_loss),
    ],
)
async def test_each_builtin_scenario_keeps_the_promises(
    scenario: str, check: Callable[[Account], None]
) -> None:
    """Flapping, silence, resets, a partition and a bandwidth cap each do their harm, and a broker that
    keeps its promises shows no violation."""
    config = fleet({**PERSISTENT, "count": 16, "keepalive": 1})
    result = await stress(config, settings(scenario, duration=3.0))
    assert result.account.violations == []
    check(result.account)


async def test_proxy_resets_on_mosquitto_keep_the_promises(mosquitto_broker: Mosquitto) -> None:
    """The fault proxy works in front of any broker: resets on Mosquitto, every session resumed, no loss."""
    config = fleet({**PERSISTENT, "count": 16})
    result = await stress(
        config, settings("reset"), on(mosquitto_broker), broker_pid=mosquitto_broker.proc.pid
    )
    assert result.account.violations == []
    check_reset(result.account)
    check_no_loss(result.account)


async def test_restart_broker_against_an_external_broker_is_refused(mosquitto_broker: Mosquitto) -> None:
    """An external broker that the run did not start cannot be restarted: an error before any run."""
    with pytest.raises(FleetError, match="restart-broker needs the embedded broker, or --broker-cmd"):
        await stress(fleet(AT_MOST_ONCE), settings("broker-restart"), on(mosquitto_broker))


def check_kept_everything(result: StressResult, devices: int) -> None:
    """Every persistent session resumed after the restart and no acknowledged QoS 1/2 message lost:
    the expectation for a broker that persists."""
    account = result.account
    assert account.broker_restarted
    assert account.broker_persistent
    assert (account.sessions_resumed, account.sessions_lost) == (devices, 0), result.meta["timeline"]
    assert all(row.lost_by_broker == 0 for row in account.telemetry), account.telemetry
    assert result.meta["observer"]["sessions_lost"] == 0


@pytest.mark.parametrize("scenario", ["broker-restart", "broker-crash"])
async def test_the_embedded_broker_with_persistence_keeps_every_session_and_message(scenario: str) -> None:
    """With its store (a fresh temporary one by default), the embedded broker stopped by SIGTERM or
    killed by SIGKILL resumes every persistent session and loses no acknowledged QoS 1/2 message."""
    config = fleet({**PERSISTENT, "count": 6}, {**EXACTLY_ONCE, "count": 2})
    # The restart comes at a third of the run; a new broker process can take 2 s or more to listen on
    # a busy machine, and every device must reconnect after that, before the run ends.
    result = await stress(config, settings(scenario, duration=9.0))
    check_kept_everything(result, 8)
    assert result.account.violations == []
    assert any("SIGKILL" in line for line in result.meta["timeline"]) == (scenario == "broker-crash")


async def test_broker_cmd_restarts_an_external_broker(tmp_path: Path) -> None:
    """With --broker-cmd the run starts Mosquitto (persistence true) itself and restarts it: every
    persistent session resumes, as with the embedded broker."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        # As root, Mosquitto would switch to its own user, which may not write in tmp_path.
        f"persistence_location {tmp_path}/\nuser root\nlog_dest none\n"
    )
    config = fleet({**PERSISTENT, "count": 6})
    target = Target(Endpoint("mqtt", "127.0.0.1", port))
    result = await stress(
        config, settings("broker-restart", duration=8.0), target, broker_cmd=[MOSQUITTO, "-c", str(conf)]
    )
    check_kept_everything(result, 6)
    assert result.broker_cpu_s is not None
    assert not any("lost in persistent sessions" in v for v in result.account.violations)


# The real CLI

CONFIG = """\
seed = 2

[stress]
scenario = "storm"
duration = 3
drain = 5
fraction = 0.5

[[groups]]
name = "p"
count = 10
id = "p-{tag}-{{index}}"
interval = 0.1
qos = {{ telemetry = 1 }}
clean_session = false
keepalive = 5

[groups.backoff]
initial = 0.05
max = 0.5
"""


def stress_cli(tmp_path: Path, *gates: str) -> tuple[int, str, Path, Path]:
    config = tmp_path / "stress.toml"
    config.write_text(CONFIG.format(tag=uuid.uuid4().hex[:6]))
    report, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    argv = fleet_argv("stress", config, "--report", report, "--junit", junit, *gates)
    done = run(argv, timeout=RUN_TIMEOUT)
    return done.returncode, done.stderr, report, junit


def test_gates_pass_with_exit_code_zero(tmp_path: Path) -> None:
    """`fleet stress` with gates the storm meets exits 0, and writes a JSON report and passing JUnit XML."""
    code, stderr, report, junit = stress_cli(
        tmp_path, "--max-loss-qos1", "0", "--max-reconnect-p99", "30s", "--require-wills"
    )
    assert code == 0, stderr
    data = json.loads(report.read_text())
    assert [gate["passed"] for gate in data["gates"]] == [True, True, True]
    assert data["complete"] is True
    assert data["delivery"]["wills"]["expected"] == 5
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("5", "0")


def test_a_crossed_gate_flips_the_exit_code(tmp_path: Path) -> None:
    """A reconnect p99 limit of 0 ms cannot be met: exit code 3, the gate named on stderr and in JUnit."""
    code, stderr, report, junit = stress_cli(tmp_path, "--max-reconnect-p99", "0ms", "--max-loss-qos1", "0")
    assert code == 3, stderr
    assert "fleet stress: gate max-reconnect-p99 failed: reconnect p99" in stderr
    assert "Traceback" not in stderr
    failures = [
        case.get("name")
        for case in ET.parse(junit).getroot().iter("testcase")
        if case.find("failure") is not None
    ]
    assert failures == ["max-reconnect-p99"]
    gates = json.loads(report.read_text())["gates"]
    assert [(gate["name"], gate["passed"]) for gate in gates] == [
        ("max-loss-qos1", True),
        ("max-reconnect-p99", False),
    ]


def test_a_bad_stage_is_a_one_line_error(tmp_path: Path) -> None:
    """A stage with a bad fraction stops `fleet stress` (and fails `fleet validate`), naming file, field
    and reason."""
    config = tmp_path / "bad.toml"
    config.write_text(
        '[[groups]]\nname = "a"\ncount = 1\n[[stress.stages]]\nat = 1\naction = "drop"\nfraction = 2\n'
    )
    done = run(fleet_argv("stress", config), timeout=RUN_TIMEOUT)
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == f"Error: {config}: stress.stages[0].fraction: Input should be less than or equal to 1"
    )
    validated = run(fleet_argv("validate", config), timeout=RUN_TIMEOUT)
    assert validated.returncode == 1
    assert validated.stderr.strip() == done.stderr.strip().removeprefix("Error: ")


def test_an_unknown_scenario_is_a_usage_error(tmp_path: Path) -> None:
    """`--scenario` with a name that is not built in exits 2, like any bad option, and lists the names."""
    config = tmp_path / "ok.toml"
    config.write_text('[[groups]]\nname = "a"\ncount = 1\n')
    done = run(fleet_argv("stress", config, "--scenario", "tornado"), timeout=RUN_TIMEOUT)
    assert done.returncode == 2
    assert "Invalid value for '--scenario': 'tornado' is not one of 'clean', 'storm'," in done.stderr


def test_help_lists_the_built_in_scenarios() -> None:
    """`fleet stress --help` shows --scenario's choices: every scenario of the registry, in its order."""
    done = run(fleet_argv("stress", "--help"), timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done
    assert f"--scenario [{'|'.join(SCENARIOS)}]" in done.stdout


def online_devices(observer: Paho, tag: str, count: int) -> None:
    """Wait (bounded) until `count` devices whose ids hold `tag` have announced themselves online."""
    online: set[str] = set()
    deadline = time.monotonic() + RUN_TIMEOUT
    while len(online) < count:
        assert time.monotonic() < deadline, f"only {len(online)} of {count} devices came online"
        message = observer.message()
        if tag in message.topic and json.loads(message.payload)["online"]:
            online.add(message.topic)


def test_an_interrupted_run_passes_no_gate(
    tmp_path: Path,
    start_fleet_broker: Callable[..., FleetBroker],
    paho_client: Callable[..., Paho],
    procs: Callable[..., Proc],
) -> None:
    """SIGINT once the fleet is online cuts a 60 s run short: exit 130, 'cut short' on stderr,
    `complete: false` in the table, the JSON and JUnit, and no gate passes, though nothing was lost."""
    broker = start_fleet_broker("--port", 0, "--ws-port", 0)
    tag = uuid.uuid4().hex[:6]
    config = tmp_path / "stress.toml"
    config.write_text(CONFIG.format(tag=tag).replace("duration = 3\n", "duration = 60\n"))
    observer = paho_client(f"births-{tag}")
    observer.connect(broker.port)
    observer.subscribe("fleet/+/status", 1)
    report, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    proc = procs(
        *fleet_argv("stress", config, "--broker", f"mqtt://127.0.0.1:{broker.port}", "--report", report,
                    "--junit", junit, "--max-loss-qos1", "0", "--require-wills")
    )  # fmt: skip
    online_devices(observer, tag, 10)

    proc.signal(signal.SIGINT)

    assert proc.wait(RUN_TIMEOUT) == 128 + signal.SIGINT, proc.describe()
    assert "fleet stress: the run was cut short by SIGINT after" in proc.stderr.text, proc.describe()
    assert "Traceback" not in proc.stderr.text, proc.describe()
    assert "cut short by SIGINT" in proc.stdout.text, proc.describe()
    data = json.loads(report.read_text())
    assert data["complete"] is False
    assert data["meta"]["duration_s"] < 60
    assert [(gate["name"], gate["passed"]) for gate in data["gates"]] == [
        ("max-loss-qos1", False),
        ("require-wills", False),
    ]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    failures = [case.get("name") for case in suite.iter("testcase") if case.find("failure") is not None]
    assert failures == ["max-loss-qos1", "require-wills", "complete"]


def test_broker_cmd_without_broker_is_refused(tmp_path: Path) -> None:
    """--broker-cmd needs --broker (the URL its broker listens on): a usage error before any run."""
    config = tmp_path / "stress.toml"
    config.write_text(CONFIG.format(tag=uuid.uuid4().hex[:6]))
    done = run(fleet_argv("stress", config, "--scenario", "broker-crash", "--broker-cmd", "mosquitto"))
    assert done.returncode == 2, done.stderr
    assert "--broker-cmd" in done.stderr
    assert "--broker with the URL it listens on" in done.stderr
