"""Why a PushClient gave up (the ``GaveUp`` event carries one of these)."""

from __future__ import annotations


class PushClientError(Exception):
    """Base class: the client stopped trying and needs the application's attention."""


class RouteLookupFailed(PushClientError):
    """reglog did not give a route: refused (400/401...) or failed too many times.

    ``retryable`` is False when reglog refused the request (bad input, bad
    secret): retrying the same request cannot help.
    """

    def __init__(
        self,
        url: str,
        attempts: int,
        reason: str,
        *,
        retryable: bool = True,
        status: int | None = None,
        error: str | None = None,
    ) -> None:
        self.url = url
        self.attempts = attempts
        self.reason = reason
        self.retryable = retryable
        self.status = status
        self.error = error
        if retryable:
            text = f"route lookup at {url} failed {attempts} time(s) in a row; last error: {reason}"
        else:
            text = f"route lookup at {url} was refused: {reason}"
        super().__init__(text)


class ProtocolVersionRefused(PushClientError):
    """The push server does not speak this client's protocol version."""


class SessionReplaced(PushClientError):
    """Another client logged in with the same clientId and took the session over.

    The client does not fight back (two processes with one clientId would
    take turns kicking each other out): give each its own clientId.
    """


class UplinkNotSent(Exception):
    """``send_uplink`` could not get the uplink to the store: the connection
    dropped (or was not up) before UPLINK_ACK, or the client stopped. The
    uplink may or may not be stored; sending it again with the same
    ``uplink_id`` is safe (the server stores it once)."""

    def __init__(self, uplink_id: str, reason: str) -> None:
        super().__init__(f"uplink {uplink_id!r} not acknowledged: {reason}")
        self.uplink_id = uplink_id
        self.reason = reason


class SubscriptionFailed(Exception):
    """A ``subscribe`` or ``unsubscribe`` did not happen: ``code`` is the
    server's answer (``NOT_ALLOWED``: the operator's ``--device-topics`` does
    not include the topic; ``TOO_MANY``; ``UNAVAILABLE``: try again), or
    ``OFFLINE`` (no session, or one of an older protocol), or
    ``DISCONNECTED`` (the session ended before the answer: whether it
    happened is unknown; the call is idempotent, try again)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}" if reason else code)
        self.code = code
        self.reason = reason
