"""Prometheus metrics of the push server (served at /metrics).

Module-level, in the default registry. The hot paths use the pre-bound
children below and add up a batch before touching a metric.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
PUSH_TO_ACK = Histogram(
    "pigeonpush_server_push_to_ack_seconds",
    "Time from writing a PUSH to receiving its ACK",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
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
