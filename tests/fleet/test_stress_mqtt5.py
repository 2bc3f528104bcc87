"""`fleet stress` with MQTT 5 devices: the account of will delay, session expiry, message expiry and
Receive Maximum (pure), the MQTT 5 scenarios' checks, and each MQTT 5 scenario run against the
embedded broker and Mosquitto side by side."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

import fleet.stress.mqtt5
from broker.server import Broker
from fleet.errors import ConfigError
from fleet.mqtt import v5
from fleet.mqtt.properties import Properties
from fleet.report import Histogram
from fleet.schema import FleetConfig, load_fleet_config
from fleet.simulator import Target
from fleet.stress.accounting import Account, DeviceSpec, Gates, Ledger, account
from fleet.stress.mqtt5 import Device5, Span, expired, sessions5, spans, wills5
from fleet.stress.observer import RECEIVE_MAXIMUM
from fleet.stress.runner import StressResult, run_stress
from fleet.stress.scenario import MQTT5_SCENARIOS, StressSettings, builtin_stages, load_stress_settings
from fleet.transport import ClientSession, Endpoint, Link, make_connect
from tests.conftest import BrokerFactory
from tests.procs import Mosquitto, fleet_argv, run

RUN_TIMEOUT = 60.0  # the bound on one whole stress run; a passing run takes a few seconds

DELAYED = Device5(will=True, will_delay=3, session_expiry=6, message_expiry=0, interval=0.1)


def test_all_names_are_defined() -> None:
    """Every name in the __all__ of the MQTT 5 account is defined."""
    assert all(hasattr(fleet.stress.mqtt5, name) for name in fleet.stress.mqtt5.__all__)


# Wills against the Will Delay Interval


def test_a_reconnect_within_the_will_delay_owes_no_will_and_a_will_then_is_a_violation() -> None:
    """Back 1 s after an abrupt end with a 3 s will delay: no will is due; one that comes anyway,
    before or after the reconnect, is a violation."""
    own = [Span(0, 10, "abrupt", False, False), Span(11, None, "", False, True)]
    quiet = wills5(DELAYED, own, [], [], until=30)
    assert (quiet.within_delay, quiet.expected, quiet.missing) == (1, 0, 0)
    late = wills5(DELAYED, own, [], [12.0], until=30)
    assert (late.after_reconnect, late.early) == (1, 0)
    early = wills5(DELAYED, own, [], [10.2], until=30)
    assert (early.early, early.after_reconnect) == (1, 0)


def test_a_device_offline_past_its_will_delay_owes_one_will_after_the_delay() -> None:
    """Offline 10 s with a 3 s will delay: one will, due at 3 s; none is missing, an early one and a
    second one are violations."""
    own = [Span(0, 10, "abrupt", False, False), Span(20, None, "", False, True)]
    assert wills5(DELAYED, own, [], [], until=30).missing == 1
    on_time = wills5(DELAYED, own, [], [13.1], until=30)
    assert (on_time.expected, on_time.missing, on_time.early, on_time.spurious) == (1, 0, 0, 0)
    assert wills5(DELAYED, own, [], [10.5], until=30).early == 1
    assert wills5(DELAYED, own, [], [13.1, 13.2], until=30).spurious == 1


def test_a_session_that_ends_first_brings_its_will_forward() -> None:
    """The will is due when the session ends, if that is before the delay: at its expiry, or at once
    when a Clean Start connection takes the client id."""
    short = Device5(will=True, will_delay=30, session_expiry=2, message_expiry=0, interval=0.1)
    own = [Span(0, 10, "abrupt", False, False), Span(20, None, "", False, False)]
    assert wills5(short, own, [], [12.1], until=30).to_json()["expected"] == 1
    taken = [Span(0, 10, "taken-over", False, False)]
    clean_start = [Span(10, 10.1, "clean", True, False)]
    result = wills5(DELAYED, taken, clean_start, [10.05], until=30)
    assert (result.expected, result.missing, result.early) == (1, 0, 0)
    resumed = wills5(DELAYED, taken, [Span(10, 10.1, "clean", False, True)], [], until=30)
    assert (resumed.within_delay, resumed.expected) == (1, 0)


def test_ends_near_a_deadline_or_after_the_run_decide_nothing() -> None:
    """A reconnect within the margin of the delay is undecided; a will due after the observer stopped
    is not due, and missing it is no violation."""
    near = [Span(0, 10, "abrupt", False, False), Span(13.2, None, "", False, True)]
    assert wills5(DELAYED, near, [], [], until=30).undecided == 1
    gone = [Span(0, 10, "abrupt", False, False)]
    result = wills5(DELAYED, gone, [], [], until=11)
    assert (result.not_due, result.missing) == (1, 0)


def test_spans_pair_up_and_down_events_and_cut_at_a_takeover() -> None:
    """Events become connections in order; a takeover ends the connection it hit, at its time."""

    class Event:
        def __init__(self, at: float, up: bool, end: str = "") -> None:
            self.at, self.up, self.end, self.clean_start, self.present = at, up, end, False, up

    found = spans([Event(0, True), Event(5, False, "lost"), Event(6, True)], taken_over=[4.9])
    assert found == [Span(0, 4.9, "taken-over", False, True), Span(6, None, "", False, True)]


# Sessions against the Session Expiry Interval


def test_sessions_are_judged_against_their_expiry() -> None:
    """Clean Start 0 reconnects: present within the expiry and absent after it are right; the other
    way round is a violation; no expiry means never present."""
    within = [Span(0, 10, "abrupt", False, False), Span(12, None, "", False, True)]
    after = [Span(0, 10, "abrupt", False, False), Span(20, None, "", False, False)]
    assert sessions5(DELAYED, within, []).resumed == 1
    assert sessions5(DELAYED, after, []).expired == 1
    wrong = [Span(0, 10, "abrupt", False, False), Span(20, None, "", False, True)]
    assert sessions5(DELAYED, wrong, []).resumed_after_expiry == 1
    lost = [Span(0, 10, "abrupt", False, False), Span(12, None, "", False, False)]
    assert sessions5(DELAYED, lost, []).lost_before_expiry == 1
    none = Device5(will=False, will_delay=0, session_expiry=0, message_expiry=0, interval=1)
    assert sessions5(none, wrong, []).resumed_after_expiry == 1


# Message expiry and the account


def test_messages_lost_while_the_observer_was_away_past_their_expiry_are_expired() -> None:
    """Seqs sent while the observer was away and older than the expiry when it came back are expired;
    a seq lost outside any absence stays lost."""
    device = Device5(will=False, will_delay=0, session_expiry=0, message_expiry=1, interval=0.5)
    received = {0: 100.0, 1: 100.5, 8: 104.0, 9: 104.5}
    assert expired(device, range(2, 8), received, [(101.0, 104.0)]) == 6
    assert expired(device, range(2, 8), received, []) == 0
    assert expired(device, [2], received, [(110.0, 120.0)]) == 0


def v5_account(ledger: Ledger, sent: int, **options: Any) -> Account:
    spec = Device5(will=True, will_delay=3, session_expiry=6, message_expiry=1, interval=0.5)
    return account(
        ledger,
        {"d": DeviceSpec("g", 1, persistent=True, will=True)},
        {"d": sent},
        {},
        {},
        {},
        Histogram(),
        mqtt5={"d": spec},
        links={"d": [Span(0, None, "", False, False)]},
        **options,
    )


def test_expired_messages_are_not_lost_and_late_ones_are_violations() -> None:
    """In the account, expired seqs leave `lost`; a message delivered past its expiry, more
    deliveries in flight than the observer allowed and a takeover without 0x8E are violations;
    --max-expired gates the expired count."""
    ledger = Ledger()
    for seq, ts in ((0, 100.0), (1, 100.5), (8, 104.0), (9, 104.5)):
        ledger.telemetry("d", seq, 0.01, ts, 1)
    result = v5_account(ledger, 10, observer_gaps=[(101.0, 104.0)])
    (row,) = result.telemetry
    assert (row.delivered, row.lost, row.expired) == (4, 0, 6)
    assert result.violations == []
    assert result.to_json()["telemetry"]["qos1-persistent"]["expired"] == 6
    assert [gate.passed for gate in Gates(max_expired=6).check(result)] == [True]
    assert [gate.passed for gate in Gates(max_expired=5).check(result)] == [False]
    ledger.telemetry("d", 10, 3.0, 105.0, 1)
    late = v5_account(
        ledger,
        11,
        observer_gaps=[(101.0, 104.0)],
        receive_maximum=4,
        inflight_peak=5,
        takeovers=2,
        taken_over_told=1,
    )
    assert len(late.violations) == 3
    assert "delivered after their Message Expiry Interval" in late.violations[0]
    assert "1 of 2 devices taken over got no DISCONNECT 0x8E" in late.violations[1]
    assert "above its Receive Maximum of 4" in late.violations[2]


def test_the_json_report_keeps_its_fields_and_adds_mqtt5_beside_them() -> None:
    """`delivery.wills` and `delivery.sessions` keep their keys; MQTT 5's figures sit beside them."""
    data = v5_account(Ledger(), 0).to_json()
    assert {"expected", "received", "missing", "spurious", "lost_connections"} < data["wills"].keys()
    assert {"resumed", "lost", "wrongly_present"} < data["sessions"].keys()
    assert data["wills"]["mqtt5"]["within_delay"] == 0
    assert data["sessions"]["mqtt5"]["resumed_after_expiry"] == 0
    assert data["mqtt5"]["receive_maximum"] == {"observer_announced": None, "inflight_peak": 0}


# The observer's measure of Receive Maximum


async def test_a_link_with_ack_delay_measures_the_broker_s_window(broker: Broker) -> None:
    """A subscriber that announces Receive Maximum 5 and holds its acks sees at most 5 of 60 QoS 1
    deliveries unacknowledged at once from the embedded broker, and exactly 5 once the window fills."""
    endpoint = Endpoint("mqtt", "127.0.0.1", broker.port)
    got: list[object] = []
    allowed = v5.Connect(True, 30, "rm-sub", None, None, None, Properties(receive_maximum=5))
    arrived = asyncio.Event()

    def count(message: object) -> None:
        got.append(message)
        if len(got) == 60:
            arrived.set()

    sub, _ = await Link.open(endpoint, allowed, session=ClientSession(), on_message=count, ack_delay=0.05)
    await sub.subscribe([("rm/t", 1)])
    pub, _ = await Link.open(endpoint, make_connect("rm-pub"), session=ClientSession(), on_message=print)
    async with asyncio.timeout(10):
        await asyncio.gather(*[pub.publish("rm/t", b"x", 1) for _ in range(60)])  # type: ignore[misc]
        await arrived.wait()
    assert sub.inflight_peak == 5
    await pub.disconnect()
    await sub.disconnect()


@pytest.mark.parametrize("where", ["embedded", "mosquitto"])
async def test_a_device_link_keeps_to_the_broker_s_receive_maximum(
    where: str, broker_factory: BrokerFactory, request: pytest.FixtureRequest
) -> None:
    """30 QoS 2 publishes at once on an MQTT 5 link: it sends no more than the broker's Receive
    Maximum (2 for the embedded broker, Mosquitto's default 20) unacknowledged, and all 30 complete,
    where sending them all at once is refused (DISCONNECT 0x93, or PUBREC 0x97)."""
    async with contextlib.AsyncExitStack() as stack:
        if where == "mosquitto":
            port = request.getfixturevalue("mosquitto_broker").port
        else:
            port = (await stack.enter_async_context(broker_factory(max_inflight=2))).port
        connect = v5.Connect(True, 30, f"rm-{uuid.uuid4().hex[:6]}", None, None, None)
        link, _ = await Link.open(
            Endpoint("mqtt", "127.0.0.1", port), connect, session=ClientSession(), on_message=print
        )
        allowed = link.properties.receive_maximum
        assert allowed is not None
        futures = [link.publish("rm/q2", b"x", 2) for _ in range(30)]
        assert len([m for m in link.session.inflight.values() if not m.waiting]) == allowed
        async with asyncio.timeout(10):
            await asyncio.gather(*futures)  # type: ignore[misc]
        assert link.connected
        await link.disconnect()


# The MQTT 5 scenarios' checks

V5_GROUP = (
    '[[groups]]\nname = "m"\ncount = 2\nprotocol = "5"\nclean_session = false\n'
    "will_delay = 3\nsession_expiry = 3\nmessage_expiry = 1\nqos = { telemetry = 1 }\n"
    "backoff = { initial = 0.05, max = 0.5 }\n"
)


def load(tmp_path: Path, text: str, scenario: str) -> StressSettings:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return load_stress_settings(path, load_fleet_config(path), scenario)


@pytest.mark.parametrize("name", MQTT5_SCENARIOS)
def test_every_mqtt5_scenario_fits_in_its_run(tmp_path: Path, name: str) -> None:
    """Each MQTT 5 scenario loads for a group that can fail it, and its stages start within the run."""
    duration = {"session-expiry": 9}.get(name, 12)
    group = (
        V5_GROUP.replace("session_expiry = 3", "session_expiry = 1") if name == "session-expiry" else V5_GROUP
    )
    settings = load(tmp_path, f"[stress]\nduration = {duration}\n" + group, name)
    assert settings.timeline == builtin_stages(name, duration, 0.3)
    assert all(stage.at < duration and (stage.until or 0) <= duration for stage in settings.timeline)


FLAP = "flapping-within-will-delay"


@pytest.mark.parametrize(
    ("name", "change", "field", "reason"),
    [
        ("takeover", ('protocol = "5"', 'protocol = "3.1.1"'), "protocol", "needs MQTT 5 groups"),
        (FLAP, ("will_delay = 3", "will_delay = 1"), "will_delay", "above 2 s"),
        (FLAP, ("session_expiry = 3", "session_expiry = 2"), "session_expiry", "at least"),
        (FLAP, ("clean_session = false", "clean_session = true"), "clean_session", "Clean Start 0"),
        ("session-expiry", ("session_expiry = 3", "session_expiry = 0"), "session_expiry", "above 0"),
        ("message-expiry", ("message_expiry = 1", "message_expiry = 9"), "message_expiry", "below"),
    ],
)  # fmt: skip
def test_an_mqtt5_scenario_that_could_not_fail_is_a_config_error(
    tmp_path: Path, name: str, change: tuple[str, str], field: str, reason: str
) -> None:
    """A group that makes an MQTT 5 scenario pass trivially (3.1.1, a will delay shorter than a flap,
    no session expiry...) is a ConfigError naming the group's field."""
    text = V5_GROUP.replace(*change)
    if change[1] == 'protocol = "3.1.1"':
        text = '[[groups]]\nname = "m"\ncount = 2\n'
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, "[stress]\nduration = 12\n" + text, name)
    assert caught.value.where == f"{tmp_path / 's.toml'}: groups[0].{field}"
    assert reason in caught.value.reason


# The scenarios against real brokers: the embedded one and Mosquitto, side by side


def v5_fleet(**group: Any) -> FleetConfig:
    """One MQTT 5 group with ids unique to this test, fast QoS 1 telemetry and quick backoff."""
    tag = uuid.uuid4().hex[:6]
    made = {
        "name": "m",
        "id": f"m-{tag}-{{index}}",
        "count": 12,
        "interval": 0.1,
        "jitter": 0,
        "keepalive": 5,
        "protocol": "5",
        "clean_session": False,
        "qos": {"telemetry": 1},
        "backoff": {"initial": 0.05, "max": 0.5},
        **group,
    }
    return FleetConfig.model_validate({"seed": 13, "groups": [made]})


async def both(
    scenario: str, duration: float, mosquitto: Mosquitto, **group: Any
) -> tuple[StressResult, StressResult]:
    """The scenario on the embedded broker and on Mosquitto at once, each with a fleet of its own."""
    plan = StressSettings(scenario=scenario, duration=duration, drain=5.0, fraction=0.5)
    target = Target(Endpoint("mqtt", "127.0.0.1", mosquitto.port))
    async with asyncio.timeout(RUN_TIMEOUT):
        embedded, other = await asyncio.gather(
            run_stress(v5_fleet(**group), plan, target=None),
            run_stress(v5_fleet(**group), plan, target=target, broker_pid=mosquitto.proc.pid),
        )
    return embedded, other


def promises(result: StressResult) -> list[str]:
    """The violations, but for Receive Maximum: Mosquitto 2.0.11 may send the observer more than it
    allowed (docs/stress.md), which is checked on its own below."""
    return [text for text in result.account.violations if "Receive Maximum" not in text]


async def test_flapping_within_the_will_delay_fires_no_will(mosquitto_broker: Mosquitto) -> None:
    """Devices dropped abruptly and back within their 3 s will delay, resuming their session: no will
    on either broker, every drop counted as back within the delay, every session resumed."""
    results = await both("flapping-within-will-delay", 5.0, mosquitto_broker, will_delay=3, session_expiry=6)
    for result in results:
        account, v5 = result.account, result.account.mqtt5
        drops = result.fleet.fleet().drops["abrupt"]
        assert promises(result) == [], result.meta["timeline"]
        assert v5.wills.within_delay > 0, v5.wills
        assert v5.wills.within_delay + v5.wills.undecided == drops, v5.wills
        assert (account.wills_received, account.wills_expected, v5.wills.early) == (0, 0, 0)
        assert v5.sessions.resumed + v5.sessions.undecided == drops, v5.sessions
        assert v5.sessions.lost_before_expiry == 0, v5.sessions
        assert account.telemetry[0].lost_by_broker == 0
    embedded, _ = results
    assert embedded.account.mqtt5.receive_maximum == RECEIVE_MAXIMUM
    assert 0 < embedded.account.mqtt5.inflight_peak <= RECEIVE_MAXIMUM


async def test_devices_offline_past_their_session_expiry_find_no_session(mosquitto_broker: Mosquitto) -> None:
    """Offline 2.2 s with a 1 s session expiry and a 3 s will delay: each session has expired when
    its device comes back, and its will came when the session ended, before the delay."""
    for result in await both("session-expiry", 6.5, mosquitto_broker, will_delay=3, session_expiry=1):
        v5 = result.account.mqtt5
        drops = result.fleet.fleet().drops["abrupt"]
        assert promises(result) == [], result.meta["timeline"]
        assert v5.sessions.expired > 0, v5.sessions
        assert v5.sessions.expired + v5.sessions.undecided == drops, v5.sessions
        assert v5.wills.expected + v5.wills.undecided == drops, v5.wills
        assert (v5.wills.missing, v5.wills.early, v5.sessions.resumed_after_expiry) == (0, 0, 0), v5
        assert result.account.wills_received == drops


async def test_telemetry_older_than_its_expiry_is_expired_not_lost(mosquitto_broker: Mosquitto) -> None:
    """The observer away 2.2 s with a 1 s message expiry: what it missed is counted expired, nothing
    acknowledged is lost, and nothing comes after its expiry."""
    for result in await both("message-expiry", 6.5, mosquitto_broker, message_expiry=1):
        (row,) = result.account.telemetry
        assert promises(result) == [], result.meta["timeline"]
        assert row.expired > 0, row
        assert (row.lost_by_broker, row.expired_delivered) == (0, 0), row
        assert result.meta["observer"]["connects"] == 2


async def test_a_takeover_is_told_and_judged_by_the_will_delay(mosquitto_broker: Mosquitto) -> None:
    """A second connection with a device's client id: the embedded broker tells the first with
    DISCONNECT 0x8E, Mosquitto 2.0.11 does not, and the report names that promise; a takeover that
    resumes the session owes no will (3 s delay), one with Clean Start 1 ends it and owes one at once."""
    embedded, other = await both("takeover", 3.0, mosquitto_broker, will_delay=3, session_expiry=6)
    for result in (embedded, other):
        v5 = result.account.mqtt5
        made = v5.takeovers  # every other one with Clean Start 1
        assert made >= 2, result.meta["timeline"]
        assert (v5.wills.within_delay, v5.wills.expected) == ((made + 1) // 2, made // 2), v5.wills
        assert (v5.wills.after_reconnect, v5.wills.early) == (0, 0), v5.wills
        if v5.wills.missing:  # both brokers drop the will of a Clean Start takeover (docs/stress.md)
            missing = f"{v5.wills.missing} of {made // 2} expected wills never came"
            assert missing in result.account.violations
    assert embedded.account.mqtt5.taken_over_told == embedded.account.mqtt5.takeovers
    made, told = other.account.mqtt5.takeovers, other.account.mqtt5.taken_over_told
    if told < made:
        assert (
            f"{made - told} of {made} devices taken over got no DISCONNECT 0x8E [MQTT-3.1.4-3]"
            in promises(other)
        )


def test_the_cli_runs_an_mqtt5_scenario_with_v_mqttv5(tmp_path: Path, mosquitto_broker: Mosquitto) -> None:
    """`fleet stress -V mqttv5 --broker URL` makes a 3.1.1 config's groups and the observer MQTT 5,
    --max-expired gates, and the HTML page shows the MQTT 5 figures; an MQTT 5 scenario on 3.1.1
    groups is refused, naming the field."""
    config = tmp_path / "f.toml"
    config.write_text(
        f'[[groups]]\nname = "c{uuid.uuid4().hex[:6]}"\ncount = 4\ninterval = 0.1\nclean_session = false\n'
        "[stress]\nduration = 3\ndrain = 5\nfraction = 0.5\n"
    )
    report = tmp_path / "r.json"
    url = f"mqtt://127.0.0.1:{mosquitto_broker.port}"
    v311 = run(fleet_argv("stress", config, "--scenario", "takeover", "--broker", url, "-V", "mqttv311"))
    assert v311.returncode == 1, v311.stderr
    assert "groups[0].protocol: the takeover scenario needs MQTT 5 groups" in v311.stderr
    argv = ("--scenario", "takeover", "--broker", url, "-V", "mqttv5", "--max-expired", "0")
    page = tmp_path / "r.html"
    done = run(fleet_argv("stress", config, *argv, "--report", report, "--html", page), timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stderr
    promises = page.read_text().split('<table id="promises">', 1)[1].split("</table>", 1)[0]
    assert "<td>MQTT 5 wills</td>" in promises
    assert "of 2 taken over got DISCONNECT 0x8E" in promises
    data = json.loads(report.read_text())
    assert data["meta"]["observer"]["protocol"] == "5"
    assert data["delivery"]["mqtt5"]["takeovers"]["made"] == 2
    assert data["gates"] == [
        {"name": "max-expired", "passed": True, "detail": "0 messages expired under Message Expiry (limit 0)"}
    ]
