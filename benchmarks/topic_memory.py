"""Memory per topic subscription: in Redis, and in a push server.

Run from the repository root, in the project's virtualenv, with a throwaway
redis-server listening (its data is flushed)::

    python benchmarks/topic_memory.py --redis redis://127.0.0.1:6399/0

Redis: N devices subscribed to T topics each through ``store.subscribe``;
``MEMORY USAGE`` of every SUBSCRIPTIONS hash (per device) and SUBSCRIBERS set
(per topic), divided by the N x T subscriptions.

Server: the hub's topic index (``TopicFeed``) for N authenticated sessions on
the memory store, each subscribed to T topics, measured with tracemalloc
against the same sessions subscribed to nothing.
"""

from __future__ import annotations

import argparse
import tracemalloc
from typing import Any

from twisted.internet import defer, task

from pigeonpush.store import open_store
from pigeonpush.store.topic_keys import subscribers, subscriptions


async def redis_bytes(reactor: Any, url: str, devices: int, topics: int) -> float:
    import txredisapi

    store = open_store(url, reactor)
    names = [f"topic-{t:02d}" for t in range(topics)]
    ids = [f"device-{n:06d}" for n in range(devices)]
    host, port = url.split("//")[1].split("/")[0].split(":")
    connection = await txredisapi.Connection(host, int(port), reconnect=False)
    await connection.execute_command("FLUSHDB")
    for name in names:
        for start in range(0, devices, 5000):
            await store.subscribe(name, ids[start : start + 5000], topics + 1)
    total = 0
    for client_id in ids:
        total += int(await connection.execute_command("MEMORY", "USAGE", subscriptions(client_id)))
    for name in names:
        total += int(await connection.execute_command("MEMORY", "USAGE", subscribers(name)))
    await connection.execute_command("FLUSHDB")
    await connection.disconnect()
    await store.close()
    return total / (devices * topics)


def server_bytes(devices: int, topics: int) -> float:
    import sys

    sys.path.insert(0, "tests")
    from support.server_harness import Harness, result_of

    def measure(subscribed: bool) -> int:
        harness = Harness(pulls=False)
        if subscribed:
            for t in range(topics):
                ids = [f"d{n}" for n in range(devices)]
                result_of(harness.store.subscribe(f"topic-{t:02d}", ids, topics + 1))
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for n in range(devices):
            harness.login(f"d{n}")
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        return sum(stat.size_diff for stat in after.compare_to(before, "filename"))

    plain = measure(False)
    with_topics = measure(True)
    return (with_topics - plain) / (devices * topics)


def main(reactor: Any) -> defer.Deferred[None]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--topics", type=int, default=10)
    args = parser.parse_args()

    async def run() -> None:
        per = await redis_bytes(reactor, args.redis, args.devices, args.topics)
        print(f"Redis: {per:.1f} bytes per subscription ({args.devices} x {args.topics})")
        per = server_bytes(min(args.devices, 2000), args.topics)
        print(f"server: {per:.1f} bytes per subscription (2000 x {args.topics})")

    return defer.ensureDeferred(run())


if __name__ == "__main__":
    task.react(main)
