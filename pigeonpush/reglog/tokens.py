"""Tokens written to the store once per reactor turn, not once per route request.

Every route request writes its client's token (``PIGEON:AUTH``). On its own
each write is a coroutine, a Redis call with its reply deadline and a reply
to match; the route requests that one reactor turn reads (a poll hands over
many connections at once under load) now share one ``Store.issue_tokens``
call: one pipelined write, one reply list.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from pigeonpush.store.interface import Store


class TokenBatcher:
    """Collects the tokens issued during a reactor turn and writes them together
    on the next one (``callLater(0)``: before the reactor polls again)."""

    __slots__ = ("_clock", "_flush_call", "_store", "_tokens", "_ttl", "_waiting")

    def __init__(self, store: Store, clock: IReactorTime, ttl: float) -> None:
        self._store = store
        self._clock = clock
        self._ttl = ttl
        self._tokens: list[tuple[str, str]] = []
        self._waiting: list[Deferred[None]] = []
        self._flush_call: IDelayedCall | None = None

    def issue(self, client_id: str, token: str) -> Deferred[None]:
        """Fires once ``token`` is stored for ``client_id`` (with the batch's
        error otherwise: StoreError, or ValueError for a token the store refuses)."""
        waiting: Deferred[None] = Deferred()
        self._tokens.append((client_id, token))
        self._waiting.append(waiting)
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self._flush)
        return waiting

    def _flush(self) -> None:
        self._flush_call = None
        tokens, waiting = self._tokens, self._waiting
        self._tokens, self._waiting = [], []
        written = self._store.issue_tokens(tokens, self._ttl)
        written.addCallbacks(self._written, self._failed, (waiting,), errbackArgs=(waiting,))

    @staticmethod
    def _written(_: None, waiting: list[Deferred[None]]) -> None:
        for one in waiting:
            if not one.called:  # cancelled meanwhile
                one.callback(None)

    @staticmethod
    def _failed(failure: Failure, waiting: list[Deferred[None]]) -> None:
        for one in waiting:
            if not one.called:
                one.errback(failure)
