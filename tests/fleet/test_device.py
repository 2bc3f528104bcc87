"""Pure device behaviour, no I/O: seeded determinism, telemetry payloads, commands and backoff."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from fleet.device import Device
from fleet.schema import FleetConfig, Group

METRICS: dict[str, Any] = {
    "temperature": {"kind": "random_walk", "min": 15, "max": 30, "step": 0.5},
    "humidity": {"kind": "sine", "period": 60, "amplitude": 5, "offset": 40, "noise": 0.5},
    "load": {"kind": "uniform", "min": 0, "max": 1, "decimals": None},
    "speed": {"kind": "gaussian", "mean": 40, "stddev": 9, "min": 0},
    "state": {"kind": "choice", "values": ["a", "b", "c"]},
    "door": {"kind": "boolean", "p_true": 0.5},
    "count": {"kind": "counter"},
    "position": {"kind": "gps", "lat": 52.37, "lon": 4.89, "step_m": 10, "radius_m": 1000},
}

FLAKY: dict[str, Any] = {
    "mode": "intermittent",
    "online": {"dist": "exponential", "mean": 20},
    "offline": {"dist": "uniform", "min": 1, "max": 9},
    "ends": {"clean": 1, "abrupt": 1, "silent": 1},
}


def fleet(seed: int = 7, **group: Any) -> FleetConfig:
    """A fleet of two groups; keyword arguments override the first group's settings."""
    first = {
        "name": "sensor",
        "count": 4,
        "interval": 2.0,
        "telemetry": METRICS,
        "connectivity": FLAKY,
        "backoff": {"initial": 0.5, "max": 30, "multiplier": 2},
        **group,
    }
    second = {"name": "van", "count": 3, "id": "van-{index:02d}", "telemetry": {"x": METRICS["load"]}}
    return FleetConfig.model_validate({"seed": seed, "groups": [first, second]})


def devices(config: FleetConfig) -> list[Device]:
    return [Device(group, index, config.seed) for group in config.groups for index in range(group.count)]


def group(**settings: Any) -> Group:
    return fleet(**settings).groups[0]


def values(device: Device, samples: int = 20) -> list[dict[str, Any]]:
    """The `values` of the next `samples` telemetry payloads, advancing device time between them."""
    out = []
    for _ in range(samples):
        device.next_delay()
        out.append(json.loads(device.telemetry(1.0))["values"])
    return out


def schedule(device: Device, cycles: int = 10) -> list[tuple[Any, ...]]:
    """Per cycle: how long online and offline, how the period ends, and the first backoff delays."""
    return [
        (
            device.online_for(cycle),
            device.offline_for(cycle),
            device.end_kind(cycle),
            tuple(device.backoff(cycle, attempt) for attempt in range(4)),
        )
        for cycle in range(cycles)
    ]


def ack(payload: bytes) -> dict[str, Any]:
    message = json.loads(payload)
    assert isinstance(message, dict)
    return message


# Determinism


def test_same_seed_gives_same_ids_values_and_schedules() -> None:
    """Two fleets built from the same seed and config have the same ids, value sequences and schedules."""
    first, second = devices(fleet(seed=7)), devices(fleet(seed=7))
    assert [d.id for d in first] == [d.id for d in second]
    assert [d.id for d in first] == [f"sensor-{i:04d}" for i in range(4)] + [f"van-{i:02d}" for i in range(3)]
    for a, b in zip(first, second, strict=True):
        assert values(a) == values(b)
        assert schedule(a) == schedule(b)
        assert [a.next_delay() for _ in range(5)] == [b.next_delay() for _ in range(5)]


def test_mqtt5_devices_have_the_same_ids_values_and_schedules_as_3_1_1() -> None:
    """The same seed gives an MQTT 5 group (with every v5 option) the ids, values and schedules of 3.1.1."""
    options = {
        "protocol": "5",
        "session_expiry": 60,
        "will_delay": 5,
        "receive_maximum": 8,
        "message_expiry": 30,
        "content_type": "application/json",
        "topic_alias": True,
        "user_properties": {"serial": "{device}-{seq}"},
    }
    v311, v5 = devices(fleet(seed=7)), devices(fleet(seed=7, **options))
    assert [d.id for d in v311] == [d.id for d in v5]
    for a, b in zip(v311, v5, strict=True):
        b.telemetry_properties()
        assert values(a) == values(b)
        assert schedule(a) == schedule(b)
        assert [a.next_delay() for _ in range(5)] == [b.next_delay() for _ in range(5)]


def test_mqtt5_connect_birth_and_reply() -> None:
    """A v5 device's CONNECT, will, birth, per-message user properties and reply carry its v5 options."""
    from fleet.mqtt import v5
    from fleet.mqtt.properties import Properties, decode_properties, encode_variable_int

    options = {"protocol": "5", "session_expiry": 60, "will_delay": 5, "receive_maximum": 8}
    device = devices(fleet(user_properties={"n": "{group}/{device}/{seq:03d}"}, **options))[0]
    connect = device.connect(device.id, None, None)
    assert isinstance(connect, v5.Connect)
    assert (connect.properties.session_expiry_interval, connect.properties.receive_maximum) == (60, 8)
    assert connect.will is not None
    assert connect.will.properties.will_delay_interval == 5
    assert json.loads(device.status(True, None, 1.0))["protocol"] == 5
    assert "protocol" not in json.loads(devices(fleet())[0].status(True, None, 1.0))

    def decoded(body: bytes) -> Properties:
        return decode_properties(encode_variable_int(len(body)) + body, 0, 3)[0]

    device.telemetry(1.0)
    assert decoded(device.telemetry_properties()).user_properties == (("n", "sensor/sensor-0000/001"),)
    topic, properties = device.reply("replies/x", b"\x01c")
    assert topic == "replies/x"
    assert decoded(properties).correlation_data == b"\x01c"
    assert device.reply(None, None) == (device.topics.ack, b"")


def test_different_seed_gives_different_values_and_schedules() -> None:
    """Another seed changes every device's values and its online/offline schedule (the ids stay)."""
    first, second = devices(fleet(seed=7)), devices(fleet(seed=8))
    assert [d.id for d in first] == [d.id for d in second]
    for a, b in zip(first, second, strict=True):
        assert values(a) != values(b)
    for a, b in zip(first[:4], second[:4], strict=True):  # the flaky group
        assert schedule(a) != schedule(b)


def test_devices_of_one_fleet_differ_from_each_other() -> None:
    """Within one seed, each device draws its own values and schedule."""
    fleet_devices = devices(fleet())[:4]
    assert len({json.dumps(values(d)) for d in fleet_devices}) == 4
    assert len({repr(schedule(d)) for d in fleet_devices}) == 4


def test_schedule_and_backoff_draws_do_not_shift_the_values() -> None:
    """Asking for schedules and backoffs (a reconnect) between samples leaves the value sequence unchanged."""
    config = fleet()
    quiet, busy = Device(config.groups[0], 1, config.seed), Device(config.groups[0], 1, config.seed)
    expected = values(quiet, 10)
    seen = []
    for cycle in range(10):
        busy.online_for(cycle)
        busy.backoff(cycle, cycle)
        busy.end_kind(cycle)
        seen.extend(values(busy, 1))
    assert seen == expected


def test_schedule_is_the_same_whatever_order_it_is_asked_in() -> None:
    """Cycle n's schedule depends on the seed, device and n only, not on earlier calls."""
    config = fleet()
    forward = schedule(Device(config.groups[0], 2, config.seed))
    backward_device = Device(config.groups[0], 2, config.seed)
    backward = [schedule(backward_device, 10)[cycle] for cycle in reversed(range(10))]
    assert backward[::-1] == forward


def test_always_connected_group_has_no_scheduled_end() -> None:
    """With connectivity 'always', an online period lasts until the fleet stops; no offline time."""
    device = Device(group(connectivity={"mode": "always"}), 0, 1)
    assert device.online_for(0) is None
    assert device.offline_for(0) == 0.0


def test_fixed_durations_and_single_end_kind_are_exact() -> None:
    """Fixed online/offline durations are used as given, and an only end kind is always chosen."""
    connectivity = {
        "mode": "intermittent",
        "online": {"dist": "fixed", "value": 3.5},
        "offline": {"dist": "fixed", "value": 1.25},
        "ends": {"clean": 0, "abrupt": 1},
    }
    device = Device(group(connectivity=connectivity), 0, 1)
    assert [device.online_for(c) for c in range(5)] == [3.5] * 5
    assert [device.offline_for(c) for c in range(5)] == [1.25] * 5
    assert {device.end_kind(c) for c in range(50)} == {"abrupt"}


def test_drawn_durations_stay_in_range_and_end_kinds_follow_weights() -> None:
    """Uniform offline times stay within [min, max]; every end kind with a weight comes up."""
    device = Device(group(), 0, 3)
    offline = [device.offline_for(c) for c in range(200)]
    assert all(1 <= x <= 9 for x in offline)
    assert len(set(offline)) > 150
    online = [device.online_for(c) for c in range(200)]
    assert all(x is not None and x >= 0 for x in online)
    assert {device.end_kind(c) for c in range(200)} == {"clean", "abrupt", "silent"}


# Telemetry


def test_seq_starts_at_zero_and_increments() -> None:
    """The first payload has seq 0, and each payload after it has the next seq."""
    device = Device(group(), 0, 1)
    assert device.seq == 0
    seqs = [json.loads(device.telemetry(float(i)))["seq"] for i in range(25)]
    assert seqs == list(range(25))
    assert device.seq == 25


def test_payload_has_device_seq_ts_and_values() -> None:
    """A telemetry payload is JSON with the device id, seq, the given send time (ms) and every metric."""
    device = Device(group(), 3, 1)
    payload = json.loads(device.telemetry(1764400000.12345))
    assert payload["device"] == "sensor-0003"
    assert payload["seq"] == 0
    assert payload["ts"] == pytest.approx(1764400000.123, abs=0.0006)
    assert set(payload["values"]) == set(METRICS)
    assert set(payload["values"]["position"]) == {"lat", "lon"}
    assert payload["values"]["count"] == 0
    assert 15 <= payload["values"]["temperature"] <= 30


def test_no_padding_by_default() -> None:
    """Without payload_size the payload carries no padding."""
    payload = json.loads(Device(group(), 0, 1).telemetry(1.0))
    assert set(payload) == {"device", "seq", "ts", "values"}


@pytest.mark.parametrize("size", [1, 64, 70, 71, 72, 80, 100, 128, 500, 1000, 4096, 65536])
def test_payload_size_pads_to_the_target(size: int) -> None:
    """With payload_size, every payload is at least the target size and at most 16 bytes over it."""
    device = Device(group(telemetry={"x": {"kind": "constant", "value": 1}}, payload_size=size), 0, 1)
    natural = len(Device(group(telemetry={"x": {"kind": "constant", "value": 1}}), 0, 1).telemetry(1.0))
    for ts in (1.0, 1764400000.5, 1764400000.123):
        payload = device.telemetry(ts)
        assert len(payload) >= size
        assert len(payload) <= max(size, natural) + 16
        body = json.loads(payload)
        assert body["values"] == {"x": 1}
        assert body["device"] == "sensor-0000"


def test_padded_payloads_pad_real_metrics_too() -> None:
    """Padding holds with the full metric set, whose payload length varies from sample to sample."""
    device = Device(group(payload_size=400), 0, 1)
    sizes = {len(device.telemetry(1764400000.0 + i / 7)) for i in range(100)}
    assert min(sizes) >= 400
    assert max(sizes) <= 416


def test_next_delay_is_the_interval_within_jitter() -> None:
    """The delay between messages is the interval ± jitter, and exactly the interval without jitter."""
    jittery = Device(group(interval=2.0, jitter=0.25), 0, 1)
    delays = [jittery.next_delay() for _ in range(200)]
    assert all(1.5 <= d <= 2.5 for d in delays)
    assert len(set(delays)) > 100
    steady = Device(group(interval=2.0, jitter=0), 0, 1)
    assert [steady.next_delay() for _ in range(5)] == [2.0] * 5


def test_topics_follow_the_group_templates() -> None:
    """A device's topics fill {device} and {group} into the group's templates."""
    device = Device(group(topics={"telemetry": "site/{group}/{device}/up"}), 2, 1)
    assert device.topics.telemetry == "site/sensor/sensor-0002/up"
    assert device.topics.status == "fleet/sensor-0002/status"
    assert device.topics.command == "fleet/sensor-0002/cmd"
    assert device.topics.ack == "fleet/sensor-0002/cmd/ack"


def test_status_and_will_payloads() -> None:
    """Birth, clean-offline and will payloads follow the architecture's status scheme."""
    device = Device(group(), 0, 1)
    assert json.loads(device.status(True, None, 5.0)) == {"online": True, "ts": 5.0}
    assert json.loads(device.status(False, "clean", 5.0)) == {"online": False, "ts": 5.0, "reason": "clean"}
    assert json.loads(device.will_payload()) == {"online": False, "reason": "lost"}


# Commands


def refusal(payload: bytes) -> str:
    """The reason of an ack with ok false (asserting that it is one)."""
    body = ack(payload)
    assert body["ok"] is False, body
    reason = body.get("error") or body.get("reason")
    assert isinstance(reason, str)
    assert reason
    return reason


def test_set_interval_changes_the_interval() -> None:
    """set_interval acks ok with the command's id, and later delays use the new interval."""
    device = Device(group(interval=2.0, jitter=0), 0, 1)
    command = device.command(b'{"id": "c1", "op": "set_interval", "value": 0.5}', 10.0)
    assert ack(command.ack) == {"id": "c1", "ok": True}
    assert command.interval == 0.5
    assert not command.reconnect
    assert command.offline_for is None
    assert device.interval == 0.5
    assert device.next_delay() == 0.5


@pytest.mark.parametrize(
    "value", ["0", "-1", '"fast"', "true", "null", "NaN", "Infinity", "[1]"], ids=lambda v: f"value={v}"
)
def test_set_interval_with_a_bad_value_is_refused(value: str) -> None:
    """set_interval with a value that is not a positive number acks ok false with a reason; no change."""
    device = Device(group(interval=2.0, jitter=0), 0, 1)
    command = device.command(f'{{"id": "c2", "op": "set_interval", "value": {value}}}'.encode(), 10.0)
    assert ack(command.ack)["id"] == "c2"
    assert refusal(command.ack)
    assert command.interval is None
    assert device.interval == 2.0


def test_set_interval_without_value_is_refused() -> None:
    """set_interval without a value acks ok false with a reason."""
    device = Device(group(interval=2.0), 0, 1)
    assert refusal(device.command(b'{"id": "c3", "op": "set_interval"}', 1.0).ack)
    assert device.interval == 2.0


def test_reboot_asks_for_a_reconnect() -> None:
    """reboot acks ok and asks the runner to reconnect."""
    command = Device(group(), 0, 1).command(b'{"id": "r1", "op": "reboot"}', 1.0)
    assert ack(command.ack) == {"id": "r1", "ok": True}
    assert command.reconnect
    assert command.offline_for is None


@pytest.mark.parametrize(("value", "seconds"), [(2, 2.0), (0.5, 0.5), (0, 0.0)])
def test_go_offline_asks_for_an_offline_period(value: float, seconds: float) -> None:
    """go_offline N acks ok and asks the runner to stay offline for N seconds."""
    command = Device(group(), 0, 1).command(
        json.dumps({"id": "o1", "op": "go_offline", "value": value}).encode(), 1
    )
    assert ack(command.ack) == {"id": "o1", "ok": True}
    assert command.offline_for == seconds
    assert not command.reconnect


@pytest.mark.parametrize("value", ["-1", '"soon"', "null", "false"])
def test_go_offline_with_a_bad_value_is_refused(value: str) -> None:
    """go_offline with a negative or non-numeric value acks ok false with a reason and stays online."""
    command = Device(group(), 0, 1).command(
        f'{{"id": "o2", "op": "go_offline", "value": {value}}}'.encode(), 1
    )
    assert refusal(command.ack)
    assert command.offline_for is None
    assert not command.reconnect


def test_ping_answers_pong() -> None:
    """ping acks ok with the same id and a pong time."""
    command = Device(group(), 0, 1).command(b'{"id": "p1", "op": "ping"}', 1764400000.5)
    body = ack(command.ack)
    assert body["id"] == "p1"
    assert body["ok"] is True
    assert body["pong"] == pytest.approx(1764400000.5)
    assert not command.reconnect
    assert command.offline_for is None


def test_unknown_op_is_refused_with_a_reason() -> None:
    """An unknown op acks ok false with the same id and a reason naming the op."""
    command = Device(group(), 0, 1).command(b'{"id": "u1", "op": "dance"}', 1.0)
    assert ack(command.ack)["id"] == "u1"
    assert "dance" in refusal(command.ack)
    assert not command.reconnect
    assert command.offline_for is None


@pytest.mark.parametrize("payload", [b"not json", b"\xff\xfe", b"", b"[1, 2]", b'"ping"', b"42"])
def test_malformed_command_is_refused_with_a_reason(payload: bytes) -> None:
    """A payload that is not a JSON object acks ok false with a reason, and changes nothing."""
    device = Device(group(interval=2.0), 0, 1)
    command = device.command(payload, 1.0)
    assert refusal(command.ack)
    assert not command.reconnect
    assert command.offline_for is None
    assert device.interval == 2.0


# Backoff


@pytest.mark.parametrize(
    ("initial", "maximum", "multiplier"),
    [(0.5, 30.0, 2.0), (1.0, 5.0, 3.0), (0.1, 0.1, 1.0), (2.0, 100.0, 1.5)],
)
def test_backoff_with_full_jitter_stays_under_the_ceiling(
    initial: float, maximum: float, multiplier: float
) -> None:
    """With full jitter, attempt n waits in [0, min(max, initial * multiplier**n)], spread over that range."""
    backoff = {"initial": initial, "max": maximum, "multiplier": multiplier, "jitter": "full"}
    device = Device(group(backoff=backoff), 0, 1)
    for attempt in range(12):
        ceiling = min(maximum, initial * multiplier**attempt)
        delays = [device.backoff(cycle, attempt) for cycle in range(200)]
        assert all(0 <= d <= ceiling for d in delays), (attempt, ceiling, max(delays))
        assert max(delays) > 0.8 * ceiling
        assert min(delays) < 0.2 * ceiling
        assert len(set(delays)) > 150


def test_backoff_without_jitter_is_exact() -> None:
    """Without jitter, attempt n waits exactly min(max, initial * multiplier**n), in every cycle."""
    device = Device(group(backoff={"initial": 0.5, "max": 10, "multiplier": 2, "jitter": "none"}), 0, 1)
    expected = [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    for cycle in range(3):
        assert [device.backoff(cycle, attempt) for attempt in range(8)] == expected


def test_backoff_ceiling_does_not_overflow_for_large_attempts() -> None:
    """A device that has retried for a very long time still waits at most max."""
    device = Device(group(backoff={"initial": 0.5, "max": 10, "multiplier": 2, "jitter": "none"}), 0, 1)
    assert device.backoff(0, 5000) == 10.0
    jittered = Device(group(backoff={"initial": 0.5, "max": 10, "multiplier": 2}), 0, 1).backoff(0, 5000)
    assert math.isfinite(jittered)
    assert 0 <= jittered <= 10.0
