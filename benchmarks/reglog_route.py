"""What one ``POST /v1/route`` costs pigeon-reglog, without the rest of a connect.

Run from the repository root, in the project's virtualenv (under the
benchmark lock, like every benchmark)::

    PYTHONPATH=$PWD:$PWD/tools/bench python benchmarks/reglog_route.py --n 10000 --connections 50

Starts a throwaway Redis and one pigeon-reglog on loopback with a static
discovery of two push servers (nobody listens there: only reglog's choice is
needed), sends ``--warmup`` then ``--n`` route requests for distinct clientIds
over ``--connections`` keep-alive connections (the load generator's
``RouteClient``), and prints the requests per second and reglog's CPU per
request (user and system, from ``/proc``), and this process's own CPU per
request (the client's). ``--profile FILE`` records reglog with ``py-spy``
(raw, collapsed stacks) during the measured requests.

``pigeonpush-bench connections`` gives the figure the targets are about (a
whole connect, every process); this one isolates reglog, so that a change to
it can be compared in a few seconds of runs, alternating the two trees.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from twisted.internet import defer, task

from pigeonpush_bench.processes import free_port, popen, stop_popen, wait_port
from pigeonpush_bench.route_client import RouteClient
from pigeonpush_bench.services import listen_endpoint, redis_argv

STATIC_SERVERS = (
    "static:servers=n1@127.0.0.1:7100|127.0.0.1:7101|1000000000,"
    "n2@127.0.0.1:7102|127.0.0.1:7103|1000000000"
)


async def send(reactor: Any, url: str, first: int, count: int, connections: int) -> list[str]:
    """``count`` route requests, ``connections`` at a time; the failures' names."""
    client = RouteClient(reactor, url, connections, 20.0)
    numbers = iter(range(first, first + count))
    failed: list[str] = []

    async def one_connection() -> None:
        for number in numbers:
            try:
                await client.route(f"device-{number}")
            except Exception as error:
                failed.append(str(error))

    await defer.gatherResults([defer.ensureDeferred(one_connection()) for _ in range(connections)])
    client.close()
    return failed


def start_profiler(pid: int, output: str) -> subprocess.Popen[bytes]:
    """py-spy recording ``pid`` into ``output`` until it gets SIGINT."""
    command = ["py-spy", "record", "--pid", str(pid), "--rate", "200", "--format", "raw"]
    return subprocess.Popen(
        [*command, "-o", output], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10000, help="measured requests")
    parser.add_argument("--warmup", type=int, default=1000, help="requests before measuring")
    parser.add_argument("--connections", type=int, default=50, help="keep-alive connections")
    parser.add_argument("--profile", help="py-spy raw output file for reglog")
    options = parser.parse_args()
    redis_binary = shutil.which("redis-server")
    if redis_binary is None:
        raise SystemExit("redis-server is not installed")

    directory = Path(tempfile.mkdtemp(prefix="reglog-route-"))
    redis_port = free_port()
    redis = popen(redis_argv(redis_binary, redis_port, directory), output=directory / "redis.log")
    reglog = None
    try:
        wait_port(redis, "127.0.0.1", redis_port, timeout=10, what="redis-server")
        port = free_port()
        reglog = popen(
            [
                sys.executable,
                "-m",
                "twisted",
                "--log-level=warn",
                "pigeon-reglog",
                "--listen",
                listen_endpoint(port),
                "--redis",
                f"redis://127.0.0.1:{redis_port}/0",
                "--zookeeper",
                STATIC_SERVERS,
                "--max-connections",
                str(max(options.connections * 2, 100)),
            ],
            output=directory / "reglog.log",
        )
        wait_port(reglog, "127.0.0.1", port, timeout=30, what="pigeon-reglog")
        launcher = psutil.Process(reglog.pid)
        children = launcher.children(recursive=True)
        target = children[0] if children else launcher
        from twisted.internet import reactor

        url = f"http://127.0.0.1:{port}"
        result: dict[str, Any] = {}

        async def run() -> None:
            await send(reactor, url, 0, options.warmup, options.connections)
            profiler = None
            if options.profile:
                profiler = start_profiler(target.pid, options.profile)
                await task.deferLater(reactor, 1.0, lambda: None)
            before, started, own = target.cpu_times(), time.monotonic(), time.process_time()
            failed = await send(reactor, url, 10**9, options.n, options.connections)
            after, ended, own_after = target.cpu_times(), time.monotonic(), time.process_time()
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait()
            per = 1e6 / options.n
            result.update(
                rate=options.n / (ended - started),
                user=(after.user - before.user) * per,
                system=(after.system - before.system) * per,
                client=(own_after - own) * per,
                failed=failed,
            )

        def stop(outcome: Any) -> None:
            if isinstance(outcome, Exception) or hasattr(outcome, "getTraceback"):
                result["error"] = outcome
            reactor.stop()

        defer.ensureDeferred(run()).addBoth(stop)
        reactor.run()
        if "error" in result:
            raise SystemExit(str(result["error"]))
        print(
            f"route requests/s {result['rate']:,.0f}; reglog CPU per request "
            f"{result['user'] + result['system']:.1f} us (user {result['user']:.1f}, "
            f"system {result['system']:.1f}); client CPU per request {result['client']:.1f} us; "
            f"failed {len(result['failed'])}"
        )
    finally:
        if reglog is not None:
            stop_popen(reglog)
        stop_popen(redis)


if __name__ == "__main__":
    main()
