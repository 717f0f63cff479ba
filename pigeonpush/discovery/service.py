"""Discovery as a twistd service: connect on start, close on stop."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from pigeonpush.discovery.interface import Discovery, DiscoveryClosed


class DiscoveryService(Service):
    """Runs a discovery backend inside a plugin's MultiService.

    Add it before the services that use the discovery: a MultiService stops its
    children in reverse order, so the users unregister and stop first and the
    discovery closes (its session and own nodes with it) last.
    """

    log = Logger()

    def __init__(self, discovery: Discovery) -> None:
        self.discovery = discovery

    def startService(self) -> None:
        super().startService()
        self.discovery.start().addErrback(self._start_failed)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.discovery.close()

    def _start_failed(self, failure: Failure) -> None:
        if not failure.check(DiscoveryClosed):
            self.log.failure("Discovery could not start", failure=failure)
