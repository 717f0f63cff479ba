"""The push server without sockets: a hub on a ``Clock`` and the memory store.

Devices connect over a fake channel (support/fake_channel.py: the hub's
tests), or with ``tcp=True`` through the TCP transport over
``StringTransport`` (the transport's tests). Both kinds of device answer the
same calls. The hub reports to a ``RecordingMetrics`` (``harness.metrics``).

The memory store answers at once; ``GatedStore`` holds chosen calls until the
test opens the gate, to reach the states between a store call and its answer.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from pigeonpush.rpc import PushItem, PushStatus
from pigeonpush.server.hub import PushHub
from pigeonpush.server.protocol import ServerProtocol, ServerProtocolFactory
from pigeonpush.server.session import Session
from pigeonpush.server.settings import ServerSettings
from pigeonpush.store.interface import StoreError
from pigeonpush.store.memory import MemoryStore
from pigeonpush.wire.codec import decode, encode
from pigeonpush.wire.frames import Auth, AuthOk, Frame
from support.delivery_double import PendingMessages
from support.fake_channel import FakeDevice, RecordingMetrics

SERVER = "127.0.0.1:7101"
OTHER_SERVER = "127.0.0.1:9101"


def result_of(deferred: Deferred[Any]) -> Any:
    """The result of an already-fired Deferred (raising its failure)."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


class GatedStore(MemoryStore):
    """The memory store, with chosen methods held until ``open(name)``."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.gated: set[str] = set()
        #: methods that fail with StoreError (as when Redis is down)
        self.failing: set[str] = set()
        self.held: dict[str, list[Callable[[], None]]] = {}
        self.calls: dict[str, int] = {}
        #: the batches handed to ``ack``
        self.acked: list[list[tuple[str, str]]] = []
        #: the batches handed to ``drop_pending``
        self.dropped: list[list[tuple[str, str, str]]] = []
        #: the ``known_ends`` of each ``catch_up_many``
        self.known_ends: list[Any] = []

    def _gate(self, name: str, answer: Callable[[], Deferred[Any]]) -> Deferred[Any]:
        self.calls[name] = self.calls.get(name, 0) + 1
        if name in self.failing:
            answer = lambda: fail(StoreError(f"{name}: the store is down"))  # noqa: E731
        if name not in self.gated:
            return answer()
        waiting: Deferred[Any] = Deferred()
        self.held.setdefault(name, []).append(lambda: answer().chainDeferred(waiting))
        return waiting

    def release_one(self, name: str, index: int = 0) -> None:
        """Answer one held call of ``name`` (the gate stays closed)."""
        self.held[name].pop(index)()

    def open(self, name: str) -> None:
        self.gated.discard(name)
        for release in self.held.pop(name, []):
            release()

    def token(self, client_id: str) -> Deferred[str | None]:
        return self._gate("token", lambda: super(GatedStore, self).token(client_id))

    def bind_session(self, client_id: str, token: str, server: str, ttl: float) -> Deferred[bool]:
        return self._gate(
            "bind_session",
            lambda: super(GatedStore, self).bind_session(client_id, token, server, ttl),
        )

    def end_session(self, client_id: str, token: str, server: str) -> Deferred[bool]:
        return self._gate(
            "end_session", lambda: super(GatedStore, self).end_session(client_id, token, server)
        )

    def catch_up(self, client_id: str, limit: int) -> Deferred[Any]:
        return self._gate("catch_up", lambda: super(GatedStore, self).catch_up(client_id, limit))

    def catch_up_many(self, client_ids: Any, limit: int, known_ends: Any = None) -> Deferred[Any]:
        self.known_ends.append(known_ends)
        return self._gate(
            "catch_up",
            lambda: super(GatedStore, self).catch_up_many(client_ids, limit, known_ends),
        )

    def advance_many(self, advances: Any) -> Deferred[None]:
        return self._gate("advance", lambda: super(GatedStore, self).advance_many(advances))

    def bodies(self, message_ids: Any) -> Deferred[Any]:
        return self._gate("bodies", lambda: super(GatedStore, self).bodies(message_ids))

    def ack(self, acks: Any) -> Deferred[None]:
        self.acked.append(list(acks))
        return self._gate("ack", lambda: super(GatedStore, self).ack(acks))

    def drop_pending(self, drops: Any) -> Deferred[None]:
        self.dropped.append(list(drops))
        return self._gate("drop_pending", lambda: super(GatedStore, self).drop_pending(drops))

    def add_failures(self, failures: Any, ttl: float) -> Deferred[list[int]]:
        return self._gate(
            "add_failures", lambda: super(GatedStore, self).add_failures(failures, ttl)
        )

    def add_uplink(self, uplink: Any, *, dedup_window: float, max_len: int) -> Deferred[Any]:
        return self._gate(
            "add_uplink",
            lambda: super(GatedStore, self).add_uplink(
                uplink, dedup_window=dedup_window, max_len=max_len
            ),
        )

    def drop_route(self, client_id: str, server: str) -> Deferred[bool]:
        return self._gate(
            "drop_route", lambda: super(GatedStore, self).drop_route(client_id, server)
        )


class DeviceTransport(StringTransport):
    """A StringTransport that remembers TCP_NODELAY."""

    no_delay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled


class Device:
    """One TCP connection as its client sees it."""

    def __init__(self, proto: ServerProtocol, transport: DeviceTransport) -> None:
        self.proto = proto
        self.transport = transport

    @property
    def session(self) -> Session:
        return self.proto.session

    def pause(self) -> None:
        """The client's socket is full (the transport pauses its producer)."""
        self.proto.pauseProducing()

    def resume(self) -> None:
        self.proto.resumeProducing()

    def send(self, frame: Frame) -> None:
        self.proto.dataReceived(encode(frame))

    def send_bytes(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def received(self) -> list[Frame]:
        """The frames written to this client since the last call."""
        data = self.transport.value()
        self.transport.clear()
        frames = []
        while data:
            (length,) = struct.unpack_from("!I", data)
            frames.append(decode(data[4 : 4 + length]))
            data = data[4 + length :]
        return frames

    @property
    def closing(self) -> bool:
        """The server closed (or is closing) this connection."""
        return bool(self.transport.disconnecting)

    def lose(self) -> None:
        """The connection is gone (the client left, or the server's close completed)."""
        self.proto.connectionLost(Failure(ConnectionDone()))


class Harness:
    """A hub on a Clock and a (gated) memory store, with an in-process pull source."""

    def __init__(self, *, pulls: bool = True, tcp: bool = False, **settings: Any) -> None:
        self.clock = Clock()
        self.store = GatedStore(self.clock)
        self.settings = ServerSettings(**settings).check()
        self.pulls = PendingMessages()
        self.metrics = RecordingMetrics()
        self.hub = PushHub(
            self.store,
            self.clock,
            self.settings,
            server_address=SERVER,
            pull_source=self.pulls if pulls else None,
            metrics=self.metrics,
        )
        self.tcp = tcp
        self.factory = ServerProtocolFactory(
            self.hub, self.settings, self.clock, metrics=self.metrics
        )

    def connect(self) -> Any:
        """A new connection: a TCP ``Device`` with ``tcp=True``, else a ``FakeDevice``."""
        if not self.tcp:
            return FakeDevice(self.hub, self.settings.max_frame)
        proto = self.factory.buildProtocol(None)
        transport = DeviceTransport()
        proto.makeConnection(transport)
        return Device(proto, transport)

    def issue(self, client_id: str, token: str | None = None, ttl: float = 300.0) -> str:
        token = token if token is not None else f"token-of-{client_id}"
        result_of(self.store.issue_token(client_id, token, ttl))
        return token

    def login(self, client_id: str, token: str | None = None) -> Any:
        """A connection that authenticated (AUTH_OK checked and consumed)."""
        token = self.issue(client_id, token)
        device = self.connect()
        device.send(Auth(client_id, token))
        frames = device.received()
        assert frames and isinstance(frames[0], AuthOk), frames
        device.received()
        return device

    def route(self, client_id: str) -> str | None:
        route: str | None = result_of(self.store.route(client_id))
        return route

    def token(self, client_id: str) -> str | None:
        token: str | None = result_of(self.store.token(client_id))
        return token

    def push(self, *items: PushItem) -> list[PushStatus]:
        statuses: list[PushStatus] = result_of(self.hub.push(list(items)))
        return statuses

    def pending(self, client_id: str) -> list[str]:
        ids: list[str] = result_of(self.store.pending_ids(client_id))
        return ids
