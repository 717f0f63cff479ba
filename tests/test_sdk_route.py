"""RouteFetcher against an in-memory reglog resource and a Clock: retries, give-up, refusals."""

from __future__ import annotations

from typing import Any

import pytest
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.iweb import IAgent
from zope.interface import implementer

from pigeonpush.identifiers import CLIENT_ID
from pigeonpush.sdk import ClientState, GaveUp, PushClient, Route, RouteFetcher, RouteLookupFailed
from pigeonpush.sdk.route import parse_route, parse_server_address
from support.wire_server import ReglogRoute, WireServer, reglog_root

URL = "http://reglog.test:8100"


def linear(attempt: int) -> float:
    return float(attempt)


class Reglog:
    """A ReglogRoute behind treq's in-memory agent, driven by a Clock."""

    def __init__(self, secret: str | None = None, agent: IAgent | None = None) -> None:
        self.clock = Clock()
        self.server = WireServer(None)
        self.server.port = 7100
        self.route = ReglogRoute(self.server, heartbeat=20.0, secret=secret)
        self.memory = RequestTraversalAgent(reglog_root(self.route))
        self.agent = agent or self.memory

    def fetcher(self, **options: Any) -> RouteFetcher:
        options.setdefault("backoff", linear)
        return RouteFetcher(self.clock, self.agent, URL, "device-1", **options)

    def run(self, fetching: Deferred[Route]) -> Any:
        """Deliver responses and let backoff time pass until the lookup ends."""
        for _ in range(1000):
            self.memory.flush()
            if fetching.called:
                break
            calls = self.clock.getDelayedCalls()
            assert calls, "the lookup is stuck"
            self.clock.advance(min(call.getTime() for call in calls) - self.clock.seconds())
        results: list[Any] = []
        fetching.addBoth(results.append)
        return results[0]


@implementer(IAgent)
class RefusingAgent:
    def __init__(self) -> None:
        self.requests = 0

    def request(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        self.requests += 1
        return fail(ConnectionRefusedError("127.0.0.1:8100"))


@implementer(IAgent)
class SilentAgent:
    def __init__(self) -> None:
        self.requests = 0

    def request(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        self.requests += 1
        return Deferred()


@pytest.fixture
def log_text() -> Any:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield lambda: "\n".join(formatEvent(event) for event in events)
    globalLogPublisher.removeObserver(events.append)


def test_a_route_comes_back_with_token_server_and_heartbeat() -> None:
    reglog = Reglog()
    route = reglog.run(reglog.fetcher()())
    assert route == Route(reglog.server.tokens["device-1"], "127.0.0.1:7100", 20.0)
    assert reglog.route.requests == [{"clientId": "device-1"}]


def test_503_is_retried_with_backoff_until_a_route_comes() -> None:
    reglog = Reglog()
    busy = {"error": "no_server", "message": "no push server is alive"}
    reglog.route.script = [(503, busy), (503, busy)]
    start = reglog.clock.seconds()
    route = reglog.run(reglog.fetcher(attempts=3)())
    assert isinstance(route, Route)
    assert len(reglog.route.requests) == 3
    assert reglog.clock.seconds() - start == 1.0 + 2.0  # backoff(1) + backoff(2)


def test_gives_up_after_the_configured_failures_with_a_clear_error(log_text: Any) -> None:
    reglog = Reglog()
    busy = {"error": "no_server", "message": "no push server is alive"}
    reglog.route.script = [(503, busy)] * 10
    result = reglog.run(reglog.fetcher(attempts=4)())
    assert isinstance(result, Failure) and result.check(RouteLookupFailed)
    error = result.value
    assert len(reglog.route.requests) == 4
    assert error.retryable and error.attempts == 4
    assert str(error) == (
        "route lookup at http://reglog.test:8100/v1/route failed 4 time(s) in a row; "
        "last error: HTTP 503 no_server: no push server is alive"
    )
    assert "giving up" in log_text()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (500, b"<html>Internal Server Error</html>", "HTTP 500 <html>Internal Server Error</html>"),
        (
            429,
            {"error": "rate_limited", "message": "slow down"},
            "HTTP 429 rate_limited: slow down",
        ),
        (200, {"server": "h:1"}, "HTTP 200 with an unusable body (token must be a non-empty"),
        (200, b"not json", "HTTP 200 with an unusable body"),
    ],
)
def test_transient_answers_are_retried(status: int, body: Any, expected: str) -> None:
    reglog = Reglog()
    reglog.route.script = [(status, body)]
    fetching = reglog.fetcher(attempts=2)()
    assert isinstance(reglog.run(fetching), Route)
    reglog.route.script = [(status, body)] * 2
    result = reglog.run(reglog.fetcher(attempts=2)())
    assert result.check(RouteLookupFailed)
    assert expected in str(result.value)


def test_bad_input_is_reported_at_once_without_retrying() -> None:
    reglog = Reglog()
    result = reglog.run(
        RouteFetcher(reglog.clock, reglog.agent, URL, "", backoff=linear, attempts=5)()
    )
    assert result.check(RouteLookupFailed)
    error = result.value
    assert len(reglog.route.requests) == 1
    assert not error.retryable and error.status == 400 and error.error == "invalid"
    assert str(error) == (
        "route lookup at http://reglog.test:8100/v1/route was refused: "
        f"HTTP 400 invalid: clientId must be {CLIENT_ID.text}"
    )


def test_bad_secret_is_reported_at_once_and_never_shown(log_text: Any) -> None:
    reglog = Reglog(secret="right-secret")
    fetcher = reglog.fetcher(secret="wrong-secret")
    result = reglog.run(fetcher())
    assert result.check(RouteLookupFailed)
    assert result.value.status == 401 and not result.value.retryable
    assert reglog.route.requests == [{"clientId": "device-1", "secret": "wrong-secret"}]
    assert "wrong-secret" not in str(result.value) + repr(fetcher) + log_text()


def test_registration_mode_sends_the_secret() -> None:
    reglog = Reglog(secret="s3cret")
    assert isinstance(reglog.run(reglog.fetcher(secret="s3cret")()), Route)


def test_connection_errors_are_retried_and_named() -> None:
    agent = RefusingAgent()
    reglog = Reglog(agent=agent)
    result = reglog.run(reglog.fetcher(attempts=3)())
    assert agent.requests == 3
    assert result.check(RouteLookupFailed)
    assert "ConnectionRefusedError" in str(result.value)


def test_a_silent_reglog_times_out_and_is_retried() -> None:
    agent = SilentAgent()
    reglog = Reglog(agent=agent)
    start = reglog.clock.seconds()
    result = reglog.run(reglog.fetcher(attempts=2, timeout=10.0)())
    assert agent.requests == 2
    assert result.check(RouteLookupFailed)
    assert "no answer within 10s" in str(result.value)
    assert reglog.clock.seconds() - start == 10.0 + 1.0 + 10.0


def test_cancelling_stops_the_retries() -> None:
    agent = RefusingAgent()
    reglog = Reglog(agent=agent)
    fetching = reglog.fetcher(attempts=5)()
    assert agent.requests == 1
    fetching.cancel()
    failures: list[Failure] = []
    fetching.addErrback(failures.append)
    assert failures[0].check(CancelledError)
    reglog.clock.advance(100)
    assert agent.requests == 1


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("push1.example:7100", ("push1.example", 7100)), ("[::1]:7100", ("::1", 7100))],
)
def test_server_addresses_parse(text: str, parsed: tuple[str, int]) -> None:
    assert parse_server_address(text) == parsed


@pytest.mark.parametrize("text", ["push1.example", ":7100", "h:0", "h:65536", "h:port", ""])
def test_bad_server_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="server address must be host:port"):
        parse_server_address(text)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "not a JSON object"),
        ({"token": "", "server": "h:1"}, "token must be a non-empty string"),
        ({"token": "t", "server": 7}, "server must be a string"),
        ({"token": "t", "server": "h:1", "heartbeat": 0}, "heartbeat must be a positive"),
        ({"token": "t", "server": "h:1", "heartbeat": True}, "heartbeat must be a positive"),
    ],
)
def test_unusable_route_bodies_are_named(body: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_route(body)


@pytest.mark.parametrize("url", ["reglog.example:8100", "ftp://reglog.example", "http://", ""])
def test_a_reglog_url_that_cannot_work_is_refused_at_once(url: str) -> None:
    with pytest.raises(ValueError, match="reglog_url must be an http:// or https:// URL"):
        PushClient(Clock(), url, lambda message: None, client_id="device-1")


def test_by_default_a_lookup_retries_for_as_long_as_it_takes_with_capped_delays() -> None:
    reglog = Reglog()
    busy = {"error": "no_server", "message": "no push server is alive"}
    reglog.route.script = [(503, busy)] * 40  # far past any former limit
    start = reglog.clock.seconds()
    route = reglog.run(reglog.fetcher(backoff=lambda attempt: min(60.0, 2.0**attempt))())
    assert isinstance(route, Route)
    assert len(reglog.route.requests) == 41
    waited = reglog.clock.seconds() - start
    assert waited == sum(min(60.0, 2.0**n) for n in range(1, 41))


def test_the_request_names_the_servers_to_avoid_bounded_and_well_formed() -> None:
    reglog = Reglog()
    avoid = [
        "10.0.0.7:7100",
        "no-port",  # reglog would answer 400: never sent
        "h" * 300 + ":7100",
        "[::1]:7100",
        *(f"10.0.1.{n}:7100" for n in range(20)),
    ]
    fetcher = reglog.fetcher(avoid=lambda: avoid)
    assert isinstance(reglog.run(fetcher()), Route)
    (request,) = reglog.route.requests
    assert request["avoid"] == [
        "10.0.0.7:7100",
        "[::1]:7100",
        *(f"10.0.1.{n}:7100" for n in range(14)),
    ]
    avoid.clear()
    assert isinstance(reglog.run(fetcher()), Route)
    assert reglog.route.requests[-1] == {"clientId": "device-1"}  # nothing to avoid: no field


class NeverEndpoint:
    def connect(self, factory: Any) -> Deferred[Any]:
        return Deferred()


def client_on(reglog: Reglog, **options: Any) -> tuple[PushClient, list[Any]]:
    client = PushClient(
        reglog.clock,
        URL,
        lambda message: None,
        client_id="device-1",
        http_agent=reglog.memory,
        endpoint_factory=lambda server: NeverEndpoint(),
        backoff=lambda attempt: 1.0,
        **options,
    )
    events: list[Any] = []
    client.on_event(events.append)
    return client, events


def pump(reglog: Reglog, seconds: int) -> None:
    for _ in range(seconds * 10):
        reglog.memory.flush()
        reglog.clock.advance(0.1)


def test_a_client_waits_out_a_long_reglog_outage_by_default() -> None:
    reglog = Reglog()
    busy = {"error": "no_server", "message": "no push server is alive"}
    reglog.route.script = [(503, busy)] * 30
    client, events = client_on(reglog)
    client.start()
    pump(reglog, 25)
    assert len(reglog.route.requests) > 5 and events == []
    assert client.state is ClientState.ROUTING
    pump(reglog, 10)
    assert client.state is ClientState.CONNECTING
    assert client.gave_up is None
    client.stop()


def test_a_client_gives_up_only_when_the_application_sets_a_limit() -> None:
    reglog = Reglog()
    busy = {"error": "no_server", "message": "no push server is alive"}
    reglog.route.script = [(503, busy)] * 30
    client, events = client_on(reglog, max_route_failures=3)
    client.start()
    pump(reglog, 10)
    assert len(reglog.route.requests) == 3
    (gave_up,) = events
    assert isinstance(gave_up, GaveUp) and isinstance(gave_up.error, RouteLookupFailed)
    assert gave_up.error.attempts == 3 and client.state is ClientState.STOPPED


def test_http_retries_is_the_deprecated_name_of_max_route_failures() -> None:
    reglog = Reglog()
    reglog.route.script = [(503, {"error": "no_server", "message": "none"})] * 30
    with pytest.warns(DeprecationWarning, match="use max_route_failures"):
        client, events = client_on(reglog, http_retries=2)
    client.start()
    pump(reglog, 10)
    assert len(reglog.route.requests) == 2 and isinstance(events[0], GaveUp)


@pytest.mark.parametrize("limit", [0, -1, True, 2.5])
def test_a_route_failure_limit_must_be_a_positive_integer(limit: Any) -> None:
    with pytest.raises(ValueError, match="max_route_failures must be an integer of at least 1"):
        client_on(Reglog(), max_route_failures=limit)
