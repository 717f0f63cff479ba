"""txredisapi's two reply readers, measured on the replies the store reads.

Run from the repository root, in the project's virtualenv (hiredis installed,
as the ``server`` extra has it)::

    python benchmarks/redis_reply_parser.py

``pure-python``
    txredisapi's ``BaseRedisProtocol`` with the overrides the store used
    before (``callLater``, ``dataReceived(data, unpause)``, pausing): the
    reader in Python, one reactor turn per bulk string of a large reply,
    turned into a loop after each chunk by those overrides.
``hiredis``
    ``pigeonpush.store.redis_connection.RedisProtocol``: txredisapi's
    ``HiredisProtocol``, hiredis's reader in C.

Both answer batches through the same ``BatchReplies`` (the store's code), so
the difference is the reader alone. Two measurements:

parse
    typical replies fed as bytes (64 KiB chunks, as a socket hands them over)
    to a protocol on a ``StringTransport``: EVALSHA results (a small array),
    one XREADGROUP batch (100 queue entries of four fields), HGETALL of a
    message body (title, 100-character text, three extras). Microseconds per
    reply, the best of ``--repeat`` runs.
end to end
    a loop against a fresh ``redis-server`` on loopback that keeps one
    pipelined batch of ``--pipeline`` commands in flight for ``--seconds``
    seconds, per reply shape: commands answered per second.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import txredisapi
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTime
from twisted.internet.testing import StringTransport

from pigeonpush.store.redis_connection import BatchReplies, Command, RedisProtocol

CHUNK = 65536


class PurePythonProtocol(BatchReplies, txredisapi.BaseRedisProtocol):  # type: ignore[misc]
    """The store's protocol before: txredisapi's Python reader, with the
    overrides that turned its per-bulk-string ``callLater(0)`` into a loop."""

    def __init__(self, reactor: IReactorTime) -> None:
        txredisapi.BaseRedisProtocol.__init__(self, charset="utf-8", convertNumbers=False)
        self._init_batches()
        self._reactor = reactor
        self._soon: deque[tuple[Callable[..., object], tuple[object, ...]]] = deque()
        self._draining = False

    def callLater(self, delay: float, f: Callable[..., object], *args: object) -> object:
        if delay > 0:
            return self._reactor.callLater(delay, f, *args)
        self._soon.append((f, args))
        return None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.dataReceived(b"")

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        super().dataReceived(data, unpause)
        if self._draining:
            return
        self._draining = True
        try:
            while self._soon and self.usable:
                f, args = self._soon.popleft()
                f(*args)
        finally:
            self._draining = False
            self._soon.clear()


def resp(value: Any) -> bytes:
    """``value`` as Redis would send it (RESP2)."""
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, str):
        raw = value.encode()
        return b"$%d\r\n%s\r\n" % (len(raw), raw)
    return b"*%d\r\n" % len(value) + b"".join(resp(item) for item in value)


def _entry(n: int) -> list[Any]:
    return [
        f"1733500000000-{n}",
        ["messageId", f"01JEX{n:021d}", "clientId", f"device-{n:06d}", "kind", "to", "at", "1"],
    ]


SHAPES: dict[str, Any] = {
    # EVALSHA of the accept script: added, queued, the message id
    "evalsha": [1, 1, "01JEX000000000000000000001"],
    # one XREADGROUP batch: [[stream, [[id, fields], ...]]]
    "xreadgroup-100": [["PIGEON:QUEUE", [_entry(n) for n in range(100)]]],
    # HGETALL PIGEON:MSG_BODY:<id>
    "hgetall-body": [
        "title", "Hello", "text", "x" * 100, "extras", '{"a":1}', "collapse", "",
        "expires", "1733500300",
    ],
}  # fmt: skip
PROTOCOLS: dict[str, Callable[[], Any]] = {
    "pure-python": lambda: PurePythonProtocol(task.Clock()),
    "hiredis": RedisProtocol,
}


def parse_us(make: Callable[[], Any], reply: bytes, count: int, repeat: int) -> float:
    """Best microseconds per reply over ``repeat`` runs of ``count`` replies."""
    payload = reply * count
    chunks = [payload[i : i + CHUNK] for i in range(0, len(payload), CHUNK)]
    best = float("inf")
    for _ in range(repeat):
        protocol = make()
        protocol.makeConnection(StringTransport())
        done = protocol.send([("PING",)] * count)
        started = time.perf_counter()
        for chunk in chunks:
            protocol.dataReceived(chunk)
        best = min(best, time.perf_counter() - started)
        assert done.called
    return best / count * 1e6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _loop(
    reactor: Any, port: int, make: Callable[[], Any], command: Command, depth: int, seconds: float
) -> float:
    protocol = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), make())
    batch: Sequence[Command] = [command] * depth
    answered = 0
    started = reactor.seconds()
    while reactor.seconds() - started < seconds:
        replies = await protocol.send(batch)
        answered += len(replies)
    elapsed: float = reactor.seconds() - started
    protocol.transport.loseConnection()
    return answered / elapsed


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], int, dict[str, Command]]:
    """A fresh redis-server holding the data of each reply shape, and the
    command that reads each."""
    port = _free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", directory],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    cli = ["redis-cli", "-p", str(port)]
    for _ in range(200):
        if subprocess.run([*cli, "PING"], capture_output=True).stdout.strip() == b"PONG":
            break
        time.sleep(0.02)
    subprocess.run([*cli, "HSET", "body", *SHAPES["hgetall-body"]], check=True, capture_output=True)
    for n in range(100):
        subprocess.run([*cli, "XADD", "queue", "*", *_entry(n)[1]], check=True, capture_output=True)
    script = "return {1, 1, ARGV[1]}"
    loaded = subprocess.run([*cli, "SCRIPT", "LOAD", script], check=True, capture_output=True)
    commands: dict[str, Command] = {
        "evalsha": ("EVALSHA", loaded.stdout.decode().strip(), "0", "01JEX000000000000000000001"),
        # the same reply shape as XREADGROUP, without consuming the stream
        "xrange-100": ("XRANGE", "queue", "-", "+", "COUNT", "100"),
        "hgetall-body": ("HGETALL", "body"),
    }
    return server, port, commands


async def end_to_end(
    reactor: Any, port: int, commands: dict[str, Command], depth: int, seconds: float
) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for shape, command in commands.items():
        results[shape] = {}
        for name, make in PROTOCOLS.items():
            results[shape][name] = await _loop(reactor, port, make, command, depth, seconds)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="replies per parse run")
    parser.add_argument("--repeat", type=int, default=5, help="parse runs (the best counts)")
    parser.add_argument("--pipeline", type=int, default=50, help="commands per batch")
    parser.add_argument("--seconds", type=float, default=3.0, help="per end-to-end figure")
    options = parser.parse_args()
    print(f"txredisapi {txredisapi.__version__}")
    print(f"parse: microseconds per reply (best of {options.repeat} x {options.count})")
    print(f"  {'reply':<16}{'pure-python':>13}{'hiredis':>10}{'ratio':>8}")
    for shape, value in SHAPES.items():
        reply = resp(value)
        figures = {
            name: parse_us(make, reply, options.count, options.repeat)
            for name, make in PROTOCOLS.items()
        }
        ratio = figures["pure-python"] / figures["hiredis"]
        print(
            f"  {shape:<16}{figures['pure-python']:>13.1f}{figures['hiredis']:>10.1f}{ratio:>7.1f}x"
        )
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is missing: apt-get install -y redis-server")

    async def run(reactor: Any) -> None:
        results = await end_to_end(reactor, port, commands, options.pipeline, options.seconds)
        print(f"end to end: commands answered per second (pipeline {options.pipeline})")
        print(f"  {'reply':<16}{'pure-python':>13}{'hiredis':>10}{'ratio':>8}")
        for shape, figures in results.items():
            ratio = figures["hiredis"] / figures["pure-python"]
            print(
                f"  {shape:<16}{figures['pure-python']:>13.0f}{figures['hiredis']:>10.0f}"
                f"{ratio:>7.1f}x"
            )

    with tempfile.TemporaryDirectory() as directory:
        server, port, commands = start_redis(directory)
        try:
            task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
