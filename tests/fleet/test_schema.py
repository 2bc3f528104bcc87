"""The fleet config file: every error is a ConfigError saying 'file: field.path: reason', and every
shipped config in configs/ validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import load_broker_settings
from fleet.errors import ConfigError, FleetError
from fleet.schema import FleetConfig, load_fleet_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))

ONE_GROUP = '[[groups]]\nname = "a"\ncount = 2\n'


def write(tmp_path: Path, text: str, name: str = "x.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_fleet_config(path)
    return caught.value


# Shipped configs


def test_configs_directory_is_not_empty() -> None:
    """configs/ holds at least the demo config, so the parametrized check below checks something."""
    assert ROOT / "configs" / "demo.toml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_every_shipped_config_validates(path: Path) -> None:
    """Every configs/*.toml loads as a fleet config, and its embedded-broker table as broker settings."""
    config = load_fleet_config(path)
    assert config.size > 0
    if config.broker is None:
        load_broker_settings(path, {})


# The error format


def test_error_names_file_field_path_and_reason(tmp_path: Path) -> None:
    """An impossible range in the second group reads 'x.toml: groups[1].telemetry.temperature.min: ...'."""
    path = write(
        tmp_path,
        ONE_GROUP + '[[groups]]\nname = "b"\ncount = 1\n'
        '[groups.telemetry.temperature]\nkind = "uniform"\nmin = 30\nmax = 25\n',
    )
    error = config_error(path)
    assert str(error) == f"{path}: groups[1].telemetry.temperature.min: must be less than max (30 >= 25)"
    assert error.where == f"{path}: groups[1].telemetry.temperature.min"
    assert error.reason == "must be less than max (30 >= 25)"
    assert isinstance(error, FleetError)


INVALID = [
    # (id, TOML, field path, a fragment of the reason)
    ("unknown top-level key", "colour = 1\n" + ONE_GROUP, "colour", "unknown key"),
    ("unknown group key", ONE_GROUP + "foo = 2\n", "groups[0].foo", "unknown key"),
    (
        "unknown nested key",
        ONE_GROUP + "[groups.backoff]\ninitail = 1\n",
        "groups[0].backoff.initail",
        "unknown key",
    ),
    (
        "unknown metric key",
        ONE_GROUP + '[groups.telemetry.t]\nkind = "uniform"\nmin = 1\nmax = 2\nfoo = 1\n',
        "groups[0].telemetry.t.foo",
        "unknown key",
    ),
    (
        "unknown key in an external broker table",
        '[broker]\nurl = "mqtt://h"\nport = 3\n' + ONE_GROUP,
        "broker.port",
        "unknown key",
    ),
    ("the internal embedded key", "embedded = {}\n" + ONE_GROUP, "embedded", "unknown key"),
    ("count is a string", '[[groups]]\nname = "a"\ncount = "ten"\n', "groups[0].count", "integer"),
    ("count is fractional", '[[groups]]\nname = "a"\ncount = 1.5\n', "groups[0].count", "integer"),
    ("seed is a string", 'seed = "x"\n' + ONE_GROUP, "seed", "integer"),
    ("groups is a table", '[groups]\nname = "a"\n', "groups", "list"),
    ("telemetry is a number", ONE_GROUP + "telemetry = 3\n", "groups[0].telemetry", "dictionary"),
    ("qos out of range", ONE_GROUP + "qos = { telemetry = 3 }\n", "groups[0].qos.telemetry", "0, 1 or 2"),
    (
        "negative count",
        '[[groups]]\nname = "a"\ncount = -1\n',
        "groups[0].count",
        "greater than or equal to 0",
    ),
    ("zero interval", ONE_GROUP + "interval = 0\n", "groups[0].interval", "greater than 0"),
    ("negative interval", ONE_GROUP + "interval = -1\n", "groups[0].interval", "greater than 0"),
    ("zero duration", "duration = 0\n" + ONE_GROUP, "duration", "greater than 0"),
    (
        "negative keepalive",
        ONE_GROUP + "keepalive = -1\n",
        "groups[0].keepalive",
        "greater than or equal to 0",
    ),
    (
        "backoff initial above max",
        ONE_GROUP + "[groups.backoff]\ninitial = 5\nmax = 1\n",
        "groups[0].backoff.initial",
        "must not be more than max (5 > 1)",
    ),
    (
        "backoff multiplier below 1",
        ONE_GROUP + "[groups.backoff]\nmultiplier = 0.5\n",
        "groups[0].backoff.multiplier",
        "greater than or equal to 1",
    ),
    (
        "intermittent without online",
        ONE_GROUP + '[groups.connectivity]\nmode = "intermittent"\noffline = { dist = "fixed", value = 1 }\n',
        "groups[0].connectivity.online",
        "required when mode is 'intermittent'",
    ),
    (
        "intermittent without offline",
        ONE_GROUP + '[groups.connectivity]\nmode = "intermittent"\nonline = { dist = "fixed", value = 1 }\n',
        "groups[0].connectivity.offline",
        "required when mode is 'intermittent'",
    ),
    (
        "unknown connectivity mode",
        ONE_GROUP + '[groups.connectivity]\nmode = "sometimes"\n',
        "groups[0].connectivity.mode",
        "'always' or 'intermittent'",
    ),
    (
        "all end weights zero",
        ONE_GROUP + "[groups.connectivity]\nends = { clean = 0 }\n",
        "groups[0].connectivity.ends.clean",
        "at least one weight must be positive",
    ),
    (
        "silent ends with keepalive 0",
        ONE_GROUP + "keepalive = 0\n[groups.connectivity]\nends = { silent = 1 }\n",
        "groups[0].keepalive",
        "silent ends need a keepalive above 0",
    ),
    (
        "duplicate group names",
        ONE_GROUP + '[[groups]]\nname = "a"\ncount = 1\nid = "other-{index}"\n',
        "groups",
        "group name 'a' is used twice",
    ),
    (
        "device ids collide across groups",
        '[[groups]]\nname = "a"\ncount = 2\nid = "dev-{index}"\n'
        '[[groups]]\nname = "b"\ncount = 3\nid = "dev-{index}"\n',
        "groups",
        "device id 'dev-0' of groups[1] is also one of groups[0]",
    ),
    (
        "device ids collide within a group",
        '[[groups]]\nname = "a"\ncount = 2\nid = "same"\n',
        "groups",
        "device id 'same'",
    ),
    ("no groups", "seed = 1\n", "groups", "Field required"),
    ("empty groups", "groups = []\n", "groups", "at least 1 item"),
    ("bad group name", '[[groups]]\nname = "a b"\ncount = 1\n', "groups[0].name", "pattern"),
    (
        "unknown id placeholder",
        ONE_GROUP + 'id = "{serial}"\n',
        "groups[0].id",
        "unknown placeholder {serial}",
    ),
    (
        "unknown topic placeholder",
        ONE_GROUP + 'topics = { telemetry = "fleet/{serial}/t" }\n',
        "groups[0].topics.telemetry",
        "unknown placeholder {serial}",
    ),
    (
        "unbalanced brace in a topic",
        ONE_GROUP + 'topics = { status = "fleet/{device/s" }\n',
        "groups[0].topics.status",
        "bad template",
    ),
    (
        "wildcard in a topic name",
        ONE_GROUP + 'topics = { telemetry = "fleet/+/t" }\n',
        "groups[0].topics.telemetry",
        "wildcards",
    ),
    ("empty topic", ONE_GROUP + 'topics = { ack = "" }\n', "groups[0].topics.ack", "at least one character"),
    (
        "unknown metric kind",
        ONE_GROUP + '[groups.telemetry.x]\nkind = "nope"\n',
        "groups[0].telemetry.x.kind",
        "unknown kind 'nope'",
    ),
    (
        "an MQTT 5 option on a 3.1.1 group",
        ONE_GROUP + "will_delay = 30\n",
        "groups[0].will_delay",
        'an MQTT 5 option; set protocol = "5"',
    ),
    (
        "topic_alias on a group that says 3.1.1",
        ONE_GROUP + 'protocol = "3.1.1"\ntopic_alias = false\n',
        "groups[0].topic_alias",
        "an MQTT 5 option",
    ),
    ("unknown protocol", ONE_GROUP + 'protocol = "4"\n', "groups[0].protocol", "'3.1.1' or '5'"),
    (
        "receive_maximum 0",
        ONE_GROUP + 'protocol = "5"\nreceive_maximum = 0\n',
        "groups[0].receive_maximum",
        "greater than or equal to 1",
    ),
    (
        "session expiry past 32 bits",
        ONE_GROUP + 'protocol = "5"\nsession_expiry = 4294967296\n',
        "groups[0].session_expiry",
        "less than or equal to 4294967295",
    ),
    (
        "unknown placeholder in a user property",
        ONE_GROUP + 'protocol = "5"\nuser_properties = { tenant = "{tenant}" }\n',
        "groups[0].user_properties",
        "unknown placeholder {tenant}",
    ),
    (
        "bad broker url scheme",
        '[broker]\nurl = "http://h"\n' + ONE_GROUP,
        "broker.url",
        "pattern",
    ),
]


@pytest.mark.parametrize(
    ("text", "field", "reason"), [case[1:] for case in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_config_names_the_field(tmp_path: Path, text: str, field: str, reason: str) -> None:
    """Each invalid config raises ConfigError 'file: field.path: reason' for the field at fault."""
    path = write(tmp_path, text)
    error = config_error(path)
    assert error.where == f"{path}: {field}", str(error)
    assert reason in error.reason, str(error)
    assert str(error) == f"{path}: {field}: {error.reason}"


WRONG_TYPES = [
    ("a boolean count", ONE_GROUP.replace("count = 2", "count = true"), "groups[0].count"),
    ("a string interval", ONE_GROUP + 'interval = "5"\n', "groups[0].interval"),
    ("a string boolean", ONE_GROUP + 'clean_session = "no"\n', "groups[0].clean_session"),
]


@pytest.mark.parametrize(
    ("text", "field"), [case[1:] for case in WRONG_TYPES], ids=[c[0] for c in WRONG_TYPES]
)
def test_values_of_the_wrong_toml_type_are_errors(tmp_path: Path, text: str, field: str) -> None:
    """TOML values are typed: a boolean or string where a number or boolean belongs is an error."""
    path = write(tmp_path, text)
    error = config_error(path)
    assert error.where == f"{path}: {field}", str(error)


def test_distribution_errors_name_the_field_not_the_union_tag(tmp_path: Path) -> None:
    """A bad online duration is blamed on 'connectivity.online.min', without pydantic's 'uniform' tag."""
    path = write(
        tmp_path,
        ONE_GROUP + '[groups.connectivity]\nmode = "intermittent"\n'
        'online = { dist = "uniform", min = 5, max = 1 }\noffline = { dist = "fixed", value = 1 }\n',
    )
    error = config_error(path)
    assert str(error) == f"{path}: groups[0].connectivity.online.min: must not be more than max (5 > 1)"


def test_bad_id_format_spec_names_the_id_field(tmp_path: Path) -> None:
    """An id template whose format spec cannot format the index is blamed on 'groups[0].id'."""
    path = write(tmp_path, ONE_GROUP + 'id = "{index:q}"\n')
    error = config_error(path)
    assert error.where == f"{path}: groups[0].id", str(error)


@pytest.mark.parametrize("template", ["+{index}", "dev#{index}"])
def test_id_template_that_makes_invalid_topics_is_an_error(tmp_path: Path, template: str) -> None:
    """Device ids are put into topic names, so an id with a wildcard character is rejected at load time."""
    path = write(tmp_path, ONE_GROUP + f'id = "{template}"\n')
    error = config_error(path)
    assert error.where.startswith(f"{path}: groups[0]."), str(error)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A config path that does not exist gives 'file: no such file'."""
    path = tmp_path / "missing.toml"
    assert str(config_error(path)) == f"{path}: no such file"


def test_toml_syntax_error_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not TOML gives 'file: not valid TOML: ...' with the position."""
    path = write(tmp_path, "[[groups]\n")
    error = config_error(path)
    assert error.where == str(path)
    assert error.reason.startswith("not valid TOML:")
    assert "line 1" in error.reason


# The [broker] table


def test_broker_table_with_url_targets_an_external_broker(tmp_path: Path) -> None:
    """A [broker] table with url is an external target with its credentials; nothing is embedded."""
    path = write(
        tmp_path, '[broker]\nurl = "mqtts://h.example:8883"\nusername = "u"\npassword = "p"\n' + ONE_GROUP
    )
    config = load_fleet_config(path)
    assert config.broker is not None
    assert (config.broker.url, config.broker.username, config.broker.password) == (
        "mqtts://h.example:8883",
        "u",
        "p",
    )
    assert config.embedded == {}


def test_broker_table_without_url_is_embedded_broker_settings(tmp_path: Path) -> None:
    """A [broker] table without url holds the embedded broker's settings, which load as BrokerSettings."""
    path = write(tmp_path, "[broker]\nport = 0\nws_port = 0\nmax_queued = 7\n" + ONE_GROUP)
    config = load_fleet_config(path)
    assert config.broker is None
    assert config.embedded == {"port": 0, "ws_port": 0, "max_queued": 7}
    settings = load_broker_settings(path, {})
    assert (settings.port, settings.ws_port, settings.max_queued) == (0, None, 7)


def test_unknown_embedded_broker_key_is_an_error_when_the_broker_settings_load(tmp_path: Path) -> None:
    """An unknown key in an embedded [broker] table is reported as 'file: broker.key: unknown key'."""
    path = write(tmp_path, "[broker]\nportt = 0\n" + ONE_GROUP)
    load_fleet_config(path)  # the fleet half is valid; the broker half is the broker's to check
    with pytest.raises(ConfigError) as caught:
        load_broker_settings(path, {})
    assert str(caught.value) == f"{path}: broker.portt: unknown key"


def test_no_broker_table_means_the_embedded_broker_with_defaults(tmp_path: Path) -> None:
    """Without a [broker] table the fleet targets the embedded broker, with no settings given."""
    config = load_fleet_config(write(tmp_path, ONE_GROUP))
    assert config.broker is None
    assert config.embedded == {}


# Values


def test_defaults_and_size(tmp_path: Path) -> None:
    """Defaults follow the architecture's topic scheme and QoS; size counts every group's devices."""
    config = load_fleet_config(write(tmp_path, ONE_GROUP + '[[groups]]\nname = "b"\ncount = 3\n'))
    assert config.size == 5
    group = config.groups[0]
    assert group.device_id(7) == "a-0007"
    assert (group.topics.telemetry, group.topics.status, group.topics.command, group.topics.ack) == (
        "fleet/{device}/telemetry",
        "fleet/{device}/status",
        "fleet/{device}/cmd",
        "fleet/{device}/cmd/ack",
    )
    assert (group.qos.status, group.qos.command) == (1, 1)


def test_config_is_frozen() -> None:
    """A validated config is a value: assigning to it raises."""
    config = FleetConfig.model_validate({"groups": [{"name": "a", "count": 1}]})
    with pytest.raises(ValueError, match="frozen"):
        config.seed = 3


def test_mqtt5_group_options_load(tmp_path: Path) -> None:
    """A protocol = "5" group takes every MQTT 5 option; a group without it speaks 3.1.1."""
    path = write(
        tmp_path,
        ONE_GROUP
        + 'protocol = "5"\nsession_expiry = 3600\nwill_delay = 30\nreceive_maximum = 10\n'
        + 'message_expiry = 60\ncontent_type = "application/json"\ntopic_alias = true\n'
        + 'user_properties = { tenant = "acme", serial = "{group}/{device}/{seq}" }\n',
    )
    group = load_fleet_config(path).groups[0]
    assert (group.protocol, group.protocol_level) == ("5", 5)
    assert (group.session_expiry, group.will_delay, group.receive_maximum) == (3600, 30, 10)
    assert list(group.user_properties.items()) == [("tenant", "acme"), ("serial", "{group}/{device}/{seq}")]
    assert load_fleet_config(write(tmp_path, ONE_GROUP)).groups[0].protocol_level == 4


def test_with_protocol_sets_every_group_and_keeps_the_rest(tmp_path: Path) -> None:
    """with_protocol("5") (fleet run -V mqttv5) makes every group MQTT 5 and changes nothing else."""
    config = load_fleet_config(
        write(tmp_path, ONE_GROUP + "interval = 2.0\n" + ONE_GROUP.replace('"a"', '"b"'))
    )
    five = config.with_protocol("5", "x.toml with -V mqttv5")
    assert [group.protocol for group in five.groups] == ["5", "5"]
    assert five.groups[0].model_copy(update={"protocol": "3.1.1"}) == config.groups[0]
    assert five.with_protocol("3.1.1", "w").groups == config.groups
