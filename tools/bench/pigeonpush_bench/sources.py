"""Outgoing connections from a chosen loopback source address, cheaply.

A load generator with tens of thousands of connections to a few server ports
spends its time in the kernel's search for a free ephemeral port. From
127.0.0.1 alone, ``connect`` searches one port range per destination that
ends up two thirds full at 75,000 clients over four servers (the search was
42 % of a generator's samples). A ``bind`` to a source address of its own
before each connect gives every generator a fresh range, but a plain bind
must find a port free for *every* destination and searches even longer.
``IP_BIND_ADDRESS_NO_PORT`` (Linux 4.2+) makes the bind take the address
only and leaves the port to ``connect``, which then searches the generator's
own, mostly empty, range for that destination.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IConnector

#: From <linux/in.h>; the socket module names it from Python 3.12 on.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

#: Generator ``i`` of a run connects from 127.0.0.(FIRST_SOURCE + i).
FIRST_SOURCE = 10


def source_address(index: int) -> str:
    """The loopback source address of a run's generator ``index``: one per
    generator, so that no generator meets another's (or an earlier phase's
    TIME_WAIT) ports."""
    return f"127.0.0.{FIRST_SOURCE + index % 240}"


class _PortLateClient(tcp.Client):
    def createInternetSocket(self) -> socket.socket:
        sock: socket.socket = super().createInternetSocket()
        sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        return sock


class _PortLateConnector(tcp.Connector):
    def _makeTransport(self) -> tcp.Client:
        return _PortLateClient(self.host, self.port, self.bindAddress, self, self.reactor)


class PortLateReactor:
    """A reactor whose ``connectTCP`` binds the source address without a port.

    Give it to ``TCP4ClientEndpoint`` with a ``bindAddress`` of
    ``(address, 0)``; everything else is the wrapped reactor's.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: Any,
        timeout: float = 30.0,
        bindAddress: tuple[str, int] | None = None,
    ) -> IConnector:
        connector = _PortLateConnector(host, port, factory, timeout, bindAddress, self._reactor)
        connector.connect()
        return connector

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)
