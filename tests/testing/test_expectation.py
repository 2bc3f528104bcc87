"""Expectations: which events match, how `--expect` text parses, and how they print in failures."""

from __future__ import annotations

import pytest

from fleet.errors import TopicError
from fleet.testing.streams import Expectation, StreamEvent


def event(data: object) -> StreamEvent:
    return StreamEvent(data, 0.0)


STATUS = event({"topic": "fleet/d1/status", "payload": {"online": False, "reason": "lost"}})


def test_parse_reads_a_topic_filter_and_nested_payload_values_as_json() -> None:
    """`topic=F,payload.a.b=V`: V is JSON when it parses (false, 21.5, "x"), else text; dots nest."""
    parsed = Expectation.parse(
        'topic=fleet/+/telemetry, payload.values.t=21.5,payload.ok=false,payload.s="x",payload.w=lost'
    )
    assert parsed == Expectation(
        "fleet/+/telemetry", {"values": {"t": 21.5}, "ok": False, "s": "x", "w": "lost"}
    )
    assert (
        str(parsed)
        == 'topic=fleet/+/telemetry,payload.values.t=21.5,payload.ok=false,payload.s="x",payload.w="lost"'
    )


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("kind=status", "unknown key 'kind'"),
        ("payload=1", "unknown key 'payload'"),
        ("payload..a=1", "unknown key 'payload..a'"),
        ("topic", "'topic' is not KEY=VALUE"),
    ],
)
def test_parse_names_what_is_wrong(text: str, error: str) -> None:
    """A key that is neither `topic` nor `payload.PATH`, or an item without '=', is refused by name."""
    with pytest.raises(ValueError, match=error):
        Expectation.parse(text)


def test_an_invalid_topic_filter_is_refused() -> None:
    """The topic filter is validated by the project's one matcher, with the MQTT rule it breaks."""
    with pytest.raises(TopicError, match=r"MQTT-4\.7\.1-2"):
        Expectation("fleet/#/status")


def test_matching_uses_mqtt_wildcards_and_payload_subsets() -> None:
    """The topic matches by MQTT filter; `match` is a subset of the payload, and True is not 1."""
    assert Expectation("fleet/+/status", {"online": False}).matches(STATUS)
    assert Expectation("fleet/#").matches(STATUS)
    assert not Expectation("fleet/+/telemetry").matches(STATUS)
    assert not Expectation(None, {"online": 0}).matches(STATUS)
    assert not Expectation(None, {"online": False, "extra": 1}).matches(STATUS)
    assert Expectation(None, {"t": 1}).matches(event({"t": 1.0}))
    assert not Expectation(None, {"on": True}).matches(event({"on": 1}))


def test_frames_without_a_topic_or_payload_field_match_on_their_whole_data() -> None:
    """Someone else's frames: no `topic` means a topic filter never matches; the payload is all the data."""
    quote = event({"symbol": "ACME", "price": 3})
    assert quote.topic is None
    assert quote.payload == {"symbol": "ACME", "price": 3}
    assert Expectation(None, {"price": 3}).matches(quote)
    assert not Expectation("#", {"price": 3}).matches(quote)
    assert Expectation().matches(event("not json"))
    assert str(Expectation()) == "anything"


TAGGED = event(
    {
        "topic": "fleet/d1/telemetry",
        "payload": {"seq": 1},
        "properties": {
            "content_type": "application/json",
            "user_properties": [["tenant", "b"], ["site", "north"], ["tenant", "a"]],
        },
    }
)


def test_user_properties_must_be_present_in_any_order_as_often_as_given() -> None:
    """Each given pair occurs among the message's user properties, in any order; a pair given twice
    must occur twice; a key with another value, or a message without properties, does not match."""
    assert Expectation(user_properties=(("tenant", "a"),)).matches(TAGGED)
    assert Expectation(user_properties=(("tenant", "a"), ("tenant", "b"))).matches(TAGGED)
    assert Expectation(user_properties=(("site", "north"), ("tenant", "b"))).matches(TAGGED)
    assert not Expectation(user_properties=(("tenant", "a"), ("tenant", "a"))).matches(TAGGED)
    assert not Expectation(user_properties=(("tenant", "c"),)).matches(TAGGED)
    assert not Expectation(user_properties=(("tenant", "a"),)).matches(STATUS)


def test_the_content_type_is_compared_as_it_is() -> None:
    """`content_type` matches the message's Content Type exactly; a message without one never matches."""
    assert Expectation(content_type="application/json").matches(TAGGED)
    assert not Expectation(content_type="application/JSON").matches(TAGGED)
    assert not Expectation(content_type="application/json").matches(STATUS)


def test_parse_reads_user_properties_and_the_content_type() -> None:
    """`user_property.KEY=VALUE` (repeatable) and `content_type=TYPE` parse, and print back the same."""
    text = "topic=fleet/#,user_property.tenant=a,user_property.tenant=b,content_type=application/json"
    parsed = Expectation.parse(text)
    assert parsed == Expectation("fleet/#", {}, (("tenant", "a"), ("tenant", "b")), "application/json")
    assert str(parsed) == text
    with pytest.raises(ValueError, match=r"user_property\.KEY=VALUE"):
        Expectation.parse("user_property.=a")


def test_user_properties_must_be_pairs_of_strings() -> None:
    """A user property that is not a (key, value) pair of strings is refused when the expectation is made."""
    with pytest.raises(ValueError, match="pairs of strings"):
        Expectation(user_properties=(("tenant",),))  # type: ignore[arg-type]
