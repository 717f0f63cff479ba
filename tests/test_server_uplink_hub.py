"""The hub's UPLINK handling without a transport (``FakeChannel``): what it
writes on a session's channel, on a Clock with the memory store."""

from __future__ import annotations

from pigeonpush.server.uplink import STORE_RETRY_DELAYS
from pigeonpush.wire.frames import Error, ErrorCode, Uplink, UplinkAck
from support.server_harness import Harness, result_of


def test_the_ack_goes_on_the_channel_once_stored() -> None:
    harness = Harness()
    alice = harness.login("alice")
    harness.store.gated.add("add_uplink")
    alice.send(Uplink("u-1", {"k": "v"}))
    assert alice.received() == []
    harness.store.open("add_uplink")
    assert alice.received() == [UplinkAck("u-1")]
    (stored,) = result_of(harness.store.uplinks("0", 10))
    assert (stored.client_id, stored.uplink_id, dict(stored.data)) == ("alice", "u-1", {"k": "v"})


def test_a_refusal_closes_the_channel_with_error() -> None:
    harness = Harness()
    alice = harness.login("alice")
    harness.store.failing.add("add_uplink")
    alice.send(Uplink("u-1"))
    for delay in STORE_RETRY_DELAYS:  # the store never comes back
        harness.clock.advance(delay)
    (error,) = alice.received()
    assert isinstance(error, Error) and error.code is ErrorCode.INTERNAL
    assert alice.closing


def test_nothing_is_written_on_a_session_closing_meanwhile() -> None:
    harness = Harness()
    alice = harness.login("alice")
    harness.store.gated.add("add_uplink")
    alice.send(Uplink("u-1"))
    alice.channel.close()
    harness.store.open("add_uplink")
    assert alice.received() == []
    assert len(result_of(harness.store.uplinks("0", 10))) == 1
