"""One connection to Redis: txredisapi's protocol on an endpoint of our own.

txredisapi's ``HiredisProtocol`` parses replies (with hiredis); commands are
encoded here (``encode_commands``). txredisapi's connection factory is not
used: it reconnects on the global reactor and keeps a call made while Redis is
away waiting, without bound, for the next connection. Here instead:

- the reactor is a parameter (connects, timeouts);
- the connection opens on first use and again on the first use after it was
  lost; a call made while Redis cannot be reached fails with StoreError;
- a call in flight when the connection drops, or that gets no answer within
  its timeout, fails with StoreError (a timeout also drops the connection,
  since later replies could no longer be matched to their calls). The timeout
  measures Redis, not the reactor: see ``ReplyDeadline``;
- a batch of commands goes out in one write and its replies come back as one
  list: one round trip for N commands.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import hiredis  # noqa: F401  (txredisapi's HiredisProtocol needs it)
import txredisapi
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from pigeonpush.store.address import RedisAddress
from pigeonpush.store.interface import StoreError
from pigeonpush.tls import ClientTLS, client_endpoint, load_trust_root

#: A Redis command: its name then its arguments, all already strings.
Command = Sequence[str]
#: What Redis answered: str, int, None, a list of those, or a ResponseError.
Reply = Any
ResponseError = txredisapi.ResponseError

log = Logger()


@attrs.frozen(slots=True)
class Script:
    """A Lua script, run with EVALSHA (it is loaded on every new connection)."""

    name: str
    source: str
    sha: str = attrs.field()

    @sha.default
    def _sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()

    def call(self, keys: Sequence[str], args: Sequence[str]) -> Command:
        return ("EVALSHA", self.sha, str(len(keys)), *keys, *args)

    def call_source(self, keys: Sequence[str], args: Sequence[str]) -> Command:
        return ("EVAL", self.source, str(len(keys)), *keys, *args)


def is_error(reply: Reply, code: str | None = None) -> bool:
    """Whether ``reply`` is an error reply (with that code, e.g. ``NOSCRIPT``)."""
    if not isinstance(reply, ResponseError):
        return False
    return code is None or str(reply).startswith(code)


def encode_commands(commands: Sequence[Command]) -> bytes:
    """Commands in the Redis protocol (RESP), as one payload. The same bytes as
    txredisapi's encoder, which loops over every token of every argument and
    was the largest single cost of the services' Redis traffic."""
    parts: list[bytes] = []
    append = parts.append
    for command in commands:
        append(b"*%d\r\n" % len(command))
        for word in command:
            raw = word if isinstance(word, bytes) else str(word).encode("utf-8")
            append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


@attrs.define(slots=True, eq=False)
class _Batch:
    size: int
    deferred: Deferred[list[Reply]]
    replies: list[Reply] = attrs.Factory(list)


class BatchReplies:
    """What a connection does with the replies its parser reads: answer whole
    batches in order. Mixed in before a txredisapi protocol class, whose
    ``replyReceived`` it overrides (see ``RedisProtocol``)."""

    transport: Any
    connected: int

    def _init_batches(self) -> None:
        #: bytes read from Redis so far (``ReplyDeadline`` watches it move)
        self.received = 0
        self._batches: deque[_Batch] = deque()
        self._aborted = False
        self._closing: str | None = None
        self._on_lost: list[Callable[[], None]] = []

    def connectionMade(self) -> None:
        """RedisConnection sends AUTH and SELECT itself (txredisapi's would,
        through its own factory). Batches go out as one write each and wait
        for their answer, so Nagle's algorithm would only hold a small write
        back (tens of milliseconds with delayed ACKs)."""
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)

    @property
    def usable(self) -> bool:
        transport = self.transport
        return bool(
            self.connected
            and not self._aborted
            and transport is not None
            and not getattr(transport, "disconnecting", 0)
        )

    def send(
        self, commands: Sequence[Command], canceller: Callable[[Deferred[Any]], None] | None = None
    ) -> Deferred[list[Reply]]:
        """Write ``commands`` at once; fires with their replies, in order."""
        try:
            payload = encode_commands(commands)
        except UnicodeEncodeError as e:
            return fail(ValueError(f"cannot send to Redis: {e}"))
        batch = _Batch(len(commands), Deferred(canceller))
        self._batches.append(batch)
        self.transport.write(payload)
        return batch.deferred

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        self.received += len(data)
        super().dataReceived(data, unpause)  # type: ignore[misc]

    def replyReceived(self, reply: Reply) -> None:
        if not self._batches:
            # Nothing was asked: handing this to the next caller would shift
            # every later reply by one. Drop the connection instead.
            log.error("Unexpected reply from Redis; dropping the connection")
            self.abort()
            return
        batch = self._batches[0]
        batch.replies.append(reply)
        if len(batch.replies) == batch.size:
            self._batches.popleft()
            if not batch.deferred.called:  # else it was cancelled or timed out
                batch.deferred.callback(batch.replies)

    def abort(self, _: object = None) -> None:
        """Drop the connection now. It is unusable from this moment, though
        ``connectionLost`` only comes on a later reactor turn."""
        self._aborted = True
        if self.transport is not None:
            self.transport.abortConnection()

    def close(self, why: str) -> None:
        """Close after what was written; calls still waiting fail with ``why``."""
        self._closing = why
        self.transport.loseConnection()

    def notify_lost(self, callback: Callable[[], None]) -> None:
        self._on_lost.append(callback)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        super().connectionLost(reason)  # type: ignore[misc]
        why = self._closing or f"the connection to Redis was lost: {reason.getErrorMessage()}"
        batches, self._batches = self._batches, deque()
        for batch in batches:
            if not batch.deferred.called:
                batch.deferred.errback(StoreError(why))
        callbacks, self._on_lost = self._on_lost, []
        for callback in callbacks:
            callback()


class RedisProtocol(BatchReplies, txredisapi.HiredisProtocol):  # type: ignore[misc]
    """hiredis's reply reader (txredisapi's ``HiredisProtocol``), answering
    whole batches in order.

    The only txredisapi internal this relies on is ``replyReceived(reply)``,
    called once per complete reply, decoded by ``tryConvertData`` (UTF-8 text
    to str, the rest left as bytes; no number conversion). It is checked
    against the pinned txredisapi versions by tests/test_store_redis_client.py.
    hiredis parses in C, whole chunks at a time: the pure-Python reader it
    replaced took a reactor turn per bulk string of a large reply and was 22 %
    of the notification API's profile (docs/data-model.rst, "The Redis
    client", has the figures)."""

    def __init__(self) -> None:
        txredisapi.HiredisProtocol.__init__(self, charset="utf-8", convertNumbers=False)
        self._init_batches()


class _RedisFactory(Factory):
    def buildProtocol(self, addr: object) -> RedisProtocol:
        protocol = RedisProtocol()
        protocol.factory = self
        return protocol


def redis_endpoint(
    reactor: Any, address: RedisAddress, connect_timeout: float
) -> IStreamClientEndpoint:
    """The client endpoint for ``address`` (TLS for ``rediss://``)."""
    tls = None
    if address.tls:
        trust_root = None
        if address.ca_certs is not None:
            trust_root = load_trust_root(address.ca_certs, option="ssl_ca_certs")
        tls = ClientTLS(trust_root)
    return client_endpoint(reactor, address.host, address.port, tls=tls, timeout=connect_timeout)


#: A deadline looks at its connection this many times per timeout.
DEADLINE_STEPS = 8


@attrs.define(slots=True, eq=False)
class ReplyDeadline:
    """Fails ``batch`` with StoreError (and drops the connection) once Redis
    has sent nothing on the connection for ``limit`` seconds in which the
    reactor could have read it.

    A plain timer from the call would also fire when Redis did answer in time
    but the reactor was busy elsewhere (a server writing one topic message to
    thousands of devices holds it for a while): the timer comes due before
    the request is even flushed to the socket (Twisted writes on the next
    turn) or before the waiting reply is read, and a healthy connection is
    dropped with every call on it. So the deadline looks every
    ``limit / DEADLINE_STEPS`` seconds: any bytes read since (replies to
    earlier batches included: they come first on a pipeline) start it again,
    and a look that comes late counts for at most two steps, however long
    the reactor was held. A Redis that stopped answering (stopped,
    overloaded, cut off) still fails the call ``limit`` seconds after its
    last byte when the reactor is free.
    """

    reactor: IReactorTime
    protocol: BatchReplies
    batch: Deferred[list[Reply]]
    limit: float
    address: RedisAddress
    #: seconds of the limit used up without a byte from Redis
    waited: float = 0.0
    seen: int = 0
    looked_at: float = 0.0
    call: Any = None

    def start(self, left: float) -> ReplyDeadline:
        """Arm with ``left`` seconds of the limit left (a reconnection may
        have used the rest)."""
        self.waited = self.limit - left
        self.seen = self.protocol.received
        self.looked_at = self.reactor.seconds()
        self._arm()
        return self

    def cancel(self) -> None:
        call, self.call = self.call, None
        if call is not None and call.active():
            call.cancel()

    def _arm(self) -> None:
        step = self.limit / DEADLINE_STEPS
        self.call = self.reactor.callLater(min(step, self.limit - self.waited), self._look)

    def _look(self) -> None:
        self.call = None
        if self.batch.called:
            return
        now = self.reactor.seconds()
        received = self.protocol.received
        if received != self.seen:
            self.seen = received
            self.waited = 0.0
        else:
            self.waited += min(now - self.looked_at, 2 * self.limit / DEADLINE_STEPS)
        self.looked_at = now
        if self.waited < self.limit:
            self._arm()
            return
        self.batch.errback(
            StoreError(f"Redis at {self.address} did not answer within {self.limit:g}s")
        )
        self.protocol.abort()


async def _within(
    waiting: Deferred[RedisProtocol], limit: float, reactor: IReactorTime, address: RedisAddress
) -> RedisProtocol:
    """``waiting``'s result, or StoreError after ``limit`` seconds (the
    connection attempt goes on for the calls that come next)."""
    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        waiting.cancel()

    timer = reactor.callLater(limit, expire)
    try:
        return await waiting
    except CancelledError:
        if not expired:
            raise  # the caller cancelled
        raise StoreError(f"Redis at {address} did not answer within {limit:g}s") from None
    finally:
        if timer.active():
            timer.cancel()


class RedisConnection:
    """One connection, opened on first use and reopened after it was lost."""

    def __init__(
        self,
        reactor: Any,
        address: RedisAddress,
        endpoint: IStreamClientEndpoint,
        *,
        reply_timeout: float,
        connect_timeout: float,
        scripts: Sequence[Script] = (),
    ) -> None:
        self._reactor = reactor
        self._address = address
        self._endpoint = endpoint
        self._reply_timeout = reply_timeout
        self._connect_timeout = connect_timeout
        self._scripts = tuple(scripts)
        self._protocol: RedisProtocol | None = None
        self._attempt: Deferred[RedisProtocol] | None = None
        self._waiting: list[Deferred[RedisProtocol]] = []
        self._closed = False
        self._down = False  # reported unreachable; log again only once it is back

    @property
    def connected(self) -> bool:
        return self._protocol is not None and self._protocol.usable

    def execute(
        self,
        commands: Sequence[Command],
        *,
        timeout: float | None = None,
        abort_on_cancel: bool = False,
    ) -> Deferred[list[Reply]]:
        """Send ``commands`` in one write; their replies in order. Error replies
        are values (ResponseError); a lost connection or no answer within
        ``timeout`` (default: the reply timeout) fails with StoreError.
        ``abort_on_cancel`` drops the connection if the caller cancels (for
        blocking reads, whose reply would otherwise keep it busy)."""
        return ensureDeferred(self._execute(commands, timeout, abort_on_cancel))

    async def _execute(
        self, commands: Sequence[Command], timeout: float | None, abort_on_cancel: bool
    ) -> list[Reply]:
        if not commands:
            return []
        limit = self._reply_timeout if timeout is None else timeout
        started = self._reactor.seconds()
        connecting = self._connected()
        if not connecting.called:
            # (Re)connecting counts against the call's limit too: a Redis that
            # accepts connections but does not answer (stopped, overloaded)
            # must not hold the call for a handshake's timeout and then its own.
            protocol = await _within(connecting, limit, self._reactor, self._address)
            left = limit - (self._reactor.seconds() - started)
            if left <= 0:
                raise StoreError(f"Redis at {self._address} did not answer within {limit:g}s")
        else:
            protocol = await connecting
            left = limit
        batch = protocol.send(commands, protocol.abort if abort_on_cancel else None)
        deadline = ReplyDeadline(self._reactor, protocol, batch, limit, self._address)
        deadline.start(left)
        try:
            return await batch
        finally:
            deadline.cancel()

    async def run_scripts(
        self, calls: Sequence[tuple[Script, Sequence[str], Sequence[str]]]
    ) -> list[Reply]:
        """Run scripts in one write. A server that lost its script cache (a
        restart, SCRIPT FLUSH) answers NOSCRIPT without running anything; those
        calls are sent again with their source."""
        replies = await self.execute([script.call(keys, args) for script, keys, args in calls])
        missing = [i for i, reply in enumerate(replies) if is_error(reply, "NOSCRIPT")]
        if missing:
            retried = await self.execute(
                [calls[i][0].call_source(calls[i][1], calls[i][2]) for i in missing]
            )
            for i, reply in zip(missing, retried, strict=True):
                replies[i] = reply
        return replies

    def _connected(self) -> Deferred[RedisProtocol]:
        if self._closed:
            return fail(StoreError("the store is closed"))
        protocol = self._protocol
        if protocol is not None and protocol.usable:
            return succeed(protocol)
        waiter: Deferred[RedisProtocol] = Deferred()
        self._waiting.append(waiter)
        if self._attempt is None:
            self._attempt = ensureDeferred(self._connect())
            self._attempt.addBoth(self._attempt_done)
        return waiter

    def _attempt_done(self, result: RedisProtocol | Failure) -> None:
        self._attempt = None
        waiting, self._waiting = self._waiting, []
        if isinstance(result, Failure):
            if result.check(CancelledError) or self._closed:
                result = Failure(StoreError("the store is closed"))
            elif not result.check(StoreError):
                result = Failure(
                    StoreError(f"cannot connect to Redis at {self._address}: {result.value}")
                )
            for waiter in waiting:
                waiter.errback(result)
            return
        self._protocol = result
        for waiter in waiting:
            waiter.callback(result)

    async def _connect(self) -> RedisProtocol:
        try:
            protocol = await self._endpoint.connect(_RedisFactory())
        except CancelledError:
            raise
        except Exception as e:
            if not self._down:
                self._down = True
                log.warn(
                    "Cannot connect to Redis at {address}: {error}",
                    address=str(self._address),
                    error=str(e),
                )
            raise StoreError(f"cannot connect to Redis at {self._address}: {e}") from e
        assert isinstance(protocol, RedisProtocol)
        protocol.notify_lost(lambda: self._lost(protocol))
        handshake: list[Command] = []
        if self._address.password is not None:
            if self._address.username:
                handshake.append(("AUTH", self._address.username, self._address.password))
            else:
                handshake.append(("AUTH", self._address.password))
        if self._address.db:
            handshake.append(("SELECT", str(self._address.db)))
        handshake.extend(("SCRIPT", "LOAD", script.source) for script in self._scripts)
        if handshake:
            batch = protocol.send(handshake, protocol.abort)
            deadline = ReplyDeadline(
                self._reactor, protocol, batch, self._reply_timeout, self._address
            ).start(self._reply_timeout)
            try:
                replies = await batch
            finally:
                deadline.cancel()
            for command, reply in zip(handshake, replies, strict=True):
                if is_error(reply):
                    protocol.abort()
                    what = (
                        "refused the credentials"
                        if command[0] == "AUTH"
                        else f"refused {command[0]}"
                    )
                    if not self._down:
                        self._down = True
                        log.error(
                            "Redis at {address} {what}: {reply}",
                            address=str(self._address),
                            what=what,
                            reply=str(reply),
                        )
                    raise StoreError(f"Redis at {self._address} {what}: {reply}")
        if self._down:
            log.info("Connected to Redis at {address} again", address=str(self._address))
        self._down = False
        return protocol

    def _lost(self, protocol: RedisProtocol) -> None:
        if self._protocol is protocol:
            self._protocol = None
            if not self._closed:
                log.info("Connection to Redis at {address} closed", address=str(self._address))

    def close(self) -> Deferred[None]:
        """Close the connection; calls in flight fail with StoreError."""
        self._closed = True
        if self._attempt is not None:
            self._attempt.cancel()
        protocol = self._protocol
        if protocol is None or not protocol.connected:
            return succeed(None)
        done: Deferred[None] = Deferred()
        protocol.notify_lost(lambda: done.callback(None))
        protocol.close("the store was closed")
        return done
