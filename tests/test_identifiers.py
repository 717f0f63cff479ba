"""The identifier rules (pigeonpush.identifiers), and every part that takes a
clientId or a topic applying them alike: the SDK, delivery's AMP responder,
the wire codec (topics), the JavaScript client, the OpenAPI documents.
(reglog and the notification API: their own test modules, over HTTP; the
push server's AUTH: test_server_protocol.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from pigeonpush.delivery.pull import PendingMessages
from pigeonpush.delivery.rpc_server import PullResponder
from pigeonpush.identifiers import (
    CLIENT_ID,
    COLLAPSE_KEY,
    IDEMPOTENCY_KEY,
    MAX_CLIENT_ID,
    MAX_TOPIC,
    TOPIC,
    InvalidIdentifier,
    Rule,
    check_client_id,
    check_topic,
    is_client_id,
    is_topic,
)
from pigeonpush.rpc import BadRequest
from pigeonpush.sdk import PushClient
from pigeonpush.store.memory import MemoryStore
from pigeonpush.topics import BROADCAST, check_audience
from pigeonpush.wire.codec import DecodeError, decode, encode
from pigeonpush.wire.frames import Subscribe, Unsubscribe
from support.identifier_cases import BAD_CLIENT_IDS, BAD_TOPICS, GOOD_CLIENT_IDS, GOOD_TOPICS

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = {
    name: json.loads((ROOT / "docs" / "openapi" / f"{name}.json").read_text())
    for name in ("reglog", "notification")
}


@pytest.mark.parametrize("value", GOOD_CLIENT_IDS)
def test_good_client_ids(value: str) -> None:
    assert is_client_id(value) and CLIENT_ID.matches(value)
    assert check_client_id(value) == value


@pytest.mark.parametrize("value", [*BAD_CLIENT_IDS, None, 42, b"abc", ["a"]])
def test_bad_client_ids_say_the_rule(value: object) -> None:
    assert not is_client_id(value)
    with pytest.raises(InvalidIdentifier) as raised:
        check_client_id(value)
    error = raised.value
    assert isinstance(error, ValueError)
    assert error.rule is CLIENT_ID and error.value == value
    assert str(error).startswith(
        "clientId must be a string of 1 to 128 ASCII letters, digits, '.', '_', ':' or '-', not "
    )


def test_the_boundaries_are_128_characters() -> None:
    assert MAX_CLIENT_ID == MAX_TOPIC == 128
    assert is_client_id("a" * 128) and not is_client_id("a" * 129)
    assert is_topic("a" * 128) and not is_topic("a" * 129)
    assert COLLAPSE_KEY.matches("a" * 64) and not COLLAPSE_KEY.matches("a" * 65)


@pytest.mark.parametrize("char", sorted(".-_:"))
def test_each_punctuation_of_a_client_id(char: str) -> None:
    assert is_client_id(f"a{char}b") and is_client_id(char)


@pytest.mark.parametrize("code", [*range(0x80), 0xA0, 0xE9, 0x0661, 0xFF41, 0x1F600])
def test_a_client_id_character_is_an_ascii_letter_digit_or_one_of_four(code: int) -> None:
    char = chr(code)
    allowed = (char.isascii() and char.isalnum()) or char in ".-_:"
    assert is_client_id(char) is allowed, char


def test_topics_differ_from_client_ids_in_one_punctuation() -> None:
    assert is_topic("a~b") and not is_client_id("a~b")
    assert is_client_id("a:b") and not is_topic("a:b")


@pytest.mark.parametrize("value", GOOD_TOPICS)
def test_good_topics(value: str) -> None:
    assert is_topic(value) and check_topic(value) == value and check_audience(value) == value


@pytest.mark.parametrize("value", BAD_TOPICS)
def test_bad_topics(value: str) -> None:
    assert not is_topic(value)
    with pytest.raises(ValueError, match="topic must be a string of 1 to 128 ASCII letters"):
        check_topic(value)


def test_broadcast_is_an_audience_and_not_a_topic() -> None:
    assert check_audience(BROADCAST) == BROADCAST
    assert not is_topic(BROADCAST)


def test_idempotency_keys_are_visible_ascii() -> None:
    assert IDEMPOTENCY_KEY.matches("!" + "~" * 127)
    for bad in ("", "a b", "x" * 129, "caf\u00e9", "a\tb", "a\x7f"):
        assert not IDEMPOTENCY_KEY.matches(bad), bad


def test_a_long_value_is_quoted_short() -> None:
    message = str(InvalidIdentifier(CLIENT_ID, "\x1b" * 5000))
    assert len(message) < 300
    assert "'\\x1b\\x1b" in message and "(5000 characters)" in message


# -- the same rule everywhere ---------------------------------------------------------------


@pytest.mark.parametrize("value", BAD_CLIENT_IDS)
def test_the_sdk_refuses_at_construction_the_ids_reglog_refuses(value: str) -> None:
    with pytest.raises(ValueError, match="clientId must be a string of 1 to 128 ASCII"):
        PushClient(Clock(), "http://reglog.test:8100", lambda message: None, client_id=value)


@pytest.mark.parametrize("value", GOOD_CLIENT_IDS)
def test_the_sdk_takes_every_good_id(value: str) -> None:
    client = PushClient(Clock(), "http://reglog.test:8100", lambda message: None, client_id=value)
    assert client.client_id == value


@pytest.mark.parametrize("value", BAD_CLIENT_IDS)
def test_delivery_refuses_a_pull_for_an_id_no_reglog_routes(value: str) -> None:
    clock = Clock()
    responder = PullResponder(PendingMessages(MemoryStore(clock), clock))
    with pytest.raises(BadRequest, match="clientId must be a string of 1 to 128 ASCII"):
        responder.pull(value, 10, [])


def test_delivery_refuses_a_negative_limit() -> None:
    clock = Clock()
    responder = PullResponder(PendingMessages(MemoryStore(clock), clock))
    with pytest.raises(BadRequest, match="limit must be at least 0, not -1"):
        responder.pull("a", -1, [])


@pytest.mark.parametrize("topic", [*GOOD_TOPICS, *BAD_TOPICS])
@pytest.mark.parametrize("kind", [Subscribe, Unsubscribe])
def test_the_wire_codec_takes_exactly_the_topics_of_the_rule(
    kind: type[Subscribe | Unsubscribe], topic: str
) -> None:
    payload = encode(kind(7, topic))[4:]
    if is_topic(topic):
        assert decode(payload) == kind(7, topic)
    else:
        with pytest.raises(DecodeError, match="the topic must be a string of 1 to 128 ASCII"):
            decode(payload)


def test_the_javascript_client_applies_the_same_rules() -> None:
    node = shutil.which("node")
    assert node is not None, "Debian's nodejs package is needed (scripts/test installs it)"
    cases = {
        "clientIds": [*GOOD_CLIENT_IDS, *BAD_CLIENT_IDS],
        "topics": [*GOOD_TOPICS, *BAD_TOPICS, *BAD_CLIENT_IDS],
    }
    module = (ROOT / "clients/js/src/identifiers.js").as_uri()
    script = f"""
        const ids = await import({json.dumps(module)});
        const cases = JSON.parse(process.argv[1]);
        process.stdout.write(JSON.stringify({{
          clientIds: cases.clientIds.map(ids.isClientId),
          topics: cases.topics.map(ids.isTopic),
          rules: [ids.CLIENT_ID_RULE, ids.TOPIC_RULE],
        }}));
    """
    ran = subprocess.run(
        [node, "--input-type=module", "-e", script, json.dumps(cases)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    answer = json.loads(ran.stdout)
    assert answer["clientIds"] == [is_client_id(value) for value in cases["clientIds"]]
    assert answer["topics"] == [is_topic(value) for value in cases["topics"]]
    assert answer["rules"] == [CLIENT_ID.text, TOPIC.text]


def _schema_of(rule: Rule) -> dict[str, Any]:
    """The JSON Schema of a rule, as the documents write it."""
    pattern = f"^{rule.alphabet}+$"
    return {"type": "string", "minLength": 1, "maxLength": rule.max_length, "pattern": pattern}


@pytest.mark.parametrize("name", DOCUMENTS)
def test_the_documents_state_the_identifier_rules(name: str) -> None:
    schemas = DOCUMENTS[name]["components"]["schemas"]
    rules = {"ClientId": CLIENT_ID, "Topic": TOPIC}
    for schema_name, rule in rules.items():
        if schema_name in schemas:
            schema = dict(schemas[schema_name])
            schema.pop("description")
            assert schema == _schema_of(rule), schema_name
    if name == "notification":
        collapse_key = dict(schemas["Notification"]["properties"]["collapseKey"])
        collapse_key.pop("description")
        assert collapse_key == _schema_of(COLLAPSE_KEY)
