"""The load generator: ``python -m pigeonpush_bench.loadgen``.

The benchmark starts one or more of these and drives each with AMP over its
stdin and stdout: the commands, their arguments and answers are in
``pigeonpush_bench.commands`` (connect clients, stats, reset, close, and the
publishers: through the notification API, an MQTT broker, or AMP ``Push``
straight to a pigeon-server). Commands run concurrently, so ``Stats``
answers while a ``Connect`` is still going. End of stdin stops the process.
Logs go to stderr: stdout carries AMP only.

Latency is measured from the message's acceptance (the ULID timestamp of its
messageId: milliseconds) and from its sending (a timestamp the publisher puts
at the start of the text: microseconds) to its receipt here. All processes run
on one machine, so their clocks are the same clock.
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed
from twisted.web.http_headers import Headers

from pigeonpush.hostport import parse_host_port
from pigeonpush.services import raise_young_threshold
from pigeonpush_bench import commands, mqtt
from pigeonpush_bench.clients import (
    BenchClient,
    FramingClient,
    HeartbeatWheel,
    MqttClient,
    PigeonClient,
    mqtt_topic,
)
from pigeonpush_bench.commands import CommandFailed
from pigeonpush_bench.histogram import LatencyHistogram
from pigeonpush_bench.measure import cpu_seconds
from pigeonpush_bench.route_client import RouteClient, RouteFailed
from pigeonpush_bench.sources import PortLateReactor
from pigeonpush_bench.wsclient import WebSocketClient

log = Logger()

#: ``pigeon-ws``: the pigeon protocol over WebSocket (``wsclient``), routed
#: by reglog to the servers' WebSocket listeners.
PIGEON_WS = "pigeon-ws"
PROTOCOLS = ("pigeon", "framing", "mqtt", PIGEON_WS)
#: Seconds one connection attempt (route, connect, handshake) may take.
ATTEMPT_TIMEOUT = 20.0
#: Attempts per client for an initial connect.
ATTEMPTS = 5
#: Reconnect backoff: full jitter under min(cap, base * 2**attempt).
BACKOFF_BASE = 0.1
BACKOFF_CAP = 2.0


class AttemptFailed(Exception):
    """One connection attempt failed; ``str()`` is a short snake_case reason."""


def payload_text(size: int, sent_at: float) -> str:
    """A message text of ``size`` characters starting with its sending time."""
    stamp = f"{sent_at:.6f}|"
    return stamp + "x" * max(0, size - len(stamp))


def sent_time(text: str) -> float | None:
    stamp, bar, _ = text.partition("|")
    if not bar:
        return None
    try:
        return float(stamp)
    except ValueError:
        return None


def http_client(reactor: Any, connections: int) -> tuple[HTTPConnectionPool, HTTPClient]:
    """A treq client on its own pool of persistent connections (close the pool after)."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = connections
    pool.retryAutomatically = False
    return pool, HTTPClient(Agent(reactor, pool=pool))


class Recorder:
    """What this process's clients received.

    By default each message goes to one client, so a message seen twice is a
    duplicate. With ``per_client`` (the clients share a topic, so every
    message reaches each of them), a duplicate is a message seen twice by the
    same client: each client holds a bit per message, numbered in the order
    this process first saw it.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.per_client = False
        self.reset()

    def reset(self) -> None:
        self.received = 0
        self.unique = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.frames = 0
        self.first_receipt: float | None = None
        self.last_receipt: float | None = None
        self.seen: set[str] = set()
        self.numbers: dict[str, int] = {}
        self.received_by: dict[int, int] = {}
        self.last_key: dict[int, str] = {}
        self.latency = LatencyHistogram()
        self.latency_send = LatencyHistogram()

    def _first_time(self, index: int, key: str) -> bool:
        if not self.per_client:
            if key in self.seen:
                return False
            self.seen.add(key)
            return True
        number = self.numbers.setdefault(key, len(self.numbers))
        held = self.received_by.get(index, 0)
        if held >> number & 1:
            return False
        self.received_by[index] = held | 1 << number
        return True

    def message(self, index: int, key: str, text: str, accepted_ms: int | None) -> None:
        now = self._clock.seconds()
        self.received += 1
        if self.first_receipt is None:
            self.first_receipt = now
        self.last_receipt = now
        if not self._first_time(index, key):
            self.duplicates += 1
            return
        self.unique += 1
        if accepted_ms is not None:
            self.latency.record((now * 1000.0 - accepted_ms) * 1000.0)
            # Pigeon messageIds are time-ordered: a smaller one after a larger
            # one for the same client is an order violation.
            last = self.last_key.get(index)
            if last is not None and key < last:
                self.out_of_order += 1
            else:
                self.last_key[index] = key
        sent = sent_time(text)
        if sent is not None:
            self.latency_send.record((now - sent) * 1_000_000.0)

    def short_of(self, expected: int, clients: Iterable[int]) -> int:
        """How many of ``clients`` hold fewer than ``expected`` distinct messages
        (``per_client`` only; otherwise 0)."""
        if not self.per_client:
            return 0
        held = self.received_by
        return sum(1 for index in clients if held.get(index, 0).bit_count() < expected)

    def frame(self) -> None:
        now = self._clock.seconds()
        self.frames += 1
        if self.first_receipt is None:
            self.first_receipt = now
        self.last_receipt = now

    def to_json(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "unique": self.unique,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "frames": self.frames,
            "first_receipt": self.first_receipt,
            "last_receipt": self.last_receipt,
            "latency": self.latency.to_json(),
            "latency_send": self.latency_send.to_json(),
        }


class Fleet:
    """The client connections of this process, their handshakes and reconnects."""

    def __init__(self, reactor: Any, recorder: Recorder, settings: Mapping[str, Any]) -> None:
        protocol = settings["protocol"]
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}")
        self._reactor = reactor
        self.recorder = recorder
        self.protocol: str = protocol
        self.prefix: str = str(settings.get("prefix", "bench-"))
        self.start = int(settings.get("start", 0))
        self.count = int(settings["count"])
        self.source: str | None = settings.get("source")
        self._connecting = PortLateReactor(reactor) if self.source else reactor
        self.heartbeat = float(settings.get("heartbeat", 30.0))
        self.reconnect = bool(settings.get("reconnect", False))
        self.reglog: str | None = settings.get("reglog")
        self.server: str | None = settings.get("server")
        #: The topic every client of this fleet is subscribed to (pigeon:
        #: through the API beforehand; mqtt: it subscribes to it instead of
        #: its own), so that each message reaches each of them.
        self.topic: str | None = settings.get("topic")
        if self.topic is not None:
            recorder.per_client = True
        if protocol in ("pigeon", PIGEON_WS) and not self.reglog:
            raise ValueError(f"protocol {protocol} needs reglog (its URL)")
        if protocol not in ("pigeon", PIGEON_WS) and not self.server:
            raise ValueError(f"protocol {protocol} needs server (host:port)")
        self.clients: list[BenchClient | None] = [None] * self.count
        self.ready_count = 0
        self.failed = 0
        self.reconnects = 0
        self.last_ready: float | None = None
        self.errors: Counter[str] = Counter()
        self.wheel: HeartbeatWheel | None = None
        self.stopping = False
        self._waiting: dict[int, defer.Deferred[None]] = {}
        self._random = random.Random(int(settings.get("seed", 0)) ^ self.start)
        self._routes: RouteClient | None = None
        self._route_connections = 64

    def client_id(self, index: int) -> str:
        return f"{self.prefix}{self.start + index}"

    # -- callbacks from the connections (clients.Fleet) -----------------------

    def ready(self, client: BenchClient, heartbeat: float | None) -> None:
        self.clients[client.index] = client
        self.ready_count += 1
        self.last_ready = self._reactor.seconds()
        if self.wheel is None:
            self.wheel = HeartbeatWheel(self._reactor, heartbeat or self.heartbeat)
        self.wheel.add(client)
        waiting = self._waiting.pop(client.index, None)
        if waiting is not None:
            waiting.callback(None)

    def refused(self, client: BenchClient, reason: str) -> None:
        waiting = self._waiting.pop(client.index, None)
        if waiting is not None:
            waiting.errback(AttemptFailed(reason))

    def lost(self, client: BenchClient, reason: str) -> None:
        waiting = self._waiting.pop(client.index, None)
        if waiting is not None:
            waiting.errback(AttemptFailed(f"lost_before_ready_{reason}"))
            return
        if self.clients[client.index] is not client:
            return
        self.clients[client.index] = None
        self.ready_count -= 1
        if self.wheel is not None:
            self.wheel.discard(client)
        if self.stopping:
            return
        self.errors[f"lost_{reason}"] += 1
        if self.reconnect:
            self.reconnects += 1
            defer.ensureDeferred(self._keep_connected(client.index))

    def pushed(self, client: BenchClient, key: str, text: str, accepted_ms: int | None) -> None:
        # The run-wide client number: a process may hold several fleets.
        self.recorder.message(self.start + client.index, key, text, accepted_ms)

    def framed(self) -> None:
        self.recorder.frame()

    # -- connecting -----------------------------------------------------------

    async def connect_all(self, concurrency: int, progress: Callable[[], None]) -> dict[str, Any]:
        started = self._reactor.seconds()
        semaphore = defer.DeferredSemaphore(max(1, concurrency))
        # As many keep-alive reglog connections as attempts in flight.
        self._route_connections = max(self._route_connections, concurrency)

        async def one(index: int) -> None:
            await semaphore.acquire()
            try:
                await self._connect_with_retries(index, ATTEMPTS)
            finally:
                semaphore.release()

        ticker = _Ticker(self._reactor, 0.5, progress)
        try:
            await defer.gatherResults(
                [defer.ensureDeferred(one(index)) for index in range(self.count)],
                consumeErrors=True,
            )
        finally:
            ticker.stop()
        return {
            "ready": self.ready_count,
            "failed": self.failed,
            "seconds": self._reactor.seconds() - started,
            "errors": dict(self.errors),
        }

    async def _connect_with_retries(self, index: int, attempts: int) -> None:
        for attempt in range(attempts):
            if self.stopping:
                return
            try:
                await self._attempt(index)
                return
            except AttemptFailed as e:
                self.errors[str(e)] += 1
            await self._backoff(attempt)
        self.failed += 1

    async def _keep_connected(self, index: int) -> None:
        """After a loss: jitter, then route and connect again until it works."""
        await deferLater(self._reactor, self._random.uniform(0, BACKOFF_BASE * 5), lambda: None)
        attempt = 0
        while not self.stopping and self.clients[index] is None:
            try:
                await self._attempt(index)
                return
            except AttemptFailed as e:
                self.errors[str(e)] += 1
            await self._backoff(attempt)
            attempt += 1

    async def _backoff(self, attempt: int) -> None:
        delay = self._random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))
        await deferLater(self._reactor, delay, lambda: None)

    async def _attempt(self, index: int) -> None:
        client_id = self.client_id(index)
        protocol: Protocol
        if self.protocol in ("pigeon", PIGEON_WS):
            websocket = self.protocol == PIGEON_WS
            token, address = await self._route(client_id, websocket)
            protocol = PigeonClient(self, index, client_id, token, self._reactor)
            if websocket:
                protocol = WebSocketClient(protocol, *parse_host_port(address))
        elif self.protocol == "mqtt":
            assert self.server is not None
            address = self.server
            protocol = MqttClient(self, index, client_id, max(1, round(self.heartbeat)), self.topic)
        else:
            assert self.server is not None
            address = self.server
            protocol = FramingClient(self, index)
        host, port = parse_host_port(address)
        waiting: defer.Deferred[None] = defer.Deferred()
        self._waiting[index] = waiting
        endpoint = TCP4ClientEndpoint(
            self._connecting,
            host,
            port,
            timeout=ATTEMPT_TIMEOUT,
            bindAddress=(self.source, 0) if self.source else None,
        )
        try:
            await connectProtocol(endpoint, protocol)
        except ConnectError as e:
            self._waiting.pop(index, None)
            raise AttemptFailed(f"connect_{type(e).__name__}") from None
        waiting.addTimeout(ATTEMPT_TIMEOUT, self._reactor)
        try:
            await waiting
        except defer.TimeoutError:
            self._waiting.pop(index, None)
            if protocol.transport is not None:
                protocol.transport.abortConnection()  # type: ignore[attr-defined]
            raise AttemptFailed("handshake_timeout") from None

    async def _route(self, client_id: str, websocket: bool = False) -> tuple[str, str]:
        if self._routes is None:
            assert self.reglog is not None
            self._routes = RouteClient(
                self._reactor, self.reglog, self._route_connections, ATTEMPT_TIMEOUT
            )
        try:
            return await self._routes.route(client_id, websocket=websocket)
        except RouteFailed as e:
            raise AttemptFailed(str(e)) from None

    # -- the rest ---------------------------------------------------------------

    def close(self) -> None:
        self.stopping = True
        if self.wheel is not None:
            self.wheel.stop()
        for client in self.clients:
            if client is not None:
                client.close()

    async def shutdown(self) -> None:
        self.close()
        if self._routes is not None:
            self._routes.close()

    def to_json(self) -> dict[str, Any]:
        return {
            "ready": self.ready_count,
            "failed": self.failed,
            "reconnects": self.reconnects,
            "last_ready": self.last_ready,
            "errors": dict(self.errors),
            "pings": self.wheel.pings if self.wheel is not None else 0,
        }


class _Ticker:
    """Calls ``function`` every ``interval`` until stopped."""

    def __init__(self, clock: IReactorTime, interval: float, function: Callable[[], None]) -> None:
        self._clock = clock
        self._interval = interval
        self._function = function
        self._call = clock.callLater(interval, self._tick)

    def _tick(self) -> None:
        self._function()
        self._call = self._clock.callLater(self._interval, self._tick)

    def stop(self) -> None:
        if self._call.active():
            self._call.cancel()


# --- publishers ------------------------------------------------------------------


class Pacer:
    """Spreads items over time at ``rate`` per second (0: no pacing).

    Items due within the next ``SLACK`` seconds go at once: one timer per
    millisecond instead of one per item keeps the generator's own cost low.
    """

    SLACK = 0.001

    def __init__(self, clock: IReactorTime, rate: float) -> None:
        self._clock = clock
        self.rate = rate
        self.started = clock.seconds()

    async def wait_for(self, sent: int) -> None:
        """Wait until item number ``sent`` is due."""
        if self.rate <= 0:
            return
        due = self.started + sent / self.rate
        delay = due - self._clock.seconds()
        if delay > self.SLACK:
            await deferLater(self._clock, delay, lambda: None)


async def publish_api(reactor: Any, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Send ``messages`` notifications through ``POST /v1/notifications/batch``,
    each to one client, or with ``topic`` each to that topic."""
    api = str(settings["api"])
    key = str(settings["key"])
    prefix = str(settings.get("prefix", "bench-"))
    clients = int(settings["clients"])
    messages = int(settings["messages"])
    size = int(settings.get("size", 100))
    batch = max(1, int(settings.get("batch", 100)))
    concurrency = max(1, int(settings.get("concurrency", 4)))
    pacer = Pacer(reactor, float(settings.get("rate", 0)))
    chooser = random.Random(int(settings.get("seed", 1)))
    round_robin = settings.get("spread", "random") == "round_robin"
    topic: str | None = settings.get("topic")
    if clients <= 0 or messages < 0:
        raise ValueError("clients must be positive and messages not negative")
    pool, http = http_client(reactor, concurrency)
    headers = Headers({"Authorization": [f"Bearer {key}"], "Content-Type": ["application/json"]})
    counts: Counter[str] = Counter()
    sent = 0
    started = reactor.seconds()
    last_accept = started

    async def post(items: list[dict[str, Any]]) -> None:
        nonlocal last_accept
        body = json.dumps({"notifications": items}, separators=(",", ":")).encode()
        for attempt in range(4):
            try:
                response = await http.post(
                    f"{api}/v1/notifications/batch",
                    data=body,
                    headers=headers,
                    reactor=reactor,
                    timeout=60,
                )
                answer = await response.json()
            except (ConnectError, ResponseFailed, defer.CancelledError, ValueError) as e:
                counts[f"http_{type(e).__name__}"] += 1
            else:
                if response.code == 200:
                    last_accept = reactor.seconds()
                    for result in answer.get("results", []):
                        counts["accepted" if "messageId" in result else "refused"] += 1
                    return
                counts[f"http_{response.code}"] += 1
                if response.code < 500:
                    counts["refused"] += len(items)
                    return
            await deferLater(reactor, 0.1 * 2**attempt, lambda: None)
        counts["failed"] += len(items)

    async def worker() -> None:
        nonlocal sent
        while sent < messages:
            count = min(batch, messages - sent)
            first = sent
            sent += count
            await pacer.wait_for(first)
            now = reactor.seconds()
            text = payload_text(size, now)
            if topic is not None:
                await post([{"topic": topic, "title": "bench", "text": text}] * count)
                continue
            targets = [
                (first + k) % clients if round_robin else chooser.randrange(clients)
                for k in range(count)
            ]
            items = [
                {"to": [f"{prefix}{target}"], "title": "bench", "text": text} for target in targets
            ]
            await post(items)

    try:
        await defer.gatherResults(
            [defer.ensureDeferred(worker()) for _ in range(concurrency)], consumeErrors=True
        )
    finally:
        await pool.closeCachedConnections()
    return {
        "accepted": counts.pop("accepted", 0),
        "refused": counts.pop("refused", 0),
        "failed": counts.pop("failed", 0),
        "errors": dict(counts),
        "started": started,
        "last_accept": last_accept,
        "seconds": reactor.seconds() - started,
    }


async def subscribe_api(reactor: Any, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Subscribe clients ``<prefix><start>`` .. ``<prefix><start + count - 1>``
    to each of ``topics`` through ``POST /v1/topics/{topic}/subscribers``, in
    requests of ``batch`` clientIds (the API takes at most 1,000)."""
    api = str(settings["api"])
    key = str(settings["key"])
    topics = [str(topic) for topic in settings["topics"]]
    prefix = str(settings.get("prefix", "bench-"))
    start = int(settings.get("start", 0))
    count = int(settings["count"])
    batch = int(settings.get("batch", 1000))
    concurrency = max(1, int(settings.get("concurrency", 4)))
    if count <= 0 or not 1 <= batch <= 1000 or not topics:
        raise ValueError("count must be positive, batch from 1 to 1,000, and topics not empty")
    pool, http = http_client(reactor, concurrency)
    headers = Headers({"Authorization": [f"Bearer {key}"], "Content-Type": ["application/json"]})
    requests = [
        (topic, [f"{prefix}{start + k}" for k in range(first, min(count, first + batch))])
        for topic in topics
        for first in range(0, count, batch)
    ]
    started = reactor.seconds()
    done = 0

    async def worker() -> None:
        nonlocal done
        while requests:
            topic, client_ids = requests.pop()
            body = json.dumps({"add": client_ids}, separators=(",", ":")).encode()
            response = await http.post(
                f"{api}/v1/topics/{topic}/subscribers",
                data=body,
                headers=headers,
                reactor=reactor,
                timeout=60,
            )
            answer = await response.text()
            if response.code != 200:
                raise ValueError(f"subscribing to {topic}: HTTP {response.code}: {answer[:200]}")
            done += len(client_ids)

    try:
        await defer.gatherResults(
            [defer.ensureDeferred(worker()) for _ in range(concurrency)], consumeErrors=True
        )
    except defer.FirstError as e:
        raise e.subFailure.value from None  # type: ignore[misc]
    finally:
        await pool.closeCachedConnections()
    return {"subscriptions": done, "seconds": reactor.seconds() - started}


class MqttPublisher(Protocol):
    """An MQTT client that publishes at QoS 1 within a window of un-ACKed packets."""

    def __init__(self, window: int) -> None:
        self.window = max(1, min(window, 0xFFFF - 1))
        self.reader = mqtt.PacketReader()
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.in_flight: set[int] = set()
        self.acked = 0
        self._next_id = 0
        self._slot: defer.Deferred[None] | None = None
        self._all_acked: defer.Deferred[None] | None = None
        self.closed = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
        self.transport.write(mqtt.connect(f"bench-publisher-{os.getpid()}", 60))

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        for first, body in self.reader.feed(data):
            kind = first >> 4
            if kind == mqtt.PUBACK:
                self.in_flight.discard(mqtt.parse_puback(body))
                self.acked += 1
                if self._slot is not None and len(self.in_flight) < self.window:
                    slot, self._slot = self._slot, None
                    slot.callback(None)
                if self._all_acked is not None and not self.in_flight:
                    done, self._all_acked = self._all_acked, None
                    done.callback(None)
            elif kind == mqtt.CONNACK:
                code = mqtt.parse_connack(body)
                if code:
                    self.ready.errback(AttemptFailed(f"connack_{code}"))
                else:
                    self.ready.callback(None)

    def publish(self, topic: str, payload: bytes) -> None:
        assert self.transport is not None
        packet_id = self._next_id % 0xFFFF + 1
        while packet_id in self.in_flight:
            packet_id = packet_id % 0xFFFF + 1
        self._next_id = packet_id
        self.in_flight.add(packet_id)
        self.transport.write(mqtt.publish(topic, payload, 1, packet_id))

    def slot(self) -> defer.Deferred[None]:
        if len(self.in_flight) < self.window:
            return defer.succeed(None)
        self._slot = defer.Deferred()
        return self._slot

    def drained(self) -> defer.Deferred[None]:
        if not self.in_flight:
            return defer.succeed(None)
        self._all_acked = defer.Deferred()
        return self._all_acked

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        for waiting in (self._slot, self._all_acked):
            if waiting is not None and not waiting.called:
                waiting.errback(AttemptFailed("publisher_connection_lost"))
        if not self.ready.called:
            self.ready.errback(AttemptFailed("publisher_connection_lost"))


async def publish_mqtt(reactor: Any, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Publish ``messages`` QoS 1 messages, each to one random client's topic,
    or with ``topic`` each to that topic."""
    host, port = parse_host_port(str(settings["server"]))
    prefix = str(settings.get("prefix", "bench-"))
    clients = int(settings["clients"])
    messages = int(settings["messages"])
    size = int(settings.get("size", 100))
    pacer = Pacer(reactor, float(settings.get("rate", 0)))
    chooser = random.Random(int(settings.get("seed", 1)))
    publisher = MqttPublisher(int(settings.get("window", 1000)))
    shared: str | None = settings.get("topic")
    endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=ATTEMPT_TIMEOUT)
    await connectProtocol(endpoint, publisher)
    await publisher.ready
    started = reactor.seconds()
    for sequence in range(messages):
        await pacer.wait_for(sequence)
        await publisher.slot()
        text = payload_text(size, reactor.seconds()).encode()
        topic = shared or mqtt_topic(f"{prefix}{chooser.randrange(clients)}")
        publisher.publish(topic, b"%d|%s" % (sequence, text))
    await publisher.drained()
    finished = reactor.seconds()
    assert publisher.transport is not None
    publisher.transport.write(mqtt.DISCONNECT_PACKET)
    publisher.transport.loseConnection()
    return {
        "accepted": publisher.acked,
        "refused": 0,
        "failed": messages - publisher.acked,
        "errors": {},
        "started": started,
        "last_accept": finished,
        "seconds": finished - started,
    }


async def publish_amp(reactor: Any, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Push ``messages`` straight into a pigeon-server over its AMP ``Push``, as
    delivery does: the server's write path without the API, Redis and delivery
    in front of it. ``burst`` consecutive messages go to the same client, then
    the next client. Items the server answers WINDOW_FULL are sent again."""
    from twisted.protocols import amp

    from pigeonpush.ids import MessageIdGenerator
    from pigeonpush.rpc import Push, PushItem, PushStatus, encode_batches

    host, port = parse_host_port(str(settings["rpc"]))
    prefix = str(settings.get("prefix", "bench-"))
    clients = int(settings["clients"])
    messages = int(settings["messages"])
    size = int(settings.get("size", 100))
    batch = max(1, int(settings.get("batch", 100)))
    concurrency = max(1, int(settings.get("concurrency", 4)))
    burst = max(1, int(settings.get("burst", 1)))
    if clients <= 0 or messages < 0:
        raise ValueError("clients must be positive and messages not negative")
    connection = amp.AMP()
    await connectProtocol(
        TCP4ClientEndpoint(reactor, host, port, timeout=ATTEMPT_TIMEOUT), connection
    )
    assert connection.transport is not None
    connection.transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
    new_id = MessageIdGenerator(reactor)
    queue: list[PushItem] = []
    counts: Counter[str] = Counter()
    made = 0
    started = reactor.seconds()

    def next_items() -> list[PushItem]:
        nonlocal made
        items = queue[:batch]
        del queue[:batch]
        text = payload_text(size, reactor.seconds())
        while len(items) < batch and made < messages:
            client_id = f"{prefix}{made // burst % clients}"
            items.append(PushItem(client_id, new_id(), "bench", text))
            made += 1
        return items

    async def worker() -> None:
        while True:
            items = next_items()
            if not items:
                if made >= messages and not queue and not busy:
                    return
                await deferLater(reactor, 0.005, lambda: None)
                continue
            busy.append(1)
            try:
                offset = 0
                for count, value in encode_batches(items):
                    answer = await connection.callRemote(Push, batch=value)
                    chunk = items[offset : offset + count]
                    for item, status in zip(chunk, answer["results"], strict=True):
                        if status == PushStatus.WRITTEN:
                            counts["accepted"] += 1
                        elif status == PushStatus.WINDOW_FULL:
                            counts["window_full"] += 1
                            queue.append(item)
                        else:
                            counts[PushStatus(status).name.lower()] += 1
                    offset += count
            finally:
                busy.pop()
            if queue:
                # The clients' windows are full: give their ACKs a moment.
                await deferLater(reactor, 0.001, lambda: None)

    busy: list[int] = []
    try:
        await defer.gatherResults(
            [defer.ensureDeferred(worker()) for _ in range(concurrency)], consumeErrors=True
        )
    finally:
        connection.transport.loseConnection()
    accepted = counts.pop("accepted", 0)
    return {
        "accepted": accepted,
        "refused": 0,
        "failed": messages - accepted,
        "errors": dict(counts),
        "started": started,
        "last_accept": reactor.seconds(),
        "seconds": reactor.seconds() - started,
    }


# --- the control channel ---------------------------------------------------------


def _given(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments a command was given: AMP hands the left-out optional ones as None."""
    return {name: value for name, value in arguments.items() if value is not None}


class Controller(amp.AMP):
    """The benchmark's commands (``commands``) over this process's stdin and stdout."""

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self._reactor = reactor
        self.recorder = Recorder(reactor)
        self.fleets: list[Fleet] = []
        self.finished: defer.Deferred[None] = defer.Deferred()

    async def _run(
        self, name: str, handler: Callable[[], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        """Run a command; any failure goes back as CommandFailed with its reason."""
        try:
            return await handler()
        except (ValueError, KeyError, TypeError, AttemptFailed, ConnectError) as e:
            raise CommandFailed(f"{type(e).__name__}: {e}") from None
        except Exception as e:
            log.failure("Command {name} failed", name=name)
            raise CommandFailed(f"{type(e).__name__}: {e}") from None

    def _respond(
        self, name: str, handler: Callable[[], Awaitable[dict[str, Any]]]
    ) -> defer.Deferred[dict[str, Any]]:
        return defer.ensureDeferred(self._run(name, handler))

    @commands.Connect.responder
    def connect(self, **arguments: Any) -> defer.Deferred[dict[str, Any]]:
        settings = _given(arguments)
        return self._respond("connect", lambda: self._connect(settings))

    @commands.Stats.responder
    def stats(self, expected: int | None = None) -> defer.Deferred[dict[str, Any]]:
        return self._respond("stats", lambda: self._stats(expected))

    @commands.Reset.responder
    def reset(self) -> defer.Deferred[dict[str, Any]]:
        return self._respond("reset", self._reset)

    @commands.Close.responder
    def close(self) -> defer.Deferred[dict[str, Any]]:
        return self._respond("close", self._close)

    @commands.PublishApi.responder
    def publish_api(self, **arguments: Any) -> defer.Deferred[dict[str, Any]]:
        settings = _given(arguments)
        return self._respond("publish_api", lambda: publish_api(self._reactor, settings))

    @commands.Subscribe.responder
    def subscribe(self, **arguments: Any) -> defer.Deferred[dict[str, Any]]:
        settings = _given(arguments)
        return self._respond("subscribe", lambda: subscribe_api(self._reactor, settings))

    @commands.PublishMqtt.responder
    def publish_mqtt(self, **arguments: Any) -> defer.Deferred[dict[str, Any]]:
        settings = _given(arguments)
        return self._respond("publish_mqtt", lambda: publish_mqtt(self._reactor, settings))

    @commands.PublishAmp.responder
    def publish_amp(self, **arguments: Any) -> defer.Deferred[dict[str, Any]]:
        settings = _given(arguments)
        return self._respond("publish_amp", lambda: publish_amp(self._reactor, settings))

    async def _connect(self, settings: dict[str, Any]) -> dict[str, Any]:
        fleet = Fleet(self._reactor, self.recorder, settings)
        self.fleets.append(fleet)

        def progress() -> None:
            self.callRemote(commands.Progress, ready=fleet.ready_count, failed=fleet.failed)

        return await fleet.connect_all(int(settings.get("concurrency", 100)), progress)

    async def _stats(self, expected: int | None = None) -> dict[str, Any]:
        fleets = [fleet.to_json() for fleet in self.fleets]
        errors: Counter[str] = Counter()
        for fleet in self.fleets:
            errors.update(fleet.errors)
        last_ready = [fleet.last_ready for fleet in self.fleets if fleet.last_ready is not None]
        return {
            **self.recorder.to_json(),
            "ready": sum(fleet.ready_count for fleet in self.fleets),
            "failed": sum(fleet.failed for fleet in self.fleets),
            "reconnects": sum(fleet.reconnects for fleet in self.fleets),
            "pings": sum(item["pings"] for item in fleets),
            "last_ready": max(last_ready) if last_ready else None,
            "errors": dict(errors),
            "cpu": cpu_seconds(os.getpid()),
            "now": self._reactor.seconds(),
            "short": None if expected is None else self._short_of(expected),
        }

    def _short_of(self, expected: int) -> int:
        """Connected clients of this process holding fewer than ``expected`` messages."""
        indices = (
            fleet.start + index
            for fleet in self.fleets
            for index, client in enumerate(fleet.clients)
            if client is not None
        )
        return self.recorder.short_of(expected, indices)

    async def _reset(self) -> dict[str, Any]:
        self.recorder.reset()
        return {}

    async def _close(self) -> dict[str, Any]:
        for fleet in self.fleets:
            await fleet.shutdown()
        closed = len(self.fleets)
        self.fleets = []
        return {"fleets": closed}

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """stdin closed: the benchmark is done with this process (or gone)."""
        super().connectionLost(reason)
        for fleet in self.fleets:
            fleet.close()
        if not self.finished.called:
            self.finished.callback(None)


def main(reactor: Any) -> defer.Deferred[None]:
    from twisted.internet.stdio import StandardIO

    # Like the daemons (pigeonpush.services.GcTuning): at CPython's 700, the
    # objects of connection attempts in flight reach the oldest generation
    # and make full collections of tens of thousands of clients frequent.
    raise_young_threshold()
    controller = Controller(reactor)
    StandardIO(controller, reactor=reactor)
    controller.callRemote(commands.Started, pid=os.getpid())
    return controller.finished


if __name__ == "__main__":
    from twisted.internet.task import react
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    # Warnings and up: Twisted logs every client factory's start and stop at
    # info, which for thousands of connections would cost the generator more
    # than its clients do.
    quiet = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [quiet])]
    )
    react(main)
