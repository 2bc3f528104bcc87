"""The TUI's pure fleet model: loss, wills, reconnects, acks, the topic tree, sorting, filtering, export."""

from __future__ import annotations

import json

import pytest

from fleet.mqtt.properties import Properties
from fleet.watch.model import FleetModel, group_of, numeric_fields
from tests.watch.data import NOW, messages

T = NOW


def telemetry(model: FleetModel, device: str, seq: int, at: float = T, **values: float) -> None:
    body = {"device": device, "seq": seq, "ts": at, "values": values}
    model.ingest(f"fleet/{device}/telemetry", json.dumps(body).encode(), False, at)


def status(model: FleetModel, device: str, body: dict[str, object], retain: bool = False) -> None:
    model.ingest(f"fleet/{device}/status", json.dumps(body).encode(), retain, T)


def test_seq_gaps_count_lost_messages_and_duplicates_do_not() -> None:
    """A jump in seq counts the skipped messages as loss; a repeated or late seq adds none."""
    model = FleetModel()
    for seq in (0, 1, 4, 4, 2, 5, 9):
        telemetry(model, "d-1", seq)
    device = model.devices["d-1"]
    assert device.gaps == 2 + 3
    assert device.messages == 7
    assert device.seq_next == 10


def test_a_live_will_is_counted_and_logged_but_a_retained_one_is_only_state() -> None:
    """A will received live counts as fired; a retained one (older than the session) only marks the device."""
    model = FleetModel()
    status(model, "a-1", {"online": False, "reason": "lost"}, retain=True)
    status(model, "a-2", {"online": True})
    status(model, "a-2", {"online": False, "reason": "lost"})
    status(model, "a-3", {"online": True})
    status(model, "a-3", {"online": False, "reason": "clean"})
    assert model.wills == 1
    assert model.devices["a-1"].last_will == T
    assert [(e.kind, e.device) for e in model.events] == [
        ("online", "a-2"),
        ("will", "a-2"),
        ("online", "a-3"),
        ("offline", "a-3"),
    ]
    assert model.counts() == (0, 3, 3)


def test_reconnects_count_births_after_the_first_and_age_out_of_the_minute() -> None:
    """A birth after a known state is a reconnect; the header's figure covers the last 60 s."""
    model = FleetModel()
    status(model, "v-1", {"online": True}, retain=True)
    status(model, "v-1", {"online": False, "reason": "lost"})
    status(model, "v-1", {"online": True})
    assert model.devices["v-1"].reconnects == 1
    assert model.reconnects_within(T + 59) == 1
    assert model.reconnects_within(T + 61) == 0


def test_acks_are_kept_per_command_id_and_logged() -> None:
    """An ack on cmd/ack is stored under its command id and shown in the event log with its outcome."""
    model = FleetModel()
    model.ingest("fleet/d-1/cmd/ack", b'{"id":"w1","ok":false,"error":"value must be more than 0"}', False, T)
    assert model.devices["d-1"].acks["w1"]["ok"] is False
    assert model.events[-1].text == "ack w1: failed: value must be more than 0"


def test_bad_payloads_are_logged_as_errors_and_never_raise() -> None:
    """Non-JSON and non-object payloads on device topics become error events."""
    model = FleetModel()
    model.ingest("fleet/d-1/telemetry", b"\xff\xfe", False, T)
    model.ingest("fleet/d-1/status", b"[1, 2]", False, T)
    model.ingest("fleet/d-1/status", b'{"online": "yes"}', False, T)
    assert model.errors == 3
    assert [e.kind for e in model.events] == ["error"] * 3


def test_the_topic_tree_counts_every_subtree_and_sys_figures_are_kept() -> None:
    """Each level of the topic tree counts the messages below it; $SYS/broker values are read as text."""
    model = FleetModel()
    telemetry(model, "d-1", 0)
    telemetry(model, "d-2", 0)
    model.ingest("fleet/d-1/status", b'{"online": true}', True, T)
    model.ingest("$SYS/broker/clients/connected", b"7", True, T)
    fleet = model.topics.children["fleet"]
    assert (model.topics.messages, fleet.messages, fleet.children["d-1"].messages) == (4, 3, 2)
    assert fleet.children["d-1"].children["telemetry"].path == "fleet/d-1/telemetry"
    assert model.sys == {"clients/connected": "7"}


def test_rates_decay_while_nothing_arrives() -> None:
    """The rate is messages per second over a 10 s window, and falls once messages stop."""
    model = FleetModel()
    for tick in range(100):
        telemetry(model, "d-1", tick, at=T + tick * 0.1)
    now = T + 9.9
    assert 5.0 < model.devices["d-1"].rate.at(now) < 10.0
    assert model.devices["d-1"].rate.at(now + 60) < 0.05


def test_rows_filter_by_id_or_group_and_sort_by_any_column() -> None:
    """The device table filters on id or group text and sorts by each column, in both directions."""
    model = FleetModel()
    for message in messages():
        model.ingest(message.topic, message.payload, message.retain, T)
    assert {d.group for d in model.rows("van", "id", False, T)} == {"van"}
    assert [d.id for d in model.rows("door-000", "id", False, T)][:2] == ["door-0000", "door-0001"]
    by_loss = model.rows("", "loss", True, T)
    assert by_loss[0].id == "van-0002"
    assert by_loss[0].gaps == 1
    by_msgs = [d.messages for d in model.rows("", "msgs", False, T)]
    assert by_msgs == sorted(by_msgs)
    with pytest.raises(ValueError, match="no column 'nope'"):
        model.rows("", "nope", False, T)


def test_export_records_decode_json_payloads_and_keep_other_bytes_as_text() -> None:
    """The visible history exports one JSON object per message, filtered like the table."""
    model = FleetModel()
    for message in messages():
        model.ingest(message.topic, message.payload, message.retain, T)
    vans = model.visible_history("van")
    assert vans
    assert all(r.topic.startswith("fleet/van-") for r in vans)
    everything = [r.as_json() for r in model.visible_history("")]
    assert everything[-1] == {
        "received_at": T,
        "topic": "lab/sensor/raw",
        "retain": False,
        "payload_text": "not json",
    }
    assert everything[0]["payload"] == 21


def test_group_of_strips_the_index_of_a_device_id() -> None:
    """The group is the device id without its trailing index."""
    assert [group_of(d) for d in ("thermo-0007", "van-03", "probe_1", "solo")] == [
        "thermo",
        "van",
        "probe",
        "solo",
    ]


def test_seq_gaps_since_attach_say_the_watcher_is_behind_until_a_resync() -> None:
    """Messages missing from a device's seq after the attach mark the view behind; a resync clears it."""
    model = FleetModel()
    telemetry(model, "d-1", 0)
    model.synced(T, "attach")
    assert not model.sync().behind
    telemetry(model, "d-1", 1)
    telemetry(model, "d-1", 5)
    sync = model.sync()
    assert (sync.behind, sync.missed, sync.since, sync.how) == (True, 3, T, "attach")
    model.synced(T + 1, "resync")
    assert not model.sync().behind
    assert model.devices["d-1"].gaps == 3  # the device's own loss column keeps its count


def test_the_brokers_drop_counter_rising_after_the_attach_says_behind() -> None:
    """The first $SYS drop count after the attach is the baseline; a rise above it is shown as dropped."""
    model = FleetModel()
    model.synced(T, "attach")
    model.ingest("$SYS/broker/publish/messages/dropped", b"40", True, T)
    assert model.sync().dropped == 0
    assert not model.sync().behind
    model.ingest("$SYS/broker/publish/messages/dropped", b"1574", True, T)
    assert model.sync().dropped == 1534
    assert model.sync().behind
    model.synced(T, "resync")
    assert model.sync().dropped == 0


def test_without_a_drop_counter_the_broker_drops_are_unknown() -> None:
    """A broker without $SYS drop figures gives dropped None, not 0."""
    model = FleetModel()
    model.synced(T, "attach")
    model.ingest("$SYS/broker/clients/connected", b"3", True, T)
    assert model.sync().dropped is None


def test_a_resync_corrects_stale_statuses_from_the_retained_ones() -> None:
    """After missed offline statuses the view is stale; the retained statuses re-read by a resync fix it."""
    model = FleetModel()
    model.synced(T, "attach")
    for device in ("a-1", "a-2", "a-3"):
        status(model, device, {"online": True}, retain=True)
    assert model.counts() == (3, 0, 3)
    model.synced(T, "resync")
    status(model, "a-1", {"online": False, "reason": "clean"}, retain=True)
    status(model, "a-2", {"online": False, "reason": "lost"}, retain=True)
    status(model, "a-3", {"online": True}, retain=True)
    assert model.counts() == (1, 2, 3)
    assert model.lost() == 1
    assert model.sync().corrected == 2
    assert [(e.device, e.text) for e in model.events] == [
        ("a-1", "resync: offline, not online"),
        ("a-2", "resync: lost, not online"),
    ]


def test_a_fired_will_and_a_clean_offline_are_told_apart() -> None:
    """Status is lost after a last will, offline after a clean leave, and lost() counts only the first."""
    model = FleetModel()
    status(model, "a-1", {"online": False, "reason": "lost"})
    status(model, "a-2", {"online": False, "reason": "clean"})
    status(model, "a-3", {"online": False})
    assert [model.devices[d].status for d in ("a-1", "a-2", "a-3")] == ["lost", "offline", "offline"]
    assert model.lost() == 1
    status(model, "a-1", {"online": True})
    assert model.lost() == 0


def test_numeric_fields_are_read_by_dotted_path_and_booleans_are_not_numbers() -> None:
    """Numbers anywhere in a JSON object are fields by path; a bare number is `value`; text has none."""
    body = {"seq": 3, "values": {"temperature": 21.5, "heating": True, "pos": {"lat": 52.1}}, "s": "x"}
    assert numeric_fields(json.dumps(body).encode()) == {
        "seq": 3.0,
        "values.temperature": 21.5,
        "values.pos.lat": 52.1,
    }
    assert numeric_fields(b"21") == {"value": 21.0}
    assert numeric_fields(b"not json") == {}
    assert numeric_fields(b"[1, 2]") == {}


def test_each_topic_keeps_its_last_message_with_retain_and_qos() -> None:
    """The topic tree's node of a topic holds its last message, retained flag and QoS included."""
    model = FleetModel()
    model.ingest("lab/a/b", b'{"x": 1}', True, T, 1)
    model.ingest("lab/a/b", b'{"x": 2}', False, T + 1, 2)
    node = model.topic("lab/a/b")
    assert node is not None
    assert node.last is not None
    assert (node.last.payload, node.last.retain, node.last.qos, node.last.at) == (
        b'{"x": 2}',
        False,
        2,
        T + 1,
    )
    parent = model.topic("lab/a")
    assert parent is not None
    assert parent.last is None
    assert model.topic("lab/nope") is None


def test_a_followed_topic_keeps_its_numbers_from_the_history_on() -> None:
    """Following a topic reads its earlier messages from the history, then each new one."""
    model = FleetModel()
    for seq in range(3):
        telemetry(model, "d-1", seq, at=T + seq, temperature=20.0 + seq)
    telemetry(model, "d-2", 0, temperature=99.0)
    model.follow("fleet/d-1/telemetry")
    telemetry(model, "d-1", 3, at=T + 3, temperature=23.0)
    assert [(at, numbers["values.temperature"]) for at, numbers in model.followed] == [
        (T, 20.0),
        (T + 1, 21.0),
        (T + 2, 22.0),
        (T + 3, 23.0),
    ]
    model.follow(None)
    telemetry(model, "d-1", 4)
    assert not model.followed


def test_what_devices_sent_while_the_watcher_was_away_is_not_their_loss() -> None:
    """After the watcher re-attaches, the seq it missed meanwhile counts neither as loss nor as behind."""
    model = FleetModel()
    model.synced(T, "attach")
    telemetry(model, "d-1", 0)
    telemetry(model, "d-1", 1)
    model.synced(T + 30, "attach")
    telemetry(model, "d-1", 40, at=T + 30)
    telemetry(model, "d-1", 42, at=T + 31)
    assert model.devices["d-1"].gaps == 1
    assert model.sync().missed == 1


def test_mqtt5_properties_are_kept_by_topic_under_the_device_and_exported() -> None:
    """A v5 message's properties are kept on its device by the topic under it (a request to a known
    device too), and the export has them as `fleet tail` prints them; 3.1.1 messages have none."""
    model = FleetModel()
    tagged = Properties(content_type="application/json", user_properties=(("k", "1"), ("k", "2")))
    model.ingest("fleet/d-1/telemetry", b'{"seq": 0}', False, T, 0, tagged)
    request = Properties(response_topic="fleet/d-1/cmd/response/c1", correlation_data=b"c1")
    model.ingest("fleet/d-1/cmd", b'{"id": "c1", "op": "ping"}', False, T, 1, request)
    model.ingest("fleet/d-2/cmd", b'{"id": "c2", "op": "ping"}', False, T, 1, request)
    model.ingest("fleet/d-1/status", b'{"online": true}', False, T)
    assert model.devices["d-1"].properties == {"telemetry": tagged, "cmd": request}
    assert "d-2" not in model.devices, "a request to an unknown device makes no device"
    records = [message.as_json() for message in model.history]
    assert records[0]["properties"] == {
        "content_type": "application/json",
        "user_properties": [["k", "1"], ["k", "2"]],
    }
    assert records[1]["properties"]["correlation_data"] == "YzE="
    assert "properties" not in records[3]
