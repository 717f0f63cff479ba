"""``twistd pigeon-notification``: options and wiring of the notification API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from pigeonpush.delivery.gateway import AmpGateways
from pigeonpush.http import JsonSite
from pigeonpush.identifiers import MAX_CLIENT_ID
from pigeonpush.notification.api import ApiSettings, NotificationApi
from pigeonpush.notification.auth import ApiKeys, KeyFileError, key_problem, read_key_file
from pigeonpush.notification.core import DEFAULT_LOG_LENGTH, DEFAULT_MAX_TOPICS, Notifications
from pigeonpush.notification.sessions import DeviceSessions
from pigeonpush.notification.validate import Limits
from pigeonpush.notification.webhook import UplinkWebhook, WebhookSettings, treq_poster
from pigeonpush.options import (
    HTTP_LIMIT_OPTIONS,
    RPC_CA_FILE_OPTION,
    DaemonOptions,
    check_endpoint,
    check_http_limits,
    check_store_url,
    client_tls,
)
from pigeonpush.rpc import PushGateway
from pigeonpush.rpcpool import AmpPool
from pigeonpush.services import Closer, Daemon, GcTuning, StopInOrder, listen_or_fail
from pigeonpush.store.interface import Store

#: Request body bytes per batch item when --max-body is not given: room for
#: JSON escaping of a full title, text and extras, and a few recipients.
BODY_BYTES_PER_ITEM_MARGIN = 512


def default_max_body(limits: Limits, max_batch: int) -> int:
    """Twice the largest item times the batch size: ``2 * max_batch * (max_title
    + max_text + max_extras + 512)``, and never less than one notification with
    every recipient at its longest clientId."""
    per_item = limits.max_title + limits.max_text + limits.max_extras + BODY_BYTES_PER_ITEM_MARGIN
    one_full = 2 * per_item + limits.max_recipients * (MAX_CLIENT_ID + 3)
    return max(2 * max_batch * per_item, one_full)


def _whole(value: str) -> int:
    """A whole number option; the message says what was wrong with it."""
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number") from None


class Options(DaemonOptions):
    synopsis = "[options]"
    longdesc = (
        "The HTTP API application servers send notifications to: POST /v1/notifications, "
        "POST /v1/notifications/batch, GET /v1/notifications/<messageId>, GET /v1/uplinks "
        "(Bearer API key); optionally POSTs uplinks to --uplink-webhook. "
        "Sizes are UTF-8 bytes; times are seconds."
    )
    optParameters = [
        ["listen", None, "tcp:8200", "Endpoint the HTTP API listens on."],
        [
            "redis",
            None,
            "redis://127.0.0.1:6379/0",
            "Store URL: redis://[:password@]host:port/db or redis+cluster://host:port,...",
        ],
        [
            "api-keys-file",
            None,
            None,
            "File of API keys, one per line (# comments allowed; 16+ characters each).",
        ],
        ["default-ttl", None, 86400, "TTL of a notification that gives none.", _whole],
        ["max-ttl", None, 2419200, "Largest TTL a notification may ask for (28 days).", _whole],
        ["max-recipients", None, 1000, "Most clientIds in one notification's 'to'.", _whole],
        ["max-title", None, 256, "Largest title, in bytes.", _whole],
        ["max-text", None, 2048, "Largest text, in bytes.", _whole],
        ["max-extras", None, 1024, "Largest extras, in bytes of compact JSON.", _whole],
        ["max-batch", None, 500, "Most notifications in one batch request.", _whole],
        [
            "max-body",
            None,
            None,
            "Largest request body in bytes (default: fits --max-batch).",
            _whole,
        ],
        ["idempotency-ttl", None, 86400, "How long an Idempotency-Key is remembered.", _whole],
        [
            "receipt-retention",
            None,
            86400,
            "Seconds a receipt stays readable after its message's TTL (1 day; 0: none).",
            _whole,
        ],
        [
            "uplink-webhook",
            None,
            None,
            "URL to POST each uplink to, signed (see docs/uplink.rst) [default: none].",
        ],
        [
            "uplink-webhook-secret",
            None,
            None,
            "The webhook's HMAC-SHA256 key (16+ bytes); or --uplink-webhook-secret-file.",
        ],
        [
            "uplink-webhook-secret-file",
            None,
            None,
            "File whose first line is the webhook's HMAC-SHA256 key.",
        ],
        [
            "uplink-webhook-attempts",
            None,
            8,
            "POSTs of one uplink before it goes to the dead-letter list.",
            _whole,
        ],
        ["uplink-webhook-timeout", None, 10, "Seconds one POST may take.", _whole],
        [
            "uplink-webhook-lease",
            None,
            600,
            "Seconds after which another process takes over uplinks a crashed one held.",
            _whole,
        ],
        [
            "topic-log-length",
            None,
            DEFAULT_LOG_LENGTH,
            "Most messages a topic's log keeps for devices offline (older ones are missed).",
            _whole,
        ],
        [
            "max-topics-per-device",
            None,
            DEFAULT_MAX_TOPICS,
            "Most topics one device may be subscribed to.",
            _whole,
        ],
        RPC_CA_FILE_OPTION,
        *HTTP_LIMIT_OPTIONS,
    ]

    def __init__(self) -> None:
        super().__init__()
        self["api-key"] = []

    def opt_api_key(self, key: str) -> None:
        """An API key for 'Authorization: Bearer <key>' (repeatable; 16+ printable ASCII)."""
        self["api-key"].append(key)

    def postOptions(self) -> None:
        check_endpoint("--listen", self["listen"])
        check_store_url("--redis", self["redis"])
        check_http_limits(self)
        #: how push servers' tls: RPC addresses are verified (Kick)
        self["rpc-tls"] = client_tls("--rpc-ca-file", self["rpc-ca-file"])
        keys = [("--api-key", key) for key in self["api-key"]]
        if self["api-keys-file"] is not None:
            try:
                keys += [("--api-keys-file", key) for key in read_key_file(self["api-keys-file"])]
            except KeyFileError as e:
                raise usage.UsageError(str(e)) from None
        if not keys:
            raise usage.UsageError(
                "no API key: give --api-key or --api-keys-file (the API never runs open)"
            )
        for option, key in keys:
            problem = key_problem(key)
            if problem is not None:
                raise usage.UsageError(f"{option}: {problem}")
        self["keys"] = [key for _option, key in keys]
        for name in ("max-batch", "idempotency-ttl", "topic-log-length", "max-topics-per-device"):
            if self[name] < 1:
                raise usage.UsageError(f"--{name} must be at least 1")
        if self["receipt-retention"] < 0:
            raise usage.UsageError("--receipt-retention must be 0 or more seconds")
        limits = Limits(
            default_ttl=self["default-ttl"],
            max_ttl=self["max-ttl"],
            max_recipients=self["max-recipients"],
            max_title=self["max-title"],
            max_text=self["max-text"],
            max_extras=self["max-extras"],
        )
        problems = limits.problems()
        if problems:
            raise usage.UsageError(problems[0])
        self["limits"] = limits
        if self["max-body"] is None:
            self["max-body"] = default_max_body(limits, self["max-batch"])
        elif self["max-body"] < 1024:
            raise usage.UsageError("--max-body must be at least 1024 bytes")
        self["webhook"] = self._webhook()

    def _webhook(self) -> WebhookSettings | None:
        url = self["uplink-webhook"]
        secret = self["uplink-webhook-secret"]
        secret_file = self["uplink-webhook-secret-file"]
        if url is None:
            if secret is not None or secret_file is not None:
                raise usage.UsageError("--uplink-webhook-secret needs --uplink-webhook")
            return None
        if (secret is None) == (secret_file is None):
            raise usage.UsageError(
                "--uplink-webhook needs one of --uplink-webhook-secret "
                "and --uplink-webhook-secret-file"
            )
        if secret_file is not None:
            try:
                with open(secret_file, encoding="utf-8") as lines:
                    secret = lines.readline().strip()
            except (OSError, UnicodeDecodeError) as e:
                raise usage.UsageError(f"--uplink-webhook-secret-file: {e}") from None
        try:
            return WebhookSettings(
                url,
                secret.encode(),
                attempts=self["uplink-webhook-attempts"],
                timeout=self["uplink-webhook-timeout"],
                lease=self["uplink-webhook-lease"],
            ).check()
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


def makeService(config: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    from pigeonpush.store import open_store

    store = open_store(
        config["redis"],
        reactor,
        idempotency_ttl=config["idempotency-ttl"],
        receipt_retention=config["receipt-retention"],
    )
    # Kicks reach the push server that ROUTE names over AMP, as delivery's pushes do.
    pool = AmpPool(reactor, tls=config["rpc-tls"])
    top = Daemon("pigeon-notification")
    Closer(store.close, pool.close).setServiceParent(top)
    build_api(config, reactor, store, AmpGateways(pool)).setServiceParent(top)
    webhook = build_webhook(config, reactor, store)
    if webhook is not None:
        webhook.setServiceParent(top)
    GcTuning(reactor).setServiceParent(top)
    return top


def build_api(
    config: Options, reactor: Any, store: Store, gateway_for: Callable[[str], PushGateway]
) -> IService:
    """The HTTP API over a given store (the all-in-one process shares its
    own); ``gateway_for`` reaches the push server at an RPC address (kicks)."""
    notifications = Notifications(
        store,
        reactor,
        config["limits"],
        log_length=config["topic-log-length"],
        max_topics=config["max-topics-per-device"],
    )
    api = NotificationApi(
        notifications,
        ApiKeys(config["keys"]),
        ApiSettings(max_body=config["max-body"], max_batch=config["max-batch"]),
        DeviceSessions(store, gateway_for),
    )
    site = JsonSite(
        api.resource(),
        max_body=config["max-body"],
        request_timeout=config["request-timeout"],
        max_connections=config["max-connections"],
        reactor=reactor,
    )
    return listen_or_fail(serverFromString(reactor, config["listen"]), site)


def build_webhook(config: Options, reactor: Any, store: Store) -> IService | None:
    """The uplink webhook sender (``--uplink-webhook``), or None without one.
    It stops before its HTTP connection pool closes."""
    settings: WebhookSettings | None = config["webhook"]
    if settings is None:
        return None
    post, close = treq_poster(reactor, settings.timeout)
    tree = StopInOrder()
    Closer(close).setServiceParent(tree)
    UplinkWebhook(store, reactor, settings, post).setServiceParent(tree)
    return tree
