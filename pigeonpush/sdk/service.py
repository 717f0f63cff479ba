"""PushClientService: a PushClient in a Twisted service tree."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred

from pigeonpush.sdk.client import PushClient


class PushClientService(Service):
    """Starts the client with the application and stops it (closing the
    connection) before the application exits.

    The service keeps running if the client gives up (``GaveUp`` event): the
    application decides, e.g. ``service.client.start()`` later, or stop.
    """

    def __init__(self, client: PushClient) -> None:
        self.client = client

    def startService(self) -> None:
        super().startService()
        self.client.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.client.stop()
