"""PushClient against a Clock and in-memory transports: the protocol and timing rules.

Every connection attempt gets a fresh StringTransport; the test reads the
frames the client wrote and feeds it the server's frames as bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from pigeonpush.sdk import (
    Authenticated,
    ClientState,
    Connected,
    Disconnected,
    GaveUp,
    Message,
    ProtocolVersionRefused,
    PushClient,
    RetryLater,
    Route,
    RouteLookupFailed,
    SessionReplaced,
    full_jitter,
)
from pigeonpush.sdk.client import fallback_version
from pigeonpush.sdk.protocol import ClientProtocol
from pigeonpush.wire.frames import (
    PING,
    PONG,
    PROTOCOL_VERSION,
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
    Nack,
    Push,
)
from support.reactors import MemoryReactorClock
from support.wire_server import encode, frames_in

CLIENT_ID = "device-1"
SERVER = "10.0.0.7:7100"
AUTH_OK = AuthOk(heartbeat=5.0, max_frame=8192, ack_window=64)


class Routes:
    """A route source: answers token-1, token-2, ... unless scripted otherwise;
    the server is the next of ``servers``, or SERVER. Records the client's
    ``avoid`` list at each call."""

    def __init__(self) -> None:
        self.calls = 0
        self.script: list[Callable[[], Deferred[Route]]] = []
        self.servers: list[str] = []
        self.heartbeat: float | None = None
        self.client: PushClient | None = None
        self.avoided: list[list[str]] = []

    def __call__(self) -> Deferred[Route]:
        self.calls += 1
        if self.client is not None:
            self.avoided.append(self.client.avoid)
        if self.script:
            return self.script.pop(0)()
        server = self.servers.pop(0) if self.servers else SERVER
        return succeed(Route(f"token-{self.calls}", server, self.heartbeat))


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    def __init__(self, network: Network, server: str) -> None:
        self._network = network
        self._server = server

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        network = self._network
        network.attempts.append(self._server)
        if network.refuse or self._server in network.down:
            return fail(ConnectionRefusedError())
        if network.explode:
            raise OSError("endpoint exploded")
        if network.hang:
            network.hanging = Deferred()
            return network.hanging
        protocol = factory.buildProtocol(None)
        assert isinstance(protocol, ClientProtocol)
        transport = TCPStringTransport()
        network.connections.append((protocol, transport))
        protocol.makeConnection(transport)
        return succeed(protocol)


class TCPStringTransport(StringTransport):
    no_delay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled


class Network:
    """Hands each connection attempt a StringTransport, or refuses it."""

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self.connections: list[tuple[ClientProtocol, StringTransport]] = []
        self.refuse = False
        self.down: set[str] = set()  # servers that refuse connections
        self.explode = False
        self.hang = False
        self.hanging: Deferred[Any] | None = None

    def endpoint(self, server: str) -> IStreamClientEndpoint:
        return MemoryEndpoint(self, server)


class Harness:
    def __init__(self, on_message: Callable[[Message], Any] | None = None, **options: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.routes = Routes()
        self.network = Network()
        self.messages: list[Message] = []
        self.events: list[object] = []
        options.setdefault("heartbeat", 30.0)
        options.setdefault("client_id", CLIENT_ID)
        self.client = PushClient(
            self.clock,
            "http://reglog.invalid:8100",
            on_message or self.messages.append,
            endpoint_factory=self.network.endpoint,
            route_source=self.routes,
            **options,
        )
        self.client.on_event(self.events.append)
        self.routes.client = self.client

    @property
    def protocol(self) -> ClientProtocol:
        return self.network.connections[-1][0]

    @property
    def transport(self) -> StringTransport:
        return self.network.connections[-1][1]

    def sent(self) -> list[Frame]:
        """Frames the current connection wrote since the last call."""
        frames = frames_in(self.transport.value())
        self.transport.clear()
        return frames

    def feed(self, *frames: Frame) -> None:
        self.protocol.dataReceived(b"".join(encode(frame) for frame in frames))

    def lose(self, reason: type[Exception] = ConnectionDone) -> None:
        """The transport reports the connection closed."""
        self.protocol.connectionLost(Failure(reason()))

    def online(self) -> None:
        """Start, connect and authenticate."""
        self.client.start()
        self.feed(AUTH_OK)
        assert self.client.state is ClientState.ONLINE
        self.transport.clear()

    def pending_delays(self) -> list[float]:
        return sorted(
            call.getTime() - self.clock.seconds() for call in self.clock.getDelayedCalls()
        )


def push(message_id: str, title: str = "t", text: str = "x") -> Push:
    return Push(message_id, title, text, {"k": "v"})


# --- authentication -------------------------------------------------------------


def test_first_frame_is_auth_with_the_route_token() -> None:
    h = Harness()
    h.client.start()
    assert h.network.attempts == [SERVER]
    assert h.sent() == [Auth(CLIENT_ID, "token-1")]
    assert h.client.state is ClientState.AUTHENTICATING
    assert h.events == [Connected(SERVER)]


def test_nothing_but_auth_is_sent_before_auth_ok() -> None:
    h = Harness(heartbeat=1.0, auth_timeout=10.0)
    h.client.start()
    h.sent()
    h.clock.advance(9.0)  # nine heartbeats' worth of quiet: still no PING
    assert h.sent() == []
    h.feed(AUTH_OK)
    assert h.client.state is ClientState.ONLINE
    assert h.events[-1] == Authenticated(SERVER, 5.0)


def test_push_before_auth_ok_is_a_protocol_error() -> None:
    h = Harness()
    h.client.start()
    h.sent()
    h.feed(push("m1"))
    frames = h.sent()
    assert len(frames) == 1 and isinstance(frames[0], Error)
    assert frames[0].code is ErrorCode.UNEXPECTED
    assert h.transport.disconnecting
    assert h.messages == []


def test_auth_timeout_drops_the_connection_and_retries() -> None:
    h = Harness(auth_timeout=10.0)
    h.client.start()
    h.clock.advance(10.0)
    assert h.transport.disconnected  # aborted, not a polite close
    h.lose(ConnectionLost)
    event = h.events[-1]
    assert isinstance(event, Disconnected)
    assert event.reason == "no answer to AUTH within 10s" and not event.authenticated
    assert h.client.state is ClientState.WAITING


def test_auth_fail_goes_back_to_reglog_for_a_fresh_token() -> None:
    h = Harness(backoff=lambda attempt: 0.5)
    h.client.start()
    h.feed(AuthFail(AuthFailCode.BAD_TOKEN, "expired"))
    assert h.transport.disconnecting
    h.lose()
    assert h.routes.calls == 1
    h.clock.advance(0.5)
    assert h.routes.calls == 2
    assert h.sent() == [Auth(CLIENT_ID, "token-2")]
    assert isinstance(h.events[-2], Disconnected)
    assert "BAD_TOKEN" in h.events[-2].reason


def test_auth_fail_version_falls_back_to_version_1_once_then_gives_up() -> None:
    h = Harness()
    waiting = h.client.when_authenticated()
    h.client.start()
    assert h.sent() == [Auth(CLIENT_ID, "token-1", PROTOCOL_VERSION)]
    h.feed(AuthFail(AuthFailCode.VERSION, "supported versions: 1"))
    h.lose()
    assert not [e for e in h.events if isinstance(e, GaveUp)]
    h.clock.advance(max(h.pending_delays()))
    # Version 1 now, with a fresh token: a token is spent once its AUTH is sent.
    assert h.sent() == [Auth(CLIENT_ID, "token-2", 1)]
    h.feed(AuthFail(AuthFailCode.VERSION, "speaks 2 only"))
    gave_up = [e for e in h.events if isinstance(e, GaveUp)]
    assert len(gave_up) == 1 and isinstance(gave_up[0].error, ProtocolVersionRefused)
    assert "speaks 2 only" in str(gave_up[0].error)
    failures: list[Failure] = []
    waiting.addErrback(failures.append)
    assert failures[0].check(ProtocolVersionRefused)
    h.lose()
    assert h.client.state is ClientState.STOPPED
    h.clock.advance(3600)
    assert h.routes.calls == 2 and len(h.network.attempts) == 2


def test_auth_fail_version_falls_back_to_the_newest_version_the_server_lists() -> None:
    """A version 2 server (uplinks, no topics) gets a version 2 session, not 1."""
    h = Harness()
    h.client.start()
    h.feed(AuthFail(AuthFailCode.VERSION, "version 3 is not supported; this server speaks 1, 2"))
    h.lose()
    h.clock.advance(max(h.pending_delays()))
    assert h.sent() == [Auth(CLIENT_ID, "token-2", 2)]
    assert not [e for e in h.events if isinstance(e, GaveUp)]


@pytest.mark.parametrize(
    ("refused", "reason", "version"),
    [
        (3, "protocol version 3 is not supported; this server speaks 1, 2", 2),
        (3, "this server speaks 1", 1),
        (3, "supported versions: 1", 1),
        (3, "supported versions: 3", 1),
        (3, "no reason", 1),
        (2, "this server speaks 1, 3", 1),
    ],
)
def test_fallback_version(refused: int, reason: str, version: int) -> None:
    assert fallback_version(refused, reason) == version


# --- heartbeat ------------------------------------------------------------------


def test_ping_after_a_quiet_heartbeat_interval_from_auth_ok() -> None:
    h = Harness(heartbeat=30.0)
    h.online()  # AUTH_OK says 5 s: it wins over the local 30 s
    h.clock.advance(4.9)
    assert h.sent() == []
    h.clock.advance(0.1)
    assert h.sent() == [PING]
    h.feed(PONG)
    h.clock.advance(4.9)
    assert h.sent() == []
    h.clock.advance(0.1)
    assert h.sent() == [PING]


def test_reglog_heartbeat_is_used_until_auth_ok() -> None:
    h = Harness(heartbeat=30.0)
    h.routes.heartbeat = 12.0
    h.client.start()
    assert h.protocol.heartbeat == 12.0
    h.feed(AuthOk(heartbeat=7.0, max_frame=8192, ack_window=1))
    assert h.protocol.heartbeat == 7.0


def test_sending_an_ack_postpones_the_ping() -> None:
    h = Harness()
    h.online()
    h.clock.advance(3.0)
    h.feed(push("m1"))
    assert h.sent() == [Ack("m1")]
    h.clock.advance(4.9)  # 7.9 s after AUTH_OK but 4.9 s after the ACK
    assert h.sent() == []
    h.clock.advance(0.1)
    assert h.sent() == [PING]


def test_missed_pongs_drop_the_connection_and_reconnect() -> None:
    h = Harness(max_missed_pongs=2, backoff=lambda attempt: 1.0)
    h.online()
    h.clock.advance(5.0)
    assert h.sent() == [PING]
    h.clock.advance(5.0)
    assert h.sent() == [PING]
    assert not h.transport.disconnecting
    h.clock.advance(5.0)
    assert h.sent() == []
    assert h.transport.disconnected  # aborted: a dead peer would never read a close
    h.lose(ConnectionLost)
    event = h.events[-1]
    assert event == Disconnected(SERVER, "no answer to 2 PING(s) in a row", True)
    assert h.client.state is ClientState.WAITING
    h.clock.advance(1.0)
    assert len(h.network.connections) == 2
    assert h.sent() == [Auth(CLIENT_ID, "token-2")]  # a token is good for one session
    assert h.routes.calls == 2


def test_any_frame_from_the_server_counts_as_an_answer() -> None:
    h = Harness(lambda message: Deferred(), max_missed_pongs=1)
    h.online()
    h.clock.advance(5.0)
    assert h.sent() == [PING]
    h.feed(push("m1"))  # no PONG, but the connection is evidently alive
    h.clock.advance(5.0)
    assert h.sent() == [PING]
    assert not h.transport.disconnecting
    h.clock.advance(5.0)  # this PING went unanswered: one miss is the limit
    assert h.transport.disconnected


def test_a_ping_from_the_server_is_answered() -> None:
    h = Harness()
    h.online()
    h.feed(PING)
    assert h.sent() == [PONG]


def test_tcp_no_delay_is_set() -> None:
    h = Harness()
    h.client.start()
    assert isinstance(h.transport, TCPStringTransport) and h.transport.no_delay


# --- reconnecting ---------------------------------------------------------------


def test_reconnect_delays_grow_with_full_jitter_bounds() -> None:
    draws = iter([0.999999, 0.999999, 0.25, 0.5, 0.999999, 0.999999, 0.5])
    h = Harness(
        backoff=full_jitter(initial=1.0, maximum=4.0, factor=2.0, random=lambda: next(draws)),
        reconnect_threshold=100,
    )
    h.online()
    h.network.refuse = True
    h.lose(ConnectionLost)
    delays = []
    for _ in range(6):
        (delay,) = h.pending_delays()
        delays.append(delay)
        h.clock.advance(delay)
    # after n failures in a row the wait is a random part of min(4, 2 ** (n - 1));
    # the lost session and the first failure both wait in the first window:
    # ceilings 1, 1, 2, 4, 4, 4
    assert delays == pytest.approx([0.999999, 0.999999, 0.5, 2.0, 3.999996, 3.999996])
    assert h.network.attempts == [SERVER] * 7


def test_failed_connections_past_the_threshold_ask_reglog_again() -> None:
    h = Harness(reconnect_threshold=3, backoff=lambda attempt: 1.0)
    h.network.refuse = True
    h.client.start()
    h.clock.advance(1.0)
    h.clock.advance(1.0)
    # the connection never came up: the token is unused and tried again
    assert h.network.attempts == [SERVER] * 3
    assert h.routes.calls == 1
    h.network.refuse = False
    h.clock.advance(1.0)
    assert h.routes.calls == 2  # the server may be gone: reglog picks again
    assert h.routes.avoided == [[], [SERVER]]
    assert h.sent() == [Auth(CLIENT_ID, "token-2")]
    h.feed(AUTH_OK)
    assert h.client.state is ClientState.ONLINE
    assert h.client.avoid == []  # reached after all


def test_every_session_starts_with_a_fresh_token() -> None:
    h = Harness(backoff=lambda attempt: 1.0)
    h.online()
    h.lose()  # a clean close of an authenticated session
    h.clock.advance(1.0)
    assert h.sent() == [Auth(CLIENT_ID, "token-2")]
    h.lose()  # before AUTH_OK: AUTH was sent, the token may be spent
    h.clock.advance(1.0)
    assert h.sent() == [Auth(CLIENT_ID, "token-3")]
    h.feed(AUTH_OK)
    h.feed(Kick(KickReason.POLICY))
    h.lose()
    h.clock.advance(1.0)
    assert h.sent() == [Auth(CLIENT_ID, "token-4")]
    h.clock.advance(10.0)  # AUTH timeout
    h.lose(ConnectionLost)
    h.clock.advance(1.0)
    assert h.sent() == [Auth(CLIENT_ID, "token-5")]
    assert h.routes.calls == 5


def test_a_refused_connection_goes_back_to_reglog_at_once_naming_the_server() -> None:
    draws = iter([0.5, 0.5, 0.5])
    h = Harness(backoff=full_jitter(initial=1.0, maximum=60.0, random=lambda: next(draws)))
    h.online()
    other = "10.0.0.8:7100"
    h.network.down.add(SERVER)  # SIGKILLed: its address refuses connections
    h.routes.servers = [SERVER, other]  # reglog has not noticed yet, then it has
    h.lose(ConnectionLost)
    assert h.pending_delays() == [0.5]  # first window: [0, 1) s
    h.clock.advance(0.5)
    assert h.network.attempts == [SERVER, SERVER]
    assert h.pending_delays() == [0.5]  # back to reglog within the first window again
    h.clock.advance(0.5)
    assert h.routes.avoided == [[], [], [SERVER]]
    assert h.network.attempts == [SERVER, SERVER, other]
    h.feed(AUTH_OK)
    assert h.client.state is ClientState.ONLINE and h.client.server == other
    assert h.client.avoid == [SERVER]  # still avoided for the next lookup


def test_the_failure_count_starts_again_when_reglog_gives_a_new_server() -> None:
    attempts: list[int] = []

    def policy(attempt: int) -> float:
        attempts.append(attempt)
        return 1.0

    h = Harness(backoff=policy)
    b, c = "10.0.0.8:7100", "10.0.0.9:7100"
    h.network.down.update({SERVER, b})
    # reglog keeps answering the dead SERVER (no other has room), then B, then C
    h.routes.servers = [SERVER, SERVER, SERVER, b, c]
    h.client.start()
    for _ in range(3):
        h.clock.advance(1.0)
    # SERVER thrice (growing), then B: a server not known to be down starts
    # the count again
    assert attempts == [1, 2, 3, 1]
    assert h.routes.avoided[-1] == [SERVER]
    h.clock.advance(1.0)
    assert h.routes.avoided[-1] == [b, SERVER]  # most recent first
    assert h.network.attempts[-1] == c
    h.feed(AUTH_OK)
    h.lose(ConnectionLost)
    assert attempts[-1] == 1  # AUTH_OK starts it again too


def test_avoided_servers_are_forgotten_after_a_while() -> None:
    h = Harness(backoff=lambda attempt: 1.0)
    h.network.down.add(SERVER)
    h.routes.servers = [SERVER, "10.0.0.8:7100"]
    h.client.start()
    assert h.client.avoid == [SERVER]
    h.clock.advance(59.0)
    assert h.client.avoid == [SERVER]
    h.clock.advance(1.0)
    assert h.client.avoid == []


def test_at_most_sixteen_servers_are_avoided() -> None:
    h = Harness(backoff=lambda attempt: 1.0)
    h.network.refuse = True
    h.routes.servers = [f"10.0.1.{n}:7100" for n in range(20)]
    h.client.start()
    for _ in range(19):
        h.clock.advance(1.0)
    assert h.client.avoid == [f"10.0.1.{n}:7100" for n in range(19, 3, -1)]


def test_a_server_that_refuses_auth_is_not_avoided() -> None:
    h = Harness(backoff=lambda attempt: 1.0)
    h.client.start()
    h.feed(AuthFail(AuthFailCode.BAD_TOKEN, "replayed"))
    h.lose()
    assert h.client.avoid == []
    h.client.start()
    h.clock.advance(1.0)
    h.lose()  # closed before AUTH_OK without an answer
    assert h.client.avoid == [SERVER]


def test_reconnects_forever_with_capped_delays() -> None:
    h = Harness(
        backoff=full_jitter(initial=1.0, maximum=60.0, random=lambda: 0.999),
    )
    h.online()
    h.network.refuse = True
    h.lose(ConnectionLost)
    delays = []
    for _ in range(200):  # far past any former limit
        (delay,) = h.pending_delays()
        delays.append(delay)
        h.clock.advance(delay)
    assert max(delays) == pytest.approx(59.94)
    assert delays[-100:] == [pytest.approx(59.94)] * 100
    assert not any(isinstance(e, GaveUp) for e in h.events)
    assert h.client.gave_up is None and h.client.state is ClientState.WAITING
    h.network.refuse = False
    (delay,) = h.pending_delays()
    h.clock.advance(delay)
    h.feed(AUTH_OK)
    assert h.client.state is ClientState.ONLINE


def test_an_endpoint_that_raises_is_a_failed_attempt() -> None:
    h = Harness(backoff=lambda attempt: 1.0)
    h.network.explode = True
    h.client.start()
    assert h.client.state is ClientState.WAITING
    h.network.explode = False
    h.clock.advance(1.0)
    assert h.client.state is ClientState.AUTHENTICATING


def test_an_unusable_server_address_sends_the_client_back_to_reglog() -> None:
    reactor = MemoryReactorClock()
    answers = iter([Route("t1", "no-port-here"), Route("t2", "10.0.0.9:7100")])
    lookups: list[Route] = []

    def routes() -> Deferred[Route]:
        lookups.append(next(answers))
        return succeed(lookups[-1])

    client = PushClient(
        reactor,
        "http://reglog.invalid",
        lambda message: None,
        client_id=CLIENT_ID,
        route_source=routes,
        backoff=lambda attempt: 1.0,
        connect_timeout=3.0,
    )
    client.start()
    assert client.state is ClientState.WAITING
    reactor.advance(1.0)
    assert len(lookups) == 2
    assert client.state is ClientState.CONNECTING
    # the default endpoint: TCP to the port reglog gave (MemoryReactor resolves
    # every name to 127.0.0.1), with the connect timeout
    (_host, port, _factory, timeout, _bind) = reactor.tcpClients[0]
    assert (port, timeout) == (7100, 3.0)
    client.stop()


def test_kick_shutting_down_reconnects_through_reglog_with_jitter() -> None:
    h = Harness(backoff=lambda attempt: 0.25 * attempt)
    h.online()
    h.feed(Kick(KickReason.SHUTTING_DOWN, "draining"))
    assert h.transport.disconnecting
    h.lose()
    assert h.pending_delays() == [0.25]  # the first attempt's jittered window
    h.clock.advance(0.25)
    assert h.routes.calls == 2
    assert h.sent() == [Auth(CLIENT_ID, "token-2")]


def test_kick_replaced_gives_up_instead_of_fighting() -> None:
    h = Harness()
    h.online()
    h.feed(Kick(KickReason.REPLACED))
    h.lose()
    (gave_up,) = [e for e in h.events if isinstance(e, GaveUp)]
    assert isinstance(gave_up.error, SessionReplaced)
    assert CLIENT_ID in str(gave_up.error)
    assert h.client.state is ClientState.STOPPED
    h.clock.advance(3600)
    assert len(h.network.attempts) == 1


def test_server_error_frame_closes_and_reconnects() -> None:
    h = Harness(backoff=lambda attempt: 1.0)
    h.online()
    h.feed(Error(ErrorCode.INTERNAL, "oops"))
    h.lose()
    assert h.events[-1] == Disconnected(SERVER, "the server reported ERROR INTERNAL: oops", True)
    h.clock.advance(1.0)
    assert len(h.network.connections) == 2


def test_route_lookup_failure_is_reported_and_start_tries_again() -> None:
    h = Harness()
    error = RouteLookupFailed("http://reglog.invalid:8100/v1/route", 5, "HTTP 503 no_server")
    h.routes.script.append(lambda: fail(error))
    waiting = h.client.when_authenticated()
    failures: list[Failure] = []
    waiting.addErrback(failures.append)
    h.client.start()
    assert h.events == [GaveUp(error)]
    assert failures[0].value is error
    assert h.client.state is ClientState.STOPPED and h.client.gave_up is error
    h.client.start()
    assert h.client.gave_up is None
    h.feed(AUTH_OK)
    assert h.client.state is ClientState.ONLINE


def test_a_broken_route_source_is_logged_and_reported(logged_failures: Any) -> None:
    h = Harness()

    def broken() -> Deferred[Route]:
        raise RuntimeError("route source bug")

    h.routes.script.append(broken)
    h.client.start()
    (gave_up,) = h.events
    assert isinstance(gave_up, GaveUp) and isinstance(gave_up.error, RouteLookupFailed)
    assert "RuntimeError: route source bug" in str(gave_up.error)
    assert len(logged_failures.flush(RuntimeError)) == 1
    assert h.client.state is ClientState.STOPPED


def test_authenticated_waiter_fires_with_the_session() -> None:
    h = Harness()
    results: list[Authenticated] = []
    h.client.when_authenticated().addCallback(results.append)
    h.online()
    assert results == [Authenticated(SERVER, 5.0)]
    h.client.when_authenticated().addCallback(results.append)
    assert len(results) == 2


# --- messages -------------------------------------------------------------------


def test_push_goes_to_the_callback_then_is_acked() -> None:
    h = Harness()
    h.online()
    h.feed(Push("m1", "Hello", "World", {"badge": "3"}))
    assert h.messages == [Message("m1", "Hello", "World", {"badge": "3"}, h.clock.seconds())]
    assert h.sent() == [Ack("m1")]


def test_ack_waits_for_the_callbacks_deferred() -> None:
    pending: list[Deferred[None]] = []

    def on_message(message: Message) -> Deferred[None]:
        pending.append(Deferred())
        return pending[-1]

    h = Harness(on_message)
    h.online()
    h.feed(push("m1"))
    assert h.sent() == []
    pending[0].callback(None)
    assert h.sent() == [Ack("m1")]


def test_async_callback_is_awaited_before_the_ack() -> None:
    gate: Deferred[None] = Deferred()
    seen: list[str] = []

    async def on_message(message: Message) -> None:
        await gate
        seen.append(message.message_id)

    h = Harness(on_message)
    h.online()
    h.feed(push("m1"))
    assert h.sent() == []
    gate.callback(None)
    assert seen == ["m1"]
    assert h.sent() == [Ack("m1")]


def test_callback_failure_sends_nack_and_the_redelivery_runs_it_again(
    logged_failures: Any,
) -> None:
    attempts: list[str] = []

    def on_message(message: Message) -> None:
        attempts.append(message.message_id)
        if len(attempts) == 1:
            raise RuntimeError("database is down")

    h = Harness(on_message)
    h.online()
    h.feed(push("m1"))
    assert h.sent() == [Nack("m1")]
    (failure,) = logged_failures.flush(RuntimeError)
    assert str(failure.value) == "database is down"
    h.feed(push("m1"))  # the server delivers it again
    assert attempts == ["m1", "m1"]
    assert h.sent() == [Ack("m1")]


def test_failing_deferred_sends_nack(logged_failures: Any) -> None:
    h = Harness(lambda message: fail(ValueError("bad payload")))
    h.online()
    h.feed(push("m1"))
    assert h.sent() == [Nack("m1")]
    assert len(logged_failures.flush(ValueError)) == 1
    assert h.client.state is ClientState.ONLINE


def test_retry_later_is_a_nack_with_its_retry_after() -> None:
    def on_message(message: Message) -> None:
        raise RetryLater(30, "the user is busy")

    h = Harness(on_message)
    h.online()
    h.feed(push("m1"))
    assert h.sent() == [Nack("m1", 30.0)]
    with pytest.raises(ValueError, match="retry_after must be zero or more seconds"):
        RetryLater(-1)


def test_a_version_1_session_sends_nothing_for_a_failed_callback(logged_failures: Any) -> None:
    h = Harness(lambda message: fail(ValueError("bad payload")))
    h.client.start()
    h.feed(AuthFail(AuthFailCode.VERSION, "supported versions: 1"))
    h.lose()
    h.clock.advance(max(h.pending_delays()))
    h.feed(AUTH_OK)
    assert h.sent() == [Auth(CLIENT_ID, "token-2", 1)]
    h.feed(push("m1"))
    assert h.sent() == []  # the server's ACK timeout brings it back
    assert len(logged_failures.flush(ValueError)) == 1


def test_duplicate_is_acked_without_calling_back_again() -> None:
    h = Harness()
    h.online()
    h.feed(push("m1"), push("m2"), push("m1"))
    assert [m.message_id for m in h.messages] == ["m1", "m2"]
    assert h.sent() == [Ack("m1"), Ack("m2"), Ack("m1")]


def test_duplicate_window_is_bounded() -> None:
    h = Harness(dedup_window=2)
    h.online()
    h.feed(push("m1"), push("m2"), push("m3"), push("m1"), push("m3"))
    # m1 left the window when m3 came: it is handled again; m3 is still known.
    assert [m.message_id for m in h.messages] == ["m1", "m2", "m3", "m1"]
    assert h.sent() == [Ack("m1"), Ack("m2"), Ack("m3"), Ack("m1"), Ack("m3")]


def test_ack_lost_with_the_connection_is_sent_when_the_message_comes_again() -> None:
    pending: list[Deferred[None]] = []

    def on_message(message: Message) -> Deferred[None]:
        pending.append(Deferred())
        return pending[-1]

    h = Harness(on_message, backoff=lambda attempt: 1.0)
    h.online()
    h.feed(push("m1"), push("m2"))
    first = h.transport
    h.lose(ConnectionLost)
    pending[0].callback(None)  # m1 handled after the connection dropped
    assert first.value() == b""  # no ACK on a dead connection
    h.clock.advance(1.0)
    h.feed(AUTH_OK)
    h.sent()
    h.feed(push("m1"), push("m2"))  # the server never got the ACKs
    assert len(pending) == 2  # m1 is not handled twice; m2 is still being handled
    assert h.sent() == [Ack("m1")]
    pending[1].callback(None)
    assert h.sent() == [Ack("m2")]  # ACKed on the connection that carried it again


def test_observer_errors_are_logged_and_do_not_stop_the_client(logged_failures: Any) -> None:
    h = Harness()

    def broken(event: object) -> None:
        raise KeyError("observer bug")

    h.client.on_event(broken)
    h.online()
    assert len(logged_failures.flush(KeyError)) == 2  # Connected, Authenticated
    assert h.client.state is ClientState.ONLINE


def test_unsubscribed_observer_hears_nothing() -> None:
    h = Harness()
    heard: list[object] = []
    unsubscribe = h.client.on_event(heard.append)
    unsubscribe()
    h.online()
    assert heard == []


# --- stopping -------------------------------------------------------------------


def test_stop_closes_the_connection_and_fires_when_closed() -> None:
    h = Harness()
    h.online()
    stopped = h.client.stop()
    assert h.transport.disconnecting and not stopped.called
    h.lose()
    assert stopped.called
    assert h.client.state is ClientState.STOPPED
    assert h.events[-1] == Disconnected(SERVER, "closed by the client", True)
    h.clock.advance(3600)
    assert len(h.network.attempts) == 1


def test_stop_while_waiting_cancels_the_retry() -> None:
    h = Harness(backoff=lambda attempt: 5.0)
    h.network.refuse = True
    h.client.start()
    assert h.client.state is ClientState.WAITING
    assert h.client.stop().called
    assert h.clock.getDelayedCalls() == []


def test_stop_while_routing_cancels_the_lookup() -> None:
    h = Harness()
    lookup: Deferred[Route] = Deferred()
    h.routes.script.append(lambda: lookup)
    waiting = h.client.when_authenticated()
    failures: list[Failure] = []
    waiting.addErrback(failures.append)
    h.client.start()
    assert h.client.state is ClientState.ROUTING
    assert h.client.stop().called
    assert lookup.called  # cancelled
    assert failures[0].check(CancelledError)
    assert not any(isinstance(e, GaveUp) for e in h.events)


def test_stop_while_connecting_cancels_the_attempt() -> None:
    h = Harness()
    h.network.hang = True
    h.client.start()
    assert h.client.state is ClientState.CONNECTING
    assert h.client.stop().called
    assert h.network.hanging is not None and h.network.hanging.called
    assert h.client.state is ClientState.STOPPED


def test_start_during_stop_restarts_once_closed() -> None:
    h = Harness()
    h.online()
    h.client.stop()
    h.client.start()
    h.lose()
    assert h.client.state is ClientState.AUTHENTICATING
    assert len(h.network.connections) == 2


def test_invalid_settings_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="clientId must be a string of 1 to 128 ASCII"):
        Harness(client_id="x" * 129)
    with pytest.raises(ValueError, match="max_missed_pongs must be an integer of at least 1"):
        Harness(max_missed_pongs=0)
    with pytest.raises(ValueError, match="heartbeat must be a positive number"):
        Harness(heartbeat=0)


def test_missed_becomes_an_event_for_the_application() -> None:
    from pigeonpush.sdk import MessagesMissed
    from pigeonpush.wire.frames import Missed

    h = Harness()
    h.online()
    h.feed(Missed("news"))
    assert MessagesMissed("news") in h.events
    assert h.client.state is ClientState.ONLINE


def test_subscribe_and_unsubscribe_wait_for_the_servers_answer() -> None:
    from pigeonpush.sdk import SubscriptionFailed
    from pigeonpush.wire.frames import Subscribe, Subscription, SubscriptionCode, Unsubscribe

    h = Harness()
    offline: list[Failure] = []
    h.client.subscribe("news").addErrback(offline.append)
    assert offline[0].check(SubscriptionFailed) and offline[0].value.code == "OFFLINE"
    h.online()
    done: list[object] = []
    h.client.subscribe("news").addCallback(done.append)
    refused: list[Failure] = []
    h.client.unsubscribe("sport").addErrback(refused.append)
    subscribe, unsubscribe = h.sent()
    assert isinstance(subscribe, Subscribe) and subscribe.topic == "news"
    assert isinstance(unsubscribe, Unsubscribe) and unsubscribe.topic == "sport"
    assert subscribe.request_id != unsubscribe.request_id
    h.feed(Subscription(unsubscribe.request_id, SubscriptionCode.NOT_ALLOWED, "not for devices"))
    h.feed(Subscription(subscribe.request_id, SubscriptionCode.OK))
    assert done == [None]
    assert refused[0].value.code == "NOT_ALLOWED" and "not for devices" in str(refused[0].value)
    bad: list[Failure] = []
    h.client.subscribe("no spaces").addErrback(bad.append)
    assert bad[0].check(ValueError)
    lost: list[Failure] = []
    h.client.subscribe("news").addErrback(lost.append)
    h.lose()
    assert lost[0].value.code == "DISCONNECTED"
