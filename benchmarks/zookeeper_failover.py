"""How long a 3-node ZooKeeper ensemble serves no one after its leader crashes.

Run from the repository root, in the project's virtualenv::

    PYTHONPATH=.:tests python benchmarks/zookeeper_failover.py --rounds 5

Starts the test suite's ensemble (``tests/support/zookeeper_ensemble.py``:
Debian's jars, tickTime 500 ms, on loopback), then, each round, SIGKILLs the
leader and times until another node answers ``srvr`` with ``Mode: leader``
(the ensemble serves writes again); the killed node is started again before
the next round. A session must outlive this gap (plus the client's reconnect)
for a leader crash to go unnoticed: see "ZooKeeper ensemble" in
docs/discovery.rst.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from support.zookeeper_ensemble import TICK_MS, running_ensemble

POLL = 0.02


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    gaps = []
    with tempfile.TemporaryDirectory() as directory, running_ensemble(Path(directory)) as ensemble:
        for _ in range(options.rounds):
            ensemble.start()
            leader = ensemble.leader()
            assert leader is not None
            started = time.monotonic()
            leader.kill()
            while True:
                elected = ensemble.leader()
                if elected is not None and elected is not leader:
                    break
                time.sleep(POLL)
            gaps.append(time.monotonic() - started)
            print(f"leader {leader.myid} killed: node {elected.myid} leads after {gaps[-1]:.2f} s")
    print(
        f"tickTime {TICK_MS} ms, {len(gaps)} rounds: median {statistics.median(gaps):.2f} s, "
        f"max {max(gaps):.2f} s"
    )


if __name__ == "__main__":
    main()
