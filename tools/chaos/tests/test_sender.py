"""The sender's plan and retries, against a fake HTTP client on a Clock."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock

from pigeonpush.ids import MessageIdGenerator
from pigeonpush_chaos.sender import Sender, batches, retry_delay


def test_messages_go_round_robin_in_batches() -> None:
    planned = batches(5, 2, ["a", "b"])
    assert planned == [[(0, "a"), (1, "b")], [(2, "a"), (3, "b")], [(4, "a")]]
    with pytest.raises(ValueError):
        batches(5, 0, ["a"])
    with pytest.raises(ValueError):
        batches(5, 1, [])


def test_retry_delays_double_up_to_a_cap() -> None:
    assert [retry_delay(n) for n in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]


class Response:
    def __init__(self, code: int, body: bytes) -> None:
        self.code = code
        self._body = body

    def content(self) -> Deferred[bytes]:
        return succeed(self._body)


class FakeHttp:
    """Answers each POST from a script: an exception, or (status, body or None);
    None: a 200 with one messageId per item."""

    def __init__(self, clock: Clock, script: list[Any]) -> None:
        self._ids = MessageIdGenerator(clock)
        self.script = script
        self.requests: list[tuple[str, dict[str, Any], dict[bytes, list[bytes]]]] = []

    def post(self, url: str, data: bytes, headers: Any, timeout: float) -> Deferred[Response]:
        body = json.loads(data)
        self.requests.append((url, body, dict(headers.getAllRawHeaders())))
        step = self.script.pop(0) if self.script else (200, None)
        if isinstance(step, Exception):
            return fail(step)
        status, answer = step
        if answer is None:
            answer = {"results": [{"messageId": self._ids()} for _ in body["notifications"]]}
        return succeed(Response(status, json.dumps(answer).encode()))


def make(clock: Clock, http: FakeHttp) -> Sender:
    return Sender(clock, http, "http://api:1/", "k" * 24, "run1", ttl=600, concurrency=2)


def test_batches_are_paced_and_every_id_is_recorded() -> None:
    clock = Clock()
    clock.advance(1_700_000_000)
    http = FakeHttp(clock, [])
    sender = make(clock, http)
    sending = ensureDeferred(sender.send(batches(4, 2, ["a", "b"]), 2.0, clock.seconds() + 60))
    assert len(http.requests) == 1  # the second batch is due 1 s later
    clock.advance(1.0)
    outcome = sender.outcome
    assert len(http.requests) == 2
    assert sending.called
    assert len(outcome.accepted) == 4
    assert sorted(m.client for m in outcome.accepted.values()) == ["a", "a", "b", "b"]
    assert all(m.time == pytest.approx(1_700_000_000, abs=2) for m in outcome.accepted.values())
    url, body, headers = http.requests[1]
    assert url == "http://api:1/v1/notifications/batch"
    assert body["notifications"][0] == {
        "to": ["a"],
        "title": "chaos",
        "text": "message 2",
        "ttl": 600,
    }
    assert headers[b"Idempotency-Key"] == [b"run1-1"]
    assert headers[b"Authorization"] == [b"Bearer " + b"k" * 24]


def test_a_failed_batch_is_sent_again_with_the_same_key() -> None:
    clock = Clock()
    http = FakeHttp(clock, [ConnectionRefusedError(), (503, {"error": "store_unavailable"})])
    sender = make(clock, http)
    sending = ensureDeferred(sender.send(batches(2, 2, ["a"]), 100.0, 60.0))
    clock.advance(0.25)
    clock.advance(0.5)
    assert sending.called
    keys = [headers[b"Idempotency-Key"] for _, _, headers in http.requests]
    assert keys == [[b"run1-0"]] * 3
    assert [body for _, body, _ in http.requests] == [http.requests[0][1]] * 3
    outcome = sender.outcome
    assert len(outcome.accepted) == 2
    assert outcome.retries == 2
    assert outcome.errors == {"ConnectionRefusedError": 1, "HTTP 503": 1}


def test_a_refusal_is_not_retried_and_refused_items_are_counted() -> None:
    clock = Clock()
    http = FakeHttp(
        clock,
        [
            (400, {"error": "invalid"}),
            (200, {"results": [{"messageId": MessageIdGenerator(clock)()}, {"error": "invalid"}]}),
        ],
    )
    sender = make(clock, http)
    sending = ensureDeferred(sender.send(batches(4, 2, ["a"]), 1e9, 60.0))
    clock.advance(1.0)
    assert sending.called
    outcome = sender.outcome
    assert len(http.requests) == 2
    assert outcome.refused == 3
    assert len(outcome.accepted) == 1


def test_a_batch_never_answered_before_the_deadline_is_unsent() -> None:
    clock = Clock()
    http = FakeHttp(clock, [ConnectionRefusedError()] * 100)
    sender = make(clock, http)
    sending = ensureDeferred(sender.send(batches(3, 3, ["a"]), 1e9, 1.0))
    clock.advance(0.25)
    clock.advance(0.5)
    assert sending.called
    assert sender.outcome.unsent == 3
    assert sender.outcome.accepted == {}
