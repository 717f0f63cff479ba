"""One reusable AMP connection per peer address, made on demand.

Delivery keeps one connection per push server and push servers keep one per
delivery worker. A call to an address without a live connection connects
first (concurrent callers share the attempt); a lost connection is forgotten
and made again by the next call; a call that takes longer than
``call_timeout`` fails with ``RpcUnavailable`` and aborts the connection, since
a peer that stopped answering is usually a half-open socket.

Addresses are ``host:port`` for TCP and ``tls:host:port`` for TLS (IPv6 as
``[v6]:port``), read by ``pigeonpush.hostport.parse_peer_address``. A pool
connects to a ``tls:`` address with TLS, verifying the peer per its
``tls`` settings (``pigeonpush.tls.ClientTLS``; the system's authorities by
default).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    TimeoutError,
    succeed,
)
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IHandshakeListener, IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from pigeonpush.hostport import parse_peer_address
from pigeonpush.tls import ClientTLS, client_endpoint, describe_failure


class RpcUnavailable(Exception):
    """The peer could not be reached or did not answer in time."""


@implementer(IHandshakeListener)
class _PooledAMP(amp.AMP):
    def __init__(self, pool: AmpPool, address: str, locator: Any = None, tls: bool = False) -> None:
        super().__init__(locator=locator)
        self._pool = pool
        self._address = address
        self._tls = tls
        #: fires once the connection can carry calls: at once over TCP, after
        #: the handshake (the peer's certificate checked) over TLS
        self.ready: Deferred[_PooledAMP] = Deferred(lambda _: _abort(self))
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        super().connectionMade()
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        if not self._tls:
            self.ready.callback(self)

    def handshakeCompleted(self) -> None:
        if not self.ready.called:
            self.ready.callback(self)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        if not self.ready.called:
            self.ready.errback(reason)
        self._pool._forget(self._address, self)
        self.lost.callback(None)


class AmpPool:
    log = Logger()

    def __init__(
        self,
        reactor: Any,
        *,
        connect_timeout: float = 5.0,
        call_timeout: float = 5.0,
        locator: Any = None,
        tls: ClientTLS | None = None,
    ) -> None:
        self._reactor: IReactorTCP & IReactorTime = reactor  # type: ignore[valid-type]
        #: how ``tls:`` peers are verified (default: the system's authorities)
        self._tls = tls if tls is not None else ClientTLS()
        self._connect_timeout = connect_timeout
        self._call_timeout = call_timeout
        self._locator = locator
        self._connected: dict[str, _PooledAMP] = {}
        # address -> (the connection attempt, the callers waiting for it)
        self._connecting: dict[str, tuple[Deferred[_PooledAMP], list[Deferred[_PooledAMP]]]] = {}
        self._closed = False

    def connected_addresses(self) -> list[str]:
        return list(self._connected)

    def call(
        self, address: str, command: type[amp.Command], **arguments: Any
    ) -> Deferred[dict[str, Any]]:
        """Call ``command`` on the peer at ``address``; fails with RpcUnavailable
        when the peer cannot be reached or is too slow, and with the peer's
        error for a remote failure."""
        if self._closed:
            return _failed(RpcUnavailable("the connection pool is closed"))
        return self._protocol_for(address).addCallback(self._call_on, address, command, arguments)

    def _call_on(
        self,
        protocol: _PooledAMP,
        address: str,
        command: type[amp.Command],
        arguments: dict[str, Any],
    ) -> Deferred[dict[str, Any]]:
        answer: Deferred[dict[str, Any]] = protocol.callRemote(command, **arguments)
        answer.addTimeout(self._call_timeout, self._reactor)

        def on_error(failure: Failure) -> Failure:
            if failure.check(TimeoutError, CancelledError):
                self.log.warn(
                    "{command} to {address} timed out after {timeout}s; dropping the connection",
                    command=command.__name__,
                    address=address,
                    timeout=self._call_timeout,
                )
                _abort(protocol)
                raise RpcUnavailable(f"{address} did not answer {command.__name__} in time")
            if failure.check(amp.ProtocolSwitched) or _is_connection_error(failure):
                raise RpcUnavailable(f"connection to {address} lost: {failure.value}")
            if _is_tls_error(failure):
                # Some Twisted releases (25.5) complete the handshake and fail
                # the first call when the certificate is then refused.
                raise RpcUnavailable(f"connection to {address} lost: {describe_failure(failure)}")
            return failure

        answer.addErrback(on_error)
        return answer

    def _protocol_for(self, address: str) -> Deferred[_PooledAMP]:
        protocol = self._connected.get(address)
        if protocol is not None:
            return succeed(protocol)
        waiter: Deferred[_PooledAMP] = Deferred()
        connecting = self._connecting.get(address)
        if connecting is not None:
            connecting[1].append(waiter)
        else:
            self._connect(address, waiter)
        return waiter

    def _connect(self, address: str, waiter: Deferred[_PooledAMP]) -> None:
        try:
            peer = parse_peer_address(address)
        except ValueError as e:
            waiter.errback(RpcUnavailable(str(e)))
            return
        endpoint = client_endpoint(
            self._reactor,
            peer.host,
            peer.port,
            tls=self._tls if peer.tls else None,
            timeout=self._connect_timeout,
        )
        protocol = _PooledAMP(self, address, self._locator, tls=peer.tls)
        attempt: Deferred[_PooledAMP] = connectProtocol(endpoint, protocol)
        attempt.addCallback(lambda connected: connected.ready)
        if peer.tls:
            # The endpoint bounds the TCP connect only; a peer that never
            # answers the handshake must not hold the callers forever.
            attempt.addTimeout(self._connect_timeout, self._reactor)
        waiters = [waiter]
        self._connecting[address] = (attempt, waiters)

        def connected(protocol: _PooledAMP) -> None:
            del self._connecting[address]
            if self._closed:
                _abort(protocol)
                _fail_all(waiters, RpcUnavailable("the connection pool is closed"))
                return
            self._connected[address] = protocol
            for each in waiters:
                each.callback(protocol)

        def failed(failure: Failure) -> None:
            self._connecting.pop(address, None)
            if self._closed:
                _fail_all(waiters, RpcUnavailable("the connection pool is closed"))
                return
            if failure.check(TimeoutError):
                why = f"no TLS connection within {self._connect_timeout:g}s"
            else:
                why = describe_failure(failure)
            self.log.info("Cannot connect to {address}: {why}", address=address, why=why)
            _fail_all(waiters, RpcUnavailable(f"cannot connect to {address}: {why}"))

        attempt.addCallbacks(connected, failed)

    def _forget(self, address: str, protocol: _PooledAMP) -> None:
        if self._connected.get(address) is protocol:
            del self._connected[address]

    def drop(self, address: str) -> None:
        """Close the connection to ``address`` (its node left discovery)."""
        protocol = self._connected.pop(address, None)
        if protocol is not None and protocol.transport is not None:
            protocol.transport.loseConnection()

    def close(self) -> Deferred[None]:
        """Close every connection and give up connection attempts; later calls
        fail with RpcUnavailable. Fires once every connection is closed."""
        self._closed = True
        lost = [protocol.lost for protocol in self._connected.values()]
        for address in list(self._connected):
            self.drop(address)
        for attempt, _waiters in list(self._connecting.values()):
            attempt.cancel()
        return DeferredList(lost, consumeErrors=True).addCallback(lambda _: None)


def _abort(protocol: amp.AMP) -> None:
    transport = protocol.transport
    if transport is not None:
        getattr(transport, "abortConnection", transport.loseConnection)()


def _fail_all(waiters: list[Deferred[_PooledAMP]], error: Exception) -> None:
    for waiter in waiters:
        waiter.errback(Failure(error))


def _failed(error: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(Failure(error))
    return d


def _is_connection_error(failure: Failure) -> bool:
    from twisted.internet.error import ConnectionClosed, ConnectionLost

    return bool(failure.check(ConnectionClosed, ConnectionLost))


def _is_tls_error(failure: Failure) -> bool:
    """The peer's certificate was refused (untrusted, or for another name)."""
    from OpenSSL import SSL
    from service_identity import VerificationError

    return bool(failure.check(VerificationError, SSL.Error))
