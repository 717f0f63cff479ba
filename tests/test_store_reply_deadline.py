"""The store's reply timeout measures Redis, not the reactor
(``redis_connection.ReplyDeadline``): a call fails when Redis sent nothing
for the timeout, not when the reactor was too busy to read an answer that
came in time. Exact timing on a Clock, then the busy reactor for real."""

from __future__ import annotations

import time
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from pigeonpush.store import StoreError
from pigeonpush.store.address import parse_redis_url
from pigeonpush.store.redis_connection import RedisConnection, RedisProtocol, redis_endpoint

ADDRESS = parse_redis_url("redis://127.0.0.1:6399/0")


class _Connected:
    """An endpoint whose connection is a protocol on a StringTransport."""

    def __init__(self) -> None:
        self.protocol = RedisProtocol()
        self.transport = StringTransport()

    def connect(self, factory: object) -> Deferred[RedisProtocol]:
        self.protocol.makeConnection(self.transport)
        return succeed(self.protocol)


def _connection(clock: Clock) -> tuple[RedisConnection, _Connected]:
    endpoint = _Connected()
    connection = RedisConnection(
        clock,
        ADDRESS,
        endpoint,  # type: ignore[arg-type]
        reply_timeout=3,
        connect_timeout=3,
    )
    return connection, endpoint


def _pass(clock: Clock, seconds: float) -> None:
    """Time passing on a free reactor: small steps (a single ``advance`` is a
    reactor held for that long)."""
    clock.pump([1 / 64] * round(seconds * 64))


def _call(connection: RedisConnection, *command: str) -> list[Any]:
    answers: list[Any] = []
    connection.execute([command]).addBoth(answers.append)
    return answers


def _failed(answers: list[Any]) -> bool:
    return (
        len(answers) == 1 and isinstance(answers[0], Failure) and bool(answers[0].check(StoreError))
    )


def test_no_answer_fails_at_the_timeout_and_drops_the_connection() -> None:
    clock = Clock()
    connection, endpoint = _connection(clock)
    answers = _call(connection, "PING")

    _pass(clock, 2.9)
    assert answers == []
    _pass(clock, 0.1)

    assert _failed(answers)
    assert "did not answer within 3s" in answers[0].getErrorMessage()
    assert endpoint.transport.disconnecting or not connection.connected


def test_a_reactor_held_past_the_timeout_does_not_fail_the_call() -> None:
    """The reactor was busy for longer than the timeout right after the call:
    the request is flushed and the reply read once it is free again, and only
    time in which it was free counts."""
    clock = Clock()
    connection, endpoint = _connection(clock)
    answers = _call(connection, "PING")

    clock.advance(10)  # one late look: it counts for two steps (0.75 s)
    _pass(clock, 2)
    assert answers == []
    endpoint.protocol.dataReceived(b"+PONG\r\n")

    assert answers == [["PONG"]]
    assert connection.connected


def test_a_held_reactor_leaves_the_rest_of_the_timeout_to_redis() -> None:
    clock = Clock()
    connection, _ = _connection(clock)
    answers = _call(connection, "PING")

    clock.advance(10)
    _pass(clock, 2.2)
    assert answers == []
    _pass(clock, 0.1)  # 0.75 s counted for the held turn, then 2.25 s free

    assert _failed(answers)


def test_answers_to_earlier_calls_move_a_later_calls_deadline() -> None:
    """On a pipeline a call's reply comes after the replies before it: while
    those keep coming, Redis is answering."""
    clock = Clock()
    connection, endpoint = _connection(clock)
    first = _call(connection, "GET", "a")
    second = _call(connection, "GET", "b")

    _pass(clock, 2.5)
    endpoint.protocol.dataReceived(b"$1\r\nx\r\n")
    _pass(clock, 2.5)  # 5 s after the write, 2.5 s after the last byte

    assert first == [["x"]]
    assert second == []
    endpoint.protocol.dataReceived(b"$1\r\ny\r\n")
    assert second == [["y"]]


def test_a_call_fails_the_timeout_after_the_last_byte_from_redis() -> None:
    clock = Clock()
    connection, endpoint = _connection(clock)
    first = _call(connection, "GET", "a")
    second = _call(connection, "GET", "b")
    _pass(clock, 2.5)
    endpoint.protocol.dataReceived(b"$1\r\nx\r\n")
    assert first == [["x"]]

    _pass(clock, 2.9)  # the look at 2.625 s saw the bytes: 3 s from then
    assert second == []
    _pass(clock, 0.25)

    assert _failed(second)


def test_part_of_a_large_reply_is_progress() -> None:
    clock = Clock()
    connection, endpoint = _connection(clock)
    answers = _call(connection, "GET", "big")

    _pass(clock, 2.9)
    endpoint.protocol.dataReceived(b"$6\r\nabc")
    _pass(clock, 2.9)
    assert answers == []
    endpoint.protocol.dataReceived(b"def\r\n")

    assert answers == [["abcdef"]]


@pytest_twisted.ensureDeferred
async def test_a_busy_reactor_does_not_fail_a_call_that_redis_answered(redis_url: str) -> None:
    """The reactor held for longer than the timeout (a fan-out of thousands of
    writes does that) right after a call: Redis answered meanwhile, so the
    call succeeds and the connection stays."""
    from twisted.internet import reactor

    address = parse_redis_url(redis_url)
    connection = RedisConnection(
        reactor,
        address,
        redis_endpoint(reactor, address, 3),
        reply_timeout=0.5,
        connect_timeout=3,
    )
    try:
        assert await connection.execute([("PING",)]) == ["PONG"]
        answered = connection.execute([("ECHO", "still here")])
        busy_until = time.monotonic() + 1.0
        while time.monotonic() < busy_until:  # the reactor's own work, not a wait
            pass

        assert await answered == ["still here"]
        assert connection.connected
    finally:
        await connection.close()
