"""Strings from the network in log events, and events a peer can repeat at will.

A peer controls a refused AUTH's clientId, a client ERROR's text, an HTTP
path: logged verbatim they cost the log up to a frame's size per event, and
ESC, NUL or a newline in them reach the log file (forged lines, terminal
escapes). ``untrusted`` makes such a value a short, one-line, printable field;
every log event that carries a string from a peer passes it through here.

``LogThrottle`` bounds the events one kind of abuse can write: a few lines
per interval, and the first line of the next interval says how many were
left out (the metrics count every one of them).
"""

from __future__ import annotations

from typing import Final

from twisted.internet.interfaces import IReactorTime

#: Characters of an untrusted string kept in a log event.
MAX_LOGGED_CHARS: Final = 120


def untrusted(value: str | bytes | None, limit: int = MAX_LOGGED_CHARS) -> str:
    """``value`` fit for a log event: cut to ``limit`` characters (saying how
    many more there were) and every character that is not printable (control
    characters, newlines, lone surrogates, separators other than the space)
    written as a Python escape, so that the field stays on its line."""
    if value is None:
        return "(none)"
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value
    head = text[:limit]
    if not head.isprintable():
        head = "".join(ch if ch.isprintable() else _escape(ch) for ch in head)
    if len(text) > limit:
        head += f"...({len(text) - limit} more characters)"
    return head


def _escape(ch: str) -> str:
    return ch.encode("unicode_escape").decode("ascii")


class LogThrottle:
    """At most ``burst`` events of one kind logged per ``interval`` seconds
    on ``clock``. ``allow()`` says whether to log this one; when it does, it
    gives the count of events left out since the last one logged, for the
    event's text."""

    __slots__ = ("_burst", "_clock", "_interval", "_logged", "_skipped", "_window")

    def __init__(self, clock: IReactorTime, interval: float = 10.0, burst: int = 5) -> None:
        if not interval > 0 or burst < 1:
            raise ValueError("a log throttle needs a positive interval and burst")
        self._clock = clock
        self._interval = interval
        self._burst = burst
        self._window = float("-inf")
        self._logged = 0
        self._skipped = 0

    def allow(self) -> int | None:
        """None: do not log this event (it is counted). Else the number of
        events left out before it."""
        now = self._clock.seconds()
        if now - self._window >= self._interval:
            self._window = now
            self._logged = 0
        if self._logged >= self._burst:
            self._skipped += 1
            return None
        self._logged += 1
        skipped, self._skipped = self._skipped, 0
        return skipped
