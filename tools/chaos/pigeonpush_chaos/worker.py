"""One client process: many ``PushClient``s, recording what the application sees.

``python -m pigeonpush_chaos.worker --reglog URL --first 0 --count 250 --out FILE``

Each client is an ordinary SDK ``PushClient`` whose callback records the
messageId and the time, and whose event observer records Connected,
Authenticated, Disconnected and GaveUp (see ``records``). Lines are buffered
and appended to ``--out`` every ``FLUSH_INTERVAL`` seconds and when the
process is stopped (SIGTERM), so a coordinator can read them as they come.
Nothing is done about a client that gives up: it stays down, as it would in
an application that does not restart it, and the report counts it.
"""

from __future__ import annotations

import argparse
import sys
from typing import IO, Any

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import LoopingCall, react
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from pigeonpush.sdk import (
    Authenticated,
    ClientEvent,
    Connected,
    Disconnected,
    GaveUp,
    Message,
    PushClient,
)
from pigeonpush.sdk.backoff import full_jitter
from pigeonpush.sdk.route import parse_server_address
from pigeonpush_chaos.records import Event, EventKind, arrival_line, event_line, uplink_line
from pigeonpush_chaos.websocket import WebSocketEndpoint, WebSocketRoutes

FLUSH_INTERVAL = 0.2


def client_id(index: int) -> str:
    """The clientId of client number ``index`` of a run."""
    return f"chaos-{index:06d}"


TCP = "tcp"
WEBSOCKET = "websocket"


def transport_of(index: int, websocket_share: float) -> str:
    """How client number ``index`` connects: ``websocket`` for a
    ``websocket_share`` of the clients spread evenly over the numbers (every
    fifth for 0.2), ``tcp`` for the others."""
    if not 0 <= websocket_share <= 1:
        raise ValueError(f"the WebSocket share must be in [0, 1], not {websocket_share!r}")
    return WEBSOCKET if int((index + 1) * websocket_share) > int(index * websocket_share) else TCP


class Recorder:
    """Buffers record lines and appends them to a file."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lines: list[str] = []

    def add(self, line: str) -> None:
        self._lines.append(line)

    def flush(self) -> None:
        if self._lines:
            lines, self._lines = self._lines, []
            self._stream.write("".join(lines))
            self._stream.flush()


@implementer(IStreamClientEndpoint)
class RecordingEndpoint:
    """A TCP endpoint that reports its failed connection attempts (the SDK
    emits no event for them, and they make a reconnection's trail)."""

    def __init__(self, inner: IStreamClientEndpoint, on_failure: Any) -> None:
        self._inner = inner
        self._on_failure = on_failure

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting = self._inner.connect(factory)

        def failed(failure: Failure) -> Failure:
            if not failure.check(CancelledError):
                self._on_failure(failure.getErrorMessage())
            return failure

        connecting.addErrback(failed)
        return connecting


@implementer(IAgent)
class RecordingAgent:
    """The SDK's HTTP agent for reglog, reporting how each route lookup ended
    (the SDK emits no event for them either)."""

    def __init__(self, inner: IAgent, on_answer: Any) -> None:
        self._inner = inner
        self._on_answer = on_answer

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        requesting = self._inner.request(method, uri, headers, bodyProducer)

        def answered(response: IResponse) -> IResponse:
            self._on_answer(f"HTTP {response.code}")
            return response

        def failed(failure: Failure) -> Failure:
            self._on_answer(f"{type(failure.value).__name__}: {failure.getErrorMessage()}")
            return failure

        requesting.addCallbacks(answered, failed)
        return requesting


def event_record(time: float, client: str, event: ClientEvent) -> Event:
    if isinstance(event, Connected):
        return Event(time, client, EventKind.CONNECTED, event.server)
    if isinstance(event, Authenticated):
        return Event(time, client, EventKind.AUTHENTICATED, event.server)
    if isinstance(event, Disconnected):
        return Event(
            time, client, EventKind.DISCONNECTED, event.server, event.authenticated, event.reason
        )
    assert isinstance(event, GaveUp)
    return Event(time, client, EventKind.GAVE_UP, reason=f"{type(event.error).__name__}")


def start_clients(reactor: Any, options: argparse.Namespace, recorder: Recorder) -> list[Any]:
    clients = []
    for offset in range(options.count):
        name = client_id(options.first + offset)
        websocket = transport_of(options.first + offset, options.websocket_share) == WEBSOCKET

        def on_message(message: Message, name: str = name) -> None:
            recorder.add(arrival_line(reactor.seconds(), name, message.message_id))

        def on_event(event: ClientEvent, name: str = name) -> None:
            recorder.add(event_line(event_record(reactor.seconds(), name, event)))

        def endpoint(
            server: str, name: str = name, websocket: bool = websocket
        ) -> IStreamClientEndpoint:
            host, port = parse_server_address(server)

            def failed(reason: str) -> None:
                failure = Event(reactor.seconds(), name, EventKind.CONNECT_FAILED, server)
                recorder.add(event_line(attrs.evolve(failure, reason=reason)))

            inner: IStreamClientEndpoint = (
                WebSocketEndpoint(reactor, host, port, timeout=10)
                if websocket
                else HostnameEndpoint(reactor, host, port, timeout=10)
            )
            return RecordingEndpoint(inner, failed)

        def looked_up(outcome: str, name: str = name) -> None:
            lookup = Event(reactor.seconds(), name, EventKind.ROUTE_LOOKUP, reason=outcome)
            recorder.add(event_line(lookup))

        # As the SDK's own default agent: no keep-alive between rare lookups.
        agent = RecordingAgent(
            Agent(reactor, connectTimeout=10, pool=HTTPConnectionPool(reactor, False)), looked_up
        )
        backoff = full_jitter()
        # A WebSocket client asks reglog for a WebSocket address (the SDK asks for TCP).
        routes = (
            WebSocketRoutes(reactor, agent, options.reglog, name, backoff) if websocket else None
        )
        client = PushClient(
            reactor,
            options.reglog,
            on_message,
            client_id=name,
            heartbeat=options.heartbeat,
            max_route_failures=options.max_route_failures,
            endpoint_factory=endpoint,
            http_agent=agent,
            backoff=backoff,
            route_source=routes,
        )
        if routes is not None:

            def avoid(client: PushClient = client) -> list[str]:
                return client.avoid

            routes.avoid = avoid
        client.on_event(on_event)
        started = offset / options.connect_rate
        reactor.callLater(started, client.start)
        for number in range(options.uplinks):
            at = started + (number + 1) * options.uplink_interval
            reactor.callLater(at, send_uplink, reactor, client, name, number, recorder)
        clients.append(client)
    return clients


def send_uplink(
    reactor: Any, client: PushClient, name: str, number: int, recorder: Recorder
) -> None:
    """Send uplink ``number`` of a client, kept across reconnections until
    acknowledged; its ``U`` line is written once the server stored it."""
    uplink_id = f"{name}-u{number}"

    def acked(_: object) -> None:
        recorder.add(uplink_line(reactor.seconds(), name, uplink_id))

    sending = client.send_uplink({"n": str(number)}, uplink_id=uplink_id, resend_on_reconnect=True)
    # Not acknowledged when the client stops (or gave up): nothing to record.
    sending.addCallbacks(acked, lambda _: None)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pigeonpush_chaos.worker")
    parser.add_argument("--reglog", required=True, help="reglog's base URL")
    parser.add_argument("--first", type=int, required=True, help="number of the first client")
    parser.add_argument("--count", type=int, required=True, help="clients in this process")
    parser.add_argument("--out", required=True, help="file the records are appended to")
    parser.add_argument("--heartbeat", type=float, default=5.0)
    parser.add_argument(
        "--max-route-failures",
        type=int,
        default=None,
        help="give up after this many failed route lookups in a row (default: never)",
    )
    parser.add_argument("--connect-rate", type=float, default=200.0, help="client starts/s")
    parser.add_argument("--uplinks", type=int, default=0, help="uplinks each client sends")
    parser.add_argument(
        "--websocket-share",
        type=float,
        default=0.0,
        help="share of the clients (by number, see transport_of) that connect over WebSocket",
    )
    parser.add_argument(
        "--uplink-interval", type=float, default=5.0, help="seconds between a client's uplinks"
    )
    options = parser.parse_args(argv)
    if options.count < 1 or options.first < 0 or options.connect_rate <= 0:
        parser.error("--count must be at least 1, --first at least 0, --connect-rate positive")
    if options.uplinks < 0 or options.uplink_interval <= 0:
        parser.error("--uplinks must be 0 or more, --uplink-interval positive")
    if not 0 <= options.websocket_share <= 1:
        parser.error("--websocket-share must be between 0 and 1")
    return options


def main(argv: list[str] | None = None) -> None:
    options = parse(sys.argv[1:] if argv is None else argv)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])],
        redirectStandardIO=False,
    )

    def run(reactor: Any) -> Any:
        stream = open(options.out, "a", encoding="utf-8")  # noqa: SIM115 - closed at shutdown
        recorder = Recorder(stream)
        flusher = LoopingCall(recorder.flush)
        flusher.clock = reactor
        flusher.start(FLUSH_INTERVAL, now=False)

        def last_flush() -> None:
            if flusher.running:
                flusher.stop()
            recorder.flush()
            stream.close()

        reactor.addSystemEventTrigger("before", "shutdown", last_flush)
        start_clients(reactor, options, recorder)
        return Deferred()  # until SIGTERM stops the reactor

    react(run)


if __name__ == "__main__":
    main()
