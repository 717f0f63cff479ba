"""Two questions from the original design, measured in CPython.

Run from the repository root, in the project's virtualenv::

    python benchmarks/gc_and_pools.py

1. ``gc.freeze()`` after start-up. A full (generation 2) collection walks every
   container object the collector tracks. A push server holds its start-up
   objects (modules, classes, functions: Twisted, kazoo, txredisapi,
   prometheus_client, the project) and, per connection, a protocol, a dict of
   in-flight messages and a timer. The script builds a ``PushHub`` with N
   authenticated connections on in-memory transports and times
   ``gc.collect()`` with the start-up objects in the collected generations and
   after ``gc.freeze()`` moved them to the permanent one.

2. Object pools (the seed's Netty ``Recycler``). The JVM pools objects to spare
   its collector; CPython frees most objects by reference counting the moment
   the last reference goes, and keeps free lists for small objects. The script
   compares building a PUSH frame object for every message (the codec's
   frozen ``Push``, and a mutable class like a pool would hold) with taking
   one from a pool, filling it and putting it back.

Each figure is the best of several repetitions (the one least disturbed by
other processes on a shared machine).
"""

from __future__ import annotations

import argparse
import gc
import time
import timeit

import attrs
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

import pigeonpush.server.tap  # noqa: F401  (everything a server imports at start-up)
from pigeonpush.server.hub import PushHub
from pigeonpush.server.protocol import ServerProtocol
from pigeonpush.server.settings import ServerSettings
from pigeonpush.store.memory import MemoryStore
from pigeonpush.wire.frames import Push


class _Transport(StringTransport):
    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


def _server(connections: int) -> PushHub:
    clock = Clock()
    hub = PushHub(MemoryStore(clock), clock, ServerSettings(), server_address="127.0.0.1:1")
    for index in range(connections):
        proto = ServerProtocol(hub)
        proto.makeConnection(_Transport())
        client_id = f"client-{index}"
        proto.activate(client_id, "token", b"")
        hub.channels[client_id] = proto
    return hub


def _full_collection_ms(repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        gc.collect()
        best = min(best, time.perf_counter() - started)
    return best * 1000


@attrs.define(slots=True)
class _MutablePush:
    """What a pool would hold: a frame whose fields are refilled."""

    message_id: str = ""
    title: str = ""
    text: str = ""
    extras: dict[str, str] = attrs.field(factory=dict)


class _Pool:
    def __init__(self, size: int) -> None:
        self._free = [_MutablePush() for _ in range(size)]

    def take(self) -> _MutablePush:
        free = self._free
        return free.pop() if free else _MutablePush()

    def give(self, frame: _MutablePush) -> None:
        self._free.append(frame)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=19_500)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    gc.collect()
    startup = len(gc.get_objects())
    hub = _server(args.connections)
    tracked = len(gc.get_objects())
    print(f"objects tracked: {startup:,} after start-up, {tracked:,} with the connections")
    print(f"full collection, nothing frozen:         {_full_collection_ms(args.repeat):7.2f} ms")
    # What gc.freeze() right after start-up does: the start-up objects go to
    # the permanent generation; the connections (made later) stay collectable.
    del hub
    gc.collect()
    gc.freeze()
    hub = _server(args.connections)
    print(f"full collection, start-up objects frozen: {_full_collection_ms(args.repeat):7.2f} ms")
    gc.unfreeze()
    del hub
    gc.collect()

    extras: dict[str, str] = {}
    number = 200_000

    def fresh() -> None:
        Push("01ARZ3NDEKTSV4RRFFQ69G5FAV", "title", "text", extras)

    def fresh_mutable() -> None:
        _MutablePush("01ARZ3NDEKTSV4RRFFQ69G5FAV", "title", "text", extras)

    pool = _Pool(64)

    def pooled() -> None:
        frame = pool.take()
        frame.message_id = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
        frame.title = "title"
        frame.text = "text"
        frame.extras = extras
        pool.give(frame)

    for name, function in (
        ("a new frozen Push (what decode builds)", fresh),
        ("a new mutable frame", fresh_mutable),
        ("a mutable frame from a pool", pooled),
    ):
        seconds = min(timeit.repeat(function, number=number, repeat=args.repeat))
        print(f"{name:<40} {seconds / number * 1e9:6.0f} ns")


if __name__ == "__main__":
    main()
