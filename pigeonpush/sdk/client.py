"""PushClient: route, connect, authenticate, receive, ACK, reconnect.

The life of a client is an explicit state machine (``ClientState``)::

    STOPPED --start()--> ROUTING --route--> CONNECTING --TCP up--> AUTHENTICATING
    AUTHENTICATING --AUTH_OK--> ONLINE
    CONNECTING / AUTHENTICATING --failure--> WAITING (backoff) --> ROUTING or CONNECTING
    ONLINE --connection lost--> WAITING
    any --stop() / give up--> STOPPING (closing the connection) --> STOPPED

ROUTING asks reglog (retrying inside, for as long as it takes unless the
application set ``max_route_failures``; see ``route.RouteFetcher``); WAITING is
a jittered backoff delay, capped (60 s by default).

A token is good for one session: the route (token and server) is spent as
soon as a connection carrying its AUTH is up, so every new session (after any
disconnect, AUTH_FAIL or KICK) starts with a fresh route from reglog. Only a
connection that never came up leaves the token unused: after
``reconnect_threshold`` of those in a row (1 by default) the client asks reglog
again, naming the servers it failed to reach lately (``avoid``) so that reglog
chooses another while another has room: a crashed server stays in discovery
until its ZooKeeper session expires.

The count of failed attempts, which sets the backoff, starts again at AUTH_OK
and when reglog answers with a server the client has not failed to reach
lately: a client sent to a live server after a crash comes back at once,
instead of after the long delay that the failures against the dead one built.

Twisted's ``ClientService`` reconnects to one fixed endpoint and counts a TCP
connection as success; here the target changes with each reglog answer and
success means AUTH_OK, so the loop is written out over ``endpoint.connect``
with the same ingredients: an injected clock and a retry policy with jitter.
"""

from __future__ import annotations

import enum
import itertools
import re
import secrets
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgent

from pigeonpush.hostport import parse_peer_address
from pigeonpush.identifiers import check_client_id, check_topic
from pigeonpush.sdk.backoff import BackoffPolicy, full_jitter
from pigeonpush.sdk.dedup import RecentIds
from pigeonpush.sdk.errors import (
    ProtocolVersionRefused,
    PushClientError,
    RouteLookupFailed,
    SessionReplaced,
    SubscriptionFailed,
    UplinkNotSent,
)
from pigeonpush.sdk.events import (
    Authenticated,
    ClientEvent,
    Connected,
    Disconnected,
    GaveUp,
    MessagesMissed,
)
from pigeonpush.sdk.identity import mac_client_id
from pigeonpush.sdk.message import Message, MessageCallback, RetryLater
from pigeonpush.sdk.protocol import ClientProtocol, SessionFactory
from pigeonpush.sdk.route import MAX_AVOID, Route, RouteFetcher, RouteSource
from pigeonpush.tls import ClientTLS, client_endpoint
from pigeonpush.wire.codec import (
    DEFAULT_MAX_FRAME,
    MAX_MAX_FRAME,
    MIN_MAX_FRAME,
    EncodeError,
    uplink_problem,
)
from pigeonpush.wire.frames import (
    PROTOCOL_VERSION,
    Auth,
    AuthFail,
    AuthFailCode,
    Kick,
    KickReason,
    Missed,
    Push,
    Subscribe,
    Subscription,
    SubscriptionCode,
    Unsubscribe,
)

#: Seconds a server the client failed to reach stays on its ``avoid`` list.
AVOID_SECONDS = 60.0

EventObserver = Callable[[ClientEvent], object]


def fallback_version(refused: int, reason: str) -> int:
    """The version to try after a server refused ``refused``: the newest
    older one among the numbers its AUTH_FAIL reason lists ("this server
    speaks 1, 2", or after a colon), else version 1, which every server speaks."""
    listed = re.split(r"speaks|:", reason)[-1] if re.search(r"speaks|:", reason) else ""
    named = [int(word) for word in re.findall(r"\d+", listed)]
    older = [version for version in named if 1 <= version < refused]
    return max(older) if older else 1


class ClientState(enum.Enum):
    STOPPED = "stopped"  #: not started, stopped, or gave up
    WAITING = "waiting"  #: backing off before the next attempt
    ROUTING = "routing"  #: asking reglog for a token and a server
    CONNECTING = "connecting"  #: TCP connection under way
    AUTHENTICATING = "authenticating"  #: AUTH sent, waiting for AUTH_OK
    ONLINE = "online"  #: authenticated: messages flow
    STOPPING = "stopping"  #: closing the connection after stop() or giving up


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a positive number, not {value!r}")
    return value


def _at_least_one(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer of at least 1, not {value!r}")
    return value


class PushClient:
    """A device's connection to PigeonPush, kept up until ``stop()``.

    :param reactor: provides IReactorTime and IReactorTCP (the reactor, or a
        ``Clock`` in tests together with ``endpoint_factory`` and ``route_source``).
    :param reglog_url: base URL of reglog, e.g. ``http://reglog.example:8100``.
    :param on_message: called with each new ``Message``; see ``MessageCallback``.
    :param client_id: the device's id; default: from the MAC address (see
        ``identity.mac_client_id`` for the caveat).
    :param secret: the device secret in registration mode; sent to reglog only.
    :param heartbeat: seconds of quiet before a PING, until reglog or AUTH_OK
        gives the server's value (which wins).
    :param max_missed_pongs: unanswered PINGs in a row after which the
        connection counts as dead and is dropped.
    :param reconnect_threshold: connection attempts to one route's server in a
        row that fail before the connection is up (the token is unused) after
        which reglog is asked for a new route.
    :param max_route_failures: reglog requests failing in a row before giving
        up (``GaveUp`` with ``RouteLookupFailed``); None (the default): never.
    :param http_retries: deprecated name of ``max_route_failures``.
    :param backoff: retry delays, ``attempt -> seconds``; default
        ``full_jitter(initial=1, maximum=60, factor=2)``.
    :param dedup_window: how many handled messageIds are remembered to filter
        duplicates.
    :param ca_file: PEM file of the authorities a TLS push server's certificate
        (and an ``https://`` reglog's) must chain to (default: the system's);
        the file is read here.
    :param insecure: connect to TLS push servers without checking their
        certificate at all. For tests only: anyone on the path can then read
        and change the traffic; every connection logs a warning. An
        ``https://`` reglog is verified all the same.
    :param endpoint_factory: ``"[tls:]host:port" -> IStreamClientEndpoint``
        (``Route.address``); the seam for other transports (default: TCP, or
        TLS verified per ``ca_file`` when reglog says the server speaks TLS).
    :param http_agent: the ``IAgent`` for reglog requests (proxies, TLS policy).
    :param route_source: replaces the reglog lookup entirely (tests, custom routing).
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        reglog_url: str,
        on_message: MessageCallback,
        *,
        client_id: str | None = None,
        secret: str | None = None,
        heartbeat: float = 30.0,
        max_missed_pongs: int = 2,
        reconnect_threshold: int = 1,
        max_route_failures: int | None = None,
        http_retries: int | None = None,
        auth_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        http_timeout: float = 10.0,
        dedup_window: int = 1024,
        max_frame: int = DEFAULT_MAX_FRAME,
        backoff: BackoffPolicy | None = None,
        ca_file: str | None = None,
        insecure: bool = False,
        endpoint_factory: Callable[[str], IStreamClientEndpoint] | None = None,
        http_agent: IAgent | None = None,
        route_source: RouteSource | None = None,
    ) -> None:
        if not callable(on_message):
            raise TypeError(f"on_message must be callable, not {on_message!r}")
        if not MIN_MAX_FRAME <= max_frame <= MAX_MAX_FRAME:
            raise ValueError(f"max_frame must be {MIN_MAX_FRAME} to {MAX_MAX_FRAME}")
        self._reactor = reactor
        self.reglog_url = reglog_url
        self.client_id = check_client_id(mac_client_id() if client_id is None else client_id)
        self._on_message = on_message
        self._heartbeat = _positive("heartbeat", heartbeat)
        self._max_missed = _at_least_one("max_missed_pongs", max_missed_pongs)
        self._reconnect_threshold = _at_least_one("reconnect_threshold", reconnect_threshold)
        self._auth_timeout = _positive("auth_timeout", auth_timeout)
        self._connect_timeout = _positive("connect_timeout", connect_timeout)
        self._max_frame = max_frame
        self._backoff = backoff if backoff is not None else full_jitter()
        self._recent = RecentIds(dedup_window)
        self._tls = ClientTLS.from_options(ca_file, insecure=insecure, option="ca_file")
        if insecure:
            self.log.warn(
                "PushClient {client_id!r} will NOT verify the certificates of TLS push "
                "servers (insecure=True): for tests only",
                client_id=self.client_id,
            )
        self._endpoint_factory = endpoint_factory or self._default_endpoint
        if http_retries is not None:
            warnings.warn(
                "http_retries is deprecated: use max_route_failures",
                DeprecationWarning,
                stacklevel=2,
            )
            if max_route_failures is None:
                max_route_failures = http_retries
        if max_route_failures is not None:
            _at_least_one("max_route_failures", max_route_failures)
        if route_source is None:
            route_source = RouteFetcher(
                reactor,
                http_agent if http_agent is not None else self._default_agent(),
                reglog_url,
                self.client_id,
                secret=secret,
                attempts=max_route_failures,
                backoff=self._backoff,
                timeout=_positive("http_timeout", http_timeout),
                avoid=lambda: self.avoid,
            )
        self._route_source = route_source

        self._state = ClientState.STOPPED
        self._route: Route | None = None
        self._failures = 0  # attempts in a row that did not reach AUTH_OK
        self._route_failures = 0  # connections that never came up on the current route
        #: server -> when the client last failed to reach it (the ``avoid`` list)
        self._unreachable: dict[str, float] = {}
        self._auth_refused = False  # the current session ended with AUTH_FAIL
        self._pending: IDelayedCall | Deferred[Any] | None = None  # cancelled by stop()
        self._session: ClientProtocol | None = None
        #: SUBSCRIBE / UNSUBSCRIBE requests waiting for their answer, by requestId
        self._requests: dict[int, tuple[ClientProtocol, Deferred[None]]] = {}
        self._request_ids = itertools.count(1)
        self._online: Authenticated | None = None
        self._gave_up: PushClientError | None = None
        self._start_after_stop = False
        self._observers: list[EventObserver] = []
        self._auth_waiters: list[Deferred[Authenticated]] = []
        self._stop_waiters: list[Deferred[None]] = []
        # messageId -> sessions whose PUSH of it awaits the callback's outcome
        self._in_flight: dict[str, list[ClientProtocol]] = {}
        # the protocol version sent in AUTH: lower after a server refused it
        self._version = PROTOCOL_VERSION
        #: uplinkId -> the uplink not acknowledged yet, in the order sent
        self._uplinks: dict[str, _PendingUplink] = {}

    def __repr__(self) -> str:
        return f"<PushClient {self.client_id!r} {self._state.value}>"

    # --- public API ---------------------------------------------------------------

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def server(self) -> str | None:
        """The push server of the current connection, if any."""
        return self._session.server if self._session is not None else None

    @property
    def gave_up(self) -> PushClientError | None:
        """Why the client last gave up (cleared by ``start()``)."""
        return self._gave_up

    def start(self) -> None:
        """Start connecting (idempotent). After giving up, starts afresh."""
        if self._state is ClientState.STOPPING:
            self._start_after_stop = True
            return
        if self._state is not ClientState.STOPPED:
            return
        self._failures = 0
        self._route_failures = 0
        self._gave_up = None
        self._attempt()

    def stop(self) -> Deferred[None]:
        """Stop trying and close the connection; fires once it is closed.

        Pending ``when_authenticated()`` Deferreds fail with CancelledError.
        Messages whose callbacks are still running are not ACKed: the server
        delivers them again later.
        """
        self._start_after_stop = False
        if self._state is ClientState.STOPPED:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._stop_waiters.append(waiter)
        if self._state is ClientState.STOPPING:
            return waiter
        self._halt()
        self._fail_auth_waiters(CancelledError("the client was stopped"))
        self._uplinks_lost(None, "the client was stopped", every=True)
        if self._session is None:  # nothing to close: stopped already
            self._finish_stopping()
        return waiter

    def on_event(self, observer: EventObserver) -> Callable[[], None]:
        """Call ``observer(event)`` for each Connected, Authenticated,
        Disconnected and GaveUp; returns a function that unsubscribes it."""
        self._observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unsubscribe

    def when_authenticated(self) -> Deferred[Authenticated]:
        """Fires with the Authenticated event of the current session, or of the
        next one. Fails with the error if the client gives up, with
        CancelledError if it is stopped first."""
        if self._online is not None:
            return succeed(self._online)
        waiter: Deferred[Authenticated] = Deferred(self._forget_auth_waiter)
        self._auth_waiters.append(waiter)
        return waiter

    def send_uplink(
        self,
        data: Mapping[str, str],
        *,
        uplink_id: str | None = None,
        resend_on_reconnect: bool = False,
    ) -> Deferred[str]:
        """Send ``data`` (strings to strings, at most 64 pairs and 4,096 bytes
        of UTF-8) to the application servers; fires with the uplinkId once
        the push server has stored it (UPLINK_ACK).

        Fails with UplinkNotSent when the connection is down, or drops before
        the UPLINK_ACK, or the client stops; with ``resend_on_reconnect`` the
        uplink is kept instead and sent again, with the same id, on each next
        session until acknowledged (the server stores it once), failing only
        when the client stops or gives up. ``uplink_id`` defaults to a random
        id. Raises ValueError for data over the limits or an id already
        pending, TypeError for data that is not a map of strings.
        """
        if uplink_id is None:
            uplink_id = secrets.token_urlsafe(12)
        elif not isinstance(uplink_id, str):
            raise TypeError(f"uplink_id must be a str, not {type(uplink_id).__name__}")
        if not isinstance(data, Mapping) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in data.items()
        ):
            raise TypeError("uplink data must be a mapping of str to str")
        problem = uplink_problem(uplink_id, data)
        if problem is not None:
            raise ValueError(str(problem))
        if uplink_id in self._uplinks:
            raise ValueError(f"uplink {uplink_id!r} is already waiting for its UPLINK_ACK")

        def cancel(_: Deferred[str]) -> None:
            self._uplinks.pop(uplink_id, None)

        pending = _PendingUplink(uplink_id, dict(data), resend_on_reconnect, Deferred(cancel))
        self._uplinks[uplink_id] = pending
        session = self._session
        if session is not None and session.can_uplink:
            self._write_uplink(session, pending)
        elif not resend_on_reconnect:
            online = session is not None and session.authenticated
            reason = "the push server speaks protocol version 1" if online else "not connected"
            self._uplink_failed(pending, reason)
        return pending.deferred

    def _write_uplink(self, session: ClientProtocol, pending: _PendingUplink) -> None:
        try:
            session.send_uplink(pending.uplink_id, pending.data)
        except EncodeError as e:  # FrameTooLarge included
            # Over this server's frame limit: no session would carry it.
            self._uplinks.pop(pending.uplink_id, None)
            pending.deferred.errback(Failure(ValueError(f"the uplink cannot be sent: {e}")))
            return
        pending.session = session

    def _uplink_failed(self, pending: _PendingUplink, reason: str) -> None:
        self._uplinks.pop(pending.uplink_id, None)
        pending.deferred.errback(Failure(UplinkNotSent(pending.uplink_id, reason)))

    def _uplinks_lost(self, session: ClientProtocol | None, reason: str, *, every: bool) -> None:
        """The session that carried uplinks ended (or the client stops: ``every``):
        fail those that are not to be resent; the rest wait for the next session."""
        for pending in list(self._uplinks.values()):
            if every or (pending.session is session and not pending.resend):
                self._uplink_failed(pending, reason)
            elif pending.session is session:
                pending.session = None

    def _uplink_acked(self, session: ClientProtocol, uplink_id: str) -> None:
        pending = self._uplinks.pop(uplink_id, None)
        if pending is not None:
            pending.deferred.callback(uplink_id)

    def _forget_auth_waiter(self, waiter: Deferred[Authenticated]) -> None:
        if waiter in self._auth_waiters:
            self._auth_waiters.remove(waiter)

    # --- the attempt loop ---------------------------------------------------------

    def _set_state(self, state: ClientState) -> None:
        self._state = state

    def _attempt(self) -> None:
        self._pending = None
        route = self._route
        if route is not None:
            self._connect(route)
            return
        self._set_state(ClientState.ROUTING)
        looking_up: Deferred[Route] = maybeDeferred(self._route_source)
        self._pending = looking_up
        looking_up.addCallbacks(self._routed, self._route_failed)

    @property
    def avoid(self) -> list[str]:
        """The servers this client failed to reach within ``AVOID_SECONDS``,
        most recent first (what the next route request asks reglog to avoid)."""
        since = self._reactor.seconds() - AVOID_SECONDS
        for server, failed_at in list(self._unreachable.items()):
            if failed_at <= since:
                del self._unreachable[server]
        return sorted(self._unreachable, key=self._unreachable.__getitem__, reverse=True)

    def _unreached(self, server: str) -> None:
        self._unreachable.pop(server, None)  # re-insert: the most recent comes last
        self._unreachable[server] = self._reactor.seconds()
        while len(self._unreachable) > MAX_AVOID:
            del self._unreachable[next(iter(self._unreachable))]

    def _routed(self, route: Route) -> None:
        if self._state is not ClientState.ROUTING:
            return
        self._pending = None
        self._route = route
        self._route_failures = 0
        if route.server not in self.avoid:
            # A server not known to be down: the backoff starts again, so a
            # client sent elsewhere after a crash comes back at once.
            self._failures = 0
        self._connect(route)

    def _route_failed(self, failure: Failure) -> None:
        if self._state is not ClientState.ROUTING:
            return  # cancelled by stop()
        self._pending = None
        error = failure.value
        if not isinstance(error, PushClientError):
            self.log.failure("The route lookup failed unexpectedly", failure)
            error = RouteLookupFailed(self.reglog_url, 1, f"{type(error).__name__}: {error}")
        self._give_up(error)

    def _connect(self, route: Route) -> None:
        self._set_state(ClientState.CONNECTING)
        try:
            endpoint = self._endpoint_factory(route.address)
        except ValueError as e:
            self.log.warn(
                "Unusable push server address {server}: {error}", server=route.server, error=e
            )
            self._route = None
            self._attempt_failed()
            return
        heartbeat = route.heartbeat if route.heartbeat is not None else self._heartbeat
        auth = Auth(self.client_id, route.token, self._version)

        def build() -> ClientProtocol:
            return ClientProtocol(
                self,
                route.server,
                auth,
                clock=self._reactor,
                heartbeat=heartbeat,
                max_missed_pongs=self._max_missed,
                auth_timeout=self._auth_timeout,
                max_frame=self._max_frame,
            )

        # maybeDeferred: a custom endpoint that raises is a failed attempt too.
        connecting: Deferred[Any] = maybeDeferred(endpoint.connect, SessionFactory(build))
        self._pending = connecting
        connecting.addErrback(self._connect_failed, route.server)

    def _connect_failed(self, failure: Failure, server: str) -> None:
        if self._state is not ClientState.CONNECTING:
            return  # cancelled by stop(), or the connection was made after all
        self._pending = None
        self.log.info(
            "Could not connect to {server}: {reason}",
            server=server,
            reason=failure.getErrorMessage(),
        )
        self._unreached(server)
        self._attempt_failed()

    def _attempt_failed(self) -> None:
        self._failures += 1
        self._route_failures += 1
        if self._route is not None and self._route_failures >= self._reconnect_threshold:
            self.log.info(
                "{count} connection attempt(s) in a row to {server} failed; "
                "asking reglog for a new route",
                count=self._route_failures,
                server=self._route.server,
            )
            self._route = None
        self._retry_later()

    def _retry_later(self) -> None:
        # Retry n after n failures in a row; a session that was lost (no
        # failure yet) and the first failure both wait within the first window.
        delay = self._backoff(max(self._failures, 1))
        self._set_state(ClientState.WAITING)
        self._pending = self._reactor.callLater(delay, self._attempt)

    def _halt(self) -> None:
        """Cancel whatever is pending and close the connection (stop, give up)."""
        pending, self._pending = self._pending, None
        if self._session is not None:
            self._set_state(ClientState.STOPPING)
            self._session.close()
        else:
            self._set_state(ClientState.STOPPED)
        if pending is not None:
            pending.cancel()

    def _give_up(self, error: PushClientError) -> None:
        self.log.warn("Giving up: {error}", error=str(error))
        self._route = None
        self._gave_up = error
        self._halt()
        self._fail_auth_waiters(error)
        self._uplinks_lost(None, f"the client gave up: {error}", every=True)
        self._emit(GaveUp(error))

    def _finish_stopping(self) -> None:
        self._set_state(ClientState.STOPPED)
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if self._start_after_stop:
            self._start_after_stop = False
            self.start()

    def _fail_auth_waiters(self, error: Exception) -> None:
        waiters, self._auth_waiters = self._auth_waiters, []
        for waiter in waiters:
            waiter.errback(Failure(error))

    def _emit(self, event: ClientEvent) -> None:
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception:
                self.log.failure(
                    "Event observer {observer!r} failed on {event!r}",
                    observer=observer,
                    event=event,
                )

    # --- what the session reports (SessionOwner) -----------------------------------

    def _session_started(self, session: ClientProtocol) -> None:
        self._pending = None
        self._session = session
        # AUTH is on its way: the token is spent, whatever happens next.
        self._route = None
        self._auth_refused = False
        self._set_state(ClientState.AUTHENTICATING)
        self._emit(Connected(session.server))

    def _session_authenticated(self, session: ClientProtocol, heartbeat: float) -> None:
        self._failures = 0
        self._route_failures = 0
        self._unreachable.pop(session.server, None)
        event = Authenticated(session.server, heartbeat)
        self._online = event
        self._set_state(ClientState.ONLINE)
        self.log.info(
            "Authenticated to {server} as {client_id}; heartbeat {heartbeat}s",
            server=session.server,
            client_id=self.client_id,
            heartbeat=heartbeat,
        )
        waiters, self._auth_waiters = self._auth_waiters, []
        self._emit(event)
        for waiter in waiters:
            waiter.callback(event)
        # Uplinks kept from an earlier session go again, with their ids, in order.
        for pending in list(self._uplinks.values()):
            if pending.session is None and self._session is session and session.can_uplink:
                self._write_uplink(session, pending)

    def _session_refused(self, session: ClientProtocol, frame: AuthFail) -> None:
        # The server is alive and answered: not one to avoid. The next attempt
        # asks reglog for a fresh token (this one was spent by _session_started).
        self._auth_refused = True
        if frame.code is AuthFailCode.VERSION and self._version > 1:
            # An older server (a rolling upgrade): speak the newest version it
            # names below ours (version 2: no topics; 1: no NACK nor uplinks).
            older = fallback_version(self._version, frame.reason)
            self.log.info(
                "Push server {server} does not speak protocol version {version}; "
                "using version {older}",
                server=session.server,
                version=self._version,
                older=older,
            )
            self._version = older
            return
        if frame.code is AuthFailCode.VERSION:
            self._give_up(
                ProtocolVersionRefused(
                    f"push server {session.server} does not speak protocol version "
                    f"{self._version}: {frame.reason or 'no reason given'}"
                )
            )
            return
        self.log.info(
            "Push server {server} refused AUTH ({code.name}); asking reglog again",
            server=session.server,
            code=frame.code,
        )

    def _session_kicked(self, session: ClientProtocol, frame: Kick) -> None:
        if frame.reason is KickReason.REPLACED:
            self._give_up(
                SessionReplaced(
                    f"clientId {self.client_id!r} logged in again elsewhere and took over the "
                    f"session on {session.server}; not reconnecting"
                )
            )
            return
        self.log.info(
            "Push server {server} ended the session ({reason.name}); reconnecting through reglog",
            server=session.server,
            reason=frame.reason,
        )

    def _session_ended(self, session: ClientProtocol, reason: str) -> None:
        self._fail_requests(session)
        if session is not self._session:
            return
        self._session = None
        self._online = None
        self._uplinks_lost(
            session, f"the connection ended before UPLINK_ACK ({reason})", every=False
        )
        event = Disconnected(session.server, reason, session.authenticated)
        if self._state is ClientState.STOPPING:
            self._emit(event)
            self._finish_stopping()
            return
        if session.authenticated:
            self.log.info(
                "Lost the connection to {server} ({reason}); reconnecting through reglog",
                server=session.server,
                reason=reason,
            )
            self._retry_later()
        else:
            self.log.info(
                "Connection to {server} ended before AUTH_OK ({reason})",
                server=session.server,
                reason=reason,
            )
            if not self._auth_refused:
                self._unreached(session.server)
            self._attempt_failed()
        self._emit(event)

    def _push_received(self, session: ClientProtocol, frame: Push) -> None:
        message_id = frame.message_id
        if message_id in self._recent:
            session.send_ack(message_id)  # handled before; its ACK was lost
            return
        waiting = self._in_flight.get(message_id)
        if waiting is not None:
            # Delivered again while the callback still runs: ACK when it succeeds.
            waiting[:] = [other for other in waiting if not other.closing]
            waiting.append(session)
            return
        self._in_flight[message_id] = [session]
        message = Message(
            message_id,
            frame.title,
            frame.text,
            frame.extras,
            self._reactor.seconds(),
            frame.topic or None,
        )
        handling: Deferred[Any] = maybeDeferred(self._on_message, message)
        handling.addCallbacks(
            self._handled,
            self._not_handled,
            callbackArgs=(message_id,),
            errbackArgs=(message_id,),
        )

    def subscribe(self, topic: str) -> Deferred[None]:
        """Subscribe this device to ``topic`` (allowed only for topics the
        operator opened to devices: ``--device-topics``). Fires once the
        server has stored it; fails with ``SubscriptionFailed``, or
        ValueError for a name outside the topic grammar. Needs a session
        (``when_authenticated``) of protocol version 3."""
        return self._request(Subscribe, topic)

    def unsubscribe(self, topic: str) -> Deferred[None]:
        """Leave ``topic``; as ``subscribe``."""
        return self._request(Unsubscribe, topic)

    def _request(self, kind: type[Subscribe] | type[Unsubscribe], topic: str) -> Deferred[None]:
        try:
            check_topic(topic)
        except ValueError:
            return fail()
        session = self._session
        request_id = next(self._request_ids) & 0xFFFFFFFF
        if session is None or not session.send_request(kind(request_id, topic)):
            return fail(SubscriptionFailed("OFFLINE", "no session of protocol version 3 now"))
        waiting: Deferred[None] = Deferred()
        self._requests[request_id] = (session, waiting)
        return waiting

    def _subscription_answered(self, session: ClientProtocol, frame: Subscription) -> None:
        found = self._requests.pop(frame.request_id, None)
        if found is None:
            return  # an answer nobody waits for (a request of an ended session)
        _, waiting = found
        if frame.code is SubscriptionCode.OK:
            waiting.callback(None)
        else:
            waiting.errback(SubscriptionFailed(frame.code.name, frame.reason))

    def _fail_requests(self, session: ClientProtocol) -> None:
        for request_id, (owner, waiting) in list(self._requests.items()):
            if owner is session:
                del self._requests[request_id]
                waiting.errback(
                    SubscriptionFailed("DISCONNECTED", "the session ended before the answer")
                )

    def _messages_missed(self, session: ClientProtocol, frame: Missed) -> None:
        self.log.info(
            "Some messages of topic {topic} will not come: the server's log lost them",
            topic=frame.topic,
        )
        self._emit(MessagesMissed(frame.topic))

    def _handled(self, result: object, message_id: str) -> None:
        sessions = self._in_flight.pop(message_id, ())
        self._recent.add(message_id)
        for session in sessions:
            session.send_ack(message_id)

    def _not_handled(self, failure: Failure, message_id: str) -> None:
        sessions = self._in_flight.pop(message_id, ())
        retry_after = 0.0
        if isinstance(failure.value, RetryLater):
            retry_after = failure.value.retry_after
            self.log.info(
                "The message callback asked for {message_id} again in {retry_after} s",
                message_id=message_id,
                retry_after=retry_after,
            )
        else:
            self.log.failure(
                "The message callback failed on {message_id}; NACKed, it will be delivered again",
                failure,
                message_id=message_id,
            )
        for session in sessions:
            session.send_nack(message_id, retry_after)

    # --- defaults -------------------------------------------------------------------

    def _default_endpoint(self, address: str) -> IStreamClientEndpoint:
        peer = parse_peer_address(address)
        return client_endpoint(
            self._reactor,
            peer.host,
            peer.port,
            tls=self._tls if peer.tls else None,
            timeout=self._connect_timeout,
        )

    def _default_agent(self) -> IAgent:
        # Route lookups are rare (one per reconnect through reglog): no
        # keep-alive connections to hold open between them.
        pool = HTTPConnectionPool(self._reactor, persistent=False)
        return Agent(
            self._reactor,
            contextFactory=self._tls.https_policy(),
            connectTimeout=self._connect_timeout,
            pool=pool,
        )


@attrs.define(slots=True, eq=False)
class _PendingUplink:
    uplink_id: str
    data: dict[str, str]
    resend: bool
    deferred: Deferred[str]
    #: the session it was written on (None: not written, or to be written again)
    session: ClientProtocol | None = None
