"""The route request, without HTTP: check the device, pick a server, issue a token."""

from __future__ import annotations

import enum
import secrets
from collections.abc import Collection

import attrs
from twisted.internet.interfaces import IReactorTime

from pigeonpush.reglog.balancer import Balancer, PushServer
from pigeonpush.reglog.devices import DeviceRegistry
from pigeonpush.reglog.tokens import TokenBatcher
from pigeonpush.store.interface import Store


class AuthMode(enum.Enum):
    """``open``: any clientId gets a token (the seed). ``registered``: only
    registered devices, with their secret."""

    OPEN = "open"
    REGISTERED = "registered"


class SecretRequired(Exception):
    """Registered mode and the request carried no secret."""


class BadSecret(Exception):
    """Unknown device or wrong secret (deliberately not told apart)."""


class NoServer(Exception):
    """No live push server has room for another client."""

    def __init__(self, live: int) -> None:
        super().__init__(live)
        #: how many servers are alive (all of them full when > 0)
        self.live = live


@attrs.frozen(slots=True)
class RouteGrant:
    """What a client is told: its one-time token and where to connect."""

    token: str
    server: PushServer
    heartbeat: float


def new_token() -> str:
    """A one-time token: 43 URL-safe characters, 256 bits."""
    return secrets.token_urlsafe(32)


class RouteIssuer:
    """Grants routes: ``devices`` is the registry in registered mode, None in open mode."""

    __slots__ = ("_balancer", "_devices", "_heartbeat", "_tokens")

    def __init__(
        self,
        store: Store,
        balancer: Balancer,
        *,
        clock: IReactorTime,
        token_ttl: float,
        heartbeat: float,
        devices: DeviceRegistry | None = None,
    ) -> None:
        self._balancer = balancer
        self._heartbeat = heartbeat
        self._devices = devices
        #: the tokens of one reactor turn go to the store as one write
        self._tokens = TokenBatcher(store, clock, token_ttl)

    @property
    def mode(self) -> AuthMode:
        return AuthMode.OPEN if self._devices is None else AuthMode.REGISTERED

    async def route(
        self,
        client_id: str,
        secret: str | None = None,
        avoid: Collection[str] = (),
        *,
        websocket: bool = False,
    ) -> RouteGrant:
        """Grant ``client_id`` a token (stored in ``PIGEON:AUTH:<clientId>``) and a server,
        one not in ``avoid`` (client addresses) if another has room; with
        ``websocket``, a server with a WebSocket listener.

        SecretRequired / BadSecret in registered mode, NoServer, or the store's
        StoreError; nothing is written unless a grant is returned.
        """
        if self._devices is not None:
            if secret is None:
                raise SecretRequired()
            if not await self._devices.check(client_id, secret):
                raise BadSecret()
        server = self._balancer.choose(avoid, websocket=websocket)
        if server is None:
            raise NoServer(len(self._balancer.servers))
        token = new_token()
        try:
            await self._tokens.issue(client_id, token)
        except BaseException:
            self._balancer.release(server)
            raise
        return RouteGrant(token, server, self._heartbeat)
