"""Memory per idle, authenticated connection: a push server against the bare
Twisted framing server of ``pigeonpush-bench`` (``pigeonpush_bench.baseline``).

Run from the repository root, in the project's virtualenv::

    PYTHONPATH=$PWD:$PWD/tools/bench python benchmarks/session_memory.py --n 15000
    PYTHONPATH=$PWD:$PWD/tools/bench python benchmarks/session_memory.py --n 15000 --baseline
    PYTHONPATH=$PWD:$PWD/tools/bench python benchmarks/session_memory.py --n 5000 --trace 12

The server (a ``PushHub`` on the memory store, its ``ServerProtocolFactory``
on the epoll reactor) runs in this process; a child process opens N real TCP
connections to it and sends each AUTH (the baseline ignores it). Once the
hub holds N sessions (or the baseline N connections) the process's RSS added
over idle is printed per connection; with ``--trace`` the tracemalloc
snapshot's difference over idle, grouped by traceback, largest first (the
memory store's entries are among them: in a deployment they are in Redis).
RSS moves by a few hundred bytes per connection between runs (allocator
arenas): compare traced bytes, or RSS over several runs.
"""

from __future__ import annotations

import argparse
import gc
import socket
import subprocess
import sys
import time
import tracemalloc
from typing import Any


def client(port: int, count: int) -> None:
    """Open ``count`` connections, send each an AUTH, hold them until stdin closes."""
    from pigeonpush.wire.codec import encode
    from pigeonpush.wire.frames import Auth

    held = []
    for index in range(count):
        connection = socket.create_connection(("127.0.0.1", port))
        connection.sendall(encode(Auth(client_id(index), token(index))))
        held.append(connection)
    sys.stdin.read()


def client_id(index: int) -> str:
    return f"client-{index:06d}"


def token(index: int) -> str:
    return f"token-{index:06d}-abcdefghijklmnopqrstuv"


def short(frame: tracemalloc.Frame) -> str:
    return "/".join(frame.filename.split("/")[-2:]) + f":{frame.lineno}"


def report(n: int, idle_rss: int, rss: int, idle: Any, top: int) -> None:
    print(f"RSS added per connection: {(rss - idle_rss) / n:.0f} bytes")
    if idle is None:
        return
    own = tracemalloc.Filter(False, tracemalloc.__file__)
    now = tracemalloc.take_snapshot().filter_traces([own])
    diff = now.compare_to(idle.filter_traces([own]), "traceback")
    print(f"traced added per connection: {sum(d.size_diff for d in diff) / n:.0f} bytes")
    for stat in sorted(diff, key=lambda d: -d.size_diff)[:top]:
        if stat.size_diff / n < 4:
            break
        frames = list(stat.traceback)
        ours = [f for f in reversed(frames) if "/pigeonpush" in f.filename]
        print(
            f"{stat.size_diff / n:7.1f} B {stat.count_diff / n:5.2f} blocks"
            f"  at {short(frames[-1])}  from " + " < ".join(short(f) for f in ours[:3])
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="connections (default 5000)")
    parser.add_argument("--baseline", action="store_true", help="bare Twisted framing server")
    parser.add_argument("--trace", type=int, default=0, help="tracemalloc frames (0: off)")
    parser.add_argument("--top", type=int, default=40, help="tracemalloc groups shown")
    parser.add_argument("--client", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(*args.client)
        return
    if args.trace:
        tracemalloc.start(args.trace)

    import psutil
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor, task
    from twisted.internet.endpoints import TCP4ServerEndpoint

    factory: Any
    if args.baseline:
        from pigeonpush_bench.baseline import Hub

        factory = Hub(reactor)

        def count() -> int:
            return len(factory.connections)
    else:
        from pigeonpush.server.hub import PushHub
        from pigeonpush.server.protocol import ServerProtocolFactory
        from pigeonpush.server.settings import ServerSettings
        from pigeonpush.store.memory import MemoryStore

        store = MemoryStore(reactor)
        settings = ServerSettings(capacity=args.n + 10).check()
        hub = PushHub(store, reactor, settings, server_address="127.0.0.1:7101")
        factory = ServerProtocolFactory(hub, settings, reactor)
        for index in range(args.n):
            store.issue_token(client_id(index), token(index), 3600.0)

        def count() -> int:
            return len(hub.sessions)

    process = psutil.Process()
    state: dict[str, Any] = {}

    def listening(port: Any) -> None:
        gc.collect()
        state["rss"] = process.memory_info().rss
        state["snapshot"] = tracemalloc.take_snapshot() if args.trace else None
        command = [sys.executable, __file__, "--client", str(port.getHost().port), str(args.n)]
        state["child"] = subprocess.Popen(command, stdin=subprocess.PIPE)
        state["started"] = time.monotonic()
        state["loop"] = task.LoopingCall(check)
        state["loop"].start(0.5)

    def check() -> None:
        if count() >= args.n or time.monotonic() - state["started"] > 300:
            state["loop"].stop()
            reactor.callLater(2.0, done)

    def done() -> None:
        try:
            gc.collect()
            print(f"{'bare Twisted' if args.baseline else 'pigeonpush'}: {count()} connections")
            report(count(), state["rss"], process.memory_info().rss, state["snapshot"], args.top)
        finally:
            state["child"].stdin.close()
            state["child"].wait()
            reactor.stop()

    endpoint = TCP4ServerEndpoint(reactor, 0, backlog=1024, interface="127.0.0.1")
    endpoint.listen(factory).addCallback(listening)
    reactor.run()


if __name__ == "__main__":
    main()
