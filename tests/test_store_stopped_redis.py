"""A Redis that accepts connections but does not answer (SIGSTOP): the store
gives up first, within its own timeout, so that what wraps a store call
answers "unavailable" (AUTH_FAIL UNAVAILABLE, 503) rather than timing out."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from test_notification_api import AUTH, DOCUMENT, start_api
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from pigeonpush.server.hub import PushHub
from pigeonpush.server.protocol import ServerProtocolFactory
from pigeonpush.server.settings import ServerSettings
from pigeonpush.store import StoreError, open_store
from pigeonpush.store.address import DEFAULT_TIMEOUT, parse_redis_url
from pigeonpush.store.redis_connection import RedisConnection
from pigeonpush.wire.frames import Auth, AuthFail, AuthFailCode, AuthOk
from support.openapi import CheckedClient
from support.server_harness import Device, DeviceTransport
from support.servers import RedisServer
from support.waiting import wait_for

#: How much later than the store timeout an answer may come (a loaded machine).
SLACK = 2.0


class Stoppable:
    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.stopped = False

    def stop(self) -> None:
        os.kill(self.server.pid, signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        if self.stopped:
            os.kill(self.server.pid, signal.SIGCONT)
            self.stopped = False


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Stoppable]:
    """A redis-server of this test's own, to stop and resume."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    stoppable = Stoppable(server)
    try:
        yield stoppable
    finally:
        stoppable.resume()
        server.stop()


async def _auth(hub: PushHub, client_id: str, token: str) -> tuple[object, float]:
    from twisted.internet import reactor

    proto = ServerProtocolFactory(hub, hub.settings, reactor).buildProtocol(None)
    transport = DeviceTransport()
    proto.makeConnection(transport)
    device = Device(proto, transport)
    sent = reactor.seconds()
    device.send(Auth(client_id, token))
    frames = await wait_for(device.received, timeout=15, what="the answer to AUTH")
    return frames[0], reactor.seconds() - sent


@pytest_twisted.ensureDeferred
async def test_auth_is_unavailable_not_a_timeout_while_redis_is_stopped(
    redis: Stoppable,
) -> None:
    from twisted.internet import reactor

    settings = ServerSettings()
    assert settings.auth_timeout > DEFAULT_TIMEOUT + SLACK
    store = open_store(redis.server.url, reactor)
    hub = PushHub(store, reactor, settings, server_address="127.0.0.1:7101", pull_source=None)
    try:
        for n in range(3):
            await store.issue_token(f"client-{n}", f"token-{n}", 600)
        redis.stop()

        # The first call times out on the open connection; the second has to
        # connect again, and the handshake counts against the same limit.
        for n in range(2):
            answer, took = await _auth(hub, f"client-{n}", f"token-{n}")
            assert answer == AuthFail(
                AuthFailCode.UNAVAILABLE, "the server cannot check tokens now"
            )
            assert took < DEFAULT_TIMEOUT + SLACK

        redis.resume()
        answer, _ = await _auth(hub, "client-2", "token-2")
        assert isinstance(answer, AuthOk)
    finally:
        for session in list(hub.all_sessions):
            session.channel.abort()
            session.channel.connectionLost()  # type: ignore[attr-defined]
        redis.resume()
        await store.close()


@pytest_twisted.ensureDeferred
async def test_the_api_answers_503_within_the_store_timeout_while_redis_is_stopped(
    redis: Stoppable,
) -> None:
    from twisted.internet import reactor

    store = open_store(redis.server.url, reactor)
    port, url = start_api(store, reactor)
    client = CheckedClient(reactor, url, DOCUMENT)
    try:
        await store.ping()
        redis.stop()
        body = {"to": ["a"], "title": "t", "text": "x"}
        for _ in range(2):  # on the open connection, then on a new one
            sent = reactor.seconds()
            answer = await client.post("/v1/notifications", body, headers=AUTH)
            assert answer.status == 503
            assert answer.json["error"] == "store_unavailable"
            assert reactor.seconds() - sent < DEFAULT_TIMEOUT + SLACK
    finally:
        redis.resume()
        await client.close()
        await port.stopListening()
        await store.close()


class _HangingEndpoint:
    """An endpoint whose connection attempt never ends (SYNs dropped)."""

    def connect(self, factory: object) -> Deferred[object]:
        return Deferred()


def test_a_connection_attempt_counts_against_the_call_timeout() -> None:
    clock = Clock()
    connection = RedisConnection(
        clock,
        parse_redis_url("redis://10.0.0.9/0"),
        _HangingEndpoint(),  # type: ignore[arg-type]
        reply_timeout=3,
        connect_timeout=30,
    )
    answers: list[object] = []
    connection.execute([("PING",)]).addBoth(answers.append)
    clock.advance(2.9)
    assert answers == []
    clock.advance(0.1)
    [failure] = answers
    assert isinstance(failure, Failure) and failure.check(StoreError)
    assert "did not answer within 3s" in failure.getErrorMessage()
    connection.close()
