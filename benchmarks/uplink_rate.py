"""Uplinks per second to durable, and the time from UPLINK to UPLINK_ACK.

Run from the repository root, in the project's virtualenv::

    python benchmarks/uplink_rate.py --connections 50 --uplinks 20000 --window 8

Starts Redis and one ``pigeon-server`` (static discovery, ``--uplink-rate``
lifted so that the limit does not measure itself) on loopback, issues a token
per connection straight into Redis (the benchmark plays reglog), opens
``--connections`` raw connections (TCP, then WebSocket with the load
generator's client, ``pigeonpush_bench.wsclient``, against the same server:
``--transport``) that AUTH and then keep ``--window``
UPLINKs each in flight, 64 bytes of data each, until ``--uplinks`` were
acknowledged. An UPLINK_ACK means the uplink is in the Redis stream
(``XADD`` in the de-duplication script), so the rate is uplinks made
durable per second; the latency is per uplink, from its write to its
UPLINK_ACK. The stream's length is checked against the count at the end.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from pigeonpush.store import open_store
from pigeonpush.store.keys import UPLINK
from pigeonpush.wire.codec import encode
from pigeonpush.wire.frames import Auth, AuthOk, Frame, Uplink, UplinkAck
from pigeonpush.wire.protocol import FrameProtocol
from pigeonpush_bench import services
from pigeonpush_bench.histogram import LatencyHistogram
from pigeonpush_bench.measure import cpu_seconds
from pigeonpush_bench.processes import ProcessSet, free_port
from pigeonpush_bench.wsclient import WebSocketClient

DATA = {"reading": "x" * 57}  # 64 bytes of keys and values
TCP, WEBSOCKET, BOTH = "tcp", "websocket", "both"


class Sender(FrameProtocol):
    """One connection: AUTH, then ``window`` UPLINKs in flight until the shared
    budget is spent."""

    def __init__(self, run: Run, client_id: str, token: str) -> None:
        super().__init__()
        self.run = run
        self.client_id = client_id
        self.token = token
        self.sent: dict[str, float] = {}
        self.serial = 0
        self.done: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        self.sendFrame(Auth(self.client_id, self.token))

    def frameReceived(self, frame: Frame) -> None:
        if isinstance(frame, AuthOk):
            for _ in range(self.run.window):
                self._next()
        elif isinstance(frame, UplinkAck):
            started = self.sent.pop(frame.uplink_id)
            self.run.histogram.record((self.run.clock.seconds() - started) * 1e6)
            self.run.acked += 1
            self._next()
        else:
            self.done.errback(RuntimeError(f"{self.client_id}: unexpected {frame!r}"))

    def _next(self) -> None:
        run = self.run
        if run.budget <= 0:
            if not self.sent and not self.done.called:
                self.done.callback(None)
            return
        run.budget -= 1
        self.serial += 1
        uplink_id = f"u-{self.serial}"
        self.sent[uplink_id] = run.clock.seconds()
        self.sendEncoded(encode(Uplink(uplink_id, DATA)))


class Run:
    def __init__(self, clock: Any, uplinks: int, window: int) -> None:
        self.clock = clock
        self.budget = uplinks
        self.window = window
        self.acked = 0
        self.histogram = LatencyHistogram()


async def measure(
    reactor: Any,
    store: Any,
    server: Any,
    port: int,
    options: argparse.Namespace,
    transport: str,
) -> dict[str, Any]:
    """One phase: ``--connections`` over ``transport`` until ``--uplinks`` are acknowledged."""
    tokens = {}
    for n in range(options.connections):
        client_id = f"bench-{transport}-{n:05d}"
        tokens[client_id] = f"token-{n:05d}-0123456789"
        await store.issue_token(client_id, tokens[client_id], 600)
    measured = Run(reactor, options.uplinks, options.window)
    endpoint = TCP4ClientEndpoint(reactor, services.HOST, port)
    stored_before = await store._one("XLEN", UPLINK)
    cpu_before = cpu_seconds(server.pid)
    started = reactor.seconds()
    senders = []
    for client_id, token in tokens.items():
        sender = Sender(measured, client_id, token)
        if transport == WEBSOCKET:
            await connectProtocol(endpoint, WebSocketClient(sender, services.HOST, port))
        else:
            await connectProtocol(endpoint, sender)
        senders.append(sender)
    await defer.gatherResults([sender.done for sender in senders])
    elapsed = reactor.seconds() - started
    cpu = cpu_seconds(server.pid) - cpu_before
    stored = await store._one("XLEN", UPLINK) - stored_before
    for sender in senders:
        sender.transport.loseConnection()
    return {
        "transport": transport,
        "connections": options.connections,
        "window": options.window,
        "uplinks": measured.acked,
        "stored": int(stored),
        "seconds": round(elapsed, 3),
        "uplinks_per_second": round(measured.acked / elapsed, 1),
        "server_cpu_seconds_per_1000": round(1000 * cpu / measured.acked, 3),
        "latency": measured.histogram.summary(),
    }


async def run(reactor: Any, options: argparse.Namespace) -> dict[str, Any]:
    transports = [TCP, WEBSOCKET] if options.transport == BOTH else [options.transport]
    directory = Path(tempfile.mkdtemp(prefix="uplink-rate-"))
    processes = ProcessSet(reactor, directory)
    try:
        redis = await services.start_redis(processes, reactor)
        port, rpc, websocket = free_port(), free_port(), free_port()
        server_options = [
            "--listen", services.listen_endpoint(port),
            "--rpc", services.listen_endpoint(rpc),
            "--redis", redis.url,
            "--zookeeper", "static:",
            "--capacity", str(len(transports) * options.connections + 10),
            "--uplink-rate", "1000000/1000000",
            "--frame-rate", "1000000",
            "--frame-burst", "1000000",
            "--metrics", "none",
        ]  # fmt: skip
        if WEBSOCKET in transports:
            server_options += ["--websocket", services.listen_endpoint(websocket)]
        server = processes.spawn(
            "pigeon-server", services.twist_command("pigeon-server", server_options, "warn")
        )
        await services._ready_port(reactor, server, port)
        store = open_store(redis.url, reactor)
        results = {}
        for transport in transports:
            target = websocket if transport == WEBSOCKET else port
            results[transport] = await measure(reactor, store, server, target, options, transport)
        await store.close()
    finally:
        await processes.stop_all()
    if len(results) == 1:
        return results[transports[0]]
    tcp, ws = results[TCP], results[WEBSOCKET]
    results["websocket_over_tcp"] = {
        "uplinks_per_second": round(ws["uplinks_per_second"] / tcp["uplinks_per_second"], 2),
        "p99": _ratio(ws["latency"].get("p99_ms"), tcp["latency"].get("p99_ms")),
        "server_cpu_per_uplink": _ratio(
            ws["server_cpu_seconds_per_1000"], tcp["server_cpu_seconds_per_1000"]
        ),
    }
    return results


def _ratio(mine: Any, theirs: Any) -> float | None:
    return round(mine / theirs, 2) if mine is not None and theirs else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--uplinks", type=int, default=20000)
    parser.add_argument("--window", type=int, default=8, help="UPLINKs in flight per connection")
    parser.add_argument(
        "--transport",
        choices=(TCP, WEBSOCKET, BOTH),
        default=BOTH,
        help="how the connections reach the server; both: TCP, then WebSocket, "
        "against the same server and Redis (default)",
    )
    options = parser.parse_args()

    async def go(reactor: Any) -> None:
        print(json.dumps(await run(reactor, options), indent=2))

    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))


if __name__ == "__main__":
    main()
