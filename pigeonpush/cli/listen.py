"""``pigeonpush listen``: receive pushed messages, one JSON line each on stdout.

Each message is printed as ``{"messageId", "title", "text", "extras",
"topic" (when it came through one), "receivedAt"}`` and flushed, then ACKed:
the ACK waits until the line is written, so a message is never acknowledged
without being shown. The line is written synchronously on purpose (a CLI's
stdout is its product). Connection status goes to stderr. Ctrl-C closes the
connection and exits 0. It reconnects for as long as
it runs (a reglog or push server restart is waited out) unless
``--max-route-failures`` sets a limit; giving up (reglog refused, or failed
that many times in a row; the clientId logged in elsewhere) exits 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from datetime import datetime, timezone
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python.failure import Failure

from pigeonpush.identifiers import check_topic
from pigeonpush.sdk import (
    Authenticated,
    ClientEvent,
    Connected,
    Disconnected,
    GaveUp,
    Message,
    MessagesMissed,
    PushClient,
    full_jitter,
)

SECRET_ENVIRONMENT = "PIGEONPUSH_SECRET"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reglog", required=True, metavar="URL", help="reglog base URL, e.g. http://host:8100"
    )
    parser.add_argument(
        "--client-id",
        metavar="ID",
        help="this device's clientId (default: derived from the MAC address)",
    )
    parser.add_argument(
        "--secret",
        metavar="S",
        default=os.environ.get(SECRET_ENVIRONMENT),
        help=f"device secret in registration mode (default: ${SECRET_ENVIRONMENT})",
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="PING interval until the server announces its own (default: 30)",
    )
    parser.add_argument(
        "--max-route-failures",
        type=_positive_int,
        metavar="N",
        help="failed reglog requests in a row before giving up (default: never give up)",
    )
    # The old name of --max-route-failures, still accepted.
    parser.add_argument(
        "--http-retries", type=_positive_int, dest="max_route_failures", help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--max-backoff",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="longest wait between two reconnection attempts (default: 60)",
    )
    parser.add_argument(
        "--ca-file",
        metavar="PEM",
        help="authorities a TLS push server's certificate must chain to "
        "(default: the system's store)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="FOR TESTS ONLY: do not verify TLS push servers' certificates",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="log the SDK's info messages to stderr"
    )
    parser.add_argument(
        "--topic",
        action="append",
        default=[],
        type=_topic,
        help="subscribe this device to TOPIC once connected (repeatable; the server must "
        "allow it: --device-topics)",
    )


def _topic(text: str) -> str:
    try:
        return check_topic(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer of at least 1, not {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from twisted.internet import task

    try:
        task.react(listen, [args])
    except SystemExit as done:  # react always ends this way; main() wants the code
        return done.code if isinstance(done.code, int) else 1
    return 0  # pragma: no cover  (react never returns)


def message_line(message: Message) -> str:
    """The JSON line printed for one message."""
    received = datetime.fromtimestamp(message.received_at, timezone.utc)
    line: dict[str, object] = {
        "messageId": message.message_id,
        "title": message.title,
        "text": message.text,
        "extras": dict(message.extras),
    }
    if message.topic is not None:
        line["topic"] = message.topic  # "*": a broadcast
    line["receivedAt"] = received.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps(line, ensure_ascii=False)


def status_line(event: ClientEvent) -> str:
    match event:
        case Connected():
            return f"connected to {event.server}"
        case Authenticated():
            return f"authenticated on {event.server} (heartbeat {event.heartbeat:g}s)"
        case Disconnected():
            return f"disconnected from {event.server}: {event.reason}"
        case GaveUp():
            return f"gave up: {event.error}"
        case MessagesMissed():
            return f"messages of topic {event.topic} were missed: the server's log lost them"


def _start_logging(verbose: bool) -> None:
    level = LogLevel.info if verbose else LogLevel.warn
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(defaultLogLevel=level)]
    )
    # stdout carries the messages: leave it alone.
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


async def listen(reactor: Any, args: argparse.Namespace) -> None:
    _start_logging(args.verbose)
    finished: Deferred[None] = Deferred()

    def show(message: Message) -> None:
        sys.stdout.write(message_line(message) + "\n")
        sys.stdout.flush()

    def subscribed(_: object, topic: str) -> None:
        print(f"pigeonpush listen: subscribed to {topic}", file=sys.stderr, flush=True)

    def not_subscribed(failure: Failure, topic: str) -> None:
        print(
            f"pigeonpush listen: could not subscribe to {topic}: {failure.getErrorMessage()}",
            file=sys.stderr,
            flush=True,
        )

    def report(event: ClientEvent) -> None:
        print(f"pigeonpush listen: {status_line(event)}", file=sys.stderr, flush=True)
        if isinstance(event, GaveUp) and not finished.called:
            finished.errback(SystemExit(1))
        if isinstance(event, Authenticated):
            # Subscriptions hold across connections; asking again is harmless.
            for topic in args.topic:
                asking = client.subscribe(topic)
                asking.addCallbacks(
                    subscribed, not_subscribed, callbackArgs=(topic,), errbackArgs=(topic,)
                )

    if args.insecure:
        print(
            "pigeonpush listen: WARNING: --insecure: TLS certificates are NOT verified; "
            "anyone on the path can read and change the messages (for tests only)",
            file=sys.stderr,
            flush=True,
        )
    try:
        client = PushClient(
            reactor,
            args.reglog,
            show,
            client_id=args.client_id,
            secret=args.secret,
            heartbeat=args.heartbeat,
            max_route_failures=args.max_route_failures,
            backoff=full_jitter(initial=min(1.0, args.max_backoff), maximum=args.max_backoff),
            ca_file=args.ca_file,
            insecure=args.insecure,
        )
    except ValueError as e:
        print(f"pigeonpush listen: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    client.on_event(report)
    reactor.addSystemEventTrigger("before", "shutdown", client.stop)
    client.start()
    # Runs until Ctrl-C (the reactor stops, the trigger closes the connection
    # cleanly, react exits 0) or until the client gives up (exit 1).
    await finished
