"""The attacks, each a bounded coroutine on its own reactor.

The runner starts every attack in a child process (``python -m
pigeonpush_abuse attack NAME ...``) so that the attacker's CPU does not delay
the legitimate client it measures; the child prints its counters as one JSON
object on stdout. Every attack stops at its deadline and aborts its
connections; none opens more than ``connections`` at once.
"""

from __future__ import annotations

import json
import random
import struct
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from zope.interface import implementer

from pigeonpush.hostport import parse_host_port
from pigeonpush.wire.codec import PREFIX_BYTES, DecodeError, decode, encode
from pigeonpush.wire.frames import (
    PING,
    PONG,
    Auth,
    AuthFail,
    AuthFailCode,
    AuthOk,
    Error,
    ErrorCode,
    Kick,
    KickReason,
    Push,
)
from pigeonpush_abuse import mutate

#: Longest a reply buffer grows before the attacker stops parsing it.
_MAX_BUFFER = 1 << 20


def url_address(url: str) -> tuple[str, int]:
    """``(host, port)`` an http(s) URL connects to; ValueError if it names none."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    return parse_host_port(parts.netloc, default_port=443 if parts.scheme == "https" else 80)


@attrs.frozen(slots=True)
class Target:
    """Where the daemon listens (loopback only)."""

    device: tuple[str, int]
    reglog: str  #: base URL of the route API
    api: str  #: base URL of the notification API
    api_key: str

    @property
    def reglog_address(self) -> tuple[str, int]:
        return url_address(self.reglog)

    @property
    def api_address(self) -> tuple[str, int]:
        return url_address(self.api)


@attrs.define(slots=True)
class Context:
    """What an attack runs with."""

    reactor: Any
    target: Target
    duration: float
    connections: int
    rng: random.Random
    http: Any  #: a treq HTTPClient
    sent: Counter[str] = attrs.Factory(Counter)
    observed: Counter[str] = attrs.Factory(Counter)
    deadline: float = 0.0
    live: set[FrameClient | RawClient] = attrs.Factory(set)

    def over(self) -> bool:
        return self.reactor.seconds() >= self.deadline

    def left(self) -> float:
        return max(0.0, self.deadline - self.reactor.seconds())

    def sleep(self, seconds: float) -> Deferred[None]:
        return deferLater(self.reactor, max(0.0, min(seconds, self.left())), lambda: None)

    def workers(self, count: int, work: Callable[[int], Awaitable[None]]) -> Deferred[Any]:
        """``count`` (at most ``connections``) copies of ``work`` at once."""
        count = max(1, min(count, self.connections))
        return DeferredList(
            [Deferred.fromCoroutine(self._repeat(work, index)) for index in range(count)],
            consumeErrors=True,
        )

    async def _repeat(self, work: Callable[[int], Awaitable[None]], index: int) -> None:
        while not self.over():
            try:
                await work(index)
            except Exception as e:  # a refused connect, a timeout: count it, go on
                self.observed[f"attacker error {type(e).__name__}"] += 1
                await self.sleep(0.05)


@implementer(IPushProducer)
class RawClient(Protocol):
    """A TCP connection that writes what it is told and counts closes.

    ``read=False`` stops reading at once (a client that never reads). As a
    producer of its own transport it knows when the kernel buffer is full
    (``paused``), so that a flood does not just fill the attacker's memory.
    """

    def __init__(self, context: Context, read: bool = True) -> None:
        self.context = context
        self.read = read
        self.closed: Deferred[None] = Deferred()
        self.closing = False  # we closed it
        self.paused = False
        self.opened_at = 0.0
        self.received = b""

    def connectionMade(self) -> None:
        self.context.sent["connections"] += 1
        self.context.live.add(self)
        self.opened_at = self.context.reactor.seconds()
        self.transport.registerProducer(self, True)
        if not self.read:
            self.transport.pauseProducing()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.paused = True

    def write(self, data: bytes, what: str = "bytes") -> None:
        self.context.sent["bytes"] += len(data)
        if what != "bytes":
            self.context.sent[what] += 1
        self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        self.context.observed["bytes received"] += len(data)

    def close(self) -> None:
        if not self.closed.called:
            self.closing = True
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.context.live.discard(self)
        if not self.closing:
            self.context.observed["closed by server"] += 1
        if not self.closed.called:
            self.closed.callback(None)

    async def wait_closed(self, timeout: float) -> bool:
        """True if the server closed it within ``timeout``; else we abort it."""
        timer = self.context.reactor.callLater(timeout, self.close)
        await self.closed
        if timer.active():
            timer.cancel()
        return not self.closing


class FrameClient(RawClient):
    """A raw client that also splits what it receives into frames and counts
    them by type (ERRORs by code)."""

    def __init__(self, context: Context, read: bool = True) -> None:
        super().__init__(context, read)
        self.authenticated: Deferred[bool] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.received += data
        while len(self.received) >= PREFIX_BYTES:
            (length,) = struct.unpack_from("!I", self.received)
            if length > _MAX_BUFFER:
                self.context.observed["oversized frame from server"] += 1
                self.received = b""
                return
            end = PREFIX_BYTES + length
            if len(self.received) < end:
                return
            payload, self.received = self.received[PREFIX_BYTES:end], self.received[end:]
            self._frame(payload)

    def _frame(self, payload: bytes) -> None:
        try:
            frame = decode(payload)
        except DecodeError:
            self.context.observed["undecodable frame from server"] += 1
            return
        if isinstance(frame, Error):
            self.context.observed[f"ERROR {frame.code.name}"] += 1
        elif isinstance(frame, AuthFail):
            self.context.observed[f"AUTH_FAIL {frame.code.name}"] += 1
        elif isinstance(frame, Kick):
            self.context.observed[f"KICK {frame.reason.name}"] += 1
        else:
            self.context.observed[type(frame).__name__] += 1
        if not self.authenticated.called:
            self.authenticated.callback(isinstance(frame, AuthOk))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.authenticated.called:
            self.authenticated.callback(False)
        super().connectionLost(reason)


# --- helpers --------------------------------------------------------------------


async def route(context: Context, client_id: str) -> tuple[str, tuple[str, int]]:
    """A token and the server to use, from reglog's POST /v1/route."""
    response = await context.http.post(
        context.target.reglog.rstrip("/") + "/v1/route",
        json={"clientId": client_id},
        timeout=10,
    )
    body = await response.json()
    if response.code != 200:
        raise RuntimeError(f"reglog answered {response.code}: {body}")
    return body["token"], parse_host_port(body["server"])


async def connect(
    context: Context, address: tuple[str, int], kind: type[RawClient] = FrameClient, **kw: Any
) -> Any:
    endpoint = TCP4ClientEndpoint(context.reactor, address[0], address[1], timeout=5)
    return await connectProtocol(endpoint, kind(context, **kw))


async def login(context: Context, client_id: str, read: bool = True) -> FrameClient | None:
    """A device connection after AUTH_OK (None: refused, the count says why)."""
    token, server = await route(context, client_id)
    client: FrameClient = await connect(context, server, read=True)
    client.write(encode(Auth(client_id, token)), "AUTH")
    if not await _within(context, client.authenticated, 5.0):
        client.close()
        return None
    context.observed["logins"] += 1
    if not read:
        client.transport.pauseProducing()
    return client


async def _within(context: Context, waited: Deferred[bool], timeout: float) -> bool:
    timer = context.reactor.callLater(timeout, lambda: waited.called or waited.callback(False))
    result = await waited
    if timer.active():
        timer.cancel()
    return bool(result)


def _client_id(context: Context, kind: str) -> str:
    return f"abuse-{kind}-{context.rng.getrandbits(48):012x}"


# --- the attacks ----------------------------------------------------------------


async def random_frames(context: Context) -> None:
    """Bursts of random bytes behind true length prefixes, new connection each."""

    async def work(index: int) -> None:
        client = await connect(context, context.target.device)
        for _ in range(context.rng.randint(1, 20)):
            client.write(mutate.random_frame(context.rng), "frames")
        await client.wait_closed(1.0)

    await context.workers(20, work)


async def mutated_frames(context: Context) -> None:
    """Mutations of valid frames of every type; half the connections log in first."""

    async def work(index: int) -> None:
        client_id = _client_id(context, "mut")
        if context.rng.random() < 0.5:
            client = await login(context, client_id)
            if client is None:
                return
            seeds = mutate.seed_frames(client_id)
        else:
            client = await connect(context, context.target.device)
            seeds = mutate.seed_frames(client_id)
        for _ in range(context.rng.randint(1, 10)):
            client.write(mutate.mutate(context.rng, context.rng.choice(seeds)), "frames")
        await client.wait_closed(1.0)

    await context.workers(20, work)


async def oversized_prefix(context: Context) -> None:
    """Length prefixes over the frame limit (up to 4 GiB), with a few KB behind."""

    async def work(index: int) -> None:
        if context.rng.random() < 0.5:
            client = await login(context, _client_id(context, "big"))
            if client is None:
                return
        else:
            client = await connect(context, context.target.device)
        claim = context.rng.choice(mutate.OVERSIZED_PREFIXES)
        tail = context.rng.randbytes(context.rng.randrange(4096))
        client.write(struct.pack("!IB", claim, 0x01) + tail, "frames")
        context.sent[f"prefix {claim}"] += 1
        await client.wait_closed(2.0)

    await context.workers(20, work)


async def before_auth(context: Context) -> None:
    """Every frame type but AUTH as a connection's first frame."""
    frames = mutate.seed_frames()[1:]

    async def work(index: int) -> None:
        client = await connect(context, context.target.device)
        client.write(context.rng.choice(frames), "frames")
        await client.wait_closed(2.0)

    await context.workers(20, work)


async def client_push(context: Context) -> None:
    """After AUTH_OK, frames only a server sends (PUSH above all), and a second AUTH."""

    async def work(index: int) -> None:
        client_id = _client_id(context, "push")
        client = await login(context, client_id)
        if client is None:
            return
        frame = context.rng.choice(
            [
                Push("01J8Z0000000000000000000AA", "forged", "by a client", {"a": "b"}),
                Push("01J8Z0000000000000000000AB", "x" * 200, "y" * 2000, {}),
                AuthOk(1.0, 1 << 20, 1000),
                AuthFail(AuthFailCode.BAD_TOKEN, "?"),
                Kick(KickReason.POLICY, "go"),
                PONG,
                Auth(client_id, "t" * 22),
            ]
        )
        client.write(encode(frame), "frames")
        context.sent[type(frame).__name__] += 1
        await client.wait_closed(2.0)

    await context.workers(20, work)


#: Strings a log must not take verbatim: terminal escapes, NUL, a forged line.
EVIL_STRINGS: tuple[str, ...] = (
    "x\x1b[31mred\x1b[0m\x1b]0;title\x07",
    "nul\x00byte",
    "ok\n2026-12-06T00:00:00+0000 [pigeonpush.server#info] admin logged in",
    "carriage\rreturn\x08\x7f",
)


def evil_client_id(rng: random.Random) -> str:
    """A clientId no reglog would route: control characters, or 8,000 bytes."""
    if rng.random() < 0.3:
        return "A" * 8000
    return rng.choice(EVIL_STRINGS) + f"-{rng.getrandbits(32):08x}"


async def log_injection(context: Context) -> None:
    """AUTH with made-up tokens and clientIds holding terminal escapes, NUL,
    newlines with a forged log line, or 8,000 bytes; and ERROR frames with
    such text: each refusal is something the server may log."""

    async def work(index: int) -> None:
        client = await connect(context, context.target.device)
        if context.rng.random() < 0.8:
            frame = encode(Auth(evil_client_id(context.rng), "t" * 22))
            client.write(frame, "AUTH")
        else:
            text = context.rng.choice(EVIL_STRINGS)
            client.write(encode(Error(ErrorCode.INTERNAL, text)), "ERROR")
        await client.wait_closed(2.0)

    await context.workers(20, work)


async def ping_flood(context: Context) -> None:
    """Authenticated clients that never read, PINGing as fast as the socket takes."""
    batch = encode(PING) * 200

    async def work(index: int) -> None:
        client = await login(context, _client_id(context, "ping"), read=False)
        if client is None:
            return
        while not context.over() and not client.closed.called:
            if not client.paused:
                client.write(batch)
                context.sent["PINGs"] += 200
            await context.sleep(0.001)
        client.close()

    await context.workers(20, work)


async def slow_sender(context: Context) -> None:
    """AUTH one byte every half second, then PINGs one byte a second."""
    held: list[float] = []

    async def work(index: int) -> None:
        client_id = _client_id(context, "slow")
        token, server = await route(context, client_id)
        client: FrameClient = await connect(context, server)
        frames = [encode(Auth(client_id, token))] + [encode(PING)] * 1000
        stream = b"".join(frames)
        for offset in range(len(stream)):
            if context.over() or client.closed.called:
                break
            client.write(stream[offset : offset + 1])
            await context.sleep(0.5 if offset < len(frames[0]) else 1.0)
        if client.closed.called:
            held.append(context.reactor.seconds() - client.opened_at)
        client.close()

    await context.workers(200, work)
    if held:
        held.sort()
        context.observed["held by server, median s"] = round(held[len(held) // 2], 1)


async def never_reading(context: Context) -> None:
    """Clients that log in and stop reading, each sent twice the ACK window of
    large notifications (what is accepted stays in the store: the count is
    bounded so that the store's growth does not hide the server's)."""
    ids = [_client_id(context, "deaf") for _ in range(min(200, context.connections))]
    clients = [await login(context, client_id, read=False) for client_id in ids]
    text = "x" * 2000
    budget = [64]

    async def send(index: int) -> None:
        if budget[0] <= 0:
            await context.sleep(context.left())
            return
        budget[0] -= 1
        response = await context.http.post(
            context.target.api.rstrip("/") + "/v1/notifications",
            json={"to": ids, "title": "pile", "text": text},
            headers={"Authorization": f"Bearer {context.target.api_key}"},
            timeout=10,
        )
        await response.content()
        context.sent["notifications"] += 1
        context.observed[f"API {response.code}"] += 1

    await context.workers(4, send)
    context.observed["still connected at the end"] = sum(
        1 for client in clients if client is not None and not client.closed.called
    )
    for client in clients:
        if client is not None:
            client.close()


async def login_churn(context: Context) -> None:
    """Route, connect, AUTH, AUTH_OK, close: new clientIds as fast as possible."""

    async def work(index: int) -> None:
        client = await login(context, _client_id(context, "churn"))
        if client is not None:
            client.closing = True
            client.transport.loseConnection()
            await client.closed

    await context.workers(20, work)


def _pipeline(api: bool) -> Callable[[Context], Awaitable[None]]:
    async def attack(context: Context) -> None:
        if api:
            address = context.target.api_address
            request = b"GET /health HTTP/1.1\r\nHost: abuse\r\n\r\n"
        else:
            address = context.target.reglog_address
            body = json.dumps({"clientId": "abuse-pipeline"}).encode()
            request = (
                b"POST /v1/route HTTP/1.1\r\nHost: abuse\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
        batch = request * 100

        async def work(index: int) -> None:
            client: RawClient = await connect(context, address, RawClient, read=False)
            while not context.over() and not client.closed.called:
                if not client.paused:
                    client.write(batch)
                    context.sent["requests"] += 100
                await context.sleep(0.001)
            client.close()

        await context.workers(4, work)

    attack.__doc__ = (
        f"Pipelined {'GET /health' if api else 'POST /v1/route'} requests on "
        f"{'the notification API' if api else 'reglog'}, never reading an answer."
    )
    return attack


#: Trickling connections on the notification API. Fewer than on reglog: the
#: legitimate sender needs that listener, so a per-listener cap that the
#: trickle fills would refuse it too; running out of file descriptors is
#: reached through reglog.
API_TRICKLE_CONNECTIONS = 100


def _trickle(api: bool) -> Callable[[Context], Awaitable[None]]:
    async def attack(context: Context) -> None:
        address = context.target.api_address if api else context.target.reglog_address
        count = min(context.connections, API_TRICKLE_CONNECTIONS) if api else context.connections
        lifetimes: list[float] = []

        async def one(index: int) -> None:
            try:
                client: RawClient = await connect(context, address, RawClient)
            except Exception as e:
                context.observed[f"connect failed {type(e).__name__}"] += 1
                return
            client.write(b"GET /health HTTP/1.1\r\nHost: abuse\r\nX-Slow: ")
            while not context.over() and not client.closed.called:
                client.write(b"a", "header bytes")
                await context.sleep(1.0)
            if client.closed.called:
                lifetimes.append(context.reactor.seconds() - client.opened_at)
            else:
                context.observed["held open to the end"] += 1

        # Ramp up: 50 connections every 0.1 s, then hold them all.
        started = []
        for index in range(count):
            if context.over():
                break
            started.append(Deferred.fromCoroutine(one(index)))
            if index % 50 == 49:
                await context.sleep(0.1)
        await DeferredList(started, consumeErrors=True)
        if lifetimes:
            lifetimes.sort()
            context.observed["closed by server after median s"] = round(
                lifetimes[len(lifetimes) // 2], 1
            )

    attack.__doc__ = (
        f"Connections to {'the notification API' if api else 'reglog'} sending their "
        "headers one byte a second, never finishing them"
        + (f" (at most {API_TRICKLE_CONNECTIONS})." if api else ".")
    )
    return attack


#: name -> attack; the order is the order of a run.
ATTACKS: dict[str, Callable[[Context], Awaitable[None]]] = {
    "random-frames": random_frames,
    "mutated-frames": mutated_frames,
    "oversized-prefix": oversized_prefix,
    "before-auth": before_auth,
    "client-push": client_push,
    "log-injection": log_injection,
    "ping-flood": ping_flood,
    "slow-sender": slow_sender,
    "never-reading": never_reading,
    "login-churn": login_churn,
    "pipeline-reglog": _pipeline(api=False),
    "pipeline-api": _pipeline(api=True),
    "trickle-reglog": _trickle(api=False),
    "trickle-api": _trickle(api=True),
}


def describe(name: str) -> str:
    doc = ATTACKS[name].__doc__ or name
    return " ".join(doc.split())


async def run_attack(
    reactor: Any, name: str, target: Target, duration: float, connections: int, seed: int
) -> dict[str, Any]:
    """Run one attack to its deadline, abort what it left open; its counters."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 64
    context = Context(
        reactor=reactor,
        target=target,
        duration=duration,
        connections=connections,
        rng=random.Random(seed),
        http=HTTPClient(Agent(reactor, connectTimeout=5, pool=pool)),
    )
    context.deadline = reactor.seconds() + duration
    started = reactor.seconds()
    try:
        await ATTACKS[name](context)
    finally:
        for client in list(context.live):
            client.close()
        await pool.closeCachedConnections()
    return {
        "attack": name,
        "duration": round(reactor.seconds() - started, 2),
        "sent": dict(context.sent),
        "observed": dict(context.observed),
    }
