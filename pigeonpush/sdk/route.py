"""Asking reglog for a route: ``POST /v1/route`` -> token, server, transport, heartbeat.

Retries transient failures (connection errors, timeouts, 5xx, 503 "no server
alive", 408, 429) with backoff, for as long as it takes by default: a reglog
that restarts or is unreachable for a while must not leave its devices
disconnected for good. A limit (``attempts``) is the application's choice;
past it the lookup fails with ``RouteLookupFailed``. A refusal (any other 4xx:
bad input, bad secret) is reported at once: the same request would be refused
again.

The request may name the servers the client failed to reach lately
(``avoid``): reglog then chooses another one while another has room.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import urlsplit

import attrs
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer
from zope.interface import implementer

from pigeonpush.hostport import PeerAddress, split_address
from pigeonpush.sdk.backoff import BackoffPolicy
from pigeonpush.sdk.errors import RouteLookupFailed
from pigeonpush.tls import TCP, TRANSPORTS

#: The reglog path that hands out routes.
ROUTE_PATH = "/v1/route"
#: The longest piece of an unexpected response body quoted in an error.
_QUOTE_LIMIT = 200
#: 4xx answers that are worth retrying (the rest are refusals).
_RETRYABLE_4XX = frozenset({408, 429})
#: reglog takes at most this many servers to avoid per request...
MAX_AVOID = 16
#: ... each at most this long.
MAX_AVOID_ADDRESS = 262


@attrs.frozen(slots=True)
class Route:
    """Where to connect and what to say there. The token never shows in reprs."""

    token: str = attrs.field(repr=False)
    server: str
    heartbeat: float | None = None
    #: ``tcp`` or ``tls``: what the server speaks at ``server``
    transport: str = TCP

    @property
    def address(self) -> str:
        """``server`` with its transport, as endpoint factories take it:
        ``host:port`` for TCP, ``tls:host:port`` for TLS."""
        return str(PeerAddress(*split_address(self.server), self.transport))


#: What PushClient calls to get a route: fires with a Route or fails with
#: RouteLookupFailed (retries happen inside; a failure makes the client give up).
#: ``PushClient.avoid`` lists the servers the client failed to reach lately.
RouteSource = Callable[[], "Deferred[Route]"]


class _Retryable(Exception):
    """One failed attempt that another attempt may fix."""


class _Refused(Exception):
    """reglog said no in a way that retrying cannot change."""

    def __init__(self, message: str, status: int, error: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


def parse_server_address(server: str) -> tuple[str, int]:
    """``"host:port"`` (IPv6 as ``"[::1]:7100"``) -> (host, port); ValueError if malformed."""
    try:
        return split_address(server)
    except ValueError:
        raise ValueError(f"server address must be host:port, not {server!r}") from None


def avoid_list(servers: Collection[str]) -> list[str]:
    """The ``avoid`` field for ``servers``: the well-formed ``host:port`` ones, at
    most ``MAX_AVOID`` (reglog answers 400 to anything else)."""
    valid = (s for s in servers if len(s) <= MAX_AVOID_ADDRESS and _is_address(s))
    return list(itertools.islice(valid, MAX_AVOID))


def _is_address(server: str) -> bool:
    try:
        parse_server_address(server)
    except ValueError:
        return False
    return True


def check_reglog_url(url: str) -> str:
    """The URL if it can reach reglog (http or https, with a host); ValueError otherwise."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"reglog_url must be an http:// or https:// URL, not {url!r}")
    return url


def parse_route(body: Any) -> Route:
    """A Route from reglog's JSON answer; ValueError naming the bad field."""
    if not isinstance(body, dict):
        raise ValueError("the body is not a JSON object")
    token = body.get("token")
    if not isinstance(token, str) or not token:
        raise ValueError("token must be a non-empty string")
    server = body.get("server")
    if not isinstance(server, str):
        raise ValueError("server must be a string host:port")
    parse_server_address(server)
    transport = body.get("transport", TCP)  # older reglogs do not say: TCP
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
    heartbeat = body.get("heartbeat")
    if heartbeat is not None and (
        isinstance(heartbeat, bool) or not isinstance(heartbeat, int | float) or heartbeat <= 0
    ):
        raise ValueError("heartbeat must be a positive number of seconds")
    return Route(
        token=token,
        server=server,
        heartbeat=None if heartbeat is None else heartbeat,
        transport=transport,
    )


def _quote(raw: bytes) -> str:
    text = raw[:_QUOTE_LIMIT].decode("utf-8", "replace")
    return text + ("..." if len(raw) > _QUOTE_LIMIT else "")


def _describe_error(status: int, raw: bytes) -> tuple[str, str | None]:
    """A sentence for an error answer, from the project's JSON error body if any."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        error: str = body["error"]
        message = body.get("message")
        detail = f"{error}: {message}" if isinstance(message, str) else error
        return f"HTTP {status} {detail}", error
    return f"HTTP {status} {_quote(raw)}".rstrip(), None


@implementer(IBodyProducer)
class BytesProducer:
    """A request body that is already in memory, written at once.

    treq's default producer for bytes goes through Twisted's global
    cooperator (the global reactor); this one needs no reactor at all.
    """

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        """Nothing to pause: the body was written in one go."""

    def resumeProducing(self) -> None:
        """Nothing to resume."""

    def stopProducing(self) -> None:
        """Nothing to stop."""


class RouteFetcher:
    """Calls reglog until it answers with a route (or refuses, or ``attempts``
    requests in a row failed, when a limit is set).

    Call it (``fetcher()``) for a Deferred that fires with a Route or fails
    with RouteLookupFailed; cancelling that Deferred stops at once. ``avoid``,
    if given, is called for each lookup: the servers to name in the request.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        agent: IAgent,
        reglog_url: str,
        client_id: str,
        *,
        secret: str | None = None,
        attempts: int | None = None,
        backoff: BackoffPolicy,
        timeout: float = 10.0,
        avoid: Callable[[], Collection[str]] | None = None,
    ) -> None:
        if attempts is not None and attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self._clock = clock
        self._http = HTTPClient(agent, data_to_body_producer=BytesProducer)
        self.url = check_reglog_url(reglog_url).rstrip("/") + ROUTE_PATH
        body: dict[str, str] = {"clientId": client_id}
        if secret is not None:
            body["secret"] = secret
        self._body = body
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = timeout
        self._avoid = avoid

    def __repr__(self) -> str:
        # The secret stays out of reprs (and so out of logs and tracebacks).
        return f"<RouteFetcher {self.url} clientId={self._body['clientId']!r}>"

    def __call__(self) -> Deferred[Route]:
        body: dict[str, Any] = dict(self._body)
        servers = avoid_list(self._avoid()) if self._avoid is not None else []
        if servers:
            body["avoid"] = servers
        return Deferred.fromCoroutine(self._fetch(body))

    async def _fetch(self, body: dict[str, Any]) -> Route:
        reason = ""
        attempts = self._attempts
        for attempt in itertools.count(1) if attempts is None else range(1, attempts + 1):
            try:
                return await self._one_attempt(body)
            except _Retryable as e:
                reason = str(e)
            except _Refused as e:
                self.log.warn(
                    "reglog at {url} refused the route request: {reason}", url=self.url, reason=e
                )
                raise RouteLookupFailed(
                    self.url, attempt, str(e), retryable=False, status=e.status, error=e.error
                ) from None
            if attempts is None or attempt < attempts:
                delay = self._backoff(attempt)
                self.log.info(
                    "Route lookup at {url} failed ({reason}); attempt {next} of {attempts} "
                    "in {delay:.2f}s",
                    url=self.url,
                    reason=reason,
                    next=attempt + 1,
                    attempts="unlimited" if attempts is None else attempts,
                    delay=delay,
                )
                await deferLater(self._clock, delay, lambda: None)
        assert attempts is not None  # only a limited loop ends
        self.log.warn(
            "Route lookup at {url} failed {attempts} times in a row; giving up: {reason}",
            url=self.url,
            attempts=attempts,
            reason=reason,
        )
        raise RouteLookupFailed(self.url, attempts, reason)

    async def _one_attempt(self, body: dict[str, Any]) -> Route:
        exchange = Deferred.fromCoroutine(self._exchange(body))
        exchange.addTimeout(self._timeout, self._clock)
        try:
            status, raw = await exchange
        except CancelledError:
            raise
        except TimeoutError:
            raise _Retryable(f"no answer within {self._timeout:g}s") from None
        except Exception as e:
            # Connection refused, DNS, TLS, timeout, a broken response: all
            # transient from here; the message says which.
            raise _Retryable(f"{type(e).__name__}: {e}") from e
        if status == 200:
            try:
                return parse_route(json.loads(raw))
            except ValueError as e:
                raise _Retryable(f"HTTP 200 with an unusable body ({e})") from None
        message, error = _describe_error(status, raw)
        if 400 <= status < 500 and status not in _RETRYABLE_4XX:
            raise _Refused(message, status, error)
        raise _Retryable(message)

    async def _exchange(self, body: dict[str, Any]) -> tuple[int, bytes]:
        response = await self._http.post(
            self.url, json=body, headers=Headers({b"Accept": [b"application/json"]})
        )
        raw: bytes = await response.content()
        return int(response.code), raw
