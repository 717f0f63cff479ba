"""The bare Twisted baseline: a server that does framing and nothing else.

``python -m pigeonpush_bench.baseline --listen ENDPOINT --control ENDPOINT``

Clients speak Int32-prefixed frames as on the pigeon wire, but nothing is
decoded, authenticated or stored: a frame whose first byte is PING is answered
with PONG, one whose first byte is ACK is counted, anything else is ignored.
What it costs per connection and how fast it writes frames is the limit of the
framework itself, against which the pigeon server's figures are set.

The control endpoint takes one command per line:

``push COUNT SIZE [BURST]``
    write COUNT PUSH-typed frames of SIZE bytes round-robin over the
    connections, BURST (default 8) to each connection per round, as fast as
    the transports take them (a connection whose socket buffer is full is
    skipped until its transport resumes), and answer ``pushed COUNT SECONDS``.
``stats``
    answer ``stats CONNECTIONS ACKS PINGS``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.protocols.basic import Int32StringReceiver, LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from pigeonpush.wire.frames import FrameType

PING = FrameType.PING
ACK = FrameType.ACK
PONG_FRAME = b"\x00\x00\x00\x01" + bytes((FrameType.PONG,))
#: Frames written per connection per reactor turn while pushing, by default.
BURST = 8
_USAGE = b"error usage: push COUNT SIZE [BURST] | stats"


@implementer(IPushProducer)
class WriteGate:
    """Tracks whether a connection's transport wants more writes."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = True

    def pauseProducing(self) -> None:
        self.open = False

    def resumeProducing(self) -> None:
        self.open = True

    def stopProducing(self) -> None:
        self.open = False


class FramingServer(Int32StringReceiver):
    MAX_LENGTH = 8192

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.gate = WriteGate()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
        self.transport.registerProducer(self.gate, True)  # type: ignore[attr-defined]
        self.hub.connections.add(self)

    def stringReceived(self, string: bytes) -> None:
        if not string:
            return
        kind = string[0]
        if kind == PING:
            assert self.transport is not None
            self.transport.write(PONG_FRAME)
            self.hub.pings += 1
        elif kind == ACK:
            self.hub.acks += 1

    def lengthLimitExceeded(self, length: int) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.hub.connections.discard(self)


class Hub(Factory):
    """The listening factory and what the control channel reads and drives."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.connections: set[FramingServer] = set()
        self.acks = 0
        self.pings = 0

    def buildProtocol(self, addr: Any) -> FramingServer:
        return FramingServer(self)

    async def push(self, count: int, size: int, burst: int = BURST) -> float:
        """Write ``count`` frames of ``size`` bytes, ``burst`` to each connection
        per round; the seconds it took."""
        if size < 1:
            raise ValueError("size must be at least 1 (the type byte)")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        frame = (size).to_bytes(4, "big") + bytes((FrameType.PUSH,)) + b"x" * (size - 1)
        started = self.clock.seconds()
        left = count
        while left > 0:
            if not self.connections:
                raise ValueError("no connections to push to")
            targets = [c for c in self.connections if c.gate.open and c.transport is not None]
            for connection in targets:
                write = connection.transport.write  # type: ignore[union-attr]
                frames = min(burst, left)
                for _ in range(frames):
                    write(frame)
                left -= frames
                if left <= 0:
                    break
            # Let the reactor flush sockets and deliver pause/resume signals;
            # when every socket is full, wait a little instead of spinning.
            await _later(self.clock, 0 if targets else 0.001)
        return self.clock.seconds() - started


def _later(clock: IReactorTime, seconds: float) -> defer.Deferred[None]:
    done: defer.Deferred[None] = defer.Deferred()
    clock.callLater(seconds, done.callback, None)
    return done


class Control(LineReceiver):
    delimiter = b"\n"

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def lineReceived(self, line: bytes) -> None:
        words = line.decode("ascii", "replace").split()
        if words[:1] == ["stats"]:
            hub = self.hub
            self.sendLine(f"stats {len(hub.connections)} {hub.acks} {hub.pings}".encode())
        elif words[:1] == ["push"] and len(words) in (3, 4) and all(w.isdigit() for w in words[1:]):
            numbers = [int(word) for word in words[1:]]
            defer.ensureDeferred(self._push(*numbers))
        else:
            self.sendLine(_USAGE)

    async def _push(self, count: int, size: int, burst: int = BURST) -> None:
        try:
            seconds = await self.hub.push(count, size, burst)
        except ValueError as e:
            self.sendLine(f"error {e}".encode())
            return
        self.sendLine(f"pushed {count} {seconds:.6f}".encode())


class ControlFactory(Factory):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def buildProtocol(self, addr: Any) -> Control:
        return Control(self.hub)


class _OneAnswer(LineReceiver):
    delimiter = b"\n"

    def __init__(self, line: str) -> None:
        self.line = line
        self.answer: defer.Deferred[str] = defer.Deferred()

    def connectionMade(self) -> None:
        self.sendLine(self.line.encode())

    def lineReceived(self, line: bytes) -> None:
        if not self.answer.called:
            self.answer.callback(line.decode("ascii", "replace"))
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.answer.called:
            self.answer.errback(reason)


async def command(reactor: Any, host: str, port: int, line: str, timeout: float = 60.0) -> str:
    """Send one control command and return the answer line (for the benchmark)."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    protocol = _OneAnswer(line)
    await connectProtocol(TCP4ClientEndpoint(reactor, host, port, timeout=timeout), protocol)
    protocol.answer.addTimeout(timeout, reactor)
    return await protocol.answer


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pigeonpush_bench.baseline",
        description="A bare Twisted Int32 framing server (the benchmark's baseline).",
    )
    parser.add_argument("--listen", default="tcp:7300", help="client endpoint (default tcp:7300)")
    parser.add_argument(
        "--control",
        default="tcp:7301:interface=127.0.0.1",
        help="control endpoint (default tcp:7301:interface=127.0.0.1)",
    )
    return parser.parse_args(list(argv))


async def serve(reactor: Any, listen: str, control: str) -> Hub:
    hub = Hub(reactor)
    await serverFromString(reactor, listen).listen(hub)
    await serverFromString(reactor, control).listen(ControlFactory(hub))
    return hub


def main(argv: Sequence[str]) -> None:
    from twisted.internet.task import react

    args = parse_args(argv)

    async def run(reactor: Any) -> None:
        await serve(reactor, args.listen, args.control)
        await defer.Deferred()  # serve until SIGTERM stops the reactor

    react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main(sys.argv[1:])
