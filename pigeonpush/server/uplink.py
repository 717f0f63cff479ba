"""UPLINK on the push server: check it, rate-limit it, store it, then answer.

``UplinkReceiver.receive`` takes what a session knows (the clientId, its
protocol version) and the frame, and answers a Deferred of the frame to send
back: UPLINK_ACK once the uplink is durable in the store, or ERROR (the
session closes with it) for an uplink the server refuses; ``send_answer``
sends it on the session's ``Channel``. Nothing here knows a transport: TCP
and WebSocket sessions are the same to it. The rules are in docs/protocol.rst
(UPLINK) and docs/uplink.rst.
"""

from __future__ import annotations

import weakref

import attrs
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from pigeonpush.logsafe import untrusted
from pigeonpush.server.metrics import PROMETHEUS, MetricsSink
from pigeonpush.server.session import Session, State
from pigeonpush.store.interface import (
    DEFAULT_UPLINK_DEDUP_WINDOW,
    DEFAULT_UPLINK_MAX_LEN,
    Store,
    StoreError,
)
from pigeonpush.store.model import Uplink as StoredUplink
from pigeonpush.store.model import UplinkStored
from pigeonpush.wire.codec import encode, uplink_problem
from pigeonpush.wire.frames import (
    UPLINK_VERSION,
    Error,
    ErrorCode,
    Uplink,
    UplinkAck,
)

log = Logger()

#: Seconds between tries of an uplink's store write while the store fails:
#: about 8 s in all, longer than a Redis restart, shorter than a session's
#: patience; then ERROR INTERNAL, and the device resends on its next session.
STORE_RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0, 4.0)

#: The answers ``receive`` may give.
Answer = UplinkAck | Error


def send_answer(answer: Answer, session: Session) -> None:
    """Send ``receive``'s answer on the session's channel: UPLINK_ACK, or
    ERROR and the close. Nothing once the session is closing (the device
    resends what it got no answer for)."""
    if session.state >= State.CLOSING:
        return
    if isinstance(answer, UplinkAck):
        session.channel.send(encode(answer))
    else:
        session.channel.close(answer)


@attrs.frozen(slots=True)
class UplinkSettings:
    """The knobs of uplinks on one push server (``--uplink-*`` options)."""

    #: uplinks per second a connection may send, sustained (a token bucket)
    rate: float = 5.0
    #: uplinks a connection may send at once above ``rate`` (the bucket's size)
    burst: int = 20
    #: a resent (clientId, uplinkId) within this many seconds is stored once
    dedup_window: float = DEFAULT_UPLINK_DEDUP_WINDOW
    #: about how many uplinks the store keeps (the stream's MAXLEN ~)
    max_len: int = DEFAULT_UPLINK_MAX_LEN

    def check(self) -> UplinkSettings:
        """``self`` if every value is usable, else ValueError saying which is not."""
        if not 0 < self.rate < float("inf"):
            raise ValueError(
                f"--uplink-rate must be a positive number of uplinks per second, not {self.rate:g}"
            )
        if self.burst < 1:
            raise ValueError(f"--uplink-rate's burst must be at least 1, not {self.burst}")
        if not 0 < self.dedup_window < float("inf"):
            raise ValueError("--uplink-dedup-window must be a positive number of seconds")
        if self.max_len < 1:
            raise ValueError(f"--uplink-max-len must be at least 1, not {self.max_len}")
        return self


def parse_rate(value: str) -> tuple[int, float]:
    """``--uplink-rate BURST/RATE`` (e.g. ``20/5``: bursts of 20, then 5 per
    second) or a plain ``RATE`` (the burst is then 4 seconds' worth)."""
    burst_text, slash, rate_text = value.partition("/")
    if not slash:
        rate_text, burst_text = burst_text, ""
    try:
        rate = float(rate_text)
        burst = int(burst_text) if burst_text else max(1, round(4 * rate))
    except (ValueError, OverflowError):
        raise ValueError(
            f"--uplink-rate must be BURST/RATE (e.g. 20/5) or RATE, not {value!r}"
        ) from None
    UplinkSettings(rate=rate, burst=burst).check()
    return burst, rate


@attrs.define(slots=True)
class _Bucket:
    tokens: float
    at: float


class UplinkReceiver:
    """Stores the UPLINKs of a push server's sessions (one per hub)."""

    def __init__(
        self,
        store: Store,
        clock: IReactorTime,
        settings: UplinkSettings | None = None,
        *,
        metrics: MetricsSink = PROMETHEUS,
    ) -> None:
        self.store = store
        self.clock = clock
        self.settings = (settings or UplinkSettings()).check()
        self.metrics = metrics
        #: session -> its token bucket; a session that is gone takes its bucket along
        self._buckets: weakref.WeakKeyDictionary[object, _Bucket] = weakref.WeakKeyDictionary()

    def receive(
        self, session: object, client_id: str, version: int, frame: Uplink
    ) -> Deferred[Answer]:
        """The answer to ``frame`` from ``session`` (any object that lives as
        long as the connection: the rate limit is kept per session). Never
        fails: a store that keeps failing for ``STORE_RETRY_DELAYS`` is ERROR
        INTERNAL, after which the device resends the uplink with the same id
        on its next connection."""
        if version < UPLINK_VERSION:
            self.metrics.uplinked("refused")
            return succeed(
                Error(ErrorCode.UNEXPECTED, f"UPLINK is not allowed in protocol version {version}")
            )
        problem = uplink_problem(frame.uplink_id, frame.data)
        if problem is not None:
            self.metrics.uplinked("refused")
            return succeed(Error(problem.code, f"UPLINK: {problem}"))
        if not self._spend(session):
            self.metrics.uplinked("rate_limited")
            settings = self.settings
            return succeed(
                Error(
                    ErrorCode.RATE_LIMITED,
                    f"over {settings.rate:g} uplinks per second (bursts of {settings.burst})",
                )
            )
        uplink = StoredUplink(client_id, frame.uplink_id, frame.data, self.clock.seconds())
        stored = ensureDeferred(self._store(session, uplink))
        return stored.addCallbacks(
            self._stored,
            self._failed,
            callbackArgs=(frame.uplink_id,),
            errbackArgs=(client_id, frame.uplink_id),
        )

    async def _store(self, session: object, uplink: StoredUplink) -> UplinkStored:
        """Store ``uplink``, trying again over a few seconds while the store
        fails (a Redis restart) and the session lasts: a store blip must not
        close every device that sent an uplink meanwhile. Retrying is safe:
        the store de-duplicates by (clientId, uplinkId)."""
        for delay in (*STORE_RETRY_DELAYS, None):
            try:
                return await self.store.add_uplink(
                    uplink, dedup_window=self.settings.dedup_window, max_len=self.settings.max_len
                )
            except StoreError:
                if delay is None or getattr(session, "state", State.ACTIVE) >= State.CLOSING:
                    raise
            await deferLater(self.clock, delay, lambda: None)
        raise AssertionError("unreachable")  # pragma: no cover

    def _spend(self, session: object) -> bool:
        """Take a token from the session's bucket; False when it has none."""
        settings = self.settings
        now = self.clock.seconds()
        bucket = self._buckets.get(session)
        if bucket is None:
            bucket = self._buckets[session] = _Bucket(float(settings.burst), now)
        bucket.tokens = min(
            float(settings.burst), bucket.tokens + (now - bucket.at) * settings.rate
        )
        bucket.at = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _stored(self, result: UplinkStored, uplink_id: str) -> Answer:
        self.metrics.uplinked("duplicate" if result.duplicate else "stored")
        return UplinkAck(uplink_id)

    def _failed(self, failure: Failure, client_id: str, uplink_id: str) -> Answer:
        self.metrics.uplinked("failed")
        if failure.check(StoreError):
            log.warn(
                "Could not store uplink {uplink_id} of {client_id}: {error}",
                client_id=client_id,
                uplink_id=untrusted(uplink_id),
                error=failure.getErrorMessage(),
            )
        else:
            log.failure(
                "Could not store uplink {uplink_id} of {client_id}",
                failure,
                client_id=client_id,
                uplink_id=untrusted(uplink_id),
            )
        return Error(ErrorCode.INTERNAL, "the uplink could not be stored; send it again later")
