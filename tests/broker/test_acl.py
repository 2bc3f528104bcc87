"""Tests of broker.acl: Mosquitto-style ACL files and the publish, read and subscribe checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.acl import AclFile
from fleet.errors import ConfigError, TopicError


def _acl(tmp_path: Path, text: str) -> AclFile:
    path = tmp_path / "acl"
    path.write_text(text, encoding="utf-8")
    return AclFile.load(path)


def test_user_blocks_grant_only_their_own_topics(tmp_path: Path) -> None:
    """Each `user` block grants its topics to that user only; a user without a block gets nothing."""
    acl = _acl(tmp_path, "user alice\ntopic home/alice/#\n\nuser bob\ntopic home/bob/#\n")
    assert acl.can_publish("c1", "alice", "home/alice/lamp")
    assert acl.can_read("c1", "alice", "home/alice/lamp")
    assert not acl.can_publish("c1", "alice", "home/bob/lamp")
    assert not acl.can_read("c1", "alice", "home/bob/lamp")
    assert acl.can_publish("c2", "bob", "home/bob")
    assert not acl.can_publish("c3", "carol", "home/alice/lamp")
    assert not acl.can_read("c4", None, "home/alice/lamp")


def test_repeated_user_block_adds_to_the_first(tmp_path: Path) -> None:
    """A second `user alice` block adds rules to alice instead of replacing them."""
    acl = _acl(tmp_path, "user alice\ntopic a/#\nuser bob\ntopic b/#\nuser alice\ntopic c/#\n")
    assert acl.can_publish("c", "alice", "a/1")
    assert acl.can_publish("c", "alice", "c/1")
    assert not acl.can_publish("c", "alice", "b/1")


def test_read_write_and_readwrite_access(tmp_path: Path) -> None:
    """`read` allows only delivery, `write` only publishing, `readwrite` and no keyword allow both."""
    acl = _acl(
        tmp_path,
        "user u\ntopic read sensors/#\ntopic write cmd/#\ntopic readwrite chat/#\ntopic both/#\n",
    )
    assert acl.can_read("c", "u", "sensors/t1")
    assert not acl.can_publish("c", "u", "sensors/t1")
    assert acl.can_publish("c", "u", "cmd/reboot")
    assert not acl.can_read("c", "u", "cmd/reboot")
    for topic in ("chat/room", "both/x"):
        assert acl.can_read("c", "u", topic)
        assert acl.can_publish("c", "u", topic)


def test_pattern_write_lets_a_device_publish_only_under_its_own_id(tmp_path: Path) -> None:
    """`pattern write fleet/%c/#` lets each client publish under fleet/<its id>/ and nowhere else."""
    acl = _acl(tmp_path, "pattern write fleet/%c/#\n")
    assert acl.can_publish("device-1", None, "fleet/device-1/telemetry")
    assert acl.can_publish("device-1", "alice", "fleet/device-1")
    assert not acl.can_publish("device-1", None, "fleet/device-2/telemetry")
    assert not acl.can_publish("device-1", None, "fleet/device-10/telemetry")
    assert not acl.can_read("device-1", None, "fleet/device-1/telemetry")


def test_username_pattern_needs_a_username(tmp_path: Path) -> None:
    """`%u` is the username; a pattern with %u, grant or deny, does not apply to an anonymous client."""
    acl = _acl(
        tmp_path,
        "topic read public/#\n"
        "pattern read users/%u/#\n"
        "pattern read clients/%c/%u\n"
        "pattern deny users/%u/key\n",
    )
    assert acl.can_read("c1", None, "public/news")
    assert not acl.can_read("c1", "alice", "users/alice/key")
    assert acl.can_read("c1", "alice", "users/alice/inbox")
    assert acl.can_read("c1", "alice", "clients/c1/alice")
    assert not acl.can_read("c1", "alice", "users/bob/inbox")
    assert not acl.can_read("c1", None, "users//inbox")
    assert not acl.can_read("c1", None, "clients/c1/")


def test_substituted_values_are_not_substituted_again(tmp_path: Path) -> None:
    """A client id that itself reads '%u' is inserted literally, not expanded to the username."""
    acl = _acl(tmp_path, "pattern write fleet/%c/#\n")
    assert acl.can_publish("%u", "alice", "fleet/%u/x")
    assert not acl.can_publish("%u", "alice", "fleet/alice/x")


def test_deny_wins_over_grants_wherever_it_is(tmp_path: Path) -> None:
    """A matching deny beats any grant, whether it comes before or after it, in a block or a pattern."""
    acl = _acl(
        tmp_path,
        "user alice\n"
        "topic #\n"
        "topic deny fleet/secret/#\n"
        "pattern deny fleet/%c/private\n"
        "pattern readwrite fleet/%c/#\n",
    )
    assert acl.can_publish("d1", "alice", "fleet/public")
    assert not acl.can_publish("d1", "alice", "fleet/secret/plans")
    assert not acl.can_read("d1", "alice", "fleet/secret")
    assert not acl.can_read("d1", "alice", "fleet/d1/private")
    assert acl.can_read("d1", "alice", "fleet/d2/private")
    assert acl.can_read("d2", "bob", "fleet/d2/status")
    assert not acl.can_read("d2", "bob", "fleet/d2/private")


def test_topic_lines_before_any_user_are_for_anonymous_clients(tmp_path: Path) -> None:
    """`topic` lines before the first `user` line apply to clients without username, and only to them."""
    acl = _acl(tmp_path, "topic read public/#\nuser alice\ntopic private/alice/#\n")
    assert acl.can_read("c", None, "public/news")
    assert not acl.can_publish("c", None, "public/news")
    assert not acl.can_read("c", None, "private/alice/x")
    assert not acl.can_read("c", "alice", "public/news")
    assert acl.can_read("c", "alice", "private/alice/x")


@pytest.mark.parametrize("client_id", ["+", "#", "x/#", "device-2/..", "other/x", ""])
def test_unsafe_client_id_does_not_widen_a_pattern(tmp_path: Path, client_id: str) -> None:
    """A client id with '+', '#' or '/', or an empty one, is not substituted: grant patterns do not apply."""
    acl = _acl(tmp_path, "pattern write fleet/%c/#\n")
    for topic in (
        "fleet/device-2/telemetry",
        "fleet/device-2/../x",
        "fleet/other/x/y",
        "fleet/x/y",
        "fleet//x",
    ):
        assert not acl.can_publish(client_id, None, topic)
    assert acl.can_subscribe(client_id, None, "fleet/#")  # no deny rule applies, so no refusal


@pytest.mark.parametrize("username", ["a+", "#", "alice/x"])
def test_unsafe_username_does_not_widen_a_pattern(tmp_path: Path, username: str) -> None:
    """A username with '+', '#' or '/' is not substituted into %u patterns either."""
    acl = _acl(tmp_path, "pattern readwrite users/%u/#\n")
    assert not acl.can_read("c", username, "users/alice/x/inbox")
    assert not acl.can_read("c", username, f"users/{username.replace('+', 'p').replace('#', 'h')}/inbox")


def test_unsafe_id_under_a_deny_pattern_is_denied_everything(tmp_path: Path) -> None:
    """If a deny pattern cannot be substituted for a client, the client is denied everything (fail closed)."""
    acl = _acl(tmp_path, "user alice\ntopic #\npattern deny private/%c/#\n")
    assert acl.can_publish("d1", "alice", "private/d2/x")
    assert not acl.can_publish("d1", "alice", "private/d1/x")
    assert not acl.can_publish("d1/x", "alice", "anything")
    assert not acl.can_read("d1/x", "alice", "private/d2/x")
    assert not acl.can_subscribe("d1/x", "alice", "anything")


def test_empty_file_denies_everything_and_hash_skips_dollar_topics(tmp_path: Path) -> None:
    """An ACL file with no grant denies all; `#` does not reach $SYS topics, `$SYS/#` does."""
    assert not _acl(tmp_path, "# nothing here\n").can_publish("c", None, "a")
    acl = _acl(tmp_path, "topic read #\ntopic read $SYS/broker/#\n")
    assert acl.can_read("c", None, "a/b")
    assert not acl.can_read("c", None, "$SYS/uptime")
    assert acl.can_read("c", None, "$SYS/broker/uptime")


def test_topics_may_contain_spaces_and_comments_may_be_indented(tmp_path: Path) -> None:
    """The topic is the rest of the line, spaces included; indented '#' lines are comments."""
    acl = _acl(tmp_path, "user alice\n   # my rooms\ntopic read living room/#   \n")
    assert acl.can_read("c", "alice", "living room/lamp")
    assert not acl.can_read("c", "alice", "living")


def test_subscribe_is_refused_only_by_a_deny_rule_matching_the_filter(tmp_path: Path) -> None:
    """can_subscribe allows a filter unless a deny rule matches it literally; can_read filters messages."""
    acl = _acl(
        tmp_path,
        "user alice\ntopic read fleet/#\ntopic deny fleet/secret/#\ntopic deny fleet/+/private\n"
        "topic deny fleet/alarm/+\n",
    )
    for refused in ("fleet/secret/#", "fleet/secret/x", "fleet/secret", "fleet/+/private", "fleet/a/private",
                    "fleet/alarm/+", "fleet/alarm/x"):  # fmt: skip
        assert not acl.can_subscribe("c", "alice", refused), refused
    for allowed in ("fleet/#", "fleet/+/x", "#", "fleet/+", "fleet/alarm/#", "fleet/a/private/x"):
        assert acl.can_subscribe("c", "alice", allowed), allowed
    assert acl.can_read("c", "alice", "fleet/a/x")
    assert not acl.can_read("c", "alice", "fleet/secret/x")
    assert not acl.can_read("c", "alice", "fleet/alarm/x")


def test_subscribe_without_any_grant_is_allowed_like_mosquitto(tmp_path: Path) -> None:
    """With no deny rule, a subscription is allowed even without read access, as Mosquitto 2.0 does."""
    acl = _acl(tmp_path, "user alice\ntopic read a/#\n")
    assert acl.can_subscribe("c", "bob", "b/#")
    assert not acl.can_read("c", "bob", "b/1")


def test_pattern_deny_refuses_a_subscription(tmp_path: Path) -> None:
    """A deny pattern, once substituted, refuses a matching subscription of that client only."""
    acl = _acl(tmp_path, "pattern deny inbox/%c/#\n")
    assert not acl.can_subscribe("d1", None, "inbox/d1/#")
    assert acl.can_subscribe("d2", None, "inbox/d1/#")


def test_invalid_topic_or_filter_argument_raises_topic_error(tmp_path: Path) -> None:
    """A wildcard in a topic name, or a broken filter, is a caller bug and raises TopicError."""
    acl = _acl(tmp_path, "topic #\n")
    with pytest.raises(TopicError):
        acl.can_publish("c", None, "a/+")
    with pytest.raises(TopicError):
        acl.can_subscribe("c", None, "a/#/b")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("topic", "topic: missing topic"),
        ("topic deny", "missing topic after access 'deny'"),
        ("pattern", "pattern: missing topic"),
        ("topic rw a/b", "invalid access 'rw'"),
        ("topic read a/#/b", "invalid ACL topic"),
        ("pattern write fleet/%c+", "invalid ACL topic"),
        ("user", "missing username"),
        ("users alice", "unknown keyword 'users'"),
        ("allow a/b", "unknown keyword 'allow'"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    """Each malformed line raises ConfigError with where='file:line' and a reason saying what is wrong."""
    path = tmp_path / "acl"
    path.write_text(f"# header\n\nuser alice\n{line}\ntopic a/b\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        AclFile.load(path)
    assert caught.value.where == f"{path}:4"
    assert reason in caught.value.reason


def test_missing_file_raises_config_error(tmp_path: Path) -> None:
    """A missing ACL file raises ConfigError naming the file, not a bare OSError."""
    with pytest.raises(ConfigError, match="cannot read ACL file") as caught:
        AclFile.load(tmp_path / "nope")
    assert caught.value.where == str(tmp_path / "nope")
