"""The knobs of one push server, checked once where they are read."""

from __future__ import annotations

import fnmatch

import attrs

from pigeonpush.wire.codec import DEFAULT_MAX_FRAME, MIN_MAX_FRAME

#: Largest ACK window: a connection never holds more un-ACKed PUSHes in flight.
MAX_ACK_WINDOW = 65535
#: Largest --max-attempts: beyond it a failing message would block its client
#: for days.
MAX_ATTEMPTS = 1000
#: Largest --max-frame: a frame is buffered whole before it is decoded.
MAX_FRAME_LIMIT = 16 * 1024 * 1024
#: Refused AUTHs, client ERRORs and protocol errors: at most LOG_BURST lines
#: of each per LOG_INTERVAL seconds (the next line counts those left out;
#: the metrics count all of them), whatever a peer sends.
LOG_INTERVAL = 10.0
LOG_BURST = 5


@attrs.frozen(slots=True)
class ServerSettings:
    """What a push server enforces on its connections (seconds, bytes, counts)."""

    #: a connection that has not sent AUTH by then is closed (ERROR TIMEOUT)
    auth_timeout: float = 10.0
    #: an authenticated connection silent for this long is closed
    idle_timeout: float = 90.0
    #: the PING interval the server asks of clients (in AUTH_OK); also the
    #: shortest time between two pulls of one connection
    heartbeat: float = 30.0
    #: largest frame (length prefix value) either side may send
    max_frame: int = DEFAULT_MAX_FRAME
    #: un-ACKed PUSHes in flight per connection; more are refused as WINDOW_FULL
    ack_window: int = 32
    #: authenticated connections this server accepts (AUTH_FAIL FULL beyond)
    capacity: int = 19000
    #: expiry of AUTH and ROUTE while a session is bound; live sessions are
    #: refreshed every third of it
    session_ttl: float = 86400.0
    #: graceful stop: KICKs to clients are spread over this many seconds
    drain_period: float = 10.0
    #: a PUSH not ACKed within this many seconds counts as failed and is
    #: written again, on the same connection, after a backoff
    ack_timeout: float = 60.0
    #: failed deliveries (NACKs, ACK timeouts, on any connection) after which
    #: a message is dropped from the client's pending messages as failed
    max_attempts: int = 5

    #: frames per second a connection may send, sustained (a token bucket on
    #: the server's clock); an ACK of a PUSH in flight is free, since the
    #: server asked for it. Over the limit the server stops reading the
    #: connection until the bucket has a token again.
    frame_rate: float = 50.0
    #: frames a connection may send at once above ``frame_rate`` (the bucket's size)
    frame_burst: int = 200
    #: a connection that keeps the server from reading it (always over the
    #: limit) for this many seconds is closed with ERROR RATE_LIMITED
    frame_abuse_time: float = 10.0
    #: the topics devices may subscribe themselves to (SUBSCRIBE), as
    #: shell-style patterns (``public.*``); none by default
    device_topics: tuple[str, ...] = ()
    #: the most topics one device may be subscribed to
    max_topics_per_device: int = 100

    def allows_device_topic(self, topic: str) -> bool:
        """Whether a device may subscribe itself to ``topic`` (``--device-topics``)."""
        return any(fnmatch.fnmatchcase(topic, pattern) for pattern in self.device_topics)

    def check(self) -> ServerSettings:
        """``self`` if every value is usable, else ValueError saying which is not."""
        for name in (
            "auth_timeout",
            "idle_timeout",
            "heartbeat",
            "session_ttl",
            "ack_timeout",
            "frame_abuse_time",
        ):
            value = getattr(self, name)
            if not value > 0 or value == float("inf"):
                raise ValueError(f"{_option(name)} must be a positive number of seconds")
        if self.heartbeat >= self.idle_timeout:
            raise ValueError(
                f"--heartbeat ({self.heartbeat:g} s) must be shorter than --idle-timeout "
                f"({self.idle_timeout:g} s), or quiet clients are dropped between two PINGs"
            )
        if not MIN_MAX_FRAME <= self.max_frame <= MAX_FRAME_LIMIT:
            raise ValueError(
                f"--max-frame must be {MIN_MAX_FRAME} to {MAX_FRAME_LIMIT} bytes, "
                f"not {self.max_frame}"
            )
        if not 1 <= self.ack_window <= MAX_ACK_WINDOW:
            raise ValueError(f"--ack-window must be 1 to {MAX_ACK_WINDOW}, not {self.ack_window}")
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise ValueError(f"--max-attempts must be 1 to {MAX_ATTEMPTS}, not {self.max_attempts}")
        if self.capacity < 1:
            raise ValueError(f"--capacity must be at least 1, not {self.capacity}")
        if not 0 < self.frame_rate < float("inf"):
            raise ValueError(
                f"--frame-rate must be a positive number of frames per second, "
                f"not {self.frame_rate:g}"
            )
        if self.frame_burst < 1:
            raise ValueError(f"--frame-burst must be at least 1, not {self.frame_burst}")
        if not 0 <= self.drain_period < float("inf"):
            raise ValueError("--drain-period must be zero or a positive number of seconds")
        if self.max_topics_per_device < 1:
            raise ValueError(
                f"--max-topics-per-device must be at least 1, not {self.max_topics_per_device}"
            )
        for pattern in self.device_topics:
            if not pattern.strip() or pattern != pattern.strip():
                raise ValueError(f"--device-topics: an empty or padded pattern {pattern!r}")
        return self


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")
