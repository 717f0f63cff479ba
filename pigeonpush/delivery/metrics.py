"""Prometheus metrics of the delivery workers (served on --metrics at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

QUEUE_LAG = Gauge(
    "pigeonpush_delivery_queue_lag",
    "Queue entries accepted but not yet acknowledged by any delivery worker",
)
BATCHES = Counter(
    "pigeonpush_delivery_batches",
    "Queue batches routed",
)
ENTRIES = Counter(
    "pigeonpush_delivery_entries",
    "Queue entries routed, by source (new or reclaimed)",
    ["source"],
)
EXPIRED = Counter(
    "pigeonpush_delivery_expired",
    "Queue entries dropped because their message expired before routing",
)
PUSH_RESULTS = Counter(
    "pigeonpush_delivery_push_results",
    "Live push attempts per recipient, by result "
    "(written, offline, window_full, no_body, too_large, no_route, unavailable)",
    ["result"],
)
BATCH_ERRORS = Counter(
    "pigeonpush_delivery_batch_errors",
    "Store failures that made a queue step retry",
)
PULLS = Counter(
    "pigeonpush_delivery_pulls",
    "Pull requests answered",
)
PULLED = Counter(
    "pigeonpush_delivery_pulled_messages",
    "Pending messages handed to push servers by Pull",
)
PULL_CLEANED = Counter(
    "pigeonpush_delivery_pull_cleaned",
    "Expired message ids removed from WAIT_ACK while answering Pull",
)
PULL_ERRORS = Counter(
    "pigeonpush_delivery_pull_errors",
    "Pull requests that failed because the store did not answer",
)
SCHEDULED_RELEASED = Counter(
    "pigeonpush_delivery_scheduled_released",
    "Scheduled messages released to their recipients and the queue at their send time",
)
SCHEDULE_ERRORS = Counter(
    "pigeonpush_delivery_schedule_errors",
    "Ticks of the due-time poller that failed (retried at the next tick)",
)
