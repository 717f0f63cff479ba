"""The client process's pieces: event records, and the seams that see what
the SDK does not report (failed connection attempts, route lookups)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.web.iweb import IAgent
from zope.interface import implementer

from pigeonpush.sdk import Authenticated, Connected, Disconnected, GaveUp, SessionReplaced
from pigeonpush_chaos.records import Event, EventKind, parse_line
from pigeonpush_chaos.worker import (
    Recorder,
    RecordingAgent,
    RecordingEndpoint,
    client_id,
    event_record,
    parse,
)


def test_client_ids_are_numbered() -> None:
    assert client_id(7) == "chaos-000007"


def test_each_sdk_event_becomes_a_record() -> None:
    assert event_record(1.0, "c", Connected("s:1")) == Event(1.0, "c", EventKind.CONNECTED, "s:1")
    assert event_record(1.0, "c", Authenticated("s:1", 5.0)) == Event(
        1.0, "c", EventKind.AUTHENTICATED, "s:1"
    )
    assert event_record(1.0, "c", Disconnected("s:1", "gone", True)) == Event(
        1.0, "c", EventKind.DISCONNECTED, "s:1", True, "gone"
    )
    assert event_record(1.0, "c", GaveUp(SessionReplaced("x"))) == Event(
        1.0, "c", EventKind.GAVE_UP, reason="SessionReplaced"
    )


def test_the_recorder_writes_lines_when_flushed() -> None:
    out = io.StringIO()
    recorder = Recorder(out)
    recorder.add("M 1.000000 c m1\n")
    assert out.getvalue() == ""
    recorder.flush()
    recorder.flush()
    assert out.getvalue() == "M 1.000000 c m1\n"
    assert parse_line(out.getvalue()).message_id == "m1"  # type: ignore[union-attr]


@implementer(IStreamClientEndpoint)
class Endpoint:
    def __init__(self, result: Deferred[Any]) -> None:
        self.result = result

    def connect(self, factory: Any) -> Deferred[Any]:
        return self.result


def test_a_failed_connection_attempt_is_reported_and_still_fails() -> None:
    seen: list[str] = []
    endpoint = RecordingEndpoint(Endpoint(fail(ConnectionRefusedError())), seen.append)
    failures: list[Any] = []
    endpoint.connect(Factory.forProtocol(Protocol)).addErrback(failures.append)
    assert len(failures) == 1 and failures[0].check(ConnectionRefusedError)
    assert seen == ["Connection was refused by other side."]


def test_a_cancelled_or_successful_attempt_is_not_a_failure() -> None:
    seen: list[str] = []
    RecordingEndpoint(Endpoint(fail(CancelledError())), seen.append).connect(
        Factory.forProtocol(Protocol)
    ).addErrback(lambda _: None)
    protocol = Protocol()
    results: list[Any] = []
    RecordingEndpoint(Endpoint(succeed(protocol)), seen.append).connect(
        Factory.forProtocol(Protocol)
    ).addCallback(results.append)
    assert seen == []
    assert results == [protocol]


class Response:
    code = 503


@implementer(IAgent)
class FakeAgent:
    def __init__(self, result: Deferred[Any]) -> None:
        self.result = result
        self.calls: list[tuple[Any, ...]] = []

    def request(
        self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None
    ) -> Deferred[Any]:
        self.calls.append((method, uri, headers, bodyProducer))
        return self.result


def test_route_lookups_are_reported_with_their_outcome() -> None:
    seen: list[str] = []
    inner = FakeAgent(succeed(Response()))
    answers: list[Any] = []
    RecordingAgent(inner, seen.append).request(b"POST", b"http://r/v1/route").addCallback(
        answers.append
    )
    assert inner.calls == [(b"POST", b"http://r/v1/route", None, None)]
    assert len(answers) == 1 and answers[0].code == 503
    errors: list[Any] = []
    RecordingAgent(FakeAgent(fail(ConnectionRefusedError())), seen.append).request(
        b"POST", b"http://r/v1/route"
    ).addErrback(errors.append)
    assert len(errors) == 1
    assert seen == ["HTTP 503", "ConnectionRefusedError: Connection was refused by other side."]


def test_worker_options_are_checked() -> None:
    options = parse(["--reglog", "http://r:1", "--first", "0", "--count", "2", "--out", "f"])
    assert (options.count, options.max_route_failures, options.heartbeat) == (2, None, 5.0)
    try:
        parse(["--reglog", "http://r:1", "--first", "0", "--count", "0", "--out", "f"])
    except SystemExit as e:
        assert e.code == 2
    else:  # pragma: no cover
        raise AssertionError("--count 0 was accepted")


def test_the_websocket_share_is_a_fraction() -> None:
    base = ["--reglog", "http://r:1", "--first", "0", "--count", "2", "--out", "f"]
    assert parse(base).websocket_share == 0.0
    assert parse([*base, "--websocket-share", "0.2"]).websocket_share == 0.2
    for bad in ("-0.5", "1.5"):
        with pytest.raises(SystemExit) as exited:
            parse([*base, "--websocket-share", bad])
        assert exited.value.code == 2


def test_the_command_line_takes_a_websocket_share() -> None:
    from pigeonpush_chaos.cli import options_from, parser

    assert options_from(parser().parse_args([])).websocket_share == 0.2
    assert options_from(parser().parse_args(["--websocket-share", "0"])).websocket_share == 0.0
    with pytest.raises(SystemExit, match="between 0 and 1"):
        options_from(parser().parse_args(["--websocket-share", "2"]))
