"""``pigeonpush-bench``: the numbers operators size a push service by.

Everything measured runs as its own process on loopback: Redis, ZooKeeper,
the pigeon daemons, the baselines (a bare Twisted framing server and
Mosquitto) and the load generators, so that memory and CPU are read per
process (psutil) and nothing shares an interpreter with what it measures.

Modules, one job each: ``launch`` (the exec wrapper that gives every child its
own session and a parent-death signal), ``processes`` (start, readiness,
stop), ``measure`` (RSS and CPU, with psutil), ``histogram`` (mergeable latency
histograms), ``report`` (the human table and the JSON document), ``control``
(the parent's side of a load generator), ``loadgen`` (the load generator
process), ``clients`` (its wire, framing and MQTT client protocols),
``mqtt`` (the MQTT 3.1.1 packets it needs), ``baseline`` (the bare framing
server), ``cluster`` (the systems under test, started together) and
``scenarios`` (what each ``pigeonpush-bench SCENARIO`` does) and ``cli``
(the command line).

A tool, not part of the runtime package: ``pip install tools/bench`` next to
``pigeonpush``.
"""

from __future__ import annotations

__version__ = "0.1.0"

#: Sockets one process can hold here: ``ulimit -n`` is 20,000 (soft and hard,
#: and cannot be raised), less a margin for logs, pipes and listeners.
FD_LIMIT = 20_000
#: Connections the tool puts on one process, on either side.
MAX_CONNECTIONS_PER_PROCESS = 19_500
