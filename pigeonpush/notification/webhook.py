"""``--uplink-webhook``: POST each uplink to the application's URL, signed.

Every notification process given the option runs an ``UplinkWebhook``; they
share one position in the uplink stream, the store's consumer group
``webhook``, so each uplink is handed to one of them (no double sending while
they live). A sender POSTs its uplinks one at a time, in order, retrying a
failure with capped exponential backoff; after ``attempts`` failures the
uplink goes to the dead-letter list (``GET /v1/uplinks/dead``) and the sender
moves on. Entries a sender was handed and never settled (it crashed, or was
stopped during a POST) are taken over by another sender once idle for
``lease`` seconds, which is longer than any sender's retries take: delivery
to the webhook is at least once (the body's ``id`` tells repeats apart).

The signature (docs/uplink.rst): ``PigeonPush-Timestamp`` is the Unix time in
seconds; ``PigeonPush-Signature`` is ``v1=`` and the hex HMAC-SHA256, keyed
with the secret, of the timestamp, a ``.``, and the exact body bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from pigeonpush.notification import metrics
from pigeonpush.notification.uplinks import uplink_body
from pigeonpush.store.interface import DEFAULT_DEAD_UPLINK_MAX, Store, StoreError
from pigeonpush.store.model import DeadUplink, Uplink

log = Logger()

SIGNATURE_HEADER = "PigeonPush-Signature"
TIMESTAMP_HEADER = "PigeonPush-Timestamp"
#: How far a receiver should accept a timestamp from its own clock (replays).
SIGNATURE_TOLERANCE = 300.0
#: The smallest secret: 16 bytes.
MIN_SECRET_BYTES = 16

#: (url, body, headers) -> the HTTP status; fails for no answer.
Poster = Callable[[str, bytes, Mapping[str, str]], Deferred[int]]


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``PigeonPush-Signature`` value of ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "v1=" + digest.hexdigest()


def verify(
    secret: bytes,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    now: float,
    tolerance: float = SIGNATURE_TOLERANCE,
) -> bool:
    """What a receiver checks: the signature matches (compared in constant
    time) and the timestamp is within ``tolerance`` seconds of ``now``."""
    if timestamp is None or signature is None or not timestamp.isdigit():
        return False
    if abs(now - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


@attrs.frozen(slots=True)
class WebhookSettings:
    url: str
    secret: bytes = attrs.field(repr=False)
    #: POSTs per uplink before it goes to the dead-letter list
    attempts: int = 8
    #: the wait after the first failure; doubled after each one, up to ``max_backoff``
    backoff: float = 1.0
    max_backoff: float = 60.0
    #: seconds a POST may take (connection and answer)
    timeout: float = 10.0
    #: an uplink handed to a sender that has not settled it for this long is
    #: taken over by another (longer than a sender's retries of one uplink take)
    lease: float = 600.0
    #: dead uplinks kept
    dead_max: int = DEFAULT_DEAD_UPLINK_MAX
    #: seconds a sender waits on the stream for new uplinks per read
    block: float = 5.0

    def delays(self) -> list[float]:
        """The waits between the attempts (``attempts - 1`` of them)."""
        return [min(self.backoff * 2**n, self.max_backoff) for n in range(self.attempts - 1)]

    def worst_case(self) -> float:
        """The longest a sender holds one uplink: every attempt times out."""
        return self.attempts * self.timeout + sum(self.delays())

    def check(self) -> WebhookSettings:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(
                f"--uplink-webhook must be an http:// or https:// URL, not {self.url!r}"
            )
        if len(self.secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"the uplink webhook secret must be at least {MIN_SECRET_BYTES} bytes "
                "(--uplink-webhook-secret or --uplink-webhook-secret-file)"
            )
        if not 1 <= self.attempts <= 100:
            raise ValueError(f"--uplink-webhook-attempts must be 1 to 100, not {self.attempts}")
        for name in ("backoff", "max_backoff", "timeout", "block"):
            if not 0 < getattr(self, name) < float("inf"):
                raise ValueError(f"webhook {name} must be a positive number of seconds")
        if self.lease <= self.worst_case():
            raise ValueError(
                f"the webhook lease ({self.lease:g} s) must be longer than a sender's "
                f"retries of one uplink ({self.worst_case():g} s)"
            )
        return self


def webhook_body(uplink: Uplink) -> bytes:
    """The POST body: ``{"uplinks": [uplink]}``, the pull API's shape."""
    text = json.dumps({"uplinks": [uplink_body(uplink)]}, ensure_ascii=False, separators=(",", ":"))
    return text.encode()


def consumer_name() -> str:
    """This process's name in the consumer group: unique, and readable in XINFO."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


def treq_poster(reactor: Any, timeout: float) -> tuple[Poster, Callable[[], Deferred[None]]]:
    """A Poster over treq with a connection pool of its own, and its closer."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    from pigeonpush.sdk.route import BytesProducer

    pool = HTTPConnectionPool(reactor, persistent=True)
    client = HTTPClient(Agent(reactor, pool=pool), data_to_body_producer=BytesProducer)

    async def post(url: str, body: bytes, headers: Mapping[str, str]) -> int:
        all_headers: dict[str | bytes, str | bytes] = {"Content-Type": "application/json"}
        all_headers.update(headers)
        response = await client.post(
            url, data=body, headers=all_headers, timeout=timeout, reactor=reactor
        )
        await response.content()  # drained, so the connection can be reused
        return int(response.code)

    def poster(url: str, body: bytes, headers: Mapping[str, str]) -> Deferred[int]:
        return ensureDeferred(post(url, body, headers))

    return poster, pool.closeCachedConnections


class UplinkWebhook(Service):
    """Sends the stream's uplinks to the webhook while running."""

    name = "uplink-webhook"

    def __init__(
        self,
        store: Store,
        clock: IReactorTime,
        settings: WebhookSettings,
        post: Poster,
        *,
        consumer: str | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings.check()
        self.post = post
        self.consumer = consumer or consumer_name()
        self._loop: Deferred[None] | None = None
        #: uplinks sent (2xx) and dead-lettered by this sender (for tests and logs)
        self.sent = 0
        self.dead = 0

    def startService(self) -> None:
        super().startService()
        self._loop = ensureDeferred(self._run())
        self._loop.addErrback(lambda failure: failure.trap(CancelledError))

    def stopService(self) -> Deferred[None]:
        super().stopService()
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
            return loop
        return succeed(None)

    async def _run(self) -> None:
        while True:
            try:
                await self._round()
            except CancelledError:
                raise
            except StoreError as e:
                log.warn("Cannot read uplinks for the webhook: {error}", error=str(e))
                await deferLater(self.clock, 1.0, lambda: None)
            except Exception:
                # A bug must not end the sending for good: log it, go on.
                log.failure("The uplink webhook failed; going on in 1 s")
                await deferLater(self.clock, 1.0, lambda: None)

    async def _round(self) -> None:
        """Take over a crashed sender's uplinks, or wait for new ones; send them."""
        settings = self.settings
        uplinks = await self.store.reclaim_uplinks(self.consumer, settings.lease, 10)
        if not uplinks:
            uplinks = await self.store.claim_uplinks(self.consumer, 10, settings.block)
        for uplink in uplinks:
            await self._deliver(uplink)

    async def _deliver(self, uplink: Uplink) -> None:
        """POST until a 2xx or ``attempts`` failures; then settle the entry."""
        settings = self.settings
        body = webhook_body(uplink)
        delays = settings.delays()
        error = ""
        for attempt in range(settings.attempts):
            timestamp = str(int(self.clock.seconds()))
            headers = {
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(settings.secret, timestamp, body),
            }
            try:
                status = await self.post(settings.url, body, headers)
            except CancelledError:
                raise
            except Exception as e:  # any failure to POST is retried
                error = f"{type(e).__name__}: {e}"
            else:
                if 200 <= status < 300:
                    self.sent += 1
                    metrics.UPLINK_WEBHOOK.labels(outcome="sent").inc()
                    await self._settle(uplink)
                    return
                error = f"HTTP {status}"
            metrics.UPLINK_WEBHOOK.labels(outcome="failed").inc()
            if attempt < len(delays):
                log.info(
                    "Uplink {entry_id} to the webhook failed ({error}); retrying in {delay:g} s",
                    entry_id=uplink.entry_id,
                    error=error,
                    delay=delays[attempt],
                )
                await deferLater(self.clock, delays[attempt], lambda: None)
        log.warn(
            "Uplink {entry_id} of {client_id} failed {attempts} times ({error}): dead-lettered",
            entry_id=uplink.entry_id,
            client_id=uplink.client_id,
            attempts=settings.attempts,
            error=error,
        )
        dead = DeadUplink(uplink, settings.attempts, error, self.clock.seconds())
        await self._store_retrying(lambda: self.store.add_dead_uplink(dead, settings.dead_max))
        self.dead += 1
        metrics.UPLINK_WEBHOOK.labels(outcome="dead").inc()
        await self._settle(uplink)

    async def _settle(self, uplink: Uplink) -> None:
        await self._store_retrying(lambda: self.store.settle_uplinks([uplink.entry_id]))

    async def _store_retrying(self, call: Callable[[], Deferred[None]]) -> None:
        """A store write that must happen: retried every second while the store fails."""
        while True:
            try:
                await call()
                return
            except StoreError as e:
                log.warn("The webhook cannot write to the store: {error}", error=str(e))
                await deferLater(self.clock, 1.0, lambda: None)
