"""``pigeonpush-chaos``: the command line.

Exit status: 0 when the run finished (and, with ``--assert``, every assertion
holds), 1 when an assertion fails, 2 when the run could not be made (a
daemon did not start, bad options, the time bound ran out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.task import react

from pigeonpush_bench.processes import StartError
from pigeonpush_chaos.report import format_table
from pigeonpush_chaos.run import Chaos, Options, RunTimeout
from pigeonpush_chaos.schedule import DEFAULT_FAULTS, parse_faults

#: The largest number of clients one process may hold (the fd limit is 20,000).
MAX_PER_PROCESS = 5_000


def _positive(kind: type) -> Any:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value

    return convert


def _faults(text: str) -> Any:
    try:
        return parse_faults(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pigeonpush-chaos",
        description=(
            "Start a PigeonPush cluster on loopback (Redis with AOF, ZooKeeper, 2 pigeon-server, "
            "2 pigeon-delivery, reglog, notification), connect SDK clients (a share of them over "
            "WebSocket) in separate processes, send notifications through the batch API "
            "while injecting faults, and report what the clients' callbacks saw. "
            "See docs/reliability.rst."
        ),
    )
    p.add_argument("--clients", type=_positive(int), default=300, help="SDK clients (300)")
    p.add_argument("--messages", type=_positive(int), default=5_000, help="notifications (5000)")
    p.add_argument(
        "--per-process", type=_positive(int), default=250, help="clients per process (250)"
    )
    p.add_argument(
        "--send-seconds",
        type=_positive(float),
        default=90.0,
        help="seconds over which the notifications are sent (90)",
    )
    p.add_argument("--batch", type=_positive(int), default=100, help="notifications per request")
    p.add_argument(
        "--faults",
        type=_faults,
        default=list(DEFAULT_FAULTS),
        help="comma-separated faults, in order; '' for none "
        f"(default {','.join(kind.value for kind in DEFAULT_FAULTS)})",
    )
    p.add_argument("--heartbeat", type=_positive(float), default=5.0, help="daemons' heartbeat")
    p.add_argument(
        "--zookeeper-timeout", type=_positive(float), default=3.0, help="daemons' ZK session"
    )
    p.add_argument("--drain-period", type=_positive(float), default=5.0, help="servers' drain")
    p.add_argument("--restart-delay", type=_positive(float), default=1.0)
    p.add_argument("--lead", type=float, default=10.0, help="seconds before the first fault")
    p.add_argument("--gap", type=float, default=10.0, help="seconds between recovery and fault")
    p.add_argument("--drain", type=float, default=30.0, help="seconds to wait for stragglers")
    p.add_argument("--reconnect-bound", type=_positive(float), default=10.0)
    p.add_argument("--timeout", type=_positive(float), default=900.0, help="bound of the run")
    p.add_argument("--connect-rate", type=_positive(float), default=200.0, help="client starts/s")
    p.add_argument("--log-level", default="warn", help="daemons' log level (warn)")
    p.add_argument(
        "--uplinks", type=int, default=3, help="uplinks each client sends, 0 for none (3)"
    )
    p.add_argument(
        "--uplink-interval", type=_positive(float), default=20.0, help="seconds between them (20)"
    )
    p.add_argument(
        "--websocket-share",
        type=float,
        default=0.2,
        help="share of the clients that connect over WebSocket, 0 for none (0.2)",
    )
    p.add_argument(
        "--direct-streams",
        action="store_true",
        help="run the daemons with ?direct_streams=1 on their store URL: unicasts to online "
        "devices skip delivery (off)",
    )
    p.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    p.add_argument("--dir", type=Path, default=None, help="run directory (default: a temporary)")
    p.add_argument(
        "--keep", action="store_true", help="keep the run directory (kept anyway on failure)"
    )
    p.add_argument(
        "--assert",
        dest="check",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="exit 1 unless 0 lost, 0 duplicates, 0 delayed, every client back in time "
        "(default: on when $CI is set)",
    )
    return p


def options_from(arguments: argparse.Namespace) -> Options:
    if arguments.per_process > MAX_PER_PROCESS:
        raise SystemExit(f"pigeonpush-chaos: --per-process is at most {MAX_PER_PROCESS}")
    if arguments.uplinks < 0:
        raise SystemExit("pigeonpush-chaos: --uplinks must be 0 or more")
    if not 0 <= arguments.websocket_share <= 1:
        raise SystemExit("pigeonpush-chaos: --websocket-share must be between 0 and 1")
    return Options(
        clients=arguments.clients,
        messages=arguments.messages,
        per_process=arguments.per_process,
        send_seconds=arguments.send_seconds,
        batch=arguments.batch,
        faults=arguments.faults,
        heartbeat=arguments.heartbeat,
        zookeeper_timeout=arguments.zookeeper_timeout,
        drain_period=arguments.drain_period,
        restart_delay=arguments.restart_delay,
        lead=arguments.lead,
        gap=arguments.gap,
        drain=arguments.drain,
        reconnect_bound=arguments.reconnect_bound,
        timeout=arguments.timeout,
        connect_rate=arguments.connect_rate,
        log_level=arguments.log_level,
        uplinks=arguments.uplinks,
        uplink_interval=arguments.uplink_interval,
        websocket_share=arguments.websocket_share,
        direct_streams=arguments.direct_streams,
    )


def main(argv: list[str] | None = None) -> None:
    arguments = parser().parse_args(sys.argv[1:] if argv is None else argv)
    options = options_from(arguments)
    check = arguments.check if arguments.check is not None else bool(os.environ.get("CI"))
    if arguments.dir is not None:
        arguments.dir.mkdir(parents=True, exist_ok=True)
        directory = arguments.dir
    else:
        directory = Path(tempfile.mkdtemp(prefix="pigeonpush-chaos-"))

    async def run(reactor: Any) -> int:
        chaos = Chaos(reactor, options, directory, sys.stderr)
        try:
            report = await chaos.run()
        except (StartError, RunTimeout) as e:
            sys.stderr.write(f"pigeonpush-chaos: {e}\nthe run's files: {directory}\n")
            return 2
        sys.stdout.write(format_table(report))
        if arguments.json is not None:
            arguments.json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        failed = bool(report.failures())
        if failed or arguments.keep or arguments.dir is not None:
            sys.stderr.write(f"the run's files: {directory}\n")
        else:
            shutil.rmtree(directory, ignore_errors=True)
        return 1 if failed and check else 0

    def start(reactor: Any) -> defer.Deferred[None]:
        async def body() -> None:
            status = await run(reactor)
            if status:
                raise SystemExit(status)

        return defer.ensureDeferred(body())

    react(start)
