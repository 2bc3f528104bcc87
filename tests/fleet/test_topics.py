"""The one topic matcher: validation rules and matching, and the broker's trees agree with it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.message import Message
from broker.retained import RetainedStore
from fleet.errors import TopicError
from fleet.routing import SubscriptionTree
from fleet.topics import matches, validate_filter, validate_topic


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("sport/tennis/player1/#", "sport/tennis/player1", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
        ("sport/#", "sport", True),
        ("#", "a/b/c", True),
        ("sport/tennis/+", "sport/tennis/player1", True),
        ("sport/tennis/+", "sport/tennis/player1/ranking", False),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("#", "$SYS/broker", False),
        ("+/monitor/Clients", "$SYS/monitor/Clients", False),
        ("$SYS/#", "$SYS/broker", True),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
        ("a/b", "a/b", True),
        ("a/b", "A/b", False),
    ],
)
def test_mqtt_4_7_matching_examples_from_the_spec(topic_filter: str, topic: str, expected: bool) -> None:
    """The matcher gives the answers of the spec's examples in section 4.7."""
    assert matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    ("topic_filter", "rule"),
    [
        ("sport/tennis#", "MQTT-4.7.1-2"),
        ("sport/tennis/#/ranking", "MQTT-4.7.1-2"),
        ("sport+", "MQTT-4.7.1-3"),
        ("", "MQTT-4.7.3-1"),
        ("a\x00b", "MQTT-4.7.3-2"),
    ],
)
def test_invalid_filters_are_refused_with_the_rule_they_break(topic_filter: str, rule: str) -> None:
    """Each invalid filter raises TopicError whose message names the spec rule."""
    with pytest.raises(TopicError, match=rule):
        validate_filter(topic_filter)


def test_topic_names_must_not_contain_wildcards() -> None:
    """A topic name with '+' or '#' is refused [MQTT-3.3.2-2]."""
    with pytest.raises(TopicError, match=r"MQTT-3\.3\.2-2"):
        validate_topic("a/+/c")
    assert validate_topic("a/b c/$d") == "a/b c/$d"


levels = st.sampled_from(["a", "b", "c", "", "$x"])
topics = st.lists(levels, min_size=1, max_size=4).map("/".join)
filter_levels = st.sampled_from(["a", "b", "c", "", "+", "$x"])
filters = st.tuples(st.lists(filter_levels, min_size=1, max_size=4), st.booleans()).map(
    lambda parts: "/".join(parts[0] + (["#"] if parts[1] else []))
)


@given(st.lists(filters, min_size=1, max_size=8, unique=True), topics)
def test_subscription_tree_agrees_with_the_matcher(subscribed: list[str], topic: str) -> None:
    """The broker's routing tree finds exactly the filters the matcher says match."""
    tree: SubscriptionTree[str] = SubscriptionTree()
    for index, topic_filter in enumerate(subscribed):
        tree.add(topic_filter, topic_filter, index % 3)
    assert set(tree.match(topic)) == {f for f in subscribed if matches(f, topic)}
    for topic_filter in subscribed:
        assert tree.remove(topic_filter, topic_filter)
    assert len(tree) == 0
    assert tree.match(topic) == {}


@given(st.lists(topics, min_size=1, max_size=8, unique=True), filters)
def test_retained_store_agrees_with_the_matcher(stored: list[str], topic_filter: str) -> None:
    """The retained store returns exactly the stored topics the matcher says the filter matches."""
    store = RetainedStore()
    for topic in stored:
        store.store(Message(topic, b"v", 0, True))
    assert sorted(m.topic for m in store.matching(topic_filter)) == sorted(
        t for t in stored if matches(topic_filter, t)
    )
    for topic in stored:
        store.store(Message(topic, b"", 0, True))
    assert len(store) == 0
