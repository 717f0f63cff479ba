"""``python -m pigeonpush_bench.twist REACTOR ARGS...``: ``python -m twisted
ARGS...`` on a chosen reactor, for ``pigeonpush-bench --reactor``.

``asyncio`` is Twisted's asyncio reactor on asyncio's own selector loop (what
``twist --reactor asyncio`` gives); ``uvloop`` is the same reactor on
uvloop's loop, whose event loop policy must be set before the reactor is
installed, which ``--reactor asyncio`` does not do. ``default`` is Twisted's
default reactor (epoll on Linux).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

#: The reactors ``--reactor`` names.
REACTORS = ("default", "asyncio", "uvloop")


def install(name: str) -> None:
    """Install reactor ``name`` (one of REACTORS); ValueError for another."""
    if name not in REACTORS:
        raise ValueError(f"unknown reactor {name!r}: choose from {', '.join(REACTORS)}")
    if name == "default":
        return
    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    from twisted.internet import asyncioreactor

    asyncioreactor.install(asyncio.new_event_loop())


def main(argv: Sequence[str]) -> None:
    if not argv:
        raise SystemExit(f"usage: python -m pigeonpush_bench.twist {{{','.join(REACTORS)}}} ARGS")
    try:
        install(argv[0])
    except ValueError as e:
        raise SystemExit(str(e)) from None
    from twisted.application.twist._twist import Twist

    Twist.main(["twist", *argv[1:]])


if __name__ == "__main__":
    main(sys.argv[1:])
