"""``pigeonpush-bench SCENARIO``: measure the push service against its baselines.

The run starts everything it measures as processes on loopback (Redis,
ZooKeeper, the pigeon daemons, a bare Twisted framing server, Mosquitto, the
load generators), stops them all at the end, whatever happens, and prints a
table (or ``--json``). Progress goes to stderr. The exit code is 0 when the
run completed without losing a message or a client, 1 otherwise.

This machine's limit shapes big runs: a process holds at most ~19,900 sockets
(``ulimit -n`` is 20,000 and cannot be raised), so the tool puts at most
19,500 connections on any one process and spreads larger runs over several
server processes (``--servers``) and load generator processes (automatic).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import ensureDeferred

from pigeonpush_bench import __version__
from pigeonpush_bench.cluster import REDIS, STORES, Run, RunTimeout, Settings
from pigeonpush_bench.control import LoadGenDied, LoadGenError
from pigeonpush_bench.measure import connections_per_process, machine
from pigeonpush_bench.processes import Interrupted, ProcessSet, StartError
from pigeonpush_bench.report import Progress, Report, format_json, format_table
from pigeonpush_bench.scenarios import (
    BASELINES,
    backlog,
    connections,
    push,
    reconnect,
    unicast,
)
from pigeonpush_bench.topics import catchup, fanout, topic_connections
from pigeonpush_bench.twist import REACTORS

INTERRUPTED = "interrupted; every process it started was stopped"
MAX_CLIENTS = 200_000
MAX_SERVERS = 16
MAX_MESSAGES = 10_000_000
#: Messages to one topic: the servers' default --topic-log-length (more and
#: an offline subscriber misses some by design).
MAX_TOPIC_MESSAGES = 10_000
#: The servers' default --max-topics-per-device.
MAX_TOPICS_PER_CLIENT = 100
#: The notification API's default --max-text.
MAX_SIZE = 2048
MIN_SIZE = 32


def _bounded_int(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", "").replace(",", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:,} to {high:,}, not {value:,}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 (as fast as possible) or more")
    return value


def _baselines(text: str) -> list[str]:
    if text in ("", "none"):
        return []
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BASELINES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown baseline {unknown[0]!r}: choose from {', '.join(BASELINES)} or none"
        )
    return names


def _stores(text: str) -> list[str]:
    """--store: redis, cluster or both (in that order)."""
    if text == "both":
        return list(STORES)
    if text not in STORES:
        raise argparse.ArgumentTypeError(
            f"unknown store {text!r}: choose from {', '.join(STORES)} or both"
        )
    return [text]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=600.0,
        help="bound on the whole run in seconds; everything is stopped then (default 600)",
    )
    parser.add_argument(
        "--heartbeat",
        type=_positive_float,
        default=10.0,
        help="seconds between client heartbeats, told to the servers (default 10)",
    )
    parser.add_argument(
        "--window",
        type=_positive_float,
        default=10.0,
        help="seconds over which steady-state CPU is measured (default 10)",
    )
    parser.add_argument(
        "--concurrency",
        type=_bounded_int(1, 5000),
        default=200,
        help="connection attempts in flight per load generator (default 200)",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warn", "error"],
        default="warn",
        help="log level of the pigeon daemons (default warn, as Mosquitto's errors+warnings)",
    )
    parser.add_argument(
        "--reactor",
        choices=REACTORS,
        default="default",
        help="the pigeon daemons' reactor: Twisted's default (epoll), asyncio, or asyncio on "
        "uvloop (which must be installed) (default: default)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the run's directory (configs and every process's log); kept anyway on failure",
    )


def _scenario_defaults(sub: argparse.ArgumentParser, *, servers: int) -> None:
    sub.add_argument(
        "--servers",
        type=_bounded_int(1, MAX_SERVERS),
        default=servers,
        help=f"pigeon-server processes (default {servers})",
    )


def _message_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--size",
        type=_bounded_int(MIN_SIZE, MAX_SIZE),
        default=100,
        help="bytes of message text (default 100)",
    )
    sub.add_argument(
        "--batch",
        type=_bounded_int(1, 500),
        default=None,
        help="notifications per batch request (default 100; at a --rate, what is due "
        "every 10 ms, so that a batch does not hold messages back)",
    )
    sub.add_argument(
        "--api-concurrency",
        type=_bounded_int(1, 64),
        default=4,
        help="batch requests in flight; Mosquitto's publisher gets batch x this "
        "many un-ACKed PUBLISHes (default 4)",
    )


def build_parser() -> argparse.ArgumentParser:
    """``pigeonpush-bench``'s parser: one subcommand per scenario."""
    parser = argparse.ArgumentParser(prog="pigeonpush-bench")
    parser.add_argument("--version", action="version", version=f"pigeonpush-bench {__version__}")
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``pigeonpush-bench`` console script."""
    args = build_parser().parse_args(argv)
    return run(args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Measure the push service and its baselines (bare Twisted framing, Mosquitto) on "
        "loopback: everything runs as subprocesses and is stopped at the end. A process "
        f"holds at most ~{connections_per_process():,} connections here (fd limit), so "
        "larger runs use several server and load generator processes."
    )
    scenarios = parser.add_subparsers(dest="scenario", metavar="SCENARIO", required=True)

    sub = scenarios.add_parser(
        "connections",
        help="N authenticated clients with heartbeats: connect rate, RSS and CPU per connection",
        description="N authenticated clients with heartbeats over S pigeon-server processes "
        "(through reglog): connect+auth rate, server RSS per connection (total and added over "
        "idle), CPU at steady heartbeat load; the same for the bare Twisted framing server "
        "and for Mosquitto.",
    )
    sub.add_argument(
        "--n",
        type=_bounded_int(1, MAX_CLIENTS),
        default=2000,
        help="clients (default 2,000)",
    )
    _scenario_defaults(sub, servers=1)
    sub.add_argument(
        "--baselines",
        type=_baselines,
        default=list(BASELINES),
        help="comma-separated: twisted, mosquitto, or none (default both)",
    )
    sub.add_argument(
        "--websocket",
        action="store_true",
        help="also measure pigeonpush with the clients over WebSocket (column 'websocket', "
        "compared with TCP in the notes)",
    )
    sub.add_argument(
        "--topics-per-client",
        type=_bounded_int(0, MAX_TOPICS_PER_CLIENT),
        default=0,
        help="subscribe each client to this many topics and compare with pigeonpush without "
        "topics, in the same run (no other baselines then); default 0: no topics",
    )
    _common(sub)

    sub = scenarios.add_parser(
        "unicast",
        help="M messages through the notification API to random online clients",
        description="M notifications through the notification API's batch endpoint to random "
        "online clients: delivered-and-ACKed messages/s, latency (p50/p95/p99/max), lost, "
        "duplicates; then Mosquitto QoS 1 with the same N, M, size and rate.",
    )
    sub.add_argument("--clients", type=_bounded_int(1, MAX_CLIENTS), default=1000)
    sub.add_argument("--messages", type=_bounded_int(1, MAX_MESSAGES), default=10_000)
    sub.add_argument(
        "--rate",
        type=_rate,
        default=0.0,
        help="messages per second to send at (default 0: as fast as accepted)",
    )
    _message_options(sub)
    _scenario_defaults(sub, servers=1)
    sub.add_argument(
        "--baselines",
        type=_baselines,
        default=[BASELINES[1]],
        help="mosquitto or none (default mosquitto)",
    )
    sub.add_argument(
        "--store",
        type=_stores,
        default=[REDIS],
        help="what the daemons keep their state in: redis (one redis-server), cluster "
        "(a Redis Cluster of 3 masters and 3 replicas, redis+cluster:// on every daemon) "
        "or both, one after the other, with Redis commands and CPU per message and the "
        "ratios cluster/redis (default redis)",
    )
    sub.add_argument(
        "--direct-streams",
        action="store_true",
        help="run the pigeon daemons with ?direct_streams=1 on their store URL: unicasts to "
        "online devices go from accept to their push server's own stream (one Redis only)",
    )
    _common(sub)

    sub = scenarios.add_parser(
        "push",
        help="the server's write path: AMP Push straight to one server vs bare Twisted frames/s",
        description="M PUSH frames written by one pigeon-server to N clients, driven over AMP "
        "Push as delivery does (no API, Redis or delivery in front), against the bare Twisted "
        "framing server writing the same number of frames of the same length.",
    )
    sub.add_argument("--clients", type=_bounded_int(1, MAX_CLIENTS), default=1000)
    sub.add_argument("--messages", type=_bounded_int(1, MAX_MESSAGES), default=100_000)
    sub.add_argument(
        "--burst",
        type=_bounded_int(1, 32),
        default=8,
        help="consecutive frames to the same client before the next, for both systems; at "
        "most the server's ACK window of 32 (default 8)",
    )
    _message_options(sub)
    sub.set_defaults(servers=1)
    sub.add_argument(
        "--baselines",
        type=_baselines,
        default=[BASELINES[0]],
        help="twisted or none (default twisted)",
    )
    _common(sub)

    sub = scenarios.add_parser(
        "backlog",
        help="K messages queued per offline client, then all connect: time to drain",
        description="K messages queued for each of N offline clients, then all connect: time "
        "until every message is delivered and ACKed, order per client, loss.",
    )
    sub.add_argument("--clients", type=_bounded_int(1, MAX_CLIENTS), default=1000)
    sub.add_argument("--per-client", type=_bounded_int(1, 10_000), default=10)
    _message_options(sub)
    _scenario_defaults(sub, servers=1)
    _common(sub)

    sub = scenarios.add_parser(
        "reconnect",
        help="SIGKILL one of two servers: time until every client is back; nothing lost",
        description="N clients over S servers (default 2); one server is SIGKILLed and M "
        "messages are sent meanwhile: time until every client is authenticated again, "
        "and whether every message still arrives.",
    )
    sub.add_argument("--clients", type=_bounded_int(1, MAX_CLIENTS), default=1000)
    sub.add_argument(
        "--messages",
        type=_bounded_int(0, MAX_MESSAGES),
        default=None,
        help="messages sent after the kill (default: one per client)",
    )
    _message_options(sub)
    _scenario_defaults(sub, servers=2)
    _common(sub)

    _topic_scenarios(scenarios)


def _topic_scenarios(scenarios: Any) -> None:
    sub = scenarios.add_parser(
        "fanout",
        help="M messages to one topic of N subscribers: deliveries/s to ACK vs Mosquitto",
        description="N clients subscribed to one topic (through the notification API), M "
        "messages published to it, every client ACKs every message: deliveries per second, "
        "lost, duplicates; then Mosquitto QoS 1 to as many subscribers of one topic (one "
        "broker per --servers, every message published to each).",
    )
    sub.add_argument("--subscribers", type=_bounded_int(1, MAX_CLIENTS), default=2000)
    sub.add_argument(
        "--messages", type=_bounded_int(1, MAX_TOPIC_MESSAGES), default=20, help="(default 20)"
    )
    sub.add_argument(
        "--size",
        type=_bounded_int(MIN_SIZE, MAX_SIZE),
        default=100,
        help="bytes of message text (default 100)",
    )
    _scenario_defaults(sub, servers=1)
    sub.add_argument(
        "--baselines",
        type=_baselines,
        default=[BASELINES[1]],
        help="mosquitto or none (default mosquitto)",
    )
    _common(sub)

    sub = scenarios.add_parser(
        "catchup",
        help="N offline subscribers of a topic, K messages, then all connect: time to drain",
        description="N clients subscribed to one topic while offline, K messages published to "
        "it, then all connect and catch up from the topic's log: time to drain, deliveries/s, "
        "Redis commands per delivered message, lost, duplicates, order.",
    )
    sub.add_argument("--subscribers", type=_bounded_int(1, MAX_CLIENTS), default=2000)
    sub.add_argument(
        "--per-subscriber",
        type=_bounded_int(1, MAX_TOPIC_MESSAGES),
        default=100,
        help="messages published while they are offline (default 100; at most the servers' "
        "--topic-log-length of 10,000)",
    )
    sub.add_argument(
        "--size",
        type=_bounded_int(MIN_SIZE, MAX_SIZE),
        default=100,
        help="bytes of message text (default 100)",
    )
    _scenario_defaults(sub, servers=1)
    _common(sub)


def _clients(args: argparse.Namespace) -> int:
    if args.scenario == "connections":
        return int(args.n)
    if args.scenario in ("fanout", "catchup"):
        return int(args.subscribers)
    return int(args.clients)


def check(args: argparse.Namespace) -> str | None:
    """Cross-option checks argparse cannot express; the message, or None."""
    per_process = connections_per_process()
    clients = _clients(args)
    if clients / args.servers > per_process:
        return (
            f"{clients:,} clients over {args.servers} server(s) is more than "
            f"{per_process:,} per process (this machine's fd limit); use --servers "
            f"{-(-clients // per_process)} or more"
        )
    if args.scenario == "reconnect" and args.servers < 2:
        return "reconnect needs --servers 2 or more (one is killed)"
    return None


def batch_size(args: argparse.Namespace) -> int:
    """--batch, or its default: 100, or at a fixed rate what is due every 10 ms."""
    if args.batch is not None:
        return int(args.batch)
    rate = getattr(args, "rate", 0.0)
    return max(1, min(500, round(rate / 100))) if rate > 0 else 100


def _bench_argv() -> list[str]:
    """This run's words (for the report's command line)."""
    return sys.argv[1:]


async def bench(reactor: Any, args: argparse.Namespace, directory: Path) -> Report:
    """Run the chosen scenario with everything it starts stopped at the end."""
    progress = Progress(sys.stderr, reactor, enabled=not args.no_progress)
    settings = Settings(
        timeout=args.timeout,
        heartbeat=args.heartbeat,
        window=args.window,
        log_level=args.log_level,
        concurrency=args.concurrency,
        reactor=args.reactor,
    )
    processes = ProcessSet(reactor, directory)
    run = Run(reactor, processes, progress, settings)
    command = "pigeonpush-bench " + " ".join(shlex.quote(word) for word in _bench_argv())
    try:
        if args.scenario == "connections" and args.topics_per_client:
            report = await topic_connections(
                run,
                clients=args.n,
                servers=args.servers,
                topics_per_client=args.topics_per_client,
                command=command,
            )
        elif args.scenario == "connections":
            report = await connections(
                run,
                clients=args.n,
                servers=args.servers,
                baselines=args.baselines,
                command=command,
                websocket=args.websocket,
            )
        elif args.scenario == "fanout":
            report = await fanout(
                run,
                subscribers=args.subscribers,
                messages=args.messages,
                size=args.size,
                servers=args.servers,
                baselines=args.baselines,
                command=command,
            )
        elif args.scenario == "catchup":
            report = await catchup(
                run,
                subscribers=args.subscribers,
                messages=args.per_subscriber,
                size=args.size,
                servers=args.servers,
                command=command,
            )
        elif args.scenario == "unicast":
            report = await unicast(
                run,
                clients=args.clients,
                messages=args.messages,
                size=args.size,
                rate=args.rate,
                servers=args.servers,
                batch=batch_size(args),
                concurrency=args.api_concurrency,
                baselines=args.baselines,
                command=command,
                stores=args.store,
                direct_streams=args.direct_streams,
            )
        elif args.scenario == "push":
            report = await push(
                run,
                clients=args.clients,
                messages=args.messages,
                size=args.size,
                burst=args.burst,
                batch=batch_size(args),
                concurrency=args.api_concurrency,
                baselines=args.baselines,
                command=command,
            )
        elif args.scenario == "backlog":
            report = await backlog(
                run,
                clients=args.clients,
                per_client=args.per_client,
                size=args.size,
                servers=args.servers,
                batch=batch_size(args),
                concurrency=args.api_concurrency,
                command=command,
            )
        else:
            report = await reconnect(
                run,
                clients=args.clients,
                messages=args.clients if args.messages is None else args.messages,
                size=args.size,
                servers=args.servers,
                batch=batch_size(args),
                concurrency=args.api_concurrency,
                command=command,
            )
    except (StartError, RunTimeout, LoadGenDied, LoadGenError) as e:
        if processes.interrupted:
            raise Interrupted(INTERRUPTED) from e
        raise
    finally:
        progress.phase("stopping everything started")
        await processes.stop_all()
        progress.clear()
    report.machine = machine()
    return report


def run(args: argparse.Namespace) -> int:
    from twisted.internet.task import react

    problem = check(args)
    if problem is not None:
        print(f"pigeonpush-bench: {problem}", file=sys.stderr)
        return 2
    directory = Path(tempfile.mkdtemp(prefix="pigeonpush-bench-"))
    outcome: list[int] = []

    async def main(reactor: Any) -> None:
        try:
            report = await bench(reactor, args, directory)
        except (StartError, RunTimeout, LoadGenDied, LoadGenError, Interrupted) as e:
            print(f"pigeonpush-bench: {e}", file=sys.stderr)
            outcome.append(1)
            return
        sys.stdout.write(format_json(report) if args.json else format_table(report))
        outcome.append(0 if report.ok else 1)

    try:
        react(lambda reactor: ensureDeferred(main(reactor)))
    except SystemExit as e:
        if e.code not in (0, None) and not outcome:
            outcome.append(int(e.code) if isinstance(e.code, int) else 1)
    if not outcome:
        # The reactor stopped before the run ended (Ctrl-C, SIGTERM while waiting).
        print(
            "pigeonpush-bench: interrupted; every process it started was stopped", file=sys.stderr
        )
    code = outcome[0] if outcome else 1
    if code == 0 and not args.keep:
        shutil.rmtree(directory, ignore_errors=True)
    else:
        print(f"pigeonpush-bench: logs and configs in {directory}", file=sys.stderr)
    return code
