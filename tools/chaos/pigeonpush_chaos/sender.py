"""Notifications through ``POST /v1/notifications/batch``, paced, retried safely.

Message *k* goes to client ``k mod N`` (every client gets its share). Batch
*b* holds messages ``b * size`` onwards and is due ``b * size / rate`` seconds
after the start; at most ``concurrency`` batches are in flight. A batch that
fails (no answer, 5xx, 408, 429) is sent again, the same body with the same
``Idempotency-Key``, after a capped backoff, until the deadline: the API then
answers the first answer again, so a retry never makes a second message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.error import ConnectError, ConnectionClosed
from twisted.internet.task import deferLater
from twisted.web.client import RequestTransmissionFailed, ResponseFailed
from twisted.web.http_headers import Headers

from pigeonpush.ids import timestamp_ms
from pigeonpush_chaos.report import Accepted

#: Statuses worth another try with the same key.
RETRYABLE = frozenset({408, 429})
#: What a request that got no answer fails with: refused, reset, cut, timed out.
_NO_ANSWER = (
    ConnectError,
    ConnectionClosed,
    ResponseFailed,
    RequestTransmissionFailed,
    defer.CancelledError,
    defer.TimeoutError,
)


def batches(messages: int, size: int, clients: Sequence[str]) -> list[list[tuple[int, str]]]:
    """``[(message number, clientId), ...]`` per batch."""
    if size < 1 or not clients:
        raise ValueError("a batch holds at least one message, for at least one client")
    numbered = [(k, clients[k % len(clients)]) for k in range(messages)]
    return [numbered[start : start + size] for start in range(0, messages, size)]


def retry_delay(attempt: int) -> float:
    """Seconds before retry ``attempt`` (1, 2, ...): 0.25 doubling, capped at 4."""
    return float(min(4.0, 0.25 * 2 ** (attempt - 1)))


@attrs.define(slots=True)
class Outcome:
    accepted: dict[str, Accepted] = attrs.field(factory=dict)
    refused: int = 0
    #: Messages whose batch was never answered before the deadline.
    unsent: int = 0
    retries: int = 0
    errors: dict[str, int] = attrs.field(factory=dict)
    #: When the last batch was answered.
    finished: float | None = None

    def error(self, text: str) -> None:
        self.errors[text] = self.errors.get(text, 0) + 1


class Sender:
    def __init__(
        self,
        reactor: Any,
        http: Any,
        url: str,
        api_key: str,
        run_id: str,
        *,
        ttl: int,
        concurrency: int = 8,
    ) -> None:
        self._reactor = reactor
        self._http = http
        self._url = url.rstrip("/") + "/v1/notifications/batch"
        self._api_key = api_key
        self._run_id = run_id
        self._ttl = ttl
        self._slots = defer.DeferredSemaphore(concurrency)
        self.outcome = Outcome()
        #: Called after each answered batch (progress).
        self.on_batch: Callable[[Outcome], None] | None = None

    async def send(
        self, planned: Sequence[Sequence[tuple[int, str]]], rate: float, deadline: float
    ) -> Outcome:
        """Every batch, paced at ``rate`` messages/s; returns when all are answered
        or the deadline (reactor time) has passed."""
        start = self._reactor.seconds()
        jobs = []
        offset = 0
        for index, items in enumerate(planned):
            due = start + offset / rate
            offset += len(items)
            jobs.append(defer.ensureDeferred(self._batch(index, items, due, deadline)))
        await defer.DeferredList(jobs, consumeErrors=False)
        self.outcome.finished = self._reactor.seconds()
        return self.outcome

    async def _batch(
        self, index: int, items: Sequence[tuple[int, str]], due: float, deadline: float
    ) -> None:
        wait = due - self._reactor.seconds()
        if wait > 0:
            await deferLater(self._reactor, wait, lambda: None)
        await self._slots.acquire()
        try:
            await self._send_until_answered(index, items, deadline)
        finally:
            self._slots.release()
        if self.on_batch is not None:
            self.on_batch(self.outcome)

    async def _send_until_answered(
        self, index: int, items: Sequence[tuple[int, str]], deadline: float
    ) -> None:
        body = json.dumps(
            {
                "notifications": [
                    {"to": [client], "title": "chaos", "text": f"message {k}", "ttl": self._ttl}
                    for k, client in items
                ]
            }
        ).encode()
        headers = Headers(
            {
                b"Authorization": [f"Bearer {self._api_key}".encode()],
                b"Content-Type": [b"application/json"],
                b"Idempotency-Key": [f"{self._run_id}-{index}".encode()],
            }
        )
        attempt = 0
        outcome = self.outcome
        while True:
            attempt += 1
            try:
                response = await self._http.post(self._url, data=body, headers=headers, timeout=10)
                raw = await response.content()
                status = int(response.code)
            except _NO_ANSWER as e:
                status, raw = 0, b""
                outcome.error(type(e).__name__)
            if status == 200:
                self._take(items, raw)
                return
            if status:
                outcome.error(f"HTTP {status}")
            if status and 400 <= status < 500 and status not in RETRYABLE:
                outcome.refused += len(items)  # the same request would be refused again
                return
            delay = retry_delay(attempt)
            if self._reactor.seconds() + delay > deadline:
                outcome.unsent += len(items)
                return
            outcome.retries += 1
            await deferLater(self._reactor, delay, lambda: None)

    def _take(self, items: Sequence[tuple[int, str]], raw: bytes) -> None:
        outcome = self.outcome
        try:
            results = json.loads(raw)["results"]
        except (ValueError, KeyError, TypeError):
            outcome.error("unreadable 200 answer")
            outcome.unsent += len(items)
            return
        for (_, client), result in zip(items, results, strict=False):
            message_id = result.get("messageId") if isinstance(result, dict) else None
            if isinstance(message_id, str):
                outcome.accepted[message_id] = Accepted(client, timestamp_ms(message_id) / 1000)
            else:
                outcome.refused += 1
                outcome.error(f"item {result.get('error') if isinstance(result, dict) else '?'}")
