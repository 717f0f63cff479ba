"""The reglog HTTP API: input checks and HTTP answers; the work is the RouteIssuer's.

``POST /v1/route``, ``POST /v1/devices``, ``GET /health`` and ``/metrics``;
documented in docs/reglog.rst and docs/openapi/reglog.json. Unknown fields of a
request body are ignored, so newer clients can send more; ``null`` for an
optional field means absent.
"""

from __future__ import annotations

import hmac
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from pigeonpush.hostport import split_address
from pigeonpush.http import (
    ApiError,
    JsonResource,
    JsonResponse,
    JsonTree,
    bearer_token,
    checked_identifier,
    echo,
    invalid,
    read_json_object,
)
from pigeonpush.identifiers import CLIENT_ID
from pigeonpush.metrics import MetricsResource
from pigeonpush.reglog import metrics
from pigeonpush.reglog.balancer import Balancer
from pigeonpush.reglog.devices import ClientExists, DeviceRegistry
from pigeonpush.reglog.routing import BadSecret, NoServer, RouteIssuer, SecretRequired
from pigeonpush.store.interface import StoreError

log = Logger()

MAX_SECRET = 256
#: At most this many servers in a route request's ``avoid``...
MAX_AVOID = 16
#: ... each a ``host:port`` of at most this many characters (a DNS name and a port).
MAX_ADDRESS = 262
_REALM = 'Bearer realm="pigeonpush-reglog"'
#: While the store is down every request fails the same way: warn once per interval.
STORE_WARNING_INTERVAL = 10.0


def optional_client_id(body: dict[str, Any]) -> str | None:
    """``clientId`` if present (the rule of ``pigeonpush.identifiers``)."""
    value = body.get("clientId")
    if value is None:
        return None
    return checked_identifier(CLIENT_ID, value)


def required_client_id(body: dict[str, Any]) -> str:
    client_id = optional_client_id(body)
    if client_id is None:
        raise invalid("clientId is required", "clientId")
    return client_id


def secret_field(body: dict[str, Any]) -> str | None:
    value = body.get("secret")
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_SECRET:
        raise invalid(f"secret must be a string of 1 to {MAX_SECRET} characters", "secret")
    return value


def avoid_field(body: dict[str, Any]) -> frozenset[str]:
    """``avoid``: the push servers (``host:port``) the client failed to reach lately."""
    value = body.get("avoid")
    if value is None:
        return frozenset()
    rule = f"avoid must be a list of at most {MAX_AVOID} host:port strings"
    if not isinstance(value, list) or len(value) > MAX_AVOID:
        raise invalid(rule, "avoid")
    for address in value:
        if not isinstance(address, str) or not 1 <= len(address) <= MAX_ADDRESS:
            raise invalid(f"{rule} of at most {MAX_ADDRESS} characters", "avoid")
        try:
            split_address(address)  # the one host:port rule (pigeonpush.hostport)
        except ValueError:
            raise invalid(f"{rule}, not {echo(address)!r}", "avoid") from None
    return frozenset(value)


#: ``transport`` of a route request: what the client can speak.
TRANSPORTS = ("tcp", "websocket")


def websocket_field(body: dict[str, Any]) -> bool:
    """``transport``: ``websocket`` asks for a WebSocket address (browsers);
    ``tcp`` or absent for the framed TCP port."""
    value = body.get("transport")
    if value is None:
        return False
    if value not in TRANSPORTS:
        raise invalid("transport must be 'tcp' or 'websocket'", "transport")
    return bool(value == "websocket")


def _seconds(value: float) -> float | int:
    """Whole seconds as a JSON integer, the way clients in any language expect."""
    return int(value) if float(value).is_integer() else value


class ReglogApi:
    """The request handlers; ``devices`` is None in open mode."""

    def __init__(
        self,
        issuer: RouteIssuer,
        balancer: Balancer,
        clock: IReactorTime,
        *,
        devices: DeviceRegistry | None = None,
        admin_key: str | None = None,
        max_body: int,
    ) -> None:
        self._issuer = issuer
        self._balancer = balancer
        self._clock = clock
        self._devices = devices
        self._admin_key = admin_key.encode("utf-8") if admin_key else None
        self._max_body = max_body
        self._store_warned_at: float | None = None

    def _store_unavailable(self, what: str, error: StoreError) -> ApiError:
        now = self._clock.seconds()
        if self._store_warned_at is None or now - self._store_warned_at >= STORE_WARNING_INTERVAL:
            self._store_warned_at = now
            log.warn(
                "Cannot {what}: {error} (more failures within {interval} s go unlogged)",
                what=what,
                error=str(error),
                interval=STORE_WARNING_INTERVAL,
            )
        return ApiError(
            503, "store_unavailable", "the shared state store is unreachable; retry later"
        )

    # -- POST /v1/route ---------------------------------------------------------

    async def route(self, request: Request) -> JsonResponse:
        started = self._clock.seconds()
        result = "internal_error"
        try:
            response = await self._route(request)
            result = "ok"
            return response
        except ApiError as error:
            result = error.code
            raise
        finally:
            metrics.ROUTE_REQUESTS.labels(result=result).inc()
            metrics.ROUTE_SECONDS.observe(self._clock.seconds() - started)

    async def _route(self, request: Request) -> JsonResponse:
        body = read_json_object(request, self._max_body)
        client_id = required_client_id(body)
        secret = secret_field(body)
        avoid = avoid_field(body)
        websocket = websocket_field(body)
        try:
            grant = await self._issuer.route(client_id, secret, avoid, websocket=websocket)
        except SecretRequired:
            raise ApiError(
                401,
                "secret_required",
                "this service runs in registered mode: send the device's secret",
            ) from None
        except BadSecret:
            raise ApiError(401, "bad_secret", "unknown clientId or wrong secret") from None
        except NoServer as error:
            message = (
                "every push server is full; retry later"
                if error.live
                else "no push server is alive; retry later"
            )
            if websocket:
                message = "no push server with a WebSocket listener has room; retry later"
            raise ApiError(503, "no_server", message) from None
        except StoreError as error:
            raise self._store_unavailable("issue a token", error) from None
        server = grant.server
        return JsonResponse(
            {
                "token": grant.token,
                "server": server.address(websocket),
                "transport": server.websocket_transport if websocket else server.transport,
                "heartbeat": _seconds(grant.heartbeat),
            }
        )

    # -- POST /v1/devices -------------------------------------------------------

    async def register(self, request: Request) -> JsonResponse:
        result = "internal_error"
        try:
            response = await self._register(request)
            result = "ok"
            return response
        except ApiError as error:
            result = error.code
            raise
        finally:
            metrics.REGISTRATIONS.labels(result=result).inc()

    def _check_admin_key(self, request: Request) -> None:
        if self._admin_key is None:
            return
        presented = bearer_token(request)
        if presented is None:
            raise ApiError(
                401,
                "bad_admin_key",
                "registration needs the admin key: send Authorization: Bearer <admin key>",
                {"WWW-Authenticate": _REALM},
            )
        if not hmac.compare_digest(presented.encode("utf-8"), self._admin_key):
            raise ApiError(
                401,
                "bad_admin_key",
                "the admin key is wrong",
                {"WWW-Authenticate": _REALM + ', error="invalid_token"'},
            )

    async def _register(self, request: Request) -> JsonResponse:
        if self._devices is None:
            raise ApiError(
                404,
                "registration_disabled",
                "device registration is off: this service runs in open mode",
            )
        self._check_admin_key(request)
        body = read_json_object(request, self._max_body, allow_empty=True)
        wanted = optional_client_id(body)
        try:
            client_id, secret = await self._devices.register(wanted)
        except ClientExists as error:
            raise ApiError(
                409, "client_exists", f"a device with clientId {error} is already registered"
            ) from None
        except StoreError as error:
            raise self._store_unavailable("register a device", error) from None
        return JsonResponse({"clientId": client_id, "secret": secret}, status=201)

    # -- GET /health --------------------------------------------------------------

    async def health(self, request: Request) -> JsonResponse:
        """200 while a live server has room for a client, else 503 (reglog cannot route)."""
        free = self._balancer.free_capacity()
        body = {
            "status": "ok" if free > 0 else "no_server",
            "servers": len(self._balancer.servers),
            "freeCapacity": free,
        }
        return JsonResponse(body, status=200 if free > 0 else 503)

    # -- the tree -------------------------------------------------------------------

    def resource(self) -> Resource:
        """The root resource: mount it on a JsonSite."""
        root = JsonTree()
        v1 = JsonTree()
        root.putChild(b"v1", v1)
        v1.putChild(b"route", JsonResource({b"POST": self.route}))
        v1.putChild(b"devices", JsonResource({b"POST": self.register}))
        root.putChild(b"health", JsonResource({b"GET": self.health}))
        root.putChild(b"metrics", MetricsResource())
        return root
