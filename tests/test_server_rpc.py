"""The AMP responder delivery calls (Push, Kick), over an in-memory AMP pair."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient

from pigeonpush.rpc import (
    BadRequest,
    Kick,
    Push,
    PushItem,
    PushStatus,
    TemporarilyUnavailable,
    encode_batches,
)
from pigeonpush.server.rpc_server import ServerRpcFactory
from pigeonpush.wire.frames import Kick as KickFrame
from pigeonpush.wire.frames import KickReason
from pigeonpush.wire.frames import Push as PushFrame
from support.server_harness import Harness


def connect(harness: Harness) -> tuple[amp.AMP, ServerRpcFactory, Any]:
    factory = ServerRpcFactory(harness.hub)
    client, _server, pump = connectedServerAndClient(
        lambda: factory.buildProtocol(None), amp.AMP, greet=False
    )
    return client, factory, pump


def call(pump: Any, deferred: Any) -> Any:
    """The answer of a call; handlers go on before the answer arrives (AMP drops
    the connection over an error nobody handles)."""
    outcome: list[Any] = []
    deferred.addBoth(outcome.append)
    pump.flush()
    assert outcome, "no answer came"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def batch(*items: PushItem) -> bytes:
    [(_, value)] = list(encode_batches(items))
    return value


def test_push_answers_a_status_byte_per_item_and_writes() -> None:
    harness = Harness(ack_window=1)
    alice = harness.login("alice")
    client, _factory, pump = connect(harness)

    answer = call(
        pump,
        client.callRemote(
            Push,
            batch=batch(
                PushItem("alice", "m1", "Hi", "there", {"k": "v"}),
                PushItem("alice", "m2", "Hi", "again"),
                PushItem("nobody", "m3", "x", "y"),
            ),
        ),
    )

    assert [PushStatus(b) for b in answer["results"]] == [
        PushStatus.WRITTEN,
        PushStatus.WINDOW_FULL,
        PushStatus.OFFLINE,
    ]
    assert alice.received() == [PushFrame("m1", "Hi", "there", {"k": "v"})]


def test_a_malformed_batch_is_bad_request_and_the_connection_survives() -> None:
    harness = Harness()
    client, _factory, pump = connect(harness)

    with pytest.raises(BadRequest, match="not a message batch"):
        call(pump, client.callRemote(Push, batch=b"{nope"))

    answer = call(pump, client.callRemote(Push, batch=batch(PushItem("x", "m1", "t", "x"))))
    assert answer["results"] == bytes([PushStatus.OFFLINE])


def test_a_store_outage_while_reading_bodies_is_temporarily_unavailable() -> None:
    harness = Harness()
    harness.login("alice")
    harness.store.failing.add("bodies")
    client, _factory, pump = connect(harness)

    with pytest.raises(TemporarilyUnavailable, match="store"):
        call(pump, client.callRemote(Push, batch=batch(PushItem("alice", "m1", has_body=False))))


def test_kick() -> None:
    harness = Harness()
    alice = harness.login("alice")
    client, _factory, pump = connect(harness)

    assert call(pump, client.callRemote(Kick, clientId="alice", reason=3)) == {"kicked": True}
    assert alice.received() == [
        KickFrame(KickReason.POLICY, "the session was ended by the service")
    ]
    assert call(pump, client.callRemote(Kick, clientId="nobody", reason=3)) == {"kicked": False}
    with pytest.raises(BadRequest, match="42 is not a KICK reason"):
        call(pump, client.callRemote(Kick, clientId="alice", reason=42))


def test_the_factory_closes_its_connections() -> None:
    harness = Harness()
    _client, factory, pump = connect(harness)
    pump.flush()
    assert len(factory.protocols) == 1
    factory.close_connections()
    pump.flush()
    assert factory.protocols == set()
