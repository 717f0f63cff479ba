"""``pigeonpush-abuse``: run the attacks, print the report, exit 1 on a failure.

    pigeonpush-abuse --duration 20                  # a standalone of its own
    pigeonpush-abuse --device 127.0.0.1:7100 --reglog http://127.0.0.1:8100 \\
        --api http://127.0.0.1:8200 --api-key KEY --pid 1234   # a running one

Exit status: 0 when every attack passed, 1 when one failed (the daemon died,
its RSS grew past ``--max-rss-growth`` or kept more than
``--max-rss-per-login`` per finished login, or a legitimate notification took
over ``--max-latency``), 2 for bad arguments. ``attack NAME ...`` is the child the
runner starts for each attack.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from pigeonpush.hostport import parse_host_port
from pigeonpush_abuse import report
from pigeonpush_abuse.attacks import ATTACKS, Target, describe, run_attack, url_address

#: Default seconds per attack.
DEFAULT_DURATION = 20.0
#: Default most connections an attack holds at once: past the 1,024 open files
#: a daemon commonly gets, which the self-started standalone is given.
DEFAULT_CONNECTIONS = 1100
DEFAULT_FD_LIMIT = 1024
#: Upper bounds of the options, so that a typo cannot start an endless run.
MAX_DURATION = 3600.0
MAX_CONNECTIONS = 15000


class UsageError(ValueError):
    pass


def _host_port(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT: {e}") from None


def _bounded(kind: type, low: float, high: float) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low:g} to {high:g}, not {text}")
        return value

    return parse


def _url_host(flag: str, url: str) -> str:
    try:
        return url_address(url)[0]
    except ValueError as e:
        raise UsageError(f"{flag}: {e}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pigeonpush-abuse",
        description="Abuse a PigeonPush daemon on loopback over its device port and HTTP APIs "
        "while a legitimate client keeps receiving; bounded in time and connections.",
        epilog="attacks: " + ", ".join(ATTACKS),
    )
    p.add_argument(
        "--attack",
        action="append",
        choices=list(ATTACKS),
        metavar="NAME",
        help="run only this attack (repeatable; default: all, in order)",
    )
    p.add_argument(
        "--duration",
        type=_bounded(float, 1, MAX_DURATION),
        default=DEFAULT_DURATION,
        help=f"seconds per attack (default {DEFAULT_DURATION:g}, at most {MAX_DURATION:g})",
    )
    p.add_argument(
        "--connections",
        type=_bounded(int, 1, MAX_CONNECTIONS),
        default=DEFAULT_CONNECTIONS,
        help=f"most connections an attack holds at once (default {DEFAULT_CONNECTIONS}, "
        f"at most {MAX_CONNECTIONS})",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument(
        "--max-rss-growth",
        type=_bounded(float, 1, 1 << 20),
        default=report.Limits().max_rss_growth / report.MB,
        metavar="MB",
        help="fail when the daemon's RSS grows more than this during an attack (default 64)",
    )
    p.add_argument(
        "--max-latency",
        type=_bounded(float, 0.01, 60),
        default=report.Limits().max_latency,
        metavar="SECONDS",
        help="fail when a legitimate notification takes longer (default 1)",
    )
    p.add_argument(
        "--max-rss-per-login",
        type=_bounded(int, 1, 1 << 30),
        default=report.Limits().max_rss_per_login,
        metavar="BYTES",
        help="fail when an attack of 10,000 logins or more leaves the RSS this much "
        "higher per login (default 256)",
    )
    p.add_argument(
        "--max-log-rate",
        type=_bounded(int, 1, 1 << 30),
        default=report.Limits().max_log_rate // 1024,
        metavar="KB",
        help="fail when the daemon logs more than this many KB a second during "
        "log-injection (default 64)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    own = p.add_argument_group("the standalone it starts (when no --device is given)")
    own.add_argument(
        "--workdir", type=Path, default=None, help="its logs go here (default: a temp dir)"
    )
    own.add_argument(
        "--daemon-fd-limit",
        type=_bounded(int, 64, 1 << 20),
        default=DEFAULT_FD_LIMIT,
        help=f"its open-files limit (default {DEFAULT_FD_LIMIT}, a common default)",
    )
    own.add_argument(
        "--store",
        default="memory:",
        metavar="URL",
        help="its store: memory: (default) or a redis://host:port/db to attack a Redis-backed "
        "daemon (answers that wait for Redis are read and written differently)",
    )
    given = p.add_argument_group("a daemon that is running already")
    given.add_argument("--device", type=_host_port, help="HOST:PORT of the device listener")
    given.add_argument("--reglog", help="base URL of the route API")
    given.add_argument("--api", help="base URL of the notification API")
    given.add_argument("--api-key", help="an API key of the notification API")
    given.add_argument("--pid", type=int, help="its process id, for RSS and liveness")
    given.add_argument("--log", type=Path, help="its log file, to report log growth")
    return p


def attacker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pigeonpush-abuse attack")
    p.add_argument("name", choices=list(ATTACKS))
    p.add_argument("--device", type=_host_port, required=True)
    p.add_argument("--reglog", required=True)
    p.add_argument("--api", required=True)
    p.add_argument("--api-key", required=True)
    p.add_argument("--duration", type=_bounded(float, 0.1, MAX_DURATION), required=True)
    p.add_argument("--connections", type=_bounded(int, 1, MAX_CONNECTIONS), required=True)
    p.add_argument("--seed", type=int, required=True)
    return p


def given_target(options: argparse.Namespace) -> Target | None:
    """The target named on the command line, None to start a standalone;
    UsageError for a partial or non-loopback one."""
    named = {
        "--device": options.device,
        "--reglog": options.reglog,
        "--api": options.api,
        "--api-key": options.api_key,
    }
    if not any(named.values()):
        if options.pid is not None or options.log is not None:
            raise UsageError("--pid and --log go with --device, --reglog, --api and --api-key")
        return None
    missing = [flag for flag, value in named.items() if not value]
    if missing:
        raise UsageError(f"a running daemon needs {', '.join(missing)} too")
    from pigeonpush_abuse.runner import loopback

    hosts = {
        "--device": options.device[0],
        "--reglog": _url_host("--reglog", options.reglog),
        "--api": _url_host("--api", options.api),
    }
    for flag, host in hosts.items():
        if not loopback(host):
            raise UsageError(f"{flag}: only loopback targets are allowed, not {host!r}")
    return Target(options.device, options.reglog, options.api, options.api_key)


async def _run(reactor: Any, options: argparse.Namespace) -> NoReturn:
    from pigeonpush_abuse.runner import Runner, Standalone, process_alive

    target = given_target(options)
    seed = options.seed if options.seed is not None else random.randrange(1 << 32)
    names = options.attack or list(ATTACKS)
    limits = report.Limits(
        max_rss_growth=int(options.max_rss_growth * report.MB),
        max_latency=options.max_latency,
        max_rss_per_login=options.max_rss_per_login,
        max_log_rate=options.max_log_rate * 1024,
    )
    standalone = None
    if target is None:
        workdir = options.workdir or Path(tempfile.mkdtemp(prefix="pigeonpush-abuse-"))
        standalone = Standalone(workdir, fd_limit=options.daemon_fd_limit, store=options.store)
        standalone.start()
        target, pid, log_path = standalone.target, standalone.pid, standalone.log_path
        print(
            f"pigeonpush-abuse: started pigeon-standalone (pid {pid}), logs in {workdir}",
            file=sys.stderr,
        )
    else:
        pid, log_path = options.pid, options.log

    def alive() -> bool | None:
        return None if pid is None else process_alive(pid)

    runner = Runner(
        reactor,
        target,
        pid,
        options.duration,
        options.connections,
        seed,
        limits,
        log_path=log_path,
        alive=alive,
    )
    try:
        if standalone is not None:
            from treq.client import HTTPClient
            from twisted.web.client import Agent, HTTPConnectionPool

            from pigeonpush_abuse.runner import healthy

            pool = HTTPConnectionPool(reactor, persistent=False)
            ready = await healthy(reactor, HTTPClient(Agent(reactor, pool=pool)), target, 45.0)
            await pool.closeCachedConnections()
            if not ready:
                raise SystemExit(f"pigeonpush-abuse: the standalone did not start; see {log_path}")
        results = await runner.run(names)
    finally:
        if standalone is not None:
            await standalone.stop(reactor)
    print(report.table(results))
    data = report.document(
        results, limits, seed=seed, duration=options.duration, connections=options.connections
    )
    if options.json is not None:
        options.json.write_text(report.dumps(data) + "\n")
    complete = len(results) == len(names)
    raise SystemExit(0 if data["passed"] and complete else 1)


async def _attack(reactor: Any, options: argparse.Namespace) -> None:
    host, port = options.device
    target = Target((host, port), options.reglog, options.api, options.api_key)
    summary = await run_attack(
        reactor, options.name, target, options.duration, options.connections, options.seed
    )
    print(report.dumps(summary).replace("\n", " "), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["attack"]:
        options = attacker_parser().parse_args(arguments[1:])
        react(lambda reactor: Deferred.fromCoroutine(_attack(reactor, options)))
    options = parser().parse_args(arguments)
    try:
        given_target(options)
    except UsageError as e:
        parser().error(str(e))
    react(lambda reactor: Deferred.fromCoroutine(_run(reactor, options)))
    return 0  # react() exits


__all__ = ["describe", "main", "parser"]
