"""The pure parts of `fleet stress`: the delivery account by (device, seq), the gates, and the
[stress] table with its stages and built-in scenarios."""

from __future__ import annotations

from pathlib import Path

import pytest

import fleet.stress.accounting
import fleet.stress.scenario
from fleet.errors import ConfigError
from fleet.report import Histogram
from fleet.schema import FleetConfig, load_fleet_config
from fleet.stress.accounting import Account, DeviceSpec, Gates, Ledger, account
from fleet.stress.scenario import (
    MQTT5_SCENARIOS,
    SCENARIOS,
    builtin_stages,
    load_stress_settings,
    proxied_groups,
)

PERSISTENT_QOS1 = DeviceSpec("a", 1, persistent=True, will=True)
CLEAN_QOS0 = DeviceSpec("b", 0, persistent=False, will=True)
QOS2 = DeviceSpec("c", 2, persistent=True, will=False)


def reconnects(*seconds: float) -> Histogram:
    histogram = Histogram()
    for value in seconds:
        histogram.add(value)
    return histogram


def run(
    ledger: Ledger,
    devices: dict[str, DeviceSpec],
    sent: dict[str, int],
    *,
    unacked: dict[str, set[int]] | None = None,
    ends: dict[tuple[str, str], int] | None = None,
    connects: dict[tuple[bool, bool, bool], int] | None = None,
    reconnect: Histogram | None = None,
) -> Account:
    return account(ledger, devices, sent, unacked or {}, ends or {}, connects or {}, reconnect or Histogram())


def test_all_names_are_defined() -> None:
    """Every name in the __all__ of the pure stress modules is defined."""
    for module in (fleet.stress.accounting, fleet.stress.scenario):
        assert all(hasattr(module, name) for name in module.__all__)


def test_every_message_delivered_once_in_order_is_a_clean_account() -> None:
    """Seqs 0..n-1 received once each, in order: nothing lost, duplicated or reordered, no violation."""
    ledger = Ledger()
    for seq in range(5):
        ledger.telemetry("d1", seq, 0.01)
    result = run(ledger, {"d1": PERSISTENT_QOS1}, {"d1": 5})
    (row,) = result.telemetry
    assert (row.sent, row.delivered, row.lost, row.duplicated, row.out_of_order) == (5, 5, 0, 0, 0)
    assert row.latency.count == 5
    assert result.violations == []


def test_loss_duplicates_and_reordering_are_counted_by_device_and_seq() -> None:
    """A gap is a loss, a repeat a duplicate, a seq below the highest seen a reordering."""
    ledger = Ledger()
    for seq in (0, 2, 1, 2, 4):
        ledger.telemetry("d1", seq, 0.01)
    ledger.telemetry("d2", 0, 0.01)  # d2 sent 3: seqs 1 and 2 lost
    result = run(ledger, {"d1": PERSISTENT_QOS1, "d2": PERSISTENT_QOS1}, {"d1": 5, "d2": 3})
    (row,) = result.telemetry
    assert row.sent == 8
    assert row.delivered == 5
    assert row.lost == 3  # d1 seq 3, d2 seqs 1 and 2
    assert row.duplicated == 1
    assert row.out_of_order == 1
    assert result.violations == ["3 acknowledged QoS 1 messages lost in persistent sessions"]


def test_qos0_loss_is_allowed_and_qos2_duplicates_are_violations() -> None:
    """Loss at QoS 0 is what the QoS allows; a QoS 2 duplicate breaks exactly-once."""
    ledger = Ledger()
    ledger.telemetry("b1", 0, 0.01)
    ledger.telemetry("c1", 0, 0.01)
    ledger.telemetry("c1", 0, 0.01)
    result = run(ledger, {"b1": CLEAN_QOS0, "c1": QOS2}, {"b1": 4, "c1": 1})
    qos0 = result.qos(0)[0]
    qos2 = result.qos(2)[0]
    assert (qos0.lost, qos0.loss_is_violation) == (3, False)
    assert (qos2.duplicated, qos2.duplicate_is_violation) == (1, True)
    assert result.violations == ["1 QoS 2 messages duplicated"]


def test_loss_the_broker_never_acknowledged_is_not_its_violation() -> None:
    """Messages still unacknowledged in the device's session count as lost, unacked, not as a violation."""
    ledger = Ledger()
    ledger.telemetry("d1", 0, 0.01)
    result = run(ledger, {"d1": PERSISTENT_QOS1}, {"d1": 3}, unacked={"d1": {1, 2}})
    (row,) = result.telemetry
    assert (row.lost, row.unacked, row.lost_by_broker) == (2, 2, 0)
    assert result.violations == []


def test_wills_expected_missing_and_spurious() -> None:
    """One will per abrupt or silent end; a will beyond those and the lost connections is spurious."""
    ledger = Ledger()
    ledger.status("d1", online=False, reason="lost")  # d1: abrupt + silent, one will: one missing
    for _ in range(2):
        ledger.status("d2", online=False, reason="lost")  # d2: one lost connection, two wills: one spurious
    ledger.status("d3", online=False, reason="clean")
    ledger.status("d3", online=True, reason=None)
    devices = {"d1": PERSISTENT_QOS1, "d2": PERSISTENT_QOS1, "d3": PERSISTENT_QOS1}
    ends = {("d1", "abrupt"): 1, ("d1", "silent"): 1, ("d2", "lost"): 1, ("d3", "clean"): 1}
    result = run(ledger, devices, {}, ends=ends)
    assert (result.wills_expected, result.wills_received) == (2, 3)
    assert (result.wills_missing, result.wills_spurious, result.lost_connections) == (1, 1, 1)
    assert ledger.statuses["d3", "clean"] == 1


def test_sessions_present_is_checked_against_the_session_kind() -> None:
    """A persistent reconnect without its session is a violation, unless the broker restarted."""
    connects = {
        (True, True, True): 4,
        (True, True, False): 2,
        (False, True, True): 1,
        (True, False, False): 9,
    }
    result = run(Ledger(), {}, {}, connects=connects)
    assert (result.sessions_resumed, result.sessions_lost, result.sessions_wrongly_present) == (4, 2, 1)
    assert result.violations == [
        "2 persistent sessions were not present on reconnect",
        "1 clean sessions reported present",
    ]
    restarted = account(Ledger(), {}, {}, {}, {}, connects, Histogram(), broker_restarted=True)
    assert restarted.violations == ["1 clean sessions reported present"]


def test_gates_pass_and_fail_on_their_thresholds() -> None:
    """Each gate compares one figure with its limit; gates left out are not checked."""
    ledger = Ledger()
    ledger.telemetry("c1", 0, 0.01)
    ledger.telemetry("c1", 0, 0.01)
    ledger.status("d1", online=False, reason="lost")
    devices = {"d1": PERSISTENT_QOS1, "c1": QOS2}
    result = run(
        ledger, devices, {"d1": 2, "c1": 1}, ends={("d1", "abrupt"): 1}, reconnect=reconnects(0.1, 2.0)
    )
    assert Gates().check(result) == []
    checked = Gates(max_loss_qos1=1, max_dup_qos2=0, max_reconnect_p99=5.0, require_wills=True).check(result)
    assert [(gate.name, gate.passed) for gate in checked] == [
        ("max-loss-qos1", False),
        ("max-dup-qos2", False),
        ("max-reconnect-p99", True),
        ("require-wills", True),
    ]
    assert checked[0].detail == "2 acknowledged QoS 1 messages lost in persistent sessions (limit 1)"
    assert not Gates(max_reconnect_p99=1.0).check(result)[0].passed


def test_no_gate_passes_on_a_run_cut_short() -> None:
    """On an incomplete run every gate fails, even one its figures meet, and says why."""
    result = run(Ledger(), {"d1": PERSISTENT_QOS1}, {"d1": 0})
    gates = Gates(max_loss_qos1=0, max_dup_qos2=0, max_reconnect_p99=5.0, require_wills=True)
    assert all(gate.passed for gate in gates.check(result))
    checked = gates.check(result, complete=False)
    assert [gate.passed for gate in checked] == [False, False, False, False]
    assert checked[0].detail == (
        "the run was cut short; on what it saw: "
        "0 acknowledged QoS 1 messages lost in persistent sessions (limit 0)"
    )


# The [stress] table

FLEET = '[[groups]]\nname = "a"\ncount = 2\nkeepalive = 2\n[[groups]]\nname = "b"\ncount = 1\nkeepalive = 2\n'


def load(tmp_path: Path, text: str, scenario: str | None = None) -> fleet.stress.scenario.StressSettings:
    path = tmp_path / "s.toml"
    path.write_text(FLEET + text)
    return load_stress_settings(path, load_fleet_config(path), scenario)


def test_stages_load_in_order_with_their_defaults(tmp_path: Path) -> None:
    """A timeline of stages loads as values; fault stages route their groups through the proxy."""
    settings = load(
        tmp_path,
        "[stress]\nduration = 20\n"
        '[[stress.stages]]\nat = 5\naction = "drop"\ngroup = "a"\nfraction = 0.5\n'
        '[[stress.stages]]\nat = 8\naction = "latency"\ngroup = "b"\nlatency_ms = 100\nduration = 4\n',
    )
    drop, latency = settings.timeline
    assert (drop.action, drop.group, drop.fraction, drop.end, drop.offline) == ("drop", "a", 0.5, "abrupt", 0)
    assert latency.until == 12
    config = FleetConfig.model_validate({"groups": [{"name": "a", "count": 1}, {"name": "b", "count": 1}]})
    assert proxied_groups(settings.timeline, config) == {"b"}


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        (
            '[[stress.stages]]\nat = 1\naction = "drop"\nfraction = 1.5\n',
            "stress.stages[0].fraction",
            "less than",
        ),
        ('[[stress.stages]]\nat = 1\naction = "explode"\n', "stress.stages[0].action", "Input should be"),
        (
            '[[stress.stages]]\nat = 1\naction = "drop"\ngroup = "z"\n',
            "stress.stages[0].group",
            "no group 'z'",
        ),
        ('[[stress.stages]]\nat = 1\naction = "bandwidth"\n', "stress.stages[0].rate", "needs a rate"),
        (
            '[[stress.stages]]\nat = 1\naction = "reset"\nduration = 2\n',
            "stress.stages[0].duration",
            "reset stages take only",
        ),
        (
            '[stress]\nduration = 5\n[[stress.stages]]\nat = 9\naction = "drop"\n',
            "stress.stages",
            "not before",
        ),
        ('[stress]\nscenario = "tornado"\n', "stress.scenario", "unknown scenario"),
        ("[stress]\ncolour = 1\n", "stress.colour", "unknown key"),
        (
            '[[stress.stages]]\nat = 1\naction = "drop"\nrate = 10\n',
            "stress.stages[0].rate",
            "drop stages take only action, at, end, fraction, group, offline",
        ),
    ],
)
def test_stress_table_errors_name_file_field_and_reason(
    tmp_path: Path, text: str, where: str, reason: str
) -> None:
    """Each mistake in [stress] is a ConfigError 'file: stress.field.path: reason'."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert caught.value.where == f"{tmp_path / 's.toml'}: {where}"
    assert reason in caught.value.reason


@pytest.mark.parametrize("name", [name for name in SCENARIOS if name not in MQTT5_SCENARIOS])
def test_every_builtin_scenario_fits_in_its_run(tmp_path: Path, name: str) -> None:
    """Each built-in scenario's stages start within the run, and --scenario replaces the config's stages."""
    settings = load(tmp_path, '[stress]\nduration = 12\n[[stress.stages]]\nat = 1\naction = "drop"\n', name)
    assert settings.scenario == name
    assert settings.stages == ()
    assert settings.timeline == builtin_stages(name, 12, 0.3)
    assert all(stage.at < 12 and (stage.until or 0) <= 12 for stage in settings.timeline)


def test_a_silence_the_broker_cannot_notice_in_time_is_an_error(tmp_path: Path) -> None:
    """Silent devices whose 1.5 x keepalive runs past the end of the run would prove nothing: an error."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, "[stress]\nduration = 3\n", "silent")  # keepalive 2: noticed at 1 + 3 s
    assert caught.value.where == f"{tmp_path / 's.toml'}: stress.scenario"
    assert "group 'a' (keepalive 2 s) would not be noticed before the run ends at 3 s" in caught.value.reason
