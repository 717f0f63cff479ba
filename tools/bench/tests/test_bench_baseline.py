"""The bare Twisted framing baseline: what it answers, how it pushes, and a
real baseline process driven by a real load generator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from pigeonpush.wire.frames import FrameType
from pigeonpush_bench import services
from pigeonpush_bench.baseline import PONG_FRAME, Control, FramingServer, Hub, command
from pigeonpush_bench.control import start_loadgen
from pigeonpush_bench.processes import ProcessSet
from support.waiting import wait_for


class TcpTransport(StringTransport):
    no_delay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled


def _connect(hub: Hub) -> tuple[FramingServer, TcpTransport]:
    protocol = hub.buildProtocol(None)
    transport = TcpTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def test_ping_gets_pong_and_acks_are_counted() -> None:
    hub = Hub(Clock())
    protocol, transport = _connect(hub)
    protocol.dataReceived(_frame(bytes((FrameType.PING,))) + _frame(bytes((FrameType.ACK,)) + b"x"))
    protocol.dataReceived(_frame(bytes((FrameType.PUSH,))) + _frame(b""))
    assert transport.value() == PONG_FRAME
    assert transport.no_delay
    assert (hub.pings, hub.acks) == (1, 1)
    assert hub.connections == {protocol}


def test_an_oversize_frame_closes_only_that_connection() -> None:
    hub = Hub(Clock())
    bad, bad_transport = _connect(hub)
    good, good_transport = _connect(hub)
    bad.dataReceived((100_000).to_bytes(4, "big"))
    assert bad_transport.disconnecting
    assert not good_transport.disconnecting
    bad.connectionLost()
    assert hub.connections == {good}


def _run(clock: Clock, deferred: defer.Deferred[Any]) -> Any:
    for _ in range(1000):
        if deferred.called:
            break
        clock.advance(0.001)
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "push never finished"
    return results[0]


def test_push_writes_frames_round_robin_and_skips_paused_connections() -> None:
    clock = Clock()
    hub = Hub(clock)
    connections = [_connect(hub) for _ in range(3)]
    paused_protocol = connections[2][0]
    paused_protocol.gate.pauseProducing()

    seconds = _run(clock, defer.ensureDeferred(hub.push(50, 10)))

    assert seconds >= 0
    frame = _frame(bytes((FrameType.PUSH,)) + b"x" * 9)
    written = [transport.value() for _, transport in connections]
    assert written[2] == b""
    assert written[0].count(frame) + written[1].count(frame) == 50
    assert len(written[0]) + len(written[1]) == 50 * len(frame)


def test_push_writes_its_burst_to_one_connection_before_the_next() -> None:
    clock = Clock()
    hub = Hub(clock)
    connections = [_connect(hub) for _ in range(2)]

    _run(clock, defer.ensureDeferred(hub.push(5, 10, burst=3)))

    frame = _frame(bytes((FrameType.PUSH,)) + b"x" * 9)
    counts = sorted(transport.value().count(frame) for _, transport in connections)
    assert counts == [2, 3]


def test_push_without_connections_or_with_an_empty_frame_is_refused() -> None:
    hub = Hub(Clock())
    failure = _run(hub.clock, defer.ensureDeferred(hub.push(1, 10)))  # type: ignore[arg-type]
    assert "no connections to push to" in str(failure.value)
    _connect(hub)
    failure = _run(hub.clock, defer.ensureDeferred(hub.push(1, 0)))  # type: ignore[arg-type]
    assert "size must be at least 1" in str(failure.value)
    failure = _run(hub.clock, defer.ensureDeferred(hub.push(1, 10, 0)))  # type: ignore[arg-type]
    assert "burst must be at least 1" in str(failure.value)


@pytest.mark.parametrize(
    ("line", "answer"),
    [
        (b"stats", b"stats 0 0 0\n"),
        (b"push 1", b"error usage: push COUNT SIZE [BURST] | stats\n"),
        (b"push x 10", b"error usage: push COUNT SIZE [BURST] | stats\n"),
        (b"shutdown", b"error usage: push COUNT SIZE [BURST] | stats\n"),
        (b"push 1 10 2 7", b"error usage: push COUNT SIZE [BURST] | stats\n"),
        (b"push 1 10", b"error no connections to push to\n"),
        (b"push 1 10 3", b"error no connections to push to\n"),
    ],
)
def test_control_commands(line: bytes, answer: bytes) -> None:
    control = Control(Hub(Clock()))
    transport = StringTransport()
    control.makeConnection(transport)
    control.dataReceived(line + b"\n")
    assert transport.value() == answer


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_real_baseline_serves_load_generator_clients(tmp_path: Path) -> None:
    from twisted.internet import reactor

    processes = ProcessSet(reactor, tmp_path)
    try:
        server = await services.start_baseline(processes, reactor)
        generator = await start_loadgen(processes, reactor, "clients")
        connected = await generator.call(
            "connect", protocol="framing", server=server.address, count=5, heartbeat=0.25
        )
        assert connected["ready"] == 5

        async def answer(line: str) -> str:
            return await command(reactor, services.HOST, server.control_port, line, timeout=10)

        async def pinged() -> bool:
            words = (await answer("stats")).split()
            return words[:2] == ["stats", "5"] and int(words[3]) >= 5

        await wait_for(pinged, timeout=10, what="5 connections and their heartbeats")

        pushed = await answer("push 100 64")
        assert pushed.startswith("pushed 100 ")

        async def received() -> dict[str, Any] | None:
            stats: dict[str, Any] = await generator.call("stats")
            return stats if stats["frames"] >= 100 else None

        stats = await wait_for(received, timeout=10, what="100 frames at the clients")
        assert stats["frames"] == 100

        async def acked() -> bool:
            return (await answer("stats")).split()[2] == "100"

        await wait_for(acked, timeout=10, what="100 ACKs at the baseline")
    finally:
        await processes.stop_all()
