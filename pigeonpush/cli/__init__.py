"""The ``pigeonpush`` command line.

Each subcommand lives in its own module of this package and is listed in
``SUBCOMMANDS``; a module provides ``add_arguments(parser)`` and ``run(args)``
(returning the process exit code). Modules are imported only when their
subcommand is parsed, so ``pigeonpush --version`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pigeonpush import __version__

#: subcommand name -> (module under pigeonpush.cli, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "listen": ("listen", "receive pushed messages and print one JSON line each"),
    "send": ("send", "submit a notification to the notification API"),
    "status": ("status", "print a notification's delivery receipt"),
    "cancel": ("cancel", "cancel a scheduled notification before its send time"),
    "topics": ("topics", "manage topic subscriptions (add, remove, list, delete)"),
    "kick": ("kick", "disconnect a device and revoke its token"),
    "uplinks": ("uplinks", "print what devices sent (UPLINK), one JSON line each"),
}

#: Subcommands that became their own tools: name -> the one line that says where.
MOVED: dict[str, str] = {
    "bench": "the benchmark is its own tool now: install pigeonpush-bench "
    "(tools/bench in the repository) and run pigeonpush-bench",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, just that subcommand's module is imported."""
    parser = argparse.ArgumentParser(
        prog="pigeonpush",
        description="PigeonPush: a message push service on Twisted. "
        "The daemons run under twistd (twistd -n pigeon-standalone); "
        "this command holds the client-side tools.",
    )
    parser.add_argument("--version", action="version", version=f"pigeonpush {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text, description=help_text)
            continue
        module = importlib.import_module(f"pigeonpush.cli.{module_name}")
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command = next((word for word in words if not word.startswith("-")), None)
    if command in MOVED:
        print(f"pigeonpush {command}: {MOVED[command]}", file=sys.stderr)
        return 2
    # Only the subcommand being run is imported ("" imports none: help, version).
    parser = build_parser(command or "")
    args = parser.parse_args(words)
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help()
        return 0
    return int(run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
