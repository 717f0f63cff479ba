"""``pigeonpush uplinks``: print what devices sent, one JSON line per uplink.

Reads ``GET /v1/uplinks`` from ``--after`` (default: the oldest the store
keeps) to the newest, then exits 0 and writes the last cursor to stderr
(``cursor: <id>``: pass it as ``--after`` to go on from there later). With
``--follow`` it keeps long-polling and prints uplinks as they arrive until
interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import urlencode

from pigeonpush.cli.send import add_common_arguments, call_api, run_command

#: Seconds each long poll of --follow waits on the server (its limit is 30).
FOLLOW_WAIT = 25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument(
        "--after", default="0", metavar="CURSOR", help="start after this uplink id (default: 0)"
    )
    parser.add_argument(
        "--follow", action="store_true", help="keep waiting for new uplinks (Ctrl-C ends)"
    )


async def tail(reactor: Any, args: argparse.Namespace) -> None:
    base = args.api.rstrip("/") + "/v1/uplinks?"
    cursor = args.after
    while True:
        query: dict[str, Any] = {"after": cursor, "limit": 1000}
        if args.follow:
            query["wait"] = FOLLOW_WAIT
        answer = await call_api(reactor, "GET", base + urlencode(query), args.key)
        for uplink in answer["uplinks"]:
            print(json.dumps(uplink, ensure_ascii=False), flush=True)
        cursor = answer["next"]
        if not answer["uplinks"] and not args.follow:
            print(f"cursor: {cursor}", file=sys.stderr, flush=True)
            return


def run(args: argparse.Namespace) -> int:
    return run_command(args, tail)
