"""Tracebacks in daemon logs: one summary line (the exception) per traceback."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

MARKER = "Traceback (most recent call last):"
_SKIP = ("--- <exception caught here> ---", MARKER)
_LONGEST = 200


def tracebacks(lines: Iterable[str]) -> list[str]:
    """The exception line of each traceback in ``lines`` (Twisted's text log
    indents a traceback with a tab; a bare Python one is not indented)."""
    found: list[str] = []
    inside = False
    for raw in lines:
        line = raw.rstrip("\n")
        if MARKER in line:
            if inside:
                found.append("(traceback without an exception line)")
            inside = True
            continue
        if not inside:
            continue
        body = line[1:] if line.startswith("\t") else line
        if not body.strip() or body.startswith(" ") or body.strip() in _SKIP:
            continue
        found.append(body.strip()[:_LONGEST])
        inside = False
    if inside:
        found.append("(traceback without an exception line)")
    return found


def scan(paths: Iterable[Path]) -> dict[str, list[str]]:
    """``{log file name: [exception lines]}`` for the logs that hold any."""
    result: dict[str, list[str]] = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as log:
                found = tracebacks(log)
        except FileNotFoundError:
            continue
        if found:
            result[path.name] = found
    return result
