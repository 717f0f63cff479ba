"""``MemoryReactorClock`` with host names resolved at once, on every Twisted
the project supports.

Twisted 25.5's ``MemoryReactorClock`` resolves every name to 127.0.0.1
synchronously; 24.3's has no resolver, so a ``HostnameEndpoint`` on it
resolves in a real thread and never connects within the test's clock. This
one always has the synchronous resolver."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet import testing
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
)
from zope.interface import implementer

__all__ = ["MemoryReactorClock"]


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        """Resolved before anybody could cancel it."""


@implementer(IHostnameResolver)
class SynchronousResolver:
    """Every name is 127.0.0.1 (with the port asked for), at once."""

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        resolutionReceiver.addressResolved(IPv4Address("TCP", "127.0.0.1", portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


@implementer(IReactorPluggableNameResolver)
class MemoryReactorClock(testing.MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.nameResolver: IHostnameResolver = SynchronousResolver()

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        previous, self.nameResolver = self.nameResolver, resolver
        return previous
