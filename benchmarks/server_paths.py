"""CPU per frame of the push server's own logic, without sockets.

Run from the repository root, in the project's virtualenv::

    python benchmarks/server_paths.py

One ``PushHub`` on a ``Clock`` and the memory store, 100 authenticated
connections on in-memory transports. Measured, in microseconds per frame (the
best of several repetitions, the one least disturbed by other processes):

``ACK``
    one ACK frame per connection through ``dataReceived``: framing, decoding,
    the window and the ACK batch;
``PUSH burst 1`` / ``PUSH burst 8``
    ``PushHub.push`` of 100 items spread over the connections, one or eight
    consecutive items per client: window checks, encoding and the write.

What this leaves out (socket reads and writes, the reactor, AMP, Redis) is
what ``pigeonpush-bench push`` measures; this script isolates the Python of
the hot paths, so that a change to them can be measured before and after in
a way that the noise of a shared machine does not drown (run it on both trees).
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from pigeonpush.rpc import PushItem
from pigeonpush.server.hub import PushHub
from pigeonpush.server.protocol import ServerProtocol
from pigeonpush.server.settings import ServerSettings
from pigeonpush.store.memory import MemoryStore
from pigeonpush.wire.codec import encode_ack

CONNECTIONS = 100


class _Transport(StringTransport):
    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


def _hub() -> tuple[PushHub, list[tuple[ServerProtocol, _Transport]]]:
    clock = Clock()
    hub = PushHub(MemoryStore(clock), clock, ServerSettings(), server_address="127.0.0.1:1")
    connections = []
    for index in range(CONNECTIONS):
        proto = ServerProtocol(hub)
        transport = _Transport()
        proto.makeConnection(transport)
        client_id = f"client-{index}"
        proto.activate(client_id, "token", b"")
        hub.channels[client_id] = proto
        connections.append((proto, transport))
    return hub, connections


def _best(function: Callable[[], object], frames: int, number: int, repeat: int) -> float:
    seconds = min(timeit.repeat(function, number=number, repeat=repeat))
    return seconds / number / frames * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="repetitions (default 7)")
    args = parser.parse_args()
    hub, connections = _hub()
    ack = encode_ack("01ARZ3NDEKTSV4RRFFQ69G5FAV")

    def acks() -> None:
        for proto, _ in connections:
            proto.dataReceived(ack)
        hub.acks._pending.clear()  # what the batcher would hand to the store

    def pushes(items: list[PushItem]) -> Callable[[], None]:
        def push() -> None:
            hub.push(items)
            for proto, transport in connections:
                assert proto.in_flight is not None
                proto.in_flight.clear()
                transport.clear()

        return push

    def items(burst: int) -> list[PushItem]:
        return [
            PushItem(
                f"client-{n // burst % CONNECTIONS}",
                f"01ARZ3NDEKTSV4RRFFQ69G{n:04d}",
                "t",
                "x" * 100,
            )
            for n in range(CONNECTIONS)
        ]

    print(f"ACK            {_best(acks, CONNECTIONS, 2000, args.repeat):6.2f} us/frame")
    for burst in (1, 8):
        figure = _best(pushes(items(burst)), CONNECTIONS, 500, args.repeat)
        print(f"PUSH burst {burst:<3} {figure:6.2f} us/frame")


if __name__ == "__main__":
    main()
