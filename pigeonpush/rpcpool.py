"""One reusable AMP connection per peer address, made on demand.

Delivery keeps one connection per push server and push servers keep one per
delivery worker. A call to an address without a live connection connects
first (concurrent callers share the attempt); a lost connection is forgotten
and made again by the next call; a call that takes longer than
``call_timeout`` fails with ``RpcUnavailable`` and aborts the connection, since
a peer that stopped answering is usually a half-open socket.
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
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure


class RpcUnavailable(Exception):
    """The peer could not be reached or did not answer in time."""


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) -> (host, port); ValueError when malformed."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"address {address!r} is not host:port")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"address {address!r} has no valid port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


class _PooledAMP(amp.AMP):
    def __init__(self, pool: AmpPool, address: str, locator: Any = None) -> None:
        super().__init__(locator=locator)
        self._pool = pool
        self._address = address
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        super().connectionMade()
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
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
    ) -> None:
        self._reactor: IReactorTCP & IReactorTime = reactor  # type: ignore[valid-type]
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
            host, port = split_address(address)
        except ValueError as e:
            waiter.errback(RpcUnavailable(str(e)))
            return
        endpoint = HostnameEndpoint(self._reactor, host, port, timeout=self._connect_timeout)
        attempt: Deferred[_PooledAMP] = connectProtocol(
            endpoint, _PooledAMP(self, address, self._locator)
        )
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
            self.log.info(
                "Cannot connect to {address}: {why}", address=address, why=failure.getErrorMessage()
            )
            _fail_all(
                waiters, RpcUnavailable(f"cannot connect to {address}: {failure.getErrorMessage()}")
            )

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
