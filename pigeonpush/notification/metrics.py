"""Prometheus metrics of the notification API (served at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter

ACCEPTED = Counter(
    "pigeonpush_notification_accepted",
    "Notifications stored and queued (idempotent replays not counted)",
)
RECIPIENTS = Counter(
    "pigeonpush_notification_recipients",
    "Recipients of accepted notifications",
)
REPLAYED = Counter(
    "pigeonpush_notification_replayed",
    "Notifications answered from an earlier request with the same Idempotency-Key",
)
REJECTED = Counter(
    "pigeonpush_notification_rejected",
    "Requests or batch items refused, by error code",
    ["reason"],
)
STORE_ERRORS = Counter(
    "pigeonpush_notification_store_errors",
    "Requests that failed because the store did not answer",
)
KICKS = Counter(
    "pigeonpush_notification_kicks",
    "Device sessions ended through the API, by result (disconnected, no_session)",
    ["result"],
)
UPLINK_WEBHOOK = Counter(
    "pigeonpush_notification_uplink_webhook",
    "POSTs of uplinks to --uplink-webhook, by outcome (sent, failed: retried, dead)",
    ["outcome"],
)
