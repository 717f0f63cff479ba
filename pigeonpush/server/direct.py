"""The push server's side of direct streams (``?direct_streams=1``): read this
server's own stream and write its unicasts to their sessions.

Accept appends a unicast to an online device straight to the stream of the
server its ROUTE names (pigeonpush.store.direct), so it skips the queue,
delivery and the AMP call. ``DirectReader`` reads that stream (a blocking
XREAD on a connection of its own), drops expired messages and hands the rest
to ``PushHub.push`` in stream order, which is accept order: per-client order
holds as on delivery's live path. Nothing is acknowledged: WAIT_ACK is the
truth, and whatever the push could not write (no session here: the device
moved or reconnects; full window) is left to the device's pull, as for a
push from delivery. A store error is retried with exponential backoff on
the injected clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Protocol

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from pigeonpush.rpc import PushItem, PushStatus
from pigeonpush.store.interface import StoreError
from pigeonpush.store.model import Notification

#: Entries read per XREAD.
BATCH = 1000
#: Seconds one XREAD blocks (the reader checks for a stop between two).
BLOCK = 1.0
#: The stream is trimmed (with the next read) once this many entries were
#: read since the last trim, or this many seconds passed: not with every read,
#: which at low rates reads one entry each.
TRIM_ENTRIES = 1000
TRIM_INTERVAL = 1.0
#: Backoff after a failed read, doubled per failure up to RETRY_MAX.
RETRY_MIN = 0.5
RETRY_MAX = 10.0


class DirectSource(Protocol):
    """What the reader needs of the store (``RedisStore`` with the option)."""

    def clear_direct(self, address: str) -> Deferred[None]: ...

    def read_direct(
        self, address: str, after: str, count: int, block: float, *, trim: bool = True
    ) -> Deferred[tuple[str, list[Notification]]]: ...


#: ``PushHub.push``.
Push = Callable[[Sequence[PushItem]], Deferred[list[PushStatus]]]


class DirectReader:
    """Reads the stream of the server at ``address`` into ``push`` until stopped."""

    log = Logger()

    def __init__(
        self,
        store: DirectSource,
        push: Push,
        clock: IReactorTime,
        address: str,
        *,
        batch: int = BATCH,
        block: float = BLOCK,
    ) -> None:
        self._store = store
        self._push = push
        self._clock = clock
        self.address = address
        self.batch = batch
        self.block = block
        self._stopping = False
        self._running: Deferred[None] | None = None
        self._sleep: Deferred[None] | None = None
        #: messages handed to the hub since start (for tests and metrics)
        self.read = 0

    def start(self) -> None:
        self._stopping = False
        self._running = ensureDeferred(self._run())
        self._running.addErrback(lambda f: self.log.failure("The direct stream reader died", f))

    def stop(self) -> Deferred[None]:
        """Stop after the read under way (at most ``block`` seconds)."""
        self._stopping = True
        if self._sleep is not None:
            self._sleep.cancel()
        running, self._running = self._running, None
        if running is None or running.called:
            return succeed(None)
        done: Deferred[None] = Deferred()
        running.addBoth(lambda _: done.callback(None))
        return done

    async def _run(self) -> None:
        after = "0-0"
        delay = RETRY_MIN
        cleared = False
        untrimmed = 0
        trimmed_at = self._clock.seconds()
        while not self._stopping:
            try:
                if not cleared:
                    # What an earlier process at this address left is in WAIT_ACK.
                    await self._store.clear_direct(self.address)
                    cleared = True
                now = self._clock.seconds()
                trim = untrimmed >= TRIM_ENTRIES or (
                    untrimmed > 0 and now - trimmed_at >= TRIM_INTERVAL
                )
                after, notifications = await self._store.read_direct(
                    self.address, after, self.batch, self.block, trim=trim
                )
                if trim:
                    untrimmed, trimmed_at = 0, now
                untrimmed += len(notifications)
            except StoreError as e:
                self.log.warn(
                    "Reading the direct stream failed ({why}); retrying in {delay}s",
                    why=str(e),
                    delay=delay,
                )
                self._sleep = deferLater(self._clock, delay, lambda: None)
                with suppress(CancelledError):
                    await self._sleep
                self._sleep = None
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_MIN
            now = self._clock.seconds()
            items = [
                PushItem(client, n.message.message_id, n.message.title, n.message.text,
                         n.message.extras)
                for n in notifications
                if n.message.expires_at > now
                for client in n.recipients
            ]  # fmt: skip
            if items:
                self.read += len(items)
                try:
                    await self._push(items)
                except StoreError as e:
                    # The bodies are in the entries, so a push reads nothing;
                    # whatever it did not write stays in WAIT_ACK for the pull.
                    self.log.warn(
                        "Pushing {count} direct messages failed ({why}); the pull delivers them",
                        count=len(items),
                        why=str(e),
                    )
                except Exception:
                    self.log.failure("Pushing {count} direct messages failed", count=len(items))
