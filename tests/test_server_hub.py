"""Push, the window, ACKs, pulls, kicks and the drain of the hub
(StringTransport + Clock + the memory store)."""

from __future__ import annotations

import pytest

from pigeonpush.rpc import PushItem, PushStatus
from pigeonpush.server.hub import DRAIN_GRACE, PULLED_MEMORY, _remember_pulled
from pigeonpush.store.model import Message, Notification
from pigeonpush.wire.frames import (
    PING,
    PONG,
    Ack,
    Auth,
    AuthFail,
    AuthFailCode,
    AuthOk,
    Kick,
    KickReason,
    Push,
)
from support.server_harness import OTHER_SERVER, SERVER, Harness, result_of

WRITTEN = PushStatus.WRITTEN
OFFLINE = PushStatus.OFFLINE
WINDOW_FULL = PushStatus.WINDOW_FULL
NO_BODY = PushStatus.NO_BODY
TOO_LARGE = PushStatus.TOO_LARGE


def item(client_id: str, n: int, text: str = "text") -> PushItem:
    return PushItem(client_id, f"m{n:03d}", f"title {n}", text)


def accept(harness: Harness, message_id: str, *recipients: str, ttl: float = 600) -> None:
    now = harness.clock.seconds()
    message = Message(message_id, "stored title", "stored text", {"k": "v"}, now, now + ttl)
    result_of(harness.store.accept([Notification(message, recipients)]))


# --- Push ---------------------------------------------------------------------------


def test_push_writes_to_the_client_and_answers_written() -> None:
    harness = Harness()
    alice = harness.login("alice")
    extras = {"url": "https://example.org/1"}

    statuses = harness.push(PushItem("alice", "m1", "Hello", "World", extras))

    assert statuses == [WRITTEN]
    assert alice.received() == [Push("m1", "Hello", "World", extras)]
    assert alice.session.in_flight is not None and list(alice.session.in_flight) == ["m1"]


def test_a_batch_for_many_clients_answers_in_order() -> None:
    harness = Harness()
    alice, bob = harness.login("alice"), harness.login("bob")
    statuses = harness.push(item("alice", 1), item("nobody", 2), item("bob", 3), item("alice", 4))
    assert statuses == [WRITTEN, OFFLINE, WRITTEN, WRITTEN]
    assert [frame.message_id for frame in alice.received()] == ["m001", "m004"]  # type: ignore[union-attr]
    assert [frame.message_id for frame in bob.received()] == ["m003"]  # type: ignore[union-attr]


def test_a_message_in_flight_is_not_written_twice() -> None:
    harness = Harness()
    alice = harness.login("alice")
    assert harness.push(item("alice", 1), item("alice", 1)) == [WRITTEN, WRITTEN]
    assert harness.push(item("alice", 1)) == [WRITTEN]
    assert len(alice.received()) == 1


def test_a_live_push_that_comes_after_a_pull_wrote_it_is_not_written_again() -> None:
    """Delivery (or a direct stream) behind a backlog: the heartbeat's pull
    wrote the message and the device ACKed it before its live push came."""
    harness = Harness()
    harness.pulls.plant(item("alice", 1))
    alice = harness.connect()
    alice.send(Auth("alice", harness.issue("alice")))
    assert [f.message_id for f in alice.received()[1:]] == ["m001"]  # type: ignore[union-attr]
    harness.pulls.acked("alice", "m001")
    alice.send(Ack("m001"))

    assert harness.push(item("alice", 1), item("alice", 2)) == [WRITTEN, WRITTEN]
    assert [f.message_id for f in alice.received()] == ["m002"]  # type: ignore[union-attr]
    # The live copy comes once: a later push of the id (a reclaimed queue
    # entry) is written, as before.
    assert harness.push(item("alice", 1)) == [WRITTEN]
    assert [f.message_id for f in alice.received()] == ["m001"]  # type: ignore[union-attr]


def test_a_session_remembers_only_the_newest_pulled_ids() -> None:
    harness = Harness()
    alice = harness.login("alice")
    session = alice.session
    for n in range(PULLED_MEMORY + 1):
        _remember_pulled(session, f"p{n}")
    assert session.pulled is not None and len(session.pulled) == PULLED_MEMORY
    assert "p0" not in session.pulled and f"p{PULLED_MEMORY}" in session.pulled
    assert harness.push(PushItem("alice", "p0", "t", "x")) == [WRITTEN]
    assert [f.message_id for f in alice.received()] == ["p0"]  # type: ignore[union-attr]
    assert harness.push(PushItem("alice", "p1", "t", "x")) == [WRITTEN]
    assert alice.received() == []


def test_offline_drops_a_stale_route_to_this_server_only() -> None:
    harness = Harness()
    harness.issue("gone")
    result_of(harness.store.bind_session("gone", "token-of-gone", SERVER, 300))
    harness.issue("elsewhere")
    result_of(harness.store.bind_session("elsewhere", "token-of-elsewhere", OTHER_SERVER, 300))

    statuses = harness.push(item("gone", 1), item("gone", 2), item("elsewhere", 3))

    assert statuses == [OFFLINE, OFFLINE, OFFLINE]
    assert harness.route("gone") is None
    assert harness.route("elsewhere") == OTHER_SERVER


def test_a_push_during_a_login_does_not_drop_the_route_being_written() -> None:
    harness = Harness()
    token = harness.issue("alice")
    harness.store.gated.add("bind_session")
    alice = harness.connect()
    alice.send(Auth("alice", token))

    assert harness.push(item("alice", 1)) == [OFFLINE]  # not connected yet
    harness.store.open("bind_session")

    assert isinstance(alice.received()[0], AuthOk)
    assert "drop_route" not in harness.store.calls
    assert harness.route("alice") == SERVER


def test_a_closing_connection_is_offline() -> None:
    harness = Harness()
    alice = harness.login("alice")
    result_of(harness.hub.kick("alice", KickReason.POLICY))
    alice.received()
    assert harness.push(item("alice", 1)) == [OFFLINE]
    assert alice.received() == []


def test_the_window_bounds_pushes_in_flight() -> None:
    harness = Harness(ack_window=3)
    alice = harness.login("alice")

    statuses = harness.push(*(item("alice", n) for n in range(5)))

    assert statuses == [WRITTEN] * 3 + [WINDOW_FULL] * 2
    assert len(alice.received()) == 3
    alice.send(Ack("m000"))
    assert harness.push(item("alice", 3), item("alice", 4)) == [WRITTEN, WINDOW_FULL]


def test_a_paused_transport_refuses_pushes_until_it_resumes() -> None:
    harness = Harness(pulls=False)
    alice = harness.login("alice")

    alice.pause()  # the socket's buffer is full
    assert harness.push(item("alice", 1)) == [WINDOW_FULL]
    assert alice.received() == []
    # (That the client is not read meanwhile is the transport's part:
    # test_server_protocol.py, test_a_client_that_does_not_read_is_not_read_either.)

    alice.resume()
    assert harness.push(item("alice", 1)) == [WRITTEN]


def test_a_push_without_body_reads_msg_body_in_one_call() -> None:
    harness = Harness()
    alice, bob = harness.login("alice"), harness.login("bob")
    accept(harness, "m1", "alice", "bob")
    accept(harness, "m2", "alice")
    calls_before = harness.store.calls.get("bodies", 0)

    statuses = harness.push(
        PushItem("alice", "m1", has_body=False),
        PushItem("bob", "m1", has_body=False),
        PushItem("alice", "m2", has_body=False),
        PushItem("alice", "m-expired", has_body=False),
        item("alice", 9),
    )

    assert statuses == [WRITTEN, WRITTEN, WRITTEN, NO_BODY, WRITTEN]
    assert harness.store.calls["bodies"] == calls_before + 1
    assert alice.received() == [
        Push("m009", "title 9", "text"),
        Push("m1", "stored title", "stored text", {"k": "v"}),
        Push("m2", "stored title", "stored text", {"k": "v"}),
    ]
    assert bob.received() == [Push("m1", "stored title", "stored text", {"k": "v"})]


def test_a_body_that_expired_is_no_body() -> None:
    harness = Harness()
    harness.login("alice")
    accept(harness, "m1", "alice", ttl=10)
    harness.clock.advance(11)
    assert harness.push(PushItem("alice", "m1", has_body=False)) == [NO_BODY]


def test_a_client_gone_while_bodies_are_read_is_offline() -> None:
    harness = Harness()
    alice = harness.login("alice")
    accept(harness, "m1", "alice")
    harness.store.gated.add("bodies")
    pushing = harness.hub.push([PushItem("alice", "m1", has_body=False)])

    alice.lose()
    harness.store.open("bodies")

    assert result_of(pushing) == [OFFLINE]


def test_a_store_failure_while_reading_bodies_fails_the_push() -> None:
    from pigeonpush.store.interface import StoreError

    harness = Harness()
    alice = harness.login("alice")
    result_of(harness.store.close())
    with pytest.raises(StoreError):
        result_of(harness.hub.push([item("alice", 1), PushItem("alice", "m2", has_body=False)]))
    # What could be written was written; a retry does not write it again.
    assert alice.received() == [Push("m001", "title 1", "text")]


def test_a_message_over_the_frame_limit_is_too_large_and_leaves_wait_ack() -> None:
    harness = Harness(max_frame=1024)
    alice = harness.login("alice")
    accept(harness, "m-big", "alice")

    statuses = harness.push(PushItem("alice", "m-big", "t", "x" * 2000), item("alice", 2))
    harness.clock.advance(0)

    assert statuses == [TOO_LARGE, WRITTEN]
    assert alice.received() == [Push("m002", "title 2", "text")]
    assert harness.pending("alice") == []
    assert harness.store.dropped == [[("alice", "m-big", "too_large")]]
    assert harness.store.acked == []
    assert not alice.closing


def test_push_counts_outcomes() -> None:
    harness = Harness()
    harness.login("alice")
    harness.push(item("x", 1), item("y", 2))
    assert harness.metrics.counts["pushes.offline"] == 2


# --- ACK ----------------------------------------------------------------------------


def test_ack_leaves_the_window_and_wait_ack() -> None:
    harness = Harness(pulls=False)
    alice = harness.login("alice")
    accept(harness, "m1", "alice")
    accept(harness, "m2", "alice")
    harness.push(PushItem("alice", "m1", has_body=False), PushItem("alice", "m2", has_body=False))

    harness.clock.advance(0.25)
    alice.send(Ack("m1"))

    assert alice.session.in_flight is not None and list(alice.session.in_flight) == ["m2"]
    assert harness.pending("alice") == ["m1", "m2"]  # not yet: batched to the turn's end
    harness.clock.advance(0)
    assert harness.pending("alice") == ["m2"]
    assert harness.metrics.ack_times == [0.25]


def test_acks_of_one_turn_from_many_connections_are_one_store_call() -> None:
    harness = Harness(pulls=False)
    devices = {name: harness.login(name) for name in ("a", "b", "c")}
    for name in devices:
        accept(harness, f"m-{name}", name)
        harness.push(PushItem(name, f"m-{name}", has_body=False))

    for name, device in devices.items():
        device.send(Ack(f"m-{name}"))
    harness.clock.advance(0)

    assert harness.store.calls["ack"] == 1
    assert all(harness.pending(name) == [] for name in devices)


def test_an_ack_for_an_id_not_in_flight_still_leaves_wait_ack() -> None:
    harness = Harness(pulls=False)
    alice = harness.login("alice")
    accept(harness, "m-from-an-old-connection", "alice")

    alice.send(Ack("m-from-an-old-connection"))
    harness.clock.advance(0)

    assert harness.pending("alice") == []
    assert not alice.closing


# --- Kick ---------------------------------------------------------------------------


def test_kick_ends_the_session() -> None:
    harness = Harness()
    alice = harness.login("alice")

    assert result_of(harness.hub.kick("alice", KickReason.POLICY)) is True

    assert alice.received() == [Kick(KickReason.POLICY, "the session was ended by the service")]
    assert alice.closing
    alice.lose()
    assert harness.route("alice") is None
    assert harness.token("alice") is None


def test_kick_of_an_unknown_client_is_false() -> None:
    harness = Harness()
    assert result_of(harness.hub.kick("nobody", KickReason.POLICY)) is False


def test_kick_with_an_unknown_reason_is_a_value_error() -> None:
    harness = Harness()
    harness.login("alice")
    with pytest.raises(ValueError, match="99"):
        harness.hub.kick("alice", 99)


# --- pulls --------------------------------------------------------------------------


def test_auth_ok_is_followed_by_the_pending_messages_oldest_first() -> None:
    harness = Harness(ack_window=4)
    harness.pulls.plant(item("alice", 3), item("alice", 1), item("alice", 2), item("bob", 9))
    token = harness.issue("alice")
    alice = harness.connect()

    alice.send(Auth("alice", token))

    frames = alice.received()
    assert isinstance(frames[0], AuthOk)
    assert [frame.message_id for frame in frames[1:]] == ["m001", "m002", "m003"]  # type: ignore[union-attr]
    [call] = harness.pulls.calls
    assert (call.client_id, call.limit, call.in_flight) == ("alice", 4, [])


def test_ping_pulls_at_most_once_per_heartbeat() -> None:
    harness = Harness(heartbeat=30, idle_timeout=90)
    alice = harness.login("alice")
    assert len(harness.pulls.calls) == 1

    harness.clock.advance(10)
    alice.send(PING)
    assert len(harness.pulls.calls) == 1
    assert alice.received() == [PONG]
    harness.clock.advance(20)
    harness.pulls.plant(item("alice", 1))
    alice.send(PING)
    assert len(harness.pulls.calls) == 2
    assert alice.received() == [PONG, Push("m001", "title 1", "text")]
    alice.send(PING)
    assert len(harness.pulls.calls) == 2


def test_a_pull_skips_what_is_in_flight_and_fills_only_the_free_window() -> None:
    harness = Harness(ack_window=4, heartbeat=30, idle_timeout=90)
    alice = harness.login("alice")
    harness.push(item("alice", 1), item("alice", 2))
    harness.pulls.plant(*(item("alice", n) for n in range(1, 10)))
    alice.received()

    harness.clock.advance(30)
    alice.send(PING)

    call = harness.pulls.calls[-1]
    assert (call.limit, sorted(call.in_flight)) == (2, ["m001", "m002"])
    assert [f.message_id for f in alice.received()[1:]] == ["m003", "m004"]  # type: ignore[union-attr]


def test_more_pending_is_pulled_when_the_window_drains_to_half() -> None:
    harness = Harness(ack_window=4)
    harness.pulls.plant(*(item("alice", n) for n in range(10)))
    token = harness.issue("alice")
    alice = harness.connect()
    alice.send(Auth("alice", token))
    pushed = [f.message_id for f in alice.received()[1:]]  # type: ignore[union-attr]
    assert pushed == ["m000", "m001", "m002", "m003"]

    def ack(message_id: str) -> None:
        harness.pulls.acked("alice", message_id)
        alice.send(Ack(message_id))

    ack("m000")
    assert len(harness.pulls.calls) == 1  # three in flight: more than half
    ack("m001")
    assert len(harness.pulls.calls) == 2  # half: pull the free two
    assert [f.message_id for f in alice.received()] == ["m004", "m005"]  # type: ignore[union-attr]


def test_a_full_window_defers_the_pull_until_acks_drain_it() -> None:
    harness = Harness(ack_window=2, heartbeat=30, idle_timeout=90)
    alice = harness.login("alice")
    harness.push(item("alice", 1), item("alice", 2))
    harness.clock.advance(30)
    calls = len(harness.pulls.calls)
    alice.send(PING)
    assert len(harness.pulls.calls) == calls  # nothing asked with no room

    harness.pulls.plant(item("alice", 3))
    alice.send(Ack("m001"))
    assert len(harness.pulls.calls) == calls + 1


def test_a_paused_transport_defers_the_pull_until_it_resumes() -> None:
    harness = Harness(heartbeat=30, idle_timeout=90)
    alice = harness.login("alice")
    harness.pulls.plant(item("alice", 1))
    alice.pause()
    harness.clock.advance(30)
    alice.send(PING)
    calls = len(harness.pulls.calls)

    alice.resume()

    assert len(harness.pulls.calls) == calls + 1
    assert [f.message_id for f in alice.received()[1:]] == ["m001"]  # type: ignore[union-attr]


def test_a_failed_pull_is_counted_and_retried_without_a_ping() -> None:
    from pigeonpush.rpcpool import RpcUnavailable

    harness = Harness(heartbeat=30, idle_timeout=90)
    harness.pulls.error = RpcUnavailable("no delivery node is known")
    alice = harness.login("alice")
    assert not alice.closing
    assert harness.metrics.counts["pulls.failed"] == 1

    harness.pulls.error = None
    harness.pulls.plant(item("alice", 1))
    harness.clock.advance(1)
    assert alice.received() == [Push("m001", "title 1", "text")]


def test_only_one_pull_at_a_time_per_connection() -> None:
    harness = Harness(heartbeat=30, idle_timeout=90)
    harness.pulls.hold = True
    alice = harness.login("alice")
    harness.clock.advance(30)
    alice.send(PING)
    assert len(harness.pulls.calls) == 1
    harness.pulls.hold = False
    harness.pulls.release()
    harness.clock.advance(30)
    alice.send(PING)
    assert len(harness.pulls.calls) == 2


def test_a_pull_answered_after_the_client_left_writes_nothing() -> None:
    harness = Harness()
    harness.pulls.hold = True
    harness.pulls.plant(item("alice", 1))
    alice = harness.login("alice")
    alice.lose()
    harness.pulls.release()
    assert alice.received() == []


def test_without_a_pull_source_nothing_is_pulled() -> None:
    harness = Harness(pulls=False)
    harness.pulls.plant(item("alice", 1))
    alice = harness.login("alice")
    alice.send(PING)
    assert alice.received() == [PONG]
    assert harness.pulls.calls == []


# --- periodic refresh and the drain ------------------------------------------------


def test_refresh_extends_live_sessions() -> None:
    harness = Harness(session_ttl=100)
    harness.login("alice")
    harness.clock.advance(90)
    result_of(harness.hub.refresh_sessions())
    harness.clock.advance(90)
    assert harness.route("alice") == SERVER
    harness.clock.advance(11)
    assert harness.route("alice") is None


def test_drain_kicks_clients_spread_over_the_period() -> None:
    harness = Harness(pulls=False)
    devices = [harness.login(f"c{n}") for n in range(40)]
    stray = harness.connect()  # never authenticated

    draining = harness.hub.drain(2.0)

    assert stray.closing
    kicked_at = []
    for _ in range(25):
        kicked = sum(1 for device in devices if device.closing)
        kicked_at.append(kicked)
        harness.clock.advance(0.1)
    assert kicked_at[0] == 2  # 40 clients over 20 ticks
    assert kicked_at[10] == 22
    assert kicked_at[-1] == 40
    shutting_down = Kick(
        KickReason.SHUTTING_DOWN, "the server is shutting down; reconnect through reglog"
    )
    assert all(device.received() == [shutting_down] for device in devices)
    for device in devices:
        device.lose()
    stray.lose()
    harness.clock.advance(0)
    assert result_of(draining) is None
    assert harness.hub.sessions == {}
    assert all(harness.route(f"c{n}") is None for n in range(40))


def test_drain_refuses_new_logins_and_aborts_what_does_not_close() -> None:
    harness = Harness(pulls=False)
    stubborn = harness.login("stubborn")
    draining = harness.hub.drain(0)
    assert stubborn.received() == [
        Kick(KickReason.SHUTTING_DOWN, "the server is shutting down; reconnect through reglog")
    ]

    late = harness.connect()
    late.send(Auth("late", harness.issue("late")))
    assert late.received() == [AuthFail(AuthFailCode.UNAVAILABLE, "the server is shutting down")]

    harness.clock.advance(DRAIN_GRACE)
    assert stubborn.aborted
    stubborn.lose()
    late.lose()
    harness.clock.advance(0)
    assert result_of(draining) is None


def test_drain_with_no_clients_finishes_at_once() -> None:
    harness = Harness()
    assert result_of(harness.hub.drain(10)) is None


def test_the_hub_knows_no_transport() -> None:
    """The hub meets its transports through pigeonpush.server.session only."""
    import ast
    from pathlib import Path

    import pigeonpush.server.hub as hub_module

    tree = ast.parse(Path(hub_module.__file__).read_text())
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert "pigeonpush.server.session" in imported
    transports = (
        "pigeonpush.wire.protocol",
        "pigeonpush.server.protocol",
        "twisted.internet.protocol",
    )
    assert [name for name in imported if name.startswith(transports)] == []
