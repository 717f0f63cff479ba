"""Untrusted strings in log events, and the throttle of repeated events."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from pigeonpush.logsafe import MAX_LOGGED_CHARS, LogThrottle, untrusted


@pytest.mark.parametrize(
    ("value", "logged"),
    [
        ("alice", "alice"),
        ("caf\u00e9 \u732b", "caf\u00e9 \u732b"),
        ("a\nb", "a\\nb"),
        ("a\r\nb\x00c", "a\\r\\nb\\x00c"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("\ud800", "\\ud800"),
        ("tab\there", "tab\\there"),
        ("line\u2028sep", "line\\u2028sep"),
        (b"by\xfftes\n", "by\\xfftes\\n"),
        (None, "(none)"),
        ("", ""),
    ],
)
def test_untrusted_escapes_what_is_not_printable(value: str | bytes | None, logged: str) -> None:
    assert untrusted(value) == logged


def test_untrusted_cuts_long_values_and_says_how_much() -> None:
    logged = untrusted("x" * 8192)
    assert logged == "x" * MAX_LOGGED_CHARS + f"...({8192 - MAX_LOGGED_CHARS} more characters)"
    assert untrusted("\n" * 8192, limit=4) == "\\n\\n\\n\\n...(8188 more characters)"
    assert untrusted("y" * MAX_LOGGED_CHARS) == "y" * MAX_LOGGED_CHARS


def test_a_throttle_logs_a_burst_per_interval_and_counts_the_rest() -> None:
    clock = Clock()
    throttle = LogThrottle(clock, interval=10, burst=3)
    answers = [throttle.allow() for _ in range(100)]
    assert answers[:3] == [0, 0, 0]
    assert answers[3:] == [None] * 97
    clock.advance(9.9)
    assert throttle.allow() is None
    clock.advance(0.1)
    assert throttle.allow() == 98  # the first line of the next interval counts the rest
    assert throttle.allow() == 0
    clock.advance(100)
    assert throttle.allow() == 0


@pytest.mark.parametrize(("interval", "burst"), [(0, 1), (-1, 1), (float("nan"), 1), (1, 0)])
def test_a_throttle_needs_a_positive_interval_and_burst(interval: float, burst: int) -> None:
    with pytest.raises(ValueError, match="positive interval and burst"):
        LogThrottle(Clock(), interval, burst)
