"""The Prometheus sink: each event of ``MetricsSink`` bumps the metric that
docs/server.rst names, and the server's parts report to it by default."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY
from twisted.internet.task import Clock

from pigeonpush.rpc import PushStatus
from pigeonpush.server.acks import AckBatcher
from pigeonpush.server.hub import PushHub
from pigeonpush.server.metrics import PROMETHEUS, PrometheusMetrics
from pigeonpush.server.protocol import ServerProtocolFactory
from pigeonpush.server.settings import ServerSettings
from pigeonpush.store.memory import MemoryStore
from pigeonpush.wire.frames import AuthFailCode, KickReason


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


SINK = PrometheusMetrics()

EVENTS: list[tuple[Callable[[], None], str, dict[str, str], float]] = [
    (SINK.authenticated, "pigeonpush_server_auth_total", {"result": "ok"}, 1),
    (
        lambda: SINK.refused(AuthFailCode.FULL),
        "pigeonpush_server_auth_total",
        {"result": "full"},
        1,
    ),
    (
        lambda: SINK.pushed(PushStatus.WINDOW_FULL, 3),
        "pigeonpush_server_pushes_total",
        {"status": "window_full"},
        3,
    ),
    (lambda: SINK.acked(0.2), "pigeonpush_server_push_to_ack_seconds_count", {}, 1),
    (
        lambda: SINK.kicked(KickReason.POLICY),
        "pigeonpush_server_kicks_total",
        {"reason": "policy"},
        1,
    ),
    (SINK.nacked, "pigeonpush_server_nacks_total", {}, 1),
    (lambda: SINK.ack_timed_out(4), "pigeonpush_server_ack_timeouts_total", {}, 4),
    (lambda: SINK.redelivered(2), "pigeonpush_server_redeliveries_total", {}, 2),
    (lambda: SINK.gave_up(5), "pigeonpush_server_failed_messages_total", {}, 5),
    (lambda: SINK.pulled(7), "pigeonpush_server_pulls_total", {"result": "ok"}, 1),
    (lambda: SINK.pulled(7), "pigeonpush_server_pulled_messages_total", {}, 7),
    (SINK.pull_failed, "pigeonpush_server_pulls_total", {"result": "failed"}, 1),
    (
        lambda: SINK.rate_limited("paused"),
        "pigeonpush_server_rate_limited_total",
        {"action": "paused"},
        1,
    ),
    (lambda: SINK.acks_received(9), "pigeonpush_server_acks_total", {}, 9),
    (SINK.ack_store_failed, "pigeonpush_server_ack_store_failures_total", {}, 1),
]


@pytest.mark.parametrize(("event", "name", "labels", "step"), EVENTS)
def test_each_event_bumps_its_metric(
    event: Callable[[], None], name: str, labels: dict[str, str], step: float
) -> None:
    before = sample(name, **labels)
    event()
    assert sample(name, **labels) == before + step


def test_the_session_count_is_a_gauge() -> None:
    SINK.sessions(12)
    assert sample("pigeonpush_server_connections") == 12
    SINK.sessions(0)
    assert sample("pigeonpush_server_connections") == 0


def test_the_server_reports_to_prometheus_unless_told_otherwise() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    settings = ServerSettings()
    hub = PushHub(store, clock, settings)
    assert hub.metrics is PROMETHEUS
    assert ServerProtocolFactory(hub, settings, clock).metrics is PROMETHEUS
    before = sample("pigeonpush_server_acks_total")
    AckBatcher(store, clock).add("alice", "m1")
    clock.advance(0)
    assert sample("pigeonpush_server_acks_total") == before + 1


def test_the_counted_histogram_reads_like_prometheus_clients_histogram() -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from pigeonpush.server.metrics import CountedHistogram

    ours, theirs = CollectorRegistry(), CollectorRegistry()
    buckets = (0.005, 0.01, 0.5, 2.0)
    counted = CountedHistogram("latency_seconds", "A latency", buckets, registry=ours)
    reference = Histogram("latency_seconds", "A latency", buckets=buckets, registry=theirs)
    for value in (0.0, 0.005, 0.0051, 0.3, 0.5, 2.0, 7.5, 1e9):
        counted.observe(value)
        reference.observe(value)

    def lines(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return [line for line in text.splitlines() if "_created" not in line]

    assert lines(ours) == lines(theirs)
    assert REGISTRY.get_sample_value("latency_seconds_count") is None  # its own registry only
