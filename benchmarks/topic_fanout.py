"""CPU per delivery of the live topic fan-out in one push server, without
sockets, against the same deliveries as unicast pushes.

Run from the repository root, in the project's virtualenv::

    python benchmarks/topic_fanout.py [--sessions 10000]

One ``PushHub`` on a ``Clock`` and the memory store, N authenticated sessions
on in-memory channels, all subscribed to one topic. Measured, in
microseconds per delivery (the best of several repetitions):

``topic``
    ``TopicFeed.live`` of one topic entry: the PUSH encoded once (per
    protocol generation) and written to every subscribed session;
``unicast``
    ``PushHub.push`` of N items, one per session (what delivery's AMP
    ``Push`` does for a message to N clientIds): one encoding per item.

Each round ACKs everything it wrote (outside the timing), so that windows
stay open. Sockets, the reactor and Redis are left out: this isolates the
Python of the two paths.
"""

from __future__ import annotations

import argparse
import sys
import time

sys.path.insert(0, "tests")

from pigeonpush.rpc import PushItem
from pigeonpush.store.model import Message
from pigeonpush.wire.frames import Ack
from support.server_harness import Harness, result_of


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n = args.sessions
    harness = Harness(pulls=False, capacity=n + 10)
    ids = [f"d{i}" for i in range(n)]
    for start in range(0, n, 5000):
        result_of(harness.store.subscribe("news", ids[start : start + 5000], 10))
    devices = [harness.login(client_id) for client_id in ids]
    harness.clock.advance(0)
    topic_best = unicast_best = float("inf")
    for round_number in range(args.rounds):
        now = harness.clock.seconds()
        message = Message(f"t{round_number}", "Headline", "x" * 100, {}, now, now + 600)
        entry = result_of(harness.store.publish("news", message, 100))
        started = time.perf_counter()
        harness.hub.topics.live([entry])
        topic_best = min(topic_best, (time.perf_counter() - started) / n)
        for device in devices:
            device.received()
            device.send(Ack(message.message_id))
        harness.clock.advance(0)
        items = [PushItem(c, f"u{round_number}", "Headline", "x" * 100) for c in ids]
        started = time.perf_counter()
        harness.hub.push(items)
        unicast_best = min(unicast_best, (time.perf_counter() - started) / n)
        for device in devices:
            device.received()
            device.send(Ack(f"u{round_number}"))
        harness.clock.advance(0)
    print(f"sessions: {n}")
    print(f"topic:   {topic_best * 1e6:.2f} us per delivery")
    print(f"unicast: {unicast_best * 1e6:.2f} us per delivery")


if __name__ == "__main__":
    main()
