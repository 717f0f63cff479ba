"""The SDK's small parts: backoff, the duplicate window, the default clientId, the service."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher

from pigeonpush.sdk import (
    ClientState,
    PushClient,
    PushClientService,
    Route,
    full_jitter,
    mac_client_id,
)
from pigeonpush.sdk.dedup import RecentIds
from pigeonpush.sdk.identity import is_random_node


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_full_jitter_stays_within_zero_and_the_capped_ceiling(attempt: int, draw: float) -> None:
    policy = full_jitter(initial=0.5, maximum=30.0, factor=2.0, random=lambda: draw)
    delay = policy(attempt)
    ceiling = min(30.0, 0.5 * 2.0 ** min(attempt - 1, 100))
    assert 0.0 <= delay <= ceiling
    assert delay == pytest.approx(ceiling * draw)


def test_full_jitter_spreads_clients_over_the_window() -> None:
    policy = full_jitter(initial=1.0, maximum=60.0, factor=2.0, random=random.Random(7).random)
    delays = [policy(4) for _ in range(1000)]
    assert min(delays) < 0.5 and max(delays) > 7.5  # the whole [0, 8) window is used
    assert all(0.0 <= delay < 8.0 for delay in delays)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"initial": 0.0}, "initial must be positive"),
        ({"initial": 5.0, "maximum": 1.0}, "must be at least initial"),
        ({"factor": 0.5}, "factor must be at least 1"),
    ],
)
def test_full_jitter_refuses_nonsense(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        full_jitter(**options)


def test_recent_ids_forget_the_oldest_beyond_capacity() -> None:
    recent = RecentIds(3)
    for message_id in ["a", "b", "c", "a", "d"]:
        recent.add(message_id)
    # "a" was seen again, so "b" is now the oldest and was evicted by "d".
    assert [x in recent for x in "abcd"] == [True, False, True, True]
    assert len(recent) == 3


def test_recent_ids_need_room_for_one() -> None:
    with pytest.raises(ValueError, match="at least 1 id"):
        RecentIds(0)


@pytest.fixture
def warnings() -> Any:
    events: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if event["log_level"] >= LogLevel.warn:
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def test_client_id_is_the_mac_in_hex(warnings: list[LogEvent]) -> None:
    assert mac_client_id(lambda: 0x0242AC110002) == "0242ac110002"
    assert warnings == []


def test_a_random_node_is_detected_and_warned_about(warnings: list[LogEvent]) -> None:
    node = 0x0342AC110002  # multicast bit set: uuid.getnode() found no MAC
    assert is_random_node(node)
    assert mac_client_id(lambda: node) == "0342ac110002"
    (warning,) = warnings
    assert warning["client_id"] == "0342ac110002"
    assert "random" in formatEvent(warning)


def test_the_client_defaults_to_the_mac_client_id() -> None:
    client = PushClient(Clock(), "http://reglog.invalid", lambda message: None)
    assert client.client_id == mac_client_id()


class NeverEndpoint:
    """Connection attempts that never finish (until cancelled)."""

    def connect(self, factory: Any) -> Deferred[Any]:
        return Deferred()


def test_service_starts_and_stops_the_client_with_the_application() -> None:
    clock = Clock()
    lookups: list[int] = []

    def routes() -> Any:
        lookups.append(1)
        return succeed(Route("t", "10.0.0.1:7100"))

    client = PushClient(
        clock,
        "http://reglog.invalid",
        lambda message: None,
        client_id="svc",
        route_source=routes,
        endpoint_factory=lambda server: NeverEndpoint(),
    )
    application = MultiService()
    PushClientService(client).setServiceParent(application)
    application.startService()
    assert client.state is ClientState.CONNECTING and lookups == [1]
    stopped = application.stopService()
    assert stopped.called
    assert client.state is ClientState.STOPPED


def test_listen_options_for_reconnecting() -> None:
    from pigeonpush.cli import build_parser

    parser = build_parser("listen")
    args = parser.parse_args(["listen", "--reglog", "http://r:8100"])
    assert (args.max_route_failures, args.max_backoff) == (None, 60.0)
    args = parser.parse_args(
        ["listen", "--reglog", "http://r:8100", "--max-route-failures", "4", "--max-backoff", "5"]
    )
    assert (args.max_route_failures, args.max_backoff) == (4, 5.0)
    args = parser.parse_args(["listen", "--reglog", "http://r:8100", "--http-retries", "7"])
    assert args.max_route_failures == 7  # the former name


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["--max-route-failures", "0"], "must be an integer of at least 1, not '0'"),
        (["--max-route-failures", "many"], "must be an integer of at least 1, not 'many'"),
        (["--max-backoff", "0"], "must be a positive number of seconds, not '0'"),
        (["--max-backoff", "inf"], "must be a positive number of seconds, not 'inf'"),
    ],
)
def test_listen_refuses_bad_reconnect_options(
    words: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from pigeonpush.cli import build_parser

    with pytest.raises(SystemExit) as exited:
        build_parser("listen").parse_args(["listen", "--reglog", "http://r:8100", *words])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
