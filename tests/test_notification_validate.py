"""Validation of one notification: every rule, and the frame-size arithmetic."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pigeonpush.notification.validate import Draft, Invalid, Limits, validate
from pigeonpush.wire.codec import DEFAULT_MAX_FRAME, encode_push

LIMITS = Limits()


def ok(data: Any, limits: Limits = LIMITS) -> Draft:
    result = validate(data, limits)
    assert isinstance(result, Draft), result
    return result


def problems(data: Any, limits: Limits = LIMITS) -> list[Invalid]:
    result = validate(data, limits)
    assert isinstance(result, list), result
    assert result
    return result


def test_a_minimal_notification_gets_the_default_ttl_and_no_extras() -> None:
    draft = ok({"to": ["alice"], "title": "Hi", "text": "Hello"})
    assert draft == Draft(("alice",), "Hi", "Hello", LIMITS.default_ttl, {})


def test_all_fields() -> None:
    draft = ok(
        {"to": ["a", "b"], "title": "T", "text": "X", "ttl": 60, "extras": {"k": "v", "n": ""}}
    )
    assert draft.recipients == ("a", "b")
    assert draft.ttl == 60
    assert draft.extras == {"k": "v", "n": ""}


def test_duplicate_recipients_are_dropped_keeping_the_first_place() -> None:
    assert ok({"to": ["b", "a", "b", "c", "a"], "title": "", "text": ""}).recipients == (
        "b",
        "a",
        "c",
    )


def test_empty_title_and_text_are_allowed_for_data_only_messages() -> None:
    ok({"to": ["a"], "title": "", "text": "", "extras": {"sync": "1"}})


def test_a_ttl_given_as_an_integral_float_is_taken() -> None:
    assert ok({"to": ["a"], "title": "", "text": "", "ttl": 30.0}).ttl == 30


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        ([], "", "JSON object"),
        ("text", "", "JSON object"),
        ({"title": "t", "text": "x"}, "to", "required"),
        ({"to": "alice", "title": "t", "text": "x"}, "to", "list"),
        ({"to": [], "title": "t", "text": "x"}, "to", "at least one"),
        ({"to": [1], "title": "t", "text": "x"}, "to[0]", "clientId"),
        ({"to": ["ok", ""], "title": "t", "text": "x"}, "to[1]", "clientId"),
        ({"to": ["has space"], "title": "t", "text": "x"}, "to[0]", "clientId"),
        ({"to": ["x" * 129], "title": "t", "text": "x"}, "to[0]", "1 to 128"),
        ({"to": ["a"], "text": "x"}, "title", "required"),
        ({"to": ["a"], "title": 5, "text": "x"}, "title", "string"),
        ({"to": ["a"], "title": "t"}, "text", "required"),
        ({"to": ["a"], "title": "t", "text": None}, "text", "required"),
        ({"to": ["a"], "title": "t", "text": ["x"]}, "text", "string"),
        ({"to": ["a"], "title": "t" * 257, "text": "x"}, "title", "257 bytes"),
        ({"to": ["a"], "title": "t", "text": "x" * 2049}, "text", "at most 2048"),
        ({"to": ["a"], "title": "\ud800", "text": "x"}, "title", "surrogate"),
        ({"to": ["a"], "title": "t", "text": "x", "ttl": 0}, "ttl", "from 1 to"),
        ({"to": ["a"], "title": "t", "text": "x", "ttl": -5}, "ttl", "from 1 to"),
        ({"to": ["a"], "title": "t", "text": "x", "ttl": 2419201}, "ttl", "2419200"),
        ({"to": ["a"], "title": "t", "text": "x", "ttl": 1.5}, "ttl", "whole number"),
        ({"to": ["a"], "title": "t", "text": "x", "ttl": "60"}, "ttl", "whole number"),
        ({"to": ["a"], "title": "t", "text": "x", "ttl": True}, "ttl", "whole number"),
        ({"to": ["a"], "title": "t", "text": "x", "extras": []}, "extras", "object"),
        ({"to": ["a"], "title": "t", "text": "x", "extras": {"n": 1}}, "extras.n", "strings"),
        (
            {"to": ["a"], "title": "t", "text": "x", "extras": {"k": "\udfff"}},
            "extras.k",
            "Unicode",
        ),
        (
            {"to": ["a"], "title": "t", "text": "x", "extras": {"k": "v" * 1020}},
            "extras",
            "at most 1024",
        ),
        ({"to": ["a"], "title": "t", "text": "x", "tll": 5}, "tll", 'unknown field "tll"'),
    ],
)
def test_each_rule_names_its_field(data: Any, field: str, fragment: str) -> None:
    found = problems(data)
    assert found[0].field == field
    assert fragment in found[0].message


def test_too_many_recipients() -> None:
    found = problems(
        {"to": [f"c{i}" for i in range(11)], "title": "", "text": ""}, Limits(max_recipients=10)
    )
    assert found == [Invalid("to", "to names 11 clientIds; at most 10")]


def test_the_recipient_limit_counts_before_deduplication() -> None:
    problems({"to": ["a"] * 11, "title": "", "text": ""}, Limits(max_recipients=10))


def test_sizes_are_utf8_bytes_not_characters() -> None:
    limits = Limits(max_title=6)
    ok({"to": ["a"], "title": "ééé", "text": ""}, limits)  # 6 bytes
    assert problems({"to": ["a"], "title": "éééé", "text": ""}, limits)[0].field == "title"


def test_every_problem_is_reported() -> None:
    found = problems({"to": [], "title": 1, "text": 2, "ttl": 0, "bogus": 1})
    assert [p.field for p in found] == ["bogus", "to", "title", "text", "ttl"]


def test_default_limits_are_consistent_and_fit_a_frame() -> None:
    assert Limits().problems() == []
    assert Limits().largest_push_frame() <= DEFAULT_MAX_FRAME


@pytest.mark.parametrize(
    ("limits", "fragment"),
    [
        (Limits(default_ttl=100, max_ttl=50), "default TTL"),
        (Limits(default_ttl=0), "default TTL"),
        (Limits(max_recipients=0), "recipient limit"),
        (Limits(max_text=8000), "over the 8192-byte frame limit"),
        (Limits(max_title=-1), "max_title"),
        (Limits(max_extras=1), "max_extras"),
    ],
)
def test_inconsistent_limits_are_explained(limits: Limits, fragment: str) -> None:
    assert any(fragment in problem for problem in limits.problems())


def test_limits_at_the_edge_fit_and_one_byte_more_does_not() -> None:
    base = Limits(max_title=0, max_text=0, max_extras=2).largest_push_frame()
    limits = Limits(max_title=1000, max_text=DEFAULT_MAX_FRAME - base - 1000, max_extras=2)
    assert limits.largest_push_frame() == DEFAULT_MAX_FRAME
    assert limits.problems() == []
    assert Limits(max_title=1001, max_text=limits.max_text, max_extras=2).problems()
    # The bound is the real size plus the two bytes of "{}" (empty extras
    # cost nothing beyond the fixed part on the wire).
    frame = encode_push("0" * 26, "t" * limits.max_title, "x" * limits.max_text, {})
    assert len(frame) - 4 == DEFAULT_MAX_FRAME - 2


# Extras as compact JSON: worst cases are many tiny pairs and escapes.
_extras = st.dictionaries(
    st.text(max_size=8),
    st.text(max_size=40),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    title=st.text(max_size=300),
    text=st.text(max_size=2100),
    extras=_extras,
)
def test_every_valid_notification_fits_the_frame_bound(
    title: str, text: str, extras: dict[str, str]
) -> None:
    """The arithmetic in Limits.largest_push_frame is a true bound on the real codec."""
    small = Limits(max_title=64, max_text=512, max_extras=256)
    for limits in (LIMITS, small):
        result = validate({"to": ["a"], "title": title, "text": text, "extras": extras}, limits)
        if isinstance(result, Draft):
            frame = encode_push("01ARZ3NDEKTSV4RRFFQ69G5FAV", result.title, result.text, extras)
            assert len(frame) - 4 <= limits.largest_push_frame() <= DEFAULT_MAX_FRAME


def test_the_tightest_extras_still_fit_the_bound() -> None:
    """Many one-byte pairs: the most wire framing per JSON byte."""
    limits = Limits(max_title=0, max_text=0, max_extras=1024)
    extras = {chr(0x41 + i % 26) + str(i): "" for i in range(150)}
    while len(str(extras)) > 0:
        result = validate({"to": ["a"], "title": "", "text": "", "extras": extras}, limits)
        if isinstance(result, Draft):
            break
        extras.popitem()
    assert isinstance(result, Draft)
    frame = encode_push("0" * 26, "", "", extras)
    assert len(frame) - 4 <= limits.largest_push_frame()


def test_extras_null_is_refused_and_absent_extras_are_none() -> None:
    """The schema says object: null is not one (absent is)."""
    base = {"to": ["a"], "title": "t", "text": "x"}
    assert validate({**base, "extras": None}, Limits()) == [
        Invalid("extras", "extras must be an object of string values")
    ]
    draft = validate(base, Limits())
    assert isinstance(draft, Draft) and draft.extras == {}


def test_field_names_are_escaped_in_problems() -> None:
    problems = validate({"to": ["a"], "title": "t", "text": "x", "\ud800\n": 1}, Limits())
    assert problems == [Invalid("\\ud800\\n", 'unknown field "\\ud800\\n"')]


def test_ttl_null_is_refused_and_absent_ttl_is_the_default() -> None:
    base = {"to": ["a"], "title": "t", "text": "x"}
    (problem,) = validate({**base, "ttl": None}, Limits())  # type: ignore[misc]
    assert problem.field == "ttl"
    draft = validate(base, Limits(default_ttl=77))
    assert isinstance(draft, Draft) and draft.ttl == 77


# -- collapse keys and send times ------------------------------------------------------

BASE = {"to": ["a"], "title": "", "text": ""}
#: 2030-01-31T12:00:00Z
NOON = 1896091200.0


@pytest.mark.parametrize(
    "written",
    [
        "2030-01-31T12:00:00Z",
        "2030-01-31t12:00:00z",
        "2030-01-31 12:00:00Z",
        "2030-01-31T13:00:00+01:00",
        "2030-01-31T06:30:00-05:30",
        "2030-01-31T12:00:00.000000000Z",
    ],
)
def test_send_at_reads_every_rfc3339_form(written: str) -> None:
    draft = ok({**BASE, "sendAt": written})
    assert (draft.send_at, draft.delay) == (NOON, None)
    assert draft.send_time(NOON - 60) == NOON
    assert draft.send_time(NOON + 1) is None  # already past: now


@pytest.mark.parametrize(
    "written",
    ["2030-01-31T12:00:00", "2030-01-31", "1896091200", "2030-01-31T25:00:00Z", 1896091200, None],
)
def test_send_at_refuses_what_is_no_rfc3339_time(written: Any) -> None:
    (problem,) = problems({**BASE, "sendAt": written})
    assert problem.field == "sendAt"
    assert "RFC 3339" in problem.message


def test_send_at_is_at_most_the_max_ttl_ahead() -> None:
    limits = Limits(default_ttl=60, max_ttl=3600)
    assert isinstance(
        validate({**BASE, "sendAt": "2030-01-31T12:00:00Z"}, limits, NOON - 3600), Draft
    )
    (problem,) = validate({**BASE, "sendAt": "2030-01-31T12:00:00Z"}, limits, NOON - 3601)
    assert isinstance(problem, Invalid) and problem.field == "sendAt"


def test_delay_is_whole_seconds_up_to_the_max_ttl() -> None:
    draft = ok({**BASE, "delay": 30.0})
    assert (draft.delay, draft.send_time(100.0)) == (30, 130.0)
    for bad in (0, -1, 1.5, "30", True, None, LIMITS.max_ttl + 1):
        (problem,) = problems({**BASE, "delay": bad})
        assert problem.field == "delay"
    (problem,) = problems({**BASE, "delay": 5, "sendAt": "2030-01-31T12:00:00Z"})
    assert problem.message == "give sendAt or delay, not both"


def test_collapse_keys_follow_one_grammar() -> None:
    assert ok({**BASE, "collapseKey": "match-7:score_v2." + "k" * 47}).collapse_key is not None
    assert ok(BASE).collapse_key is None
    for bad in ("", "k" * 65, "a b", "ü", 7, None):
        (problem,) = problems({**BASE, "collapseKey": bad})
        assert problem.field == "collapseKey"


# -- audiences: to, topic, broadcast ------------------------------------------------


def test_a_topic_notification_has_no_recipients() -> None:
    draft = ok({"topic": "news.sport-1_~", "title": "T", "text": "X"})
    assert draft.topic == "news.sport-1_~" and draft.recipients == ()


def test_a_broadcast_goes_to_the_broadcast_topic() -> None:
    from pigeonpush.topics import BROADCAST

    draft = ok({"broadcast": True, "title": "T", "text": "X"})
    assert draft.topic == BROADCAST and draft.recipients == ()
    # broadcast: false names no audience: "to" is then required.
    assert ok({"broadcast": False, "to": ["a"], "title": "", "text": ""}).topic is None


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        ({"to": ["a"], "topic": "news"}, "topic", "exactly one audience"),
        ({"topic": "news", "broadcast": True}, "broadcast", "exactly one audience"),
        ({"to": ["a"], "broadcast": True}, "broadcast", "exactly one audience"),
        ({"broadcast": "yes"}, "broadcast", "must be true"),
        ({"broadcast": False}, "to", "required"),
        ({"topic": "a b"}, "topic", "1 to 128 ASCII letters"),
        ({"topic": "x" * 129}, "topic", "1 to 128"),
        ({"topic": ""}, "topic", "1 to 128"),
        ({"topic": "{slot}"}, "topic", "1 to 128"),
        ({"topic": "*"}, "topic", "1 to 128"),
        ({"topic": 5}, "topic", "1 to 128"),
    ],
)
def test_audience_rules(data: dict[str, Any], field: str, fragment: str) -> None:
    found = problems({"title": "", "text": "", **data})
    assert found[0].field == field
    assert fragment in found[0].message


@pytest.mark.parametrize("field", ["collapseKey", "sendAt", "delay"])
@pytest.mark.parametrize("audience", [{"topic": "news"}, {"broadcast": True}])
def test_topic_and_broadcast_messages_refuse_collapse_keys_and_send_times(
    field: str, audience: dict[str, Any]
) -> None:
    value = {"collapseKey": "score", "sendAt": "2030-01-31T12:00:00Z", "delay": 30}[field]
    (problem,) = problems({"title": "", "text": "", **audience, field: value})
    assert problem.field == field
    assert problem.message == (
        f"{field} applies only to a notification to clientIds, not to a topic or broadcast"
    )
