"""Metrics of the push server: the sink the logic reports to, and its
Prometheus implementation (served at /metrics).

The hub, its transports and the ACK batcher are given a ``MetricsSink`` and
never touch a metric themselves; ``PrometheusMetrics`` (the default) bumps
the module-level metrics below, in the default registry, and tests give a
sink that counts. The hot paths use pre-bound children and add up a batch
before reporting it.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from pigeonpush.rpc import PushStatus
from pigeonpush.wire.frames import AuthFailCode, KickReason

CONNECTIONS = Gauge(
    "pigeonpush_server_connections",
    "Authenticated device connections (the channel table)",
)
AUTHS = Counter(
    "pigeonpush_server_auth",
    "AUTH attempts, by result",
    ["result"],
)
PUSHES = Counter(
    "pigeonpush_server_pushes",
    "Messages handed to the server for a client (Push and pulls), by outcome",
    ["status"],
)
RATE_LIMITED = Counter(
    "pigeonpush_server_rate_limited",
    "Connections over --frame-rate: reading paused, or closed (ERROR RATE_LIMITED)",
    ["action"],
)
ACKS = Counter(
    "pigeonpush_server_acks",
    "ACK frames received",
)
ACK_STORE_FAILURES = Counter(
    "pigeonpush_server_ack_store_failures",
    "ACK batches the store refused (retried)",
)
PULLS = Counter(
    "pigeonpush_server_pulls",
    "Pulls of pending messages from delivery, by result",
    ["result"],
)
PULLED = Counter(
    "pigeonpush_server_pulled_messages",
    "Messages received from delivery through pulls",
)
KICKS = Counter(
    "pigeonpush_server_kicks",
    "Sessions ended with KICK, by reason",
    ["reason"],
)


class CountedHistogram(Collector):
    """A histogram without labels for a value observed per frame: one
    ``bisect`` and two additions per observation, exposed like
    prometheus_client's ``Histogram`` (``_bucket``, ``_count``, ``_sum``).
    The library's ``Histogram`` takes a lock per bucket it bumps and cost
    1.5-2 us per observation, once per ACK; collection runs on the reactor
    thread too (``pigeonpush.metrics``), so plain counts are enough."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = [*sorted(buckets), math.inf]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        if registry is not None:
            registry.register(self)

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative = 0
        buckets = []
        for bound, count in zip(self._bounds, self._counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        yield HistogramMetricFamily(
            self._name, self._documentation, buckets=buckets, sum_value=self._sum
        )


PUSH_TO_ACK = CountedHistogram(
    "pigeonpush_server_push_to_ack_seconds",
    "Time from writing a PUSH to receiving its ACK",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)

UPLINKS = Counter(
    "pigeonpush_server_uplinks",
    "UPLINK frames received, by outcome (stored, duplicate, refused, rate_limited, failed)",
    ["outcome"],
)
AUTH_OK = AUTHS.labels(result="ok")
AUTH_BAD_TOKEN = AUTHS.labels(result="bad_token")
AUTH_VERSION = AUTHS.labels(result="version")
AUTH_UNAVAILABLE = AUTHS.labels(result="unavailable")
AUTH_FULL = AUTHS.labels(result="full")
PULL_OK = PULLS.labels(result="ok")
PULL_FAILED = PULLS.labels(result="failed")
NACKS = Counter(
    "pigeonpush_server_nacks",
    "NACK frames received (the application could not handle a message)",
)
ACK_TIMEOUTS = Counter(
    "pigeonpush_server_ack_timeouts",
    "PUSHes neither ACKed nor NACKed within --ack-timeout",
)
REDELIVERIES = Counter(
    "pigeonpush_server_redeliveries",
    "Messages released for another delivery on the same connection after a failure",
)
FAILED = Counter(
    "pigeonpush_server_failed_messages",
    "Messages dropped for a client after --max-attempts failed deliveries",
)


class MetricsSink(Protocol):
    """What the server counts. Each method is one event (or a batch of
    ``count`` of them)."""

    def sessions(self, count: int) -> None:
        """The session table holds ``count`` authenticated sessions now."""
        ...

    def authenticated(self) -> None:
        """An AUTH was accepted."""
        ...

    def refused(self, code: AuthFailCode) -> None:
        """An AUTH was refused with ``code``."""
        ...

    def pushed(self, status: PushStatus, count: int) -> None:
        """``count`` messages handed to the server got ``status``."""
        ...

    def acked(self, seconds: float) -> None:
        """A PUSH in flight was ACKed ``seconds`` after it was written."""
        ...

    def kicked(self, reason: KickReason) -> None:
        """A session was ended with KICK."""
        ...

    def nacked(self) -> None:
        """A NACK arrived."""
        ...

    def ack_timed_out(self, count: int) -> None:
        """``count`` PUSHes were not ACKed within the ACK timeout."""
        ...

    def redelivered(self, count: int) -> None:
        """``count`` failed messages were released for another delivery."""
        ...

    def gave_up(self, count: int) -> None:
        """``count`` messages were dropped after their last failed attempt."""
        ...

    def pulled(self, count: int) -> None:
        """A pull answered, with ``count`` messages."""
        ...

    def pull_failed(self) -> None:
        """A pull failed."""
        ...

    def rate_limited(self, action: str) -> None:
        """A connection over the frame rate: reading ``paused``, or ``closed``."""
        ...

    def acks_received(self, count: int) -> None:
        """``count`` ACK frames were received (reported per batch)."""
        ...

    def ack_store_failed(self) -> None:
        """The store refused a batch of ACKs."""
        ...

    def uplinked(self, outcome: str) -> None:
        """An UPLINK was ``stored``, a ``duplicate``, ``refused``,
        ``rate_limited`` or ``failed`` (the store failed)."""
        ...


class PrometheusMetrics:
    """The ``MetricsSink`` of a running server: the metrics above."""

    __slots__ = ("acked",)

    def __init__(self) -> None:
        #: once per ACK: the histogram's own method, not a call more
        self.acked = PUSH_TO_ACK.observe

    def sessions(self, count: int) -> None:
        CONNECTIONS.set(count)

    def authenticated(self) -> None:
        AUTH_OK.inc()

    def refused(self, code: AuthFailCode) -> None:
        AUTHS.labels(result=code.name.lower()).inc()

    def pushed(self, status: PushStatus, count: int) -> None:
        PUSHES.labels(status=status.name.lower()).inc(count)

    def kicked(self, reason: KickReason) -> None:
        KICKS.labels(reason=reason.name.lower()).inc()

    def nacked(self) -> None:
        NACKS.inc()

    def ack_timed_out(self, count: int) -> None:
        ACK_TIMEOUTS.inc(count)

    def redelivered(self, count: int) -> None:
        REDELIVERIES.inc(count)

    def gave_up(self, count: int) -> None:
        FAILED.inc(count)

    def pulled(self, count: int) -> None:
        PULL_OK.inc()
        if count:
            PULLED.inc(count)

    def pull_failed(self) -> None:
        PULL_FAILED.inc()

    def rate_limited(self, action: str) -> None:
        RATE_LIMITED.labels(action=action).inc()

    def acks_received(self, count: int) -> None:
        ACKS.inc(count)

    def ack_store_failed(self) -> None:
        ACK_STORE_FAILURES.inc()

    def uplinked(self, outcome: str) -> None:
        UPLINKS.labels(outcome=outcome).inc()


#: The sink every part of the server uses unless it is given another.
PROMETHEUS = PrometheusMetrics()
