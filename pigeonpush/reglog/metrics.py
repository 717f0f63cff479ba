"""Prometheus metrics of reglog (served at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ROUTE_REQUESTS = Counter(
    "pigeonpush_reglog_route_requests",
    "POST /v1/route requests by result: ok or the error code answered",
    ["result"],
)
ROUTE_SECONDS = Histogram(
    "pigeonpush_reglog_route_seconds",
    "Time to answer POST /v1/route, whatever the result",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
REGISTRATIONS = Counter(
    "pigeonpush_reglog_registrations",
    "POST /v1/devices requests by result: ok or the error code answered",
    ["result"],
)
LIVE_SERVERS = Gauge(
    "pigeonpush_reglog_live_servers",
    "Push servers alive in discovery with usable data",
)
PUBLISHED_FREE_CAPACITY = Gauge(
    "pigeonpush_reglog_published_free_capacity",
    "Sum over live push servers of capacity minus published connections",
)
