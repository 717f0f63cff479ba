"""CPU per frame of the push server's own logic, without sockets.

Run from the repository root, in the project's virtualenv::

    python benchmarks/server_paths.py

One ``PushHub`` on a ``Clock`` and the memory store, 100 connections that
authenticated over in-memory transports (the real ``ServerProtocol``), and
one AMP connection (``ServerRpc``). Measured, in microseconds per frame (the
best of several repetitions, the one least disturbed by other processes):

``AMP Push burst 1`` / ``burst 8``
    one AMP ``Push`` box of 100 items (as delivery sends it), one or eight
    consecutive items per client: the box, ``decode_batch``, the window
    checks, encoding, the writes and the answer;
``ACK burst 1`` / ``burst 8``
    the ACKs of those frames, each connection's in one read: framing, the
    window, the push-to-ACK histogram and the ACK batch (not the store).

What this leaves out (socket reads and writes, the reactor, Redis) is what
``pigeonpush-bench push`` measures; this script isolates the Python of the
hot paths, so that a change to them can be measured before and after in a
way that the noise of a shared machine does not drown (run it on both
trees).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols import amp

from pigeonpush.rpc import PushItem, encode_batches
from pigeonpush.server.hub import PushHub
from pigeonpush.server.protocol import ServerProtocol, ServerProtocolFactory
from pigeonpush.server.rpc_server import ServerRpcFactory
from pigeonpush.server.settings import ServerSettings
from pigeonpush.store.memory import MemoryStore
from pigeonpush.wire.codec import encode, encode_ack
from pigeonpush.wire.frames import Auth

CONNECTIONS = 100


class _Transport(StringTransport):
    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


def _hub() -> tuple[PushHub, list[tuple[ServerProtocol, _Transport]], amp.AMP]:
    clock = Clock()
    store = MemoryStore(clock)
    settings = ServerSettings().check()
    hub = PushHub(store, clock, settings, server_address="127.0.0.1:1")
    factory = ServerProtocolFactory(hub, settings, clock)
    connections = []
    for index in range(CONNECTIONS):
        client_id = f"client-{index}"
        store.issue_token(client_id, "token", 3600)
        proto = factory.buildProtocol(None)
        transport = _Transport()
        proto.makeConnection(transport)
        proto.dataReceived(encode(Auth(client_id, "token")))
        assert proto.session.client_id == client_id, "not authenticated"
        transport.clear()
        connections.append((proto, transport))
    rpc = ServerRpcFactory(hub).buildProtocol(None)
    rpc.makeConnection(_Transport())
    return hub, connections, rpc


def _best(
    push: Callable[[], None], ack: Callable[[], None], rounds: int, repeat: int
) -> tuple[float, float]:
    """Microseconds per frame of ``push`` and of ``ack`` (which follows each
    push), each the best of ``repeat`` blocks of ``rounds``."""
    clock = time.perf_counter
    pushes, acks = [], []
    for _ in range(repeat):
        push_time = ack_time = 0.0
        for _ in range(rounds):
            started = clock()
            push()
            pushed = clock()
            ack()
            push_time += pushed - started
            ack_time += clock() - pushed
        pushes.append(push_time)
        acks.append(ack_time)
    per_frame = 1e6 / rounds / CONNECTIONS
    return min(pushes) * per_frame, min(acks) * per_frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="repetitions (default 7)")
    args = parser.parse_args()
    hub, connections, rpc = _hub()

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

    def push_and_ack(burst: int) -> tuple[Callable[[], None], Callable[[], None]]:
        batch = items(burst)
        [(_, value)] = list(encode_batches(batch))
        box = amp.AmpBox(_command=b"Push", _ask=b"1", batch=value)
        acks: dict[str, list[bytes]] = {}
        for item in batch:
            acks.setdefault(item.client_id, []).append(encode_ack(item.message_id))
        reads = [
            (proto, b"".join(acks[proto.session.client_id or ""]))
            for proto, _ in connections
            if proto.session.client_id in acks
        ]

        def push() -> None:
            rpc.ampBoxReceived(box)

        def ack() -> None:
            for proto, data in reads:
                proto.dataReceived(data)
            hub.acks._pending.clear()  # what the batcher would hand to the store
            for _, transport in connections:
                transport.clear()
            rpc.transport.clear()  # type: ignore[union-attr]

        return push, ack

    for burst in (1, 8):
        push, ack = _best(*push_and_ack(burst), 200, args.repeat)
        print(f"AMP Push burst {burst}  {push:6.2f} us/frame")
        print(f"ACK burst {burst}       {ack:6.2f} us/frame")


if __name__ == "__main__":
    main()
