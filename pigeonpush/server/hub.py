"""The push server's logic: the session table and what happens to it.

``PushHub`` authenticates sessions, keeps the session table (clientId ->
``Session``), writes PUSHes (it is the in-process ``PushGateway``), takes
ACKs, pulls pending messages, kicks, and drains on a graceful stop. It meets
its transports only through ``pigeonpush.server.session``: it implements
``SessionEvents`` and writes to each session's ``Channel``, so nothing here
knows TCP (or framing, or sockets). Time, the store and the metrics sink are
parameters, so all of it runs under a ``Clock`` with the memory store and
fake channels.

Cleanup is conditional everywhere: a session that is no longer the one of its
client (it was replaced) never touches the store, and the store's own
``end_session`` only deletes AUTH and ROUTE while they hold this session's
token and this server.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.defer import TimeoutError as DeferTimeoutError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from pigeonpush.identifiers import CLIENT_ID, is_client_id
from pigeonpush.logsafe import LogThrottle, untrusted
from pigeonpush.rpc import PullSource, PushItem, PushStatus
from pigeonpush.server.acks import AckBatcher
from pigeonpush.server.metrics import PROMETHEUS, MetricsSink
from pigeonpush.server.pull import PullBatcher
from pigeonpush.server.session import Channel, Session, State
from pigeonpush.server.settings import LOG_BURST, LOG_INTERVAL, ServerSettings
from pigeonpush.server.topics import TopicFeed, TopicFrames
from pigeonpush.server.uplink import UplinkReceiver, send_answer
from pigeonpush.store.interface import Store, StoreError
from pigeonpush.store.model import DropReason, Message
from pigeonpush.store.topic_model import SubscriptionChange
from pigeonpush.wire.codec import (
    PREFIX_BYTES,
    SUPPORTED_VERSIONS,
    EncodeError,
    encode,
    encode_push,
)
from pigeonpush.wire.frames import (
    TOPIC_VERSION,
    Auth,
    AuthFail,
    AuthFailCode,
    AuthOk,
    Kick,
    KickReason,
    Subscribe,
    Subscription,
    SubscriptionCode,
    Unsubscribe,
    Uplink,
)

_T = TypeVar("_T")

_ACTIVE = State.ACTIVE
_WRITTEN = PushStatus.WRITTEN
_OFFLINE = PushStatus.OFFLINE
_WINDOW_FULL = PushStatus.WINDOW_FULL
_NO_BODY = PushStatus.NO_BODY
_TOO_LARGE = PushStatus.TOO_LARGE

#: Sessions refreshed per store call.
REFRESH_BATCH = 1000
#: Seconds between two drain ticks: the KICKs of a graceful stop go out in
#: this many batches per second at most.
DRAIN_TICK = 0.1
#: Seconds the drain waits, after the last KICK, for connections to close
#: before it aborts them.
DRAIN_GRACE = 2.0
#: Seconds the drain waits for the sessions' store cleanups.
CLEANUP_TIMEOUT = 5.0
#: Pull failures are logged at most once per this many seconds.
PULL_FAILURE_LOG_INTERVAL = 10.0
#: Seconds before the first retry of failed pulls; doubled per failed round,
#: up to half a heartbeat (so a message waits at most that long once the
#: fault clears, whatever traffic its client sees).
PULL_RETRY_MIN = 0.5
#: Longest time between two checks of the ACK deadlines and the redeliveries
#: (one timer for every connection; a short --ack-timeout checks 4 times per
#: timeout).
DELIVERY_CHECK_INTERVAL = 1.0
#: A failed message (NACK, ACK timeout) is written again this long after its
#: first failure, twice as long after each further one, at most REDELIVERY_CAP.
REDELIVERY_BASE = 2.0
REDELIVERY_CAP = 300.0
#: A NACK's retry-after (seconds) is kept within these bounds.
RETRY_AFTER_MIN = 1.0
RETRY_AFTER_MAX = 3600.0
#: A client's failure counts (``add_failures``) live this long after its
#: latest failure.
FAILURE_COUNT_TTL = 7 * 24 * 3600.0
#: The retry time of a failed message while its failure count is being stored.
_HELD = float("inf")

_KICK_TEXT = {
    KickReason.REPLACED: "the same client logged in again",
    KickReason.SHUTTING_DOWN: "the server is shutting down; reconnect through reglog",
    KickReason.POLICY: "the session was ended by the service",
}


class PushHub:
    """The session table and everything that reads or changes it
    (``SessionEvents``)."""

    log = Logger()

    def __init__(
        self,
        store: Store,
        clock: IReactorTime,
        settings: ServerSettings,
        *,
        server_address: str | None = None,
        pull_source: PullSource | None = None,
        acks: AckBatcher | None = None,
        metrics: MetricsSink = PROMETHEUS,
        uplinks: UplinkReceiver | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.settings = settings
        #: this server's RPC address: the value of ROUTE for its clients
        #: (set by the service once the RPC port listens, before clients connect)
        self.server_address = server_address
        self.pull_source = pull_source
        self.acks = acks if acks is not None else AckBatcher(store, clock, metrics=metrics)
        self.uplinks = (
            uplinks if uplinks is not None else UplinkReceiver(store, clock, metrics=metrics)
        )
        #: clientId -> its live session (ACTIVE, or CLOSING until disconnected)
        self.sessions: dict[str, Session] = {}
        #: every session whose channel is open, authenticated or not
        self.all_sessions: set[Session] = set()
        #: topic and broadcast messages: catch-up from the logs, positions by ACKs
        self.topics = TopicFeed(
            store,
            clock,
            self.push,
            self.write_frame,
            self.sessions,
            count=self.count_pushes,
            ends_interval=settings.heartbeat,
        )
        #: False once draining: new AUTHs are refused
        self.accepting = True
        self._window = settings.ack_window
        self._max_frame = settings.max_frame
        self._auth_ok = encode(AuthOk(settings.heartbeat, settings.max_frame, settings.ack_window))
        self._cleanups: set[Deferred[bool]] = set()
        #: clientId -> logins of it being checked now
        self._authenticating: dict[str, int] = {}
        self._all_closed: list[Deferred[None]] = []
        self._pull_failures = 0
        self._pull_failure_logged_at = float("-inf")
        self._batcher: PullBatcher | None = None
        #: connections whose last pull brought nothing but said "more"
        self._pulled_empty: set[Session] = set()
        #: connections whose pull failed: pulled again together by one timer
        self._pull_retry: set[Session] = set()
        self._pull_retry_timer: IDelayedCall | None = None
        self._pull_retry_delay = PULL_RETRY_MIN
        #: the one timer of ACK deadlines and redeliveries (None: nothing to watch)
        self._check_timer: IDelayedCall | None = None
        self._check_interval = min(DELIVERY_CHECK_INTERVAL, settings.ack_timeout / 4)
        #: the log throttle of refused AUTHs (peers can repeat them at will)
        self.refusals_log = LogThrottle(clock, LOG_INTERVAL, LOG_BURST)

    # --- connections -------------------------------------------------------------

    def connected(self, channel: Channel) -> Session:
        """A transport connected: the channel's new session."""
        session = Session(channel)
        self.all_sessions.add(session)
        return session

    def disconnected(self, session: Session) -> None:
        """Every close, whatever its cause: the conditional cleanup."""
        self.all_sessions.discard(session)
        self.topics.forget(session)
        self._pulled_empty.discard(session)
        self._pull_retry.discard(session)
        client_id = session.client_id
        if client_id is not None and self.sessions.get(client_id) is session:
            del self.sessions[client_id]
            self.metrics.sessions(len(self.sessions))
            assert session.token is not None
            self._end_session(client_id, session.token)
        if not self.all_sessions and self._all_closed:
            waiting, self._all_closed = self._all_closed, []
            for each in waiting:
                each.callback(None)

    def _end_session(self, client_id: str, token: str) -> None:
        assert self.server_address is not None
        cleanup = self.store.end_session(client_id, token, self.server_address)
        self._cleanups.add(cleanup)

        def failed(failure: Failure) -> None:
            if failure.check(StoreError):
                self.log.warn(
                    "Cleanup of the session of {client_id} failed: {why}; its AUTH and "
                    "ROUTE expire with the session TTL",
                    client_id=client_id,
                    why=failure.getErrorMessage(),
                )
            else:
                self.log.failure(
                    "Cleanup of the session of {client_id} failed", failure, client_id=client_id
                )

        def done(result: object) -> None:
            self._cleanups.discard(cleanup)

        cleanup.addErrback(failed)
        cleanup.addBoth(done)

    def idle_timed_out(self, session: Session) -> None:
        self.log.debug(
            "Closing the connection of {client_id}: silent for {idle} s",
            client_id=session.client_id,
            idle=self.settings.idle_timeout,
        )

    # --- authentication ---------------------------------------------------------

    def authenticate(self, session: Session, auth: Auth) -> None:
        """Check AUTH (version, capacity, token in constant time), bind the
        session in the store, replace an older connection of the same client,
        and answer AUTH_OK or AUTH_FAIL."""
        session.state = State.AUTHENTICATING
        ensureDeferred(self._authenticate(session, auth)).addErrback(self._auth_crashed, session)

    async def _authenticate(self, session: Session, auth: Auth) -> None:
        if auth.version not in SUPPORTED_VERSIONS:
            supported = ", ".join(str(v) for v in sorted(SUPPORTED_VERSIONS))
            self._refuse(
                session,
                auth,
                AuthFailCode.VERSION,
                f"protocol version {auth.version} is not supported; this server speaks {supported}",
            )
            return
        if not self.accepting:
            self._refuse(session, auth, AuthFailCode.UNAVAILABLE, "the server is shutting down")
            return
        client_id, token = auth.client_id, auth.token
        # No token is ever issued for a clientId outside the rule: refused
        # without asking the store.
        if not is_client_id(client_id) or not token:
            self._refuse(
                session,
                auth,
                AuthFailCode.BAD_TOKEN,
                f"clientId must be {CLIENT_ID.text}, and token must not be empty",
            )
            return
        if self._full(client_id):
            self._refuse(session, auth, AuthFailCode.FULL, "the server is at capacity")
            return
        server = self.server_address
        assert server is not None, "the RPC address is set before clients are accepted"
        # While a login is checked, Push must not take this client for gone and
        # drop the ROUTE the login is writing.
        self._authenticating[client_id] = self._authenticating.get(client_id, 0) + 1
        try:
            await self._check_and_bind(session, auth, server)
        finally:
            count = self._authenticating.pop(client_id) - 1
            if count:
                self._authenticating[client_id] = count

    async def _check_and_bind(self, session: Session, auth: Auth, server: str) -> None:
        client_id, token = auth.client_id, auth.token
        try:
            # Checks the token and binds in one store call (one round trip).
            bound = await self.store.bind_session(
                client_id, token, server, self.settings.session_ttl
            )
        except StoreError as e:
            skipped = self.refusals_log.allow()
            if skipped is not None:
                self.log.warn(
                    "Cannot check the token of {client_id}: {why} "
                    "({skipped} refusals not logged before this one)",
                    client_id=untrusted(client_id),
                    why=str(e),
                    skipped=skipped,
                )
            self._refuse(
                session, auth, AuthFailCode.UNAVAILABLE, "the server cannot check tokens now"
            )
            return
        if not bound:
            self._refuse(session, auth, AuthFailCode.BAD_TOKEN, "the token is wrong or expired")
            return
        if session.state != State.AUTHENTICATING or not self.accepting or self._full(client_id):
            # Closed, draining or full while binding: undo the binding at once,
            # unless a live session of the client is here (it owns it now).
            if client_id not in self.sessions:
                self._end_session(client_id, token)
            if session.state == State.AUTHENTICATING:
                if self.accepting:
                    self._refuse(session, auth, AuthFailCode.FULL, "the server is at capacity")
                else:
                    self._refuse(
                        session, auth, AuthFailCode.UNAVAILABLE, "the server is shutting down"
                    )
            return
        self._activate(session, client_id, token, auth.version)

    def _full(self, client_id: str) -> bool:
        return len(self.sessions) >= self.settings.capacity and client_id not in self.sessions

    def _refuse(self, session: Session, auth: Auth, code: AuthFailCode, reason: str) -> None:
        self.metrics.refused(code)
        skipped = self.refusals_log.allow()
        if skipped is not None:
            self.log.info(
                "AUTH of {client_id} from {peer} refused: {code} "
                "({skipped} refusals not logged before this one)",
                client_id=untrusted(auth.client_id),
                peer=session.channel.peer,
                code=code.name,
                skipped=skipped,
            )
        session.channel.close(AuthFail(code, reason))

    def _auth_crashed(self, failure: Failure, session: Session) -> None:
        self.log.failure("Authenticating a connection failed", failure)
        if session.state == State.AUTHENTICATING:
            self.metrics.refused(AuthFailCode.UNAVAILABLE)
            session.channel.close(AuthFail(AuthFailCode.UNAVAILABLE, "internal error"))

    def _activate(self, session: Session, client_id: str, token: str, version: int) -> None:
        old = self.sessions.get(client_id)
        self.sessions[client_id] = session
        if old is not None:
            # The old connection's cleanup finds the table pointing here and
            # leaves the store alone: the session is this one now.
            self._kick(old, KickReason.REPLACED)
        else:
            self.metrics.sessions(len(self.sessions))
        session.client_id = client_id
        session.token = token
        session.version = version
        session.in_flight = {}
        session.state = _ACTIVE
        session.channel.activate(self._auth_ok)
        # No log line per login: twistd writes debug events too, and at
        # thousands of logins a second that is work on the connect path;
        # pigeonpush_server_auth_total{result="ok"} counts them.
        self.metrics.authenticated()
        self.pull(session)
        self.topics.catch_up(session)

    # --- pushing (PushGateway) -----------------------------------------------------

    def push(
        self, items: Sequence[PushItem], *, pulled: bool = False
    ) -> Deferred[list[PushStatus]]:
        """Write each item to its client's connection; a status per item, in order.

        OFFLINE: no connection here (a stale ROUTE to this server is dropped).
        WINDOW_FULL: the connection has its window in flight or its socket is
        full; the message stays pending. Items without a body are completed
        from the store in one call (NO_BODY when the body expired). A message
        already in flight on the connection is not written again, nor a live
        one (not ``pulled``) that a pull of this connection wrote already: when
        delivery or a direct stream lags behind, a heartbeat's pull finds its
        messages pending first, and the live copy comes after their ACK.
        Fails with StoreError only when bodies were needed and the store did
        not answer.

        Consecutive items for one connection (a burst) go out in one
        ``send_frames``, in order: one transport call rather than one per frame.
        """
        statuses: list[PushStatus] = [_OFFLINE] * len(items)
        offline: set[str] = set()
        missing: list[int] = []
        sessions = self.sessions
        window = self._window
        now = self.clock.seconds()
        writes = _Writes()
        for index, item in enumerate(items):
            session = sessions.get(item.client_id)
            if session is None:
                if item.client_id not in self._authenticating:
                    offline.add(item.client_id)
                continue
            in_flight = session.in_flight
            if session.state != _ACTIVE or in_flight is None:
                continue  # closing: its own cleanup clears the route
            waiting = session.waiting
            if item.message_id in in_flight or (waiting and item.message_id in waiting):
                # In flight, or failed and waiting for its redelivery here.
                statuses[index] = _WRITTEN
            elif not pulled and session.pulled and _written_by_pull(session, item.message_id):
                statuses[index] = _WRITTEN
            elif session.write_paused or len(in_flight) >= window:
                statuses[index] = _WINDOW_FULL
                session.pull_more = True  # pulled once the window or socket drains
            elif not item.has_body:
                missing.append(index)
            else:
                status = statuses[index] = self._write(
                    writes,
                    session,
                    in_flight,
                    item.message_id,
                    item.title,
                    item.text,
                    item.extras,
                    now,
                    item.topic,
                )
                if pulled and status is _WRITTEN:
                    _remember_pulled(session, item.message_id)
        self._flush_writes(writes)
        answer: Deferred[list[PushStatus]]
        if missing:
            reading = self.store.bodies([items[index].message_id for index in missing])
            answer = reading.addCallback(self._with_bodies, items, statuses, missing, pulled)
        else:
            self._count(statuses)
            answer = succeed(statuses)
        if offline:
            # Answer once the stale routes are gone, so that delivery does not
            # read them again; a failed drop is logged and does not fail the push.
            dropping = self._drop_routes(offline)
            answer = answer.addCallback(_after, dropping)
        return answer

    def _with_bodies(
        self,
        bodies: list[Message | None],
        items: Sequence[PushItem],
        statuses: list[PushStatus],
        missing: list[int],
        pulled: bool,
    ) -> list[PushStatus]:
        now = self.clock.seconds()
        writes = _Writes()
        for index, body in zip(missing, bodies, strict=True):
            item = items[index]
            session = self.sessions.get(item.client_id)
            in_flight = session.in_flight if session is not None else None
            if session is None or session.state != _ACTIVE or in_flight is None:
                statuses[index] = _OFFLINE  # gone while the bodies were read
            elif (
                item.message_id in in_flight
                or (session.waiting and item.message_id in session.waiting)
                or (not pulled and session.pulled and _written_by_pull(session, item.message_id))
            ):
                statuses[index] = _WRITTEN
            elif body is None:
                statuses[index] = _NO_BODY
            elif session.write_paused or len(in_flight) >= self._window:
                statuses[index] = _WINDOW_FULL
                session.pull_more = True
            else:
                status = statuses[index] = self._write(
                    writes,
                    session,
                    in_flight,
                    item.message_id,
                    body.title,
                    body.text,
                    body.extras,
                    now,
                )
                if pulled and status is _WRITTEN:
                    _remember_pulled(session, item.message_id)
        self._flush_writes(writes)
        self._count(statuses)
        return statuses

    def write_frame(self, session: Session, message_id: str, frames: TopicFrames) -> PushStatus:
        """Write an encoded PUSH (one encoding shared by many sessions: a topic
        message) to ``session``, within its window, as ``push`` writes an item;
        WINDOW_FULL leaves it for the next catch-up."""
        in_flight = session.in_flight
        if session.state != _ACTIVE or in_flight is None:
            status = _OFFLINE
        elif message_id in in_flight or (session.waiting and message_id in session.waiting):
            status = _WRITTEN
        elif session.write_paused or len(in_flight) >= self._window:
            status = _WINDOW_FULL
        else:
            session.channel.send(frames.for_version(session.version))
            in_flight[message_id] = self.clock.seconds()
            if self._check_timer is None:
                self._watch_deliveries()
            status = _WRITTEN
        return status  # counted by the caller, once per topic entry (``count_pushes``)

    def _write(
        self,
        writes: _Writes,
        session: Session,
        in_flight: dict[str, float],
        message_id: str,
        title: str,
        text: str,
        extras: Mapping[str, str],
        now: float,
        topic: str = "",
    ) -> PushStatus:
        """Encode one PUSH and add it to ``writes`` (sent by ``_flush_writes``,
        before anything else can write to the connection); it is in flight
        from now on. TOO_LARGE (and dropped) when it cannot be encoded or is
        over the frame limit."""
        if session.version < TOPIC_VERSION:
            topic = ""  # an older client's PUSH has no topic
        try:
            data = encode_push(message_id, title, text, extras, topic)
        except EncodeError as e:
            why = str(e)
        else:
            size = len(data) - PREFIX_BYTES
            if size <= self._max_frame:
                if writes.session is session:
                    writes.frames.append(data)
                else:
                    self._flush_writes(writes)
                    writes.session = session
                    writes.frames = [data]
                in_flight[message_id] = now
                return _WRITTEN
            why = f"frame of {size} bytes is over the limit of {self._max_frame}"
        # It can never be written to this client: take it out of WAIT_ACK, or
        # it would come back first in every pull and block the rest.
        self.log.warn(
            "Message {message_id} cannot be written to {client_id}: {why}; "
            "dropped from its pending messages",
            message_id=message_id,
            client_id=session.client_id,
            why=why,
        )
        assert session.client_id is not None
        self._drop(session.client_id, [message_id], DropReason.TOO_LARGE)
        return _TOO_LARGE

    def _flush_writes(self, writes: _Writes) -> None:
        """Send the frames gathered for one connection, in one call."""
        session, frames = writes.session, writes.frames
        if session is None or not frames:
            return
        writes.frames = []
        if len(frames) == 1:
            session.channel.send(frames[0])
        else:
            session.channel.send_frames(frames)
        if self._check_timer is None:
            self._watch_deliveries()

    def count_pushes(self, statuses: list[PushStatus]) -> None:
        """The metrics of writes made with ``write_frame``."""
        self._count(statuses)

    def _count(self, statuses: list[PushStatus]) -> None:
        for status, count in Counter(statuses).items():
            self.metrics.pushed(status, count)

    def _drop_routes(self, client_ids: set[str]) -> Deferred[None]:
        """Delete ROUTE of clients that have no connection here, where it still
        names this server (delivery had a stale route). Never fails."""
        server = self.server_address
        assert server is not None
        drops = [
            self.store.drop_route(client_id, server).addErrback(self._drop_route_failed, client_id)
            for client_id in client_ids
        ]
        return DeferredList(drops).addCallback(lambda _: None)

    def _drop_route_failed(self, failure: Failure, client_id: str) -> None:
        if failure.check(StoreError):
            self.log.warn(
                "Dropping the stale route of {client_id} failed: {why}",
                client_id=client_id,
                why=failure.getErrorMessage(),
            )
        else:
            self.log.failure(
                "Dropping the stale route of {client_id} failed", failure, client_id=client_id
            )

    def kick(self, client_id: str, reason: int) -> Deferred[bool]:
        """End the client's session with KICK; False if it has none here.
        ValueError for a reason that is not a KickReason."""
        kick_reason = KickReason(reason)
        session = self.sessions.get(client_id)
        if session is None or session.state != _ACTIVE:
            return succeed(False)
        self._kick(session, kick_reason)
        return succeed(True)

    def _kick(self, session: Session, reason: KickReason) -> None:
        self.metrics.kicked(reason)
        session.channel.close(Kick(reason, _KICK_TEXT[reason]))

    # --- ACK, PING, pull -----------------------------------------------------------

    def acked(self, session: Session, message_id: str) -> None:
        """An ACK: the id leaves the window and (batched) WAIT_ACK. An id not in
        flight here is removed from WAIT_ACK too: it may be from an earlier
        connection."""
        in_flight = session.in_flight
        assert in_flight is not None and session.client_id is not None
        written = in_flight.pop(message_id, None)
        if written is not None:
            self.metrics.acked(self.clock.seconds() - written)
        elif session.waiting:
            session.waiting.pop(message_id, None)  # a late ACK of a failed PUSH
        if not self.topics.settled(session, (message_id,), acked=True):
            # A message to the clientId (or a topic entry of an earlier
            # session): WAIT_ACK and its receipt, batched per turn.
            self.acks.add(session.client_id, message_id)
        if len(in_flight) <= self._window // 2:
            if session.pull_more and not session.pulling:
                self.pull(session)
            self.topics.window_freed(session)

    def subscription_requested(self, session: Session, frame: Subscribe | Unsubscribe) -> None:
        """SUBSCRIBE / UNSUBSCRIBE: only topics the operator allows
        (``--device-topics``); answered with SUBSCRIPTION once the store has it."""
        client_id = session.client_id
        assert client_id is not None
        request_id, topic = frame.request_id, frame.topic
        if not self.settings.allows_device_topic(topic):
            session.channel.send(
                encode(
                    Subscription(
                        request_id,
                        SubscriptionCode.NOT_ALLOWED,
                        "devices may not choose this topic (--device-topics)",
                    )
                )
            )
            return
        if isinstance(frame, Subscribe):
            changing: Deferred[Any] = self.store.subscribe(
                topic, [client_id], self.settings.max_topics_per_device
            )
        else:
            changing = self.store.unsubscribe(topic, [client_id])

        def done(result: object) -> None:
            refused = isinstance(result, SubscriptionChange) and result.refused
            if refused:
                answer = Subscription(
                    request_id,
                    SubscriptionCode.TOO_MANY,
                    f"at most {self.settings.max_topics_per_device} topics per device",
                )
            else:
                answer = Subscription(request_id, SubscriptionCode.OK)
            if session.state == _ACTIVE:
                session.channel.send(encode(answer))
                self.topics.catch_up(session)  # its topics changed: index them now

        def failed(failure: Failure) -> None:
            if not failure.check(StoreError):
                self.log.failure(
                    "A subscription of {client_id} failed", failure, client_id=client_id
                )
            if session.state == _ACTIVE:
                answer = Subscription(request_id, SubscriptionCode.UNAVAILABLE, "try again later")
                session.channel.send(encode(answer))

        changing.addCallbacks(done, failed)

    def pinged(self, session: Session) -> None:
        """A PING: the connection is idle; pull at most once per heartbeat."""
        if self.clock.seconds() - session.last_pull >= self.settings.heartbeat:
            self.pull(session)
            self.topics.catch_up(session, heartbeat=True)

    def writable(self, session: Session) -> None:
        """The connection's socket drained: continue a pull or a topic
        catch-up that had more."""
        if session.pull_more and not session.pulling:
            self.pull(session)
        self.topics.window_freed(session)

    def pull(self, session: Session) -> None:
        """Ask delivery for the client's pending messages and push them, oldest
        first, within the free part of the window. Pulls of many connections
        are batched (``PullBatcher``): one call to delivery per few ms."""
        source = self.pull_source
        in_flight = session.in_flight
        if source is None or session.pulling or session.state != _ACTIVE or in_flight is None:
            return
        free = self._window - len(in_flight)
        if free <= 0 or session.write_paused:
            session.pull_more = True  # continued when the window or socket drains
            return
        assert session.client_id is not None
        session.pulling = True
        session.pull_more = False
        session.last_pull = self.clock.seconds()
        batcher = self._batcher
        if batcher is None or batcher.source is not source:
            batcher = self._batcher = PullBatcher(source, self.clock)
        skip = [*in_flight, *session.waiting] if session.waiting else list(in_flight)
        pulling = batcher.pull(session.client_id, free, skip)
        pulling.addCallbacks(
            self._pulled, self._pull_failed, callbackArgs=(session,), errbackArgs=(session,)
        )

    def _pulled(
        self, result: tuple[list[PushItem], bool], session: Session
    ) -> Deferred[None] | None:
        session.pulling = False
        items, more = result
        self._pull_retry_delay = PULL_RETRY_MIN  # the source answers again
        if session.state != _ACTIVE or self.sessions.get(session.client_id or "") is not session:
            self.metrics.pulled(0)
            return None
        session.pull_more = more
        items = [item for item in items if item.client_id == session.client_id]
        self.metrics.pulled(len(items))
        if not items:
            # Nothing came but more is pending: the batch's answer was full, or
            # only expired ids were read (and cleaned). Ask once more now
            # rather than at the next PING; a second empty answer in a row
            # waits for the next trigger, so a stuck store cannot spin us.
            if more and session not in self._pulled_empty:
                self._pulled_empty.add(session)
                self.pull(session)
            else:
                self._pulled_empty.discard(session)
            return None
        self._pulled_empty.discard(session)
        pushing = self.push(items, pulled=True)

        def pushed(statuses: list[PushStatus]) -> None:
            # Window still half empty after a pull that said "more" (ids that
            # were in flight, messages that cannot be written): pull again now
            # rather than wait for ACKs that will not come.
            if (
                session.pull_more
                and _WRITTEN in statuses
                and session.in_flight is not None
                and len(session.in_flight) <= self._window // 2
            ):
                self.pull(session)

        return pushing.addCallbacks(pushed, self._pull_failed, errbackArgs=(session,))

    def _pull_failed(self, failure: Failure, session: Session) -> None:
        """Keep the client for the next retry round (one timer for all)."""
        session.pulling = False
        self.metrics.pull_failed()
        if session.state == _ACTIVE and self.sessions.get(session.client_id or "") is session:
            self._pull_retry.add(session)
            if self._pull_retry_timer is None and self.accepting:
                self._pull_retry_timer = self.clock.callLater(
                    self._pull_retry_delay, self._retry_pulls
                )
        self._pull_failures += 1
        now = self.clock.seconds()
        if now - self._pull_failure_logged_at < PULL_FAILURE_LOG_INTERVAL:
            return
        self.log.warn(
            "Pulling pending messages for {client_id} failed: {why} "
            "({failures} pull failures since the last report); retried in {delay} s",
            client_id=session.client_id,
            why=failure.getErrorMessage(),
            failures=self._pull_failures,
            delay=self._pull_retry_delay,
        )
        self._pull_failures = 0
        self._pull_failure_logged_at = now

    def _retry_pulls(self) -> None:
        """Pull again for every client whose pull failed (they share the
        ``PullBatcher``'s calls); the next round, if this one fails too, comes
        after twice the delay, capped at half a heartbeat."""
        self._pull_retry_timer = None
        self._pull_retry_delay = min(self._pull_retry_delay * 2, self.settings.heartbeat / 2)
        waiting, self._pull_retry = self._pull_retry, set()
        for session in waiting:
            # (A full window or socket sets pull_more: its ACKs or its drain
            # pull it then.)
            self.pull(session)

    def pull_source_ready(self) -> None:
        """The pull source can answer again (a delivery node appeared): retry
        the failed pulls now rather than at the end of the backoff."""
        self._pull_retry_delay = PULL_RETRY_MIN
        if not self._pull_retry:
            return
        timer, self._pull_retry_timer = self._pull_retry_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._retry_pulls()

    def stop_timers(self) -> None:
        """No more pull retries, ACK timeouts or redeliveries (the server is
        stopping)."""
        self._pull_retry.clear()
        for timer in (self._pull_retry_timer, self._check_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._pull_retry_timer = self._check_timer = None
        self.topics.stop()

    # --- failed deliveries: NACK, ACK timeout, redelivery ------------------------------

    def nacked(self, session: Session, message_id: str, retry_after: float) -> None:
        """A NACK: the message failed on the device; it leaves the window and
        comes again after ``retry_after`` seconds (within bounds), or after
        the backoff when that is 0. A NACK of an id not in flight here is
        ignored."""
        self.metrics.nacked()
        in_flight = session.in_flight
        assert in_flight is not None
        if message_id in in_flight:
            self._delivery_failed(session, [message_id], retry_after)

    def uplinked(self, session: Session, frame: Uplink) -> None:
        """An UPLINK: the receiver stores it; its answer (UPLINK_ACK, or ERROR
        and the close) goes back if the session is still open."""
        assert session.client_id is not None
        answer = self.uplinks.receive(session, session.client_id, session.version, frame)
        answer.addCallback(send_answer, session)

    def _check_deliveries(self) -> None:
        """The one timer for every connection: PUSHes not ACKed within
        ``--ack-timeout`` fail, and failed messages whose time has come are
        released for another pull. Runs while any connection has something
        in flight or waiting."""
        self._check_timer = None
        now = self.clock.seconds()
        deadline = now - self.settings.ack_timeout
        busy = False
        for session in list(self.sessions.values()):
            if session.state != _ACTIVE:
                continue
            in_flight = session.in_flight
            if in_flight:
                busy = True
                # A client whose socket is full is not reading: its PUSHes
                # may not even have reached it, so they do not time out.
                if not session.write_paused:
                    late = []
                    for message_id, written in in_flight.items():  # oldest first
                        if written > deadline:
                            break
                        late.append(message_id)
                    if late:
                        self.metrics.ack_timed_out(len(late))
                        self._delivery_failed(session, late, 0.0)
            if session.waiting:
                busy = True
                self._release_due(session, now)
        if busy and self._check_timer is None:
            self._watch_deliveries()

    def _watch_deliveries(self) -> None:
        """Start the check timer (not once the server is stopping)."""
        if self.accepting:
            self._check_timer = self.clock.callLater(self._check_interval, self._check_deliveries)

    def _delivery_failed(
        self, session: Session, message_ids: list[str], retry_after: float
    ) -> None:
        """Move the ids from the window to ``waiting`` (held until their
        failure counts are stored), count the failures in the store, and fill
        the window that just freed up."""
        in_flight = session.in_flight
        client_id = session.client_id
        assert in_flight is not None and client_id is not None
        waiting = session.waiting
        if waiting is None:
            waiting = session.waiting = {}
        for message_id in message_ids:
            in_flight.pop(message_id, None)
            waiting[message_id] = _HELD
        failed_at = self.clock.seconds()
        counting = self.store.add_failures(
            [(client_id, message_id) for message_id in message_ids], FAILURE_COUNT_TTL
        )
        counting.addCallbacks(
            self._failures_counted,
            self._failures_not_counted,
            callbackArgs=(session, message_ids, failed_at, retry_after),
            errbackArgs=(session, message_ids, failed_at, retry_after),
        )
        if self._check_timer is None:
            self._watch_deliveries()
        if session.pull_more and not session.pulling:
            self.pull(session)

    def _failures_counted(
        self,
        counts: list[int],
        session: Session,
        message_ids: list[str],
        failed_at: float,
        retry_after: float,
    ) -> None:
        waiting = session.waiting
        if session.state != _ACTIVE or not waiting:
            return  # gone: the counts are stored, the next connection goes on
        given_up = []
        for message_id, count in zip(message_ids, counts, strict=True):
            if message_id not in waiting:
                continue  # ACKed after all
            if count >= self.settings.max_attempts:
                given_up.append(message_id)
            else:
                waiting[message_id] = failed_at + _redelivery_delay(count, retry_after)
        if given_up:
            self._give_up(session, given_up)

    def _failures_not_counted(
        self,
        failure: Failure,
        session: Session,
        message_ids: list[str],
        failed_at: float,
        retry_after: float,
    ) -> None:
        if failure.check(StoreError):
            self.log.warn(
                "Counting {count} failed deliveries to {client_id} failed: {why}; "
                "they are retried without counting",
                count=len(message_ids),
                client_id=session.client_id,
                why=failure.getErrorMessage(),
            )
        else:
            self.log.failure(
                "Counting failed deliveries to {client_id} failed",
                failure,
                client_id=session.client_id,
            )
        waiting = session.waiting
        if waiting:
            for message_id in message_ids:
                if message_id in waiting:
                    waiting[message_id] = failed_at + _redelivery_delay(1, retry_after)

    def _give_up(self, session: Session, message_ids: list[str]) -> None:
        """Drop messages that failed ``--max-attempts`` times from the
        client's pending messages (their receipt says ``failed``); they stay
        out of the window and of pulls until the store has done it."""
        client_id = session.client_id
        assert client_id is not None
        self.metrics.gave_up(len(message_ids))
        self.log.warn(
            "Giving up on {count} messages for {client_id} after {attempts} failed "
            "deliveries: {message_ids}",
            count=len(message_ids),
            client_id=client_id,
            attempts=self.settings.max_attempts,
            message_ids=message_ids,
        )
        self.topics.settled(session, message_ids, acked=False)
        dropping = self._drop(client_id, message_ids, DropReason.FAILED)

        def done(dropped: bool) -> None:
            waiting = session.waiting
            if not waiting:
                return
            for message_id in message_ids:
                if dropped:
                    waiting.pop(message_id, None)
                elif message_id in waiting:
                    # Not dropped (store down): it comes again and fails again.
                    waiting[message_id] = self.clock.seconds() + REDELIVERY_BASE

        dropping.addCallback(done)

    def _drop(self, client_id: str, message_ids: list[str], reason: DropReason) -> Deferred[bool]:
        """``drop_pending`` of the client's ``message_ids``: True once done;
        False (logged) when the store failed."""
        dropping = self.store.drop_pending(
            [(client_id, message_id, reason.value) for message_id in message_ids]
        )

        def failed(failure: Failure) -> bool:
            if failure.check(StoreError):
                self.log.warn(
                    "Dropping {count} messages ({reason}) of {client_id} failed: {why}",
                    count=len(message_ids),
                    reason=reason.value,
                    client_id=client_id,
                    why=failure.getErrorMessage(),
                )
            else:
                self.log.failure(
                    "Dropping messages of {client_id} failed", failure, client_id=client_id
                )
            return False

        return dropping.addCallbacks(lambda _: True, failed)

    def _release_due(self, session: Session, now: float) -> None:
        """Failed messages whose retry time has come leave ``waiting``; a
        pull brings them back, oldest first, with the rest of the pending
        messages. Not while a pull is running (its answer skips them)."""
        waiting = session.waiting
        if session.pulling or not waiting:
            return
        due = [message_id for message_id, at in waiting.items() if at <= now]
        if not due:
            return
        for message_id in due:
            del waiting[message_id]
        self.metrics.redelivered(len(due))
        self.pull(session)

    # --- periodic work -------------------------------------------------------------

    def refresh_sessions(self) -> Deferred[None]:
        """Extend AUTH and ROUTE of every live session (batched); failures are
        logged here, so a periodic caller keeps running."""
        return ensureDeferred(self._refresh_sessions())

    async def _refresh_sessions(self) -> None:
        client_ids = list(self.sessions)
        calls = [
            self.store.refresh_sessions(
                client_ids[start : start + REFRESH_BATCH], self.settings.session_ttl
            )
            for start in range(0, len(client_ids), REFRESH_BATCH)
        ]
        results = await DeferredList(calls, consumeErrors=True)
        failures = [_failure(value) for ok, value in results if not ok]
        if failures:
            self.log.warn(
                "Refreshing {count} of {total} session batches failed: {why}",
                count=len(failures),
                total=len(calls),
                why=failures[0].getErrorMessage(),
            )

    # --- graceful stop -------------------------------------------------------------

    def drain(self, period: float) -> Deferred[None]:
        """Refuse new sessions, KICK(SHUTTING_DOWN) every client spread evenly
        over ``period`` seconds (a batch per tick, one timer for all), close
        what is left, and wait (bounded) for the sessions' store cleanups."""
        return ensureDeferred(self._drain(period))

    async def _drain(self, period: float) -> None:
        self.accepting = False
        self.stop_timers()
        for session in list(self.all_sessions):
            if session.state == State.AWAITING_AUTH:
                session.channel.close(None)
        victims = [session for session in self.sessions.values() if session.state == _ACTIVE]
        self.log.info("Draining {count} clients over {period} s", count=len(victims), period=period)
        if victims:
            ticks = max(1, min(len(victims), math.ceil(period / DRAIN_TICK)))
            per_tick = math.ceil(len(victims) / ticks)
            interval = period / ticks
            batches = [victims[i : i + per_tick] for i in range(0, len(victims), per_tick)]
            for number, batch in enumerate(batches):
                for session in batch:
                    if session.state == _ACTIVE:
                        self._kick(session, KickReason.SHUTTING_DOWN)
                if number + 1 < len(batches):
                    await deferLater(self.clock, interval, lambda: None)
        await self._closed(DRAIN_GRACE)
        for session in list(self.all_sessions):
            session.channel.abort()
        await self._closed(DRAIN_GRACE)
        if self._cleanups:
            waiting = DeferredList(list(self._cleanups), consumeErrors=True)
            waiting.addTimeout(CLEANUP_TIMEOUT, self.clock)
            try:
                await waiting
            except DeferTimeoutError:
                self.log.warn(
                    "{count} session cleanups did not finish within {timeout} s; "
                    "those sessions expire with the session TTL",
                    count=len(self._cleanups),
                    timeout=CLEANUP_TIMEOUT,
                )

    async def _closed(self, timeout: float) -> None:
        """Until every connection is closed, at most ``timeout`` seconds."""
        if not self.all_sessions:
            return
        waiting: Deferred[None] = Deferred()
        self._all_closed.append(waiting)
        waiting.addTimeout(timeout, self.clock)
        try:
            await waiting
        except DeferTimeoutError:
            self._all_closed.remove(waiting)


@attrs.define(slots=True, eq=False)
class _Writes:
    """The PUSHes of one ``push`` call not sent yet: those of one connection
    (consecutive items for it go out in one ``send_frames``)."""

    session: Session | None = None
    frames: list[bytes] = attrs.Factory(list)


def _redelivery_delay(failures: int, retry_after: float) -> float:
    """Seconds from a failure to the next attempt: the client's retry-after
    (bounded), or the backoff for a message that failed ``failures`` times."""
    if retry_after > 0:
        return min(max(retry_after, RETRY_AFTER_MIN), RETRY_AFTER_MAX)
    return min(REDELIVERY_BASE * 2.0 ** min(failures - 1, 30), REDELIVERY_CAP)


def _after(value: _T, waiting: Deferred[None]) -> Deferred[_T]:
    """``value``, once ``waiting`` has fired."""
    return waiting.addCallback(lambda _: value)


def _failure(value: object) -> Failure:
    """The Failure a DeferredList reports for a failed call."""
    assert isinstance(value, Failure)
    return value


#: How many ids a session keeps of those its pulls wrote (``Session.pulled``):
#: a few windows' worth, kept only by sessions that pulled something.
PULLED_MEMORY = 128


def _remember_pulled(session: Session, message_id: str) -> None:
    pulled = session.pulled
    if pulled is None:
        pulled = session.pulled = {}
    pulled[message_id] = None
    if len(pulled) > PULLED_MEMORY:
        del pulled[next(iter(pulled))]  # the oldest


def _written_by_pull(session: Session, message_id: str) -> bool:
    """Whether a pull of ``session`` wrote ``message_id`` (forgotten now: the
    live copy comes once)."""
    pulled = session.pulled
    if pulled is None or message_id not in pulled:
        return False
    del pulled[message_id]
    return True
