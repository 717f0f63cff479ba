"""The connection state machine: AUTH, timeouts, every frame in every state,
replaced logins and the conditional cleanup (StringTransport + Clock)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from twisted.logger import LogEvent, capturedLogs, formatEvent

from pigeonpush.identifiers import CLIENT_ID
from pigeonpush.rpc import PushItem, PushStatus
from pigeonpush.server.hub import DRAIN_GRACE
from pigeonpush.server.session import State
from pigeonpush.server.settings import LOG_BURST, LOG_INTERVAL
from pigeonpush.wire.codec import ENCODED_PING, encode
from pigeonpush.wire.frames import (
    PING,
    PONG,
    Ack,
    Auth,
    AuthFail,
    AuthFailCode,
    AuthOk,
    Error,
    ErrorCode,
    Frame,
    Kick,
    KickReason,
    Push,
)
from support.identifier_cases import BAD_CLIENT_IDS
from support.logcheck import FailureCollector
from support.server_harness import (
    OTHER_SERVER,
    SERVER,
    Device,
    DeviceTransport,
    Harness,
    result_of,
)

# --- AUTH ---------------------------------------------------------------------------


def test_auth_with_the_planted_token_binds_the_session() -> None:
    harness = Harness(tcp=True, heartbeat=20, max_frame=4096, ack_window=8)
    token = harness.issue("alice")
    device = harness.connect()

    device.send(Auth("alice", token))

    assert device.received() == [AuthOk(heartbeat=20.0, max_frame=4096, ack_window=8)]
    assert not device.closing
    assert harness.hub.sessions == {"alice": device.session}
    assert harness.route("alice") == SERVER
    assert device.session.state is State.ACTIVE
    # The token check and the binding are one store call (one Redis round trip).
    assert harness.store.calls.get("bind_session") == 1
    assert "token" not in harness.store.calls


@pytest.mark.parametrize(
    ("planted", "sent"),
    [("right-token", "wrong-token"), (None, "any-token"), ("right-token", "right-toke")],
)
def test_a_wrong_or_missing_token_gets_auth_fail_and_a_close(
    planted: str | None, sent: str
) -> None:
    harness = Harness(tcp=True)
    if planted is not None:
        harness.issue("alice", planted)
    device = harness.connect()

    device.send(Auth("alice", sent))

    [frame] = device.received()
    assert isinstance(frame, AuthFail) and frame.code is AuthFailCode.BAD_TOKEN
    assert device.closing
    assert harness.hub.sessions == {}
    assert harness.route("alice") is None
    assert harness.token("alice") == planted  # a failed attempt does not burn the token


#: The AUTH_FAIL reason of a clientId outside the rule or an empty token.
BAD_AUTH = f"clientId must be {CLIENT_ID.text}, and token must not be empty"


@pytest.mark.parametrize("client_id", BAD_CLIENT_IDS)
def test_a_client_id_reglog_refuses_is_a_bad_token_without_a_store_call(client_id: str) -> None:
    harness = Harness(tcp=True)
    # Even with a token in the store for it (no reglog would issue one).
    token = harness.issue(client_id) if client_id else "token"
    device = harness.connect()
    device.send(Auth(client_id, token))
    [frame] = device.received()
    assert frame == AuthFail(AuthFailCode.BAD_TOKEN, BAD_AUTH)
    assert device.closing
    assert harness.hub.sessions == {}


def test_an_empty_token_is_a_bad_token() -> None:
    harness = Harness(tcp=True)
    device = harness.connect()
    device.send(Auth("alice", ""))
    [frame] = device.received()
    assert frame == AuthFail(AuthFailCode.BAD_TOKEN, BAD_AUTH)
    assert device.closing


def test_an_unsupported_protocol_version_gets_auth_fail_version() -> None:
    harness = Harness(tcp=True)
    token = harness.issue("alice")
    device = harness.connect()

    device.send(Auth("alice", token, version=7))

    [frame] = device.received()
    assert isinstance(frame, AuthFail) and frame.code is AuthFailCode.VERSION
    assert "7" in frame.reason
    assert device.closing
    assert harness.route("alice") is None


def test_a_full_server_refuses_new_clients_but_not_a_relogin() -> None:
    harness = Harness(tcp=True, capacity=2)
    harness.login("a")
    harness.login("b")

    token = harness.issue("c")
    third = harness.connect()
    third.send(Auth("c", token))
    [frame] = third.received()
    assert isinstance(frame, AuthFail) and frame.code is AuthFailCode.FULL
    assert harness.route("c") is None

    again = harness.connect()
    again.send(Auth("a", harness.issue("a", "new-token-of-a")))
    assert isinstance(again.received()[0], AuthOk)
    assert set(harness.hub.sessions) == {"a", "b"}


def test_a_store_failure_gets_auth_fail_unavailable() -> None:
    harness = Harness(tcp=True)
    token = harness.issue("alice")
    result_of(harness.store.close())
    device = harness.connect()

    device.send(Auth("alice", token))

    [frame] = device.received()
    assert isinstance(frame, AuthFail) and frame.code is AuthFailCode.UNAVAILABLE
    assert device.closing
    assert harness.hub.sessions == {}


def test_auth_fail_with_a_paused_producer_still_closes() -> None:
    """A transport does not close while a paused producer is registered."""
    harness = Harness(tcp=True)
    device = harness.connect()
    harness.store.gated.add("bind_session")
    device.send(Auth("alice", "no-such-token"))
    device.transport.producer.pauseProducing()

    harness.store.open("bind_session")

    assert device.closing
    assert device.transport.producer is None


# --- timeouts -----------------------------------------------------------------------


def test_a_connection_that_does_not_auth_in_time_is_closed() -> None:
    harness = Harness(tcp=True, auth_timeout=5)
    device = harness.connect()

    harness.clock.advance(4.9)
    assert not device.closing
    harness.clock.advance(0.1)

    [frame] = device.received()
    assert isinstance(frame, Error) and frame.code is ErrorCode.TIMEOUT
    assert device.closing


def test_the_auth_timeout_also_covers_a_slow_store() -> None:
    harness = Harness(tcp=True, auth_timeout=5)
    token = harness.issue("alice")
    harness.store.gated.add("bind_session")
    device = harness.connect()
    device.send(Auth("alice", token))

    harness.clock.advance(5)
    assert device.closing
    device.lose()
    harness.store.open("bind_session")

    # The binding that answered after the close was undone at once.
    assert harness.hub.sessions == {}
    assert harness.route("alice") is None
    assert harness.store.calls.get("end_session") == 1


def test_an_authenticated_connection_stays_while_it_talks_and_closes_when_silent() -> None:
    harness = Harness(tcp=True, idle_timeout=60, heartbeat=20)
    device = harness.login("alice")

    for _ in range(5):
        harness.clock.advance(50)
        device.send(PING)
        assert device.received() == [PONG]
    for _ in range(3):
        harness.clock.advance(50)
        device.send(Ack("m-unknown"))  # an ACK is talking too
    assert not device.closing

    harness.clock.advance(59.9)
    assert not device.closing
    harness.clock.advance(0.1)
    assert device.closing
    assert device.received() == []  # an idle close says nothing

    device.lose()
    assert harness.hub.sessions == {}
    assert harness.route("alice") is None
    assert harness.token("alice") is None


def test_a_timeout_is_noticed_at_most_one_resolution_late_never_early() -> None:
    # The factory's wheel rounds deadlines up to its resolution: 1 s with an
    # idle timeout of 60 s, and a tenth of an auth timeout of 5 s.
    harness = Harness(tcp=True, auth_timeout=5, idle_timeout=60, heartbeat=20)
    assert harness.factory.deadlines.resolution == 0.5
    harness.clock.advance(0.2)
    waiting = harness.connect()  # its AUTH is due at 5.2
    harness.clock.advance(4.99)
    assert not waiting.closing
    harness.clock.advance(0.51)  # 5.7
    assert waiting.closing
    [frame] = waiting.received()
    assert frame == Error(ErrorCode.TIMEOUT, "AUTH did not come within 5 s")

    harness = Harness(tcp=True, idle_timeout=60, heartbeat=20)
    assert harness.factory.deadlines.resolution == 1.0
    device = harness.login("alice")
    harness.clock.advance(0.3)
    device.send(PING)  # idle from 0.3: due at 60.3
    harness.clock.advance(59.99)
    assert not device.closing
    harness.clock.advance(1.0)  # 61.29
    assert device.closing


def test_one_timer_for_the_timeouts_of_all_connections() -> None:
    harness = Harness(tcp=True)
    device = harness.login("alice")
    others = [harness.login(f"bob-{index}") for index in range(3)]
    waiting = harness.connect()  # (its auth timeout, on the same timer)
    for _ in range(10):
        device.send(PING)
        device.send(Ack("unknown"))
    assert len(harness.clock.getDelayedCalls()) <= 2  # the wheel (+ the ACK flush)
    harness.clock.advance(0)
    [wheel] = harness.clock.getDelayedCalls()
    for other in [*others, waiting]:
        other.lose()
    assert harness.clock.getDelayedCalls() == [wheel]
    # Closing: the idle timeout gives way to the close grace, still one timer.
    result_of(harness.hub.kick("alice", KickReason.POLICY))
    [grace] = harness.clock.getDelayedCalls()
    harness.clock.advance(grace.getTime() - harness.clock.seconds())
    assert device.transport.disconnected  # aborted: the client never closed


def test_the_timer_is_cancelled_when_the_connection_is_lost() -> None:
    harness = Harness(tcp=True)
    device = harness.connect()
    device.lose()
    assert harness.clock.getDelayedCalls() == []

    device = harness.login("alice")
    device.lose()
    assert harness.clock.getDelayedCalls() == []


# --- every frame in every state ----------------------------------------------------

NOT_FROM_CLIENTS: list[Frame] = [
    AuthOk(30, 8192, 32),
    AuthFail(AuthFailCode.BAD_TOKEN, "x"),
    PONG,
    Push("m1", "t", "x"),
    Kick(KickReason.POLICY, "x"),
]


@pytest.mark.parametrize("frame", [*NOT_FROM_CLIENTS, PING, Ack("m1")], ids=repr)
def test_frames_before_auth_are_unexpected(frame: Frame) -> None:
    harness = Harness(tcp=True)
    device = harness.connect()

    device.send(frame)

    [error] = device.received()
    assert isinstance(error, Error) and error.code is ErrorCode.UNEXPECTED
    assert "before AUTH" in error.text
    assert device.closing


@pytest.mark.parametrize("frame", [*NOT_FROM_CLIENTS, PING, Ack("m1"), Auth("x", "y")], ids=repr)
def test_frames_while_auth_is_checked_are_unexpected(frame: Frame) -> None:
    harness = Harness(tcp=True)
    token = harness.issue("alice")
    harness.store.gated.add("bind_session")
    device = harness.connect()
    device.send(Auth("alice", token))

    device.send(frame)

    [error] = device.received()
    assert isinstance(error, Error) and error.code is ErrorCode.UNEXPECTED
    assert "before AUTH_OK" in error.text
    device.lose()
    harness.store.open("bind_session")
    assert harness.hub.sessions == {}
    assert harness.route("alice") is None


@pytest.mark.parametrize("frame", [*NOT_FROM_CLIENTS, Auth("alice", "again")], ids=repr)
def test_frames_after_auth_ok_that_clients_may_not_send_are_unexpected(frame: Frame) -> None:
    harness = Harness(tcp=True)
    device = harness.login("alice")

    device.send(frame)

    [error] = device.received()
    assert isinstance(error, Error) and error.code is ErrorCode.UNEXPECTED
    assert "after AUTH_OK" in error.text
    assert device.closing
    device.lose()
    assert harness.route("alice") is None


@pytest.mark.parametrize("state", ["before AUTH", "authenticating", "active"])
def test_an_error_from_the_client_closes_without_an_answer(state: str) -> None:
    harness = Harness(tcp=True)
    if state == "active":
        device = harness.login("alice")
    else:
        device = harness.connect()
        if state == "authenticating":
            harness.store.gated.add("bind_session")
            device.send(Auth("alice", harness.issue("alice")))

    device.send(Error(ErrorCode.INTERNAL, "client failed"))

    assert device.received() == []
    assert device.closing


# --- the frame rate and the paused reader --------------------------------------------


def _pongs(device: Device) -> int:
    frames = device.received()
    assert all(frame == PONG for frame in frames), frames
    return len(frames)


def test_a_ping_flood_is_read_at_the_frame_rate_then_closed() -> None:
    # (steps of 1/8 s: exact on the clock)
    harness = Harness(tcp=True, frame_rate=8, frame_burst=20, frame_abuse_time=5)
    alice = harness.login("alice")  # AUTH took one token

    alice.send_bytes(ENCODED_PING * 10_000)

    assert _pongs(alice) == 19  # the burst; the rest waits, unread
    assert alice.transport.producerState == "paused"
    harness.clock.advance(0.125)
    assert _pongs(alice) == 1
    harness.clock.pump([0.125] * 8)
    assert _pongs(alice) == 8  # 8 frames per second
    harness.clock.pump([0.125] * 30)
    assert _pongs(alice) == 30
    assert not alice.closing
    harness.clock.advance(0.125)  # 5 s over the rate: abuse
    assert alice.received() == [
        PONG,
        Error(ErrorCode.RATE_LIMITED, "over 8 frames per second for 5 s"),
    ]
    assert alice.closing
    assert harness.metrics.counts["rate_limited.closed"] == 1
    assert harness.metrics.counts["rate_limited.paused"] >= 1
    alice.lose()
    assert [call for call in harness.clock.getDelayedCalls() if call.active()] == []


def test_a_client_within_the_rate_is_never_paused() -> None:
    harness = Harness(tcp=True, frame_rate=10, frame_burst=20, frame_abuse_time=5)
    alice = harness.login("alice")
    alice.send_bytes(ENCODED_PING * 19)  # one burst
    assert _pongs(alice) == 19
    for _ in range(600):  # then 9 PINGs a second for a minute
        harness.clock.advance(1 / 9)
        alice.send(PING)
        assert _pongs(alice) == 1
    assert not alice.closing


def test_a_burst_over_the_limit_is_read_late_but_whole() -> None:
    harness = Harness(tcp=True, frame_rate=10, frame_burst=5, frame_abuse_time=5)
    alice = harness.login("alice")
    alice.send_bytes(ENCODED_PING * 30)
    assert _pongs(alice) == 4
    harness.clock.advance(1)
    harness.clock.advance(1)
    harness.clock.advance(1)
    harness.clock.advance(1)
    alice.send(PING)  # in the same pause: queued behind the others
    harness.clock.pump([0.1] * 30)
    assert _pongs(alice) == 27
    assert alice.transport.producerState == "producing"
    assert not alice.closing


def test_frames_before_auth_count_too() -> None:
    harness = Harness(tcp=True, frame_rate=10, frame_burst=3)
    device = harness.connect()
    device.send_bytes(encode(Auth("alice", harness.issue("alice"))) + ENCODED_PING * 10)
    assert isinstance(device.received()[0], AuthOk)  # the AUTH; its PINGs wait
    assert device.transport.producerState == "paused"


def test_acks_of_pushes_in_flight_are_free_other_acks_are_not() -> None:
    harness = Harness(tcp=True, frame_rate=1, frame_burst=3, ack_window=64)
    alice = harness.login("alice")
    items = [PushItem("alice", f"m{n:03d}", "t", "x") for n in range(60)]
    assert result_of(harness.hub.push(items)) == [PushStatus.WRITTEN] * 60
    alice.received()

    alice.send_bytes(b"".join(encode(Ack(item.message_id)) for item in items))

    assert alice.session.in_flight == {}
    assert alice.transport.producerState == "producing"
    alice.send_bytes(b"".join(encode(Ack(f"old-{n}")) for n in range(5)))
    assert alice.transport.producerState == "paused"


class _FillingTransport(DeviceTransport):
    """Pauses its producer once ``limit`` bytes wait, as a TCP transport does
    when the client does not read."""

    limit = 50

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(self.value()) >= self.limit and self.producerState == "producing":
            self.producer.pauseProducing()


def test_a_client_that_does_not_read_is_not_read_either() -> None:
    """The frames already received wait too: PINGs cannot pile up PONGs
    behind a full socket."""
    harness = Harness(tcp=True, frame_burst=100_000)
    token = harness.issue("alice")
    proto = harness.factory.buildProtocol(None)
    transport = _FillingTransport()
    proto.makeConnection(transport)
    device = Device(proto, transport)
    device.send(Auth("alice", token))
    assert isinstance(device.received()[0], AuthOk)

    device.send_bytes(ENCODED_PING * 1000)

    assert _pongs(device) == 10  # 50 bytes of PONGs: the socket is full
    assert proto.session.write_paused and transport.producerState == "paused"
    proto.resumeProducing()  # the client read: what was left is read now
    assert _pongs(device) == 10
    answered = 20
    for _ in range(200):
        if not proto.session.write_paused:
            break
        proto.resumeProducing()
        answered += _pongs(device)
    assert answered == 1000
    proto.resumeProducing()
    assert transport.producerState == "producing"
    device.send(PING)
    assert _pongs(device) == 1


# --- what peers put in the log -------------------------------------------------------

FORGED = "\x1b[2J\x00\r\n2026-01-01 [pigeonpush] AUTH of admin accepted\n"


def _fields(events: Sequence[LogEvent]) -> list[str]:
    """Every string field of the events that a peer could have chosen."""
    return [
        value
        for event in events
        for key, value in event.items()
        if isinstance(value, str) and not key.startswith("log_")
    ]


def test_refused_auths_log_a_short_escaped_client_id_a_few_times_per_interval() -> None:
    harness = Harness(tcp=True)
    client_id = FORGED + "x" * 8000
    with capturedLogs() as events:
        for _ in range(100):
            device = harness.connect()
            device.send(Auth(client_id, "no-such-token"))
            assert device.received() == [AuthFail(AuthFailCode.BAD_TOKEN, BAD_AUTH)]
            device.lose()
    refusals = [event for event in events if "refused" in event["log_format"]]
    assert len(refusals) == LOG_BURST
    for value in _fields(refusals):
        assert len(value) < 250 and value.isprintable(), value
    assert "\\x1b[2J\\x00\\r\\n2026" in refusals[0]["client_id"]

    harness.clock.advance(LOG_INTERVAL)
    with capturedLogs() as events:
        device = harness.connect()
        device.send(Auth("bob", "no-such-token"))
    [refusal] = [event for event in events if "refused" in event["log_format"]]
    assert refusal["skipped"] == 100 - LOG_BURST
    assert "95 refusals not logged" in formatEvent(refusal)


def test_a_client_error_text_is_logged_short_escaped_and_throttled() -> None:
    harness = Harness(tcp=True)
    with capturedLogs() as events:
        for _ in range(50):
            device = harness.connect()
            device.send(Error(ErrorCode.INTERNAL, FORGED * 20))
            assert device.closing
            device.lose()
    logged = [event for event in events if "sent ERROR" in event["log_format"]]
    assert len(logged) == LOG_BURST
    for value in _fields(logged):
        assert len(value) < 250 and value.isprintable(), value


def test_protocol_errors_are_logged_escaped_and_throttled() -> None:
    harness = Harness(tcp=True)
    with capturedLogs() as events:
        for _ in range(50):
            device = harness.connect()
            device.send_bytes(b"\x00\x00\x00\x02\xee\n")
            assert isinstance(device.received()[0], Error)
            device.lose()
    logged = [event for event in events if "with ERROR" in event["log_format"]]
    assert len(logged) == LOG_BURST
    for value in _fields(logged):
        assert value.isprintable(), value


def test_ping_gets_pong_and_nothing_else() -> None:
    harness = Harness(tcp=True, pulls=False)
    device = harness.login("alice")
    device.send_bytes(ENCODED_PING * 3)
    assert device.received() == [PONG, PONG, PONG]


def test_garbage_and_oversize_frames_close_only_that_connection() -> None:
    harness = Harness(tcp=True, max_frame=1024)
    good = harness.login("good")
    garbage = harness.login("garbage")
    oversize = harness.connect()

    garbage.send_bytes(b"\x00\x00\x00\x03\x7f\x01\x02")  # unknown type
    oversize.send_bytes(b"\x00\x10\x00\x00")  # a 1 MiB frame announced

    [error] = garbage.received()
    assert isinstance(error, Error) and error.code is ErrorCode.UNKNOWN_TYPE
    [error] = oversize.received()
    assert isinstance(error, Error) and error.code is ErrorCode.TOO_LARGE
    assert garbage.closing and oversize.closing
    good.send(PING)
    assert good.received() == [PONG]
    assert not good.closing


@pytest.mark.parametrize(
    "payload",
    [
        b"\x06\x00\x02\xff\xfe",  # not UTF-8
        b"\x06\x00\x05m1",  # messageId cut short
        b"\x06\x00\x01m1",  # a byte after the messageId
        b"\x06\x00",  # no length
    ],
)
def test_a_malformed_ack_of_an_active_connection_gets_error_malformed(payload: bytes) -> None:
    harness = Harness(tcp=True, pulls=False)
    device = harness.login("alice")
    device.send_bytes(len(payload).to_bytes(4, "big") + payload)
    [error] = device.received()
    assert isinstance(error, Error) and error.code is ErrorCode.MALFORMED
    assert device.closing


def test_an_ack_that_the_hub_fails_on_is_an_internal_error(
    logged_failures: FailureCollector, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = Harness(tcp=True, pulls=False)
    device = harness.login("alice")

    def broken(proto: object, message_id: str) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(harness.hub, "acked", broken)
    device.send(Ack("m1"))
    [error] = device.received()
    assert isinstance(error, Error) and error.code is ErrorCode.INTERNAL
    assert device.closing
    [failure] = logged_failures.flush(RuntimeError)
    assert "boom" in str(failure.value)


def test_tcp_nodelay_and_the_producer_are_set_on_connect() -> None:
    harness = Harness(tcp=True)
    device = harness.connect()
    assert device.transport.no_delay is True
    assert device.transport.producer is device.proto
    assert device.transport.streaming is True


# --- replaced logins and the conditional cleanup ------------------------------------


def test_a_second_login_replaces_the_first() -> None:
    harness = Harness(tcp=True)
    first = harness.login("alice", "token-1")
    second = harness.login("alice", "token-2")

    [kick] = first.received()
    assert kick == Kick(KickReason.REPLACED, "the same client logged in again")
    assert first.closing
    assert harness.hub.sessions == {"alice": second.session}

    # The old connection's close leaves the new session alone.
    first.lose()
    assert harness.hub.sessions == {"alice": second.session}
    assert harness.route("alice") == SERVER
    assert harness.token("alice") == "token-2"
    assert harness.store.calls.get("end_session") is None
    second.send(PING)
    assert second.received() == [PONG]


def test_a_replayed_token_gets_bad_token_and_the_victim_keeps_its_session() -> None:
    """A token is single-use: whoever replays a live session's (clientId,
    token) gets AUTH_FAIL BAD_TOKEN, and the session neither gets a KICK nor
    loses its messages."""
    harness = Harness(tcp=True)
    token = harness.issue("alice")
    victim = harness.connect()
    victim.send(Auth("alice", token))
    assert isinstance(victim.received()[0], AuthOk)
    attacker = harness.connect()

    attacker.send(Auth("alice", token))

    assert attacker.received() == [
        AuthFail(AuthFailCode.BAD_TOKEN, "the token is wrong or expired")
    ]
    assert attacker.closing
    attacker.lose()
    assert victim.received() == []
    assert not victim.closing
    assert harness.hub.sessions == {"alice": victim.session}
    assert harness.route("alice") == SERVER
    assert harness.push(PushItem("alice", "m1", "t", "x")) == [PushStatus.WRITTEN]
    assert victim.received() == [Push("m1", "t", "x")]


def test_a_relogin_with_the_same_token_keeps_the_session_when_the_old_one_closes() -> None:
    harness = Harness(tcp=True)
    first = harness.login("alice", "same")
    second = harness.login("alice", "same")
    first.lose()
    assert harness.route("alice") == SERVER
    assert harness.token("alice") == "same"
    second.lose()
    assert harness.route("alice") is None
    assert harness.token("alice") is None


def test_close_of_the_current_session_deletes_auth_and_route() -> None:
    harness = Harness(tcp=True)
    device = harness.login("alice")
    device.lose()
    assert harness.hub.sessions == {}
    assert harness.route("alice") is None
    assert harness.token("alice") is None
    assert harness.hub.all_sessions == set()


def test_cleanup_leaves_a_session_that_moved_to_another_server() -> None:
    harness = Harness(tcp=True)
    device = harness.login("alice", "old-token")
    # The client got a new token from reglog and logged in elsewhere.
    harness.issue("alice", "new-token")
    result_of(harness.store.bind_session("alice", "new-token", OTHER_SERVER, 300))

    device.lose()

    assert harness.route("alice") == OTHER_SERVER
    assert harness.token("alice") == "new-token"


def test_a_connection_closed_during_the_binding_is_unbound_at_once() -> None:
    harness = Harness(tcp=True)
    token = harness.issue("alice")
    harness.store.gated.add("bind_session")
    device = harness.connect()
    device.send(Auth("alice", token))

    device.lose()
    harness.store.open("bind_session")

    assert harness.hub.sessions == {}
    assert harness.route("alice") is None


def test_a_closed_binding_does_not_undo_a_newer_login_here() -> None:
    harness = Harness(tcp=True)
    token = harness.issue("alice", "same")
    harness.store.gated.add("bind_session")
    slow = harness.connect()
    slow.send(Auth("alice", token))
    slow.lose()
    newer = harness.connect()
    newer.send(Auth("alice", token))
    harness.store.release_one("bind_session", 1)  # the newer binding answers first
    assert isinstance(newer.received()[0], AuthOk)

    harness.store.release_one("bind_session", 0)  # then the closed one's

    assert harness.hub.sessions == {"alice": newer.session}
    assert harness.route("alice") == SERVER
    assert harness.token("alice") == "same"
    assert harness.store.calls.get("end_session") is None


def test_a_failed_cleanup_is_logged_not_raised(logged_failures: FailureCollector) -> None:
    harness = Harness(tcp=True)
    device = harness.login("alice")
    result_of(harness.store.close())

    device.lose()  # end_session fails with StoreError: a warning, no unhandled error

    assert harness.hub.sessions == {}
    assert logged_failures.events == []


# --- the TCP channel ----------------------------------------------------------------


def test_a_drain_aborts_a_tcp_connection_that_does_not_close() -> None:
    harness = Harness(tcp=True, pulls=False)
    stubborn = harness.login("stubborn")
    draining = harness.hub.drain(0)
    assert isinstance(stubborn.received()[0], Kick)
    assert not stubborn.transport.disconnected

    harness.clock.advance(DRAIN_GRACE)

    assert stubborn.transport.disconnected  # aborted
    stubborn.lose()
    harness.clock.advance(0)
    assert result_of(draining) is None


def test_a_connection_lost_before_it_was_made_tells_the_hub_nothing() -> None:
    harness = Harness(tcp=True)
    proto = harness.factory.buildProtocol(None)
    proto.connectionLost()
    assert harness.hub.all_sessions == set()
    assert proto.session.state is State.CLOSED


def test_the_connection_takes_its_settings_from_its_factory() -> None:
    harness = Harness(tcp=True, max_frame=4096, idle_timeout=60, heartbeat=20)
    device = harness.login("alice")
    assert device.proto.MAX_LENGTH == 4096
    assert device.proto.settings is harness.settings
    assert device.proto.clock is harness.clock
    assert device.proto.metrics is harness.metrics
    [timer] = harness.clock.getDelayedCalls()
    assert timer.getTime() == 60  # the idle timeout, from the settings


class _CountingTransport:
    """Counts the calls that write to a ``DeviceTransport``."""

    def __init__(self, transport: DeviceTransport) -> None:
        self.calls: list[str] = []
        write, write_sequence = transport.write, transport.writeSequence

        def counted_write(data: bytes) -> None:
            self.calls.append("write")
            write(data)

        def counted_sequence(data: Sequence[bytes]) -> None:
            self.calls.append(f"writeSequence({len(data)})")
            write_sequence(data)

        transport.write = counted_write  # type: ignore[method-assign]
        transport.writeSequence = counted_sequence  # type: ignore[method-assign]


def test_consecutive_pushes_to_one_client_go_out_in_one_transport_call_in_order() -> None:
    harness = Harness(tcp=True, pulls=False, ack_window=8)
    alice, bob = harness.login("alice"), harness.login("bob")
    alice_calls = _CountingTransport(alice.transport)
    bob_calls = _CountingTransport(bob.transport)

    statuses = harness.push(
        PushItem("alice", "m1", "t", "1"),
        PushItem("alice", "m2", "t", "2"),
        PushItem("alice", "m3", "t", "3"),
        PushItem("bob", "m4", "t", "4"),
        PushItem("alice", "m5", "t", "5"),
    )

    assert statuses == [PushStatus.WRITTEN] * 5
    assert alice_calls.calls == ["writeSequence(3)", "write"]
    assert bob_calls.calls == ["write"]
    assert [frame.message_id for frame in alice.received()] == ["m1", "m2", "m3", "m5"]  # type: ignore[attr-defined]
    assert [frame.message_id for frame in bob.received()] == ["m4"]  # type: ignore[attr-defined]
    assert list(alice.session.in_flight or {}) == ["m1", "m2", "m3", "m5"]


def test_a_burst_stops_at_the_window_and_skips_a_frame_over_the_limit() -> None:
    harness = Harness(tcp=True, pulls=False, ack_window=3, max_frame=1024)
    alice = harness.login("alice")

    statuses = harness.push(
        PushItem("alice", "m1", "t", "1"),
        PushItem("alice", "m-big", "t", "x" * 2000),
        PushItem("alice", "m2", "t", "2"),
        PushItem("alice", "m3", "t", "3"),
        PushItem("alice", "m4", "t", "4"),
    )

    assert statuses == [
        PushStatus.WRITTEN,
        PushStatus.TOO_LARGE,
        PushStatus.WRITTEN,
        PushStatus.WRITTEN,
        PushStatus.WINDOW_FULL,
    ]
    assert [frame.message_id for frame in alice.received()] == ["m1", "m2", "m3"]  # type: ignore[attr-defined]
    assert not alice.closing


def test_a_burst_to_a_closing_connection_writes_nothing() -> None:
    harness = Harness(tcp=True, pulls=False)
    alice = harness.login("alice")
    alice.proto.closeWith(None)
    alice.transport.clear()

    alice.proto.send_frames([encode(Push("m1", "t", "x")), encode(Push("m2", "t", "x"))])

    assert alice.transport.value() == b""
