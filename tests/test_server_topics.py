"""Topic and broadcast messages on the push server: catch-up from the logs on
AUTH_OK and on the heartbeat, positions moved by ACKs without gaps (a hub on
a Clock and the memory store)."""

from __future__ import annotations

from typing import Any

from pigeonpush.store.model import Message
from pigeonpush.topics import BROADCAST
from pigeonpush.wire.frames import Ack, Auth, AuthOk, Nack, Ping, Push
from support.server_harness import Harness, result_of


def publish(harness: Harness, topic: str, message_id: str, ttl: float = 600) -> None:
    now = harness.clock.seconds()
    message = Message(message_id, f"title {message_id}", "text", {}, now, now + ttl)
    result_of(harness.store.publish(topic, message, 100))


def login(harness: Harness, client_id: str) -> tuple[Any, list[str]]:
    """A device that authenticated, and the messageIds pushed after AUTH_OK."""
    device = harness.connect()
    device.send(Auth(client_id, harness.issue(client_id)))
    frames = device.received()
    assert isinstance(frames[0], AuthOk), frames
    return device, [f.message_id for f in frames[1:] if isinstance(f, Push)]


def pushed(device: object) -> list[str]:
    return [f.message_id for f in device.received() if isinstance(f, Push)]  # type: ignore[attr-defined]


def test_a_device_gets_its_topics_and_broadcast_at_auth_ok() -> None:
    harness = Harness(pulls=False)
    result_of(harness.store.subscribe("news", ["alice"], 10))
    publish(harness, "news", "n1")
    publish(harness, BROADCAST, "b1")
    publish(harness, "other", "o1")
    alice, first = login(harness, "alice")
    assert first == ["b1", "n1"]
    assert alice.session.in_flight is not None and list(alice.session.in_flight) == ["b1", "n1"]


def test_acks_move_the_positions_so_a_new_session_gets_nothing_again() -> None:
    harness = Harness(pulls=False)
    result_of(harness.store.subscribe("news", ["alice"], 10))
    publish(harness, "news", "n1")
    publish(harness, "news", "n2")
    alice, first = login(harness, "alice")
    assert first == ["n1", "n2"]
    alice.send(Ack("n1"))
    alice.send(Ack("n2"))
    harness.clock.advance(0)
    assert result_of(harness.store.catch_up("alice", 10)) == []
    alice.lose()
    _again, first = login(harness, "alice")
    assert first == []


def test_a_position_never_passes_an_entry_not_acked() -> None:
    harness = Harness(pulls=False)
    result_of(harness.store.subscribe("news", ["alice"], 10))
    for message_id in ("n1", "n2", "n3"):
        publish(harness, "news", message_id)
    alice, first = login(harness, "alice")
    assert first == ["n1", "n2", "n3"]
    alice.send(Ack("n2"))
    harness.clock.advance(0)
    # n1 is not ACKed: the position stays before it, n2 included.
    (caught,) = result_of(harness.store.catch_up("alice", 10))
    assert [e.message.message_id for e in caught.entries] == ["n1", "n2", "n3"]
    alice.send(Ack("n1"))
    harness.clock.advance(0)
    (caught,) = result_of(harness.store.catch_up("alice", 10))
    assert [e.message.message_id for e in caught.entries] == ["n3"]


def test_the_heartbeat_reads_what_was_published_meanwhile() -> None:
    harness = Harness(pulls=False)
    result_of(harness.store.subscribe("news", ["alice"], 10))
    alice, first = login(harness, "alice")
    assert first == []
    publish(harness, "news", "n1")
    harness.clock.advance(harness.settings.heartbeat)
    alice.send(Ping())
    assert pushed(alice) == ["n1"]
    # Still in flight: the next heartbeat does not write it again.
    harness.clock.advance(harness.settings.heartbeat)
    alice.send(Ping())
    assert pushed(alice) == []


def test_a_nacked_entry_comes_again_and_one_given_up_on_is_passed() -> None:
    harness = Harness(pulls=False, max_attempts=1)
    publish(harness, BROADCAST, "b1")
    publish(harness, BROADCAST, "b2")
    alice, first = login(harness, "alice")
    assert first == ["b1", "b2"]
    alice.send(Nack("b1"))
    alice.send(Ack("b2"))
    harness.clock.advance(0)
    # One attempt only: b1 is given up on, and the position moves past both.
    assert result_of(harness.store.catch_up("alice", 10)) == []
